//! `clawos:bridge/device`: devices by name from the daemon's allow-list
//! (`[devices]` in the config). A name that is not listed, anything that
//! looks like a path, and a write to a device not listed as writable are
//! EPERM; the node behind a name must be a character or block device.

use super::wit_device::{DeviceInfo, DeviceKind, Host, HostDevice};
use super::{ErrorCode, Handles, refuse};
use crate::config::DevicePolicy;
use crate::error::{Code, Failure};
use rustix::fs::{FileType, Mode, OFlags};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};

/// An open device.
#[derive(Debug)]
pub struct Device {
    file: std::fs::File,
    info: DeviceInfo,
}

/// The view the device interface gets.
pub struct DeviceView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
    /// The allow-list.
    pub policy: &'a Arc<DevicePolicy>,
    /// The tool, for logs.
    pub who: &'a str,
}

/// Marker for the device interface's view.
pub struct DeviceHost;

impl HasData for DeviceHost {
    type Data<'a> = DeviceView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

/// Open the allow-listed device `name`.
pub fn open_device(policy: &DevicePolicy, name: &str, write: bool) -> Result<Device, Failure> {
    let rule = policy
        .allow
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            let hint = if name.contains('/') {
                " (devices are opened by name, never by path)"
            } else {
                ""
            };
            Failure::new(
                Code::Eperm,
                format!("device {name:?} is not on the allow-list{hint}"),
            )
        })?;
    if write && !rule.write {
        return Err(Failure::new(
            Code::Eperm,
            format!("device {name:?} is read-only by policy"),
        ));
    }
    let flags = if write { OFlags::RDWR } else { OFlags::RDONLY };
    let fd = rustix::fs::open(
        &rule.path,
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| {
        Failure::io(
            format_args!("open device {name:?} ({})", rule.path.display()),
            &e.into(),
        )
    })?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| Failure::io(format_args!("stat device {name:?}"), &e.into()))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::CharacterDevice => DeviceKind::Character,
        FileType::BlockDevice => DeviceKind::Block,
        other => {
            return Err(Failure::new(
                Code::Eperm,
                format!(
                    "{} (device {name:?}) is a {other:?}, not a device node",
                    rule.path.display()
                ),
            ));
        }
    };
    let mut file = std::fs::File::from(fd);
    let size = match kind {
        // A block device's size is where a seek to its end lands.
        DeviceKind::Block => {
            let end = file
                .seek(SeekFrom::End(0))
                .map_err(|e| Failure::io(format_args!("size of {name:?}"), &e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| Failure::io(format_args!("rewind {name:?}"), &e))?;
            end
        }
        DeviceKind::Character => 0,
    };
    let info = DeviceInfo {
        name: name.to_owned(),
        kind,
        major: rustix::fs::major(st.st_rdev),
        minor: rustix::fs::minor(st.st_rdev),
        size,
        read_only: !write,
    };
    Ok(Device { file, info })
}

impl DeviceView<'_> {
    fn answer<T>(&self, op: &str, r: Result<T, Failure>) -> R<T> {
        Ok(r.map_err(|f| refuse("device", op, self.who, f)))
    }

    fn device(&mut self, handle: &Resource<Device>) -> Result<&mut Device, Failure> {
        self.handles.table.get_mut(handle).map_err(|e| {
            Failure::new(
                super::table_error(&e).into(),
                "unknown or closed device handle",
            )
        })
    }
}

impl Host for DeviceView<'_> {
    fn open(&mut self, name: String, write: bool) -> R<Resource<Device>> {
        let r = open_device(self.policy, &name, write).and_then(|d| {
            self.handles
                .push(d)
                .map_err(|code| Failure::new(code.into(), "handle limit reached"))
        });
        self.answer("open", r)
    }

    fn get_info(&mut self, handle: Resource<Device>) -> R<DeviceInfo> {
        let r = self.device(&handle).map(|d| d.info.clone());
        self.answer("get-info", r)
    }
}

impl HostDevice for DeviceView<'_> {
    fn read(&mut self, handle: Resource<Device>, len: u32) -> R<Vec<u8>> {
        let max = self.policy.max_io_bytes;
        let r = self.device(&handle).and_then(|d| {
            let mut buf = vec![0; len.min(max) as usize];
            let n = d
                .file
                .read(&mut buf)
                .map_err(|e| Failure::io(format_args!("read device {:?}", d.info.name), &e))?;
            buf.truncate(n);
            Ok(buf)
        });
        self.answer("device.read", r)
    }

    fn write(&mut self, handle: Resource<Device>, data: Vec<u8>) -> R<u32> {
        let max = self.policy.max_io_bytes as usize;
        let r = self.device(&handle).and_then(|d| {
            if d.info.read_only {
                return Err(Failure::new(
                    Code::Eperm,
                    format!("device {:?} was opened read-only", d.info.name),
                ));
            }
            let n = d
                .file
                .write(&data[..data.len().min(max)])
                .map_err(|e| Failure::io(format_args!("write device {:?}", d.info.name), &e))?;
            Ok(n as u32)
        });
        self.answer("device.write", r)
    }

    fn drop(&mut self, handle: Resource<Device>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceRule;

    #[test]
    fn only_listed_names_open() {
        let p = DevicePolicy::default();
        for name in [
            "/dev/mem",
            "mem",
            "kmem",
            "sda",
            "../null",
            "/dev/null",
            "port",
        ] {
            assert_eq!(
                open_device(&p, name, false).unwrap_err().code,
                Code::Eperm,
                "{name}"
            );
        }
        let err = open_device(&p, "/dev/null", false).unwrap_err();
        assert!(err.message.contains("never by path"), "{}", err.message);
        assert_eq!(
            open_device(&p, "urandom", true).unwrap_err().code,
            Code::Eperm
        );
        let mut null = open_device(&p, "null", true).unwrap();
        assert_eq!((null.info.major, null.info.minor), (1, 3));
        assert_eq!(null.info.kind, DeviceKind::Character);
        assert_eq!(null.file.write(b"gone").unwrap(), 4);
        let mut zero = open_device(&p, "zero", false).unwrap();
        let mut buf = [7u8; 8];
        zero.file.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [0; 8]);
        assert_eq!(
            (zero.info.major, zero.info.minor, zero.info.read_only),
            (1, 5, true)
        );
    }

    #[test]
    fn a_listed_path_that_is_not_a_device_is_refused() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        let p = DevicePolicy {
            allow: vec![DeviceRule {
                name: "fake".into(),
                path: tmp.path().to_owned(),
                write: false,
            }],
            ..DevicePolicy::default()
        };
        assert_eq!(
            open_device(&p, "fake", false).unwrap_err().code,
            Code::Eperm
        );
    }
}
