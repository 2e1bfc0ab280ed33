//! The resolver against a scripted DNS server on 127.0.0.1 (one thread,
//! one connection at a time, hickory-built replies), and against hosts and
//! resolv.conf files in a temporary directory.

use super::*;
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, TcpListener};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use tempfile::TempDir;

/// What the test server does with one query.
enum Reply {
    /// Send this message.
    Message(Message),
    /// Send this message after the reply to the next query (out of order).
    After(Message),
    /// Send these bytes as one frame (the length prefix is added).
    Frame(Vec<u8>),
    /// Send these bytes as they are, then close.
    Raw(Vec<u8>),
    /// Close without answering.
    Close,
    /// Never answer; keep the connection until the client closes it.
    Silent,
}

/// A query as the server received it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    connection: usize,
    id: u16,
    rd: bool,
    name: String,
    rtype: RecordType,
}

/// A DNS-over-TCP server on 127.0.0.1 that answers by a script.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl TestServer {
    fn start(script: impl Fn(&Message) -> Reply + Send + 'static) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen_by_thread, stop_for_thread) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                if stop_for_thread.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    serve(stream, connection, &script, &seen_by_thread);
                }
            }
        });
        TestServer { addr, seen, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // Wake the accept loop so that its thread ends.
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(
    mut stream: TcpStream,
    connection: usize,
    script: &dyn Fn(&Message) -> Reply,
    seen: &Mutex<Vec<Seen>>,
) {
    // A safety net: no test keeps a connection this long.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut held: Option<Message> = None;
    while let Some(query) = read_query(&mut stream) {
        let q = &query.queries()[0];
        seen.lock().unwrap().push(Seen {
            connection,
            id: query.id(),
            rd: query.recursion_desired(),
            name: q.name().to_ascii(),
            rtype: q.query_type(),
        });
        match script(&query) {
            Reply::Message(m) => {
                write_frame(&mut stream, &m.to_vec().unwrap());
                if let Some(h) = held.take() {
                    write_frame(&mut stream, &h.to_vec().unwrap());
                }
            }
            Reply::After(m) => held = Some(m),
            Reply::Frame(bytes) => write_frame(&mut stream, &bytes),
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes);
                return finish(stream);
            }
            Reply::Close => return finish(stream),
            Reply::Silent => {
                let _ = stream.read_to_end(&mut Vec::new());
                return;
            }
        }
    }
}

/// Close our side with a FIN (not a reset: the client's second query may
/// be unread) and wait for the client to close its side.
fn finish(mut stream: TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.read_to_end(&mut Vec::new());
}

fn read_query(stream: &mut TcpStream) -> Option<Message> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut body).ok()?;
    Some(Message::from_vec(&body).expect("the resolver sends valid queries"))
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) {
    let mut frame = u16::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    let _ = stream.write_all(&frame);
}

// --- replies -------------------------------------------------------------

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn qtype(query: &Message) -> RecordType {
    query.queries()[0].query_type()
}

/// A NOERROR reply to `query` with its question and no records.
fn reply_to(query: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().to_vec());
    m
}

fn a_record(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::A(A(addr.parse().unwrap())))
}

fn aaaa_record(owner: &str, addr: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::AAAA(AAAA(addr.parse().unwrap())))
}

fn cname_record(owner: &str, target: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::CNAME(CNAME(name(target))))
}

/// A server's script: these addresses for the name asked.
fn answers(v4: &[&str], v6: &[&str]) -> impl Fn(&Message) -> Reply + Send + 'static {
    let v4: Vec<Ipv4Addr> = v4.iter().map(|a| a.parse().unwrap()).collect();
    let v6: Vec<Ipv6Addr> = v6.iter().map(|a| a.parse().unwrap()).collect();
    move |query| {
        let mut m = reply_to(query);
        let owner = query.queries()[0].name().clone();
        if qtype(query) == RecordType::A {
            for a in &v4 {
                m.add_answer(Record::from_rdata(owner.clone(), 60, RData::A(A(*a))));
            }
        } else {
            for a in &v6 {
                m.add_answer(Record::from_rdata(owner.clone(), 60, RData::AAAA(AAAA(*a))));
            }
        }
        Reply::Message(m)
    }
}

fn rcode(code: ResponseCode) -> impl Fn(&Message) -> Reply + Send + 'static {
    move |query| {
        let mut m = reply_to(query);
        m.set_response_code(code);
        Reply::Message(m)
    }
}

/// A resolver for `servers` whose hosts file is `dir`/hosts (absent unless
/// the test writes it).
fn resolver(dir: &TempDir, servers: &[&TestServer], timeout_ms: u64) -> Resolver {
    Resolver::with_servers(
        dir.path().join("hosts"),
        servers.iter().map(|s| s.addr).collect(),
        Duration::from_millis(timeout_ms),
    )
}

fn lookup_fails(r: &Resolver, name: &str) -> Failure {
    match r.lookup(name) {
        Ok(addrs) => panic!("lookup of {name:?} gave {addrs:?}"),
        Err(f) => f,
    }
}

// --- DNS -------------------------------------------------------------------

#[test]
fn answers_a_then_aaaa_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(answers(&["10.0.0.1", "10.0.0.2"], &["fd00::1"]));
    let r = resolver(&dir, &[&server], 1500);
    let want = vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")];
    assert_eq!(r.lookup("www.example.com").unwrap(), want);
    assert_eq!(r.lookup("WWW.Example.COM.").unwrap(), want);
}

#[test]
fn queries_are_pipelined_on_one_connection_with_rd_and_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(answers(&["10.0.0.1"], &[]));
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        r.lookup("svc_1.example.com.").unwrap(),
        vec![ip("10.0.0.1")]
    );
    let seen = server.seen();
    let shape: Vec<(usize, bool, &str, RecordType)> = seen
        .iter()
        .map(|s| (s.connection, s.rd, s.name.as_str(), s.rtype))
        .collect();
    assert_eq!(
        shape,
        vec![
            (0, true, "svc_1.example.com.", RecordType::A),
            (0, true, "svc_1.example.com.", RecordType::AAAA),
        ]
    );
    assert_ne!(seen[0].id, seen[1].id);
}

#[test]
fn replies_out_of_order_are_matched_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let answer = answers(&["10.0.0.1"], &["fd00::1"]);
    let server = TestServer::start(move |query| match answer(query) {
        Reply::Message(m) if qtype(query) == RecordType::A => Reply::After(m),
        other => other,
    });
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        r.lookup("www.example.com").unwrap(),
        vec![ip("10.0.0.1"), ip("fd00::1")]
    );
}

#[test]
fn nxdomain_is_enoent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(rcode(ResponseCode::NXDomain));
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        lookup_fails(&r, "nope.example"),
        Failure::new(
            Code::Enoent,
            format!(
                "name \"nope.example\" not found (NXDOMAIN from {})",
                server.addr
            )
        )
    );
}

#[test]
fn noerror_without_addresses_is_enoent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(answers(&[], &[]));
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        lookup_fails(&r, "empty.example"),
        Failure::new(
            Code::Enoent,
            format!(
                "name \"empty.example\" has no addresses (no A or AAAA records from {})",
                server.addr
            )
        )
    );
}

#[test]
fn servfail_and_refused_are_eio() {
    let dir = tempfile::tempdir().unwrap();
    for (code, said) in [
        (ResponseCode::ServFail, "replied SERVFAIL"),
        (ResponseCode::Refused, "replied REFUSED"),
        (ResponseCode::NotImp, "replied with response code 4"),
    ] {
        let server = TestServer::start(rcode(code));
        let r = resolver(&dir, &[&server], 1500);
        assert_eq!(
            lookup_fails(&r, "www.example.com"),
            Failure::new(
                Code::Eio,
                format!(
                    "no dns server answered the lookup of \"www.example.com\" (1 tried); the last, {}, {said}",
                    server.addr
                )
            )
        );
    }
}

#[test]
fn a_failing_server_passes_the_lookup_to_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let failing = TestServer::start(rcode(ResponseCode::ServFail));
    let good = TestServer::start(answers(&["10.0.0.7"], &[]));
    let r = resolver(&dir, &[&failing, &good], 1500);
    assert_eq!(r.lookup("www.example.com").unwrap(), vec![ip("10.0.0.7")]);
    assert_eq!(failing.seen().len(), 2);
    assert_eq!(good.seen().len(), 2);

    // Both failing: the last reason is reported.
    let refusing = TestServer::start(rcode(ResponseCode::Refused));
    let r = resolver(&dir, &[&failing, &refusing], 1500);
    assert_eq!(
        lookup_fails(&r, "www.example.com"),
        Failure::new(
            Code::Eio,
            format!(
                "no dns server answered the lookup of \"www.example.com\" (2 tried); the last, {}, replied REFUSED",
                refusing.addr
            )
        )
    );
}

#[test]
fn an_address_from_one_query_is_enough() {
    // A has addresses, AAAA failed: the A addresses are the answer.
    let dir = tempfile::tempdir().unwrap();
    let answer = answers(&["10.0.0.1"], &[]);
    let fail = rcode(ResponseCode::ServFail);
    let server = TestServer::start(move |q| {
        if qtype(q) == RecordType::A {
            answer(q)
        } else {
            fail(q)
        }
    });
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(r.lookup("www.example.com").unwrap(), vec![ip("10.0.0.1")]);
}

#[test]
fn cname_chain_inside_the_answer_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(|query| {
        let mut m = reply_to(query);
        if qtype(query) == RecordType::A {
            // Out of order, with a record for a name outside the chain.
            m.add_answer(a_record("other.example.", "10.9.9.9"));
            m.add_answer(a_record("b.example.org.", "10.1.1.1"));
            m.add_answer(cname_record("a.example.net.", "b.example.org."));
            m.add_answer(cname_record("www.example.com.", "a.example.net."));
            m.add_answer(a_record("b.example.org.", "10.1.1.2"));
            // A record of the other type is not an answer to this query.
            m.add_answer(aaaa_record("b.example.org.", "fd00::9"));
        } else {
            m.add_answer(cname_record("www.example.com.", "a.example.net."));
            m.add_answer(aaaa_record("unrelated.example.", "fd00::8"));
        }
        Reply::Message(m)
    });
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        r.lookup("WWW.example.com").unwrap(),
        vec![ip("10.1.1.1"), ip("10.1.1.2")]
    );
}

/// A server whose A answer is the CNAME chain www.example.com -> c1 ->
/// ... -> c`steps` with an address at the end.
fn chain_server(steps: usize) -> TestServer {
    TestServer::start(move |query| {
        let mut m = reply_to(query);
        if qtype(query) == RecordType::A {
            let mut owner = "www.example.com.".to_string();
            for i in 1..=steps {
                let target = format!("c{i}.example.");
                m.add_answer(cname_record(&owner, &target));
                owner = target;
            }
            m.add_answer(a_record(&owner, "10.2.2.2"));
        }
        Reply::Message(m)
    })
}

#[test]
fn cname_chains_past_the_bound_or_looping_give_no_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let eight = chain_server(8);
    let r = resolver(&dir, &[&eight], 1500);
    assert_eq!(r.lookup("www.example.com").unwrap(), vec![ip("10.2.2.2")]);

    let nine = chain_server(9);
    let r = resolver(&dir, &[&nine], 1500);
    assert_eq!(lookup_fails(&r, "www.example.com").code, Code::Enoent);

    let looping = TestServer::start(|query| {
        let mut m = reply_to(query);
        m.add_answer(cname_record("www.example.com.", "a.example."));
        m.add_answer(cname_record("a.example.", "www.example.com."));
        Reply::Message(m)
    });
    let r = resolver(&dir, &[&looping], 1500);
    assert_eq!(lookup_fails(&r, "www.example.com").code, Code::Enoent);
}

#[test]
fn bad_replies_are_eio_naming_the_server() {
    type Script = Box<dyn Fn(&Message) -> Reply + Send>;
    let a_id = Arc::new(Mutex::new(None));
    let cases: Vec<(&str, Script, &str)> = vec![
        (
            "a reused id",
            // The AAAA query is answered with the A query's id again.
            Box::new(move |q| {
                let mut m = reply_to(q);
                let mut a_id = a_id.lock().unwrap();
                match *a_id {
                    None => *a_id = Some(q.id()),
                    Some(id) => {
                        m.set_id(id);
                    }
                }
                Reply::Message(m)
            }),
            "sent a reply whose id matches no query",
        ),
        (
            "another name",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.queries_mut()[0].set_name(name("evil.example."));
                m.add_answer(a_record("evil.example.", "10.6.6.6"));
                Reply::Message(m)
            }),
            "sent a reply to another question",
        ),
        (
            "another type",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.queries_mut()[0].set_query_type(RecordType::MX);
                Reply::Message(m)
            }),
            "sent a reply to another question",
        ),
        (
            "another class",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.queries_mut()[0].set_query_class(DNSClass::CH);
                Reply::Message(m)
            }),
            "sent a reply to another question",
        ),
        (
            "no question",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.take_queries();
                Reply::Message(m)
            }),
            "sent a reply to another question",
        ),
        (
            "TC set",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.set_truncated(true);
                Reply::Message(m)
            }),
            "sent a truncated reply (TC set)",
        ),
        (
            "QR clear",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.set_message_type(MessageType::Query);
                Reply::Message(m)
            }),
            "sent a query instead of a reply (QR clear)",
        ),
        (
            "another opcode",
            Box::new(|q| {
                let mut m = reply_to(q);
                m.set_op_code(OpCode::Status);
                Reply::Message(m)
            }),
            "sent a reply with another opcode",
        ),
        (
            "garbage in a frame",
            Box::new(|_| Reply::Frame(vec![0xde, 0xad, 0xbe, 0xef])),
            "sent a malformed reply",
        ),
        (
            "an empty frame",
            Box::new(|_| Reply::Frame(Vec::new())),
            "sent a malformed reply",
        ),
        (
            "close without answer",
            Box::new(|_| Reply::Close),
            "closed the connection before answering",
        ),
        (
            "half a frame",
            Box::new(|_| Reply::Raw(vec![0x00, 0x40, 1, 2, 3])),
            "closed the connection before answering",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (case, script, reason) in cases {
        let server = TestServer::start(script);
        let r = resolver(&dir, &[&server], 1500);
        assert_eq!(
            lookup_fails(&r, "www.example.com"),
            Failure::new(
                Code::Eio,
                format!(
                    "no dns server answered the lookup of \"www.example.com\" (1 tried); the last, {}, {reason}",
                    server.addr
                )
            ),
            "{case}"
        );
    }
}

#[test]
fn silent_server_hits_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(|_| Reply::Silent);
    let r = resolver(&dir, &[&server], 300);
    let start = Instant::now();
    let failure = lookup_fails(&r, "www.example.com");
    let took = start.elapsed();
    assert_eq!(
        failure,
        Failure::new(
            Code::Etimeout,
            format!(
                "lookup of \"www.example.com\" timed out after 300ms (last server tried: {})",
                server.addr
            )
        )
    );
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn a_sooner_deadline_ends_the_lookup_first() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(|_| Reply::Silent);
    let r = resolver(&dir, &[&server], 5000);
    let start = Instant::now();
    let failure = r
        .lookup_before("www.example.com", start + Duration::from_millis(300))
        .unwrap_err();
    let took = start.elapsed();
    assert_eq!(failure.code, Code::Etimeout, "{}", failure.message);
    assert!(took < Duration::from_millis(1000), "{took:?}");
    // A later deadline than the resolver's own timeout changes nothing.
    let r = resolver(&dir, &[&server], 300);
    let start = Instant::now();
    let failure = r
        .lookup_before("www.example.com", start + Duration::from_secs(60))
        .unwrap_err();
    assert_eq!(failure.code, Code::Etimeout, "{}", failure.message);
    assert!(start.elapsed() < Duration::from_millis(1000));
}

#[test]
fn one_deadline_covers_all_servers() {
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<TestServer> = (0..3)
        .map(|_| TestServer::start(|_| Reply::Silent))
        .collect();
    let r = resolver(&dir, &servers.iter().collect::<Vec<_>>(), 450);
    let start = Instant::now();
    assert_eq!(lookup_fails(&r, "www.example.com").code, Code::Etimeout);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(450), "{took:?}");
    assert!(took < Duration::from_millis(1000), "{took:?}");
    // Each was asked inside the one deadline.
    for server in &servers {
        assert_eq!(server.seen().len(), 1, "{}", server.addr);
    }
}

#[test]
fn a_silent_server_leaves_time_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let silent = TestServer::start(|_| Reply::Silent);
    let good = TestServer::start(answers(&["10.0.0.3"], &[]));
    let r = resolver(&dir, &[&silent, &good], 600);
    assert_eq!(r.lookup("www.example.com").unwrap(), vec![ip("10.0.0.3")]);
}

#[test]
fn refused_connection_is_an_io_failure_naming_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = Resolver::with_servers(
        dir.path().join("hosts"),
        vec![closed],
        Duration::from_millis(1500),
    );
    let failure = lookup_fails(&r, "www.example.com");
    assert_eq!(failure.code, Code::Eio);
    let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
    assert_eq!(
        failure.message,
        format!("dns server {closed}: connect for \"www.example.com\": {refused}")
    );

    let good = TestServer::start(answers(&["10.0.0.4"], &[]));
    let r = Resolver::with_servers(
        dir.path().join("hosts"),
        vec![closed, good.addr],
        Duration::from_millis(1500),
    );
    assert_eq!(r.lookup("www.example.com").unwrap(), vec![ip("10.0.0.4")]);
}

#[test]
fn addresses_are_deduplicated_and_capped_at_32() {
    let dir = tempfile::tempdir().unwrap();
    let v4: Vec<String> = (0..40)
        .map(|i| format!("10.0.{}.{}", i % 20, i % 20))
        .collect();
    let v6: Vec<String> = (0..20).map(|i| format!("fd00::{i:x}")).collect();
    let v4: Vec<&str> = v4.iter().map(String::as_str).collect();
    let v6: Vec<&str> = v6.iter().map(String::as_str).collect();
    let server = TestServer::start(answers(&v4, &v6));
    let r = resolver(&dir, &[&server], 1500);
    let mut want: Vec<IpAddr> = (0..20).map(|i| ip(&format!("10.0.{i}.{i}"))).collect();
    want.extend((0..12).map(|i| ip(&format!("fd00::{i:x}"))));
    assert_eq!(r.lookup("many.example").unwrap(), want);
}

#[test]
fn invalid_names_are_refused_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(answers(&["10.0.0.1"], &[]));
    let r = resolver(&dir, &[&server], 1500);
    let long_label = "a".repeat(64);
    let long_name = format!("{}example1", "a.".repeat(123)); // 254 bytes
    assert_eq!(long_name.len(), 254);
    let bad = [
        ("", "\"\" is not a host name: it is empty"),
        (".", "\".\" is not a host name: it is empty"),
        ("a..b", "\"a..b\" is not a host name: it has an empty label"),
        (".a", "\".a\" is not a host name: it has an empty label"),
        (
            "a.b..",
            "\"a.b..\" is not a host name: it has an empty label",
        ),
        (&long_label, ""),
        (&long_name, "a host name of 254 bytes is longer than 253"),
        ("a b.example", ""),
        ("exa/mple.com", ""),
        ("bücher.example", ""),
        ("evil\n.example", ""),
        ("a\\.example", ""),
        ("1.2.3.4:80", ""),
        ("::1", ""),
    ];
    for (name, message) in bad {
        let f = lookup_fails(&r, name);
        assert_eq!(f.code, Code::InvalidArgument, "{name:?}: {f:?}");
        if !message.is_empty() {
            assert_eq!(f.message, message);
        }
    }
    assert_eq!(
        lookup_fails(&r, &long_label).message,
        format!("{long_label:?} is not a host name: a label is longer than 63")
    );
    assert_eq!(
        lookup_fails(&r, "a b").message,
        "\"a b\" is not a host name: only ASCII letters, digits, '-' and '_' are allowed"
    );
    assert_eq!(server.seen(), Vec::new());

    // The limits themselves are fine.
    let longest_label = format!("{}.example", "a".repeat(63));
    let longest_name = format!("{}example.", "a.".repeat(123)); // 253 and the final dot
    for name in [&longest_label, &longest_name] {
        assert_eq!(r.lookup(name).unwrap(), vec![ip("10.0.0.1")], "{name:?}");
    }
}

// --- the hosts file ----------------------------------------------------------

#[test]
fn hosts_file_names_and_aliases_never_reach_dns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts"),
        "# The hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1         localhost ip6-localhost ip6-loopback\r\n\
         10.0.0.5    Build.Example.COM build   # the build host\n\
         10.0.0.6    build.example.com.\n\
         10.0.0.5    build.example.com\n\
         bogus       build.example.com\n\
         fe80::1%eth0 build.example.com\n\
         #10.0.0.9   commented\n\
         10.0.0.10\n",
    )
    .unwrap();
    let server = TestServer::start(rcode(ResponseCode::NXDomain));
    let r = resolver(&dir, &[&server], 1500);
    assert_eq!(
        r.lookup("build.example.com.").unwrap(),
        vec![ip("10.0.0.5"), ip("10.0.0.6")]
    );
    assert_eq!(r.lookup("BUILD").unwrap(), vec![ip("10.0.0.5")]);
    assert_eq!(
        r.lookup("localhost").unwrap(),
        vec![ip("127.0.0.1"), ip("::1")]
    );
    assert_eq!(r.lookup("ip6-loopback").unwrap(), vec![ip("::1")]);
    assert_eq!(server.seen(), Vec::new());

    // Not in the file (a comment is not an entry): DNS is asked.
    assert_eq!(lookup_fails(&r, "commented").code, Code::Enoent);
    let asked: Vec<String> = server.seen().into_iter().map(|s| s.name).collect();
    assert_eq!(asked, vec!["commented.", "commented."]);
}

#[test]
fn hosts_file_is_read_at_every_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let r = Resolver::with_servers(hosts.clone(), Vec::new(), Duration::from_secs(1));
    assert_eq!(lookup_fails(&r, "late.example").code, Code::Enoent);
    std::fs::write(&hosts, "10.0.0.8 late.example\n").unwrap();
    assert_eq!(r.lookup("late.example").unwrap(), vec![ip("10.0.0.8")]);
}

// --- resolv.conf -------------------------------------------------------------

fn resolv_conf(dir: &TempDir, text: &[u8]) -> Result<Resolver, Failure> {
    let path = dir.path().join("resolv.conf");
    std::fs::write(&path, text).unwrap();
    Resolver::from_files(&dir.path().join("hosts"), &path, Duration::from_secs(1))
}

fn sockaddrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn resolv_conf_nameservers_are_the_first_three() {
    let dir = tempfile::tempdir().unwrap();
    let r = resolv_conf(
        &dir,
        b"# generated by the image\n\
          search example.com corp.example\n\
          options ndots:2 edns0 trust-ad timeout:1 some-future-option\n\
          domain example.com\n\
          nameserver 10.0.2.3\n\
          \tnameserver fd00::53   ; the v6 one\n\
          nameserver 10.0.2.4\n\
          nameserver 10.0.2.5\n\
          nameserver 10.0.2.6\n",
    )
    .unwrap();
    assert_eq!(
        r.servers(),
        sockaddrs(&["10.0.2.3:53", "[fd00::53]:53", "10.0.2.4:53"])
    );
}

#[test]
fn resolv_conf_scoped_servers_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let r = resolv_conf(
        &dir,
        b"nameserver fe80::1%eth0\nnameserver 10.0.2.3\nnameserver fe80::2\nnameserver 10.0.2.4\n",
    )
    .unwrap();
    assert_eq!(r.servers(), sockaddrs(&["10.0.2.3:53", "[fe80::2]:53"]));
}

#[test]
fn missing_resolv_conf_means_no_servers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    let hosts = dir.path().join("hosts");
    let r = Resolver::from_files(&hosts, &path, Duration::from_secs(1)).unwrap();
    assert_eq!(r.servers(), &[] as &[SocketAddr]);
    assert_eq!(
        lookup_fails(&r, "www.example.com"),
        Failure::new(
            Code::Enoent,
            format!(
                "name \"www.example.com\" is not in the hosts file {hosts:?} and no dns server is configured (no nameserver in {path:?})"
            )
        )
    );
    // An empty file too.
    let r = resolv_conf(&dir, b"# nothing\n").unwrap();
    assert_eq!(lookup_fails(&r, "www.example.com").code, Code::Enoent);
}

#[test]
fn bad_resolv_conf_lines_are_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    let cases: [(&[u8], &str); 6] = [
        (
            b"nameserver 10.0.2.3\nnameserver not-an-ip\n",
            "line 2: \"nameserver\" has a value that is not an IP address",
        ),
        (
            b"nameserver 10.0.2.3%eth0\n",
            "line 1: \"nameserver\" has a value that is not an IP address",
        ),
        (
            b"namserver 10.0.2.3\n",
            "line 1: unknown directive \"namserver\"",
        ),
        (
            b"\n\nnameserver\n",
            "line 3: \"nameserver\" lacks a valid value",
        ),
        (
            b"nameserver 10.0.2.3 10.0.2.4\n",
            "line 1: extra words after the \"nameserver\" value",
        ),
        (b"# fine\nsearch \xff.example\n", "line 2: not UTF-8"),
    ];
    for (text, what) in cases {
        let failure = resolv_conf(&dir, text).unwrap_err();
        assert_eq!(
            failure,
            Failure::new(Code::InvalidArgument, format!("{path:?} {what}")),
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

// --- any reply bytes -----------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever a server sends, the lookup ends without a panic: garbage as
    /// it is, garbage in a frame with the query's id, or a good answer with
    /// one byte changed.
    #[test]
    fn any_reply_bytes_give_a_code_not_a_panic(
        mode in 0u8..3,
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        at in any::<usize>(),
        byte in any::<u8>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let good = answers(&["10.0.0.1", "10.0.0.2"], &["fd00::1"]);
        let server = TestServer::start(move |q| match mode {
            0 => Reply::Raw(bytes.clone()),
            1 => {
                let mut b = bytes.clone();
                for (i, id) in q.id().to_be_bytes().into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(i) {
                        *slot = id;
                    }
                }
                Reply::Frame(b)
            }
            _ => {
                let Reply::Message(m) = good(q) else { unreachable!() };
                let mut b = m.to_vec().unwrap();
                let i = at % b.len();
                b[i] = byte;
                Reply::Frame(b)
            }
        });
        let r = resolver(&dir, &[&server], 1500);
        match r.lookup("www.example.com") {
            Ok(addrs) => {
                prop_assert!(mode == 2, "garbage gave {addrs:?}");
                prop_assert!(!addrs.is_empty() && addrs.len() <= 3, "{addrs:?}");
            }
            Err(f) => prop_assert!(
                matches!(f.code, Code::Eio | Code::Enoent | Code::Etimeout),
                "{f:?}"
            ),
        }
    }
}
