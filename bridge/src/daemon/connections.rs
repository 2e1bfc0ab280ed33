//! The Unix socket's connection table: at most `max_connections` at once
//! and `max_connections_per_uid` for one uid. A connection that waits for
//! its next request holds its place only until someone needs it: when the
//! table (or the uid's share) is full, the connection that has waited
//! longest is closed to make room, so idle clients cannot lock others
//! out. One that is sending a request gives way only when none is idle
//! (so a large install in transfer is not cut short for an idle client,
//! while a trickling sender still cannot keep a place from everyone). A
//! connection whose request is being served is never closed; only when
//! every place is serving is a new one answered EAGAIN.

use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// The table.
#[derive(Debug)]
pub struct Connections {
    max: usize,
    per_uid: usize,
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next: u64,
    open: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    uid: u32,
    state: State,
    close: Arc<Notify>,
}

/// Where a connection is, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a request to begin.
    Idle(Instant),
    /// A request's frame has begun and is being read.
    Receiving(Instant),
    /// Its request is being served: never closed.
    Serving,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every place is serving a request.
    All(usize),
    /// Every place of this uid is serving a request.
    Uid(usize),
}

/// A connection's place: given back when dropped.
#[derive(Debug)]
pub struct Place {
    table: Arc<Connections>,
    id: u64,
    /// Notified when the place is taken for another connection.
    pub close: Arc<Notify>,
}

impl Connections {
    /// A table of `max` places, `per_uid` of them at most for one uid.
    pub fn new(max: usize, per_uid: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            per_uid: per_uid.min(max),
            inner: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a connection of `uid`, closing the longest-waiting
    /// connection (of that uid first, when it has its share) if needed.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<Place, Full> {
        let mut t = self.lock();
        let of_uid = t.open.iter().filter(|e| e.uid == uid).count();
        if of_uid >= self.per_uid && !t.evict(|e| e.uid == uid) {
            return Err(Full::Uid(self.per_uid));
        }
        if t.open.len() >= self.max && !t.evict(|_| true) {
            return Err(Full::All(self.max));
        }
        t.next += 1;
        let id = t.next;
        let close = Arc::new(Notify::new());
        t.open.push(Entry {
            id,
            uid,
            state: State::Idle(Instant::now()),
            close: close.clone(),
        });
        Ok(Place {
            table: self.clone(),
            id,
            close,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

impl Table {
    /// Close the connection among `which` that has waited longest for a
    /// request, or, if none is idle, the one that began receiving its
    /// request longest ago; false if every one is being served.
    fn evict(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let oldest = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, e)| which(e))
            .filter_map(|(i, e)| match e.state {
                State::Idle(t) => Some((0, t, i)),
                State::Receiving(t) => Some((1, t, i)),
                State::Serving => None,
            })
            .min()
            .map(|(_, t, i)| (t, i));
        match oldest {
            Some((_, i)) => {
                let e = self.open.swap_remove(i);
                e.close.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Place {
    /// The connection now serves a request (`false`) or waits for the
    /// next one (`true`).
    pub fn waiting(&self, waiting: bool) {
        self.set(|state| match (waiting, state) {
            (true, State::Idle(since)) => State::Idle(since),
            (true, _) => State::Idle(Instant::now()),
            (false, _) => State::Serving,
        });
    }

    /// The connection's next request has begun to arrive.
    pub fn receiving(&self) {
        self.set(|_| State::Receiving(Instant::now()));
    }

    fn set(&self, to: impl FnOnce(State) -> State) {
        let mut t = self.table.lock();
        if let Some(e) = t.open.iter_mut().find(|e| e.id == self.id) {
            e.state = to(e.state);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.table.lock().open.retain(|e| e.id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_longest_waiting_connection_makes_room() {
        let t = Connections::new(2, 2);
        let a = t.admit(1000).unwrap();
        let b = t.admit(1000).unwrap();
        let c = t.admit(0).unwrap();
        // a waited longest: it was closed for c.
        tokio::time::timeout(std::time::Duration::from_secs(1), a.close.notified())
            .await
            .expect("a is told to close");
        drop(a);
        assert_eq!(t.open(), 2);
        drop((b, c));
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn connections_being_served_are_never_closed() {
        let t = Connections::new(2, 2);
        let a = t.admit(1000).unwrap();
        let b = t.admit(1000).unwrap();
        a.waiting(false);
        b.waiting(false);
        assert_eq!(t.admit(0).unwrap_err(), Full::All(2));
        b.waiting(true);
        let c = t.admit(0).unwrap();
        assert_eq!(t.open(), 2);
        drop((a, c));
    }

    #[tokio::test]
    async fn a_connection_receiving_a_request_gives_way_only_when_none_is_idle() {
        let t = Connections::new(2, 2);
        let a = t.admit(1000).unwrap();
        a.receiving();
        let b = t.admit(1000).unwrap();
        // b is idle, a has waited longer but is receiving: b is closed.
        let c = t.admit(0).unwrap();
        let told = |p: &Place| {
            let close = p.close.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_millis(200), close.notified())
                    .await
                    .is_ok()
            }
        };
        assert!(told(&b).await, "the idle connection makes room");
        assert!(!told(&a).await, "the receiving one keeps its place");
        drop(b);
        // Only a (receiving) and c (idle) now, c the newer: c goes first.
        let d = t.admit(0).unwrap();
        assert!(told(&c).await, "the idle connection makes room");
        assert!(!told(&a).await);
        drop(c);
        // With no idle connection left, the receiving one gives way.
        d.waiting(false);
        let _e = t.admit(0).unwrap();
        assert!(told(&a).await, "a trickling sender cannot keep its place");
    }

    #[test]
    fn one_uid_gets_its_share_and_waits_its_own_turn() {
        let t = Connections::new(8, 2);
        let a = t.admit(1000).unwrap();
        let b = t.admit(1000).unwrap();
        a.waiting(false);
        // The uid's third connection closes its own waiting one (b), not
        // another uid's.
        let other = t.admit(2000).unwrap();
        let c = t.admit(1000).unwrap();
        assert_eq!(t.open(), 3);
        c.waiting(false);
        assert_eq!(t.admit(1000).unwrap_err(), Full::Uid(2));
        drop((a, b, c, other));
    }
}
