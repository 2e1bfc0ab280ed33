//! The bridge's eBPF monitors. Each LSM hook is one program in a file of
//! its own; `common` holds the maps, the globals the loader sets, the
//! cgroup filter and the event writer.
//!
//! Every program first asks whether the current task is in the bridge's
//! cgroup subtree (daemon, launcher, workers); for any other task it
//! returns at once, with the verdict of the programs before it.

#![no_std]
#![no_main]
// An atomic add on the loss counter (BPF_XADD), see common::emit.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod bprm_check_security;
mod common;
mod file_open;
mod file_permission;
mod repeats;
mod socket_connect;
mod socket_create;
mod task_alloc;
mod thread_exit;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No panic can be reached in a verified program.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
