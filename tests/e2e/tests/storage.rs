//! Per-tool storage quotas in the booted appliance, against the real ext4:
//! each tool's tree is an ext4 project, and the kernel refuses bytes and
//! inodes past its quota whatever path wrote them (the filesystem
//! interface or WASI), across runs. Tools that fill the partition leave its
//! reserved blocks to the daemon, so installs still work.

use clawos_e2e::{Boot, Disk, Guest};
use serial_test::serial;
use std::time::Duration;

const QUOTA_BYTES: u64 = 8 << 20;
const QUOTA_INODES: u64 = 64;

/// A probe's answer `err CODE ... at N`: (CODE, N).
fn refusal(answer: &str) -> (u32, u64) {
    let answer = answer.trim_end();
    let code = answer
        .strip_prefix("err ")
        .and_then(|r| r.split(' ').next())
        .and_then(|c| c.parse().ok());
    let at = answer.rsplit_once(" at ").and_then(|(_, n)| n.parse().ok());
    match (code, at) {
        (Some(c), Some(n)) => (c, n),
        _ => panic!("not a refusal: {answer:?}"),
    }
}

fn run(g: &mut Guest, tool: &str, args: &str) -> String {
    let out = g.sh_within(
        &format!("clawosctl run {tool} {args} 2>&1"),
        Duration::from_secs(300),
    );
    assert_eq!(out.code, 0, "{tool} {args}: {}", out.text);
    out.text
}

#[test]
#[serial]
fn each_tool_s_tree_is_bounded_by_the_kernel_across_runs_and_paths() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("storage", Boot::Fast, &disk);
    assert!(
        g.sh_ok("grep ' /var/lib/clawos ' /proc/mounts")
            .contains("prjquota"),
        "the data partition is mounted with project quotas enforced"
    );
    g.restart_daemon_with(
        &format!(
            "/^\\[clawfs\\]/,/^\\[/ {{ s/^quota_bytes = [0-9]*/quota_bytes = {QUOTA_BYTES}/; s/^quota_inodes = [0-9]*/quota_inodes = {QUOTA_INODES}/ }}; /^\\[sandbox\\]/,/^\\[/ s/^cpu_budget_ms = [0-9]*/cpu_budget_ms = 120000/"
        ),
        &format!("quota_inodes = {QUOTA_INODES}"),
        "the test lowers the storage quotas",
    );
    // (Runs get 2 minutes rather than 10 s: WASI creates at 5% of a CPU
    // (P1.5) are slow under TCG.)
    g.sh_ok("cp /var/lib/clawos/tools/probe/component.wasm /tmp/probe.wasm");
    let names = [
        "fs-a", "fs-b", "f-api", "f-wasi", "d-api", "d-wasi", "s-api", "s-wasi",
    ];
    for name in names {
        g.sh_ok(&format!(
            "clawosctl install {name} /tmp/probe.wasm >/dev/null"
        ));
    }

    // Bytes through the filesystem interface: refused with QUOTA_EXCEEDED
    // short of the quota (the tree's root directory holds a block).
    let (code, api_bytes) = refusal(&run(&mut g, "fs-a", "fill big 1048576"));
    assert_eq!(code, 201);
    assert!(
        api_bytes > QUOTA_BYTES - (64 << 10) && api_bytes <= QUOTA_BYTES,
        "{api_bytes}"
    );
    // The next run finds the quota spent: it holds across runs, and WASI
    // writes are refused too. (Rust std's writes go through the WASI
    // adapter Rust 1.98 links into tools, which reports every failed
    // stream write as EIO without asking why: the kernel refused it all
    // the same, and `wasi-stream-fill` below asks.)
    assert_eq!(refusal(&run(&mut g, "fs-a", "fill more 4096")), (201, 0));
    let std_write = run(&mut g, "fs-a", "wasi-fill more 4096");
    assert!(
        std_write.starts_with("err 2 (I/O error (os error 29)) at 0")
            || refusal(&std_write) == (201, 0),
        "{std_write}"
    );
    // A tool granted a smaller quota gets its own project limit, set
    // again from its next run when the grant changes.
    g.sh_ok("clawosctl install --grant storage=2M fs-small /tmp/probe.wasm >/dev/null");
    let (code, small) = refusal(&run(&mut g, "fs-small", "fill big 262144"));
    assert_eq!(code, 201);
    assert!(
        small > (2 << 20) - (64 << 10) && small <= 2 << 20,
        "{small}"
    );
    g.sh_ok("clawosctl grant fs-small storage=3M >/dev/null");
    let (code, more) = refusal(&run(&mut g, "fs-small", "fill more 262144"));
    assert_eq!(code, 201);
    assert!(
        small + more > (3 << 20) - (64 << 10) && small + more <= 3 << 20,
        "{small} then {more}"
    );
    let list = g.sh_ok("clawosctl list");
    eprintln!("{list}");
    assert!(
        list.lines().any(|l| l.starts_with("fs-a ")
            && l.contains("data 8.0 MiB of 8.0 MiB")
            && l.contains(&format!("of {QUOTA_INODES} inodes"))),
        "{list}"
    );

    // Bytes through WASI's own output stream: the quota error, at the
    // same place; then the filesystem interface of the same tool is
    // refused as well (one quota for both paths).
    let wasi = run(&mut g, "fs-b", "wasi-stream-fill big 65536");
    let (code, _) = refusal(&wasi);
    assert_eq!(code, 201);
    assert!(wasi.contains("name: \"quota\""), "{wasi}");
    // The probe counts whole chunks; the file has what the kernel took.
    let wasi_bytes: u64 = g
        .sh_ok("stat -c %s /var/lib/clawos/clawfs/fs-b/big")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(wasi_bytes, api_bytes, "{wasi}");
    assert_eq!(refusal(&run(&mut g, "fs-b", "fill more 4096")), (201, 0));

    // Inodes, per kind and path: the tree's root is one of the quota.
    let mut figures = Vec::new();
    // (WASI's open-at, create-directory-at and symlink-at answer `quota`:
    // the bridge's, since wasmtime-wasi reports EDQUOT as `io`.)
    for (tool, args) in [
        ("f-api", "many file n"),
        ("f-wasi", "wasi-many file n"),
        ("d-api", "many dir n"),
        ("d-wasi", "wasi-many dir n"),
        ("s-api", "many symlink n"),
        ("s-wasi", "wasi-many symlink n"),
    ] {
        let answer = run(&mut g, tool, args);
        let (code, made) = refusal(&answer);
        assert_eq!(code, 201, "{tool}: {answer}");
        assert_eq!(made, QUOTA_INODES - 1, "{tool}: {answer}");
        figures.push(format!("{tool}: {made}"));
        // Across runs: not one more.
        assert_eq!(refusal(&run(&mut g, tool, "many file again")), (201, 0));
    }
    let status = g.sh_ok("clawosctl status");
    eprintln!(
        "storage quota figures: interface refused at {api_bytes} bytes, WASI at {wasi_bytes} bytes (quota {QUOTA_BYTES}); inodes made before the refusal: {}\n{status}",
        figures.join(", ")
    );

    // A tree made before quotas (here by hand) is labelled at the tool's
    // first run. An entry the daemon cannot label (a directory of mode 000:
    // its profile has no dac_override) stops the run rather than leave part
    // of the tree outside the quota; once it can, the whole tree counts.
    g.sh_ok(
        "cd /var/lib/clawos/clawfs && mkdir -p legacy/a/b legacy/locked \
         && dd if=/dev/zero of=legacy/a/b/f bs=1M count=1 2>/dev/null && chmod 000 legacy/locked && sync",
    );
    g.sh_ok("clawosctl install --adopt-data legacy /tmp/probe.wasm >/dev/null");
    let refused = g.sh("clawosctl run legacy stat a/b/f 2>&1");
    assert_eq!(refused.code, 203, "{}", refused.text);
    assert!(
        refused.text.contains("legacy/locked") && refused.text.contains("Permission denied"),
        "{}",
        refused.text
    );
    g.sh_ok("chmod 755 /var/lib/clawos/clawfs/legacy/locked");
    let stat = run(&mut g, "legacy", "stat a/b/f");
    assert!(stat.starts_with("ok size=1048576 "), "{stat}");
    let list = g.sh_ok("clawosctl list");
    assert!(
        list.lines().any(|l| l.starts_with("legacy ")
            && l.contains(&format!(
                "data 1.0 MiB of 8.0 MiB (5 of {QUOTA_INODES} inodes)"
            ))),
        "{list}"
    );

    // The registry's room: with a quota larger than the partition, a tool
    // that fills it is refused (ENOSPC, 201) with the reserved blocks
    // still free, and an install still fits in them.
    g.restart_daemon_with(
        "/^\\[clawfs\\]/,/^\\[/ s/^quota_bytes = [0-9]*/quota_bytes = 1073741824/; /^\\[sandbox\\]/,/^\\[/ s/^cpu_budget_ms = [0-9]*/cpu_budget_ms = 600000/",
        "cpu_budget_ms = 600000",
        "the test raises the storage quota past the partition",
    );
    let df = |g: &mut Guest| -> (u64, u64) {
        // Free blocks (the reserve included) and available ones, KiB.
        let out = g.sh_ok("stat -f -c '%f %a %S' /var/lib/clawos");
        let v: Vec<u64> = out.split_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0] * v[2] / 1024, v[1] * v[2] / 1024)
    };
    g.sh_ok("clawosctl install fill /tmp/probe.wasm >/dev/null");
    // Most of the partition is taken from the shell first (root writes
    // what is available and no more: dd stops 8 MiB short of it), so that
    // the tool's own writes to the end are few at 5% of a CPU.
    g.sh_ok(
        "avail=$(stat -f -c '%a %S' /var/lib/clawos | awk '{ print int($1 * $2 / 1048576) - 8 }') \
         && dd if=/dev/zero of=/var/lib/clawos/filler bs=1M count=$avail 2>/dev/null && sync",
    );
    let fill = g.sh_within(
        "clawosctl run fill fill big 4194304 2>&1",
        Duration::from_secs(900),
    );
    assert_eq!(fill.code, 0, "{}", fill.text);
    let (code, filled) = refusal(&fill.text);
    assert_eq!(code, 201);
    let (free_kib, avail_kib) = df(&mut g);
    assert!(avail_kib < 1024, "available {avail_kib} KiB after the fill");
    assert!(
        free_kib > 20 << 10,
        "the reserve (10% of 256 MiB) is left: {free_kib} KiB"
    );
    g.sh_ok("clawosctl install after-fill /tmp/probe.wasm >/dev/null");
    assert_eq!(
        g.sh_ok("clawosctl run hello full 2>/dev/null"),
        "hello, full\n"
    );
    eprintln!(
        "partition filled by a tool: refused at {filled} bytes with {free_kib} KiB free for the daemon; an install afterwards succeeded"
    );
    // A tool's data leaves with it, and so does its use.
    g.sh_ok("clawosctl remove fill >/dev/null && rm /var/lib/clawos/filler");
    let (_, avail_after) = df(&mut g);
    assert!(
        avail_after > 100 << 10,
        "{avail_after} KiB available after the remove"
    );
    g.poweroff();
}
