//! The filesystem, network, cgroup and device interfaces are linked, so every
//! tool of the `tool` world instantiates, but in this build each function
//! answers INTERFACE_UNAVAILABLE (205). Their handles can never be created,
//! so [`Never`] has no values; the resource methods answer the same code and
//! drops delete whatever the table holds.

use super::{ErrorCode, Handles, cgroup, device, filesystem, network};
use wasmtime::component::{HasData, Resource};

/// The resource type behind handles these interfaces cannot hand out yet.
#[derive(Debug)]
pub enum Never {}

/// The view these interfaces get: only the instance's handles.
pub struct UnavailableView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
}

/// Marker for the unavailable interfaces' view.
pub struct UnavailableHost;

impl HasData for UnavailableHost {
    type Data<'a> = UnavailableView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

fn unavailable<T>(interface: &str, function: &str) -> R<T> {
    tracing::debug!(
        interface,
        function,
        "call to an interface not available in this build"
    );
    Ok(Err(ErrorCode::InterfaceUnavailable))
}

impl UnavailableView<'_> {
    fn drop_never(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        Ok(())
    }
}

impl filesystem::Host for UnavailableView<'_> {
    fn open(&mut self, _: String, _: filesystem::OpenFlags, _: u32) -> R<Resource<Never>> {
        unavailable("filesystem", "open")
    }
    fn mkdir(&mut self, _: String, _: u32) -> R<()> {
        unavailable("filesystem", "mkdir")
    }
    fn rmdir(&mut self, _: String) -> R<()> {
        unavailable("filesystem", "rmdir")
    }
    fn unlink(&mut self, _: String) -> R<()> {
        unavailable("filesystem", "unlink")
    }
    fn rename(&mut self, _: String, _: String) -> R<()> {
        unavailable("filesystem", "rename")
    }
    fn stat(&mut self, _: String) -> R<filesystem::FileStat> {
        unavailable("filesystem", "stat")
    }
    fn opendir(&mut self, _: String) -> R<Resource<Never>> {
        unavailable("filesystem", "opendir")
    }
    fn link(&mut self, _: String, _: String) -> R<()> {
        unavailable("filesystem", "link")
    }
    fn symlink(&mut self, _: String, _: String) -> R<()> {
        unavailable("filesystem", "symlink")
    }
    fn readlink(&mut self, _: String) -> R<String> {
        unavailable("filesystem", "readlink")
    }
    fn chmod(&mut self, _: String, _: u32) -> R<()> {
        unavailable("filesystem", "chmod")
    }
    fn chown(&mut self, _: String, _: u32, _: u32) -> R<()> {
        unavailable("filesystem", "chown")
    }
    fn truncate(&mut self, _: String, _: u64) -> R<()> {
        unavailable("filesystem", "truncate")
    }
    fn sync(&mut self, _: Resource<Never>) -> R<()> {
        unavailable("filesystem", "sync")
    }
}

impl filesystem::HostFile for UnavailableView<'_> {
    fn read(&mut self, _: Resource<Never>, _: u32) -> R<Vec<u8>> {
        unavailable("filesystem", "file.read")
    }
    fn write(&mut self, _: Resource<Never>, _: Vec<u8>) -> R<u32> {
        unavailable("filesystem", "file.write")
    }
    fn seek(&mut self, _: Resource<Never>, _: i64, _: filesystem::Whence) -> R<u64> {
        unavailable("filesystem", "file.seek")
    }
    fn stat(&mut self, _: Resource<Never>) -> R<filesystem::FileStat> {
        unavailable("filesystem", "file.stat")
    }
    fn drop(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.drop_never(handle)
    }
}

impl filesystem::HostDirectory for UnavailableView<'_> {
    fn readdir(&mut self, _: Resource<Never>) -> R<Option<filesystem::DirEntry>> {
        unavailable("filesystem", "directory.readdir")
    }
    fn drop(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.drop_never(handle)
    }
}

impl network::Host for UnavailableView<'_> {
    fn socket(&mut self, _: String, _: u16) -> R<Resource<Never>> {
        unavailable("network", "socket")
    }
    fn resolve(&mut self, _: String) -> R<Vec<network::IpAddress>> {
        unavailable("network", "resolve")
    }
    fn gethostname(&mut self) -> R<String> {
        unavailable("network", "gethostname")
    }
}

impl network::HostConnection for UnavailableView<'_> {
    fn send(&mut self, _: Resource<Never>, _: Vec<u8>) -> R<u32> {
        unavailable("network", "connection.send")
    }
    fn receive(&mut self, _: Resource<Never>, _: u32) -> R<Vec<u8>> {
        unavailable("network", "connection.receive")
    }
    fn close(&mut self, _: Resource<Never>) -> R<()> {
        unavailable("network", "connection.close")
    }
    fn drop(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.drop_never(handle)
    }
}

impl cgroup::Host for UnavailableView<'_> {
    fn create(&mut self, _: String) -> R<Resource<Never>> {
        unavailable("cgroup", "create")
    }
    fn open(&mut self, _: String) -> R<Resource<Never>> {
        unavailable("cgroup", "open")
    }
    fn delete(&mut self, _: String) -> R<()> {
        unavailable("cgroup", "delete")
    }
    fn add_process(&mut self, _: Resource<Never>, _: u32) -> R<()> {
        unavailable("cgroup", "add-process")
    }
    fn remove_process(&mut self, _: Resource<Never>, _: u32) -> R<()> {
        unavailable("cgroup", "remove-process")
    }
    fn get_memory_limit(&mut self, _: Resource<Never>) -> R<Option<u64>> {
        unavailable("cgroup", "get-memory-limit")
    }
    fn set_memory_limit(&mut self, _: Resource<Never>, _: Option<u64>) -> R<()> {
        unavailable("cgroup", "set-memory-limit")
    }
    fn get_cpu_limit(&mut self, _: Resource<Never>) -> R<cgroup::CpuLimit> {
        unavailable("cgroup", "get-cpu-limit")
    }
    fn set_cpu_limit(&mut self, _: Resource<Never>, _: cgroup::CpuLimit) -> R<()> {
        unavailable("cgroup", "set-cpu-limit")
    }
    fn get_pids_limit(&mut self, _: Resource<Never>) -> R<Option<u64>> {
        unavailable("cgroup", "get-pids-limit")
    }
    fn set_pids_limit(&mut self, _: Resource<Never>, _: Option<u64>) -> R<()> {
        unavailable("cgroup", "set-pids-limit")
    }
}

impl cgroup::HostGroup for UnavailableView<'_> {
    fn drop(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.drop_never(handle)
    }
}

impl device::Host for UnavailableView<'_> {
    fn open(&mut self, _: String, _: bool) -> R<Resource<Never>> {
        unavailable("device", "open")
    }
    fn get_info(&mut self, _: Resource<Never>) -> R<device::DeviceInfo> {
        unavailable("device", "get-info")
    }
}

impl device::HostDevice for UnavailableView<'_> {
    fn read(&mut self, _: Resource<Never>, _: u32) -> R<Vec<u8>> {
        unavailable("device", "device.read")
    }
    fn write(&mut self, _: Resource<Never>, _: Vec<u8>) -> R<u32> {
        unavailable("device", "device.write")
    }
    fn drop(&mut self, handle: Resource<Never>) -> wasmtime::Result<()> {
        self.drop_never(handle)
    }
}
