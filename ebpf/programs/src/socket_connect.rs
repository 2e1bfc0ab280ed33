//! `socket_connect`: every connect by a bridge process, and the kernel's
//! egress check, whatever the daemon's own proxy decided:
//!
//! - an IPv4 or IPv6 connect by any bridge process to a port outside the
//!   egress allow-list is refused with EPERM;
//! - one by a thread of the daemon's own process is refused with EPERM
//!   unless the thread serves an instance (`SERVING`) whose grant
//!   (`GRANTS`) holds the destination and port: the daemon connects only
//!   for the instances it serves (its egress proxy).
//!
//! The one exception to both is the daemon's own name lookups: its process
//! may connect to its configured DNS servers on port 53.

use crate::common::{
    bridge_group, daemon_lookup, emit, granted, in_daemon, port_allowed, read, read_at, verdict,
};
use aya_ebpf::helpers::bpf_probe_read_kernel_buf;
use aya_ebpf::macros::lsm;
use aya_ebpf::programs::LsmContext;
use clawos_ebpf_types::{F_SOCKET_TYPE, OP_CONNECT};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EPERM: i32 = 1;

// struct sockaddr_in / sockaddr_in6 (the uapi: fixed for every kernel).
const SA_FAMILY: usize = 0;
const SA_PORT: usize = 2;
const SIN_ADDR: usize = 4;
const SIN6_ADDR: usize = 8;

#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    // LSM_HOOK(int, 0, socket_connect, struct socket *sock,
    //          struct sockaddr *address, int addrlen)
    let previous: i32 = ctx.arg(3);
    let Some(group) = bridge_group() else {
        return previous;
    };
    let sock: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    let addrlen: i32 = ctx.arg(2);
    let family: u16 = read_at(address, SA_FAMILY).unwrap_or(0);
    let kind: i16 = read(sock, F_SOCKET_TYPE).unwrap_or(0);
    let inet = family == AF_INET || family == AF_INET6;
    let port = if inet {
        u16::from_be(read_at(address, SA_PORT).unwrap_or(0))
    } else {
        0
    };
    // The destination, IPv4 as ::ffff:a.b.c.d.
    let mut dest = [0u8; 16];
    if family == AF_INET && addrlen >= 8 {
        dest[10] = 0xff;
        dest[11] = 0xff;
        // SAFETY: the kernel's copy of the caller's address, at least
        // addrlen bytes; the helper checks the read.
        let _ = unsafe { bpf_probe_read_kernel_buf(address.add(SIN_ADDR), &mut dest[12..]) };
    } else if family == AF_INET6 && addrlen >= 24 {
        // SAFETY: as above.
        let _ = unsafe { bpf_probe_read_kernel_buf(address.add(SIN6_ADDR), &mut dest) };
    }
    let ours = if !inet || daemon_lookup(&dest, port) {
        0
    } else if !port_allowed(port) || (in_daemon() && !granted(&dest, port)) {
        -EPERM
    } else {
        0
    };
    emit(group, OP_CONNECT, ours, |e| {
        e.family = family;
        e.port = port;
        e.arg = kind as u16 as u64;
        if family == AF_INET {
            e.addr[..4].copy_from_slice(&dest[12..]);
        } else if family == AF_INET6 {
            e.addr = dest;
        }
    });
    verdict(previous, ours)
}
