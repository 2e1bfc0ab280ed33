//! The kernel's per-instance egress check, from the daemon's side. The
//! `socket_connect` program refuses every connect of a daemon thread
//! (other than its name lookups) unless the thread serves an instance
//! whose grant holds the destination and port. Two memory-mapped arrays
//! say which: `GRANTS`, one slot per run in flight, holding an instance's
//! destinations as (network, prefix, family, port) entries, and `SERVING`,
//! by thread id, naming the slot the thread serves (slot + 1; 0: none).
//!
//! The daemon writes both through shared mappings made by
//! [`Monitor::load`](super::Monitor::load) before its seccomp filter
//! refuses `bpf()`: [`serve`] fills a free slot, then the calling thread's
//! `SERVING` entry; dropping the [`KernelServing`] it returns clears the
//! entry, then the slot. A thread's entry is written only by that thread,
//! so the kernel, reading it during that thread's own connect(), never
//! sees a slot being filled or cleared under it.

use super::instances::tid;
use crate::config::EgressRule;
use crate::error::{Code, Failure};
use aya::Ebpf;
use aya::maps::{Map, MapData};
use clawos_ebpf_types::{self as t, Grant, GrantDest, MAX_GRANT_DESTS};
use ipnet::IpNet;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering, fence};
use std::sync::{Mutex, OnceLock};

/// `BPF_F_MMAPABLE`: the maps the daemon writes through a mapping.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes between two entries of `SERVING` in its mapping: the kernel
/// spaces an array's values by their size rounded up to 8
/// (`round_up(value_size, 8)` in `kernel/bpf/arraymap.c`).
const SERVING_STRIDE: usize = std::mem::size_of::<u32>().next_multiple_of(8);

/// Bytes between two slots of `GRANTS` (a `Grant` is a multiple of 8:
/// `ebpf/types` asserts it).
const GRANT_STRIDE: usize = std::mem::size_of::<Grant>();

/// The maps, once [`Monitor::load`](super::Monitor::load) has mapped them.
static KERNEL: OnceLock<KernelGrants> = OnceLock::new();

/// Register the calling thread as serving `instance`, whose kernel check
/// allows exactly `dests` (the tool's granted networks and ports).
///
/// Fails with `POLICY_DENIED` when `dests` expand to more entries than a
/// grant holds ([`check_fits`]), `EAGAIN` when every slot is taken,
/// `SANDBOX_SETUP_FAILED` when the thread's id lies beyond `SERVING` (the
/// kernel would refuse its connects), and `EINTERNAL` when the thread
/// already serves an instance. Without loaded monitors (a development
/// host, unit tests) it registers nothing.
pub fn serve(instance: u64, dests: &[EgressRule]) -> Result<KernelServing, Failure> {
    let entries = fitting(dests)?;
    match KERNEL.get() {
        None => Ok(KernelServing {
            held: None,
            _thread: PhantomData,
        }),
        Some(kernel) => kernel.hold(tid(), instance, &entries),
    }
}

/// Refuse (POLICY_DENIED, naming the count and the limit) a set of rules
/// that expands to more than `MAX_GRANT_DESTS` (network, port) pairs.
pub fn check_fits(dests: &[EgressRule]) -> Result<(), Failure> {
    fitting(dests).map(|_| ())
}

/// `dests` as the kernel's entries, if they fit in a grant.
fn fitting(dests: &[EgressRule]) -> Result<Vec<GrantDest>, Failure> {
    let entries = encode(dests);
    if entries.len() > MAX_GRANT_DESTS {
        return Err(Failure::new(
            Code::PolicyDenied,
            format!(
                "the network grants expand to {} (network, port) pairs; the kernel's per-instance check holds {MAX_GRANT_DESTS}",
                entries.len()
            ),
        ));
    }
    Ok(entries)
}

/// The kernel's entries for `rules`: one per (network, port) pair, each
/// once, in the rules' order.
fn encode(rules: &[EgressRule]) -> Vec<GrantDest> {
    let mut out: Vec<GrantDest> = Vec::new();
    for rule in rules {
        for &port in &rule.ports {
            let d = dest(rule.cidr, port);
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// The kernel's entry for `net` and `port`: the network's address (host
/// bits cleared), IPv4 as `::ffff:a.b.c.d` with its prefix plus 96.
fn dest(net: IpNet, port: u16) -> GrantDest {
    let (addr, prefix, family) = match net.trunc() {
        IpNet::V4(v4) => (
            v4.network().to_ipv6_mapped().octets(),
            96 + v4.prefix_len(),
            4,
        ),
        IpNet::V6(v6) => (v6.network().octets(), v6.prefix_len(), 6),
    };
    GrantDest {
        addr,
        prefix,
        family,
        port,
    }
}

/// The calling thread serves an instance in the kernel's check while this
/// lives. Dropping it clears the thread's SERVING entry first, then the
/// slot. Not `Send`: the entry is the thread's own.
#[must_use = "the thread serves the instance only while this lives"]
#[derive(Debug)]
pub struct KernelServing {
    held: Option<Held>,
    _thread: PhantomData<*const ()>,
}

/// A slot and the thread entry naming it.
#[derive(Debug)]
struct Held {
    kernel: &'static KernelGrants,
    tid: u32,
    slot: u32,
}

impl Drop for KernelServing {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            h.kernel.serving(h.tid).store(0, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            h.kernel.write_slot(h.slot, 0, &[]);
            h.kernel.slots.put(h.slot);
        }
    }
}

/// The free slots of `GRANTS`.
#[derive(Debug)]
struct Slots {
    free: Mutex<Vec<u32>>,
}

impl Slots {
    fn new(count: u32) -> Slots {
        // Taken from the end: slot 0 first.
        Slots {
            free: Mutex::new((0..count).rev().collect()),
        }
    }

    fn take(&self) -> Option<u32> {
        self.free.lock().unwrap().pop()
    }

    fn put(&self, slot: u32) {
        self.free.lock().unwrap().push(slot);
    }
}

/// A shared read-write mapping of a memory-mapped array.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a shared mapping of kernel memory that lives until Drop; its
// words are written with atomic or volatile stores, each slot by the one
// thread holding it.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Map the first `bytes` (rounded up to pages) of the array `fd`.
    fn shared(fd: impl AsFd, bytes: usize, what: &str) -> Result<Mapping, Failure> {
        let len = bytes.next_multiple_of(rustix::param::page_size());
        // SAFETY: a new shared mapping of the map's values, which the kernel
        // keeps valid until it is unmapped in Drop; nothing else lies there.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| super::failed(format!("cannot map {what} ({len} bytes): {e}")))?;
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| super::failed("mmap returned null"))?,
            len,
        })
    }

    /// Anonymous zeroed memory in place of a map, for the unit tests.
    #[cfg(test)]
    fn anonymous(bytes: usize) -> Mapping {
        let len = bytes.next_multiple_of(rustix::param::page_size());
        // SAFETY: a new private mapping, unmapped in Drop.
        #[allow(unsafe_code)]
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }
        .expect("anonymous mapping");
        Mapping {
            ptr: NonNull::new(ptr.cast()).unwrap(),
            len,
        }
    }

    /// The address of byte `at`, which must lie in the mapping.
    fn at(&self, at: usize, size: usize) -> *mut u8 {
        assert!(at + size <= self.len, "{at}+{size} beyond {}", self.len);
        self.ptr.as_ptr().wrapping_add(at)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `shared` or `anonymous`, unmapped once.
        #[allow(unsafe_code)]
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The two maps, mapped, and the free slots.
#[derive(Debug)]
struct KernelGrants {
    serving: Mapping,
    grants: Mapping,
    /// Entries of `SERVING`: thread ids below this.
    threads: u32,
    /// Slots of `GRANTS`.
    slot_count: u32,
    slots: Slots,
}

/// Map `SERVING` (`threads` entries) and `GRANTS` (`runs` slots) of the
/// loaded object, for [`serve`]: once per process, before the daemon's
/// seccomp filter refuses `bpf()` (the checks of the maps' shape call it).
pub(super) fn map(ebpf: &Ebpf, threads: u32, runs: u32) -> Result<(), Failure> {
    let serving = array(ebpf, t::MAP_SERVING, threads, std::mem::size_of::<u32>())?;
    let grants = array(ebpf, t::MAP_GRANTS, runs, std::mem::size_of::<Grant>())?;
    let kernel = KernelGrants {
        serving: Mapping::shared(
            serving.fd(),
            threads as usize * SERVING_STRIDE,
            t::MAP_SERVING,
        )?,
        grants: Mapping::shared(grants.fd(), runs as usize * GRANT_STRIDE, t::MAP_GRANTS)?,
        threads,
        slot_count: runs,
        slots: Slots::new(runs),
    };
    KERNEL.set(kernel).map_err(|_| {
        super::failed(format!(
            "{} and {} are already mapped in this process (the monitors were loaded twice)",
            t::MAP_SERVING,
            t::MAP_GRANTS
        ))
    })
}

/// The object's array `name`, checked to be what the daemon writes through
/// its mapping: `entries` values of `value_size` bytes, memory-mappable.
fn array<'a>(
    ebpf: &'a Ebpf,
    name: &str,
    entries: u32,
    value_size: usize,
) -> Result<&'a MapData, Failure> {
    let Some(Map::Array(data)) = ebpf.map(name) else {
        return Err(super::failed(format!("the object has no {name} array")));
    };
    let info = data
        .info()
        .map_err(|e| super::failed(format!("{name}: {e}")))?;
    if info.max_entries() != entries
        || info.value_size() as usize != value_size
        || info.map_flags() & BPF_F_MMAPABLE == 0
    {
        return Err(super::failed(format!(
            "{name} has {} entries of {} bytes, flags {:#x}; the daemon writes {entries} of {value_size}, memory-mapped",
            info.max_entries(),
            info.value_size(),
            info.map_flags()
        )));
    }
    Ok(data)
}

impl KernelGrants {
    /// Thread `tid`'s entry of `SERVING` (below `threads`).
    fn serving(&self, tid: u32) -> &AtomicU32 {
        let p = self
            .serving
            .at(tid as usize * SERVING_STRIDE, SERVING_STRIDE);
        // SAFETY: in the mapping (checked by `at`), 4-aligned (the mapping
        // is page-aligned, the stride 8), and only ever accessed atomically
        // here; the kernel reads it with plain loads.
        #[allow(unsafe_code)]
        unsafe {
            AtomicU32::from_ptr(p.cast())
        }
    }

    /// Register thread `tid` as serving `instance` with `entries`.
    fn hold(
        &'static self,
        tid: u32,
        instance: u64,
        entries: &[GrantDest],
    ) -> Result<KernelServing, Failure> {
        if tid >= self.threads {
            return Err(super::failed(format!(
                "thread {tid} lies beyond the kernel's {} table ({} entries: pid_max was raised after start); the kernel would refuse its connects",
                t::MAP_SERVING,
                self.threads
            )));
        }
        let entry = self.serving(tid);
        let current = entry.load(Ordering::SeqCst);
        if current != 0 {
            return Err(Failure::new(
                Code::Einternal,
                format!(
                    "thread {tid} already serves the instance of {} slot {}",
                    t::MAP_GRANTS,
                    current - 1
                ),
            ));
        }
        let slot = self.slots.take().ok_or_else(|| {
            Failure::new(
                Code::Eagain,
                format!(
                    "every slot of the kernel's {} is in use ({}, ipc.max_concurrent_runs); retry later",
                    t::MAP_GRANTS,
                    self.slot_count
                ),
            )
        })?;
        self.write_slot(slot, instance, entries);
        entry.store(slot + 1, Ordering::SeqCst);
        Ok(KernelServing {
            held: Some(Held {
                kernel: self,
                tid,
                slot,
            }),
            _thread: PhantomData,
        })
    }

    /// Write `GRANTS[slot]`: `entries` and the instance, the unused entries
    /// zeroed (so `write_slot(slot, 0, &[])` clears it). Volatile stores,
    /// and a fence after them: the slot is whole before a `SERVING` entry
    /// names it.
    fn write_slot(&self, slot: u32, instance: u64, entries: &[GrantDest]) {
        assert!(slot < self.slot_count && entries.len() <= MAX_GRANT_DESTS);
        let g: *mut Grant = self
            .grants
            .at(slot as usize * GRANT_STRIDE, GRANT_STRIDE)
            .cast();
        // SAFETY: `g` is slot `slot` of the mapping (checked by `at`), 8-aligned
        // (page-aligned mapping, stride a multiple of 8); the slot is this
        // caller's alone (taken from the free list) and no SERVING entry
        // names it while it is written.
        #[allow(unsafe_code)]
        unsafe {
            for i in 0..MAX_GRANT_DESTS {
                let d = entries.get(i).copied().unwrap_or(GrantDest::NONE);
                std::ptr::write_volatile(&raw mut (*g).dests[i], d);
            }
            std::ptr::write_volatile(&raw mut (*g).count, entries.len() as u32);
            std::ptr::write_volatile(&raw mut (*g)._pad, 0);
            std::ptr::write_volatile(&raw mut (*g).instance, instance);
        }
        fence(Ordering::SeqCst);
    }

    /// A copy of `GRANTS[slot]`, for the unit tests.
    #[cfg(test)]
    fn read_slot(&self, slot: u32) -> Grant {
        let g: *const Grant = self
            .grants
            .at(slot as usize * GRANT_STRIDE, GRANT_STRIDE)
            .cast();
        // SAFETY: as in `write_slot`; a read of the test's own memory.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::read_volatile(g)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(cidr: &str, ports: &[u16]) -> EgressRule {
        EgressRule {
            cidr: cidr.parse().unwrap(),
            ports: ports.to_vec(),
        }
    }

    fn mapped(addr: [u8; 4]) -> [u8; 16] {
        std::net::Ipv4Addr::from(addr).to_ipv6_mapped().octets()
    }

    #[test]
    fn ipv4_networks_are_v4_mapped_with_96_added_to_the_prefix() {
        let d = dest("10.1.2.3/8".parse().unwrap(), 5432);
        assert_eq!(
            d,
            GrantDest {
                addr: mapped([10, 0, 0, 0]),
                prefix: 104,
                family: 4,
                port: 5432
            }
        );
        let all = dest("0.0.0.0/0".parse().unwrap(), 443);
        assert_eq!((all.addr, all.prefix, all.family), (mapped([0; 4]), 96, 4));
        let host = dest("127.0.0.1/32".parse().unwrap(), 5432);
        assert_eq!((host.addr, host.prefix), (mapped([127, 0, 0, 1]), 128));
    }

    #[test]
    fn ipv6_networks_keep_their_prefix_and_lose_their_host_bits() {
        let d = dest("2001:db8::1/32".parse().unwrap(), 443);
        let net: std::net::Ipv6Addr = "2001:db8::".parse().unwrap();
        assert_eq!(
            d,
            GrantDest {
                addr: net.octets(),
                prefix: 32,
                family: 6,
                port: 443
            }
        );
        let any = dest("::/0".parse().unwrap(), 5432);
        assert_eq!((any.addr, any.prefix, any.family), ([0; 16], 0, 6));
        let one = dest("::1/128".parse().unwrap(), 80);
        assert_eq!((one.addr[15], one.prefix), (1, 128));
    }

    #[test]
    fn rules_expand_to_one_entry_per_network_and_port_each_once() {
        let rules = [
            rule("10.0.0.0/8", &[5432, 5433]),
            rule("10.9.9.9/8", &[5432]), // the same network and port again
            rule("::/0", &[443]),
            rule("192.168.0.0/16", &[]),
        ];
        let e = encode(&rules);
        let pairs: Vec<(u8, u8, u16)> = e.iter().map(|d| (d.family, d.prefix, d.port)).collect();
        assert_eq!(pairs, vec![(4, 104, 5432), (4, 104, 5433), (6, 0, 443)]);
    }

    #[test]
    fn check_fits_refuses_more_pairs_than_the_kernel_holds() {
        let ports = |n: u16| (1..=n).collect::<Vec<u16>>();
        assert_eq!(
            check_fits(&[rule("10.0.0.0/8", &ports(MAX_GRANT_DESTS as u16))]),
            Ok(())
        );
        // Duplicates count once.
        let twice = [
            rule("10.0.0.0/8", &ports(20)),
            rule("10.0.0.0/8", &ports(20)),
        ];
        assert_eq!(check_fits(&twice), Ok(()));
        let over = [
            rule("10.0.0.0/8", &ports(20)),
            rule("::/0", &ports(MAX_GRANT_DESTS as u16 - 19)),
        ];
        let f = check_fits(&over).unwrap_err();
        assert_eq!(f.code, Code::PolicyDenied);
        assert_eq!(
            f.message,
            "the network grants expand to 33 (network, port) pairs; the kernel's per-instance check holds 32"
        );
        assert_eq!(check_fits(&[]), Ok(()));
    }

    #[test]
    fn the_free_list_gives_each_slot_once_until_it_is_put_back() {
        let s = Slots::new(3);
        let taken: Vec<u32> = (0..3).map(|_| s.take().unwrap()).collect();
        assert_eq!(taken, vec![0, 1, 2]);
        assert_eq!(s.take(), None);
        s.put(1);
        assert_eq!(s.take(), Some(1));
        assert_eq!(s.take(), None);
        assert_eq!(Slots::new(0).take(), None);
    }

    /// Maps of `threads` entries and `runs` slots, in anonymous memory.
    fn fake(threads: u32, runs: u32) -> &'static KernelGrants {
        Box::leak(Box::new(KernelGrants {
            serving: Mapping::anonymous(threads as usize * SERVING_STRIDE),
            grants: Mapping::anonymous(runs as usize * GRANT_STRIDE),
            threads,
            slot_count: runs,
            slots: Slots::new(runs),
        }))
    }

    #[test]
    fn serving_fills_the_slot_and_names_it_then_clears_both() {
        let k = fake(64, 2);
        let entries = encode(&[rule("127.0.0.1/32", &[5432]), rule("::1/128", &[5432])]);
        let guard = k.hold(40, 7, &entries).unwrap();
        assert_eq!(k.serving(40).load(Ordering::SeqCst), 1);
        assert_eq!(k.serving(39).load(Ordering::SeqCst), 0);
        let g = k.read_slot(0);
        assert_eq!((g.instance, g.count), (7, 2));
        assert_eq!(&g.dests[..2], &entries[..]);
        assert_eq!(g.dests[2], GrantDest::NONE);
        // The same thread cannot serve two instances at once.
        let again = k.hold(40, 8, &entries).unwrap_err();
        assert_eq!(again.code, Code::Einternal);
        // Another thread takes the next slot.
        let other = k.hold(41, 8, &entries[..1]).unwrap();
        assert_eq!(k.serving(41).load(Ordering::SeqCst), 2);
        drop(guard);
        assert_eq!(k.serving(40).load(Ordering::SeqCst), 0);
        let g = k.read_slot(0);
        assert_eq!((g.instance, g.count), (0, 0));
        assert!(g.dests.iter().all(|d| *d == GrantDest::NONE));
        assert_eq!(k.read_slot(1).count, 1);
        drop(other);
        // Both slots free again.
        let a = k.hold(1, 9, &[]).unwrap();
        let b = k.hold(2, 9, &[]).unwrap();
        drop((a, b));
    }

    #[test]
    fn no_free_slot_is_eagain_and_a_thread_beyond_the_table_fails_closed() {
        let k = fake(16, 1);
        let first = k.hold(3, 1, &[]).unwrap();
        let busy = k.hold(4, 2, &[]).unwrap_err();
        assert_eq!(busy.code, Code::Eagain);
        assert!(
            busy.message.contains("(1, ipc.max_concurrent_runs)"),
            "{}",
            busy.message
        );
        // The refused thread's entry was left alone.
        assert_eq!(k.serving(4).load(Ordering::SeqCst), 0);
        drop(first);
        let beyond = k.hold(16, 3, &[]).unwrap_err();
        assert_eq!(beyond.code, Code::SandboxSetupFailed);
        assert!(
            beyond.message.contains("thread 16 lies beyond"),
            "{}",
            beyond.message
        );
        // The slot went back to the free list.
        drop(k.hold(15, 3, &[]).unwrap());
    }

    #[test]
    fn without_loaded_monitors_serve_registers_nothing_but_still_checks_the_size() {
        let guard = serve(1, &[rule("10.0.0.0/8", &[5432])]).unwrap();
        assert!(guard.held.is_none());
        let many: Vec<u16> = (1..=40).collect();
        assert_eq!(
            serve(1, &[rule("10.0.0.0/8", &many)]).unwrap_err().code,
            Code::PolicyDenied
        );
    }
}
