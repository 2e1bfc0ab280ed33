//! AppArmor, layer 5d: the kernel's raw interface, no library. The daemon
//! runs under the profile `clawos-wasm-daemon` (attached by the kernel when
//! `/usr/bin/clawos-wasm-daemon` is executed); each worker enters
//! `clawos-worker` itself by writing `changeprofile clawos-worker` to
//! `/proc/thread-self/attr/current` (the kernel's `aa_change_profile`:
//! immediate, no exec, refused once no_new_privs is set). The profiles are
//! text in `image/apparmor.d/`, loaded by the appliance's init;
//! `docs/apparmor.md` says what each allows and why.
//!
//! | item | what |
//! |---|---|
//! | [`current_label`] | the calling thread's label, e.g. `clawos-wasm-daemon (enforce)` |
//! | [`change_profile`] | move the calling thread into another profile |
//! | [`enabled`] | AppArmor is the kernel's and is on |
//! | [`require_confined`] | fail closed unless confined by a given profile in enforce mode |
//! | [`check`] | `clawos-wasm-daemon --check-confinement`: what the kernel answers |
//! | [`rehearsal`] | the worker's profile change and mounts, run in a thread |
//! | [`devices`] | the worker's device rules, generated from the `[devices]` allow-list |

pub mod check;
pub mod devices;
pub mod rehearsal;

use crate::error::{Code, Failure};
use std::io::Write;
use std::path::Path;

/// The daemon's profile (and its launcher's): `image/apparmor.d/clawos-wasm-daemon`.
pub const DAEMON_PROFILE: &str = "clawos-wasm-daemon";
/// The instance workers' profile: `image/apparmor.d/clawos-worker`.
pub const WORKER_PROFILE: &str = "clawos-worker";
/// The launcher's profile (entered by the launcher itself after the fork).
pub const LAUNCHER_PROFILE: &str = "clawos-launcher";

/// Where a thread reads and writes its label: the generic LSM file first,
/// then AppArmor's own (the generic one belongs to whichever LSM the kernel
/// displays; with several LSMs only the second is surely AppArmor's).
const ATTR_FILES: [&str; 2] = [
    "/proc/thread-self/attr/current",
    "/proc/thread-self/attr/apparmor/current",
];
/// "Y" when AppArmor is enabled on the kernel command line (or by default).
const ENABLED_PARAM: &str = "/sys/module/apparmor/parameters/enabled";
/// AppArmor's securityfs directory: present only when it is an active LSM.
const SECURITYFS_DIR: &str = "/sys/kernel/security/apparmor";

/// A task's AppArmor label as the kernel prints it: `name (mode)`, or a bare
/// `unconfined`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The profile (or stack, `a//&b`) name.
    pub name: String,
    /// `enforce`, `complain`, `kill`, ...; `None` for `unconfined`.
    pub mode: Option<String>,
}

impl Label {
    /// Parse the text of `attr/current` (trailing newline and NULs allowed).
    pub fn parse(text: &str) -> Option<Label> {
        let text = text.trim_end_matches(['\n', '\0']);
        if text.is_empty() || text.contains('\n') {
            return None;
        }
        if let Some(body) = text.strip_suffix(')')
            && let Some((name, mode)) = body.rsplit_once(" (")
        {
            if name.is_empty() || mode.is_empty() || mode.contains([' ', '(', ')']) {
                return None;
            }
            return Some(Label {
                name: name.to_owned(),
                mode: Some(mode.to_owned()),
            });
        }
        if text.contains(' ') {
            return None;
        }
        Some(Label {
            name: text.to_owned(),
            mode: None,
        })
    }

    /// Confined by exactly `profile`, in enforce mode.
    pub fn is_enforced(&self, profile: &str) -> bool {
        self.name == profile && self.mode.as_deref() == Some("enforce")
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mode {
            Some(mode) => write!(f, "{} ({mode})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

fn setup(message: String) -> Failure {
    Failure::new(Code::SandboxSetupFailed, message)
}

/// The calling thread's label, e.g. `clawos-wasm-daemon (enforce)`, as the
/// kernel prints it (without the trailing newline).
pub fn current_label() -> Result<String, Failure> {
    let mut errors = Vec::new();
    for path in ATTR_FILES {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok(text.trim_end_matches(['\n', '\0']).to_owned()),
            Err(e) => errors.push(format!("{path}: {e}")),
        }
    }
    Err(setup(format!(
        "apparmor: cannot read this thread's label ({})",
        errors.join("; ")
    )))
}

/// Move the calling thread into profile `name` now (`changeprofile NAME`;
/// no exec). The current profile must allow it (`change_profile -> NAME`),
/// and no_new_privs must not be set yet. Other threads keep their label.
pub fn change_profile(name: &str) -> Result<(), Failure> {
    if !valid_name(name) {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("apparmor: {name:?} is not a profile name"),
        ));
    }
    try_change_profile(name).map_err(|e| {
        if e.refused() {
            setup(format!(
                "apparmor: change_profile to {name} refused ({})",
                e.detail
            ))
        } else {
            setup(format!(
                "apparmor: cannot change_profile to {name} ({})",
                e.detail
            ))
        }
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(|c: char| c.is_whitespace() || c == '\0')
}

/// Why a profile change did not happen.
#[derive(Debug)]
pub(crate) struct ChangeError {
    /// The errno of the write the kernel refused, or of the last attempt.
    pub errno: Option<i32>,
    /// Each file tried and its error.
    pub detail: String,
}

impl ChangeError {
    /// The kernel refused the change itself (as opposed to the attr file not
    /// being AppArmor's): the policy forbids it (EACCES), no_new_privs is set
    /// (EPERM), or there is no such profile (ENOENT).
    pub fn refused(&self) -> bool {
        use rustix::io::Errno;
        self.errno.is_some_and(|n| {
            [Errno::ACCESS, Errno::PERM, Errno::NOENT].contains(&Errno::from_raw_os_error(n))
        })
    }
}

/// [`change_profile`] with the kernel's errno kept, for the checks that
/// expect a refusal.
pub(crate) fn try_change_profile(name: &str) -> Result<(), ChangeError> {
    try_command(&format!("changeprofile {name}"))
}

/// Write `command` (`changeprofile NAME`, `stack NAME`) to the calling
/// thread's attr file, keeping the kernel's errno.
fn try_command(command: &str) -> Result<(), ChangeError> {
    let mut errors = Vec::new();
    let mut errno = None;
    for path in ATTR_FILES {
        let mut file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) => {
                errno = e.raw_os_error();
                errors.push(format!("{path}: {e}"));
                continue;
            }
        };
        // One write(2): the kernel takes a whole command or nothing.
        match file.write(command.as_bytes()) {
            Ok(n) if n == command.len() => return Ok(()),
            Ok(n) => errors.push(format!("{path}: short write ({n} of {})", command.len())),
            Err(e) => {
                let e = ChangeError {
                    errno: e.raw_os_error(),
                    detail: format!("{path}: {e}"),
                };
                // The policy or the kernel refused: the other file would too.
                if e.refused() {
                    return Err(e);
                }
                errno = e.errno;
                errors.push(e.detail);
            }
        }
    }
    Err(ChangeError {
        errno,
        detail: errors.join("; "),
    })
}

/// Stack profile `name` on the calling thread's own now (`stack NAME`; no
/// exec): the thread is then confined by both. Unlike a change, a stack is
/// allowed under no_new_privs; the current profile must still allow it
/// (`change_profile -> NAME`).
pub fn stack_profile(name: &str) -> Result<(), Failure> {
    if !valid_name(name) {
        return Err(Failure::new(
            Code::InvalidArgument,
            format!("apparmor: {name:?} is not a profile name"),
        ));
    }
    try_command(&format!("stack {name}")).map_err(|e| {
        setup(format!(
            "apparmor: cannot stack {name} on this thread's profile ({})",
            e.detail
        ))
    })
}

/// Fail closed: `Ok` only if the calling thread is confined by `outer`
/// with `inner` stacked on it (`outer//&inner`), in enforce mode.
pub fn require_stacked(outer: &str, inner: &str) -> Result<(), Failure> {
    check_label(&current_label()?, &format!("{outer}//&{inner}"))
}

/// AppArmor is enabled and is an active LSM of the running kernel.
pub fn enabled() -> bool {
    std::fs::read_to_string(ENABLED_PARAM).is_ok_and(|s| s.trim() == "Y")
        && Path::new(SECURITYFS_DIR).is_dir()
}

/// `Ok` if `label` (the text of `attr/current`) is `profile` in enforce mode;
/// otherwise the failure the daemon stops with.
pub fn check_label(label: &str, profile: &str) -> Result<(), Failure> {
    match Label::parse(label) {
        Some(l) if l.is_enforced(profile) => Ok(()),
        Some(l) => Err(setup(format!(
            "apparmor: this process runs as {l:?}, not {profile} in enforce mode \
             (is /etc/apparmor.d/{profile} loaded, and was the binary started by its path?)",
            l = l.to_string()
        ))),
        None => Err(setup(format!(
            "apparmor: cannot parse the label {label:?} (expected \"{profile} (enforce)\")"
        ))),
    }
}

/// Fail closed: `Ok` only if AppArmor is active and the calling thread is
/// confined by `profile` in enforce mode. The failure
/// ([`Code::SandboxSetupFailed`]) names the AppArmor layer and what was found.
pub fn require_confined(profile: &str) -> Result<(), Failure> {
    if !enabled() {
        return Err(setup(format!(
            "apparmor: not active in this kernel ({ENABLED_PARAM} is not Y or {SECURITYFS_DIR} is missing); \
             {profile} cannot confine this process"
        )));
    }
    check_label(&current_label()?, profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, mode: Option<&str>) -> Label {
        Label {
            name: name.to_owned(),
            mode: mode.map(str::to_owned),
        }
    }

    #[test]
    fn labels_parse_as_the_kernel_prints_them() {
        assert_eq!(
            Label::parse("clawos-wasm-daemon (enforce)\n"),
            Some(label("clawos-wasm-daemon", Some("enforce")))
        );
        assert_eq!(
            Label::parse("clawos-worker (complain)"),
            Some(label("clawos-worker", Some("complain")))
        );
        assert_eq!(
            Label::parse("unconfined\n"),
            Some(label("unconfined", None))
        );
        assert_eq!(
            Label::parse("a//&b (enforce)\0"),
            Some(label("a//&b", Some("enforce")))
        );
        // An attachment path is not part of the label; a name may contain
        // a space only inside the mode's parentheses.
        assert_eq!(
            Label::parse("/usr/bin/x (kill)"),
            Some(label("/usr/bin/x", Some("kill")))
        );
    }

    #[test]
    fn malformed_labels_are_refused() {
        for bad in [
            "",
            "\n",
            "two words",
            " (enforce)",
            "x ()",
            "x (en force)",
            "x (enforce)\ny (enforce)",
        ] {
            assert_eq!(Label::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn labels_print_back_as_parsed() {
        for text in ["clawos-worker (enforce)", "unconfined", "a//&b (complain)"] {
            assert_eq!(Label::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn only_the_named_profile_in_enforce_mode_passes() {
        check_label("clawos-wasm-daemon (enforce)\n", DAEMON_PROFILE).unwrap();
        check_label("clawos-worker (enforce)", WORKER_PROFILE).unwrap();
        check_label(
            "clawos-launcher//&clawos-worker (enforce)",
            &format!("{LAUNCHER_PROFILE}//&{WORKER_PROFILE}"),
        )
        .unwrap();
        assert!(
            check_label(
                "clawos-launcher//&clawos-worker (complain)",
                "clawos-launcher//&clawos-worker"
            )
            .is_err()
        );
        for (text, profile) in [
            ("clawos-wasm-daemon (complain)", DAEMON_PROFILE),
            ("unconfined", DAEMON_PROFILE),
            ("clawos-worker (enforce)", DAEMON_PROFILE),
            ("clawos-wasm-daemon (enforce)", WORKER_PROFILE),
            (
                "clawos-wasm-daemon//&clawos-worker (enforce)",
                WORKER_PROFILE,
            ),
            ("garbage label here", DAEMON_PROFILE),
        ] {
            let f = check_label(text, profile).unwrap_err();
            assert_eq!(f.code, Code::SandboxSetupFailed, "{text}");
            assert!(f.message.starts_with("apparmor: "), "{}", f.message);
            assert!(f.message.contains(profile), "{}", f.message);
        }
        let f = check_label("unconfined", DAEMON_PROFILE).unwrap_err();
        assert_eq!(
            f.message,
            "apparmor: this process runs as \"unconfined\", not clawos-wasm-daemon in enforce mode \
             (is /etc/apparmor.d/clawos-wasm-daemon loaded, and was the binary started by its path?)"
        );
    }

    #[test]
    fn bad_profile_names_are_not_written() {
        for bad in ["", "a b", "a\nb", "x\0"] {
            assert_eq!(
                change_profile(bad).unwrap_err().code,
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn profile_names_match_the_shipped_profiles() {
        let daemon = include_str!("../../../image/apparmor.d/clawos-wasm-daemon");
        let worker = include_str!("../../../image/apparmor.d/clawos-worker");
        assert!(daemon.contains(&format!(
            "\nprofile {DAEMON_PROFILE} /usr/bin/clawos-wasm-daemon {{\n"
        )));
        assert!(daemon.contains(&format!("\n  change_profile -> {WORKER_PROFILE},\n")));
        assert!(worker.contains(&format!(
            "\nprofile {WORKER_PROFILE} flags=(attach_disconnected) {{\n"
        )));
        // A worker cannot move to any other profile.
        assert!(!worker.contains("change_profile ->"));
    }

    #[test]
    fn profiles_never_allow_exec_or_leave_complain_mode() {
        for (name, text) in [
            (
                DAEMON_PROFILE,
                include_str!("../../../image/apparmor.d/clawos-wasm-daemon"),
            ),
            (
                LAUNCHER_PROFILE,
                include_str!("../../../image/apparmor.d/clawos-launcher"),
            ),
            // The worker's rules, which its profile and the launcher's include.
            (
                WORKER_PROFILE,
                include_str!("../../../image/apparmor.d/clawos.d/worker"),
            ),
        ] {
            for line in text.lines().map(str::trim) {
                if line.starts_with('#') || line.starts_with("audit deny") {
                    continue;
                }
                // File rules are "PATH PERMS," and exec permissions would
                // carry an x (ix, px, ux, cx, Px, ...).
                if line.starts_with('/') {
                    let perms = line.rsplit(' ').next().unwrap();
                    assert!(!perms.contains('x'), "{name}: exec rule {line:?}");
                }
                assert!(!line.contains("complain"), "{name}: {line:?}");
                assert!(!line.starts_with("capability,"), "{name}: {line:?}");
                assert!(!line.starts_with("network,"), "{name}: {line:?}");
                assert!(!line.contains(" raw"), "{name}: {line:?}");
            }
            assert!(
                text.contains("\n  audit deny /etc/shadow rwklmx,\n"),
                "{name}"
            );
            assert!(
                text.contains("\n  audit deny /etc/passwd rwklmx,\n"),
                "{name}"
            );
            assert!(text.contains("\n  audit deny /root/** rwklmx,\n"), "{name}");
            assert!(text.contains("\n  audit deny /** x,\n"), "{name}");
        }
        for profile in [
            include_str!("../../../image/apparmor.d/clawos-worker"),
            include_str!("../../../image/apparmor.d/clawos-launcher"),
        ] {
            assert!(profile.contains("\n  include <clawos.d/worker>\n"));
        }
    }

    #[test]
    fn reading_the_label_fails_with_the_layer_named_where_there_is_no_apparmor() {
        // On an AppArmor kernel this reads the real label; elsewhere (the
        // development host) it must be a sandbox-setup failure naming
        // AppArmor, never a panic or an empty label.
        match current_label() {
            Ok(text) => assert!(Label::parse(&text).is_some(), "{text:?}"),
            Err(f) => {
                assert_eq!(f.code, Code::SandboxSetupFailed);
                assert!(f.message.starts_with("apparmor: "), "{}", f.message);
            }
        }
        if !enabled() {
            let f = require_confined(DAEMON_PROFILE).unwrap_err();
            assert_eq!(f.code, Code::SandboxSetupFailed);
            assert!(f.message.contains("apparmor: not active"), "{}", f.message);
        }
    }
}
