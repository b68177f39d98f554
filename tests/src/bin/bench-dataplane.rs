//! `bench-dataplane` (`make bench-dataplane`, root): the routed dataplane between
//! containers on two hosts, through brindle (brindled + BIRD + etcd) against the same
//! namespaces with hand-made routes, in one run:
//!
//! - iperf3 TCP throughput and ping RTT, container on h1 -> container on h2, in
//!   alternating phases: brindle, hand-made routes (brindled and BIRD stopped, their
//!   routes replaced by `ip route add`), brindle again (agents restarted), ..., so
//!   load from elsewhere hits both alike; the ratio brindle / hand-made (goal >= 0.95);
//! - the time from a block claim in etcd (IPAM allocation on h1 of an address in a
//!   new block) to the block's route in h2's kernel, seen with `ip monitor route`
//!   (goal <= 1 s), and from the release to the withdrawal;
//! - the time from a new endpoint record to its address being in force in h1's
//!   firewall table, with 10, 100 and 1,000 endpoints in its network's set (goal under
//!   50 ms, flat), seen with `nft monitor` (`brindle_tests::nftbench`).
//!
//! Both hosts start as real Docker hosts do (FORWARD policy DROP): the brindle phases
//! run through brindle's firewall rules; the hand-made phases have FORWARD ACCEPT and
//! no rules at all, the best a hand-built routed host can do.
//!
//! Flags: `--seconds N` per iperf3 run (default 3), `--runs N` iperf3 runs per phase
//! (default 3), `--rounds N` hand-made phases between brindle ones (default 2), `--claims N` block claims timed (default 10), `--probes N` new endpoints timed per set size (default 10), `--json` for one JSON
//! object on stdout instead of the report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam};
use brindle_tests::netns::{is_root, Netns};
use brindle_tests::nftbench;
use brindle_tests::topology::{ping_from, ForwardPolicy, Options, Proc, Topology};
use serde_json::{json, Value};

struct Args {
    seconds: u32,
    runs: u32,
    rounds: u32,
    claims: u32,
    probes: u32,
    json: bool,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 3,
        runs: 3,
        rounds: 2,
        claims: 10,
        probes: 10,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> u32 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match arg.as_str() {
            "--seconds" => a.seconds = num("--seconds"),
            "--runs" => a.runs = num("--runs"),
            "--rounds" => a.rounds = num("--rounds").max(1),
            "--claims" => a.claims = num("--claims"),
            "--probes" => a.probes = num("--probes").max(1),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("usage: bench-dataplane [--seconds N] [--runs N] [--rounds N] [--claims N] [--probes N] [--json]");
                std::process::exit(0);
            }
            other => {
                eprintln!("bench-dataplane: unknown argument {other:?}; see --help");
                std::process::exit(2);
            }
        }
    }
    a
}

/// One phase's figures.
#[derive(Debug, Clone, Default)]
struct Phase {
    name: String,
    gbps: Vec<f64>,
    rtt_ms: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// iperf3 client in `from` to `to` for `seconds`: received Gbit/s.
fn iperf3(from: &Netns, to: Ipv4Addr, seconds: u32) -> f64 {
    let out = from.exec(&[
        "iperf3",
        "-c",
        &to.to_string(),
        "-p",
        "5201",
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64();
    bps.map(|b| b / 1e9).unwrap_or_else(|| {
        panic!(
            "iperf3 to {to} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// busybox ping: average RTT in ms over `count` probes.
fn ping_rtt(from: &Netns, to: Ipv4Addr, count: u32) -> f64 {
    let out = from.exec(&[
        "busybox",
        "ping",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.02",
        &to.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // "round-trip min/avg/max = 0.051/0.078/0.150 ms"
    text.lines()
        .find_map(|l| {
            let (_, v) = l.split_once(" = ")?;
            v.split('/').nth(1)?.parse().ok()
        })
        .unwrap_or_else(|| panic!("ping {to} failed: {text}"))
}

fn measure(t: &Topology, name: &str, a: &Args) -> Phase {
    let (c1, c2) = (&t.containers[0], &t.containers[1]);
    assert!(
        ping_from(&c1.ns, c2.ip, 3) > 0,
        "{name}: c1 cannot reach c2"
    );
    let mut p = Phase {
        name: name.into(),
        ..Default::default()
    };
    for _ in 0..a.runs {
        p.gbps.push(iperf3(&c1.ns, c2.ip, a.seconds));
        p.rtt_ms.push(ping_rtt(&c1.ns, c2.ip, 50));
    }
    p
}

/// Stops brindled and BIRD and replaces their routes with hand-made ones.
fn hand_made(t: &mut Topology) {
    for h in &mut t.hosts {
        if let Some(p) = h.brindled.as_mut() {
            p.stop();
        }
        h.bird = None;
    }
    for h in &t.hosts {
        for proto in ["bird", "98"] {
            h.ns.ok(&["ip", "route", "flush", "proto", proto]);
        }
        // The best a hand-built routed host can do: FORWARD ACCEPT and no rules at all
        // (the restore replaces the whole filter table), no nftables table.
        h.restore_filter(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        );
        h.ns.ok(&["nft", "delete", "table", "ip", "brindle"]);
    }
    for (i, h) in t.hosts.iter().enumerate() {
        for c in &t.containers {
            if c.host == i {
                h.ns.ok(&[
                    "ip",
                    "route",
                    "add",
                    &format!("{}/32", c.ip),
                    "dev",
                    &c.host_ifname,
                    "scope",
                    "link",
                ]);
            } else {
                let via = t.hosts[c.host].ip.to_string();
                h.ns.ok(&["ip", "route", "add", &format!("{}/32", c.ip), "via", &via]);
            }
        }
    }
}

/// Removes the hand-made routes and starts brindled and BIRD again.
fn back_to_brindle(t: &mut Topology) {
    for h in &t.hosts {
        for c in &t.containers {
            h.ns.ok(&["ip", "route", "del", &format!("{}/32", c.ip)]);
        }
        // Back to a real Docker host's firewall: brindle's rules carry the traffic.
        h.restore_filter(ForwardPolicy::Drop.docker_filter());
    }
    t.start_agents(true);
    t.wait_mesh();
    let (c1, c2) = (t.containers[0].ip, t.containers[1].ip);
    wait(Topology::wait_route(
        &t.hosts[0].ns,
        &Topology::block_of(c2),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[1].ns,
        &Topology::block_of(c1),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[0].ns,
        &c1.to_string(),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[1].ns,
        &c2.to_string(),
        None,
        TIMEOUT,
    ));
}

const TIMEOUT: Duration = Duration::from_secs(20);

fn wait<T>(r: Result<T, String>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// `ip monitor route` in a namespace, lines with their arrival time.
struct Monitor {
    _proc: std::process::Child,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl Monitor {
    fn start(ns: &Netns) -> Self {
        let mut child = Command::new("ip")
            .args(["-n", &ns.name, "monitor", "route"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip monitor");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(200));
        Monitor { _proc: child, rx }
    }

    /// Waits for a line starting with `prefix`; its arrival time.
    fn wait(&self, prefix: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((at, line)) if line.starts_with(prefix) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self._proc.kill();
        let _ = self._proc.wait();
    }
}

/// A store on the topology's etcd.
fn store(t: &Topology) -> EtcdStore {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(EtcdStore::connect(&EtcdConfig {
        endpoints: vec![t.etcd.endpoint.clone()],
        ..Default::default()
    }))
    .expect("etcd")
}

/// Times block claims on h1 until the route shows in h2's kernel, and releases
/// until it is withdrawn. Returns (claim ms, withdraw ms).
fn claims(t: &Topology, n: u32) -> (Vec<f64>, Vec<f64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ipam = Ipam::new(store(t), "/brindle");
    let monitor = Monitor::start(&t.hosts[1].ns);
    let pool: Ipv4Addr = t.pool.split('/').next().unwrap().parse().unwrap();
    let base = u32::from(pool);
    let (mut claim_ms, mut withdraw_ms) = (Vec::new(), Vec::new());
    for k in 0..n {
        // An address in a block nobody has claimed: 10.X.(200+k).5
        let ip = Ipv4Addr::from(base + ((200 + k) << 8) + 5);
        let block = Topology::block_of(ip);
        let handle = format!("bench-claim-{k}");
        let t0 = Instant::now();
        rt.block_on(ipam.allocate(&AllocRequest {
            handle: handle.clone(),
            node: "h1".into(),
            ip: Some(ip),
            pool: None,
            attrs: BTreeMap::new(),
            ..AllocRequest::default()
        }))
        .expect("claim a block");
        let seen = monitor
            .wait(&format!("{block} via {}", t.hosts[0].ip), TIMEOUT)
            .unwrap_or_else(|| panic!("{block} never reached h2's kernel"));
        claim_ms.push(seen.duration_since(t0).as_secs_f64() * 1000.0);
        let t1 = Instant::now();
        rt.block_on(ipam.release_handle(&handle)).expect("release");
        let gone = monitor
            .wait(&format!("Deleted {block} via"), TIMEOUT)
            .unwrap_or_else(|| panic!("{block} was never withdrawn from h2's kernel"));
        withdraw_ms.push(gone.duration_since(t1).as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(100));
    }
    (claim_ms, withdraw_ms)
}

fn main() {
    let a = args();
    if !is_root() {
        eprintln!("bench-dataplane: needs root (network namespaces); skipped");
        std::process::exit(0);
    }
    for tool in ["iperf3", "busybox"] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            eprintln!(
                "bench-dataplane: {tool} is missing (apt-get install -y iperf3 busybox-static)"
            );
            std::process::exit(1);
        }
    }
    brindle_tests::bird::bird_bin();

    let mut t = Topology::new(Options::default());
    t.start_agents(true);
    t.wait_mesh();
    let c1 = t.add_container(0, None);
    let c2 = t.add_container(1, None);
    let (ip1, ip2) = (t.containers[c1].ip, t.containers[c2].ip);
    wait(Topology::wait_route(
        &t.hosts[0].ns,
        &Topology::block_of(ip2),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[1].ns,
        &Topology::block_of(ip1),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[0].ns,
        &ip1.to_string(),
        None,
        TIMEOUT,
    ));
    wait(Topology::wait_route(
        &t.hosts[1].ns,
        &ip2.to_string(),
        None,
        TIMEOUT,
    ));

    let mut server = Command::new("ip");
    server.args([
        "netns",
        "exec",
        &t.containers[c2].ns.name,
        "iperf3",
        "-s",
        "-p",
        "5201",
    ]);
    let _server = Proc::spawn(
        "iperf3 server",
        server,
        &t.dir.path().join("iperf3-server.log"),
    );
    std::thread::sleep(Duration::from_millis(300));

    eprintln!("bench-dataplane: timing {} block claims...", a.claims);
    let (claim_ms, withdraw_ms) = claims(&t, a.claims);

    eprintln!("bench-dataplane: timing new endpoints until their firewall rules are in force...");
    let pool: Ipv4Addr = t.pool.split('/').next().unwrap().parse().unwrap();
    let rules = nftbench::measure(
        &store(&t),
        &t.hosts[0].ns,
        "h1",
        Ipv4Addr::from(u32::from(pool) + (128 << 8)),
        &[10, 100, 1000],
        a.probes as usize,
    );

    // Alternate brindle and hand-made phases (B H B H ... B) so that load from
    // elsewhere on the machine hits both alike.
    let total = 2 * a.rounds + 1;
    let mut phases = Vec::new();
    for i in 0..total {
        let brindle = i % 2 == 0;
        let name = if brindle { "brindle" } else { "hand-made" };
        eprintln!("bench-dataplane: phase {}/{total} {name}", i + 1);
        if i > 0 {
            if brindle {
                back_to_brindle(&mut t);
            } else {
                hand_made(&mut t);
            }
        }
        phases.push(measure(&t, name, &a));
    }
    let collect = |name: &str, f: fn(&Phase) -> &Vec<f64>| -> Vec<f64> {
        phases
            .iter()
            .filter(|p| p.name == name)
            .flat_map(|p| f(p).iter().copied())
            .collect()
    };
    let brindle_gbps = collect("brindle", |p| &p.gbps);
    let brindle_rtt = collect("brindle", |p| &p.rtt_ms);
    let hand_gbps = collect("hand-made", |p| &p.gbps);
    let hand_rtt = collect("hand-made", |p| &p.rtt_ms);
    let tput_ratio = median(&brindle_gbps) / median(&hand_gbps);
    let rtt_ratio = median(&hand_rtt) / median(&brindle_rtt);
    let claim_max = claim_ms.iter().copied().fold(0.0, f64::max);
    let rules_json: Vec<Value> = rules
        .iter()
        .map(|r| {
            let max = r.ms.iter().copied().fold(0.0, f64::max);
            json!({"endpoints_in_set": r.endpoints, "ms": r.ms, "ms_median": median(&r.ms), "ms_max": max})
        })
        .collect();
    let rules_medians: Vec<f64> = rules.iter().map(|r| median(&r.ms)).collect();
    let rules_worst = rules_medians.iter().copied().fold(0.0, f64::max);
    let rules_flat = rules_medians.last().copied().unwrap_or(f64::NAN)
        <= 2.0 * rules_medians.first().copied().unwrap_or(f64::NAN).max(5.0);
    let phase_json: Vec<Value> = phases
        .iter()
        .map(|p| {
            json!({
                "name": p.name, "gbps": p.gbps, "rtt_ms": p.rtt_ms,
                "gbps_median": median(&p.gbps), "rtt_ms_median": median(&p.rtt_ms),
            })
        })
        .collect();
    let report = json!({
        "iperf3_seconds": a.seconds,
        "runs_per_phase": a.runs,
        "phases": phase_json,
        "brindle_gbps_median": median(&brindle_gbps),
        "hand_made_gbps_median": median(&hand_gbps),
        "brindle_rtt_ms_median": median(&brindle_rtt),
        "hand_made_rtt_ms_median": median(&hand_rtt),
        "throughput_ratio": tput_ratio,
        "rtt_ratio": rtt_ratio,
        "block_claim_to_peer_route_ms": claim_ms,
        "block_claim_to_peer_route_ms_median": median(&claim_ms),
        "block_claim_to_peer_route_ms_max": claim_max,
        "release_to_peer_withdrawal_ms": withdraw_ms,
        "release_to_peer_withdrawal_ms_median": median(&withdraw_ms),
        "endpoint_to_rules_in_force": rules_json,
        "goals": {
            "throughput_ratio_min": 0.95,
            "claim_to_route_max_ms": 1000,
            "endpoint_to_rules_median_max_ms": 50,
            "met": tput_ratio >= 0.95 && claim_max <= 1000.0 && rules_worst < 50.0 && rules_flat,
        },
    });
    if a.json {
        println!("{report}");
    } else {
        println!("brindle dataplane benchmark: container on h1 -> container on h2, two hosts (network namespaces on a bridge)");
        println!("{:<18} {:>14} {:>14}", "phase", "TCP Gbit/s", "ping RTT ms");
        for p in &phases {
            println!(
                "{:<18} {:>14.2} {:>14.3}",
                p.name,
                median(&p.gbps),
                median(&p.rtt_ms)
            );
        }
        println!(
            "{:<18} {:>14.2} {:>14.3}",
            "all brindle",
            median(&brindle_gbps),
            median(&brindle_rtt)
        );
        println!(
            "{:<18} {:>14.2} {:>14.3}",
            "all hand-made",
            median(&hand_gbps),
            median(&hand_rtt)
        );
        println!(
            "throughput ratio brindle / hand-made: {tput_ratio:.3} (goal >= 0.95){}",
            if tput_ratio >= 0.95 {
                ""
            } else {
                "  BELOW GOAL"
            }
        );
        println!("RTT ratio hand-made / brindle:        {rtt_ratio:.3}");
        println!(
            "block claim -> route in peer kernel:  median {:.0} ms, max {:.0} ms over {} claims (goal <= 1000 ms){}",
            median(&claim_ms),
            claim_max,
            claim_ms.len(),
            if claim_max <= 1000.0 { "" } else { "  ABOVE GOAL" }
        );
        println!(
            "release -> withdrawal in peer kernel: median {:.0} ms",
            median(&withdraw_ms)
        );
        for r in &rules {
            println!(
                "new endpoint -> rules in force, {:>5} endpoints in the set: median {:.1} ms, max {:.1} ms over {} probes",
                r.endpoints,
                median(&r.ms),
                r.ms.iter().copied().fold(0.0, f64::max),
                r.ms.len()
            );
        }
        println!(
            "endpoint rules: worst median {rules_worst:.1} ms (goal < 50 ms){}; flat from {} to {} endpoints: {}",
            if rules_worst < 50.0 { "" } else { "  ABOVE GOAL" },
            rules.first().map_or(0, |r| r.endpoints),
            rules.last().map_or(0, |r| r.endpoints),
            if rules_flat { "yes" } else { "NO" }
        );
        println!(
            "(iperf3 {} s x {} runs per phase, medians; ping 50 probes per run; {} rounds)",
            a.seconds, a.runs, a.rounds
        );
    }
}
