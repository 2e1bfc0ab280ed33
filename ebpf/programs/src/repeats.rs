//! Repeats of a file operation are counted, not reported one by one.
//!
//! Each bridge thread has a small table (`RECENT`, at its thread id) of
//! the last file operations it made: (operation, inode, mode or mask). The
//! first operation of a kind is an event of its own, with its path; the
//! same operation again only adds one to its slot. The count goes out as
//! a summary event (`repeats` > 0) when a second has passed since the
//! slot's last report (looked at every `CHECK_EVERY` repeats, so that the
//! clock is not read on every call), when the slot is taken by another
//! operation, and when the thread ends (`thread_exit`). Every operation
//! is thus in an event, in a summary's count, or in the lost count.
//!
//! An event per call would cost a tight open/read loop more than the
//! calls themselves (a ring buffer record, the clock, `d_path`).

use crate::common::{Who, emit_as, group};
use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::macros::map;
use aya_ebpf::maps::Array;
use clawos_ebpf_types::{RECENT_SLOTS, REPORT_EVERY_NS};

/// Repeats between two looks at the clock.
const CHECK_EVERY: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    ino: u64,
    /// When this slot last went out (event or summary), `bpf_ktime_get_ns`.
    reported_ns: u64,
    op: u32,
    arg: u32,
    /// Repeats since then.
    count: u32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Recent {
    /// The thread the table is of; all zero when it is of none.
    who: Who,
    /// The slot the next new operation takes.
    next: u32,
    _pad: u32,
    slots: [Slot; RECENT_SLOTS],
}

/// Thread id (in the initial pid namespace) -> that thread's recent file
/// operations. An array, not a hash map keyed by the ids: its lookup is a
/// bounds check and an add, which the verifier inlines, where hashing the
/// ids cost the hot path about 160 guest instructions a call, half of the
/// monitors' whole cost on an open() loop (measured under QEMU icount).
/// The loader sizes it to the kernel's `pid_max` (at most
/// `RECENT_THREADS_MAX`); a thread whose id lies beyond reports every call.
///
/// A table is written only by its own thread (the file hooks, and
/// `thread_exit` as it ends, which also clears it), so a live thread's id
/// always finds its own table or an empty one. (The loader attaches
/// `thread_exit` before the file hooks; a table of another thread, were one
/// left, would have its counts sent as that thread's before it is reused.) The table keeps the group
/// the thread was in when it was made: bridge threads do not change groups
/// (workers are cloned into theirs), and one that did would have its
/// summaries name the first.
#[map(name = "RECENT")]
static RECENT: Array<Recent> = Array::with_max_entries(1, 0); // (sized by the loader)

const EMPTY: Slot = Slot {
    ino: 0,
    reported_ns: 0,
    op: 0,
    arg: 0,
    count: 0,
    _pad: 0,
};

fn summary(who: &Who, s: &Slot) {
    emit_as(who, s.op, 0, s.count, |e| {
        e.arg = u64::from(s.arg);
        e.ino = s.ino;
        e.repeats = s.count;
    });
}

/// Is this operation of the current thread (`id`, its
/// `bpf_get_current_pid_tgid`) a repeat, counted here, no event needed?
/// `false`: the caller reports it as an event of its own. The hot path of
/// every file hook in the bridge: one inlined array lookup, no helper call.
#[inline(always)]
pub fn repeated(id: u64, op: u32, arg: u32, ino: u64) -> bool {
    let (pid, tid) = ((id >> 32) as u32, id as u32);
    let Some(recent) = RECENT.get_ptr_mut(tid) else {
        return false;
    };
    // SAFETY: the map's value at this thread's id; only this thread reads
    // or writes it (see `RECENT`).
    let recent = unsafe { &mut *recent };
    if recent.who.tid != tid || recent.who.pid != pid {
        flush_slots(recent);
        *recent = fresh(Who::current(group()));
    }
    let mut i = 0;
    while i < RECENT_SLOTS {
        let s = &mut recent.slots[i];
        if s.op == op && s.ino == ino && s.arg == arg {
            s.count += 1;
            if s.count % CHECK_EVERY == 0 {
                // SAFETY: helper call without pointer arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                if now.wrapping_sub(s.reported_ns) >= REPORT_EVERY_NS {
                    summary(&recent.who, s);
                    s.count = 0;
                    s.reported_ns = now;
                }
            }
            return true;
        }
        i += 1;
    }
    let n = (recent.next as usize) % RECENT_SLOTS;
    recent.next = ((n + 1) % RECENT_SLOTS) as u32;
    let s = &mut recent.slots[n];
    if s.count > 0 {
        summary(&recent.who, s);
    }
    *s = Slot {
        ino,
        // SAFETY: helper call without pointer arguments.
        reported_ns: unsafe { bpf_ktime_get_ns() },
        op,
        arg,
        count: 0,
        _pad: 0,
    };
    false
}

/// A fresh table for `who`.
#[inline(always)]
fn fresh(who: Who) -> Recent {
    Recent {
        who,
        next: 0,
        _pad: 0,
        slots: [EMPTY; RECENT_SLOTS],
    }
}

/// Send the counts a table holds.
#[inline(always)]
fn flush_slots(recent: *const Recent) {
    // SAFETY: a map value of the current thread (see `repeated`).
    let recent = unsafe { &*recent };
    let mut i = 0;
    while i < RECENT_SLOTS {
        let s = &recent.slots[i];
        if s.count > 0 {
            summary(&recent.who, s);
        }
        i += 1;
    }
}

/// The current thread (`id`, its `bpf_get_current_pid_tgid`) is ending:
/// its counts go out, and its table is cleared for the next thread that
/// gets its id.
#[inline(always)]
pub fn flush(id: u64) {
    let (pid, tid) = ((id >> 32) as u32, id as u32);
    let Some(recent) = RECENT.get_ptr_mut(tid) else {
        return;
    };
    // SAFETY: as in `repeated`.
    let recent = unsafe { &mut *recent };
    if recent.who.tid != tid || recent.who.pid != pid {
        return;
    }
    flush_slots(recent);
    *recent = fresh(Who::NONE);
}
