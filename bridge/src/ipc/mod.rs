//! The daemon's socket protocol (P1.7). A frame is a 12-byte header, magic
//! `CLAW`, protocol version (u16), flags (u16, zero), payload length (u32),
//! all big-endian, then the payload: one postcard-encoded [`proto::Request`]
//! or [`proto::Response`]. Every request gets exactly one response carrying a
//! P1.7 code. docs/ipc.md describes the protocol for other clients.

pub mod client;
pub mod frame;
pub mod proto;
