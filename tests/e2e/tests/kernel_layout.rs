//! The kernel fields the eBPF monitors read, placed by the daemon's loader
//! (`clawos-wasm-daemon --kernel-layout`, the code the daemon runs before it
//! loads the programs) where pahole, a BTF reader of its own, finds them:
//! in the built kernel's BTF (`vmlinux.btf` of the build, one kernel per
//! matrix entry) and in the host's own kernel, whose `struct file` differs
//! again. A BTF without one of the fields is refused with its name. No
//! boot: the in-guest half is in `monitor.rs` (the offsets the running
//! daemon logged).

use clawos_e2e::{build_dir, pahole_layout, release_binary};
use std::path::Path;
use std::process::{Command, Output};

fn kernel_layout(btf: &Path) -> Output {
    Command::new(release_binary("clawos-wasm-daemon"))
        .arg("--kernel-layout")
        .arg(btf)
        .output()
        .expect("cannot run clawos-wasm-daemon")
}

fn resolves_as_pahole(btf: &Path) {
    let out = kernel_layout(btf);
    assert!(out.status.success(), "{}: {out:?}", btf.display());
    let resolved = String::from_utf8_lossy(&out.stdout);
    let want = pahole_layout(btf);
    assert_eq!(
        resolved.trim_end(),
        want,
        "{}: the loader (left) against pahole",
        btf.display()
    );
    eprintln!("e2e: {}: {want}", btf.display());
}

#[test]
fn the_loader_places_the_built_kernels_fields_where_pahole_does() {
    resolves_as_pahole(&build_dir().join("vmlinux.btf"));
}

#[test]
fn the_loader_places_the_host_kernels_fields_where_pahole_does() {
    resolves_as_pahole(Path::new("/sys/kernel/btf/vmlinux"));
}

#[test]
fn a_kernel_without_a_field_is_refused_by_name() {
    // The built kernel's BTF with the member name `i_ino` renamed in its
    // string table: struct inode then has no i_ino.
    let mut raw = std::fs::read(build_dir().join("vmlinux.btf")).unwrap();
    let needle = b"\0i_ino\0";
    let at = raw
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the BTF names i_ino");
    raw[at + 1..at + 6].copy_from_slice(b"i_inX");
    assert!(
        !raw.windows(needle.len()).any(|w| w == needle),
        "i_ino is named once"
    );
    let dir = tempfile::tempdir().unwrap();
    let btf = dir.path().join("vmlinux.btf");
    std::fs::write(&btf, &raw).unwrap();
    let out = kernel_layout(&btf);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "{}: struct inode has no member i_ino in this kernel's BTF\n",
            btf.display()
        )
    );
    assert!(out.stdout.is_empty(), "{out:?}");
}
