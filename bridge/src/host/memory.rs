//! `clawos:bridge/memory` and the instance's memory account. One
//! [`MemoryAccount`] per instance counts linear memory (it is the store's
//! `ResourceLimiter`) and host regions together against one limit, so a tool
//! cannot get past its cap by allocating on the host side.
//!
//! A region from `open-shared` is shared by the live instances of a tool.
//! Each sandboxed run is a process of its own, so there it is memory the
//! daemon holds (a sealed memfd, [`crate::outside::Outside::shared_region`])
//! mapped into every worker of the tool that opens it; instances in one
//! process (benchmarks, unit tests) share a buffer of that process.

use super::wit_memory::{Host, HostSharedRegion, Usage};
use super::{ErrorCode, Handles, SandboxTrap, refuse, table_error};
use crate::outside::Outside;
use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};
use wasmtime::component::{HasData, Resource};

/// Longest name of a shared region.
const MAX_REGION_NAME: usize = 64;
/// Largest read from a region in one call, so one call cannot force a huge
/// host-side copy outside the account.
const MAX_TRANSFER: u64 = 16 << 20;

type Bytes = Arc<Backing>;
/// (tool, region name) to the region, while some instance holds it.
type SharedMap = HashMap<(String, String), Weak<Backing>>;

/// A region's bytes.
#[derive(Debug)]
enum Backing {
    /// This process's own memory.
    Private(Mutex<Vec<u8>>),
    /// A shared mapping of the daemon's memfd.
    Mapped(Mapping),
}

/// `len` bytes of a memfd mapped shared, read and write. Other processes
/// (workers of the same tool) write it at any time: bytes are copied in and
/// out with raw copies, never through a Rust reference to the mapping.
#[derive(Debug)]
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory, valid until Drop unmaps it;
// every access is a bounds-checked raw copy.
#[allow(unsafe_code)]
unsafe impl Send for Mapping {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl Sync for Mapping {}

#[allow(unsafe_code)]
impl Mapping {
    /// Map all of `fd`, which must be `len` bytes.
    fn new(fd: &OwnedFd, len: u64) -> Result<Mapping, ErrorCode> {
        let st = rustix::fs::fstat(fd).map_err(|_| ErrorCode::Einternal)?;
        if u64::try_from(st.st_size).ok() != Some(len) {
            return Err(ErrorCode::Einternal);
        }
        let len = usize::try_from(len).map_err(|_| ErrorCode::InvalidArgument)?;
        if len == 0 {
            return Ok(Mapping {
                ptr: std::ptr::NonNull::dangling().as_ptr(),
                len,
            });
        }
        use rustix::mm::{MapFlags, ProtFlags};
        // SAFETY: a new mapping at an address the kernel picks, of a file
        // whose size was checked above.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|_| ErrorCode::WasmMemoryLimit)?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        assert!(range.end <= self.len);
        let mut out = vec![0u8; range.len()];
        // SAFETY: the range lies in the mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(range.start), out.as_mut_ptr(), out.len());
        }
        out
    }

    fn write(&self, start: usize, data: &[u8]) {
        assert!(start + data.len() <= self.len);
        // SAFETY: the range lies in the mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(start), data.len());
        }
    }
}

#[allow(unsafe_code)]
impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `new`, unmapped once.
            let _ = unsafe { rustix::mm::munmap(self.ptr.cast(), self.len) };
        }
    }
}

/// A host-backed region held through a handle.
#[derive(Debug)]
pub struct Region {
    bytes: Bytes,
    size: u64,
}

/// Named regions shared by the live instances of one tool. The map holds
/// weak references: a region lives while some instance holds a handle to it.
#[derive(Debug, Default)]
pub struct SharedRegions {
    map: Mutex<SharedMap>,
}

impl SharedRegions {
    /// The region `name` of `tool`, created with `size` zero bytes if none
    /// is live: the daemon's (through `outside`) for a sandboxed instance,
    /// this process's otherwise.
    fn open(
        &self,
        tool: &str,
        name: &str,
        size: u64,
        outside: &dyn Outside,
    ) -> Result<Bytes, ErrorCode> {
        let mut map = self.map.lock().map_err(|_| ErrorCode::Einternal)?;
        map.retain(|_, weak| weak.strong_count() > 0);
        let key = (tool.to_owned(), name.to_owned());
        if let Some(bytes) = map.get(&key).and_then(Weak::upgrade) {
            let len = match &*bytes {
                Backing::Private(b) => b.lock().map_err(|_| ErrorCode::Einternal)?.len(),
                Backing::Mapped(m) => m.len,
            };
            return if len as u64 == size {
                Ok(bytes)
            } else {
                Err(ErrorCode::InvalidArgument)
            };
        }
        let backing = match outside.shared_region(name, size) {
            Ok(Some(fd)) => Backing::Mapped(Mapping::new(&fd, size)?),
            Ok(None) => Backing::Private(Mutex::new(vec![
                0;
                usize::try_from(size).map_err(|_| {
                    ErrorCode::InvalidArgument
                })?
            ])),
            Err(f) => return Err(refuse("memory", "open-shared", tool, f)),
        };
        let bytes = Arc::new(backing);
        map.insert(key, Arc::downgrade(&bytes));
        Ok(bytes)
    }
}

/// Which count limit an instance is held to (the store's `ResourceLimiter`).
#[derive(Debug, Clone, Copy)]
pub struct CountLimits {
    /// Core instances.
    pub instances: usize,
    /// Tables.
    pub tables: usize,
    /// Linear memories.
    pub memories: usize,
    /// Elements per table.
    pub table_elements: usize,
}

/// Linear memory and host regions of one instance, against one limit.
#[derive(Debug)]
pub struct MemoryAccount {
    limit: u64,
    linear: u64,
    host: u64,
    peak: u64,
    counts: CountLimits,
}

impl MemoryAccount {
    /// An empty account with `limit` bytes.
    pub fn new(limit: u64, counts: CountLimits) -> MemoryAccount {
        MemoryAccount {
            limit,
            linear: 0,
            host: 0,
            peak: 0,
            counts,
        }
    }

    /// The most linear plus host bytes held at once.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    fn charge_host(&mut self, bytes: u64) -> Result<(), ErrorCode> {
        // Saturating: a tool chooses `bytes` (u64::MAX included), and a
        // sum that wrapped would pass the check.
        if self.linear.saturating_add(self.host).saturating_add(bytes) > self.limit {
            return Err(ErrorCode::WasmMemoryLimit);
        }
        self.host += bytes;
        self.peak = self.peak.max(self.linear + self.host);
        Ok(())
    }

    fn release_host(&mut self, bytes: u64) {
        self.host = self.host.saturating_sub(bytes);
    }
}

impl wasmtime::ResourceLimiter for MemoryAccount {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let linear = (self.linear.saturating_sub(current as u64)).saturating_add(desired as u64);
        if linear.saturating_add(self.host) > self.limit {
            return Err(SandboxTrap::MemoryLimit {
                limit: self.limit,
                linear,
                host: self.host,
            }
            .into());
        }
        self.linear = linear;
        self.peak = self.peak.max(self.linear + self.host);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.counts.table_elements {
            return Err(SandboxTrap::TableLimit {
                limit: self.counts.table_elements as u64,
                desired: desired as u64,
            }
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        self.counts.instances
    }

    fn tables(&self) -> usize {
        self.counts.tables
    }

    fn memories(&self) -> usize {
        self.counts.memories
    }
}

/// The memory interface's view of an instance.
pub struct MemoryView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
    /// The instance's memory account.
    pub account: &'a mut MemoryAccount,
    /// Regions shared between instances of the same tool.
    pub shared: &'a SharedRegions,
    /// Where the memory of shared regions comes from.
    pub outside: &'a dyn Outside,
    /// The tool's name: the namespace of its shared regions.
    pub tool: &'a str,
}

/// Marker for the memory interface's view.
pub struct MemoryHost;

impl HasData for MemoryHost {
    type Data<'a> = MemoryView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

impl MemoryView<'_> {
    /// Charge `size` bytes to the account, then make the region's bytes with
    /// `make` and hand out a handle; the charge is undone if either fails, so
    /// nothing is allocated past the limit.
    fn hold(
        &mut self,
        size: u64,
        make: impl FnOnce(&Self) -> Result<Bytes, ErrorCode>,
    ) -> Result<Resource<Region>, ErrorCode> {
        self.account.charge_host(size)?;
        let region = make(self).map(|bytes| Region { bytes, size });
        region
            .and_then(|r| self.handles.push(r))
            .inspect_err(|_| self.account.release_host(size))
    }

    fn region(&self, handle: &Resource<Region>) -> Result<&Region, ErrorCode> {
        self.handles.table.get(handle).map_err(|e| table_error(&e))
    }
}

/// The byte range `offset..offset+len` if it lies in a region of `size` bytes.
fn range(size: u64, offset: u64, len: u64) -> Result<std::ops::Range<usize>, ErrorCode> {
    let end = offset.checked_add(len).ok_or(ErrorCode::InvalidArgument)?;
    if end > size || len > MAX_TRANSFER {
        return Err(ErrorCode::InvalidArgument);
    }
    Ok(offset as usize..end as usize)
}

impl Host for MemoryView<'_> {
    fn allocate(&mut self, size: u64) -> R<Resource<Region>> {
        Ok(self.hold(size, |_| {
            let len = usize::try_from(size).map_err(|_| ErrorCode::InvalidArgument)?;
            Ok(Arc::new(Backing::Private(Mutex::new(vec![0; len]))))
        }))
    }

    fn open_shared(&mut self, name: String, size: u64) -> R<Resource<Region>> {
        if name.is_empty() || name.len() > MAX_REGION_NAME {
            return Ok(Err(ErrorCode::InvalidArgument));
        }
        Ok(self.hold(size, |view| {
            view.shared.open(view.tool, &name, size, view.outside)
        }))
    }

    fn get_usage(&mut self) -> wasmtime::Result<Usage> {
        Ok(Usage {
            linear: self.account.linear,
            host: self.account.host,
        })
    }

    fn get_limit(&mut self) -> wasmtime::Result<u64> {
        Ok(self.account.limit)
    }
}

impl HostSharedRegion for MemoryView<'_> {
    fn size(&mut self, handle: Resource<Region>) -> wasmtime::Result<u64> {
        // `size` cannot fail in WIT; the component ABI already refused any
        // handle this instance does not own, so a miss here is a bridge bug.
        Ok(self.handles.table.get(&handle)?.size)
    }

    fn read(&mut self, handle: Resource<Region>, offset: u64, len: u32) -> R<Vec<u8>> {
        let region = match self.region(&handle) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let range = match range(region.size, offset, len.into()) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        Ok(Ok(match &*region.bytes {
            Backing::Private(b) => b
                .lock()
                .map_err(|_| wasmtime::format_err!("shared region lock poisoned"))?[range]
                .to_vec(),
            Backing::Mapped(m) => m.read(range),
        }))
    }

    fn write(&mut self, handle: Resource<Region>, offset: u64, data: Vec<u8>) -> R<()> {
        let region = match self.region(&handle) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let range = match range(region.size, offset, data.len() as u64) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        match &*region.bytes {
            Backing::Private(b) => b
                .lock()
                .map_err(|_| wasmtime::format_err!("shared region lock poisoned"))?[range]
                .copy_from_slice(&data),
            Backing::Mapped(m) => m.write(range.start, &data),
        }
        Ok(Ok(()))
    }

    fn drop(&mut self, handle: Resource<Region>) -> wasmtime::Result<()> {
        let region = self.handles.delete(handle)?;
        self.account.release_host(region.size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    const COUNTS: CountLimits = CountLimits {
        instances: 4,
        tables: 4,
        memories: 2,
        table_elements: 100,
    };

    #[test]
    fn linear_and_host_share_one_limit() {
        let mut account = MemoryAccount::new(1000, COUNTS);
        assert!(account.memory_growing(0, 600, None).unwrap());
        assert_eq!(account.charge_host(500), Err(ErrorCode::WasmMemoryLimit));
        account.charge_host(400).unwrap();
        let err = account.memory_growing(600, 700, None).unwrap_err();
        assert_eq!(
            err.downcast_ref::<SandboxTrap>(),
            Some(&SandboxTrap::MemoryLimit {
                limit: 1000,
                linear: 700,
                host: 400
            })
        );
        account.release_host(400);
        assert!(account.memory_growing(600, 1000, None).unwrap());
        assert_eq!(account.peak(), 1000);
    }

    #[test]
    fn table_growth_past_the_limit_traps() {
        let mut account = MemoryAccount::new(1000, COUNTS);
        assert!(account.table_growing(0, 100, None).unwrap());
        let err = account.table_growing(100, 101, None).unwrap_err();
        assert_eq!(
            err.downcast_ref::<SandboxTrap>(),
            Some(&SandboxTrap::TableLimit {
                limit: 100,
                desired: 101
            })
        );
    }

    #[test]
    fn region_ranges_are_checked() {
        assert_eq!(range(10, 0, 10), Ok(0..10));
        assert_eq!(range(10, 10, 0), Ok(10..10));
        assert_eq!(range(10, 5, 6), Err(ErrorCode::InvalidArgument));
        assert_eq!(range(10, u64::MAX, 2), Err(ErrorCode::InvalidArgument));
    }

    #[test]
    fn shared_regions_are_per_tool_and_live_while_held() {
        let shared = SharedRegions::default();
        let open = |tool: &str, size| shared.open(tool, "r", size, &Daemon::InProcess);
        let a = open("t", 8).unwrap();
        a.write_at(0, &[42]);
        let b = open("t", 8).unwrap();
        assert_eq!(b.read_at(0..1), [42]);
        assert_eq!(open("t", 9).unwrap_err(), ErrorCode::InvalidArgument);
        let other = open("u", 8).unwrap();
        assert_eq!(other.read_at(0..1), [0]);
        drop((a, b));
        assert_eq!(open("t", 9).unwrap().read_at(0..9), [0; 9]);
    }

    #[test]
    fn regions_of_separate_processes_share_the_daemon_s_memory() {
        // Two workers each have their own SharedRegions; the daemon's
        // memfd is what they share.
        let daemon = Daemon::Memfds(Mutex::default());
        let (w1, w2) = (SharedRegions::default(), SharedRegions::default());
        let a = w1.open("t", "board", 4096, &daemon).unwrap();
        let b = w2.open("t", "board", 4096, &daemon).unwrap();
        a.write_at(4000, b"from a");
        assert_eq!(b.read_at(4000..4006), b"from a");
        b.write_at(0, b"from b");
        assert_eq!(a.read_at(0..6), b"from b");
        // A zero-byte region maps nothing and reads nothing.
        let z = w1.open("t", "empty", 0, &daemon).unwrap();
        assert!(z.read_at(0..0).is_empty());
        // The daemon's refusal is the tool's code.
        assert_eq!(
            w1.open("t", "refused", 1, &Daemon::Refusing).unwrap_err(),
            ErrorCode::QuotaExceeded
        );
    }

    impl Backing {
        fn read_at(&self, range: std::ops::Range<usize>) -> Vec<u8> {
            match self {
                Backing::Private(b) => b.lock().unwrap()[range].to_vec(),
                Backing::Mapped(m) => m.read(range),
            }
        }

        fn write_at(&self, start: usize, data: &[u8]) {
            match self {
                Backing::Private(b) => {
                    b.lock().unwrap()[start..start + data.len()].copy_from_slice(data)
                }
                Backing::Mapped(m) => m.write(start, data),
            }
        }
    }

    /// The daemon's side of shared regions, for one process's tests.
    #[derive(Debug)]
    enum Daemon {
        /// Instances in one process: no memory from outside.
        InProcess,
        /// What the daemon does: one sealed memfd per name.
        Memfds(Mutex<HashMap<String, OwnedFd>>),
        /// A daemon that refuses every region.
        Refusing,
    }

    impl Outside for Daemon {
        fn resolve(&self, _: &str) -> Result<Vec<std::net::IpAddr>, crate::error::Failure> {
            unreachable!("only shared regions")
        }
        fn connect(
            &self,
            _: &str,
            _: u16,
            _: std::time::Duration,
        ) -> Result<std::net::TcpStream, crate::error::Failure> {
            unreachable!("only shared regions")
        }
        fn cgroup(
            &self,
            _: crate::outside::CgroupCall,
        ) -> Result<crate::outside::CgroupReply, crate::error::Failure> {
            unreachable!("only shared regions")
        }
        fn shared_region(
            &self,
            name: &str,
            size: u64,
        ) -> Result<Option<OwnedFd>, crate::error::Failure> {
            match self {
                Daemon::InProcess => Ok(None),
                Daemon::Memfds(map) => {
                    let mut map = map.lock().unwrap();
                    if !map.contains_key(name) {
                        map.insert(name.to_owned(), crate::outside::sealed_memfd(size)?);
                    }
                    Ok(Some(
                        rustix::io::fcntl_dupfd_cloexec(&map[name], 0).unwrap(),
                    ))
                }
                Daemon::Refusing => Err(crate::error::Failure::new(
                    crate::error::Code::QuotaExceeded,
                    "too many shared regions",
                )),
            }
        }
    }
}
