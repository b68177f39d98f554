//! End-to-end BGP routing with real BIRD 2, brindled and etcd, hosts and a router as
//! network namespaces on a bridged fabric (see `brindle_tests::topology`).
//!
//! Needs root; without it every test prints a note and passes. A missing BIRD fails
//! the tests. Traffic only flows between the namespaces the tests create; every test
//! pool has an `unreachable` route in the root namespace.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use brindle_tests::bird::{bird_bin, Bird};
use brindle_tests::netns::is_root;
use brindle_tests::topology::{link_kinds, ping_from, Options, Proc, Topology};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(10);

fn can_run(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (network namespaces, BIRD)");
        return false;
    }
    // Fails (not skips) when BIRD is missing.
    bird_bin();
    true
}

fn ok<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn block(ip: Ipv4Addr) -> String {
    Topology::block_of(ip)
}

/// An address `offset` into the block holding `ip`.
fn in_block(ip: Ipv4Addr, offset: u32) -> Ipv4Addr {
    let b: Ipv4Addr = block(ip).split('/').next().unwrap().parse().unwrap();
    Ipv4Addr::from(u32::from(b) + offset)
}

/// `iperf3` from container `from` to container `to`: the server's JSON report, whose
/// `start.connected[0].remote_host` is the address the server saw.
fn iperf3(t: &Topology, from: usize, to: usize) -> Value {
    let server_ns = &t.containers[to].ns;
    let mut server = Command::new("ip");
    server.args([
        "netns",
        "exec",
        &server_ns.name,
        "iperf3",
        "-s",
        "-1",
        "-J",
        "-p",
        "5201",
    ]);
    let log = t.dir.path().join(format!("iperf3-{from}-{to}.json"));
    let mut proc = Proc::spawn("iperf3 server", server, &log);
    // Connect only once it listens: an early attempt can leave the one-off server
    // (-1) stuck on a half-open control connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server_ns
        .ok(&["ss", "-Hltn", "sport", "=", ":5201"])
        .contains("5201")
    {
        assert!(Instant::now() < deadline, "iperf3 server did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = t.containers[from].ns.exec(&[
        "iperf3",
        "-c",
        &t.containers[to].ip.to_string(),
        "-p",
        "5201",
        "-t",
        "1",
        "-J",
    ]);
    assert!(
        out.status.success(),
        "iperf3 client failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc.running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    proc.stop();
    let text = proc.log_text();
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("iperf3 server output is no JSON ({e}): {text:?}"))
}

#[test]
fn bgp_two_hosts_route_containers_directly_with_borrowed_addresses_and_withdrawals() {
    if !can_run("bgp_two_hosts_route_containers_directly") {
        return;
    }
    let mut t = Topology::new(Options::default());
    t.start_agents(true);
    t.wait_mesh();
    let (h1, h2) = (t.hosts[0].ip, t.hosts[1].ip);

    // Containers placed by brindle-cni in each host's namespace.
    let c1 = t.add_container_cni(0, None);
    let c2 = t.add_container_cni(1, None);
    let (ip1, ip2) = (t.containers[c1].ip, t.containers[c2].ip);
    let (b1, b2) = (block(ip1), block(ip2));
    assert_ne!(b1, b2, "each host claims its own block");

    // Each host: its own block as a blackhole (brindle's protocol 98), its
    // container's /32 to the veth, the other host's block via that host.
    let h1ns = &t.hosts[0].ns;
    let h2ns = &t.hosts[1].ns;
    ok(Topology::wait_route(h2ns, &b1, Some(h1), CONVERGE));
    ok(Topology::wait_route(h1ns, &b2, Some(h2), CONVERGE));
    ok(Topology::wait_route(h1ns, &ip1.to_string(), None, CONVERGE));
    let own = Topology::route(h1ns, &b1).expect("own block route");
    assert_eq!(own["type"], "blackhole", "{own}");
    assert_eq!(own["protocol"], "98", "{own}");
    let ep = Topology::route(h1ns, &ip1.to_string()).unwrap();
    assert_eq!(ep["dev"], t.containers[c1].host_ifname.as_str(), "{ep}");
    assert_eq!(ep["protocol"], "98", "{ep}");
    let learned = Topology::route(h1ns, &b2).unwrap();
    assert_eq!(learned["dev"], "eth0", "{learned}");
    assert_eq!(learned["protocol"], "bird", "{learned}");
    assert!(
        Topology::route(h2ns, &ip1.to_string()).is_none(),
        "the /32s inside a block stay on their host"
    );
    let fwd = h1ns.ok(&["sysctl", "-n", "net.ipv4.ip_forward"]);
    assert_eq!(fwd.trim(), "1");

    // Containers reach each other by their own addresses.
    assert!(t.ping(c1, ip2, 3) > 0, "c1 -> c2");
    assert!(t.ping(c2, ip1, 3) > 0, "c2 -> c1");
    let report = iperf3(&t, c1, c2);
    assert_eq!(
        report["start"]["connected"][0]["remote_host"].as_str(),
        Some(ip1.to_string().as_str()),
        "c2 sees c1's own address (no NAT): {report}"
    );
    // No tunnel device and no NAT anywhere on the path.
    for h in &t.hosts {
        for (name, kind) in link_kinds(&h.ns) {
            assert!(
                matches!(kind.as_str(), "" | "veth"),
                "{}: unexpected {kind} interface {name}",
                h.name
            );
        }
        // brindle's own table is there for isolation; it masquerades nothing unless a
        // pool asks for outgoing NAT, and no other NAT rule exists.
        let nft =
            h.ns.exec(&["nft", "-j", "list", "set", "ip", "brindle", "nat_pools"]);
        let nat_pools: serde_json::Value = serde_json::from_slice(&nft.stdout).unwrap_or_default();
        assert!(
            nat_pools["nftables"][1]["set"].get("elem").is_none(),
            "{}: a pool has outgoing NAT: {nat_pools}",
            h.name
        );
        let nat = h.ns.exec(&["iptables-save", "-t", "nat"]);
        assert!(
            !String::from_utf8_lossy(&nat.stdout).contains("MASQUERADE"),
            "{}: an iptables NAT rule is present",
            h.name
        );
    }

    // A borrowed address: c3 runs on h2 with an address from h1's block; it is
    // routed as a /32 towards h2 everywhere, beating h1's blackhole.
    let borrowed = in_block(ip1, 40);
    let c3 = t.add_container_cni(1, Some(borrowed));
    ok(Topology::wait_route(
        &t.hosts[0].ns,
        &borrowed.to_string(),
        Some(h2),
        CONVERGE,
    ));
    assert!(t.ping(c1, borrowed, 3) > 0, "c1 -> borrowed c3");
    assert!(t.ping(c3, ip1, 3) > 0, "borrowed c3 -> c1");
    let conf = std::fs::read_to_string(t.hosts[1].bird_config()).unwrap();
    assert!(
        conf.contains(&format!("if net = {borrowed}/32 then accept;")),
        "{conf}"
    );

    // `brindle bgp render` prints what brindled installed.
    let rendered = t.cli_ok("h2", &["bgp", "render", "--node", "h2", "--check"]);
    assert_eq!(rendered, conf);

    // Removing a node's blocks withdraws them: c2 goes, its block is released.
    t.remove_container(c2);
    ok(Topology::wait_no_route(&t.hosts[0].ns, &b2, CONVERGE));
    assert!(
        Topology::route(&t.hosts[1].ns, &b2).is_none(),
        "h2 dropped the blackhole of the released block"
    );

    // Removing the node withdraws everything it announced (the borrowed /32).
    t.cli_ok("h1", &["node", "rm", "h2"]);
    ok(Topology::wait_no_route(
        &t.hosts[0].ns,
        &borrowed.to_string(),
        CONVERGE,
    ));
    let conf1 = std::fs::read_to_string(t.hosts[0].bird_config()).unwrap();
    assert!(!conf1.contains("Mesh_"), "{conf1}");
}

/// The nodes peer with a router (mesh off): the router learns every block (not the
/// /32s inside them) and reflects them, so hosts still reach each other directly.
#[test]
fn bgp_router_peering_with_nodes_learns_the_blocks() {
    if !can_run("bgp_router_peering_with_nodes_learns_the_blocks") {
        return;
    }
    let mut t = Topology::new(Options::default());
    let rip = t.router.ip.to_string();
    t.cli_ok("h1", &["bgp", "set", "--mesh", "off"]);
    t.cli_ok(
        "h1",
        &[
            "bgp",
            "peer",
            "add",
            "tor",
            "--peer-ip",
            &rip,
            "--as",
            "64512",
        ],
    );
    t.start_agents(true);
    let c1 = t.add_container(0, None);
    let c2 = t.add_container(1, None);
    let (ip1, ip2) = (t.containers[c1].ip, t.containers[c2].ip);

    let router_conf = format!(
        "router id {rip};\nprotocol device {{ scan time 2; }}\n\
         protocol direct {{ ipv4; interface \"fab0\"; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\n{}",
        t.cli_ok("h1", &["bgp", "router-config", "--format", "bird"])
    );
    let rdir = t.dir.path().join("router");
    std::fs::create_dir_all(&rdir).unwrap();
    let conf = rdir.join("bird.conf");
    std::fs::write(&conf, router_conf).unwrap();
    t.router.bird = Some(Bird::start(&t.router.ns, &conf, &rdir));
    for h in 0..2 {
        let proto = format!("Brindle_{}", t.hosts[h].ip.to_string().replace('.', "_"));
        ok(t.router
            .bird
            .as_ref()
            .unwrap()
            .wait_established(&proto, Duration::from_secs(30)));
        t.wait_session(h, &format!("Global_{}", rip.replace('.', "_")));
    }
    let (h1, h2) = (t.hosts[0].ip, t.hosts[1].ip);
    ok(Topology::wait_route(
        &t.router.ns,
        &block(ip1),
        Some(h1),
        CONVERGE,
    ));
    ok(Topology::wait_route(
        &t.router.ns,
        &block(ip2),
        Some(h2),
        CONVERGE,
    ));
    assert!(Topology::route(&t.router.ns, &ip1.to_string()).is_none());
    // Reflected with the originating host as next hop: host to host stays direct.
    ok(Topology::wait_route(
        &t.hosts[0].ns,
        &block(ip2),
        Some(h2),
        CONVERGE,
    ));
    ok(Topology::wait_route(
        &t.hosts[1].ns,
        &block(ip1),
        Some(h1),
        CONVERGE,
    ));
    assert!(t.ping(c1, ip2, 3) > 0, "c1 -> c2 via reflected routes");
    assert!(ping_from(&t.router.ns, ip1, 3) > 0, "router -> c1");

    // Releasing a block withdraws it from the router.
    t.remove_container(c1);
    ok(Topology::wait_no_route(&t.router.ns, &block(ip1), CONVERGE));
}

/// A router without BGP reaches every container once the output of
/// `brindle routes --format iproute2` is applied; brindled runs without BIRD.
#[test]
fn bgp_static_routes_let_a_router_without_bgp_reach_containers() {
    if !can_run("bgp_static_routes_let_a_router_without_bgp_reach_containers") {
        return;
    }
    let mut t = Topology::new(Options::default());
    t.start_agents(false);
    let c1 = t.add_container(0, None);
    let c2 = t.add_container(1, None);
    let ip1 = t.containers[c1].ip;
    let borrowed = in_block(ip1, 33);
    let c3 = t.add_container(1, Some(borrowed));
    // brindled without --bird-config still programs the block's blackhole and the
    // endpoint /32s, and writes no BIRD config.
    ok(Topology::wait_route(
        &t.hosts[0].ns,
        &block(ip1),
        None,
        CONVERGE,
    ));
    ok(Topology::wait_route(
        &t.hosts[1].ns,
        &borrowed.to_string(),
        None,
        CONVERGE,
    ));
    assert!(!t.hosts[0].bird_config().exists());

    let out = t.cli("h1", &["routes", "--format", "iproute2"]);
    assert!(out.status.success());
    let script = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        script.contains(&format!(
            "ip route add {} via {}",
            block(ip1),
            t.hosts[0].ip
        )),
        "{script}"
    );
    assert!(
        script.contains(&format!("ip route add {borrowed}/32 via {}", t.hosts[1].ip)),
        "{script}"
    );
    let file = t.dir.path().join("routes.sh");
    std::fs::write(&file, &script).unwrap();
    t.router.ns.ok(&["sh", "-e", file.to_str().unwrap()]);
    for c in [c1, c2, c3] {
        let ip = t.containers[c].ip;
        assert!(ping_from(&t.router.ns, ip, 3) > 0, "router -> {ip}");
    }
}
