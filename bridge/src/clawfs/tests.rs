//! Escapes against the real filesystem: each refused with its exact code,
//! and nothing outside the root read, written or created.

use super::*;
use std::fs;
use std::io::{Read, Write};

struct Fixture {
    _dir: tempfile::TempDir,
    root: Root,
    root_path: PathBuf,
    outside: PathBuf,
}

/// A root at <tmp>/root and a secret file at <tmp>/secret.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root_path = dir.path().join("root");
    let outside = dir.path().join("secret");
    fs::write(&outside, b"secret").unwrap();
    let root = Root::open(&root_path, 10_000).unwrap();
    Fixture {
        _dir: dir,
        root,
        root_path,
        outside,
    }
}

fn code<T: std::fmt::Debug>(r: Result<T, Failure>) -> Code {
    r.unwrap_err().code
}

const RW: OFlags = OFlags::RDWR;

impl Fixture {
    fn outside_intact(&self) {
        assert_eq!(fs::read(&self.outside).unwrap(), b"secret");
        let mut names: Vec<_> = fs::read_dir(self._dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["root", "secret"],
            "nothing created outside the root"
        );
    }
}

#[test]
fn dotdot_and_absolute_paths_are_refused() {
    let f = fixture();
    fs::create_dir(f.root_path.join("a")).unwrap();
    for p in [
        "../secret",
        "a/../../secret",
        "a/../a/../../secret",
        "./../root/../secret",
    ] {
        assert_eq!(
            code(f.root.open_at(p, OFlags::RDONLY, Mode::empty())),
            Code::PolicyDenied,
            "{p}"
        );
        assert_eq!(code(f.root.stat(p)), Code::PolicyDenied, "{p}");
    }
    let abs = f.outside.to_str().unwrap();
    assert_eq!(
        code(f.root.open_at(abs, OFlags::RDONLY, Mode::empty())),
        Code::PolicyDenied
    );
    assert_eq!(code(f.root.mkdir("../escaped", 0o755)), Code::PolicyDenied);
    assert_eq!(code(f.root.mkdir("a/..", 0o755)), Code::PolicyDenied);
    assert_eq!(code(f.root.unlink("../secret")), Code::PolicyDenied);
    assert_eq!(
        code(f.root.open_at(
            "../created",
            RW | OFlags::CREATE,
            Mode::from_raw_mode(0o644)
        )),
        Code::PolicyDenied
    );
    // `..` that stays inside is fine.
    fs::write(f.root_path.join("in"), b"x").unwrap();
    f.root
        .open_at("a/../in", OFlags::RDONLY, Mode::empty())
        .unwrap();
    f.outside_intact();
}

#[test]
fn symlinks_out_of_the_root_are_refused_made_or_planted() {
    let f = fixture();
    // Made by the tool: absolute, or climbing above the root.
    assert_eq!(
        code(f.root.symlink(f.outside.to_str().unwrap(), "abs")),
        Code::PolicyDenied
    );
    assert_eq!(code(f.root.symlink("../secret", "rel")), Code::PolicyDenied);
    fs::create_dir(f.root_path.join("d")).unwrap();
    assert_eq!(
        code(f.root.symlink("../../secret", "d/rel")),
        Code::PolicyDenied
    );
    f.root.symlink("../x", "d/ok").unwrap();
    // Planted from outside: resolution fails in the kernel.
    std::os::unix::fs::symlink(&f.outside, f.root_path.join("planted-abs")).unwrap();
    std::os::unix::fs::symlink("../secret", f.root_path.join("planted-rel")).unwrap();
    std::os::unix::fs::symlink("/", f.root_path.join("planted-dir")).unwrap();
    for p in ["planted-abs", "planted-rel", "planted-dir/etc/passwd"] {
        assert_eq!(
            code(f.root.open_at(p, OFlags::RDONLY, Mode::empty())),
            Code::PolicyDenied,
            "{p}"
        );
        assert_eq!(
            code(f.root.open_at(p, RW | OFlags::TRUNC, Mode::empty())),
            Code::PolicyDenied,
            "{p}"
        );
        assert_eq!(code(f.root.chmod(p, 0o777)), Code::PolicyDenied, "{p}");
        assert_eq!(code(f.root.chown(p, 0, 0)), Code::PolicyDenied, "{p}");
    }
    assert_eq!(
        code(f.root.mkdir("planted-dir/tmp/x", 0o755)),
        Code::PolicyDenied
    );
    // The link itself can be read and removed; its target is untouched.
    assert_eq!(f.root.readlink("planted-rel").unwrap(), "../secret");
    f.root.unlink("planted-abs").unwrap();
    f.outside_intact();
}

#[test]
fn hard_links_to_files_outside_are_refused() {
    let f = fixture();
    fs::hard_link(&f.outside, f.root_path.join("planted")).unwrap();
    assert_eq!(
        code(f.root.open_at("planted", OFlags::RDONLY, Mode::empty())),
        Code::PolicyDenied
    );
    assert_eq!(
        code(f.root.open_at("planted", RW | OFlags::TRUNC, Mode::empty())),
        Code::PolicyDenied
    );
    assert_eq!(code(f.root.stat("planted")), Code::PolicyDenied);
    assert_eq!(code(f.root.chmod("planted", 0o600)), Code::PolicyDenied);
    assert_eq!(code(f.root.link("planted", "again")), Code::PolicyDenied);
    // A tool cannot make one: the source is resolved beneath the root.
    assert_eq!(code(f.root.link("../secret", "mine")), Code::PolicyDenied);
    // Links the tool made inside are fine, however many.
    fs::write(f.root_path.join("a"), b"data").unwrap();
    fs::create_dir(f.root_path.join("sub")).unwrap();
    f.root.link("a", "b").unwrap();
    f.root.link("a", "sub/c").unwrap();
    let mut s = String::new();
    fs::File::from(
        f.root
            .open_at("sub/c", OFlags::RDONLY, Mode::empty())
            .unwrap(),
    )
    .read_to_string(&mut s)
    .unwrap();
    assert_eq!(s, "data");
    assert_eq!(f.root.stat("b").unwrap().st_nlink, 3);
    f.outside_intact();
}

#[test]
fn rename_cannot_cross_the_boundary() {
    let f = fixture();
    fs::write(f.root_path.join("mine"), b"m").unwrap();
    assert_eq!(code(f.root.rename("mine", "../moved")), Code::PolicyDenied);
    assert_eq!(
        code(f.root.rename("../secret", "stolen")),
        Code::PolicyDenied
    );
    std::os::unix::fs::symlink("..", f.root_path.join("up")).unwrap();
    assert_eq!(code(f.root.rename("mine", "up/moved")), Code::PolicyDenied);
    f.root.rename("mine", "renamed").unwrap();
    assert!(f.root_path.join("renamed").exists());
    f.outside_intact();
}

#[test]
fn setuid_setgid_and_sticky_bits_are_refused() {
    let f = fixture();
    fs::write(f.root_path.join("x"), b"").unwrap();
    for mode in [0o4755, 0o2755, 0o1777, 0o6777, 0o100644] {
        assert_eq!(code(f.root.chmod("x", mode)), Code::Eperm, "{mode:o}");
        assert_eq!(code(f.root.mkdir("d", mode)), Code::Eperm, "{mode:o}");
    }
    f.root.chmod("x", 0o640).unwrap();
    assert_eq!(f.root.stat("x").unwrap().st_mode & 0o7777, 0o640);
}

#[test]
fn special_files_are_not_opened() {
    let f = fixture();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.root_path.join("fifo").as_path(),
        FileType::Fifo,
        Mode::from_raw_mode(0o666),
        0,
    )
    .unwrap();
    // A planted device node (the same numbers as /dev/null).
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.root_path.join("null").as_path(),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    for p in ["fifo", "null"] {
        assert_eq!(
            code(f.root.open_at(p, OFlags::RDONLY, Mode::empty())),
            Code::PolicyDenied,
            "{p}"
        );
        assert_eq!(code(f.root.chmod(p, 0o600)), Code::PolicyDenied, "{p}");
    }
}

#[test]
fn create_truncate_and_exclusive() {
    let f = fixture();
    let mut file = fs::File::from(
        f.root
            .open_at("new", RW | OFlags::CREATE, Mode::from_raw_mode(0o600))
            .unwrap(),
    );
    file.write_all(b"hello").unwrap();
    assert_eq!(
        code(
            f.root
                .open_at("new", RW | OFlags::CREATE | OFlags::EXCL, Mode::empty())
        ),
        Code::InvalidArgument
    );
    f.root
        .open_at("new", RW | OFlags::TRUNC, Mode::empty())
        .unwrap();
    assert_eq!(fs::metadata(f.root_path.join("new")).unwrap().len(), 0);
    // A dangling symlink inside the root is not created through.
    std::os::unix::fs::symlink("nowhere", f.root_path.join("dangling")).unwrap();
    assert_eq!(
        code(
            f.root
                .open_at("dangling", RW | OFlags::CREATE, Mode::from_raw_mode(0o600))
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(f.root.open_at("missing", OFlags::RDONLY, Mode::empty())),
        Code::Enoent
    );
}

#[test]
fn bad_paths_are_invalid_arguments() {
    assert_eq!(check_path("a\0b").unwrap_err().code, Code::InvalidArgument);
    assert_eq!(
        check_path(&"a".repeat(MAX_PATH + 1)).unwrap_err().code,
        Code::InvalidArgument
    );
    assert_eq!(split("").unwrap_err().code, Code::InvalidArgument);
    assert_eq!(split("a/.").unwrap_err().code, Code::InvalidArgument);
    assert_eq!(split("a/b/").unwrap(), ("a", "b"));
    assert_eq!(split("b").unwrap(), (".", "b"));
    assert_eq!(lexical_depth_from(1, "../x"), Some(1));
    assert_eq!(lexical_depth_from(0, "../x"), None);
    assert_eq!(lexical_depth_from(0, "a/../../x"), None);
}
