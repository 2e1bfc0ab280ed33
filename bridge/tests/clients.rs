//! Hostile and careless clients of the Unix socket against the release
//! daemon: refused peers are answered at accept and cost nothing, idle
//! clients cannot lock others out, one uid gets its share, request bytes
//! in flight are bounded, and install by path reads regular files only,
//! never quoting them.

// The harness forks a child that connects as another uid and hands the
// connections back: fork, setuid and _exit have no safe wrapper.
#![allow(unsafe_code)]

mod common;

use clawos_bridge::error::Code;
use clawos_bridge::ipc::frame;
use clawos_bridge::ipc::proto::{Body, ComponentSource, Request, Response, RunRequest};
use common::TestDaemon;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

/// `n` connections to `socket` made by a child process running as
/// `uid`:`uid`, the socket and its directory opened to everyone first (the
/// daemon's own check is what the callers test).
fn connections_as(uid: u32, n: usize, socket: &Path) -> Vec<UnixStream> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    connections_with(uid, uid, &[], n, socket).unwrap_or_else(|e| panic!("connect: {e}"))
}

/// `n` connections to `socket` made by a child process running as
/// `uid`:`gid` with the supplementary `groups` (the kernel takes a
/// connection's peer credentials at connect), handed back to this process
/// over `SCM_RIGHTS`; or the errno of the child's first failed connect.
/// The child makes only system calls (rustix) between fork and exit.
fn connections_with(
    uid: u32,
    gid: u32,
    groups: &[u32],
    n: usize,
    socket: &Path,
) -> Result<Vec<UnixStream>, std::io::Error> {
    use rustix::net::{
        AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
        SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketType,
    };
    use std::mem::MaybeUninit;
    use std::os::fd::AsFd;
    let groups: Vec<libc::gid_t> = groups.to_vec();
    let addr = SocketAddrUnix::new(socket).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    // SAFETY: the child calls only async-signal-safe system calls (no
    // allocation, no lock) and ends with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        // SAFETY: plain system calls in the forked child.
        let ok = unsafe {
            libc::setgroups(groups.len(), groups.as_ptr()) == 0
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0
        };
        if !ok {
            // SAFETY: ends the child without running the parent's handlers.
            unsafe { libc::_exit(1) };
        }
        for _ in 0..n {
            let Ok(fd) = rustix::net::socket(AddressFamily::UNIX, SocketType::STREAM, None) else {
                // SAFETY: as above.
                unsafe { libc::_exit(2) };
            };
            if let Err(e) = rustix::net::connect(&fd, &addr) {
                // SAFETY: as above. The errno, told by the exit status.
                unsafe { libc::_exit(100 + e.raw_os_error().min(150)) };
            }
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            let fds = [fd.as_fd()];
            control.push(SendAncillaryMessage::ScmRights(&fds));
            if rustix::net::sendmsg(
                &theirs,
                &[std::io::IoSlice::new(b"c")],
                &mut control,
                SendFlags::empty(),
            )
            .is_err()
            {
                // SAFETY: as above.
                unsafe { libc::_exit(4) };
            }
        }
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    drop(theirs);
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut byte = [0u8; 1];
        let r = rustix::net::recvmsg(
            &ours,
            &mut [std::io::IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        if r.bytes == 0 {
            break;
        }
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                conns.extend(fds.map(|fd: OwnedFd| UnixStream::from(fd)));
            }
        }
    }
    let mut status = 0;
    // SAFETY: reaps the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status), "the connecting child: {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => {}
        code if code > 100 => return Err(std::io::Error::from_raw_os_error(code - 100)),
        code => panic!("the connecting child failed ({code})"),
    }
    assert_eq!(
        conns.len(),
        n,
        "the child stopped after {} connections",
        conns.len()
    );
    Ok(conns)
}

/// The daemon's resident memory, bytes.
fn rss(d: &TestDaemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// The one response waiting on `c`, read without sending anything.
fn answer(c: &mut UnixStream) -> Response {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let payload = frame::read_blocking(c, 1 << 20)
        .unwrap()
        .expect("an answer");
    Response::decode(&payload).unwrap()
}

fn status(d: &TestDaemon) -> clawos_bridge::ipc::proto::DaemonStatus {
    match d.request(&Request::Status).body {
        Body::Status(s) => s,
        other => panic!("{other:?}"),
    }
}

/// The answer to `status` on `c`.
fn status_on(c: &mut UnixStream) -> Response {
    c.write_all(&frame::encode(&Request::Status.encode()))
        .unwrap();
    answer(c)
}

#[test]
fn allowed_groups_reach_the_socket_as_the_daemon_made_it() {
    use std::os::unix::fs::PermissionsExt;
    const GROUP: u32 = 4242;
    let mode = |d: &TestDaemon| std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    // The socket's directory is traversable, as the appliance's /run/clawos
    // is; the socket itself keeps the mode the daemon gave it.
    let open_dir = |d: &TestDaemon| {
        std::fs::set_permissions(
            d.socket.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap()
    };

    // No groups: root and the daemon's user only, and the kernel says so.
    let d = TestDaemon::start();
    open_dir(&d);
    assert_eq!(mode(&d), 0o600);
    let e = connections_with(NOBODY, NOBODY, &[], 1, &d.socket).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{e}");
    drop(d);

    let d = TestDaemon::with_config(&format!("allowed_gids = [{GROUP}, 4243]\n"));
    open_dir(&d);
    assert_eq!(mode(&d), 0o666);
    // A member by a supplementary group (read from the socket, not /proc).
    let mut c = connections_with(NOBODY, NOBODY, &[7, GROUP], 1, &d.socket)
        .unwrap()
        .remove(0);
    let r = status_on(&mut c);
    assert_eq!(r.code, Code::Success, "{}", r.message);
    // And by its primary group.
    let mut c = connections_with(NOBODY, GROUP, &[], 1, &d.socket)
        .unwrap()
        .remove(0);
    assert_eq!(status_on(&mut c).code, Code::Success);
    // Anyone else: EPERM at accept, nothing read.
    let mut c = connections_with(NOBODY, NOBODY, &[7, 8], 1, &d.socket)
        .unwrap()
        .remove(0);
    let r = answer(&mut c);
    assert_eq!(r.code, Code::Eperm, "{}", r.message);
    assert_eq!(
        r.message,
        "uid 65534 (gid 65534) may not use this socket: only root, the daemon's user and members of allowed_gids"
    );
    d.assert_serving();
}

#[test]
fn refused_peers_are_answered_at_accept_and_hold_no_place() {
    let d = TestDaemon::with_config("[ipc]\nmax_connections = 4\n");
    // Twice the table: none of them takes a place.
    let mut refused = connections_as(NOBODY, 8, &d.socket);
    for c in &mut refused {
        // Answered before the peer sent a byte.
        let r = answer(c);
        assert_eq!(r.code, Code::Eperm, "{}", r.message);
        assert!(
            r.message
                .contains("uid 65534 (gid 65534) may not use this socket"),
            "{}",
            r.message
        );
        // Then closed.
        assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0);
    }
    let st = status(&d);
    assert_eq!(st.connections, 1, "only this status request's connection");
    d.assert_serving();
}

#[test]
fn a_refused_peer_sending_large_frames_costs_the_daemon_no_memory() {
    let d = TestDaemon::start();
    let before = rss(&d);
    let conns = connections_as(NOBODY, 8, &d.socket);
    let chunk = vec![0x5a; 1 << 20];
    let senders: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let chunk = chunk.clone();
            std::thread::spawn(move || {
                let _ = c.write_all(&frame::header(60 << 20));
                // The daemon answered and closed: the writes fail at once
                // instead of filling its memory.
                let mut sent = 0;
                while sent < 60 && c.write_all(&chunk).is_ok() {
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    let sent: Vec<usize> = senders.into_iter().map(|s| s.join().unwrap()).collect();
    let after = rss(&d);
    eprintln!("rss before {before} after {after}; MiB each peer got out: {sent:?}");
    assert!(
        after < before + (8 << 20),
        "the daemon grew from {before} to {after} bytes"
    );
    d.assert_serving();
}

#[test]
fn idle_clients_cannot_lock_others_out() {
    let d = TestDaemon::with_config("allowed_gids = [65534]\n[ipc]\nmax_connections = 4\n");
    let mut idle = connections_as(NOBODY, 4, &d.socket);
    // Each is in the table: a status on each is served, in order, so that
    // every one has been admitted before the last is served (the daemon
    // admits them in the order its accept tasks run).
    for c in &mut idle {
        c.write_all(&frame::encode(&Request::Status.encode()))
            .unwrap();
        assert_eq!(answer(c).code, Code::Success);
    }
    // Root still gets in: one of the three that have waited longer is
    // closed for it; the one served last is not.
    status(&d);
    let closed = |c: &mut UnixStream| {
        c.set_nonblocking(true).unwrap();
        matches!(c.read(&mut [0u8; 1]), Ok(0))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone = loop {
        let gone: Vec<usize> = (0..4).filter(|&i| closed(&mut idle[i])).collect();
        if !gone.is_empty() || Instant::now() >= deadline {
            break gone;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(gone.len(), 1, "closed: {gone:?}");
    assert_ne!(gone[0], 3, "the connection just served was closed");
    d.assert_serving();
}

#[test]
fn one_uid_gets_its_share_and_busy_connections_are_never_closed() {
    let d = TestDaemon::with_config(
        "allowed_gids = [65534]\n[ipc]\nmax_connections = 8\nmax_connections_per_uid = 2\n[sandbox]\ncpu_budget_ms = 20000\n",
    );
    d.install_ok("spinner");
    let mut busy = connections_as(NOBODY, 2, &d.socket);
    let spin = Request::Run(RunRequest {
        name: "spinner".into(),
        args: vec![],
        input: vec![],
        env: vec![],
        timeout_ms: Some(4000),
    });
    busy[0].write_all(&frame::encode(&spin.encode())).unwrap();
    busy[1].write_all(&frame::encode(&spin.encode())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&d).runs_in_flight < 2 {
        assert!(Instant::now() < deadline, "the spinners never started");
        std::thread::yield_now();
    }
    // Both of the uid's places serve runs: a third is answered EAGAIN.
    let mut third = connections_as(NOBODY, 1, &d.socket).remove(0);
    let r = answer(&mut third);
    assert_eq!(r.code, Code::Eagain, "{}", r.message);
    assert!(
        r.message
            .contains("uid 65534 has 2 connections serving requests"),
        "{}",
        r.message
    );
    // Another uid is served meanwhile.
    d.assert_serving();
    // The runs were not cut: both end at their timeout.
    for c in &mut busy {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let r = answer(c);
        assert_eq!(r.code, Code::Etimeout, "{}", r.message);
    }
    drop(busy);
}

#[test]
fn request_bytes_in_flight_are_bounded() {
    // The budget is one largest frame (64 MiB + 1 MiB).
    let d = TestDaemon::with_config("[ipc]\nmax_request_bytes_in_flight = 68157440\n");
    // 60 MiB announced, 1 byte sent: its 60 MiB are taken. The daemon
    // reads its connections in any order, so a probe read before the slow
    // header takes its 10 MiB first (and the slow frame is then the one
    // refused): then both go and the pair is tried again.
    let deadline = Instant::now() + Duration::from_secs(60);
    let slow = loop {
        assert!(
            Instant::now() < deadline,
            "the slow frame was never read first"
        );
        let mut slow = d.client();
        slow.send_raw(&frame::header(60 << 20)).unwrap();
        // The last try's frames can still hold the bytes (a connection's are
        // freed when the daemon sees it closed): this one refused and its
        // connection closed, the byte after it does not go.
        if slow.send_raw(&[0]).is_err() {
            continue;
        }
        // Let the daemon read that header before the probe's.
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = UnixStream::connect(&d.socket).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        probe.write_all(&frame::header(10 << 20)).unwrap();
        match frame::read_blocking(&mut probe, 1 << 20) {
            Ok(Some(payload)) => {
                let r = Response::decode(&payload).unwrap();
                assert_eq!(r.code, Code::Eagain, "{}", r.message);
                assert!(
                    r.message.contains("ipc.max_request_bytes_in_flight"),
                    "{}",
                    r.message
                );
                assert!(
                    r.message.contains("this 10485760-byte frame was not read"),
                    "{}",
                    r.message
                );
                break slow;
            }
            // Read first: its frame waits for a body that never comes.
            Err(f) if f.code == Code::Eagain => {}
            other => panic!("the probe: {other:?}"),
        }
    };
    // Small requests still fit.
    d.assert_serving();
    // Once the slow frame is gone, its bytes are free again.
    drop(slow);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = d.client();
        c.send_raw(&frame::header(10 << 20)).unwrap();
        // Refused at its header, the body finds the connection closed
        // (EPIPE): the answer is read all the same.
        let _ = c.send_raw(&vec![0u8; 10 << 20]);
        let r = c.receive().unwrap();
        if r.code == Code::InvalidArgument {
            // Read whole: ten MiB of zeros decode as an install with an
            // empty name.
            assert!(
                r.message.starts_with("invalid tool name \"\""),
                "{}",
                r.message
            );
            break;
        }
        assert_eq!(r.code, Code::Eagain, "{}", r.message);
        assert!(
            Instant::now() < deadline,
            "the slow frame's bytes never came back"
        );
    }
}

fn install_path(d: &TestDaemon, path: &str) -> Response {
    d.request(&Request::Install {
        name: "bypath".into(),
        source: ComponentSource::Path(path.into()),
        replace: true,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    })
}

#[test]
fn install_by_path_reads_regular_files_only_and_never_quotes_them() {
    let d = TestDaemon::start();
    let before = rss(&d);
    // /proc files report a size that is not their content.
    for path in [
        "/proc/self/pagemap",
        "/proc/self/maps",
        "/sys/kernel/mm/transparent_hugepage/enabled",
    ] {
        if !Path::new(path).exists() {
            continue;
        }
        let r = install_path(&d, path);
        assert_eq!(r.code, Code::InvalidArgument, "{path}: {}", r.message);
        assert!(
            r.message.contains("not a regular file's content"),
            "{path}: {}",
            r.message
        );
    }
    assert!(
        rss(&d) < before + (16 << 20),
        "reading /proc files grew the daemon"
    );
    // Devices, directories and FIFOs are not regular files; a FIFO does
    // not block the open.
    let fifo = d.dir.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    for path in ["/dev/zero", "/dev/urandom", "/", fifo.to_str().unwrap()] {
        let r = install_path(&d, path);
        assert_eq!(r.code, Code::InvalidArgument, "{path}: {}", r.message);
        assert!(
            r.message.ends_with("is not a regular file"),
            "{path}: {}",
            r.message
        );
    }
    // A secret file is refused without a byte of it in the answer, in any
    // spelling (text, hex as wasmparser prints it, decimal).
    let secret = d.dir.path().join("shadow");
    std::fs::write(&secret, "root:$y$j9T$secretsalt:19000:0:99999:7:::\n").unwrap();
    let r = install_path(&d, secret.to_str().unwrap());
    assert_eq!(r.code, Code::WasmInvalidComponent, "{}", r.message);
    for leak in ["root", "secret", "0x72", "114, 111", "72 6f"] {
        assert!(!r.message.contains(leak), "{leak:?} in {:?}", r.message);
    }
    assert!(
        r.message.contains("does not start with the \\0asm magic"),
        "{}",
        r.message
    );
    // A core module is named as one.
    let core = d.dir.path().join("core.wasm");
    std::fs::write(&core, wat::parse_str("(module)").unwrap()).unwrap();
    let r = install_path(&d, core.to_str().unwrap());
    assert_eq!(r.code, Code::WasmInvalidComponent, "{}", r.message);
    assert!(
        r.message
            .starts_with("a core WebAssembly module, not a component"),
        "{}",
        r.message
    );
    d.assert_serving();
}

/// A component of `n` exported functions: 1.2 MB for 20000, whose
/// compilation takes about 270 MB (measured in one process on the
/// development host, 2026-12-02).
fn costly_component(n: usize) -> Vec<u8> {
    let mut wat = String::from("(component (core module $m\n");
    for i in 0..n {
        wat.push_str(&format!(
            "(func (export \"f{i}\") (result i32) i32.const {i})\n"
        ));
    }
    wat.push_str(")\n(core instance $i (instantiate $m))\n");
    for i in 0..n {
        wat.push_str(&format!(
            "(func (export \"g{i}\") (result u32) (canon lift (core func $i \"f{i}\")))\n"
        ));
    }
    wat.push(')');
    wat::parse_str(&wat).unwrap()
}

#[test]
fn an_install_compiles_outside_the_daemon() {
    let d = TestDaemon::start();
    d.assert_serving();
    let before = rss(&d);
    let r = d.request(&Request::Install {
        name: "costly".into(),
        source: ComponentSource::Bytes(costly_component(20_000)),
        replace: false,
        kept_data: Default::default(),
        grants: vec![],
        grant_requested: false,
    });
    // It compiles (the development host has no cgroup v2, so the compiler
    // has no memory limit here; the appliance test kills one at its limit),
    // then does not link: it is no tool.
    assert_eq!(r.code, Code::WasmLinkError, "{}", r.message);
    let after = rss(&d);
    eprintln!("daemon rss before {before} after {after}");
    // The daemon holds the artifact it loaded, not the compiler's memory.
    assert!(
        after < before + (100 << 20),
        "the daemon grew from {before} to {after} bytes"
    );
    let log = d.log_when(
        |l| l.contains("compile ended"),
        std::time::Duration::from_secs(10),
    );
    let ended = log
        .lines()
        .find(|l| l.contains("compile ended"))
        .unwrap_or_default();
    assert!(
        ended.contains("bytes=") && ended.contains("code=SUCCESS"),
        "{log}"
    );
}
