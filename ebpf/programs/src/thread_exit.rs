//! `sched_process_exit` (a BTF tracepoint, not an LSM hook): a thread is
//! ending. The counts of its repeated file operations go out (see
//! `repeats`) and its table is freed.
//!
//! The tracepoint fires in the exiting thread itself, early in `do_exit`,
//! so the table is found by the current thread's ids exactly as the file
//! hooks stored it, and nothing else writes it meanwhile. (The LSM `task_free`
//! hook would also see every thread end, but from whatever context drops
//! the last reference, RCU callbacks included; with it attached the guest
//! froze when the daemon was killed and its links detached.) Threads
//! outside the bridge have no table: an array lookup and a compare is all
//! they cost.

use crate::repeats::flush;
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use aya_ebpf::macros::btf_tracepoint;
use aya_ebpf::programs::BtfTracePointContext;

#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(_ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p): the current task.
    flush(bpf_get_current_pid_tgid());
    0
}
