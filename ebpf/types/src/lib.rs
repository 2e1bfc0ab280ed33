//! What the bridge's eBPF monitors (`ebpf/programs`) and the daemon that
//! loads them (`clawos_bridge::monitor`) agree on: the event record on the
//! ring buffer, the operation codes, the names of the programs, maps and
//! globals, and which kernel struct members the programs read (the loader
//! finds where they lie in the running kernel).
//!
//! `no_std` and free of dependencies: it builds for `bpfel-unknown-none`.

#![no_std]

/// Bytes of a path kept in an event (`d_path` of the opened file, the
/// exec'd file name), NUL included; longer ones are cut.
pub const PATH_BYTES: usize = 256;

/// Size of the ring buffer the programs write events to. A power of two
/// and a multiple of the page size (the kernel's rule).
pub const RING_BYTES: u32 = 8 << 20;

/// File operations each bridge thread keeps a count of: the first of a
/// kind (operation, inode, mode or mask) is an event; the same again only
/// counts, and the count goes out in a summary event (`Event::repeats`)
/// at least every `REPORT_EVERY_NS` while they go on, when the slot is
/// taken by another operation, and when the thread ends.
pub const RECENT_SLOTS: usize = 8;

/// The most thread ids the table array (`RECENT`) is sized for: the
/// loader sizes it to the kernel's `pid_max`, but to no more than this
/// (about 19 MiB of tables). Threads with a greater id report every call.
pub const RECENT_THREADS_MAX: u32 = 65536;

/// How often the count of a repeated operation goes out while it goes on.
pub const REPORT_EVERY_NS: u64 = 1_000_000_000;

/// Ports the kernel's egress check can hold (the allow-list's ports).
pub const MAX_PORTS: usize = 32;

/// Destinations, each a (network, port) pair, one instance's grant can
/// hold in the kernel (`Grant::dests`): a tool's rules that expand to more
/// are refused before it runs.
pub const MAX_GRANT_DESTS: usize = 32;

/// One destination of a grant: a network and one port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantDest {
    /// The network's address, network byte order; IPv4 as
    /// `::ffff:a.b.c.d`.
    pub addr: [u8; 16],
    /// Prefix length over those 128 bits: an IPv4 `/n` is `96 + n`.
    pub prefix: u8,
    /// 4 or 6. A v4-mapped destination matches only family-4 entries, any
    /// other only family-6 ones.
    pub family: u8,
    /// Destination port, host byte order.
    pub port: u16,
}

impl GrantDest {
    /// An unused entry.
    pub const NONE: GrantDest = GrantDest {
        addr: [0; 16],
        prefix: 0,
        family: 0,
        port: 0,
    };
}

/// The destinations one instance may connect to, as the kernel checks
/// them: a slot of `GRANTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Grant {
    /// The instance (for the reader of a dump; the kernel does not read it).
    pub instance: u64,
    /// Entries of `dests` in use.
    pub count: u32,
    /// Explicit padding: `dests` starts at byte 16.
    pub _pad: u32,
    /// The destinations; `count` of them in use.
    pub dests: [GrantDest; MAX_GRANT_DESTS],
}

// The kernel spaces the values of a memory-mapped array by their size
// rounded up to 8: a `Grant` is a multiple of 8, so slot N lies at byte
// N * size_of::<Grant>() of the mapping.
const _: () = assert!(core::mem::size_of::<Grant>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<GrantDest>() == 20);

/// One operation of a bridge process, as the kernel saw it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// The task's own cgroup (its cgroup v2 inode number).
    pub cgroup: u64,
    /// The task's ancestor one level below the bridge's root
    /// (`<root>/instance-N`, `<root>/daemon`): says which instance.
    pub group: u64,
    /// Process (thread group) id and thread id, in the initial pid namespace.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// One of the `OP_*` values.
    pub op: u32,
    /// What the program answered the kernel: 0, or a negative errno it
    /// refused the operation with.
    pub verdict: i32,
    /// `OP_OPEN`: the file's `f_mode` (FMODE_READ 1, FMODE_WRITE 2);
    /// `OP_ACCESS`: the `MAY_*` mask; `OP_CLONE`: clone flags;
    /// `OP_SOCKET`: the socket type.
    pub arg: u64,
    /// The file's inode number (`OP_OPEN`, `OP_ACCESS`).
    pub ino: u64,
    /// Address family (`OP_SOCKET`, `OP_CONNECT`).
    pub family: u16,
    /// Destination port, host byte order (`OP_CONNECT`).
    pub port: u16,
    /// Protocol (`OP_SOCKET`).
    pub protocol: u32,
    /// Destination address (`OP_CONNECT`): 4 bytes for AF_INET, 16 for
    /// AF_INET6, network byte order.
    pub addr: [u8; 16],
    /// Bytes of `path` in use, NUL excluded.
    pub path_len: u32,
    /// 0: this event is one operation. N > 0: a summary, standing for N
    /// more of the operation (`op`, `arg`, `ino`) this thread already
    /// reported (see `RECENT_SLOTS`); it has no path.
    pub repeats: u32,
    /// Path (`OP_OPEN`: the file, as seen from the process's root;
    /// `OP_EXEC`: the file name given to execve).
    pub path: [u8; PATH_BYTES],
}

/// `file_open`: a file was opened.
pub const OP_OPEN: u32 = 1;
/// `file_permission`: a read or write on an open regular file.
pub const OP_ACCESS: u32 = 2;
/// `socket_create`.
pub const OP_SOCKET: u32 = 3;
/// `socket_connect`.
pub const OP_CONNECT: u32 = 4;
/// `bprm_check_security`: an execve.
pub const OP_EXEC: u32 = 5;
/// `task_alloc`: a new process or thread.
pub const OP_CLONE: u32 = 6;

/// The name of an `OP_*` value.
pub fn op_name(op: u32) -> &'static str {
    match op {
        OP_OPEN => "open",
        OP_ACCESS => "access",
        OP_SOCKET => "socket",
        OP_CONNECT => "connect",
        OP_EXEC => "exec",
        OP_CLONE => "clone",
        _ => "unknown",
    }
}

/// The LSM programs, by the hook each attaches to (program name = hook).
pub const HOOKS: [&str; 6] = [
    "file_open",
    "file_permission",
    "socket_create",
    "socket_connect",
    "bprm_check_security",
    "task_alloc",
];

/// The BTF tracepoint programs, by the tracepoint each attaches to
/// (program name = tracepoint): `sched_process_exit` sends the counts of an
/// ending thread's repeated file operations.
pub const TRACEPOINTS: [&str; 1] = ["sched_process_exit"];

/// The ring buffer map.
pub const MAP_EVENTS: &str = "EVENTS";
/// Count of operations whose event the ring buffer had no room for.
pub const MAP_LOST: &str = "LOST";
/// The threads' tables of repeated file operations, by thread id (sized
/// by the loader, see `RECENT_THREADS_MAX`).
pub const MAP_RECENT: &str = "RECENT";

/// Which instance each thread serves, by thread id (`Array<u32>`, sized by
/// the loader like `RECENT`: `pid_max`, at most `RECENT_THREADS_MAX`):
/// the instance's slot in `GRANTS` + 1, or 0 when the thread serves none.
/// A connect by a thread of the daemon's own process (other than its name
/// lookups) is allowed only to a destination of the grant its entry names;
/// with 0 it is refused. Memory-mapped (`BPF_F_MMAPABLE`): the daemon
/// writes its entries through a shared mapping, without a bpf() call (its
/// seccomp filter refuses them all). The kernel spaces an array's values
/// by their size rounded up to 8 bytes: entry N lies at byte 8 * N.
pub const MAP_SERVING: &str = "SERVING";
/// The grants of the runs in flight (`Array<Grant>`, one slot per run the
/// daemon may have in flight: the loader sizes it to
/// `ipc.max_concurrent_runs`). Memory-mapped like `SERVING`; the daemon
/// fills a slot before a thread's `SERVING` entry names it, and clears
/// the entry before it clears the slot.
pub const MAP_GRANTS: &str = "GRANTS";

/// Global: the bridge's cgroup root's id. Events come only from its subtree.
pub const GLOBAL_ROOT_CGROUP: &str = "ROOT_CGROUP";
/// Global: level of that cgroup below the cgroup2 root (1 for `/clawos`).
pub const GLOBAL_ROOT_LEVEL: &str = "ROOT_LEVEL";
/// Global: the daemon's pid. Its own reads and writes are not reported
/// (they are its log and state: reporting them would feed back).
pub const GLOBAL_DAEMON_PID: &str = "DAEMON_PID";
/// Global: the egress ports, `[u16; MAX_PORTS]`, and how many are in use.
pub const GLOBAL_PORTS: &str = "PORTS";
/// Global: how many of `PORTS` are in use.
pub const GLOBAL_PORT_COUNT: &str = "PORT_COUNT";
/// Global: the DNS servers the daemon's own lookups go to,
/// `[[u8; 16]; MAX_RESOLVERS]` (IPv4 as `::ffff:a.b.c.d`). The daemon's
/// process, and only it, may connect to these on `DNS_PORT`.
pub const GLOBAL_RESOLVERS: &str = "RESOLVERS";
/// Global: how many of `RESOLVERS` are in use.
pub const GLOBAL_RESOLVER_COUNT: &str = "RESOLVER_COUNT";
/// DNS servers the kernel's egress check holds (glibc's MAXNS).
pub const MAX_RESOLVERS: usize = 3;
/// The port of the daemon's lookups (DNS over TCP).
pub const DNS_PORT: u16 = 53;

/// Global: the byte offsets of [`FIELDS`] in the running kernel,
/// `[u32; FIELD_COUNT]`, indexed by the `F_*` constants. The loader
/// resolves each from the kernel's BTF and writes them before the programs
/// are verified; the map is read-only to the programs and frozen, so the
/// verifier sees each offset as a constant and checks every load and
/// helper argument made with it against the kernel's types.
pub const GLOBAL_FIELD_OFFSETS: &str = "FIELD_OFFSETS";

/// What a kernel struct member the programs read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// An integer (or enum) of `Field::size` bytes, not a bitfield.
    Int,
    /// A pointer.
    Pointer,
    /// A struct of this name, embedded.
    Struct(&'static str),
}

/// A member of a kernel struct the programs read. Where it lies is not
/// known here: it differs between kernels (`struct file` alone moved in
/// 6.6 and again in 6.12), so the loader resolves it from the running
/// kernel's BTF, through nested and anonymous members, and refuses to load
/// when the member is missing or not of this size and shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The struct (`file` for `struct file`).
    pub strukt: &'static str,
    /// The member, as C names it (`f_path`), directly in the struct or in
    /// an anonymous struct or union of it.
    pub member: &'static str,
    /// Bytes the programs read (or, for a struct, hand to a helper).
    pub size: u32,
    /// What it must be.
    pub shape: Shape,
}

/// Index in [`FIELDS`]: `struct file.f_path` (what `bpf_d_path` is given).
pub const F_FILE_PATH: usize = 0;
/// Index in [`FIELDS`]: `struct file.f_inode`.
pub const F_FILE_INODE: usize = 1;
/// Index in [`FIELDS`]: `struct file.f_mode`.
pub const F_FILE_MODE: usize = 2;
/// Index in [`FIELDS`]: `struct inode.i_mode`.
pub const F_INODE_MODE: usize = 3;
/// Index in [`FIELDS`]: `struct inode.i_ino`.
pub const F_INODE_INO: usize = 4;
/// Index in [`FIELDS`]: `struct linux_binprm.filename`.
pub const F_BINPRM_FILENAME: usize = 5;
/// Index in [`FIELDS`]: `struct socket.type`.
pub const F_SOCKET_TYPE: usize = 6;
/// How many fields the programs read.
pub const FIELD_COUNT: usize = 7;

/// Every kernel struct member the programs read, at its `F_*` index.
pub const FIELDS: [Field; FIELD_COUNT] = [
    Field {
        strukt: "file",
        member: "f_path",
        size: 16,
        shape: Shape::Struct("path"),
    },
    Field {
        strukt: "file",
        member: "f_inode",
        size: 8,
        shape: Shape::Pointer,
    },
    Field {
        strukt: "file",
        member: "f_mode",
        size: 4,
        shape: Shape::Int,
    },
    Field {
        strukt: "inode",
        member: "i_mode",
        size: 2,
        shape: Shape::Int,
    },
    Field {
        strukt: "inode",
        member: "i_ino",
        size: 8,
        shape: Shape::Int,
    },
    Field {
        strukt: "linux_binprm",
        member: "filename",
        size: 8,
        shape: Shape::Pointer,
    },
    Field {
        strukt: "socket",
        member: "type",
        size: 2,
        shape: Shape::Int,
    },
];
