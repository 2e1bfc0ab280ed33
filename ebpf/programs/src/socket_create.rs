//! `socket_create`: every socket a bridge process makes (not the kernel's own).

use crate::common::{bridge_group, emit, verdict};
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::OP_SOCKET;

#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, socket_create, int family, int type, int protocol, int kern)
    let previous: i32 = ctx.arg(4);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return previous;
    }
    let Some(group) = bridge_group() else {
        return previous;
    };
    let family: i32 = ctx.arg(0);
    let kind: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    emit(group, OP_SOCKET, 0, |e| {
        e.family = family as u16;
        e.arg = kind as u32 as u64;
        e.protocol = protocol as u32;
    });
    verdict(previous, 0)
}
