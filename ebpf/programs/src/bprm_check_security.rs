//! `bprm_check_security`: execve by a bridge process. No bridge process
//! ever executes a program (seccomp and AppArmor refuse it too), so the
//! kernel refuses it here with EPERM as well, and the event names the file.

use crate::common::{bridge_group, emit, read, verdict};
use aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes;
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::{F_BINPRM_FILENAME, OP_EXEC};

const EPERM: i32 = 1;

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, bprm_check_security, struct linux_binprm *bprm)
    let previous: i32 = ctx.arg(1);
    let Some(group) = bridge_group() else {
        return previous;
    };
    let bprm: *const u8 = ctx.arg(0);
    let filename: *const u8 = read(bprm, F_BINPRM_FILENAME).unwrap_or(core::ptr::null());
    emit(group, OP_EXEC, -EPERM, |e| {
        if !filename.is_null() {
            // SAFETY: the kernel's copy of the file name; the helper checks the read.
            if let Ok(s) = unsafe { bpf_probe_read_kernel_str_bytes(filename, &mut e.path) } {
                e.path_len = s.len() as u32;
            }
        }
    });
    verdict(previous, -EPERM)
}
