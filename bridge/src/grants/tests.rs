use super::*;
use crate::config::{Config, DeviceRule};

fn config() -> Config {
    let mut c = Config::default();
    c.network.allow_names = vec!["localhost".into(), "*.example.org".into()];
    c.network.allow = vec![
        EgressRule {
            cidr: "0.0.0.0/0".parse().unwrap(),
            ports: vec![5432, 443],
        },
        EgressRule {
            cidr: "127.0.0.0/8".parse().unwrap(),
            ports: vec![5432],
        },
    ];
    c.devices.allow = vec![
        DeviceRule {
            name: "null".into(),
            path: "/dev/null".into(),
            write: true,
        },
        DeviceRule {
            name: "zero".into(),
            path: "/dev/zero".into(),
            write: false,
        },
    ];
    c
}

fn grants(items: &[&str]) -> Grants {
    let mut g = Grants::default();
    for i in items {
        g.apply(Grant::parse(i).unwrap());
    }
    g
}

#[test]
fn every_kind_parses_and_prints_back() {
    for (text, shown) in [
        ("name=db.example.org", "name=db.example.org"),
        ("name=*.example.org", "name=*.example.org"),
        ("net=10.0.0.0/8:5432,443,5432", "net=10.0.0.0/8:443,5432"),
        ("net=127.0.0.1:5432", "net=127.0.0.1/32:5432"),
        ("net=[::1]:5432", "net=::1/128:5432"),
        ("net=2001:db8::/32:443", "net=2001:db8::/32:443"),
        ("device=null:rw", "device=null:rw"),
        ("device=zero", "device=zero:ro"),
        ("storage=32MiB", "storage=33554432"),
        ("inodes=100", "inodes=100"),
        ("cpu-budget-ms=250", "cpu-budget-ms=250"),
        ("memory=64M", "memory=67108864"),
        ("env=MODE=a=b", "env=MODE"),
    ] {
        assert_eq!(Grant::parse(text).unwrap().to_string(), shown, "{text}");
    }
    assert_eq!(
        Grant::parse("env=MODE=a=b").unwrap(),
        Grant::Env("MODE".into(), "a=b".into())
    );
}

#[test]
fn malformed_grants_are_invalid_argument_naming_them() {
    for bad in [
        "",
        "net",
        "net=10.0.0.0/8",
        "net=10.0.0.1/8:5432",
        "net=10.0.0.0/8:0",
        "net=10.0.0.0/8:65536",
        "net=nowhere:5432",
        "name=Upper.example.org",
        "name=a..b",
        "name=*.",
        "device=../mem",
        "device=null:wx",
        "storage=0",
        "storage=12X",
        "storage=99999999999999999999G",
        "inodes=-1",
        "cpu-budget-ms=0",
        "env=1X=y",
        "env=A-B=y",
        "env=NOVALUE",
        "env=A=\0",
        "secret=A",
        "rootkit=1",
    ] {
        let e = Grant::parse(bad).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{bad:?}");
        assert!(e.message.starts_with("grant "), "{bad:?}: {}", e.message);
    }
    let long = format!("name={}", "a".repeat(MAX_GRANT_TEXT));
    assert!(
        Grant::parse(&long)
            .unwrap_err()
            .message
            .contains("longer than")
    );
    // The message quotes the grant escaped and cut short.
    let e = Grant::parse(&format!("x\u{1b}[2J{}", "y".repeat(200))).unwrap_err();
    assert!(
        !e.message.contains('\u{1b}') && e.message.len() < 300,
        "{}",
        e.message
    );
}

#[test]
fn grants_merge_and_revoke() {
    let mut g = grants(&[
        "net=10.0.0.0/8:5432",
        "net=10.0.0.0/8:443",
        "name=db.example.org",
        "name=db.example.org",
        "device=zero",
        "device=zero:rw",
        "env=A=1",
        "memory=1M",
    ]);
    assert_eq!(g.net.len(), 1);
    assert_eq!(g.net[0].ports, [443, 5432]);
    assert_eq!(g.names.len(), 1);
    assert_eq!(
        g.devices,
        [DeviceGrant {
            name: "zero".into(),
            write: true
        }]
    );
    assert!(g.revoke(&Revoke::parse("net=10.0.0.0/8:443").unwrap()));
    assert_eq!(g.net[0].ports, [5432]);
    assert!(!g.revoke(&Revoke::parse("net=10.0.0.0/8:443").unwrap()));
    assert!(g.revoke(&Revoke::parse("net=10.0.0.0/8:5432").unwrap()));
    assert!(g.net.is_empty());
    assert!(g.revoke(&Revoke::parse("memory").unwrap()));
    assert_eq!(g.memory_bytes, None);
    assert!(g.revoke(&Revoke::parse("env=A").unwrap()));
    assert!(g.revoke(&Revoke::parse("device=zero").unwrap()));
    assert!(g.revoke(&Revoke::parse("net").unwrap()));
    assert_eq!(g, Grants::default());
    for bad in ["env=1", "storage=5", "bogus"] {
        assert_eq!(
            Revoke::parse(bad).unwrap_err().code,
            Code::InvalidArgument,
            "{bad}"
        );
    }
    // items() gives back what apply() builds.
    let g = grants(&[
        "name=x.example.org",
        "net=10.0.0.0/8:1,2",
        "device=null:rw",
        "storage=2M",
        "env=K=V",
    ]);
    let mut again = Grants::default();
    for i in g.items() {
        again.apply(i);
    }
    assert_eq!(again, g);
}

#[test]
fn ceilings_refuse_what_the_config_does_not_allow() {
    let c = Ceilings::of(&config());
    for ok in [
        "name=localhost",
        "name=db.example.org",
        "name=*.eu.example.org",
        "name=*.example.org",
        "net=10.0.0.0/8:5432",
        "net=0.0.0.0/0:443",
        "net=127.0.0.1:5432",
        "device=null:rw",
        "device=zero",
        "storage=1M",
        "cpu-budget-ms=1",
        "memory=1M",
    ] {
        c.check(&grants(&[ok]))
            .unwrap_or_else(|e| panic!("{ok}: {}", e.message));
    }
    for (bad, why) in [
        ("name=example.org", "not within network.allow_names"),
        ("name=*.org", "not within network.allow_names"),
        ("name=evil.com", "not within network.allow_names"),
        ("net=10.0.0.0/8:22", "not within network.allow"),
        ("net=::/0:5432", "not within network.allow"),
        // Loopback on 443: only 0.0.0.0/0 has 443, and it never reaches loopback.
        ("net=127.0.0.1:443", "not within network.allow"),
        ("net=169.254.169.254:5432", "not within network.allow"),
        ("device=sda", "not in devices.allow"),
        ("device=zero:rw", "read-only"),
        ("storage=1G", "clawfs.quota_bytes"),
        ("inodes=99999999", "clawfs.quota_inodes"),
        ("cpu-budget-ms=99999999", "sandbox.cpu_budget_ms"),
        ("memory=2G", "memory"),
    ] {
        let e = c.check(&grants(&[bad])).unwrap_err();
        assert_eq!(e.code, Code::PolicyDenied, "{bad}");
        assert!(e.message.contains(why), "{bad}: {}", e.message);
    }
    let many: Vec<String> = (1..=clawos_ebpf_types::MAX_GRANT_DESTS as u16 + 1)
        .map(|p| format!("net=10.0.{}.0/24:5432", p))
        .collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let e = c.check(&grants(&refs)).unwrap_err();
    assert!(
        e.message.contains("kernel's per-instance check"),
        "{}",
        e.message
    );
    let mut c = c;
    c.env_entries = 3;
    let mut env = Grants::default();
    for i in 0..=c.env_entries {
        env.apply(Grant::Env(format!("V{i}"), "x".into()));
    }
    assert!(
        c.check(&env)
            .unwrap_err()
            .message
            .contains("max_env_entries")
    );
}

#[test]
fn effective_grants_are_bounded_by_the_ceilings_of_now() {
    let mut cfg = config();
    let g = grants(&[
        "device=null:rw",
        "device=zero",
        "storage=8M",
        "cpu-budget-ms=100",
    ]);
    let e = Ceilings::of(&cfg).effective(&g);
    let names: Vec<(&str, bool)> = e
        .devices
        .allow
        .iter()
        .map(|d| (d.name.as_str(), d.write))
        .collect();
    assert_eq!(names, [("null", true), ("zero", false)]);
    assert_eq!(e.storage.0, 8 << 20);
    assert_eq!(e.storage.1, cfg.clawfs.quota_inodes);
    assert_eq!(e.cpu_budget_ms, 100);
    assert_eq!(e.memory_bytes, cfg.sandbox.memory_limit_bytes);
    // Not granted: the config's own, as before grants, even above the
    // cgroup's memory.max (which then bites first); granted: never above it.
    let mut big = cfg.clone();
    big.sandbox.memory_limit_bytes = 4 * cfg.cgroup.instance.memory_max;
    let big = Ceilings::of(&big);
    assert_eq!(
        big.effective(&Grants::default()).memory_bytes,
        4 * cfg.cgroup.instance.memory_max
    );
    assert_eq!(
        big.effective(&grants(&["memory=1G"])).memory_bytes,
        cfg.cgroup.instance.memory_max
    );
    // The config lowered below the grant, and a device made read-only.
    cfg.clawfs.quota_bytes = 2 << 20;
    cfg.devices.allow[0].write = false;
    let e = Ceilings::of(&cfg).effective(&g);
    assert_eq!(e.storage.0, 2 << 20);
    assert!(!e.devices.allow[0].write);
    // A new tool has no device at all.
    assert!(
        Ceilings::of(&cfg)
            .effective(&Grants::default())
            .devices
            .allow
            .is_empty()
    );
}

fn rules(e: &Effective) -> Vec<String> {
    e.net
        .iter()
        .map(|r| format!("{}:{:?}", r.cidr, r.ports))
        .collect()
}

#[test]
fn a_broad_network_grant_reaches_no_special_range_a_ceiling_names() {
    // The config names loopback (for another tool) and the metadata
    // address beside the whole Internet.
    let mut cfg = config();
    cfg.network.allow.push(EgressRule {
        cidr: "169.254.169.254/32".parse().unwrap(),
        ports: vec![80, 443],
    });
    cfg.network.allow.push(EgressRule {
        cidr: "10.0.0.0/8".parse().unwrap(),
        ports: vec![443],
    });
    let ceilings = Ceilings::of(&cfg);
    let broad = grants(&["net=0.0.0.0/0:5432,443"]);
    ceilings.check(&broad).unwrap();
    let e = ceilings.effective(&broad);
    // Neither 127.0.0.0/8 nor 169.254.169.254 comes with it, and 10.0.0.0/8
    // (already reached) is not a second entry.
    assert_eq!(rules(&e), ["0.0.0.0/0:[443, 5432]"]);
    let proxy = crate::egress::Egress::new(cfg.network.clone()).granted(e.names, e.net);
    for (ip, port, allowed) in [
        ("192.0.2.7", 5432, true),
        ("10.1.2.3", 443, true),
        ("127.0.0.1", 5432, false),
        ("169.254.169.254", 443, false),
        ("169.254.169.254", 80, false),
    ] {
        assert_eq!(
            proxy.destination_allowed(ip.parse().unwrap(), port),
            allowed,
            "{ip}:{port}"
        );
    }
    // Granted by name, a special address is reached.
    let named = grants(&["net=169.254.169.254:80", "net=127.0.0.1:5432"]);
    ceilings.check(&named).unwrap();
    assert_eq!(
        rules(&ceilings.effective(&named)),
        ["169.254.169.254/32:[80]", "127.0.0.1/32:[5432]"]
    );
    // The ceiling narrowed after the grant: what is left of it, still
    // without loopback.
    cfg.network.allow = vec![
        EgressRule {
            cidr: "10.0.0.0/8".parse().unwrap(),
            ports: vec![5432, 443],
        },
        EgressRule {
            cidr: "192.168.0.0/16".parse().unwrap(),
            ports: vec![5432],
        },
        EgressRule {
            cidr: "127.0.0.0/8".parse().unwrap(),
            ports: vec![5432],
        },
    ];
    assert_eq!(
        rules(&Ceilings::of(&cfg).effective(&broad)),
        ["10.0.0.0/8:[443, 5432]", "192.168.0.0/16:[5432]"]
    );
}

#[test]
fn a_tool_from_before_grants_keeps_the_config_s_policy() {
    let cfg = config();
    let g = Grants::legacy(&cfg);
    assert_eq!(g.names, cfg.network.allow_names);
    assert_eq!(g.net, cfg.network.allow);
    let e = Ceilings::of(&cfg).effective(&g);
    assert_eq!(e.devices, cfg.devices);
    assert_eq!(e.storage, (cfg.clawfs.quota_bytes, cfg.clawfs.quota_inodes));
    assert_eq!(e.cpu_budget_ms, cfg.sandbox.cpu_budget_ms);
}

#[test]
fn grants_round_trip_through_toml() {
    let g = grants(&[
        "name=*.example.org",
        "net=::1:5432",
        "device=null:rw",
        "memory=1M",
        "env=A=b c",
    ]);
    let text = toml::to_string(&g).unwrap();
    assert_eq!(toml::from_str::<Grants>(&text).unwrap(), g);
    assert!(toml::from_str::<Grants>("unknown = 1").is_err());
}

#[test]
fn the_effective_grants_debug_shows_env_names_only() {
    let e = Ceilings::of(&config()).effective(&grants(&["env=TOKEN=hunter2"]));
    let shown = format!("{e:?}");
    assert!(
        shown.contains("TOKEN") && !shown.contains("hunter2"),
        "{shown}"
    );
}

#[test]
fn the_runs_destinations_are_the_grant_within_the_ceilings_of_now() {
    let mut cfg = config();
    let g = grants(&["net=10.0.0.0/8:5432,443", "net=127.0.0.1:5432"]);
    let e = Ceilings::of(&cfg).effective(&g);
    let shown: Vec<String> = e.net.iter().map(net_text).collect();
    assert_eq!(shown, ["10.0.0.0/8:443,5432", "127.0.0.1/32:5432"]);
    // The ceiling lowered to a part of the granted network and one port.
    cfg.network.allow = vec![EgressRule {
        cidr: "10.1.0.0/16".parse().unwrap(),
        ports: vec![5432],
    }];
    let e = Ceilings::of(&cfg).effective(&g);
    let shown: Vec<String> = e.net.iter().map(net_text).collect();
    assert_eq!(shown, ["10.1.0.0/16:5432"]);
}

#[test]
fn grants_from_elsewhere_are_validated_like_typed_ones() {
    for bad in [
        Grants {
            storage_bytes: Some(0),
            ..Grants::default()
        },
        Grants {
            names: vec!["a b".into()],
            ..Grants::default()
        },
        Grants {
            env: [("A=B".to_owned(), "x".to_owned())].into(),
            ..Grants::default()
        },
        Grants {
            net: vec![EgressRule {
                cidr: "10.0.0.1/8".parse().unwrap(),
                ports: vec![1],
            }],
            ..Grants::default()
        },
        Grants {
            secrets: ["\u{1b}[2J".to_owned()].into(),
            ..Grants::default()
        },
    ] {
        let e = Ceilings::of(&config()).check(&bad).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument, "{bad:?}");
        assert!(!e.message.contains('\u{1b}'), "{}", e.message);
    }
    assert_eq!(
        Revoke::parse("device=null:rw").unwrap_err().code,
        Code::InvalidArgument
    );
}
