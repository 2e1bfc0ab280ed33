//! `clawos:bridge/filesystem`: files beneath the tool's ClawFS root
//! ([`crate::clawfs`] does the confinement), with the instance's quotas:
//! open files and directories (WASM_RESOURCE_LIMIT) and bytes written
//! (QUOTA_EXCEEDED).

use super::wit_filesystem::{
    DirEntry, FileStat, FileType as WitType, Host, HostDirectory, HostFile, OpenFlags, Whence,
};
use super::{ErrorCode, Handles, refuse};
use crate::clawfs::{Root, check_mode, file_type};
use crate::config::ClawfsPolicy;
use crate::error::{Code, Failure};
use rustix::fs::{FileType, Mode, OFlags, Stat};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use wasmtime::component::{HasData, Resource};

/// An open file.
#[derive(Debug)]
pub struct File {
    file: std::fs::File,
    path: String,
}

/// An open directory being listed.
pub struct Directory {
    entries: rustix::fs::Dir,
}

/// One instance's filesystem state.
#[derive(Debug)]
pub struct FsState {
    root: Arc<Root>,
    policy: Arc<ClawfsPolicy>,
    open: u32,
    wasi_open: std::collections::HashSet<u32>,
    written: u64,
    uid: u32,
    gid: u32,
    who: String,
}

impl FsState {
    /// State for an instance of tool `who` confined to `root`.
    pub fn new(root: Arc<Root>, policy: Arc<ClawfsPolicy>, who: String) -> FsState {
        FsState {
            root,
            policy,
            open: 0,
            wasi_open: std::collections::HashSet::new(),
            written: 0,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            who,
        }
    }

    /// Files and directories open now, through this interface and WASI.
    pub fn open_now(&self) -> u32 {
        self.open + self.wasi_open.len() as u32
    }

    /// Whether one more file may be opened.
    pub fn reserve_open(&self) -> Result<(), Failure> {
        if self.open_now() >= self.policy.max_open_files {
            return Err(Failure::new(
                Code::WasmResourceLimit,
                format!(
                    "open files limit of {} per instance reached",
                    self.policy.max_open_files
                ),
            ));
        }
        Ok(())
    }

    /// Forget the WASI descriptors the tool has dropped since.
    pub fn prune_wasi(&mut self, table: &wasmtime::component::ResourceTable) {
        self.wasi_open.retain(|rep| {
            table
                .get(&Resource::<wasmtime_wasi::filesystem::Descriptor>::new_borrow(*rep))
                .is_ok()
        });
    }

    /// Count a WASI descriptor `open-at` made, by its resource index.
    pub fn opened_wasi(&mut self, rep: u32) {
        self.wasi_open.insert(rep);
    }

    /// The tool's root.
    pub fn root(&self) -> &Arc<Root> {
        &self.root
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Charge `want` bytes against the write quota; returns how many may be written.
    fn charge(&mut self, want: u64) -> Result<u64, Failure> {
        let left = self.policy.max_write_bytes.saturating_sub(self.written);
        if want > 0 && left == 0 {
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!(
                    "write quota of {} bytes per instance is spent",
                    self.policy.max_write_bytes
                ),
            ));
        }
        let n = want.min(left);
        self.written += n;
        Ok(n)
    }
}

/// The view the filesystem interface gets.
pub struct FilesystemView<'a> {
    /// The instance's handles.
    pub handles: &'a mut Handles,
    /// Its filesystem state.
    pub fs: &'a mut FsState,
}

/// Marker for the filesystem interface's view.
pub struct FilesystemHost;

impl HasData for FilesystemHost {
    type Data<'a> = FilesystemView<'a>;
}

type R<T> = wasmtime::Result<Result<T, ErrorCode>>;

fn wit_stat(st: &Stat) -> FileStat {
    FileStat {
        file_type: match file_type(st) {
            FileType::RegularFile => WitType::Regular,
            FileType::Directory => WitType::Directory,
            FileType::Symlink => WitType::Symlink,
            _ => WitType::Other,
        },
        size: st.st_size as u64,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        mtime: st.st_mtime,
    }
}

fn oflags(how: OpenFlags) -> Result<OFlags, Failure> {
    let write = how.intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::TRUNCATE);
    let mut f = match (how.contains(OpenFlags::READ), write) {
        (true, true) => OFlags::RDWR,
        (true, false) => OFlags::RDONLY,
        (false, true) => OFlags::WRONLY,
        (false, false) => {
            return Err(Failure::new(
                Code::InvalidArgument,
                "open flags ask for neither read nor write",
            ));
        }
    };
    if how.contains(OpenFlags::CREATE) {
        f |= OFlags::CREATE;
    }
    if how.contains(OpenFlags::EXCLUSIVE) {
        f |= OFlags::EXCL;
    }
    if how.contains(OpenFlags::TRUNCATE) {
        f |= OFlags::TRUNC;
    }
    if how.contains(OpenFlags::APPEND) {
        f |= OFlags::APPEND;
    }
    Ok(f)
}

impl FilesystemView<'_> {
    fn answer<T>(&self, op: &str, r: Result<T, Failure>) -> R<T> {
        Ok(r.map_err(|f| refuse("filesystem", op, &self.fs.who, f)))
    }

    fn push<T: Send + 'static>(&mut self, value: T) -> Result<Resource<T>, Failure> {
        let handle = self
            .handles
            .push(value)
            .map_err(|code| Failure::new(code.into(), "handle limit reached"))?;
        self.fs.open += 1;
        Ok(handle)
    }

    fn file(&mut self, handle: &Resource<File>) -> Result<&mut File, ErrorCode> {
        self.handles
            .table
            .get_mut(handle)
            .map_err(|e| super::table_error(&e))
    }

    fn read_file(&mut self, handle: &Resource<File>, len: u32) -> Result<Vec<u8>, Failure> {
        let max = self.fs.policy.max_io_bytes;
        let file = self.file(handle).map_err(invalid_handle)?;
        let mut buf = vec![0; len.min(max) as usize];
        let n = file
            .file
            .read(&mut buf)
            .map_err(|e| Failure::io(format_args!("read {:?}", file.path), &e))?;
        buf.truncate(n);
        Ok(buf)
    }

    fn write_file(&mut self, handle: &Resource<File>, data: &[u8]) -> Result<u32, Failure> {
        let want = data.len().min(self.fs.policy.max_io_bytes as usize) as u64;
        let file = self.file(handle).map_err(invalid_handle)?;
        // A write past the end grows the file by the gap too: charge that.
        let size = file
            .file
            .metadata()
            .map_err(|e| Failure::io(format_args!("stat {:?}", file.path), &e))?
            .len();
        let pos = file
            .file
            .stream_position()
            .map_err(|e| Failure::io(format_args!("seek {:?}", file.path), &e))?;
        let gap = pos.saturating_sub(size);
        let charged = if gap > 0 { self.fs.charge(gap)? } else { 0 };
        if charged < gap {
            self.fs.written -= charged;
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!("a write {gap} bytes past the end passes the write quota"),
            ));
        }
        let n = self.fs.charge(want)? as usize;
        let file = self.file(handle).map_err(invalid_handle)?;
        let wrote = file.file.write(&data[..n]);
        let wrote = match wrote {
            Ok(w) => w,
            Err(e) => {
                let msg = format!("write {:?}", file.path);
                self.fs.written -= n as u64;
                return Err(Failure::io(msg, &e));
            }
        };
        self.fs.written -= (n - wrote) as u64;
        Ok(wrote as u32)
    }

    fn truncate_path(&mut self, path: &str, size: u64) -> Result<(), Failure> {
        let fd = self.fs.root.open_at(path, OFlags::WRONLY, Mode::empty())?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| Failure::io(format_args!("stat {path:?}"), &e.into()))?;
        let growth = size.saturating_sub(st.st_size as u64);
        let charged = self.fs.charge(growth)?;
        if charged < growth {
            self.fs.written -= charged;
            return Err(Failure::new(
                Code::QuotaExceeded,
                format!("growing {path:?} by {growth} bytes passes the write quota"),
            ));
        }
        rustix::fs::ftruncate(&fd, size).map_err(|e| {
            self.fs.written -= charged;
            Failure::io(format_args!("truncate {path:?}"), &e.into())
        })
    }

    fn chown_allowed(&self, uid: u32, gid: u32) -> Result<(), Failure> {
        let p = &self.fs.policy;
        if uid != self.fs.uid && !p.chown_uids.contains(&uid) {
            return Err(Failure::new(
                Code::Eperm,
                format!("chown to uid {uid} is not allowed (clawfs.chown_uids)"),
            ));
        }
        if gid != self.fs.gid && !p.chown_gids.contains(&gid) {
            return Err(Failure::new(
                Code::Eperm,
                format!("chown to gid {gid} is not allowed (clawfs.chown_gids)"),
            ));
        }
        Ok(())
    }
}

fn invalid_handle(code: ErrorCode) -> Failure {
    Failure::new(code.into(), "unknown or closed file handle")
}

impl Host for FilesystemView<'_> {
    fn open(&mut self, path: String, how: OpenFlags, mode: u32) -> R<Resource<File>> {
        let r = (|| {
            self.fs.prune_wasi(&self.handles.table);
            self.fs.reserve_open()?;
            let mode = check_mode(mode)?;
            let fd = self.fs.root.open_at(&path, oflags(how)?, mode)?;
            let file = std::fs::File::from(fd);
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                return Err(Failure::new(
                    Code::InvalidArgument,
                    format!("{path:?} is a directory: use opendir"),
                ));
            }
            self.push(File {
                file,
                path: path.clone(),
            })
        })();
        self.answer("open", r)
    }

    fn mkdir(&mut self, path: String, mode: u32) -> R<()> {
        let r = self.fs.root.mkdir(&path, mode);
        self.answer("mkdir", r)
    }

    fn rmdir(&mut self, path: String) -> R<()> {
        let r = self.fs.root.rmdir(&path);
        self.answer("rmdir", r)
    }

    fn unlink(&mut self, path: String) -> R<()> {
        let r = self.fs.root.unlink(&path);
        self.answer("unlink", r)
    }

    fn rename(&mut self, old_path: String, new_path: String) -> R<()> {
        let r = self.fs.root.rename(&old_path, &new_path);
        self.answer("rename", r)
    }

    fn stat(&mut self, path: String) -> R<FileStat> {
        let r = self.fs.root.stat(&path).map(|st| wit_stat(&st));
        self.answer("stat", r)
    }

    fn opendir(&mut self, path: String) -> R<Resource<Directory>> {
        let r = (|| {
            self.fs.prune_wasi(&self.handles.table);
            self.fs.reserve_open()?;
            let fd =
                self.fs
                    .root
                    .open_at(&path, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())?;
            let entries = rustix::fs::Dir::new(fd)
                .map_err(|e| Failure::io(format_args!("opendir {path:?}"), &e.into()))?;
            self.push(Directory { entries })
        })();
        self.answer("opendir", r)
    }

    fn link(&mut self, existing: String, new_path: String) -> R<()> {
        let r = self.fs.root.link(&existing, &new_path);
        self.answer("link", r)
    }

    fn symlink(&mut self, target: String, link_path: String) -> R<()> {
        let r = self.fs.root.symlink(&target, &link_path);
        self.answer("symlink", r)
    }

    fn readlink(&mut self, path: String) -> R<String> {
        let r = self.fs.root.readlink(&path);
        self.answer("readlink", r)
    }

    fn chmod(&mut self, path: String, mode: u32) -> R<()> {
        let r = self.fs.root.chmod(&path, mode);
        self.answer("chmod", r)
    }

    fn chown(&mut self, path: String, uid: u32, gid: u32) -> R<()> {
        let r = self
            .chown_allowed(uid, gid)
            .and_then(|()| self.fs.root.chown(&path, uid, gid));
        self.answer("chown", r)
    }

    fn truncate(&mut self, path: String, size: u64) -> R<()> {
        let r = self.truncate_path(&path, size);
        self.answer("truncate", r)
    }

    fn sync(&mut self, fd: Resource<File>) -> R<()> {
        let r = self.file(&fd).map_err(invalid_handle).and_then(|f| {
            f.file
                .sync_all()
                .map_err(|e| Failure::io(format_args!("sync {:?}", f.path), &e))
        });
        self.answer("sync", r)
    }
}

impl HostFile for FilesystemView<'_> {
    fn read(&mut self, handle: Resource<File>, len: u32) -> R<Vec<u8>> {
        let r = self.read_file(&handle, len);
        self.answer("file.read", r)
    }

    fn write(&mut self, handle: Resource<File>, data: Vec<u8>) -> R<u32> {
        let r = self.write_file(&handle, &data);
        self.answer("file.write", r)
    }

    fn seek(&mut self, handle: Resource<File>, offset: i64, whence: Whence) -> R<u64> {
        let r = self.file(&handle).map_err(invalid_handle).and_then(|f| {
            let to = match whence {
                Whence::Start => SeekFrom::Start(u64::try_from(offset).map_err(|_| {
                    Failure::new(
                        Code::InvalidArgument,
                        format!("seek to negative offset {offset}"),
                    )
                })?),
                Whence::Current => SeekFrom::Current(offset),
                Whence::End => SeekFrom::End(offset),
            };
            f.file
                .seek(to)
                .map_err(|e| Failure::io(format_args!("seek {:?}", f.path), &e))
        });
        self.answer("file.seek", r)
    }

    fn stat(&mut self, handle: Resource<File>) -> R<FileStat> {
        let r = self.file(&handle).map_err(invalid_handle).and_then(|f| {
            rustix::fs::fstat(&f.file)
                .map(|st| wit_stat(&st))
                .map_err(|e| Failure::io(format_args!("stat {:?}", f.path), &e.into()))
        });
        self.answer("file.stat", r)
    }

    fn drop(&mut self, handle: Resource<File>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        self.fs.open -= 1;
        Ok(())
    }
}

impl HostDirectory for FilesystemView<'_> {
    fn readdir(&mut self, handle: Resource<Directory>) -> R<Option<DirEntry>> {
        let r = match self.handles.table.get_mut(&handle) {
            Err(e) => Err(invalid_handle(super::table_error(&e))),
            Ok(dir) => loop {
                match dir.entries.read() {
                    None => break Ok(None),
                    Some(Err(e)) => break Err(Failure::io("readdir", &e.into())),
                    Some(Ok(entry)) => {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        if name == "." || name == ".." {
                            continue;
                        }
                        let file_type = match entry.file_type() {
                            FileType::RegularFile => WitType::Regular,
                            FileType::Directory => WitType::Directory,
                            FileType::Symlink => WitType::Symlink,
                            _ => WitType::Other,
                        };
                        break Ok(Some(DirEntry { name, file_type }));
                    }
                }
            },
        };
        self.answer("directory.readdir", r)
    }

    fn drop(&mut self, handle: Resource<Directory>) -> wasmtime::Result<()> {
        self.handles.delete(handle)?;
        self.fs.open -= 1;
        Ok(())
    }
}
