//! `file_permission`: reads and writes of regular files by bridge
//! processes other than the daemon (whose own are its log and state:
//! reporting them would feed back). The path is the one its open reported,
//! matched by inode. The same access to the same file again is counted
//! (`repeats`).

use crate::common::{daemon_pid, emit, group, in_bridge, load, verdict};
use crate::repeats::repeated;
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::{F_FILE_INODE, F_INODE_INO, F_INODE_MODE, OP_ACCESS};

const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

#[lsm(hook = "file_permission")]
pub fn file_permission(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, file_permission, struct file *file, int mask)
    let previous: i32 = ctx.arg(2);
    // (`floor`: a test-only build, see Cargo.toml.)
    if !in_bridge() || cfg!(feature = "floor") {
        return previous;
    }
    let id = bpf_get_current_pid_tgid();
    if (id >> 32) as u32 == daemon_pid() {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let mask: i32 = ctx.arg(1);
    let inode: *const u8 = load(file, F_FILE_INODE);
    let mode: u16 = load(inode, F_INODE_MODE);
    if mode & S_IFMT != S_IFREG {
        return previous;
    }
    let ino: u64 = load(inode, F_INODE_INO);
    if repeated(id, OP_ACCESS, mask as u32, ino) {
        return verdict(previous, 0);
    }
    emit(group(), OP_ACCESS, 0, |e| {
        e.arg = mask as u32 as u64;
        e.ino = ino;
    });
    verdict(previous, 0)
}
