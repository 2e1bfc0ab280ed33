//! Maps, loader-set globals, the cgroup filter and the event writer.

use aya_ebpf::bindings::{
    BPF_F_MMAPABLE, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
};
use aya_ebpf::helpers::{
    bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_pid_tgid,
    bpf_ktime_get_ns, bpf_probe_read_kernel,
};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, RingBuf};
use clawos_ebpf_types::{
    DNS_PORT, Event, FIELD_COUNT, Grant, MAX_GRANT_DESTS, MAX_PORTS, MAX_RESOLVERS, RING_BYTES,
};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

/// Events, to the daemon.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Operations whose event the ring buffer had no room for. Memory-mapped: the daemon reads
/// the count without a bpf() call (its seccomp filter refuses them all).
#[map(name = "LOST")]
pub static LOST: Array<u64> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Which instance each thread serves, by thread id: its slot in `GRANTS`
/// plus one, 0 for none (sized by the loader). Memory-mapped: the daemon
/// writes it without a bpf() call.
#[map(name = "SERVING")]
static SERVING: Array<u32> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The grants of the runs in flight, one slot each (sized by the loader).
/// Memory-mapped like `SERVING`.
#[map(name = "GRANTS")]
static GRANTS: Array<Grant> = Array::with_max_entries(1, BPF_F_MMAPABLE);

// Set by the loader before the programs are verified (.rodata).
#[unsafe(no_mangle)]
static ROOT_CGROUP: u64 = 0;
#[unsafe(no_mangle)]
static ROOT_LEVEL: u32 = 1;
#[unsafe(no_mangle)]
static DAEMON_PID: u32 = 0;
#[unsafe(no_mangle)]
static PORTS: [u16; MAX_PORTS] = [0; MAX_PORTS];
#[unsafe(no_mangle)]
static PORT_COUNT: u32 = 0;
#[unsafe(no_mangle)]
static RESOLVERS: [[u8; 16]; MAX_RESOLVERS] = [[0; 16]; MAX_RESOLVERS];
#[unsafe(no_mangle)]
static RESOLVER_COUNT: u32 = 0;
/// Where the kernel fields the programs read lie in the running kernel,
/// by `clawos_ebpf_types::F_*` index (the loader resolves them from the
/// kernel's BTF). Read-only and frozen: the verifier reads each as a
/// constant, so a load at one is checked against the kernel's types like
/// a load at an offset compiled in.
#[unsafe(no_mangle)]
static FIELD_OFFSETS: [u32; FIELD_COUNT] = [0; FIELD_COUNT];

/// A loader-set global. Volatile: the compiler must not fold the
/// build-time zero into the program.
#[inline(always)]
fn global<T: Copy>(v: &T) -> T {
    // SAFETY: a valid reference to a static.
    unsafe { core::ptr::read_volatile(v) }
}

/// Is the current task in the bridge's cgroup subtree (daemon, launcher,
/// workers)? One helper call: every program asks it first.
#[inline(always)]
pub fn in_bridge() -> bool {
    let level = global(&ROOT_LEVEL) as i32;
    // SAFETY: helper call without pointer arguments.
    let root = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
    root != 0 && root == global(&ROOT_CGROUP)
}

/// The current task's group one level below the bridge's root: its
/// instance's cgroup, or the daemon's. Only for a task `in_bridge`.
#[inline(always)]
pub fn group() -> u64 {
    let level = global(&ROOT_LEVEL) as i32;
    // SAFETY: helper call without pointer arguments.
    unsafe { bpf_get_current_ancestor_cgroup_id(level + 1) }
}

/// The current task's group (see `group`), if it is in the bridge's
/// subtree at all.
#[inline(always)]
pub fn bridge_group() -> Option<u64> {
    if in_bridge() { Some(group()) } else { None }
}

/// The daemon's own pid.
#[inline(always)]
pub fn daemon_pid() -> u32 {
    global(&DAEMON_PID)
}

/// Is `port` in the egress allow-list?
#[inline(always)]
pub fn port_allowed(port: u16) -> bool {
    let n = global(&PORT_COUNT) as usize;
    let mut i = 0;
    while i < MAX_PORTS {
        if i >= n {
            return false;
        }
        if global(&PORTS[i]) == port {
            return true;
        }
        i += 1;
    }
    false
}

/// Is `addr`:`port` (IPv4 as `::ffff:a.b.c.d`) one of the daemon's DNS
/// servers on the DNS port, connected to by the daemon's own process?
#[inline(always)]
pub fn daemon_lookup(addr: &[u8; 16], port: u16) -> bool {
    if port != DNS_PORT || !in_daemon() {
        return false;
    }
    let n = global(&RESOLVER_COUNT) as usize;
    let mut i = 0;
    while i < MAX_RESOLVERS {
        if i >= n {
            return false;
        }
        if global(&RESOLVERS[i]) == *addr {
            return true;
        }
        i += 1;
    }
    false
}

/// Is the current task a thread of the daemon's own process?
#[inline(always)]
pub fn in_daemon() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == daemon_pid()
}

/// The 8 bytes of `addr` from byte `at`, as a big-endian number (the
/// address's bit order).
#[inline(always)]
fn half(addr: &[u8; 16], at: usize) -> u64 {
    let mut v = 0u64;
    let mut i = 0;
    while i < 8 {
        v = (v << 8) | u64::from(addr[at + i]);
        i += 1;
    }
    v
}

/// The bits of the first (`hi`) and last (`lo`) 64 of a prefix of
/// `prefix` bits (at most 128).
#[inline(always)]
fn masks(prefix: u32) -> (u64, u64) {
    let hi = if prefix >= 64 {
        u64::MAX
    } else if prefix == 0 {
        0
    } else {
        u64::MAX << (64 - prefix)
    };
    let lo = if prefix >= 128 {
        u64::MAX
    } else if prefix <= 64 {
        0
    } else {
        u64::MAX << (128 - prefix)
    };
    (hi, lo)
}

/// Is `addr`:`port` (IPv4 as `::ffff:a.b.c.d`) one of the destinations of
/// the grant the current thread serves (`SERVING`, `GRANTS`)? No: the
/// thread serves no instance, its id lies beyond `SERVING`, or no entry
/// has the destination's family, a network holding it and its port.
#[inline(always)]
pub fn granted(addr: &[u8; 16], port: u16) -> bool {
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(serving) = SERVING.get_ptr(tid) else {
        return false;
    };
    // SAFETY: the map's value for this thread; the daemon writes it from
    // this same thread only, never while the thread is in connect().
    let slot = unsafe { core::ptr::read_volatile(serving) };
    if slot == 0 {
        return false;
    }
    let Some(grant) = GRANTS.get_ptr(slot - 1) else {
        return false;
    };
    let (hi, lo) = (half(addr, 0), half(addr, 8));
    // ::ffff:a.b.c.d
    let family: u8 = if hi == 0 && lo >> 32 == 0xffff { 4 } else { 6 };
    // SAFETY: a slot of the map, filled by the daemon before the thread's
    // SERVING entry named it and cleared only after the entry was; volatile
    // reads, bounded by MAX_GRANT_DESTS whatever the count says.
    unsafe {
        let n = core::ptr::read_volatile(&(*grant).count) as usize;
        let mut i = 0;
        while i < MAX_GRANT_DESTS {
            if i >= n {
                return false;
            }
            let d = &(*grant).dests[i];
            if core::ptr::read_volatile(&d.port) == port
                && core::ptr::read_volatile(&d.family) == family
            {
                let net = core::ptr::read_volatile(&d.addr);
                let prefix = core::ptr::read_volatile(&d.prefix) as u32;
                let (mhi, mlo) = masks(prefix);
                if (hi ^ half(&net, 0)) & mhi == 0 && (lo ^ half(&net, 8)) & mlo == 0 {
                    return true;
                }
            }
            i += 1;
        }
    }
    false
}

/// Where kernel field `field` (a `clawos_ebpf_types::F_*` index) lies in
/// its struct, in this kernel.
#[inline(always)]
pub fn offset(field: usize) -> usize {
    global(&FIELD_OFFSETS[field]) as usize
}

/// The address of kernel field `field` of the struct at `base`.
#[inline(always)]
pub fn field_ptr(base: *const u8, field: usize) -> *const u8 {
    base.wrapping_add(offset(field))
}

/// Load kernel field `field` (an `F_*` index) of the struct at `base`, a
/// pointer the verifier knows the BTF type of (a hook's argument, or a
/// pointer loaded this way): one load instruction, which the verifier
/// checks against the type and the kernel guards against a fault, instead
/// of a `bpf_probe_read_kernel` call (the hot path of every file hook).
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, field: usize) -> T {
    // SAFETY: see above; the offset is the running kernel's (resolved by
    // the loader from its BTF, with the member's size), and the verifier
    // checks the access against the type.
    unsafe { core::ptr::read_volatile(field_ptr(base, field) as *const T) }
}

/// Read kernel field `field` (an `F_*` index) of the struct at `base`.
#[inline(always)]
pub fn read<T: Copy>(base: *const u8, field: usize) -> Option<T> {
    read_at(base, offset(field))
}

/// Read a `T` at byte `at` of the kernel memory at `base`.
#[inline(always)]
pub fn read_at<T: Copy>(base: *const u8, at: usize) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a fault is an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(at) as *const T).ok() }
}

/// Whose operation an event is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    pub group: u64,
    pub cgroup: u64,
}

impl Who {
    /// No thread (an empty table, see `repeats`).
    pub const NONE: Who = Who {
        pid: 0,
        tid: 0,
        group: 0,
        cgroup: 0,
    };

    /// The current task, in `group` (see `bridge_group`).
    #[inline(always)]
    pub fn current(group: u64) -> Who {
        let id = bpf_get_current_pid_tgid();
        Who {
            pid: (id >> 32) as u32,
            tid: id as u32,
            group,
            // SAFETY: helper call without pointer arguments.
            cgroup: unsafe { bpf_get_current_cgroup_id() },
        }
    }
}

/// Write one event of the current task: see `emit_as`.
#[inline(always)]
pub fn emit(group: u64, op: u32, verdict: i32, fill: impl FnOnce(&mut Event)) {
    emit_as(&Who::current(group), op, verdict, 1, fill)
}

/// Write one event of `who` that stands for `ops` operations: the common
/// header, then `fill` for the rest. When the ring buffer is full the
/// operations are counted in `LOST`, never dropped without a trace.
#[inline(always)]
pub fn emit_as(who: &Who, op: u32, verdict: i32, ops: u32, fill: impl FnOnce(&mut Event)) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            // SAFETY: the entry is the ring buffer's memory for one Event,
            // ours until submitted; every field is written below or by `fill`.
            let e = unsafe { &mut *entry.as_mut_ptr() };
            // SAFETY: helper call without pointer arguments.
            e.ts_ns = unsafe { bpf_ktime_get_ns() };
            e.cgroup = who.cgroup;
            e.group = who.group;
            e.pid = who.pid;
            e.tid = who.tid;
            e.op = op;
            e.verdict = verdict;
            e.arg = 0;
            e.ino = 0;
            e.family = 0;
            e.port = 0;
            e.protocol = 0;
            e.addr = [0; 16];
            e.path_len = 0;
            e.repeats = 0;
            fill(e);
            // Wake the reader only when a quarter of the ring is waiting:
            // a wake-up per event would cost the monitored process more
            // than the event itself. The reader also drains on a short
            // timer, so a quiet ring is read within its period.
            let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
            let wake = if waiting > u64::from(RING_BYTES / 4) {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            entry.submit(wake as u64);
        }
        None => {
            if let Some(n) = LOST.get_ptr_mut(0) {
                // SAFETY: the map's one u64, shared by every CPU: an atomic
                // add (BPF_XADD) so that no loss goes uncounted.
                // (core's AtomicU64 has no fetch_add on this target: the
                // intrinsic is what it would call.)
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, u64::from(ops)) };
            }
        }
    }
}

/// The verdict to return: an earlier program's refusal stands.
#[inline(always)]
pub fn verdict(previous: i32, ours: i32) -> i32 {
    if previous != 0 { previous } else { ours }
}
