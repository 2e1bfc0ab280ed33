//! `task_free`: a thread is gone. The counts of its repeated file
//! operations go out (see `repeats`). It runs in whichever context drops
//! the last reference, so the thread is the hook's argument, not the
//! current task; threads outside the bridge have no table.

use crate::repeats::flush;
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;

#[lsm(hook = "task_free")]
pub fn task_free(ctx: LsmContext) -> i32 {
    // LSM_HOOK(void, LSM_RET_VOID, task_free, struct task_struct *task)
    let task: u64 = ctx.arg(0);
    flush(task);
    0
}
