//! brindled's agent on one host namespace with a real BIRD: it registers its node,
//! follows etcd with the watch API and re-renders within a second of any change to
//! nodes, peers, pools or blocks, retries the reload while BIRD is not up, keeps
//! endpoint routes, and reports it all on /metrics.
//!
//! Needs root; without it the test prints a note and passes. A missing BIRD fails it.

use std::time::{Duration, Instant};

use brindle_tests::bird::{bird_bin, Bird};
use brindle_tests::netns::is_root;
use brindle_tests::ports::free_port;
use brindle_tests::topology::{Options, Topology};

/// The requirement: a change is in BIRD's config within a second.
const WITHIN: Duration = Duration::from_secs(1);

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until the host's BIRD config satisfies `cond`; how long it took.
fn config_change(t: &Topology, what: &str, cond: impl Fn(&str) -> bool) -> Duration {
    let path = t.hosts[0].bird_config();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if cond(&text) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not in the BIRD config after 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn metrics(t: &Topology, port: u16) -> String {
    let out = t.hosts[0].ns.exec(&[
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &format!("http://127.0.0.1:{port}/metrics"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

#[test]
fn bgp_agent_follows_etcd_within_a_second_and_retries_until_bird_is_up() {
    if !is_root() {
        eprintln!("skipping bgp_agent: needs root (network namespaces, BIRD)");
        return;
    }
    bird_bin();
    let mut t = Topology::new(Options {
        hosts: 1,
        fast_timers: true,
        ..Options::default()
    });
    let port = free_port();
    t.start_agent_with(
        0,
        true,
        false,
        &["--metrics-addr", &format!("127.0.0.1:{port}")],
    );

    // Registration: the node record, with --node-ip.
    let me = t.hosts[0].ip.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !t.cli_ok("h1", &["node", "list"]).contains(&me) {
        assert!(Instant::now() < deadline, "h1 never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = config_change(&t, "router id", |c| c.contains(&format!("router id {me};")));
    eprintln!("first config after {d:?}");

    // BIRD is not running: brindled keeps trying to reload.
    std::thread::sleep(Duration::from_millis(2500));
    let m = metrics(&t, port);
    assert!(
        metric(&m, "brindle_bird_reload_failures_total") >= 2.0,
        "{m}"
    );
    assert_eq!(metric(&m, "brindle_bird_config_pending"), 1.0, "{m}");
    assert_eq!(metric(&m, "brindle_node_registered"), 1.0, "{m}");

    // A change while BIRD is down still lands in the file...
    t.cli_ok("h1", &["node", "set", "h9", "--ip", "192.0.2.99"]);
    config_change(&t, "node h9 while BIRD is down", |c| {
        c.contains("protocol bgp Mesh_192_0_2_99")
    });
    // ...and once BIRD is up, the pending reload succeeds.
    let conf = t.hosts[0].bird_config();
    let dir = t.hosts[0].dir.clone();
    t.hosts[0].bird = Some(Bird::start(&t.hosts[0].ns, &conf, &dir));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics(&t, port);
        if metric(&m, "brindle_bird_reloads_total") >= 1.0
            && metric(&m, "brindle_bird_config_pending") == 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no successful reload:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let protocols = t.hosts[0].bird.as_ref().unwrap().protocols();
    assert!(protocols.contains("Mesh_192_0_2_99"), "{protocols}");

    // Each kind of change reaches BIRD's config within a second (watch, not polling).
    let mut timings = Vec::new();
    let start = Instant::now();
    t.cli_ok("h1", &["node", "set", "h8", "--ip", "192.0.2.98"]);
    config_change(&t, "node h8", |c| c.contains("Mesh_192_0_2_98"));
    timings.push(("node added", start.elapsed()));
    let start = Instant::now();
    t.cli_ok(
        "h1",
        &[
            "bgp",
            "peer",
            "add",
            "tor",
            "--peer-ip",
            "192.0.2.254",
            "--as",
            "65000",
        ],
    );
    config_change(&t, "peer tor", |c| c.contains("Global_192_0_2_254"));
    timings.push(("peer added", start.elapsed()));
    let start = Instant::now();
    t.cli_ok(
        "h1",
        &["pool", "add", "second", "--cidr", "172.31.240.0/24"],
    );
    config_change(&t, "pool second", |c| c.contains("172.31.240.0/24"));
    timings.push(("pool added", start.elapsed()));
    let start = Instant::now();
    let v: serde_json::Value = serde_json::from_str(&t.cli_ok(
        "h1",
        &[
            "ipam", "alloc", "--handle", "b1", "--pool", "pool", "-o", "json",
        ],
    ))
    .unwrap();
    let block = v["block"].as_str().unwrap().to_string();
    config_change(&t, "own block", |c| {
        c.contains(&format!("if net = {block} then accept;"))
    });
    timings.push(("block claimed", start.elapsed()));
    let start = Instant::now();
    t.cli_ok("h1", &["node", "rm", "h8"]);
    config_change(&t, "node h8 removed", |c| !c.contains("Mesh_192_0_2_98"));
    timings.push(("node removed", start.elapsed()));
    let start = Instant::now();
    t.cli_ok("h1", &["bgp", "peer", "rm", "tor"]);
    config_change(&t, "peer tor removed", |c| {
        !c.contains("Global_192_0_2_254")
    });
    timings.push(("peer removed", start.elapsed()));
    let start = Instant::now();
    t.cli_ok("h1", &["ipam", "release", "--handle", "b1"]);
    config_change(&t, "block released", |c| {
        !c.contains(&format!("if net = {block} then accept;"))
    });
    timings.push(("block released", start.elapsed()));
    eprintln!("change -> BIRD config (including the CLI run): {timings:?}");
    for (what, d) in &timings {
        assert!(*d < WITHIN, "{what}: {d:?} (want < {WITHIN:?})");
    }
    // BIRD runs what the file says: the last reload came after the last change.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = t.hosts[0].bird.as_ref().unwrap().protocols();
        if !p.contains("Global_192_0_2_254") && !p.contains("Mesh_192_0_2_98") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "BIRD kept removed sessions:\n{p}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The kernel side: blackhole of a claimed block, removed on release; an endpoint
    // route someone deleted comes back (periodic resync).
    let c = t.add_container(0, None);
    let ip = t.containers[c].ip;
    ok(Topology::wait_route(
        &t.hosts[0].ns,
        &ip.to_string(),
        None,
        Duration::from_secs(5),
    ));
    ok(Topology::wait_route(
        &t.hosts[0].ns,
        &Topology::block_of(ip),
        None,
        Duration::from_secs(5),
    ));
    t.hosts[0]
        .ns
        .ok(&["ip", "route", "del", &format!("{ip}/32")]);
    let back = ok(Topology::wait_route(
        &t.hosts[0].ns,
        &ip.to_string(),
        None,
        Duration::from_secs(15),
    ));
    eprintln!("deleted endpoint route restored after {back:?}");
    let m = metrics(&t, port);
    assert_eq!(metric(&m, "brindle_agent_blackhole_routes"), 1.0, "{m}");
    assert_eq!(metric(&m, "brindle_agent_endpoint_routes"), 1.0, "{m}");
    assert!(metric(&m, "brindle_agent_watch_events_total") > 5.0, "{m}");
}
