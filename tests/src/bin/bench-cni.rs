//! `make bench-cni`: CNI ADD+DEL per container, as a runtime sees it (plugin process
//! spawned, stdin written, exit awaited), for brindle through brindled's socket, brindle
//! talking to etcd directly, and the stock ptp + host-local, interleaved in one run with
//! the network namespaces made beforehand. Prints p50/p90/p99 of each, the p50 ratios
//! and, for brindle, the goal p99 <= 3 x p50.
//!
//! Then, for brindle's calls of that phase, the medians of each step: the plugin's own
//! account (`BRINDLE_TIMINGS=1`: parse, operation, total; the rest of the wall time is
//! process start-up and exit) and, through brindled, brindled's log line of the call
//! (allocate + wire for ADD, unwire + release for DEL, and for a DEL through brindled
//! the release it commits after answering), matched by handle.
//!
//! In the same rounds, the floor of any plugin that keeps its addresses in etcd, on
//! this machine: two processes that read the configuration and exit (`cat`, spawned as
//! the plugins are), one per ADD and DEL, and one durable etcd put of an endpoint's
//! size, the least an ADD must wait for before it answers. Their p50s add up to the
//! floor, printed with its ratio to ptp + host-local.
//!
//! Then a burst phase per variant: `--burst N` ADDs at once (default 200; one plugin
//! process per container, each with its own namespace made beforehand), then the N DELs
//! at once. Prints the wall time of each burst, the failed calls (with the CNI error's
//! message) and what the burst left behind (eth0 in a namespace, host veths, host-local
//! files, brindle's allocations, handles and endpoint records); goal: brindle's ADD
//! burst no slower than ptp + host-local's. A failed call or a leftover makes the
//! benchmark exit 1 after printing its figures.
//!
//! usage: bench-cni [CONTAINERS] [--burst N]   (defaults 200 and 200, `--burst 0` skips
//! the burst phase; needs root)
//!
//! Setup, all torn down at the end: a local etcd (fsync on, as in production; run with
//! `TMPDIR=/dev/shm` to see the figures without disk flushes), a brindle pool and the
//! host-local range under one `unreachable` route, one warm allocation per brindle node
//! holding its block (a node running containers has one), brindled for the fast path.
//! The two brindle variants act as two nodes (see [`DIRECT_NODE`]). After each DEL the run waits, untimed, until the host veth is gone, so no
//! measurement overlaps the previous container's teardown.

use brindle_tests::benchfmt::{met, print_failures};
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam, Keys};
use brindle_plugin::cni::{ops::handle_for, TIMINGS_ENV};
use brindle_tests::cni::{
    eventually, host_link_exists, ip_json, Brindle, Brindled, Call, CniOutput, PluginDir,
};
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
/// The goal on the sequential tail: brindle's ADD+DEL p99 at most this many times p50.
const P99_GOAL: f64 = 3.0;
/// How long a DEL's effects may take to show before they count as left behind.
const CLEANUP_WAIT: Duration = Duration::from_secs(10);

struct Args {
    /// Containers per variant in the sequential phase.
    containers: usize,
    /// ADDs (then DELs) at once in the burst phase; 0 skips it.
    burst: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        containers: 200,
        burst: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--burst" => {
                args.burst = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--burst needs a number")?
            }
            "-h" | "--help" => return Err("usage: bench-cni [CONTAINERS] [--burst N]".into()),
            n => {
                args.containers = n
                    .parse()
                    .map_err(|_| format!("CONTAINERS must be a number, not {n:?}"))?
            }
        }
    }
    if args.containers == 0 {
        return Err("CONTAINERS must be at least 1".into());
    }
    Ok(args)
}

/// Where a variant keeps its allocations, to check that a burst released them all.
enum Allocations {
    /// host-local's directory for the network: one file per allocated address.
    HostLocal(PathBuf),
    /// brindle's node: allocations and handles named after the container, and the
    /// node's endpoint records.
    Brindle(&'static str),
}

struct Variant {
    name: &'static str,
    plugin: std::path::PathBuf,
    conf: Value,
    /// Host veth name for a container, to wait for its teardown (brindle only).
    host_veth: Option<fn(&str) -> String>,
    allocations: Allocations,
    add: Vec<Duration>,
    del: Vec<Duration>,
    total: Vec<Duration>,
    /// brindle's per-step timings of the sequential phase (none for ptp).
    steps: Option<Steps>,
    burst: Option<Burst>,
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
    // brindle's calls print their own timings; every round alike, warm-up included.
    let timed = v.steps.is_some();
    let call = |command: &str| {
        let c = Call::new(command, cid, &ns.path(), "eth0").path(cni_path);
        if timed {
            c.env(TIMINGS_ENV, "1")
        } else {
            c
        }
    };
    let a = call("ADD").run(&v.plugin, &v.conf);
    assert!(a.success, "{} ADD {cid}: {} {}", v.name, a.stdout, a.stderr);
    let mut del_conf = v.conf.clone();
    del_conf["prevResult"] = a.json();
    let d = call("DEL").run(&v.plugin, &del_conf);
    assert!(d.success, "{} DEL {cid}: {} {}", v.name, d.stdout, d.stderr);
    if record {
        v.add.push(a.elapsed);
        v.del.push(d.elapsed);
        v.total.push(a.elapsed + d.elapsed);
        if let Some(steps) = &mut v.steps {
            steps.add.push(CallTimes::new(cid, &a));
            steps.del.push(CallTimes::new(cid, &d));
        }
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-cni: {e}");
            return ExitCode::from(2);
        }
    };
    if !is_root() {
        eprintln!("bench-cni needs root (network namespaces, veths, routes)");
        return ExitCode::from(2);
    }
    // Every resource lives in bench(), so it is all torn down before the exit code.
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-cni: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> Result<(), String> {
    let n = args.containers;
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
        ipam.add_pool(NewPool::new("bench", BRINDLE_POOL.parse().unwrap()))
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
            // host-local keeps a network's addresses in dataDir/NAME.
            allocations: Allocations::HostLocal(data.path().join("host-local").join("benchptp")),
            add: vec![],
            del: vec![],
            total: vec![],
            steps: None,
            burst: None,
        },
        Variant {
            name: "brindle via brindled",
            plugin: plugins.plugin("brindle"),
            conf: brindle(FAST_NODE, daemon.api_socket.display().to_string())
                .main_conf("1.0.0", "benchfast"),
            host_veth: Some(veth_of),
            allocations: Allocations::Brindle(FAST_NODE),
            add: vec![],
            del: vec![],
            total: vec![],
            steps: Some(Steps::new(PATH_BRINDLED)),
            burst: None,
        },
        Variant {
            name: "brindle direct (etcd)",
            plugin: plugins.plugin("brindle"),
            conf: brindle(DIRECT_NODE, "none".into()).main_conf("1.0.0", "benchdirect"),
            host_veth: Some(veth_of),
            allocations: Allocations::Brindle(DIRECT_NODE),
            add: vec![],
            del: vec![],
            total: vec![],
            steps: Some(Steps::new(PATH_DIRECT)),
            burst: None,
        },
    ];
    let count = n.max(WARMUP).max(args.burst);
    eprintln!("bench-cni: making {count} network namespaces");
    let namespaces: Vec<Netns> = (0..count).map(|_| Netns::new("bcni")).collect();
    eprintln!("bench-cni: {WARMUP} warm-up rounds, then {n} containers per variant");
    let mut floor = Floor::new(
        rt.block_on(ipam.store().client())
            .expect("etcd client")
            .kv_client(),
        variants[1].plugin.clone(),
    );
    let start = Instant::now();
    for i in 0..WARMUP + n {
        let ns = &namespaces[i % namespaces.len()];
        let record = i >= WARMUP;
        for (k, v) in variants.iter_mut().enumerate() {
            let cid = format!("bench{k}c{i}");
            run(v, plugins.path(), ns, &cid, record);
        }
        floor.sample(&rt, &variants[1].conf, ns, i, record);
    }
    let wall = start.elapsed();
    // The measured calls' lines, matched by handle: the burst's come later and do not
    // match, so the log can be read now or at the end alike.
    let brindled_log = daemon.log();
    for v in &mut variants {
        if let Some(steps) = v.steps.as_mut().filter(|s| s.path == PATH_BRINDLED) {
            steps.attach_brindled(&brindled_log);
        }
    }
    if args.burst > 0 {
        let state = State {
            etcd: &etcd,
            rt: &rt,
            ipam: &ipam,
            keys: Keys::new("/brindle"),
        };
        let burst_ns = &namespaces[..args.burst];
        for (k, v) in variants.iter_mut().enumerate() {
            eprintln!("bench-cni: burst of {} for {}", args.burst, v.name);
            v.burst = Some(burst(
                v,
                &format!("burst{k}c"),
                plugins.path(),
                burst_ns,
                &state,
            ));
        }
    }
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

    print_sequential(&variants, n, wall);
    floor.print(pct(&variants[0].total, 0.5));
    print_steps(&variants);
    if args.burst > 0 {
        print_bursts(&variants, args.burst);
    }
    burst_verdict(&variants)
}

fn print_sequential(variants: &[Variant], n: usize, wall: Duration) {
    println!(
        "CNI ADD+DEL per container, {n} containers per variant (interleaved), {} wall",
        ms(wall)
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "variant", "ADD p50", "DEL p50", "ADD+DEL", "p90", "p99", "ratio"
    );
    let base = pct(&variants[0].total, 0.5);
    for v in variants {
        let p50 = pct(&v.total, 0.5);
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10.3}",
            v.name,
            ms(pct(&v.add, 0.5)),
            ms(pct(&v.del, 0.5)),
            ms(p50),
            ms(pct(&v.total, 0.9)),
            ms(pct(&v.total, 0.99)),
            p50.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!("goal: brindle ADD+DEL p50 at most 0.2 x ptp + host-local");
    let tails: Vec<String> = variants[1..]
        .iter()
        .map(|v| {
            let t = tail_ratio(&v.total);
            format!("{} {t:.2} ({})", v.name, met(t <= P99_GOAL))
        })
        .collect();
    println!(
        "goal: brindle ADD+DEL p99 at most {P99_GOAL:.0} x its p50: {}; {} {:.2}",
        tails.join(", "),
        variants[0].name,
        tail_ratio(&variants[0].total)
    );
}

/// What no plugin storing its addresses in etcd can go under on this machine: two
/// process starts and one durable write per ADD+DEL.
struct Floor {
    kv: etcd_client::KvClient,
    /// brindle's plugin, for its VERSION.
    plugin: PathBuf,
    /// A process that reads a netconf from stdin and exits, spawned as a plugin is.
    process: Vec<Duration>,
    /// One etcd put of an endpoint-sized value, acknowledged (so fsync'd).
    put: Vec<Duration>,
    /// brindle's own plugin answering VERSION: its start-up and exit, next to `cat`'s.
    version: Vec<Duration>,
}

impl Floor {
    fn new(kv: etcd_client::KvClient, plugin: PathBuf) -> Self {
        Floor {
            kv,
            plugin,
            process: Vec::new(),
            put: Vec::new(),
            version: Vec::new(),
        }
    }

    fn sample(
        &mut self,
        rt: &tokio::runtime::Runtime,
        conf: &Value,
        ns: &Netns,
        i: usize,
        record: bool,
    ) {
        let cat = Path::new("/bin/cat");
        let mut process = Vec::new();
        for command in ["ADD", "DEL"] {
            let out = Call::new(command, &format!("floor{i}"), &ns.path(), "eth0").run(cat, conf);
            assert!(out.success, "cat as a plugin: {}", out.stderr);
            process.push(out.elapsed);
        }
        // An allocation, its handle and the endpoint record come to about this much.
        let value = "x".repeat(1024);
        let t = Instant::now();
        rt.block_on(self.kv.put(format!("/bench-floor/{i}"), value, None))
            .expect("etcd put");
        let put = t.elapsed();
        let version =
            Call::new("VERSION", &format!("floor{i}"), &ns.path(), "eth0").run(&self.plugin, conf);
        assert!(version.success, "brindle VERSION: {}", version.stderr);
        if record {
            self.process.extend(process);
            self.put.push(put);
            self.version.push(version.elapsed);
        }
    }

    fn print(&self, baseline: Duration) {
        let (process, put) = (pct(&self.process, 0.5), pct(&self.put, 0.5));
        let floor = process * 2 + put;
        println!(
            "floor on this machine: 2 x a process reading its netconf ({}) + 1 durable etcd put ({}) = {} = {:.3} of ptp + host-local",
            ms(process),
            ms(put),
            ms(floor),
            floor.as_secs_f64() / baseline.as_secs_f64()
        );
        println!(
            "  (brindle's plugin answering VERSION, started the same way: {})",
            ms(pct(&self.version, 0.5))
        );
    }
}

fn tail_ratio(v: &[Duration]) -> f64 {
    pct(v, 0.99).as_secs_f64() / pct(v, 0.5).as_secs_f64()
}

// --- per-step timings of the sequential phase --------------------------------------

/// The `path=` brindle-cni reports through brindled's socket, and talking to etcd.
const PATH_BRINDLED: &str = "brindled";
const PATH_DIRECT: &str = "direct";
/// How brindle-cni's timings line on stderr starts.
const TIMINGS_PREFIX: &str = "brindle-cni timings:";
/// brindled's messages carrying an ADD's and a DEL's step timings.
const BRINDLED_ADD_DONE: &str = "cni add: done";
const BRINDLED_DEL: &str = "cni del";
/// brindled's message when a DEL's release, answered already, has committed.
const BRINDLED_DEL_COMMITTED: &str = "cni del: released";

/// The `key=value` words of a timings or log line, values as text.
#[derive(Debug, Default)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(line: &str) -> Self {
        Fields(
            line.split_whitespace()
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A field holding microseconds.
    fn us(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }
}

/// Where one brindle call's time went.
struct CallTimes {
    cid: String,
    /// As the runtime sees it: spawn to exit.
    wall: Duration,
    /// The plugin's timings line: path, parse_us, operation_us, total_us.
    plugin: Fields,
    /// brindled's line for the call (fast path only): its total and steps.
    daemon: Fields,
}

impl CallTimes {
    fn new(cid: &str, out: &CniOutput) -> Self {
        let line = out
            .stderr
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(TIMINGS_PREFIX));
        CallTimes {
            cid: cid.to_string(),
            wall: out.elapsed,
            plugin: line.map(Fields::parse).unwrap_or_default(),
            daemon: Fields::default(),
        }
    }
}

/// A variant's measured brindle calls.
struct Steps {
    /// The path its plugin calls should report ([`PATH_BRINDLED`] or [`PATH_DIRECT`]).
    path: &'static str,
    add: Vec<CallTimes>,
    del: Vec<CallTimes>,
}

impl Steps {
    fn new(path: &'static str) -> Self {
        Steps {
            path,
            add: Vec::new(),
            del: Vec::new(),
        }
    }

    /// Give each call brindled's line for its handle.
    fn attach_brindled(&mut self, log: &str) {
        let mut adds = brindled_lines(log, BRINDLED_ADD_DONE);
        let mut dels = brindled_lines(log, BRINDLED_DEL);
        for (calls, lines) in [(&mut self.add, &mut adds), (&mut self.del, &mut dels)] {
            for c in calls.iter_mut() {
                if let Some(f) = lines.remove(&handle_for(&c.cid, "eth0")) {
                    c.daemon = f;
                }
            }
        }
        let mut committed = committed_releases(log);
        for c in self.del.iter_mut() {
            if let Some(us) = committed.remove(&handle_for(&c.cid, "eth0")) {
                c.daemon.0.push(("commit_us".into(), us.to_string()));
            }
        }
    }
}

/// brindled's lines with `message` and a `total_us`, by handle (a DEL with nothing to
/// unwire logs `cni del` without timings).
fn brindled_lines(log: &str, message: &str) -> HashMap<String, Fields> {
    let needle = format!(" {message} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(Fields::parse)
        .filter(|f| f.us("total_us").is_some())
        .filter_map(|f| Some((f.get("handle")?.to_string(), f)))
        .collect()
}

/// When each DEL's release committed after DEL answered (`commit_us`), by handle.
fn committed_releases(log: &str) -> HashMap<String, u64> {
    let needle = format!(" {BRINDLED_DEL_COMMITTED} ");
    log.lines()
        .filter(|l| l.contains(&needle))
        .map(Fields::parse)
        .filter_map(|f| Some((f.get("handle")?.to_string(), f.us("commit_us")?)))
        .collect()
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How a breakdown row reads its figure (microseconds) off one call.
type Pick = fn(&CallTimes) -> Option<u64>;

/// Rows every brindle variant has, indented as the times nest (under the variant).
const PLUGIN_ROWS: [(&str, Pick); 5] = [
    ("wall time, as the runtime sees it", |c| {
        Some(micros(c.wall))
    }),
    ("  process start-up + exit (wall - plugin total)", |c| {
        micros(c.wall).checked_sub(c.plugin.us("total_us")?)
    }),
    ("  plugin total", |c| c.plugin.us("total_us")),
    ("    parse", |c| c.plugin.us("parse_us")),
    ("    operation", |c| c.plugin.us("operation_us")),
];

/// Rows of the fast path: brindled's share of the plugin's operation.
const BRINDLED_ROWS: [(&str, Pick); 8] = [
    ("      brindled total", |c| c.daemon.us("total_us")),
    ("        allocate (the veth built meanwhile)", |c| {
        c.daemon.us("allocate_us")
    }),
    ("          veth (alongside the allocation)", |c| {
        c.daemon.us("veth_us")
    }),
    ("        wire (after the allocation)", |c| {
        c.daemon.us("wire_us")
    }),
    ("        unwire", |c| c.daemon.us("unwire_us")),
    ("        release", |c| c.daemon.us("release_us")),
    (
        "        release committed after DEL answered (not in DEL)",
        |c| c.daemon.us("commit_us"),
    ),
    (
        "      socket, API server, client (operation - brindled)",
        |c| {
            c.plugin
                .us("operation_us")?
                .checked_sub(c.daemon.us("total_us")?)
        },
    ),
];

/// The median of a row over `calls`, in ms, or `-` when no call has it.
fn median_cell(calls: &[CallTimes], pick: Pick) -> String {
    let mut v: Vec<u64> = calls.iter().filter_map(pick).collect();
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    format!("{:.3}", v[v.len() / 2] as f64 / 1e3)
}

fn print_steps(variants: &[Variant]) {
    println!("brindle per-step medians (p50) of the sequential phase, ms:");
    println!("{:<60} {:>9} {:>9}", "step", "ADD", "DEL");
    for v in variants {
        let Some(s) = &v.steps else { continue };
        println!(
            "{} (path {}: {}/{} ADDs, {}/{} DELs)",
            v.name,
            s.path,
            on_path(&s.add, s.path),
            s.add.len(),
            on_path(&s.del, s.path),
            s.del.len()
        );
        let brindled: &[(&str, Pick)] = if s.path == PATH_BRINDLED {
            &BRINDLED_ROWS
        } else {
            &[]
        };
        for (label, pick) in PLUGIN_ROWS.iter().chain(brindled) {
            println!(
                "  {label:<58} {:>9} {:>9}",
                median_cell(&s.add, *pick),
                median_cell(&s.del, *pick)
            );
        }
        print_missing(s);
    }
}

/// Calls whose timings line names `path`.
fn on_path(calls: &[CallTimes], path: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.plugin.get("path") == Some(path))
        .count()
}

/// A note per kind of call whose timings could not be found (their rows' medians are
/// over the others only).
fn print_missing(s: &Steps) {
    for (what, calls) in [("ADD", &s.add), ("DEL", &s.del)] {
        let no_line = calls.iter().filter(|c| c.plugin.0.is_empty()).count();
        if no_line > 0 {
            println!("  note: {no_line} {what} call(s) printed no timings line");
        }
        let no_daemon = calls.iter().filter(|c| c.daemon.0.is_empty()).count();
        if s.path == PATH_BRINDLED && no_daemon > 0 {
            println!("  note: {no_daemon} {what} call(s) without a brindled log line");
        }
    }
}

// --- the burst phase ------------------------------------------------------------------

/// One variant's burst: N ADDs at once, then N DELs at once.
struct Burst {
    add_wall: Duration,
    del_wall: Duration,
    /// What each failed ADD / DEL said.
    add_failures: Vec<String>,
    del_failures: Vec<String>,
    /// What the DELs did not remove.
    leftovers: Vec<String>,
}

/// What the leftover checks read brindle's records with.
struct State<'a> {
    etcd: &'a Etcd,
    rt: &'a tokio::runtime::Runtime,
    ipam: &'a Ipam<EtcdStore>,
    keys: Keys,
}

/// ADD for every namespace at once, then DEL for every one at once; container ids start
/// with `tag`, so what they leave behind can be told from anything else.
fn burst(v: &Variant, tag: &str, cni_path: &Path, namespaces: &[Netns], state: &State) -> Burst {
    let cids: Vec<String> = (0..namespaces.len()).map(|i| format!("{tag}{i}")).collect();
    let call = |command: &str, i: usize| {
        Call::new(command, &cids[i], &namespaces[i].path(), "eth0").path(cni_path)
    };
    let adds: Vec<(Call, Value)> = (0..cids.len())
        .map(|i| (call("ADD", i), v.conf.clone()))
        .collect();
    let (add_wall, added) = all_at_once(&v.plugin, &adds);
    // A DEL carries the ADD's result when there is one, as a runtime does; a failed ADD
    // still gets its DEL, which must clean up whatever the ADD got done.
    let dels: Vec<(Call, Value)> = added
        .iter()
        .enumerate()
        .map(|(i, out)| (call("DEL", i), del_conf(&v.conf, out)))
        .collect();
    let (del_wall, deleted) = all_at_once(&v.plugin, &dels);
    Burst {
        add_wall,
        del_wall,
        add_failures: failures(&added),
        del_failures: failures(&deleted),
        leftovers: wait_for_cleanup(v, tag, &cids, namespaces, state),
    }
}

/// Run every call on its own thread, all released together: the wall time from the
/// release to the last plugin's exit, and each call's outcome.
fn all_at_once(
    plugin: &Path,
    calls: &[(Call, Value)],
) -> (Duration, Vec<Result<CniOutput, String>>) {
    let barrier = Barrier::new(calls.len() + 1);
    std::thread::scope(|s| {
        let threads: Vec<_> = calls
            .iter()
            .map(|(call, conf)| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let began = Instant::now();
                    let out = call.run(plugin, conf);
                    (out, began, Instant::now())
                })
            })
            .collect();
        barrier.wait();
        // From the first call's release, as each thread saw it: this thread may run
        // again only after others have finished (its own clock once made 200 DELs
        // look like 23 ms).
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let outs = threads
            .into_iter()
            .map(|t| match t.join() {
                Ok((out, began, done)) => {
                    first = Some(first.map_or(began, |f| f.min(began)));
                    last = Some(last.map_or(done, |l| l.max(done)));
                    Ok(out)
                }
                Err(_) => Err("the thread running the plugin panicked".to_string()),
            })
            .collect();
        let wall = match (first, last) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        };
        (wall, outs)
    })
}

fn del_conf(conf: &Value, add: &Result<CniOutput, String>) -> Value {
    let mut del = conf.clone();
    if let Ok(out) = add {
        if out.success {
            if let Ok(result) = serde_json::from_str::<Value>(&out.stdout) {
                del["prevResult"] = result;
            }
        }
    }
    del
}

/// One line per failed call: the CNI error's message (JSON on stdout), else the first
/// line of stderr, else the exit code.
fn failures(outs: &[Result<CniOutput, String>]) -> Vec<String> {
    outs.iter()
        .filter_map(|o| match o {
            Ok(out) if out.success => None,
            Ok(out) => Some(failure_line(out)),
            Err(e) => Some(e.clone()),
        })
        .collect()
}

fn failure_line(out: &CniOutput) -> String {
    let msg = serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|e| e["msg"].as_str().map(str::to_string));
    let stderr = out.stderr.lines().map(str::trim).find(|l| !l.is_empty());
    msg.or(stderr.map(str::to_string))
        .unwrap_or_else(|| format!("exit code {:?} and no output", out.exit_code))
}

/// Wait up to [`CLEANUP_WAIT`] for the burst's DELs to show; what is still there then.
fn wait_for_cleanup(
    v: &Variant,
    tag: &str,
    cids: &[String],
    namespaces: &[Netns],
    state: &State,
) -> Vec<String> {
    let deadline = Instant::now() + CLEANUP_WAIT;
    loop {
        let left = leftovers(v, tag, cids, namespaces, state);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn leftovers(
    v: &Variant,
    tag: &str,
    cids: &[String],
    namespaces: &[Netns],
    state: &State,
) -> Vec<String> {
    let mut left = Vec::new();
    let with_eth0: Vec<&str> = namespaces
        .iter()
        .filter(|ns| has_eth0(ns))
        .map(|ns| ns.name.as_str())
        .collect();
    if !with_eth0.is_empty() {
        left.push(format!(
            "eth0 still in {} namespace(s), first {}",
            with_eth0.len(),
            with_eth0[0]
        ));
    }
    if let Some(veth) = v.host_veth {
        let links = host_links();
        let veths: Vec<String> = cids
            .iter()
            .map(|c| veth(c))
            .filter(|l| links.contains(l))
            .collect();
        if !veths.is_empty() {
            left.push(format!("{} host veth(s), first {}", veths.len(), veths[0]));
        }
    }
    match &v.allocations {
        Allocations::HostLocal(dir) => left.extend(host_local_leftovers(dir)),
        Allocations::Brindle(node) => left.extend(brindle_leftovers(state, node, tag)),
    }
    left
}

/// Whether the container side of the attachment is still in `ns`.
fn has_eth0(ns: &Netns) -> bool {
    Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "dev", "eth0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Names of the root namespace's links (one `ip` call, not one per container).
fn host_links() -> HashSet<String> {
    ip_json(None, &["link", "show"])
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

/// Addresses host-local still holds: the files named after an address.
fn host_local_leftovers(dir: &Path) -> Vec<String> {
    let held: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.parse::<Ipv4Addr>().is_ok())
        .collect();
    if held.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "host-local still holds {} address(es), first {}",
        held.len(),
        held[0]
    )]
}

/// The burst's allocations, handles and endpoint records still in etcd (the warm
/// allocations are not the burst's: their handles do not start with `tag`).
fn brindle_leftovers(state: &State, node: &str, tag: &str) -> Vec<String> {
    let mut left = Vec::new();
    let blocks = state
        .rt
        .block_on(state.ipam.all_blocks())
        .expect("read blocks");
    let allocated = blocks
        .iter()
        .flat_map(|b| b.allocations.values())
        .filter(|a| a.handle.starts_with(tag))
        .count();
    if allocated > 0 {
        left.push(format!("{allocated} address(es) still allocated"));
    }
    let handles = state
        .etcd
        .keys(&format!("{}{tag}", state.keys.handles()))
        .len();
    if handles > 0 {
        left.push(format!("{handles} handle record(s)"));
    }
    let endpoints = state.etcd.keys(&state.keys.node_endpoints(node)).len();
    if endpoints > 0 {
        left.push(format!("{endpoints} endpoint record(s) on node {node}"));
    }
    left
}

fn print_bursts(variants: &[Variant], size: usize) {
    println!(
        "burst: {size} ADDs at once, then {size} DELs at once, per variant (each container its own namespace):"
    );
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "variant", "ADD burst", "DEL burst", "ADD fail", "DEL fail", "leftovers", "ADD ratio"
    );
    let Some(base) = variants[0].burst.as_ref() else {
        return;
    };
    for v in variants {
        let Some(b) = &v.burst else { continue };
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10.3}",
            v.name,
            ms(b.add_wall),
            ms(b.del_wall),
            b.add_failures.len(),
            b.del_failures.len(),
            b.leftovers.len(),
            b.add_wall.as_secs_f64() / base.add_wall.as_secs_f64()
        );
    }
    let ratios: Vec<String> = variants[1..]
        .iter()
        .filter_map(|v| {
            let r = v.burst.as_ref()?.add_wall.as_secs_f64() / base.add_wall.as_secs_f64();
            Some(format!("{} {r:.2} ({})", v.name, met(r <= 1.0)))
        })
        .collect();
    println!(
        "goal: brindle's ADD burst no slower than {}'s (ratio <= 1.0): {}",
        variants[0].name,
        ratios.join(", ")
    );
    for v in variants {
        let Some(b) = &v.burst else { continue };
        for (what, lines) in [("ADD", &b.add_failures), ("DEL", &b.del_failures)] {
            print_failures(&format!("{}: {what}", v.name), lines);
        }
        for line in &b.leftovers {
            println!("  {}: left behind: {line}", v.name);
        }
    }
}

/// An error naming how many calls failed and what was left, when any.
fn burst_verdict(variants: &[Variant]) -> Result<(), String> {
    let bursts = variants.iter().filter_map(|v| v.burst.as_ref());
    let (mut failed, mut left) = (0, 0);
    for b in bursts {
        failed += b.add_failures.len() + b.del_failures.len();
        left += b.leftovers.len();
    }
    if failed == 0 && left == 0 {
        return Ok(());
    }
    Err(format!(
        "burst phase: {failed} failed call(s), {left} leftover(s) (details above)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brindled_lines_by_handle_with_timings_only() {
        let log = "\
2026-12-02T07:00:00.000001Z  INFO brindle_plugin::cni::ops::add: cni add: address handle=c1+eth0 ip=10.0.0.2 existing=false allocate_us=90
2026-12-02T07:00:00.000002Z  INFO brindle_plugin::cni::ops::add: cni add: done handle=c1+eth0 allocate_us=90 veth_us=80 wire_us=200 total_us=300
2026-12-02T07:00:00.000003Z  INFO brindle_plugin::cni::ops: cni del handle=c2+eth0 released=[]
2026-12-02T07:00:00.000004Z  INFO brindle_plugin::cni::ops: cni del handle=c1+eth0 released=[10.0.0.2] unwire_us=50 release_us=70 total_us=120
";
        let adds = brindled_lines(log, BRINDLED_ADD_DONE);
        assert_eq!(adds.len(), 1);
        assert_eq!(adds["c1+eth0"].us("wire_us"), Some(200));
        assert_eq!(adds["c1+eth0"].us("veth_us"), Some(80));
        let dels = brindled_lines(log, BRINDLED_DEL);
        assert_eq!(dels.len(), 1, "the DEL without timings is skipped");
        assert_eq!(dels["c1+eth0"].us("release_us"), Some(70));
    }

    #[test]
    fn releases_committed_after_the_answer_by_handle() {
        let log = "\
2026-12-03T07:00:00.000001Z  INFO brindle_plugin::api::attachments: cni del handle=c1+eth0 unwire_us=50 total_us=50
2026-12-03T07:00:00.000002Z  INFO brindle_plugin::api::attachments: cni del: released handle=c1+eth0 released=[10.0.0.2] commit_us=2100
";
        let dels = brindled_lines(log, BRINDLED_DEL);
        assert_eq!(dels.len(), 1, "the commit line is not the DEL's");
        assert_eq!(dels["c1+eth0"].us("total_us"), Some(50));
        assert_eq!(committed_releases(log)["c1+eth0"], 2100);
    }

    #[test]
    fn plugin_timings_line_among_other_stderr() {
        let out = CniOutput {
            success: true,
            exit_code: Some(0),
            stdout: String::new(),
            stderr: "WARN something\nbrindle-cni timings: command=DEL path=direct \
                     parse_us=10 operation_us=20 total_us=31\n"
                .into(),
            elapsed: Duration::from_micros(500),
        };
        let c = CallTimes::new("c1", &out);
        assert_eq!(c.plugin.get("path"), Some(PATH_DIRECT));
        assert_eq!(PLUGIN_ROWS[1].1(&c), Some(469), "start-up + exit");
    }
}
