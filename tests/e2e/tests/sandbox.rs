//! The sandbox layers in the booted appliance: every thread of daemon,
//! launcher and worker under seccomp with no_new_privs, the worker in its
//! own namespaces and AppArmor profile, the instance cgroup's P1.5 values
//! read back from the kernel, and each limit biting: CPU throttled to 5%,
//! forks past 32 refused with EAGAIN, a memory hog OOM-killed as a group
//! with swap present but unused. Every refused system call of the seccomp
//! policy files is made under the real filter in the guest.

use clawos_e2e::{Boot, Disk, Guest};
use serial_test::serial;

/// Shell (one line) that starts a 10 s spinner run in the background and
/// sets W (worker pid: in an instance cgroup, in its own root; the spare
/// waiting beside it has no root of its own yet), D (daemon), L (launcher:
/// the daemon's child in no instance cgroup) and I (instance cgroup).
/// Ready workers come and go meanwhile (the pool renews those without the
/// spinner loaded): a cgroup the glob named may be gone when it is read.
const START_SPINNER: &str = "clawosctl run spinner >/tmp/spin.out 2>&1 & \
    W=; for i in $(seq 200); do for p in $(cat /sys/fs/cgroup/clawos/instance-*/main/cgroup.procs 2>/dev/null); do \
    [ -d /proc/$p/root/clawfs ] && W=$p; done; \
    [ -n \"$W\" ] && break; sleep 0.05; done; \
    D=$(awk '/^PPid/ {print $2}' /proc/$W/status); \
    L=$(for s in /proc/[0-9]*/status; do p=${s#/proc/}; p=${p%/status}; \
        grep -q instance- /proc/$p/cgroup 2>/dev/null && continue; \
        [ \"$(awk '/^PPid/ {print $2}' $s 2>/dev/null)\" = \"$D\" ] && echo $p; done); \
    I=$(dirname $(dirname $(grep -l \"^$W$\" /sys/fs/cgroup/clawos/instance-*/main/cgroup.procs 2>/dev/null))); \
    echo \"W=$W D=$D L=$L I=$I\"";

fn started(g: &mut Guest) -> String {
    let ids = g.sh_ok(START_SPINNER);
    assert!(
        ids.starts_with("W=") && !ids.contains("W= ") && !ids.contains("L= "),
        "no worker found: {ids}"
    );
    ids
}

/// Wait for the background spinner; it ends at its CPU budget.
fn spinner_ended(g: &mut Guest) {
    // The epoch interrupt ends it, or, when the worker's 5% of a CPU kept
    // it from running then, the worker's watchdog a second later.
    let out = g.sh_ok("wait; cat /tmp/spin.out");
    assert!(
        out.starts_with("clawosctl: WASM_CPU_DEADLINE (102): cpu budget of 10000 ms spent: "),
        "{out}"
    );
    // The instance cgroup went with the instance.
    assert_eq!(
        g.sh_ok(clawos_e2e::INSTANCE_CGROUPS_LEFT),
        "8 8 clawos-launcher//&clawos-worker (enforce)\n"
    );
}

#[test]
#[serial]
fn every_bridge_thread_is_filtered_and_the_worker_is_namespaced() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("sandbox-layers", Boot::Fast, &disk);
    let ids = started(&mut g);
    eprintln!("e2e: {}", ids.trim());
    // Every thread of the three processes: Seccomp 2 (filter), NoNewPrivs 1.
    let threads = g.sh_ok(
        "for p in $D $L $W; do for t in /proc/$p/task/*; do \
         echo \"$p/${t##*/} $(awk '/^(Seccomp|NoNewPrivs):/ {printf \"%s%s \", $1, $2}' $t/status)\"; done; done",
    );
    let lines: Vec<&str> = threads.lines().collect();
    assert!(
        lines.len() >= 5,
        "daemon, launcher and worker threads: {threads}"
    );
    for l in &lines {
        assert!(
            l.ends_with("NoNewPrivs:1 Seccomp:2 "),
            "{l} (all: {threads})"
        );
    }
    eprintln!(
        "e2e: {} threads of daemon, launcher and worker: Seccomp 2, NoNewPrivs 1",
        lines.len()
    );
    // The launcher is single-threaded.
    assert_eq!(g.sh_ok("ls /proc/$L/task | wc -l"), "1\n");
    // AppArmor: each process in its own profile, enforcing; the worker
    // stacks its profile on the launcher's (under no_new_privs only a
    // stack is allowed), so both confine it.
    assert_eq!(
        g.sh_ok("cat /proc/$D/attr/current /proc/$L/attr/current /proc/$W/attr/current"),
        "clawos-wasm-daemon (enforce)\nclawos-launcher (enforce)\nclawos-launcher//&clawos-worker (enforce)\n"
    );
    // Namespaces: the worker's user, pid, net and mnt differ from the daemon's.
    let ns = g.sh_ok(
        "for n in user pid net mnt; do [ \"$(readlink /proc/$D/ns/$n)\" != \"$(readlink /proc/$W/ns/$n)\" ] && echo $n differs; done",
    );
    assert_eq!(ns, "user differs\npid differs\nnet differs\nmnt differs\n");
    // Its network namespace has only lo, and it is pid 1 in its own.
    assert_eq!(
        g.sh_ok("tail -n +3 /proc/$W/net/dev | cut -d: -f1 | tr -d ' '"),
        "lo\n"
    );
    assert_eq!(g.sh_ok("awk '/^NSpid/ {print $NF}' /proc/$W/status"), "1\n");
    // Capabilities are per thread: every thread of the worker holds none
    // in any set, and every thread of the daemon and of the launcher holds
    // exactly what its main thread holds.
    let caps = g.sh_ok(
        "for p in $D $L $W; do for t in /proc/$p /proc/$p/task/*; do \
         echo \"$p ${t##*/} $(awk '/^Cap(Inh|Prm|Eff|Bnd|Amb):/ {printf \"%s%s \", $1, $2}' $t/status)\"; done; done",
    );
    let worker_pid = ids
        .split_whitespace()
        .find_map(|w| w.strip_prefix("W="))
        .unwrap();
    let none = "CapInh:0000000000000000 CapPrm:0000000000000000 CapEff:0000000000000000 \
                CapBnd:0000000000000000 CapAmb:0000000000000000 ";
    let mut per_process = std::collections::BTreeMap::new();
    for l in caps.lines() {
        let mut parts = l.splitn(3, ' ');
        let (pid, tid, sets) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if pid == worker_pid {
            assert_eq!(sets, none, "worker thread {tid}: {caps}");
        }
        // Each process's own line (/proc/<pid>, its main thread) comes first.
        let main = per_process
            .entry(pid.to_owned())
            .or_insert_with(|| sets.to_owned());
        assert_eq!(
            sets, main,
            "thread {tid} of {pid} differs from its main thread: {caps}"
        );
    }
    let worker_threads = caps
        .lines()
        .filter(|l| l.starts_with(&format!("{worker_pid} ")))
        .count()
        - 1;
    assert!(
        worker_threads >= 3,
        "the worker's threads (tool, clock, WASI): {caps}"
    );
    eprintln!(
        "e2e: capabilities of {} threads checked, {worker_threads} of them the worker's",
        caps.lines().count() - 3
    );
    // It sees only its ClawFS directory, the devices granted to its tool
    // (spinner has none) and its own /proc.
    assert_eq!(g.sh_ok("ls -1 /proc/$W/root/"), "clawfs\ndev\nproc\n");
    assert_eq!(g.sh_ok("ls -1 /proc/$W/root/dev/"), "");
    spinner_ended(&mut g);
    // The next runs' workers are made ahead: the pool's ready workers,
    // each alone in its own instance cgroup, the daemon's children, in the
    // worker profile and filtered, waiting for their tool (the mount tree
    // and their own filter come with it).
    let ready = g.sh_ok(&format!(
        "{}; for c in /sys/fs/cgroup/clawos/instance-*; do S=$(cat $c/main/cgroup.procs); \
         echo \"$(echo $S | wc -w) $(awk '/^PPid/ {{print $2}}' /proc/$S/status) $(cat /proc/$S/attr/current) \
         $(awk '/^(Seccomp|NoNewPrivs):/ {{printf \"%s%s \", $1, $2}}' /proc/$S/status)\"; done | sort | uniq -c; echo $D",
        clawos_e2e::INSTANCE_CGROUPS_LEFT
    ));
    let lines: Vec<&str> = ready.lines().map(str::trim).collect();
    assert_eq!(
        lines.get(1).copied(),
        Some(
            format!(
                "8 1 {} clawos-launcher//&clawos-worker (enforce) NoNewPrivs:1 Seccomp:2",
                lines[2]
            )
            .as_str()
        ),
        "ready workers: {ready}"
    );
    // At shutdown the daemon ends its ready workers and removes their
    // cgroups: none is left once it has exited. init restarts it (SIGHUP:
    // SIGTERM, then the worker's AppArmor rules reloaded, then a new
    // daemon), so the tree is read as soon as the old daemon is gone.
    let left = g.sh_ok(
        "D=$(clawosctl status | sed -n 's/.*, pid \\([0-9]*\\),.*/\\1/p'); \
         echo 'test: shutdown with a full pool' >/run/clawos/restart-why; kill -HUP 1; \
         while [ -d /proc/$D ]; do sleep 0.01; done; ls -d /sys/fs/cgroup/clawos/instance-* 2>/dev/null | wc -l; \
         for i in $(seq 200); do grep -q 'shutdown complete' /run/clawos/daemon.log && break; sleep 0.05; done; \
         grep -c 'shutdown complete ready_workers_ended=8' /run/clawos/daemon.log",
    );
    // (init's own line may land among the command's.)
    let left: Vec<&str> = left
        .lines()
        .filter(|l| !l.starts_with("clawos: "))
        .collect();
    assert_eq!(
        left,
        ["0", "1"],
        "instance cgroups left after shutdown, and the daemon's record"
    );
    g.expect("clawos: ready", std::time::Duration::from_secs(120));
    g.poweroff();
}

#[test]
#[serial]
fn instance_cgroup_has_the_p15_limits_and_they_bite() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("sandbox-limits", Boot::Fast, &disk);
    started(&mut g);
    // P1.5, read back from the kernel.
    assert_eq!(
        g.sh_ok("cat $I/memory.max $I/memory.swap.max $I/memory.oom.group $I/cpu.max $I/pids.max"),
        "268435456\n0\n1\n50000 1000000\n32\n"
    );
    // CPU: usage over 3 s of wall time, and the throttling count.
    let cpu = g.sh_ok(
        "u0=$(awk '/^usage_usec/ {print $2}' $I/cpu.stat); t0=$(cut -d' ' -f1 /proc/uptime); sleep 3; \
         u1=$(awk '/^usage_usec/ {print $2}' $I/cpu.stat); t1=$(cut -d' ' -f1 /proc/uptime); \
         echo \"$u0 $u1 $t0 $t1 $(awk '/^nr_throttled/ {print $2}' $I/cpu.stat)\"",
    );
    let f: Vec<f64> = cpu.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let share = (f[1] - f[0]) / 1e6 / (f[3] - f[2]);
    eprintln!(
        "e2e: spinner CPU share {:.2}% over {:.2} s (cpu.max 50000/1000000 = 5%), nr_throttled {}",
        share * 100.0,
        f[3] - f[2],
        f[4]
    );
    assert!(
        (0.03..=0.07).contains(&share),
        "CPU share {share} not 5% ± 2: {cpu}"
    );
    assert!(f[4] > 0.0, "never throttled: {cpu}");
    // pids: a shell moved into the instance's leaf forks until pids.max.
    // Each child waits on a FIFO nobody writes (shell builtins only: an
    // execve in an instance is refused, and the eBPF monitors' exec rule
    // kills the instance); the children do not hold the console's output
    // open, and the instance's end (cgroup.kill) takes them.
    let forks = g.sh_ok(
        "rm -f /tmp/hold; mkfifo /tmp/hold; \
         sh -c \"echo \\$\\$ > $I/main/cgroup.procs; i=0; while [ \\$i -lt 40 ]; do (read x </tmp/hold) >/dev/null 2>&1 & i=\\$((i + 1)); echo \\$i >/tmp/forked; done\" 2>/tmp/fork.err; \
         cat /tmp/fork.err $I/pids.current; \
         if [ -e $I/pids.events.local ]; then awk '/^max/ {print \"limit\", ($2 > 0)}' $I/pids.events.local; \
         else awk '/^max/ {print \"leaf\", ($2 > 0)}' $I/main/pids.events; fi; uname -r; cat /tmp/forked",
    );
    eprintln!("e2e: forks past pids.max: {}", forks.replace('\n', " | "));
    // EAGAIN at pids.max. Where the kernel counts it: up to 6.11, in the
    // pids.events of the leaf that forked; since 6.12 (which added
    // pids.events.local), pids.events is hierarchical and counts where the
    // limit bit and above, and pids.events.local of the instance's group,
    // whose pids.max it is, counts that group's own limit. What is left
    // is the sleeps (each forked one waits still: counted) and the
    // worker's threads (their number varies with its thread pool: idle
    // ones end), not the shell that tried and exited: at most 31.
    let lines: Vec<&str> = forks.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("sh: can't fork: Resource temporarily unavailable"),
        "{forks}"
    );
    let current: u32 = lines[1].parse().unwrap();
    let forked: u32 = lines.get(4).and_then(|l| l.parse().ok()).unwrap_or(0);
    assert!(
        (1..40).contains(&forked) && (forked + 1..=31).contains(&current),
        "pids.current {current} after {forked} forks: {forks}"
    );
    let release = lines.get(3).copied().unwrap_or_default();
    let mut version = release.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let counted = match (version.next(), version.next()) {
        (Some(major), Some(minor)) if (major, minor) >= (6, 12) => "limit 1",
        _ => "leaf 1",
    };
    assert_eq!(lines[2], counted, "pids.events max on {release}: {forks}");
    spinner_ended(&mut g);
    g.poweroff();
}

#[test]
#[serial]
fn a_memory_hog_is_oom_killed_as_a_group_and_never_swaps() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("sandbox-oom", Boot::Fast, &disk);
    // Swap present: a 64 MiB swap file on the data partition.
    g.sh_ok(
        "dd if=/dev/zero of=/var/lib/clawos/swapfile bs=1M count=64 2>/dev/null && chmod 600 /var/lib/clawos/swapfile \
         && mkswap /var/lib/clawos/swapfile >/dev/null && swapon /var/lib/clawos/swapfile",
    );
    assert_eq!(g.sh_ok("tail -n +2 /proc/swaps | wc -l"), "1\n");
    // Both daemons number their instances from 1 under the same cgroup
    // root: the appliance's keeps no ready workers meanwhile, so that no
    // instance of its own (a worker it makes or renews) takes a number the
    // second one uses. (Two daemons on one machine is this test's doing.)
    g.restart_daemon_with(
        "s/^# ready_workers = 8/ready_workers = 0/",
        "ready_workers = 0",
        "test: no ready workers beside a second daemon",
    );
    // A second daemon whose WASM cap is 1 GiB, so that the cgroup's
    // memory.max is what stops the hog, and whose instances may use a
    // whole CPU for a minute (touching 256 MiB page by page at 5% of a TCG
    // CPU would take minutes): memory.max is the only limit in the way.
    // It serves no remote API (the appliance's daemon has the port).
    g.sh_ok(
        "sed -e 's/^memory_limit_bytes = .*/memory_limit_bytes = 1073741824/' \
         -e 's/^cpu_budget_ms = .*/cpu_budget_ms = 60000/' \
         -e 's|^limits_file = .*|limits_file = \"/etc/clawos/big-limits.toml\"|' \
         -e 's/^listen = .*/listen = \"\"/' \
         /etc/clawos/daemon.toml >/etc/clawos/big.toml && \
         sed 's/^cpu_max = .*/cpu_max = [1000000, 1000000]/' /etc/clawos/limits.toml >/etc/clawos/big-limits.toml && \
         grep -c 1073741824 /etc/clawos/big.toml",
    );
    g.sh_ok(
        "clawos-wasm-daemon --config /etc/clawos/big.toml --socket /run/clawos/big.sock >/tmp/big.log 2>&1 & echo $! >/tmp/big.pid; \
         for i in $(seq 200); do grep -q 'clawos-wasm-daemon ready' /tmp/big.log && break; sleep 0.05; done; \
         grep -c 'clawos-wasm-daemon ready' /tmp/big.log",
    );
    let hog = g.sh(
        "(while [ ! -e /tmp/hog.done ]; do cat /sys/fs/cgroup/clawos/memory.swap.current; sleep 0.2; done | sort -un | tail -n 1 >/tmp/swapmax) & S=$!; \
         clawosctl --socket /run/clawos/big.sock run memgrow 16 1024; rc=$?; touch /tmp/hog.done; wait $S; echo rc=$rc",
    );
    eprintln!("e2e: memory hog: {}", hog.text);
    assert!(
        hog.text.contains("clawosctl: INSTANCE_KILLED (204): worker")
            && hog.text.contains("killed by the kernel's OOM killer: the instance's cgroup reached memory.max = 268435456 bytes")
            && hog.text.ends_with("rc=204\n"),
        "{}",
        hog.text
    );
    // As a group: the subtree's memory.events count the OOM kill and the
    // group kill; nothing was swapped.
    let events = g.sh_ok(
        "awk '$1 == \"oom_kill\" || $1 == \"oom_group_kill\" {print $1, ($2 > 0)}' /sys/fs/cgroup/clawos/memory.events; \
         cat /tmp/swapmax /sys/fs/cgroup/clawos/memory.swap.current",
    );
    assert_eq!(events, "oom_kill 1\noom_group_kill 1\n0\n0\n");
    // The daemon keeps serving.
    assert_eq!(
        g.sh_ok("clawosctl --socket /run/clawos/big.sock run hello oom 2>/dev/null"),
        "hello, oom\n"
    );
    g.sh_ok("kill -TERM $(cat /tmp/big.pid)");
    g.poweroff();
}

#[test]
#[serial]
fn every_refused_syscall_dies_or_gets_its_errno_under_the_real_filter_in_the_guest() {
    let disk = Disk::fresh();
    let mut g = Guest::boot("sandbox-seccomp", Boot::Fast, &disk);
    // The probe's filters are the bytes the daemon and launcher installed.
    let digests = g.sh_ok(
        "for k in daemon launcher worker; do echo \"$k $(clawos-seccomp-probe --digest $k)\"; done",
    );
    for line in digests.lines() {
        let (kind, sum) = line.split_once(' ').unwrap();
        let logged = g.sh_ok(&format!(
            "grep -o 'kind=\"{kind}\" instructions=[0-9]* sha256={sum}' /run/clawos/daemon.log | wc -l"
        ));
        assert_eq!(logged, "1\n", "{kind} filter {sum} not the daemon's");
    }
    // Each vector: kill by SIGSYS shows as status 159 (128 + 31).
    let results = g.sh_ok(
        "clawos-seccomp-probe --list | while read k s a e; do \
         out=$(clawos-seccomp-probe $k $s $(echo $a | tr , ' ') 2>/dev/null); rc=$?; echo \"$k $s $e $rc $out\"; done",
    );
    let mut n = 0;
    // The shell reports each SIGSYS death as "Bad system call".
    for line in results.lines().filter(|l| *l != "Bad system call") {
        let f: Vec<&str> = line.splitn(5, ' ').collect();
        match f[2].strip_prefix("errno:") {
            Some(errno) => assert_eq!(
                (f[3], f.get(4).copied()),
                ("0", Some(format!("errno {errno}").as_str())),
                "{line}"
            ),
            None => assert_eq!(f[3], "159", "{line}: not killed by SIGSYS"),
        }
        n += 1;
    }
    assert!(n > 100, "{results}");
    eprintln!("e2e: {n} refused calls checked under the real filters in the guest");
    for k in ["daemon", "launcher", "worker"] {
        assert!(
            g.sh_ok(&format!("clawos-seccomp-probe --allowed {k}"))
                .starts_with("allowed calls work")
        );
    }
    g.poweroff();
}
