//! The AppArmor rules of the devices a worker may reach, generated from the
//! `[devices]` allow-list: `clawosctl apparmor-devices` prints them, and the
//! appliance's init writes them to `/etc/apparmor.d/clawos.d/devices`, which
//! the worker's rules include, before it loads the profiles (again before it
//! restarts the daemon). For each device path: creating its mount point in
//! the worker's new root, binding the node there, and opening it read-only,
//! or read-write if a rule for it says `write = true`.

use crate::config::DevicePolicy;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Where the worker builds its new root (`sandbox::worker`'s STAGE).
const STAGE: &str = "/tmp";

/// The rules for `policy`. `resolve` gives the node a path names (a
/// symlink is bound, and checked by the kernel, as the node it leads to);
/// a path it cannot resolve, or that resolves to a path a rule cannot
/// carry (outside /dev/, or with characters AppArmor reads as syntax), is
/// named as it is.
pub fn rules(policy: &DevicePolicy, resolve: impl Fn(&Path) -> Option<PathBuf>) -> String {
    // Path -> (names, writable), each path once.
    let mut by_path: BTreeMap<&Path, (Vec<&str>, bool)> = BTreeMap::new();
    for rule in &policy.allow {
        let entry = by_path.entry(&rule.path).or_default();
        entry.0.push(&rule.name);
        entry.1 |= rule.write;
    }
    let mut out = String::from(
        "# Generated from the [devices] allow-list by `clawosctl apparmor-devices`\n\
         # (image/init writes it at boot and before each daemon restart). Included\n\
         # by clawos.d/worker: do not edit.\n",
    );
    let mut dirs = Vec::new();
    for (path, (names, write)) in &by_path {
        let shown = path.display();
        let source = resolve(path)
            .filter(|p| crate::config::is_device_path(p))
            .unwrap_or_else(|| path.to_path_buf());
        let _ = writeln!(out, "\n  # {} ({shown})", names.join(", "));
        let mut dir = path.parent();
        while let Some(d) = dir
            && d != Path::new("/dev")
            && d != Path::new("/")
        {
            if !dirs.contains(&d) {
                dirs.push(d);
                let _ = writeln!(out, "  {STAGE}{}/ w,", d.display());
            }
            dir = d.parent();
        }
        let _ = writeln!(out, "  {STAGE}{shown} w,");
        let _ = writeln!(
            out,
            "  mount options=(rw, bind) {} -> {STAGE}{shown},",
            source.display()
        );
        let _ = writeln!(out, "  {shown} {},", if *write { "rw" } else { "r" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeviceRule;

    fn rule(name: &str, path: &str, write: bool) -> DeviceRule {
        DeviceRule {
            name: name.into(),
            path: path.into(),
            write,
        }
    }

    #[test]
    fn the_default_list_gives_the_three_nodes_as_before() {
        let text = rules(&DevicePolicy::default(), |_| None);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "  /tmp/dev/null w,",
                "  mount options=(rw, bind) /dev/null -> /tmp/dev/null,",
                "  /dev/null rw,",
                "  /tmp/dev/urandom w,",
                "  mount options=(rw, bind) /dev/urandom -> /tmp/dev/urandom,",
                "  /dev/urandom r,",
                "  /tmp/dev/zero w,",
                "  mount options=(rw, bind) /dev/zero -> /tmp/dev/zero,",
                "  /dev/zero r,",
            ]
        );
    }

    #[test]
    fn a_path_is_bound_once_writable_if_any_rule_says_so_and_symlinks_resolved() {
        let policy = DevicePolicy {
            allow: vec![
                rule("scratch", "/dev/disk/by-id/virtio-scratch", false),
                rule("scratch-rw", "/dev/disk/by-id/virtio-scratch", true),
                rule("other", "/dev/disk/by-id/virtio-other", false),
            ],
            ..DevicePolicy::default()
        };
        let text = rules(&policy, |p| {
            if p.ends_with("virtio-scratch") {
                Some(PathBuf::from("/dev/vdb"))
            } else {
                // A link to a path no rule may carry: named as listed.
                Some(PathBuf::from("/dev/a b,{c}"))
            }
        });
        assert_eq!(text.matches("  /tmp/dev/disk/ w,").count(), 1, "{text}");
        assert_eq!(
            text.matches("  /tmp/dev/disk/by-id/ w,").count(),
            1,
            "{text}"
        );
        assert!(text.contains("\n  # scratch, scratch-rw (/dev/disk/by-id/virtio-scratch)\n"));
        assert!(text.contains(
            "\n  mount options=(rw, bind) /dev/vdb -> /tmp/dev/disk/by-id/virtio-scratch,\n"
        ));
        assert!(text.contains("\n  /dev/disk/by-id/virtio-scratch rw,\n"));
        assert!(text.contains(
            "\n  mount options=(rw, bind) /dev/disk/by-id/virtio-other -> /tmp/dev/disk/by-id/virtio-other,\n"
        ));
        assert!(text.contains("\n  /dev/disk/by-id/virtio-other r,\n"));
        assert!(!text.contains("a b"), "{text}");
    }
}
