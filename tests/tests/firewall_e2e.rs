//! End-to-end host firewall (issue 8): two hosts (network namespaces) that start like
//! real Docker hosts (`ip_forward` 0, FORWARD policy DROP, `DOCKER-USER`), BGP between
//! them with real BIRD, brindled on each; containers made by the harness (endpoint
//! records written by hand) or by `brindle-cni` ADD.
//!
//! Needs root; without it every test prints a note and passes. A missing BIRD fails
//! the tests. Traffic only flows between namespaces the tests create: containers, the
//! router (two extra /32 "outside" addresses on it) and an "internet" namespace on the
//! fabric; every test pool has an `unreachable` route in the root namespace.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_tests::bird::bird_bin;
use brindle_tests::netns::{is_root, Netns};
use brindle_tests::topology::{ForwardPolicy, Options, Topology};
use serde_json::Value;

/// Routes, BGP and the firewall settle well within this.
const CONVERGE: Duration = Duration::from_secs(15);
/// The bound for repairs after dockerd or an admin rewrote the firewall.
const REPAIR: Duration = Duration::from_secs(5);

fn can_run(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (network namespaces, BIRD, iptables)");
        return false;
    }
    // Fails (not skips) when BIRD is missing.
    bird_bin();
    true
}

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Two Docker-like hosts with brindled, BIRD and an established BGP mesh.
fn two_hosts(forward: ForwardPolicy) -> Topology {
    let mut t = Topology::new(Options {
        forward,
        ..Options::default()
    });
    t.start_agents(true);
    t.wait_mesh();
    t
}

/// `busybox ping` from `ns` (from `src` when given): replies out of `count`, waiting
/// at most `deadline_s` seconds.
fn ping(ns: &Netns, src: Option<Ipv4Addr>, to: Ipv4Addr, count: u32, deadline_s: u32) -> u32 {
    let (count, deadline) = (count.to_string(), deadline_s.to_string());
    let to = to.to_string();
    let src = src.map(|s| s.to_string());
    let mut args = vec![
        "busybox", "ping", "-c", &count, "-i", "0.2", "-W", "1", "-w", &deadline,
    ];
    if let Some(src) = &src {
        args.extend(["-I", src.as_str()]);
    }
    args.push(&to);
    let out = ns.exec(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// One pair of the isolation matrix: `from` pings `to` (from `src` when given).
struct Probe<'a> {
    what: String,
    from: &'a Netns,
    src: Option<Ipv4Addr>,
    to: Ipv4Addr,
    allowed: bool,
}

/// A party of the matrix: a label, the namespace it sends from, its address.
#[derive(Clone, Copy)]
struct Party<'a> {
    name: &'a str,
    ns: &'a Netns,
    ip: Ipv4Addr,
}

fn party<'a>(t: &'a Topology, name: &'a str, c: usize) -> Party<'a> {
    Party {
        name,
        ns: &t.containers[c].ns,
        ip: t.containers[c].ip,
    }
}

/// `a` pings `b` and `b` pings `a`.
fn both<'a>(probes: &mut Vec<Probe<'a>>, a: Party<'a>, b: Party<'a>, allowed: bool) {
    for (x, y) in [(a, b), (b, a)] {
        probes.push(Probe {
            what: format!("{} ({}) -> {} ({})", x.name, x.ip, y.name, y.ip),
            from: x.ns,
            src: None,
            to: y.ip,
            allowed,
        });
    }
}

/// An outside source (the router, from address `src`) pings `to`.
fn outside<'a>(
    probes: &mut Vec<Probe<'a>>,
    t: &'a Topology,
    src: Ipv4Addr,
    to: Party<'a>,
    allowed: bool,
) {
    probes.push(Probe {
        what: format!("outside {src} -> {} ({})", to.name, to.ip),
        from: &t.router.ns,
        src: Some(src),
        to: to.ip,
        allowed,
    });
}

/// Runs every probe in parallel: allowed pairs first, each retried until it answers
/// (routes and rules converge), then denied pairs with one short ping each, so that
/// a denial is measured only once everything involved is known to be reachable.
/// Panics listing every pair that behaved otherwise.
fn check_matrix(probes: &[Probe<'_>]) {
    let allowed_ok = |p: &Probe<'_>| {
        let start = Instant::now();
        loop {
            if ping(p.from, p.src, p.to, 1, 2) > 0 {
                return true;
            }
            if start.elapsed() > CONVERGE {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let run = |allowed: bool| -> Vec<String> {
        std::thread::scope(|s| {
            let handles: Vec<_> = probes
                .iter()
                .filter(|p| p.allowed == allowed)
                .map(|p| {
                    s.spawn(move || {
                        let got = match allowed {
                            true => allowed_ok(p),
                            false => ping(p.from, p.src, p.to, 2, 3) > 0,
                        };
                        (got != allowed).then(|| {
                            let want = if allowed { "allowed" } else { "denied" };
                            format!("{}: expected {want}", p.what)
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().expect("probe thread"))
                .collect()
        })
    };
    let mut wrong = run(true);
    wrong.extend(run(false));
    assert!(
        wrong.is_empty(),
        "{} of {} pairs wrong:\n{}",
        wrong.len(),
        probes.len(),
        wrong.join("\n")
    );
}

/// Two addresses outside every pool on the router (its fabric bridge), with /32
/// routes to `containers` via their hosts: the office network reaching containers.
fn outside_sources(t: &Topology, containers: &[usize]) -> (Ipv4Addr, Ipv4Addr) {
    let (a, b) = (t.fabric_ip(201), t.fabric_ip(202));
    for ip in [a, b] {
        t.router
            .ns
            .ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", "fab0"]);
    }
    for &c in containers {
        let ctr = &t.containers[c];
        let addrs = std::iter::once(ctr.ip).chain(ctr.extra.iter().map(|i| i.ip));
        for ip in addrs {
            let via = t.hosts[ctr.host].ip.to_string();
            t.router
                .ns
                .ok(&["ip", "route", "replace", &format!("{ip}/32"), "via", &via]);
        }
    }
    (a, b)
}

/// The isolation matrix on harness-made containers (endpoint records with segments
/// `test:blue`, `test:red`, `test:green`), on hosts with FORWARD policy `forward`.
fn isolation_matrix(forward: ForwardPolicy) {
    let mut t = two_hosts(forward);
    let a1 = t.add_container_on(0, None, "blue", &[]);
    let b1 = t.add_container_on(0, None, "red", &[]);
    // s1: one container on blue (eth0, its default route) and red (eth1).
    let s1 = t.add_container_on(0, None, "blue", &[]);
    let s1_red = t.add_interface(s1, "red", &[]);
    let a2 = t.add_container_on(1, None, "blue", &[]);
    let b2 = t.add_container_on(1, None, "red", &[]);
    let office = format!("{}/32", t.fabric_ip(201));
    let g1 = t.add_container_on(0, None, "green", &[&office]);
    let g2 = t.add_container_on(1, None, "green", &[&office]);
    let (admitted, other) = outside_sources(&t, &[a1, b1, s1, a2, b2, g1, g2]);

    let (pa1, pb1, ps1) = (
        party(&t, "a1", a1),
        party(&t, "b1", b1),
        party(&t, "s1", s1),
    );
    let ps1_red = Party {
        name: "s1/eth1",
        ip: s1_red,
        ..ps1
    };
    let (pa2, pb2) = (party(&t, "a2", a2), party(&t, "b2", b2));
    let (pg1, pg2) = (party(&t, "g1", g1), party(&t, "g2", g2));
    let mut p = Vec::new();
    // Same network: same host and across hosts.
    both(&mut p, pa1, ps1, true);
    both(&mut p, pa1, pa2, true);
    both(&mut p, pa2, ps1, true);
    both(&mut p, pb1, pb2, true);
    both(&mut p, pb1, ps1_red, true);
    both(&mut p, pb2, ps1_red, true);
    // allow-from narrows outside sources only, not the network's members.
    both(&mut p, pg1, pg2, true);
    // Different networks: same host and across hosts.
    both(&mut p, pa1, pb1, false);
    both(&mut p, pa2, pb2, false);
    both(&mut p, pa1, pb2, false);
    both(&mut p, pb1, pa2, false);
    both(&mut p, pa1, pg1, false);
    both(&mut p, pb2, pg1, false);
    // Outside every pool: admitted everywhere, the other source not on green.
    for to in [pa1, pb1, ps1, pa2, pb2, pg1, pg2] {
        outside(&mut p, &t, admitted, to, true);
    }
    for to in [pa1, pb2] {
        outside(&mut p, &t, other, to, true);
    }
    for to in [pg1, pg2] {
        outside(&mut p, &t, other, to, false);
    }
    let start = Instant::now();
    check_matrix(&p);
    eprintln!(
        "isolation matrix ({forward:?}): {} pairs in {:?}",
        p.len(),
        start.elapsed()
    );
}

#[test]
fn firewall_isolation_matrix_on_docker_hosts() {
    if !can_run("firewall_isolation_matrix_on_docker_hosts") {
        return;
    }
    isolation_matrix(ForwardPolicy::Drop);
}

/// Where FORWARD accepts everything, denials can only come from brindle's isolation.
#[test]
fn firewall_isolation_matrix_on_hosts_whose_forward_accepts() {
    if !can_run("firewall_isolation_matrix_on_hosts_whose_forward_accepts") {
        return;
    }
    isolation_matrix(ForwardPolicy::Accept);
}

/// The same isolation for containers placed by `brindle-cni`: one network per
/// conflist name, `brindle.allow-from` in the netconf.
#[test]
fn firewall_isolation_matrix_for_cni_containers() {
    if !can_run("firewall_isolation_matrix_for_cni_containers") {
        return;
    }
    let mut t = two_hosts(ForwardPolicy::Drop);
    let office = format!("{}/32", t.fabric_ip(201));
    let b1 = t.add_container_cni_on(0, None, "blue", &[]);
    let r1 = t.add_container_cni_on(0, None, "red", &[]);
    let b2 = t.add_container_cni_on(1, None, "blue", &[]);
    let r2 = t.add_container_cni_on(1, None, "red", &[]);
    let g2 = t.add_container_cni_on(1, None, "green", &[&office]);
    let (admitted, other) = outside_sources(&t, &[b1, r1, b2, r2, g2]);

    let (pb1, pr1) = (party(&t, "blue1", b1), party(&t, "red1", r1));
    let (pb2, pr2) = (party(&t, "blue2", b2), party(&t, "red2", r2));
    let pg2 = party(&t, "green2", g2);
    let mut p = Vec::new();
    both(&mut p, pb1, pb2, true);
    both(&mut p, pr1, pr2, true);
    both(&mut p, pb1, pr1, false);
    both(&mut p, pb2, pr2, false);
    both(&mut p, pb1, pr2, false);
    both(&mut p, pr1, pb2, false);
    both(&mut p, pb1, pg2, false);
    for to in [pb1, pr1, pb2, pr2, pg2] {
        outside(&mut p, &t, admitted, to, true);
    }
    outside(&mut p, &t, other, pb2, true);
    outside(&mut p, &t, other, pg2, false);
    check_matrix(&p);

    // The record carries what the netconf said.
    let eps: Value =
        serde_json::from_str(&t.cli_ok("h1", &["endpoints", "--all-nodes", "-o", "json"]))
            .expect("endpoints json");
    let green = eps
        .as_array()
        .and_then(|l| l.iter().find(|e| e["ip"] == pg2.ip.to_string()))
        .unwrap_or_else(|| panic!("no record for green2 in {eps}"));
    assert_eq!(green["segment"], "cni:green", "{green}");
    assert_eq!(green["allow_from"], serde_json::json!([office]), "{green}");
}

/// Time from `since` until `from` gets a reply from `to` (a ping every 0.1 s), or
/// `None` within `limit`.
fn time_to_reach(from: &Netns, to: Ipv4Addr, since: Instant, limit: Duration) -> Option<Duration> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &from.name, "busybox", "ping", "-i", "0.1"])
        .args(["-w", &limit.as_secs().to_string(), &to.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("ping");
    let out = child.stdout.take().expect("stdout");
    let answered = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("bytes from"));
    let at = since.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    answered.then_some(at)
}

/// Both directions between two containers, measured from `since`; panics past the
/// issue's bound.
fn assert_back_within(t: &Topology, what: &str, c1: usize, c2: usize, since: Instant) {
    let limit = REPAIR + Duration::from_secs(2);
    let (n1, n2) = (&t.containers[c1].ns, &t.containers[c2].ns);
    let (ip1, ip2) = (t.containers[c1].ip, t.containers[c2].ip);
    let (there, back) = std::thread::scope(|s| {
        let there = s.spawn(|| time_to_reach(n1, ip2, since, limit));
        let back = s.spawn(|| time_to_reach(n2, ip1, since, limit));
        (there.join().unwrap(), back.join().unwrap())
    });
    eprintln!("{what}: reachable again after {there:?} (c1 -> c2) and {back:?} (c2 -> c1)");
    for (dir, d) in [("c1 -> c2", there), ("c2 -> c1", back)] {
        let d = d.unwrap_or_else(|| panic!("{what}: {dir} not reachable within {limit:?}"));
        assert!(d <= REPAIR, "{what}: {dir} back only after {d:?}");
    }
}

/// The filter table's FORWARD rules on host `h`, in order.
fn forward_rules(t: &Topology, h: usize) -> Vec<String> {
    t.hosts[h]
        .ns
        .ok(&["iptables-save", "-t", "filter"])
        .lines()
        .filter_map(|l| l.strip_prefix("-A FORWARD ").map(str::to_string))
        .collect()
}

#[test]
fn firewall_repaired_within_5s_after_forward_flush_rules_restore_and_table_drop() {
    if !can_run("firewall_repaired_within_5s") {
        return;
    }
    let mut t = two_hosts(ForwardPolicy::Drop);
    let c1 = t.add_container_on(0, None, "blue", &[]);
    let c2 = t.add_container_on(1, None, "blue", &[]);
    let r1 = t.add_container_on(0, None, "red", &[]);
    let baseline = |t: &Topology| {
        let mut p = Vec::new();
        both(&mut p, party(t, "c1", c1), party(t, "c2", c2), true);
        both(&mut p, party(t, "c1", c1), party(t, "r1", r1), false);
        check_matrix(&p);
    };
    baseline(&t);
    // Docker's documented order: DOCKER-USER first, brindle's jump right after it.
    let rules = forward_rules(&t, 0);
    assert_eq!(
        rules.first().map(String::as_str),
        Some("-j DOCKER-USER"),
        "{rules:?}"
    );
    assert!(
        rules
            .get(1)
            .is_some_and(|r| r.ends_with("-j BRINDLE-FORWARD")),
        "{rules:?}"
    );

    // An admin flushes FORWARD (the policy stays DROP).
    let since = Instant::now();
    t.hosts[0].ns.ok(&["iptables", "-F", "FORWARD"]);
    assert_back_within(&t, "after iptables -F FORWARD", c1, c2, since);
    assert!(
        forward_rules(&t, 0)
            .iter()
            .any(|r| r.ends_with("-j BRINDLE-FORWARD")),
        "the jump is back"
    );

    // The firewall is reloaded with Docker's rules only (iptables-restore flushes the
    // table, brindle's chain included), as after a reboot or a dockerd restart.
    let since = Instant::now();
    t.hosts[0].restore_filter(ForwardPolicy::Drop.docker_filter());
    assert_back_within(
        &t,
        "after iptables-restore of Docker's rules",
        c1,
        c2,
        since,
    );

    // brindle's nftables table is deleted: isolation and NAT would be gone.
    let since = Instant::now();
    t.hosts[0]
        .ns
        .ok(&["nft", "delete", "table", "ip", "brindle"]);
    let back = loop {
        let listed = t.hosts[0]
            .ns
            .exec(&["nft", "list", "table", "ip", "brindle"]);
        if listed.status.success() {
            break since.elapsed();
        }
        assert!(
            since.elapsed() <= REPAIR,
            "table ip brindle not back within {REPAIR:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("after nft delete table ip brindle: table back after {back:?}");
    baseline(&t);
}

/// Adds a table `probe` to `ns` counting packets received from each of `sources`.
fn count_sources(ns: &Netns, sources: &[Ipv4Addr]) {
    let mut rules = String::from(
        "table ip probe {\n  chain input {\n    type filter hook input priority 0; policy accept;\n",
    );
    for s in sources {
        rules.push_str(&format!("    ip saddr {s} counter\n"));
    }
    rules.push_str("  }\n}\n");
    let out = ns.exec_input(&["nft", "-f", "-"], &rules);
    assert!(
        out.status.success(),
        "nft in {}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets `ns` received from `source` (see [`count_sources`]).
fn received_from(ns: &Netns, source: Ipv4Addr) -> u64 {
    let text = ns.ok(&["nft", "list", "chain", "ip", "probe", "input"]);
    let needle = format!("ip saddr {source} counter packets ");
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&needle))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter for {source} in {text}"))
}

#[test]
fn firewall_outgoing_nat_per_pool_and_none_between_containers() {
    if !can_run("firewall_outgoing_nat_per_pool") {
        return;
    }
    let mut t = two_hosts(ForwardPolicy::Drop);
    let c1 = t.add_container_on(0, None, "blue", &[]);
    let c2 = t.add_container_on(1, None, "blue", &[]);
    // "internet": on the fabric, no route to the pool (only its connected /24).
    let internet = t.fabric_host(100);
    let inet_ip = t.fabric_ip(100);
    let (ip1, ip2, h1) = (t.containers[c1].ip, t.containers[c2].ip, t.hosts[0].ip);
    count_sources(&internet, &[h1, ip1]);
    count_sources(&t.containers[c2].ns, &[ip1, h1]);
    let mut p = Vec::new();
    both(&mut p, party(&t, "c1", c1), party(&t, "c2", c2), true);
    check_matrix(&p);

    // Without NAT (the default) the internet host cannot answer a pool address.
    assert_eq!(ping(&t.containers[c1].ns, None, inet_ip, 2, 3), 0);

    // NAT applies from a flow's first packet, so each try is a new ping (a new ICMP
    // id), never one long ping whose flow was set up before the rule.
    t.cli_ok("h1", &["pool", "set", "pool", "--nat-outgoing=true"]);
    let since = Instant::now();
    while ping(&t.containers[c1].ns, None, inet_ip, 1, 2) == 0 {
        assert!(
            since.elapsed() < CONVERGE,
            "c1 does not reach the internet host with NAT on"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "nat-outgoing on: the internet host answers after {:?}",
        since.elapsed()
    );
    // Now every packet arrives from h1's address, none from c1's own.
    let (from_h1, from_c1) = (received_from(&internet, h1), received_from(&internet, ip1));
    assert_eq!(
        ping(&t.containers[c1].ns, None, inet_ip, 3, 4),
        3,
        "c1 -> internet"
    );
    assert!(
        received_from(&internet, h1) >= from_h1 + 3,
        "the internet host sees h1's address"
    );
    assert_eq!(
        received_from(&internet, ip1),
        from_c1,
        "a packet arrived with c1's own address"
    );

    // Between pools nothing is masqueraded: c2 sees c1's own address.
    let before = received_from(&t.containers[c2].ns, ip1);
    assert_eq!(ping(&t.containers[c1].ns, None, ip2, 3, 4), 3, "c1 -> c2");
    let seen = received_from(&t.containers[c2].ns, ip1) - before;
    assert!(seen >= 3, "c2 counted {seen} packets from {ip1}");
    assert_eq!(
        received_from(&t.containers[c2].ns, h1),
        0,
        "c2 saw h1's address"
    );

    // Off again: the internet host is unreachable again (new flows are not NATed).
    t.cli_ok("h1", &["pool", "set", "pool", "--nat-outgoing=false"]);
    let start = Instant::now();
    while ping(&t.containers[c1].ns, None, inet_ip, 1, 2) > 0 {
        assert!(
            start.elapsed() < CONVERGE,
            "NAT still applied after it was turned off"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `brindle node status -o json` inside host `h`: exit success and the document.
fn node_status(t: &Topology, h: usize) -> (bool, Value) {
    let out = t.host_cli(h, &["node", "status", "-o", "json"]);
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "node status printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), doc)
}

/// The `(endpoints, expected)` of `network` in a status document.
fn network_counts(doc: &Value, network: &str) -> Option<(Value, Value)> {
    doc["networks"]
        .as_array()?
        .iter()
        .find(|n| n["network"] == network)
        .map(|n| (n["endpoints"].clone(), n["expected"].clone()))
}

#[test]
fn firewall_node_status_reports_forwarding_and_network_sets() {
    if !can_run("firewall_node_status") {
        return;
    }
    let mut t = two_hosts(ForwardPolicy::Drop);
    t.add_container_on(0, None, "blue", &[]);
    t.add_container_on(0, None, "red", &[]);
    t.add_container_on(1, None, "blue", &[]);
    t.add_container_cni_on(1, None, "web", &[]);

    // brindled catches up with the records within a moment.
    let start = Instant::now();
    let (success, doc) = loop {
        let (success, doc) = node_status(&t, 0);
        if doc["isolation_current"] == true || start.elapsed() > CONVERGE {
            break (success, doc);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(success, "{doc:#}");
    assert_eq!(doc["node"], "h1", "{doc:#}");
    assert_eq!(doc["forwarding_ok"], true, "{doc:#}");
    assert_eq!(doc["ip_forward"], true, "{doc:#}");
    assert_eq!(doc["forward"]["policy"], "DROP", "{doc:#}");
    assert_eq!(doc["forward"]["rules_current"], true, "{doc:#}");
    assert_eq!(doc["isolation_table"], true, "{doc:#}");
    assert_eq!(doc["isolation_current"], true, "{doc:#}");
    // Every network's set counts its members on any host.
    for (network, n) in [("test:blue", 2), ("test:red", 1), ("cni:web", 1)] {
        assert_eq!(
            network_counts(&doc, network),
            Some((n.into(), n.into())),
            "{network}: {doc:#}"
        );
    }

    // brindled stops, then an admin flushes FORWARD: endpoint traffic is dropped.
    t.hosts[0].stop_agent();
    t.hosts[0].ns.ok(&["iptables", "-F", "FORWARD"]);
    let (success, doc) = node_status(&t, 0);
    assert!(
        !success,
        "node status must fail when traffic is dropped: {doc:#}"
    );
    assert_eq!(doc["forwarding_ok"], false, "{doc:#}");
    assert_eq!(doc["forward"]["rules_current"], false, "{doc:#}");
    assert!(
        doc["problems"].to_string().contains("BRINDLE-FORWARD"),
        "{doc:#}"
    );
}

/// Everything of brindle's on host `h` that `node cleanup` must remove.
fn brindle_leftovers(t: &Topology, h: usize) -> Vec<String> {
    let ns = &t.hosts[h].ns;
    let mut left = Vec::new();
    let save = ns.ok(&["iptables-save"]);
    left.extend(
        save.lines()
            .filter(|l| l.contains("BRINDLE"))
            .map(|l| format!("iptables: {l}")),
    );
    let tables = ns.ok(&["nft", "list", "tables"]);
    left.extend(
        tables
            .lines()
            .filter(|l| l.trim() == "table ip brindle")
            .map(|l| format!("nft: {l}")),
    );
    let routes = ns.ok(&["ip", "route", "show", "table", "all", "proto", "98"]);
    left.extend(routes.lines().map(|l| format!("route: {l}")));
    let links = ns.ok(&["ip", "-o", "link", "show"]);
    left.extend(
        links
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .filter(|name| name.starts_with("brl"))
            .map(|name| format!("veth: {name}")),
    );
    left
}

#[test]
fn firewall_node_cleanup_removes_everything_of_brindles_and_refuses_while_it_runs() {
    if !can_run("firewall_node_cleanup") {
        return;
    }
    let mut t = two_hosts(ForwardPolicy::Drop);
    let c1 = t.add_container_on(0, None, "blue", &[]);
    let c2 = t.add_container_cni_on(0, None, "web", &[]);
    let c3 = t.add_container_on(1, None, "blue", &[]);
    let mut p = Vec::new();
    both(&mut p, party(&t, "c1", c1), party(&t, "c3", c3), true);
    both(&mut p, party(&t, "c2", c2), party(&t, "c3", c3), false);
    check_matrix(&p);
    assert!(!brindle_leftovers(&t, 0).is_empty());
    let socket = t.hosts[0].api_socket();
    let socket = socket.to_str().expect("utf-8 path");

    // Refused while brindled runs (it would put everything back), and nothing changed.
    let before = brindle_leftovers(&t, 0);
    let out = t.host_cli(0, &["node", "cleanup", "--api-socket", socket]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "cleanup ran next to brindled");
    assert!(stderr.contains("brindled is running"), "{stderr}");
    assert_eq!(brindle_leftovers(&t, 0), before);

    t.hosts[0].stop_agent();
    let out = t.host_cli(0, &["node", "cleanup", "--api-socket", socket]);
    assert!(
        out.status.success(),
        "node cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("node cleanup:\n{}", String::from_utf8_lossy(&out.stdout));
    let left = brindle_leftovers(&t, 0);
    assert!(left.is_empty(), "left behind:\n{}", left.join("\n"));
    // The host's own firewall is as Docker left it.
    let save = t.hosts[0].ns.ok(&["iptables-save", "-t", "filter"]);
    assert!(save.contains(":FORWARD DROP"), "{save}");
    assert!(save.contains("-A FORWARD -j DOCKER-USER"), "{save}");
    assert!(save.contains("-A DOCKER-USER -j RETURN"), "{save}");

    // Again: nothing to do, still a success.
    let out = t.host_cli(0, &["node", "cleanup", "--api-socket", socket]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing of brindle's left"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A directory of symlinks to `tools` (from the test's PATH), as brindled's PATH.
fn tool_dir(t: &Topology, name: &str, tools: &[&str]) -> std::path::PathBuf {
    let dir = t.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("tool dir");
    let path = std::env::var_os("PATH").unwrap_or_default();
    for tool in tools {
        let found = std::env::split_paths(&path)
            .map(|d| d.join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} is not installed"));
        std::os::unix::fs::symlink(found, dir.join(tool)).expect("symlink");
    }
    dir
}

/// Waits until `h`'s brindled log contains `text`.
fn wait_log(t: &mut Topology, h: usize, text: &str) {
    let start = Instant::now();
    loop {
        let p = t.hosts[h].brindled.as_mut().expect("brindled started");
        assert!(
            p.running(),
            "brindled on h{} exited:\n{}",
            h + 1,
            p.log_text()
        );
        if p.log_text().contains(text) {
            return;
        }
        assert!(
            start.elapsed() < CONVERGE,
            "brindled's log on h{} never says {text:?}:\n{}",
            h + 1,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn firewall_tools_missing_are_named_and_brindled_keeps_serving() {
    if !can_run("firewall_tools_missing") {
        return;
    }
    let mut t = Topology::new(Options::default());
    // h1 has iptables but no nft; h2 has neither. brindled itself runs nothing else
    // from PATH (BIRD's binaries are given by path).
    t.hosts[0].path = Some(tool_dir(
        &t,
        "path-h1",
        &[
            "iptables-nft-save",
            "iptables-nft-restore",
            "iptables-legacy-save",
            "iptables-legacy-restore",
        ],
    ));
    t.hosts[1].path = Some(tool_dir(&t, "path-h2", &[]));
    t.start_agents(true);
    t.wait_mesh();
    wait_log(
        &mut t,
        0,
        "nft not found in PATH (install the Debian package nftables)",
    );
    wait_log(
        &mut t,
        1,
        "not found in PATH (install the Debian package iptables)",
    );

    // Both keep serving: CNI ADD through brindled, routes, BGP.
    let c1 = t.add_container_cni_on(0, None, "web", &[]);
    let c2 = t.add_container_cni_on(1, None, "web", &[]);
    for (h, c) in [(0, c1), (1, c2)] {
        let id = t.containers[c].id.clone();
        wait_log(&mut t, h, &id);
        wait_log(&mut t, h, "cni add: address");
        let ip = t.containers[c].ip;
        ok(Topology::wait_route(
            &t.hosts[h].ns,
            &ip.to_string(),
            None,
            CONVERGE,
        ));
        let route = Topology::route(&t.hosts[h].ns, &ip.to_string()).unwrap();
        assert_eq!(
            route["dev"],
            t.containers[c].host_ifname.as_str(),
            "{route}"
        );
        assert_eq!(route["protocol"], "98", "{route}");
        let other = 1 - h;
        ok(Topology::wait_route(
            &t.hosts[other].ns,
            &Topology::block_of(ip),
            Some(t.hosts[h].ip),
            CONVERGE,
        ));
    }
    // With iptables, h1 still opens FORWARD for its endpoints (no isolation without
    // nft): the router reaches its container.
    let (src, _) = outside_sources(&t, &[c1]);
    let mut p = Vec::new();
    outside(&mut p, &t, src, party(&t, "c1", c1), true);
    check_matrix(&p);
    for h in &mut t.hosts {
        assert!(h.brindled.as_mut().unwrap().running(), "{} exited", h.name);
    }
}

/// `iptables-save -t filter` of one backend (`iptables-nft-save`, `iptables-legacy-save`) on host `h`.
fn filter_of(t: &Topology, h: usize, save: &str) -> String {
    t.hosts[h].ns.ok(&[save, "-t", "filter"])
}

#[test]
fn firewall_uses_the_legacy_backend_on_hosts_whose_rules_are_there() {
    if !can_run("firewall_uses_the_legacy_backend_on_hosts_whose_rules_are_there") {
        return;
    }
    let mut t = Topology::new(Options::default());
    // Host h1 is an older Docker host whose iptables is the legacy backend: its rules
    // (FORWARD DROP, DOCKER-USER) live in the x_tables filter table, the nf_tables one
    // holds nothing.
    let h1 = &t.hosts[0];
    h1.ns.ok(&["iptables-nft", "-P", "FORWARD", "ACCEPT"]);
    h1.ns.ok(&["iptables-nft", "-F"]);
    h1.ns.ok(&["iptables-nft", "-X"]);
    let out = h1.ns.exec_input(
        &["iptables-legacy-restore"],
        ForwardPolicy::Drop.docker_filter(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.start_agents(true);
    t.wait_mesh();
    let c1 = t.add_container_cni(0, None);
    let c2 = t.add_container_cni(1, None);
    let since = Instant::now();
    assert_back_within(&t, "legacy host", c1, c2, since);

    let legacy = filter_of(&t, 0, "iptables-legacy-save");
    assert!(
        legacy.contains("-j BRINDLE-FORWARD") && legacy.contains(":FORWARD DROP"),
        "brindle's jump is not in the legacy FORWARD chain:\n{legacy}"
    );
    let nft = filter_of(&t, 0, "iptables-nft-save");
    assert!(
        !nft.contains("BRINDLE-FORWARD"),
        "brindle wrote into the nf_tables backend the host does not use:\n{nft}"
    );
    // The isolation table is native nftables whatever the iptables backend.
    t.hosts[0]
        .ns
        .ok(&["nft", "list", "chain", "ip", "brindle", "forward"]);
}
