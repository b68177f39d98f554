//! `brindle node|bgp|routes` against a real etcd (no root needed; `bgp render --check`
//! needs BIRD and fails without it).

use std::process::{Command, Output};

use brindle_tests::bins::brindle;
use brindle_tests::bird::bird_bin;
use brindle_tests::etcd::Etcd;
use serde_json::Value;

fn cli(etcd: &Etcd, args: &[&str]) -> Command {
    // BRINDLE_NODE is set on purpose: it must not turn a global peer into a node's.
    let mut c = brindle(&etcd.endpoint, "env-node");
    c.args(args);
    c
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run brindle")
}

fn ok(etcd: &Etcd, args: &[&str]) -> String {
    let out = run(&mut cli(etcd, args));
    assert!(
        out.status.success(),
        "brindle {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(etcd: &Etcd, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(etcd, &all)).expect("valid JSON")
}

/// Fails with one line on stderr containing every needle, nothing on stdout.
fn fails(etcd: &Etcd, args: &[&str], needles: &[&str]) {
    let out = run(&mut cli(etcd, args));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "brindle {args:?} should fail");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    assert!(out.stdout.is_empty());
}

#[test]
fn node_set_list_rm() {
    let etcd = Etcd::start();
    fails(&etcd, &["node", "set", "a"], &["node \"a\"", "--ip"]);
    let v = json(&etcd, &["node", "set", "a", "--ip", "10.0.0.1"]);
    assert_eq!(
        v["node"],
        serde_json::json!({"name": "a", "ip": "10.0.0.1"})
    );
    assert_eq!(v["created"], true);
    ok(
        &etcd,
        &["node", "set", "b", "--ip", "10.0.0.2", "--as", "65002"],
    );
    ok(&etcd, &["node", "set", "a", "--rr-cluster-id", "1.1.1.1"]);
    fails(
        &etcd,
        &["node", "set", "c", "--ip", "10.0.0.1"],
        &["10.0.0.1", "node \"a\""],
    );
    fails(
        &etcd,
        &["node", "set", "c", "--ip", "10.0.0.3", "--as", "0"],
        &["AS"],
    );
    fails(
        &etcd,
        &["node", "set", "c", "--ip", "0.0.0.0"],
        &["0.0.0.0"],
    );
    // Blocks show up per node.
    ok(&etcd, &["pool", "add", "p", "--cidr", "10.50.0.0/16"]);
    ok(&etcd, &["--node", "a", "ipam", "alloc", "--handle", "x"]);
    let nodes = json(&etcd, &["node", "list"]);
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "a");
    assert_eq!(list[0]["as"], 64512);
    assert_eq!(list[0]["own_as"], false);
    assert_eq!(list[0]["rr_cluster_id"], "1.1.1.1");
    assert_eq!(list[0]["blocks"].as_array().unwrap().len(), 1);
    assert_eq!(list[1]["as"], 65002);
    let table = ok(&etcd, &["node", "list"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.contains("64512 (global)"), "{table}");
    ok(&etcd, &["node", "set", "b", "--clear-as"]);
    assert_eq!(json(&etcd, &["node", "list"])["nodes"][1]["as"], 64512);
    ok(&etcd, &["node", "rm", "b"]);
    fails(&etcd, &["node", "rm", "b"], &["node \"b\" does not exist"]);
}

#[test]
fn bgp_settings_and_peers() {
    let etcd = Etcd::start();
    let g = json(&etcd, &["bgp", "show"]);
    assert_eq!(g["as_num"], 64512);
    assert_eq!(g["node_mesh"], true);
    let g = json(
        &etcd,
        &[
            "bgp",
            "set",
            "--as",
            "65000",
            "--mesh",
            "off",
            "--mesh-password",
            "s3cret",
            "--error-wait",
            "1,5",
        ],
    );
    assert_eq!(g["as_num"], 65000);
    assert_eq!(g["node_mesh"], false);
    assert_eq!(g["has_mesh_password"], true);
    assert!(g.get("mesh_password").is_none(), "password never printed");
    assert_eq!(g["timers"]["error_wait_min"], 1);
    fails(
        &etcd,
        &["bgp", "set", "--as", "x"],
        &["invalid AS number \"x\""],
    );
    fails(&etcd, &["bgp", "set", "--hold", "2"], &["timers.hold"]);
    fails(
        &etcd,
        &["bgp", "set", "--mesh-password", "a\"b"],
        &["password", "'\"'"],
    );
    // From a file: only the path is on the command line.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh-password");
    std::fs::write(&file, "fr0m-f1le\n").unwrap();
    let path = file.to_str().unwrap();
    let g = json(&etcd, &["bgp", "set", "--clear-mesh-password"]);
    assert_eq!(g["has_mesh_password"], false);
    let g = json(&etcd, &["bgp", "set", "--mesh-password-file", path]);
    assert_eq!(g["has_mesh_password"], true);
    fails(
        &etcd,
        &["bgp", "set", "--mesh-password-file", "/nonexistent/pw"],
        &["/nonexistent/pw"],
    );
    // asdot accepted
    assert_eq!(
        json(&etcd, &["bgp", "set", "--as", "1.10"])["as_num"],
        65546
    );

    ok(
        &etcd,
        &[
            "bgp",
            "peer",
            "add",
            "tor",
            "--peer-ip",
            "10.0.0.254",
            "--as",
            "65000",
        ],
    );
    ok(
        &etcd,
        &[
            "bgp",
            "peer",
            "add",
            "rack1",
            "--peer-ip",
            "10.0.1.254",
            "--as",
            "65001",
            "--node",
            "a",
            "--password",
            "pw",
        ],
    );
    fails(
        &etcd,
        &[
            "bgp",
            "peer",
            "add",
            "tor",
            "--peer-ip",
            "10.0.0.9",
            "--as",
            "65000",
        ],
        &["BGP peer \"tor\" already exists"],
    );
    fails(
        &etcd,
        &[
            "bgp",
            "peer",
            "add",
            "tor2",
            "--peer-ip",
            "10.0.0.254",
            "--as",
            "65000",
        ],
        &["10.0.0.254", "used twice"],
    );
    fails(
        &etcd,
        &[
            "bgp",
            "peer",
            "add",
            "bad name",
            "--peer-ip",
            "10.0.0.8",
            "--as",
            "65000",
        ],
        &["invalid BGP peer name"],
    );
    let peers = json(&etcd, &["bgp", "peer", "list"]);
    let list = peers["peers"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    let rack = &list[0];
    assert_eq!(rack["name"], "rack1");
    assert_eq!(rack["node"], "a");
    assert_eq!(rack["has_password"], true);
    assert!(rack.get("password").is_none());
    let tor = &list[1];
    assert_eq!(
        tor["node"],
        Value::Null,
        "BRINDLE_NODE does not scope a peer; only --node does"
    );
    assert!(!ok(&etcd, &["bgp", "peer", "list"]).contains("pw"));
    ok(&etcd, &["bgp", "peer", "rm", "tor"]);
    fails(
        &etcd,
        &["bgp", "peer", "rm", "tor"],
        &["BGP peer \"tor\" does not exist"],
    );
}

#[test]
fn render_routes_and_router_config() {
    let etcd = Etcd::start();
    ok(&etcd, &["pool", "add", "p", "--cidr", "10.60.0.0/16"]);
    ok(&etcd, &["node", "set", "a", "--ip", "192.0.2.11"]);
    ok(&etcd, &["node", "set", "b", "--ip", "192.0.2.12"]);
    let a = json(&etcd, &["--node", "a", "ipam", "alloc", "--handle", "x1"]);
    let b = json(&etcd, &["--node", "b", "ipam", "alloc", "--handle", "x2"]);
    let (block_a, block_b) = (a["block"].as_str().unwrap(), b["block"].as_str().unwrap());
    // b holds an address from a's block: borrowed.
    let base: std::net::Ipv4Addr = block_a.split('/').next().unwrap().parse().unwrap();
    let borrowed = std::net::Ipv4Addr::from(u32::from(base) + 9).to_string();
    ok(
        &etcd,
        &[
            "--node", "b", "ipam", "alloc", "--handle", "x3", "--ip", &borrowed,
        ],
    );
    // A block of a node without a record: a warning, no route.
    let g = json(
        &etcd,
        &["--node", "ghost", "ipam", "alloc", "--handle", "x4"],
    );
    let block_g = g["block"].as_str().unwrap();

    let out = run(&mut cli(&etcd, &["routes"]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort();
    let mut want = vec![
        format!("ip route add {block_a} via 192.0.2.11"),
        format!("ip route add {borrowed}/32 via 192.0.2.12"),
        format!("ip route add {block_b} via 192.0.2.12"),
    ];
    want.sort();
    assert_eq!(lines, want);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        format!("brindle: warning: block {block_g} belongs to node \"ghost\", which has no IP (set one with `brindle node set ghost --ip ADDR`): no route printed for it")
    );
    let frr = ok(&etcd, &["routes", "--format", "frr"]);
    assert!(
        frr.contains(&format!("ip route {block_a} 192.0.2.11\n")),
        "{frr}"
    );
    let ios = ok(&etcd, &["routes", "--format", "ios"]);
    assert!(
        ios.contains(&format!("ip route {borrowed} 255.255.255.255 192.0.2.12")),
        "{ios}"
    );
    let junos = ok(&etcd, &["routes", "--format", "junos"]);
    assert!(junos.contains(&format!(
        "set routing-options static route {block_b} next-hop 192.0.2.12"
    )));
    let bird = ok(&etcd, &["routes", "--format", "bird"]);
    assert!(
        bird.starts_with("protocol static brindle_routes {"),
        "{bird}"
    );
    let j: Value = serde_json::from_str(&ok(&etcd, &["routes", "-o", "json"])).unwrap();
    let kinds: Vec<&str> = j
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "borrowed").count(), 1, "{j}");
    let br = j
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "borrowed")
        .unwrap();
    assert_eq!(br["node"], "b");
    assert_eq!(br["cidr"], format!("{borrowed}/32"));
    fails(&etcd, &["routes", "--format", "cisco"], &["cisco"]);

    // The rendered config of b announces its block and the borrowed /32; BIRD parses it.
    let conf = ok(&etcd, &["--node", "b", "bgp", "render", "--check"]);
    assert!(conf.contains("router id 192.0.2.12;"), "{conf}");
    assert!(
        conf.contains(&format!("if net = {block_b} then accept;")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("if net = {borrowed}/32 then accept;")),
        "{conf}"
    );
    assert!(conf.contains("protocol bgp Mesh_192_0_2_11"), "{conf}");
    let _ = bird_bin();
    fails(
        &etcd,
        &["--node", "nobody", "bgp", "render"],
        &["node \"nobody\" does not exist"],
    );

    let frr = ok(
        &etcd,
        &["bgp", "router-config", "--format", "frr", "--as", "65000"],
    );
    assert!(frr.contains("router bgp 65000"), "{frr}");
    assert!(
        frr.contains(" neighbor 192.0.2.11 remote-as 64512"),
        "{frr}"
    );
    let bird = ok(&etcd, &["bgp", "router-config", "--format", "bird"]);
    assert!(bird.contains("neighbor 192.0.2.12 as 64512;"), "{bird}");
    assert!(bird.contains("rr client;"), "{bird}");
}
