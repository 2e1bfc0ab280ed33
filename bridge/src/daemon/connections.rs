//! The Unix socket's connection table: at most `max_connections` at once
//! and `max_connections_per_uid` for one uid. A connection that waits for
//! its next request holds its place only until someone needs it: when the
//! table (or the uid's share) is full, the connection that has waited
//! longest is closed to make room, so idle clients cannot lock others
//! out. A connection whose request is being served is never closed; only
//! when every place is serving is a new one answered EAGAIN.

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
    /// Since when it waits for a request; `None` while one is served.
    waiting_since: Option<Instant>,
    close: Arc<Notify>,
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
            waiting_since: Some(Instant::now()),
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
    /// request; false if none waits.
    fn evict(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let oldest = self
            .open
            .iter()
            .enumerate()
            .filter(|(_, e)| which(e))
            .filter_map(|(i, e)| e.waiting_since.map(|t| (t, i)))
            .min();
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
        let mut t = self.table.lock();
        if let Some(e) = t.open.iter_mut().find(|e| e.id == self.id) {
            e.waiting_since = match (waiting, e.waiting_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(Instant::now()),
                (false, _) => None,
            };
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
