use super::*;

/// Writes BTF blobs for the tests (the format of the kernel's
/// Documentation/bpf/btf.rst): a header, the types, the strings.
#[derive(Default)]
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
    count: u32,
}

const INT: u32 = 1;
const PTR: u32 = 2;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const TYPEDEF: u32 = 8;
const CONST: u32 = 10;

impl Blob {
    fn new() -> Blob {
        Blob {
            strings: vec![0],
            ..Blob::default()
        }
    }

    fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let at = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn header(
        &mut self,
        name: &str,
        kind: u32,
        vlen: u32,
        kind_flag: bool,
        size_or_type: u32,
    ) -> u32 {
        let name = self.string(name);
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        for v in [name, info, size_or_type] {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        self.count += 1;
        self.count
    }

    fn int(&mut self, name: &str, bytes: u32) -> u32 {
        let id = self.header(name, INT, 0, false, bytes);
        self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
        id
    }

    fn ptr(&mut self, to: u32) -> u32 {
        self.header("", PTR, 0, false, to)
    }

    fn typedef(&mut self, name: &str, to: u32) -> u32 {
        self.header(name, TYPEDEF, 0, false, to)
    }

    fn konst(&mut self, to: u32) -> u32 {
        self.header("", CONST, 0, false, to)
    }

    /// Members as (name, type, bit offset, bitfield size or 0).
    fn aggregate(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) -> u32 {
        let bitfields = members.iter().any(|m| m.3 != 0);
        let id = self.header(name, kind, members.len() as u32, bitfields, size);
        for &(m, ty, bits, width) in members {
            let m = self.string(m);
            let offset = if bitfields {
                (width << 24) | bits
            } else {
                bits
            };
            for v in [m, ty, offset] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }
        id
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        let hdr = 24u32;
        let types = self.types.len() as u32;
        for v in [hdr, 0, types, types, self.strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// How the made-up kernel differs from a good one.
#[derive(Default)]
struct Quirks {
    no_i_ino: bool,
    no_socket: bool,
    i_ino_bytes: Option<u32>,
    socket_type_bitfield: bool,
    f_inode_is_an_integer: bool,
}

/// A kernel whose `struct file` is laid out like 6.6's and 6.18's: `f_path`
/// const, in an anonymous struct in an anonymous union, at byte 152.
fn kernel(q: Quirks) -> Vec<u8> {
    let mut b = Blob::new();
    let u8_ = b.int("unsigned char", 1);
    let u16_ = b.int("short unsigned int", 2);
    let i16_ = b.int("short int", 2);
    let u32_ = b.int("unsigned int", 4);
    let u64_ = b.int("long unsigned int", 8);
    let fmode = b.typedef("fmode_t", u32_);
    let umode = b.typedef("umode_t", u16_);
    let char_ptr = b.ptr(u8_);
    let void_ptr = b.ptr(0);
    let path = b.aggregate(
        STRUCT,
        "path",
        16,
        &[("mnt", void_ptr, 0, 0), ("dentry", void_ptr, 64, 0)],
    );
    let const_path = b.konst(path);
    let i_ino = q.i_ino_bytes.map(|n| b.int("narrow", n)).unwrap_or(u64_);
    let mut inode = vec![("i_mode", umode, 0, 0), ("i_opflags", u16_, 16, 0)];
    if !q.no_i_ino {
        inode.push(("i_ino", i_ino, 64 * 8, 0));
    }
    let inode = b.aggregate(STRUCT, "inode", 128, &inode);
    let inode_ptr = b.ptr(inode);
    let f_inode = if q.f_inode_is_an_integer {
        u64_
    } else {
        inode_ptr
    };
    let inner = b.aggregate(
        STRUCT,
        "",
        24,
        &[("f_pad", u64_, 0, 0), ("f_path", const_path, 64, 0)],
    );
    let union = b.aggregate(UNION, "", 24, &[("f_llist", u64_, 0, 0), ("", inner, 0, 0)]);
    b.aggregate(
        STRUCT,
        "file",
        184,
        &[
            ("f_count", u64_, 0, 0),
            ("f_mode", fmode, 20 * 8, 0),
            ("", union, 144 * 8, 0),
            ("f_inode", f_inode, 168 * 8, 0),
        ],
    );
    b.aggregate(
        STRUCT,
        "linux_binprm",
        128,
        &[
            ("p", u64_, 0, 0),
            ("have_execfd", u32_, 64, 1),
            ("secureexec", u32_, 65, 1),
            ("filename", char_ptr, 96 * 8, 0),
        ],
    );
    if !q.no_socket {
        let (bits, width) = if q.socket_type_bitfield {
            (32, 3)
        } else {
            (32, 0)
        };
        b.aggregate(
            STRUCT,
            "socket",
            48,
            &[
                ("state", u32_, 0, if width != 0 { 32 } else { 0 }),
                ("type", i16_, bits, width),
            ],
        );
    }
    // A forward declaration of a struct is not the struct.
    b.header("file", 7, 0, false, 0);
    b.bytes()
}

fn messages(raw: &[u8]) -> Vec<String> {
    Layout::resolve(raw)
        .expect_err("the layout should be refused")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn resolves_members_inside_anonymous_unions_and_structs() {
    let layout = Layout::resolve(&kernel(Quirks::default())).unwrap();
    // file.f_path, f_inode, f_mode, inode.i_mode, i_ino, linux_binprm.filename, socket.type
    assert_eq!(layout.offsets, [152, 168, 20, 0, 64, 96, 4]);
    assert_eq!(
        layout.describe(),
        "file.f_path=152 file.f_inode=168 file.f_mode=20 inode.i_mode=0 inode.i_ino=64 \
         linux_binprm.filename=96 socket.type=4"
    );
}

#[test]
fn a_missing_member_is_named() {
    let found = messages(&kernel(Quirks {
        no_i_ino: true,
        ..Quirks::default()
    }));
    assert_eq!(
        found,
        ["struct inode has no member i_ino in this kernel's BTF"]
    );
}

#[test]
fn a_missing_struct_is_named() {
    let found = messages(&kernel(Quirks {
        no_socket: true,
        ..Quirks::default()
    }));
    assert_eq!(found, ["struct socket is not in this kernel's BTF"]);
}

#[test]
fn a_member_of_another_size_or_kind_is_refused() {
    let found = messages(&kernel(Quirks {
        i_ino_bytes: Some(4),
        f_inode_is_an_integer: true,
        socket_type_bitfield: true,
        ..Quirks::default()
    }));
    assert_eq!(
        found,
        [
            "struct file.f_inode in this kernel is an integer of 8 bytes; the monitors read a pointer of 8 bytes",
            "struct inode.i_ino in this kernel is an integer of 4 bytes; the monitors read an integer of 8 bytes",
            "struct socket.type in this kernel is a bitfield at bit 32; the monitors read an integer of 2 bytes",
        ]
    );
}

#[test]
fn what_is_not_btf_is_refused() {
    for raw in [
        &b"\x7fELF and more bytes than a header"[..],
        &[0x9f, 0xeb, 1, 0],
        &[],
    ] {
        let found = Layout::resolve(raw).expect_err("not BTF");
        assert!(
            matches!(found.as_slice(), [LayoutError::Btf(_)]),
            "{found:?}"
        );
    }
}
