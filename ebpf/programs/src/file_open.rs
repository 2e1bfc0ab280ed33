//! `file_open`: every open by a bridge process, with the file's path (as
//! seen from the process's root), inode and read/write mode; opens of the
//! same file in the same mode again are counted (`repeats`). Not
//! sleepable: the kernel allows `bpf_d_path` in any LSM program on a hook
//! that may sleep (`file_open` is one), and a sleepable program costs
//! more on every call (its trampoline enters RCU tasks trace).

use crate::common::{emit, field_ptr, group, in_bridge, load, verdict};
use crate::repeats::repeated;
use aya_ebpf::bindings::path;
use aya_ebpf::helpers::{bpf_d_path, bpf_get_current_pid_tgid};
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::{F_FILE_INODE, F_FILE_MODE, F_FILE_PATH, F_INODE_INO, OP_OPEN, PATH_BYTES};

#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, file_open, struct file *file)
    let previous: i32 = ctx.arg(1);
    // (`floor`: a test-only build, see Cargo.toml.)
    if !in_bridge() || cfg!(feature = "floor") {
        return previous;
    }
    let file: *const u8 = ctx.arg(0);
    let mode: u32 = load(file, F_FILE_MODE);
    let inode: *const u8 = load(file, F_FILE_INODE);
    let ino: u64 = load(inode, F_INODE_INO);
    if repeated(bpf_get_current_pid_tgid(), OP_OPEN, mode, ino) {
        return verdict(previous, 0);
    }
    emit(group(), OP_OPEN, 0, |e| {
        e.arg = u64::from(mode);
        e.ino = ino;
        // SAFETY: `file` is the hook's `struct file *` (a BTF pointer the
        // verifier knows), f_path lies at the offset the loader resolved
        // for this kernel (the verifier checks a struct path is there), and
        // the buffer is the event's own.
        let n = unsafe {
            bpf_d_path(
                field_ptr(file, F_FILE_PATH) as *const path,
                e.path.as_mut_ptr() as *mut _,
                PATH_BYTES as u32,
            )
        };
        // The length counts the NUL.
        if n > 1 {
            e.path_len = (n - 1) as u32;
        }
    });
    verdict(previous, 0)
}
