//! `make bench-cni`: CNI ADD+DEL per container, as a runtime sees it (plugin process
//! spawned, stdin written, exit awaited), for brindle through brindled's socket, brindle
//! talking to etcd directly, and the stock ptp + host-local, interleaved in one run with
//! the network namespaces made beforehand. Prints p50/p90 of each and the p50 ratios.
//!
//! usage: bench-cni [CONTAINERS]   (default 200; needs root)
//!
//! Setup, all torn down at the end: a local etcd (fsync on, as in production; run with
//! `TMPDIR=/dev/shm` to see the figures without disk flushes), a brindle pool and the
//! host-local range under one `unreachable` route, one warm allocation per brindle node
//! holding its block (a node running containers has one), brindled for the fast path.
//! The two brindle variants act as two nodes (see [`DIRECT_NODE`]). After each DEL the run waits, untimed, until the host veth is gone, so no
//! measurement overlaps the previous container's teardown.

use std::path::Path;
use std::time::{Duration, Instant};

use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam};
use brindle_tests::cni::{eventually, host_link_exists, Brindle, Brindled, Call, PluginDir};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, Netns, RootIpForward, UnreachableRoute};
use serde_json::{json, Value};

const GUARD: &str = "10.241.128.0/19";
const BRINDLE_POOL: &str = "10.241.128.0/20";
const HOST_LOCAL_SUBNET: &str = "10.241.144.0/20";
const WARMUP: usize = 5;
/// The node brindled serves. The direct variant acts as another node: a node uses one
/// path at a time, and sharing blocks with it would only measure brindled's cache
/// being invalidated by a writer it does not know about.
const FAST_NODE: &str = "bench-node";
const DIRECT_NODE: &str = "bench-direct";

struct Variant {
    name: &'static str,
    plugin: std::path::PathBuf,
    conf: Value,
    /// Host veth name for a container, to wait for its teardown (brindle only).
    host_veth: Option<fn(&str) -> String>,
    add: Vec<Duration>,
    del: Vec<Duration>,
    total: Vec<Duration>,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn veth_of(cid: &str) -> String {
    brindle_tests::cni::host_ifname(cid, "eth0")
}

fn run(v: &mut Variant, cni_path: &Path, ns: &Netns, cid: &str, record: bool) {
    let add = Call::new("ADD", cid, &ns.path(), "eth0").path(cni_path);
    let a = add.run(&v.plugin, &v.conf);
    assert!(a.success, "{} ADD {cid}: {} {}", v.name, a.stdout, a.stderr);
    let mut del_conf = v.conf.clone();
    del_conf["prevResult"] = a.json();
    let d = Call::new("DEL", cid, &ns.path(), "eth0")
        .path(cni_path)
        .run(&v.plugin, &del_conf);
    assert!(d.success, "{} DEL {cid}: {} {}", v.name, d.stdout, d.stderr);
    if record {
        v.add.push(a.elapsed);
        v.del.push(d.elapsed);
        v.total.push(a.elapsed + d.elapsed);
    }
    if let Some(name) = v.host_veth {
        let veth = name(cid);
        assert!(
            eventually(Duration::from_secs(10), || !host_link_exists(&veth)),
            "{}: veth {veth} not removed after DEL",
            v.name
        );
    }
    // Let the container side disappear too before the namespace is used again.
    let gone = eventually(Duration::from_secs(10), || {
        !ns.exec(&["ip", "link", "show", "eth0"]).status.success()
    });
    assert!(gone, "{}: eth0 still in {} after DEL", v.name, ns.name);
}

/// brindle's routes (proto 98) inside the benchmark's range.
fn our_routes() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-4", "route", "show", "proto", "98", "root", GUARD])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("blackhole") => w.next(),
                other => other,
            }
        })
        .map(str::to_string)
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("CONTAINERS must be a number"))
        .unwrap_or(200);
    if !is_root() {
        eprintln!("bench-cni needs root (network namespaces, veths, routes)");
        std::process::exit(2);
    }
    // ptp and brindled turn net.ipv4.ip_forward on: put back as found at the end.
    let _forwarding = RootIpForward::hold();
    let _guard = UnreachableRoute::add(GUARD);
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ipam = rt.block_on(async {
        let store = EtcdStore::connect(&EtcdConfig {
            endpoints: vec![etcd.endpoint.clone()],
            ..EtcdConfig::default()
        })
        .await
        .expect("connect etcd");
        Ipam::new(store, "/brindle")
    });
    rt.block_on(async {
        ipam.add_pool(NewPool {
            name: "bench".into(),
            cidr: BRINDLE_POOL.parse().unwrap(),
            block_size: 26,
            disabled: false,
            reserved: Default::default(),
            nat_outgoing: false,
        })
        .await
        .expect("add pool");
        for node in [FAST_NODE, DIRECT_NODE] {
            ipam.allocate(&AllocRequest {
                handle: format!("bench-warm-{node}"),
                node: node.into(),
                pool: Some("bench".into()),
                ..Default::default()
            })
            .await
            .expect("warm allocation");
        }
    });
    let daemon = Brindled::start(&etcd.endpoint, FAST_NODE);
    let plugins = PluginDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let brindle = |node: &str, api_socket: String| Brindle {
        etcd: etcd.endpoint.clone(),
        node: node.into(),
        api_socket,
        pool: Some("bench".into()),
    };
    let mut variants = vec![
        Variant {
            name: "ptp + host-local",
            plugin: plugins.plugin("ptp"),
            conf: json!({
                "cniVersion": "1.0.0",
                "name": "benchptp",
                "type": "ptp",
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "subnet": HOST_LOCAL_SUBNET,
                    "dataDir": data.path().join("host-local"),
                },
            }),
            host_veth: None,
            add: vec![],
            del: vec![],
            total: vec![],
        },
        Variant {
            name: "brindle via brindled",
            plugin: plugins.plugin("brindle"),
            conf: brindle(FAST_NODE, daemon.api_socket.display().to_string())
                .main_conf("1.0.0", "benchfast"),
            host_veth: Some(veth_of),
            add: vec![],
            del: vec![],
            total: vec![],
        },
        Variant {
            name: "brindle direct (etcd)",
            plugin: plugins.plugin("brindle"),
            conf: brindle(DIRECT_NODE, "none".into()).main_conf("1.0.0", "benchdirect"),
            host_veth: Some(veth_of),
            add: vec![],
            del: vec![],
            total: vec![],
        },
    ];
    eprintln!("bench-cni: making {n} network namespaces");
    let namespaces: Vec<Netns> = (0..n.max(WARMUP)).map(|_| Netns::new("bcni")).collect();
    eprintln!("bench-cni: {WARMUP} warm-up rounds, then {n} containers per variant");
    let start = Instant::now();
    for i in 0..WARMUP + n {
        let ns = &namespaces[i % namespaces.len()];
        let record = i >= WARMUP;
        for (k, v) in variants.iter_mut().enumerate() {
            let cid = format!("bench{k}c{i}");
            run(v, plugins.path(), ns, &cid, record);
        }
    }
    let wall = start.elapsed();
    // Release the warm allocation: the block goes, and brindled's agent removes the
    // blackhole it programmed for it; then sweep whatever is left in our range.
    for node in [FAST_NODE, DIRECT_NODE] {
        rt.block_on(ipam.release_handle(&format!("bench-warm-{node}")))
            .expect("release warm allocation");
    }
    eventually(Duration::from_secs(5), || our_routes().is_empty());
    drop(daemon);
    for r in our_routes() {
        let _ = std::process::Command::new("ip")
            .args(["route", "del", "blackhole", &r, "proto", "98"])
            .status();
    }

    println!(
        "CNI ADD+DEL per container, {n} containers per variant (interleaved), {} wall",
        ms(wall)
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "variant", "ADD p50", "DEL p50", "ADD+DEL", "p90", "ratio"
    );
    let base = pct(&variants[0].total, 0.5);
    for v in &variants {
        let p50 = pct(&v.total, 0.5);
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10.3}",
            v.name,
            ms(pct(&v.add, 0.5)),
            ms(pct(&v.del, 0.5)),
            ms(p50),
            ms(pct(&v.total, 0.9)),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!("goal: brindle ADD+DEL p50 at most 0.2 x ptp + host-local");
}
