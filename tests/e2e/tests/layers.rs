//! The layer matrix in the booted appliance: each attack runs with no
//! layer (and must succeed), then under each layer that claims to stop it
//! with every other layer off (tests/inguest/src/matrix.rs, on an extra
//! initramfs: the image never ships a way to switch layers off). Each
//! stop is checked for its exact errno, signal or P1.7 code.

use clawos_e2e::{Disk, Guest, Overlay, release_binary};
use serial_test::serial;
use std::collections::BTreeMap;
use std::time::Duration;

/// (attack, layer) → what must stop it: the errno, signal or P1.7 code the
/// matrix reports, or "ran" for the baseline.
const EXPECTED: [(&str, &str, &str); 34] = [
    ("memory-bomb", "none", "ran"),
    ("memory-bomb", "wasm", "101"),
    ("memory-bomb", "cgroup", "OOM kill"),
    ("fork-bomb", "none", "ran"),
    ("fork-bomb", "wasm", "104"),
    ("fork-bomb", "seccomp", "SIGSYS"),
    ("fork-bomb", "cgroup", "EAGAIN"),
    ("cpu-spin", "none", "ran"),
    ("cpu-spin", "wasm", "102"),
    ("cpu-spin", "cgroup", "% CPU"),
    ("exec", "none", "ran"),
    ("exec", "wasm", "104"),
    ("exec", "seccomp", "SIGSYS"),
    ("exec", "apparmor", "EACCES"),
    ("exec", "namespaces", "ENOENT"),
    ("ptrace", "none", "ran"),
    ("ptrace", "wasm", "104"),
    ("ptrace", "seccomp", "SIGSYS"),
    ("ptrace", "apparmor", "EACCES"),
    ("ptrace", "namespaces", "ESRCH"),
    ("mount", "none", "ran"),
    ("mount", "wasm", "104"),
    ("mount", "seccomp", "SIGSYS"),
    ("mount", "apparmor", "EACCES"),
    ("mount", "namespaces", "EPERM"),
    ("raw-socket", "none", "ran"),
    ("raw-socket", "wasm", "104"),
    ("raw-socket", "seccomp", "SIGSYS"),
    ("raw-socket", "apparmor", "EACCES"),
    ("raw-socket", "namespaces", "saw nothing"),
    ("file-escape", "none", "ran"),
    ("file-escape", "wasm", "err 200, err 4"),
    ("file-escape", "apparmor", "EACCES"),
    ("file-escape", "namespaces", "ENOENT"),
];

#[test]
#[serial]
fn each_layer_alone_stops_the_attacks_it_claims() {
    let overlay = Overlay::new(&[(
        release_binary("clawos-layer-matrix"),
        "usr/bin/clawos-layer-matrix",
    )]);
    let disk = Disk::fresh();
    let mut g = Guest::boot_with("layers", &disk, &overlay);
    let out = g.sh_within("clawos-layer-matrix 2>&1", Duration::from_secs(900));
    eprintln!("{}", out.text);
    // "cell ATTACK LAYER VERDICT SHORT\tDETAIL"
    let cells: BTreeMap<(String, String), (String, String)> = out
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("cell "))
        .map(|l| {
            let (head, _detail) = l.split_once('\t').unwrap_or((l, ""));
            let mut w = head.splitn(4, ' ');
            let mut next = || w.next().unwrap_or("").to_owned();
            ((next(), next()), (next(), next()))
        })
        .collect();
    let mut wrong = Vec::new();
    for (attack, layer, want) in EXPECTED {
        let verdict = if layer == "none" {
            "succeeded"
        } else {
            "stopped"
        };
        match cells.get(&(attack.to_owned(), layer.to_owned())) {
            Some((v, short)) if v == verdict && short.contains(want) => {}
            got => wrong.push(format!(
                "{attack} under {layer}: want {verdict} {want:?}, got {got:?}"
            )),
        }
    }
    if let Some((_, (_, share))) = cells
        .iter()
        .find(|((a, l), _)| a == "cpu-spin" && l == "cgroup")
    {
        let pct: f64 = share.trim_end_matches("% CPU").parse().unwrap_or(100.0);
        if !(2.5..=7.5).contains(&pct) {
            wrong.push(format!(
                "cpu-spin under cgroup got {pct}% of a CPU, want 5% ± 2.5"
            ));
        }
    }
    if cells.len() != EXPECTED.len() {
        wrong.push(format!(
            "{} cells reported, want {}",
            cells.len(),
            EXPECTED.len()
        ));
    }
    if !wrong.is_empty() || out.code != 0 {
        g.fail(&format!(
            "layer matrix (exit {}):\n{}",
            out.code,
            wrong.join("\n")
        ));
    }
    g.poweroff();
}
