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
                let mut view = instance.filesystem();
                let borrowed = Resource::new_borrow(fd.rep());
                if let Err(e) = HostDescriptor::set_size(&mut view, borrowed, 0) {
                    let code = fst::Host::convert_error_code(&mut view, e)?;
                    HostDescriptor::drop(&mut view, fd)?;
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
            let mut view = instance.filesystem();
            match HostDescriptor::symlink_at(&mut view, dir, target, link_path) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(fst::Host::convert_error_code(&mut view, e)?),)),
            }
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
            let mut view = instance.filesystem();
            match HostDescriptor::link_at(&mut view, dir, old_flags, old_path, new_dir, new_path) {
                Ok(()) => Ok((Ok(()),)),
                Err(e) => Ok((Err(fst::Host::convert_error_code(&mut view, e)?),)),
            }
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
