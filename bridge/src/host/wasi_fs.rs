//! The restricted WASI a tool built with Rust std sees: stdio, clocks and
//! random from wasmtime-wasi, no sockets, and one filesystem preopen, `/`,
//! which is the tool's ClawFS root. wasmtime-wasi resolves paths beneath the
//! preopen with cap-std (`..`, absolute symlinks and symlinks out of it are
//! refused), but like every path resolver it cannot see that a regular file
//! inside the root is a hard link to one outside. So `open-at` is wrapped:
//! after wasmtime-wasi opens a file, the bridge applies ClawFS's rules to the
//! open descriptor (only regular files and directories, every link of a
//! multiply linked file inside the root) and closes it with `not-permitted`
//! if they fail, before the tool can read or write a byte.
//!
//! `symlink-at` and `link-at` are wrapped too, so that WASI makes nothing the
//! filesystem interface refuses: no symlink whose target climbs out of the
//! root (cap-std only refuses to follow one), no new link to a file that is
//! linked from outside the root. (WASI has no chmod or chown: the root's
//! mode and owner are the bridge's, and its own interface refuses to change
//! them.)
//!
//! wasmtime-wasi 50 has no errno for a spent storage quota: EDQUOT becomes
//! `io`. The bridge answers `quota` instead, exactly for stream writes (the
//! stream's error still holds the errno) and, for the descriptor calls that
//! allocate (open-at, create-directory-at, symlink-at, link-at, write,
//! set-size), when the call failed with `io` and the tool's tree has no
//! block or inode left.

use crate::runtime::state::Instance;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::filesystem::{Descriptor, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{
    self as fst, DescriptorFlags, DescriptorType, ErrorCode, HostDescriptor, OpenFlags, PathFlags,
};

/// The WASI filesystem interface name wasmtime-wasi 50 links.
pub const TYPES_INTERFACE: &str = "wasi:filesystem/types@0.2.12";

/// Link wasmtime-wasi's p2 interfaces, with sockets answering
/// `access-denied` (the WasiCtx allows no TCP, UDP or name lookup) and
/// `open-at` wrapped as described above.
pub fn add_to_linker(linker: &mut Linker<Instance>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.open-at",
        |mut store,
         (dir, path_flags, path, open_flags, flags): (
            Resource<Descriptor>,
            PathFlags,
            String,
            OpenFlags,
            DescriptorFlags,
        )| {
            let instance: &mut Instance = store.data_mut();
            // The open-file limit covers WASI descriptors too: forget those
            // the tool has dropped, then count.
            instance.fs.prune_wasi(&instance.handles.table);
            if let Err(refusal) = instance.fs.reserve_open() {
                tracing::warn!(tool = %instance.info.tool, instance = instance.info.id, path, "wasi open refused: {}", refusal.message);
                return Ok((Err(ErrorCode::Quota),));
            }
            // Truncation waits until the file has passed the checks.
            let truncate = open_flags.contains(OpenFlags::TRUNCATE);
            let open_flags = open_flags & !OpenFlags::TRUNCATE;
            // Special files are refused before they are opened: opening a
            // FIFO would block, a device node could act on open.
            {
                let mut view = instance.filesystem();
                let base = Resource::new_borrow(dir.rep());
                if let Ok(st) = HostDescriptor::stat_at(&mut view, base, path_flags, path.clone())
                    && !matches!(
                        st.type_,
                        DescriptorType::RegularFile | DescriptorType::Directory
                    )
                {
                    tracing::warn!(tool = %instance.info.tool, instance = instance.info.id, path, "wasi open refused: a {:?}", st.type_);
                    return Ok((Err(ErrorCode::NotPermitted),));
                }
            }
            let opened = {
                let mut view = instance.filesystem();
                match HostDescriptor::open_at(&mut view, dir, path_flags, path.clone(), open_flags, flags) {
                    Ok(fd) => Ok(fd),
                    Err(e) => Err(fst::Host::convert_error_code(&mut view, e)?),
                }
                .map_err(|code| instance.quota_or(code))
            };
            let fd = match opened {
                Ok(fd) => fd,
                Err(code) => return Ok((Err(code),)),
            };
            if let Err(refusal) = instance.check_wasi_open(&fd, &path) {
                tracing::warn!(tool = %instance.info.tool, instance = instance.info.id, path, "wasi open refused: {}", refusal.message);
                let mut view = instance.filesystem();
                HostDescriptor::drop(&mut view, fd)?;
                return Ok((Err(ErrorCode::NotPermitted),));
            }
            if truncate {
                let borrowed = Resource::new_borrow(fd.rep());
                let done = HostDescriptor::set_size(&mut instance.filesystem(), borrowed, 0);
                if let Err(code) = instance.wasi_result(done)? {
                    HostDescriptor::drop(&mut instance.filesystem(), fd)?;
                    return Ok((Err(code),));
                }
            }
            instance.fs.opened_wasi(fd.rep());
            Ok((Ok(fd),))
        },
    )?;
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.symlink-at",
        |mut store, (dir, target, link_path): (Resource<Descriptor>, String, String)| {
            let instance: &mut Instance = store.data_mut();
            if let Some(code) = instance.refusal("symlink", &link_path, &dir, |root, d| {
                root.check_symlink_at(d, &target, &link_path)
            }) {
                return Ok((Err(code),));
            }
            let done =
                HostDescriptor::symlink_at(&mut instance.filesystem(), dir, target, link_path);
            Ok((instance.wasi_result(done)?,))
        },
    )?;
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.link-at",
        |mut store,
         (dir, old_flags, old_path, new_dir, new_path): (
            Resource<Descriptor>,
            PathFlags,
            String,
            Resource<Descriptor>,
            String,
        )| {
            let instance: &mut Instance = store.data_mut();
            let follow = old_flags.contains(PathFlags::SYMLINK_FOLLOW);
            if let Some(code) = instance.refusal("link", &old_path, &dir, |root, d| {
                root.check_link_source(d, &old_path, follow)
            }) {
                return Ok((Err(code),));
            }
            let done = HostDescriptor::link_at(
                &mut instance.filesystem(),
                dir,
                old_flags,
                old_path,
                new_dir,
                new_path,
            );
            Ok((instance.wasi_result(done)?,))
        },
    )?;
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.create-directory-at",
        |mut store, (dir, path): (Resource<Descriptor>, String)| {
            let instance: &mut Instance = store.data_mut();
            let done = HostDescriptor::create_directory_at(&mut instance.filesystem(), dir, path);
            Ok((instance.wasi_result(done)?,))
        },
    )?;
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.write",
        |mut store, (fd, buffer, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            let instance: &mut Instance = store.data_mut();
            let done = HostDescriptor::write(&mut instance.filesystem(), fd, buffer, offset);
            Ok((instance.wasi_result(done)?,))
        },
    )?;
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "[method]descriptor.set-size",
        |mut store, (fd, size): (Resource<Descriptor>, u64)| {
            let instance: &mut Instance = store.data_mut();
            let done = HostDescriptor::set_size(&mut instance.filesystem(), fd, size);
            Ok((instance.wasi_result(done)?,))
        },
    )?;
    // A stream's error holds the io::Error: EDQUOT is `quota`.
    linker.instance(TYPES_INTERFACE)?.func_wrap(
        "filesystem-error-code",
        |mut store, (err,): (Resource<wasmtime::Error>,)| {
            let instance: &mut Instance = store.data_mut();
            let quota = instance
                .handles
                .table
                .get(&err)?
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::raw_os_error)
                == Some(libc::EDQUOT);
            if quota {
                return Ok((Some(ErrorCode::Quota),));
            }
            Ok((fst::Host::filesystem_error_code(
                &mut instance.filesystem(),
                err,
            )?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// WASI's error for a refusal of ClawFS's rules: `not-permitted` for the
/// policy, `io` for a check that could not be made (never a pass).
fn refused(f: &crate::error::Failure) -> ErrorCode {
    match f.code {
        crate::error::Code::PolicyDenied | crate::error::Code::Eperm => ErrorCode::NotPermitted,
        crate::error::Code::InvalidArgument => ErrorCode::Invalid,
        _ => ErrorCode::Io,
    }
}

impl Instance {
    /// `code`, or `quota` for an `io` failure when the tool's tree has no
    /// block or inode left (EDQUOT, which wasmtime-wasi reports as `io`).
    fn quota_or(&self, code: ErrorCode) -> ErrorCode {
        match code {
            ErrorCode::Io if self.fs.root().is_full() => ErrorCode::Quota,
            code => code,
        }
    }

    /// A descriptor call's result as the tool gets it ([`Instance::quota_or`]).
    fn wasi_result<T>(
        &mut self,
        done: wasmtime_wasi::p2::FsResult<T>,
    ) -> wasmtime::Result<Result<T, ErrorCode>> {
        match done {
            Ok(v) => Ok(Ok(v)),
            Err(e) => {
                let code = fst::Host::convert_error_code(&mut self.filesystem(), e)?;
                Ok(Err(self.quota_or(code)))
            }
        }
    }

    /// The directory a WASI descriptor is, if it is one (a file: WASI
    /// answers `not-directory` itself).
    fn wasi_dir(&self, fd: &Resource<Descriptor>) -> Option<std::sync::Arc<std::fs::File>> {
        match self.handles.table.get(fd) {
            Ok(Descriptor::Dir(d)) => Some(d.dir.clone()),
            _ => None,
        }
    }

    /// The WASI error for `op` on `path` beneath the descriptor `dir` if
    /// `check` (ClawFS's rule, given the root and the directory) refuses
    /// it, logged; `None` to let wasmtime-wasi carry it out. A missing
    /// entry, or a descriptor that is not a directory, is left to WASI,
    /// which answers it as it would anyway.
    fn refusal(
        &self,
        op: &str,
        path: &str,
        dir: &Resource<Descriptor>,
        check: impl FnOnce(&crate::clawfs::Root, &std::fs::File) -> Result<(), crate::error::Failure>,
    ) -> Option<ErrorCode> {
        let d = self.wasi_dir(dir)?;
        match check(self.fs.root(), &d) {
            Err(f) if f.code != crate::error::Code::Enoent => {
                tracing::warn!(tool = %self.info.tool, instance = self.info.id, path, "wasi {op} refused: {}", f.message);
                Some(refused(&f))
            }
            _ => None,
        }
    }

    /// ClawFS's rules for a descriptor wasmtime-wasi has just opened.
    fn check_wasi_open(
        &mut self,
        fd: &Resource<Descriptor>,
        path: &str,
    ) -> Result<(), crate::error::Failure> {
        let root = self.fs.root().clone();
        let descriptor = self.handles.table.get(fd).map_err(|e| {
            crate::error::Failure::new(crate::error::Code::Einternal, e.to_string())
        })?;
        match descriptor {
            Descriptor::File(f) => {
                let st = root.check_links(&*f.file, path)?;
                if crate::clawfs::file_type(&st) != rustix::fs::FileType::RegularFile {
                    return Err(crate::error::Failure::new(
                        crate::error::Code::PolicyDenied,
                        format!("{path:?} is not a regular file or directory"),
                    ));
                }
                Ok(())
            }
            Descriptor::Dir(_) => Ok(()),
        }
    }
}
