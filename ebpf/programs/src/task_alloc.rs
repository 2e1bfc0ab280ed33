//! `task_alloc`: every process or thread a bridge process creates, with
//! its clone flags (the parent is the current task).

use crate::common::{bridge_group, emit, verdict};
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::OP_CLONE;

#[lsm(hook = "task_alloc")]
pub fn task_alloc(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, task_alloc, struct task_struct *task, unsigned long clone_flags)
    let previous: i32 = ctx.arg(2);
    let Some(group) = bridge_group() else {
        return previous;
    };
    let flags: u64 = ctx.arg(1);
    emit(group, OP_CLONE, 0, |e| e.arg = flags);
    verdict(previous, 0)
}
