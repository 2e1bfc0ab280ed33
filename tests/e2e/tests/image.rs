//! Build properties of the appliance that need no boot: the kernel-config
//! check refuses a config without BPF LSM, and two image builds from the
//! same inputs are the same bytes.

use clawos_e2e::{build_dir, check_kernel_config, repo, sha256};
use std::path::Path;
use std::process::Command;

fn kernel_dotconfig() -> String {
    let out = Command::new(repo().join("scripts/kernel.sh"))
        .arg("dir")
        .output()
        .expect("cannot run scripts/kernel.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8(out.stdout).unwrap();
    let path = Path::new(dir.trim()).join("build/.config");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("no built kernel config at {}: {e}", path.display()))
}

#[test]
fn config_check_accepts_the_built_config() {
    let (code, stderr) = check_kernel_config(&kernel_dotconfig());
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn config_check_rejects_a_config_without_bpf_lsm() {
    let config = kernel_dotconfig().replace("CONFIG_BPF_LSM=y\n", "# CONFIG_BPF_LSM is not set\n");
    let (code, stderr) = check_kernel_config(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("wants 'CONFIG_BPF_LSM=y'")
            && stderr.contains("has '# CONFIG_BPF_LSM is not set'")
            && stderr.contains("FAILED: 1 of "),
        "{stderr}"
    );
    // An option that vanished altogether (its dependencies missing) too.
    let config = kernel_dotconfig().replace("CONFIG_BPF_LSM=y\n", "");
    let (code, stderr) = check_kernel_config(&config);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("its dependencies are missing"), "{stderr}");
}

/// Two more builds of the image from the same inputs, the second forcing
/// the kernel to relink its initramfs, give the bytes of build/clawos.img.
#[test]
fn image_builds_are_reproducible() {
    for var in ["CARGO_TARGET_DIR", "TOOLS_DIR"] {
        assert!(
            std::env::var_os(var).is_some(),
            "{var} is not set: run this through `make qemu-test`"
        );
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for (i, dir) in dirs.iter().enumerate() {
        let status = Command::new(repo().join("image/build.sh"))
            .arg("--out")
            .arg(dir.path())
            .env("CLAWOS_FORCE_RELINK", if i == 1 { "1" } else { "0" })
            .status()
            .expect("cannot run image/build.sh");
        assert!(status.success(), "image build {} failed: {status}", i + 1);
    }
    let reference = build_dir();
    for f in ["bzImage", "rootfs.cpio", "clawos.img"] {
        let want = sha256(&reference.join(f));
        for dir in &dirs {
            assert_eq!(
                sha256(&dir.path().join(f)),
                want,
                "{f} differs from build/{f}"
            );
        }
        eprintln!("e2e: reproducible: {f} sha256 {want}");
    }
}
