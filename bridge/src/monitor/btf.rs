//! The byte offsets of kernel struct members, read from the running
//! kernel's BTF (`/sys/kernel/btf/vmlinux`). The monitors read a few kernel
//! fields at offsets fixed when they were built ([`clawos_ebpf_types::FIELDS`]);
//! before loading them the daemon checks each against this kernel and
//! refuses to load on any difference, rather than report wrong data.
//!
//! Only what that check needs: the type section is walked to find named
//! structs and their members. Format: the kernel's
//! Documentation/bpf/btf.rst.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;

// BTF_KIND_* values.
const INT: u32 = 1;
const ARRAY: u32 = 3;
const STRUCT: u32 = 4;
const UNION: u32 = 5;
const ENUM: u32 = 6;
const FUNC_PROTO: u32 = 13;
const VAR: u32 = 14;
const DATASEC: u32 = 15;
const DECL_TAG: u32 = 17;
const ENUM64: u32 = 19;

/// Member offsets of the named structs of one BTF blob.
#[derive(Debug, Default)]
pub struct Layout {
    structs: HashMap<String, Vec<(String, u32)>>,
}

impl Layout {
    /// Parse a raw BTF blob (what `/sys/kernel/btf/vmlinux` holds).
    pub fn parse(data: &[u8]) -> Result<Layout, String> {
        let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let short = || "BTF data is truncated".to_string();
        if u16_at(0) != Some(MAGIC) {
            return Err("not BTF data (bad magic; only little-endian BTF is read)".into());
        }
        let hdr_len = u32_at(4).ok_or_else(short)? as usize;
        let type_off = u32_at(8).ok_or_else(short)? as usize;
        let type_len = u32_at(12).ok_or_else(short)? as usize;
        let str_off = u32_at(16).ok_or_else(short)? as usize;
        let str_len = u32_at(20).ok_or_else(short)? as usize;
        let types = hdr_len + type_off;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or_else(short)?;
        let name = |off: u32| -> String {
            let rest = strings.get(off as usize..).unwrap_or_default();
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).into_owned()
        };
        let mut layout = Layout::default();
        let mut at = types;
        let end = types + type_len;
        while at < end {
            let name_off = u32_at(at).ok_or_else(short)?;
            let info = u32_at(at + 4).ok_or_else(short)?;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let bitfield_offsets = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                INT | VAR | DECL_TAG => 4,
                ARRAY => 12,
                STRUCT | UNION | DATASEC | ENUM64 => 12 * vlen,
                ENUM | FUNC_PROTO => 8 * vlen,
                _ => 0,
            };
            if kind == STRUCT && name_off != 0 {
                let mut members = Vec::with_capacity(vlen);
                for m in 0..vlen {
                    let base = at + 12 * m;
                    let m_name = u32_at(base).ok_or_else(short)?;
                    let m_offset = u32_at(base + 8).ok_or_else(short)?;
                    // With kind_flag set, the low 24 bits are the bit offset.
                    let bits = if bitfield_offsets {
                        m_offset & 0x00ff_ffff
                    } else {
                        m_offset
                    };
                    members.push((name(m_name), bits));
                }
                layout.structs.entry(name(name_off)).or_insert(members);
            }
            at += extra;
        }
        Ok(layout)
    }

    /// Byte offset of `strukt.member`, for a member named directly in the
    /// struct (not inside an anonymous union).
    pub fn offset(&self, strukt: &str, member: &str) -> Option<u32> {
        self.structs
            .get(strukt)?
            .iter()
            .find(|(n, _)| n == member)
            .map(|(_, bits)| bits / 8)
    }
}

/// Check every field the monitors read against `layout`: one line per
/// difference, empty when they all match.
pub fn mismatches(layout: &Layout) -> Vec<String> {
    clawos_ebpf_types::FIELDS
        .iter()
        .filter_map(|f| match layout.offset(f.strukt, f.member) {
            Some(o) if o == f.offset => None,
            Some(o) => Some(format!(
                "struct {}.{} is at byte {o} in this kernel, the monitors were built for {}",
                f.strukt, f.member, f.offset
            )),
            None => Some(format!(
                "struct {}.{} is not in this kernel's BTF",
                f.strukt, f.member
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_running_kernels_structs() {
        // The host's kernel is not the appliance's: only layouts every
        // kernel since 4.x shares are checked here (struct file itself
        // changed in 6.12; the appliance's is checked at load, in the guest).
        let data = std::fs::read("/sys/kernel/btf/vmlinux").expect("read /sys/kernel/btf/vmlinux");
        let layout = Layout::parse(&data).unwrap();
        assert_eq!(layout.offset("path", "mnt"), Some(0));
        assert_eq!(layout.offset("path", "dentry"), Some(8));
        assert_eq!(layout.offset("inode", "i_mode"), Some(0));
        assert_eq!(layout.offset("qstr", "name"), Some(8));
        assert!(layout.offset("file", "f_inode").is_some());
        assert_eq!(layout.offset("file", "no_such_member"), None);
        assert_eq!(layout.offset("no_such_struct", "x"), None);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Layout::parse(b"\x7fELF and more bytes than a header").is_err());
        assert!(Layout::parse(&[0x9f, 0xeb, 1, 0]).is_err());
    }

    #[test]
    fn a_moved_field_is_named() {
        let mut layout = Layout::default();
        layout.structs.insert(
            "file".into(),
            vec![("f_path".into(), 24 * 8), ("f_inode".into(), 32 * 8)],
        );
        let found = mismatches(&layout);
        assert!(
            found.contains(
                &"struct file.f_path is at byte 24 in this kernel, the monitors were built for 16"
                    .to_string()
            ),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m == "struct inode.i_ino is not in this kernel's BTF")
        );
        assert!(!found.iter().any(|m| m.contains("f_inode")), "{found:?}");
    }
}
