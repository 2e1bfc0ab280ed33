//! Where the kernel fields the monitors read lie in the running kernel.
//!
//! The programs read a few members of kernel structs
//! ([`clawos_ebpf_types::FIELDS`]); their offsets differ between kernels
//! (`struct file` was reordered in 6.6 and again in 6.12, and options such
//! as `FS_POSIX_ACL` move `inode.i_ino`). Before the programs load, the
//! daemon resolves each from the kernel's BTF (`/sys/kernel/btf/vmlinux`),
//! through nested and anonymous structs and unions, checks its size and
//! shape, and writes the offsets into the programs' read-only globals
//! (`FIELD_OFFSETS`). A member the kernel does not have, or of another size
//! or kind, stops the daemon with a message naming the struct and member:
//! the monitors never read a field they cannot place.
//!
//! The BTF is read with `btf-rs` (retis-org/btf-rs). aya parses the same
//! blob to load the programs, but its struct members are private to
//! aya-obj, so it cannot answer where a member lies.

use btf_rs::{Btf, Type};
use clawos_ebpf_types::{FIELD_COUNT, FIELDS, Field, Shape};

/// Why a field could not be placed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The BTF could not be read.
    #[error("cannot read the kernel's BTF: {0}")]
    Btf(String),
    /// The BTF has no struct of that name.
    #[error("struct {strukt} is not in this kernel's BTF")]
    NoStruct {
        /// The struct.
        strukt: String,
    },
    /// The struct has no such member, directly or in an anonymous member.
    #[error("struct {strukt} has no member {member} in this kernel's BTF")]
    NoMember {
        /// The struct.
        strukt: String,
        /// The member.
        member: String,
    },
    /// The member is there but is not what the programs read.
    #[error("struct {strukt}.{member} in this kernel is {found}; the monitors read {wanted}")]
    Mismatch {
        /// The struct.
        strukt: String,
        /// The member.
        member: String,
        /// What the kernel has.
        found: String,
        /// What the programs read.
        wanted: String,
    },
}

/// The offsets of every field the programs read, in [`FIELDS`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of each field in its struct.
    pub offsets: [u32; FIELD_COUNT],
}

impl Layout {
    /// Resolve every field from a raw BTF blob (what
    /// `/sys/kernel/btf/vmlinux` holds). All problems are reported, not
    /// only the first.
    pub fn resolve(raw: &[u8]) -> Result<Layout, Vec<LayoutError>> {
        let btf = Btf::from_bytes(raw).map_err(|e| vec![LayoutError::Btf(e.to_string())])?;
        let mut offsets = [0u32; FIELD_COUNT];
        let mut errors = Vec::new();
        for (i, field) in FIELDS.iter().enumerate() {
            match place(&btf, field) {
                Ok(o) => offsets[i] = o,
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Layout { offsets })
        } else {
            Err(errors)
        }
    }

    /// One line for the log: `file.f_path=152 file.f_inode=...`.
    pub fn describe(&self) -> String {
        FIELDS
            .iter()
            .zip(self.offsets)
            .map(|(f, o)| format!("{}.{}={o}", f.strukt, f.member))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Where `field` lies in its struct, checked against its size and shape.
fn place(btf: &Btf, field: &Field) -> Result<u32, LayoutError> {
    let no_member = || LayoutError::NoMember {
        strukt: field.strukt.to_owned(),
        member: field.member.to_owned(),
    };
    let strukt = the_struct(btf, field.strukt)?;
    let (bits, (member_bits, ty)) =
        find_member(btf, &strukt, field.member, 0)?.ok_or_else(no_member)?;
    let mismatch = |found: String| LayoutError::Mismatch {
        strukt: field.strukt.to_owned(),
        member: field.member.to_owned(),
        found,
        wanted: wanted(field),
    };
    // In a struct with bitfields every member has a width; 0 is a whole one.
    if member_bits.is_some_and(|w| w != 0) || !bits.is_multiple_of(8) {
        return Err(mismatch(format!("a bitfield at bit {bits}")));
    }
    let (shape_found, size) = shape_of(btf, ty)?;
    let ok = match (field.shape, &shape_found) {
        (Shape::Int, Found::Int) | (Shape::Pointer, Found::Pointer) => true,
        (Shape::Struct(want), Found::Struct(name)) => want == name,
        _ => false,
    };
    if !ok || size != field.size as usize {
        return Err(mismatch(format!(
            "{} of {size} bytes",
            shape_found.describe()
        )));
    }
    Ok(bits / 8)
}

/// What the programs read at `field`, in words.
fn wanted(field: &Field) -> String {
    let what = match field.shape {
        Shape::Int => "an integer".to_owned(),
        Shape::Pointer => "a pointer".to_owned(),
        Shape::Struct(name) => format!("struct {name}"),
    };
    format!("{what} of {} bytes", field.size)
}

/// What a member's type turned out to be.
enum Found {
    Int,
    Pointer,
    Struct(String),
    Other(&'static str),
}

impl Found {
    fn describe(&self) -> String {
        match self {
            Found::Int => "an integer".to_owned(),
            Found::Pointer => "a pointer".to_owned(),
            Found::Struct(name) => format!("struct {name}"),
            Found::Other(kind) => format!("a {kind}"),
        }
    }
}

/// The named struct (not a forward declaration of it).
fn the_struct(btf: &Btf, name: &str) -> Result<btf_rs::Struct, LayoutError> {
    let types = btf.resolve_types_by_name(name).unwrap_or_default();
    types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| LayoutError::NoStruct {
            strukt: name.to_owned(),
        })
}

/// A member's type, with its bitfield width where its struct gives
/// widths (0 for a member that is not a bitfield).
type Member = (Option<u32>, Type);

/// Find member `name` in `s`, looking into anonymous structs and unions
/// (C lets their members be named as the outer struct's). Returns its bit
/// offset from the start of `s`. `depth` bounds the search: BTF from a
/// hostile file could nest without end.
fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
    depth: u32,
) -> Result<Option<(u32, Member)>, LayoutError> {
    const MAX_DEPTH: u32 = 32;
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    let bad = |e: btf_rs::Error| LayoutError::Btf(e.to_string());
    for m in &s.members {
        let member_name = btf.resolve_name(m).map_err(bad)?;
        let ty = btf.resolve_chained_type(m).map_err(bad)?;
        if member_name == name {
            return Ok(Some((m.bit_offset(), (m.bitfield_size(), ty))));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = strip(btf, ty)
            && let Some((at, found)) = find_member(btf, &inner, name, depth + 1)?
        {
            return Ok(Some((m.bit_offset().saturating_add(at), found)));
        }
    }
    Ok(None)
}

/// The type under typedefs and qualifiers.
fn strip(btf: &Btf, mut ty: Type) -> Type {
    // A chain longer than this is not a kernel's BTF.
    for _ in 0..64 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            Type::TypeTag(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(n) => ty = n,
            Err(_) => return ty,
        }
    }
    ty
}

/// The shape and size of a member's type.
fn shape_of(btf: &Btf, ty: Type) -> Result<(Found, usize), LayoutError> {
    let bad = |e: btf_rs::Error| LayoutError::Btf(e.to_string());
    Ok(match strip(btf, ty) {
        Type::Int(i) => (Found::Int, i.size()),
        Type::Enum(e) => (Found::Int, e.size()),
        Type::Enum64(e) => (Found::Int, e.size()),
        Type::Ptr(_) => (Found::Pointer, 8),
        Type::Struct(s) => {
            let name = btf.resolve_name(&s).map_err(bad)?;
            let size = s.size();
            (Found::Struct(name), size)
        }
        Type::Union(u) => (Found::Other("union"), u.size()),
        other => (Found::Other(other.name()), 0),
    })
}

#[cfg(test)]
mod tests;
