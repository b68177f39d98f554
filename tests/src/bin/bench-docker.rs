//! `bench-docker`: how much a brindle network adds to `docker run`, next to Docker's
//! built-in bridge, in one run on one dockerd.
//!
//! Each sample is the wall time of `docker run --rm --net NET IMAGE true` (create, start,
//! exit, remove), taken round-robin so drift hits every network alike, for:
//! - `none`: the baseline;
//! - `bridge`: Docker's built-in default bridge;
//! - a user-defined bridge network (`docker network create -d bridge`);
//! - a user-defined macvlan network (its parent a veth inside the host's namespace);
//! - a brindle network.
//!
//! A network's setup overhead is its median minus the median of `none`; the figure of
//! merit is overhead(brindle) / overhead(user-defined bridge) (goal <= 0.7), the
//! like-for-like one: Docker gives every user-defined network, whatever its driver, an
//! embedded DNS resolver, set up in each container by running `iptables` inside it, and
//! skips that for the default bridge only, so no network plugin can avoid that cost.
//! The macvlan network measures that floor in the same run: its driver is built into
//! dockerd (no remote calls) and makes one link per container (no bridge, no iptables),
//! so its overhead is close to what dockerd spends on any user-defined network.
//!
//! The sequential table also shows each network's p99, with the goal brindle p99 <= 3 x
//! its p50.
//!
//! During the sequential phase one long-running container stays on each network, as on
//! a host that runs containers: brindle then allocates from the block this node already
//! holds, as it does on such a host. `--idle` leaves the networks empty in between, so
//! each brindle run is the first container of an idle node and also claims the node's
//! block (and releases it at the end: one more write each way).
//!
//! Then brindled's own share, from its log (`docker call call=... micros=N`, debug
//! level): per Docker call of the sequential phase's brindle runs, how many each
//! container makes and their median time, and brindled's total per container (the
//! median of the per-container sums), with the goal brindled <= 5 ms per container.
//!
//! Then a burst phase: `--burst N` (default 50) `docker run --rm` started at once and
//! all awaited, on the brindle network, the user-defined bridge (the like-for-like
//! baseline) and the default bridge, `--burst-rounds R` times each (default 3), the
//! order rotating so each network goes first in turn. Per network: the median wall
//! time of the whole burst, the failed runs (each with its stderr's first line) and
//! what a burst left behind (containers; for brindle, addresses, endpoint records and
//! veths). Goal: brindle's burst no slower than the user-defined bridge's (ratio <= 1.0).
//! A failed run or a leftover makes the benchmark exit 1 after printing its figures.
//!
//! Runs a namespace-host (etcd, brindled, dockerd with its default iptables handling;
//! see `brindle_tests::docker`) with the plugin published as `brindlebench`, so it never
//! touches a running e2e suite's `brindle` socket. Needs root.
//!
//! Usage: `bench-docker [--runs N] [--warmup N] [--burst N] [--burst-rounds R] [--idle]
//! [--json] [--keep-logs DIR]` (also `BENCH_RUNS`; `--burst 0` or `--burst-rounds 0` skips the
//! burst phase), or `bench-docker --demo`: instead of timing, walk through a brindle
//! network with a fixed-IP and a dynamic container pinging each other, then
//! `brindle endpoints` (for `make demo`).

use brindle_tests::benchfmt::{met, print_failures};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use brindle_tests::docker::{Host, HostConfig, IMAGE};
use brindle_tests::netns::{is_root, UnreachableRoute};

const SUBNET: &str = "10.210.0.0/16";
const BRIDGE_SUBNET: &str = "10.212.0.0/24";
const MACVLAN_SUBNET: &str = "10.213.0.0/24";
/// The macvlan network's parent: one end of a veth pair whose both ends stay in the
/// host's namespace, so its containers reach nothing outside it (a veth, since not
/// every kernel has the dummy driver).
const MACVLAN_PARENT: &str = "benchmv0";
const MACVLAN_PEER: &str = "benchmv1";

struct Args {
    runs: usize,
    warmup: usize,
    /// `docker run`s started at once in one burst (0: no burst phase).
    burst: usize,
    /// Bursts per network (0: no burst phase).
    burst_rounds: usize,
    json: bool,
    /// No long-running container on the networks during the sequential phase.
    idle: bool,
    /// Copy brindled's and dockerd's logs here at the end.
    keep_logs: Option<std::path::PathBuf>,
    /// Show the demo instead of timing.
    demo: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: std::env::var("BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
        warmup: 3,
        burst: 50,
        burst_rounds: 3,
        json: false,
        idle: false,
        keep_logs: None,
        demo: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |flag: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{flag} needs a number"))
        };
        match a.as_str() {
            "--runs" => args.runs = number("--runs")?,
            "--warmup" => args.warmup = number("--warmup")?,
            "--burst" => args.burst = number("--burst")?,
            "--burst-rounds" => args.burst_rounds = number("--burst-rounds")?,
            "--json" => args.json = true,
            "--idle" => args.idle = true,
            "--demo" => args.demo = true,
            "--keep-logs" => {
                args.keep_logs = Some(it.next().ok_or("--keep-logs needs a directory")?.into())
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench-docker [--runs N] [--warmup N] [--burst N] [--burst-rounds R] \
                 [--idle] [--json] [--keep-logs DIR] | --demo"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    Ok(args)
}

/// Order statistics of one network's samples, in milliseconds.
struct Stats {
    median: f64,
    mean: f64,
    p10: f64,
    p90: f64,
    p99: f64,
    min: f64,
}

fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: at(0.5),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
        p10: at(0.1),
        p90: at(0.9),
        p99: at(0.99),
        min: ms[0],
    }
}

fn run_once(host: &Host, net: &str) -> Result<Duration, String> {
    let start = Instant::now();
    let out = host.docker(&["run", "--rm", "--net", net, IMAGE, "true"]);
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "docker run --net {net} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(took)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-docker: {e}");
            return ExitCode::from(2);
        }
    };
    if !is_root() {
        eprintln!("bench-docker: needs root (it starts dockerd in a network namespace)");
        return ExitCode::FAILURE;
    }
    let result = if args.demo { demo() } else { bench(&args) };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-docker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The sequential phase's networks, as passed to `--net`, and their labels.
const NETS: [&str; 5] = ["none", "bridge", "benchbridge", "benchmacvlan", "benchnet"];
const LABELS: [&str; 5] = ["none", "bridge", "user-bridge", "macvlan", "brindle"];

/// The burst phase's networks, brindle first: (network, label, JSON key). The
/// user-defined bridge is the like-for-like baseline (see the module doc).
const BURST_NETS: [(&str, &str, &str); 3] = [
    ("benchnet", "brindle", "brindle"),
    ("benchbridge", "user-bridge", "user_bridge"),
    ("bridge", "bridge", "bridge"),
];
const BURST_BRINDLE: usize = 0;
const BURST_BASELINE: usize = 1;
const BURST_BRIDGE: usize = 2;

/// The goal on the sequential tail: p99 at most this many times p50.
const P99_GOAL: f64 = 3.0;
/// Indices in [`NETS`]: the default bridge, the user-defined bridge, the macvlan
/// network (Docker's own leanest driver: the floor, see the module doc) and brindle.
const SEQ_BRIDGE: usize = 1;
const SEQ_USER_BRIDGE: usize = 2;
const SEQ_MACVLAN: usize = 3;
const SEQ_BRINDLE: usize = 4;
/// The goal on brindle's overhead against the user-defined bridge's.
const USER_BRIDGE_GOAL: f64 = 0.7;
/// The goal on brindled's own time per container (all its Docker calls), ms.
const BRINDLED_GOAL_MS: f64 = 5.0;

fn bench(args: &Args) -> Result<(), String> {
    let _guard = UnreachableRoute::add(SUBNET);
    let _bridge_guard = UnreachableRoute::add(BRIDGE_SUBNET);
    let _macvlan_guard = UnreachableRoute::add(MACVLAN_SUBNET);
    eprintln!("starting etcd, brindled and dockerd in a network namespace...");
    let host = Host::start(HostConfig {
        plugin: "brindlebench".into(),
        node: "bench".into(),
        iptables: true,
        ..Default::default()
    });
    create_networks(&host);
    let resident = if args.idle {
        Vec::new()
    } else {
        start_resident_containers(&host)?
    };
    let seq = sequential_phase(&host, args);
    // Gone before the bursts, whose leftover check expects empty networks.
    for name in &resident {
        host.docker_ok(&["rm", "-f", name]);
    }
    let seq = seq?;
    let s: Vec<Stats> = seq.samples.iter().map(|v| stats(v)).collect();
    let calls = CallBreakdown::from_log(&brindled_log(&host), &seq.brindle_marks);
    let bursts = if args.burst > 0 && args.burst_rounds > 0 {
        Some(burst_phase(&host, args))
    } else {
        None
    };
    let dockerd = host
        .docker_ok(&["version", "--format", "{{.Server.Version}}"])
        .to_string();
    if args.json {
        print_json(args, &dockerd, &s, &calls, bursts.as_deref());
    } else {
        print_sequential(args, &dockerd, &s);
        print_brindled_calls(&calls);
        if let Some(b) = &bursts {
            print_bursts(args, b);
        }
    }
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        for log in ["brindled.log", "dockerd.log"] {
            std::fs::write(dir.join(log), host.log(log))
                .map_err(|e| format!("write {}: {e}", dir.join(log).display()))?;
        }
    }
    drop(host);
    // Figures first, then the verdict: a burst that lost runs or left state behind is a
    // bug to look at, whatever its time.
    match &bursts {
        Some(b) => burst_verdict(b),
        None => Ok(()),
    }
}

fn create_networks(host: &Host) {
    host.docker_ok(&[
        "network",
        "create",
        "-d",
        "brindlebench",
        "--ipam-driver",
        "brindlebench",
        "--subnet",
        SUBNET,
        "benchnet",
    ]);
    host.docker_ok(&[
        "network",
        "create",
        "-d",
        "bridge",
        "--subnet",
        BRIDGE_SUBNET,
        "benchbridge",
    ]);
    for ip_args in [
        &[
            "link",
            "add",
            MACVLAN_PARENT,
            "type",
            "veth",
            "peer",
            "name",
            MACVLAN_PEER,
        ][..],
        &["link", "set", MACVLAN_PARENT, "up"],
        &["link", "set", MACVLAN_PEER, "up"],
    ] {
        let out = host.nsenter("ip").args(ip_args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            ip_args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let parent = format!("parent={MACVLAN_PARENT}");
    host.docker_ok(&[
        "network",
        "create",
        "-d",
        "macvlan",
        "-o",
        &parent,
        "--subnet",
        MACVLAN_SUBNET,
        "benchmacvlan",
    ]);
}

/// One long-running container on each network but `none`, named after it: the host
/// runs containers while the sequential phase measures (see the module doc).
fn start_resident_containers(host: &Host) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for net in NETS.iter().filter(|n| **n != "none") {
        let name = format!("resident-{net}");
        let out = host.docker(&[
            "run", "-d", "--init", "--name", &name, "--net", net, IMAGE, "sleep", "100000",
        ]);
        if !out.status.success() {
            return Err(format!(
                "docker run -d --net {net} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        names.push(name);
    }
    Ok(names)
}

/// The sequential phase's samples per network, and where each measured brindle run's
/// Docker calls start in brindled's log.
struct Sequential {
    samples: Vec<Vec<Duration>>,
    /// Byte offsets in brindled.log: run i's calls lie between marks i and i + 1 (the
    /// last mark is the phase's end). The other networks' runs in between call no
    /// brindle driver, so a call logged after its `docker run` returned still counts.
    brindle_marks: Vec<u64>,
}

/// Warm-up, then `runs` samples per network, round-robin.
fn sequential_phase(host: &Host, args: &Args) -> Result<Sequential, String> {
    eprintln!(
        "warming up ({} runs each), then {} runs each, round-robin...",
        args.warmup, args.runs
    );
    for _ in 0..args.warmup {
        for net in NETS {
            run_once(host, net)?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); NETS.len()];
    let mut brindle_marks = Vec::new();
    for i in 0..args.runs {
        // Rotate the order too, so no network always follows the same one.
        for k in 0..NETS.len() {
            let n = (i + k) % NETS.len();
            if n == SEQ_BRINDLE {
                brindle_marks.push(brindled_log_len(host));
            }
            samples[n].push(run_once(host, NETS[n])?);
        }
    }
    brindle_marks.push(brindled_log_len(host));
    Ok(Sequential {
        samples,
        brindle_marks,
    })
}

// --- brindled's own time per Docker call ------------------------------------------------

fn brindled_log_path(host: &Host) -> std::path::PathBuf {
    host.dir().join("brindled.log")
}

/// brindled.log's size now: where the next call's line will start.
fn brindled_log_len(host: &Host) -> u64 {
    std::fs::metadata(brindled_log_path(host)).map_or(0, |m| m.len())
}

/// brindled.log as bytes, so the marks taken as sizes index it.
fn brindled_log(host: &Host) -> Vec<u8> {
    std::fs::read(brindled_log_path(host)).unwrap_or_default()
}

/// brindled's Docker calls during the sequential phase's measured brindle runs.
struct CallBreakdown {
    containers: usize,
    /// Per call (`IpamDriver.RequestAddress`, ...), in order of first appearance: the
    /// time of each, microseconds.
    calls: Vec<(String, Vec<u64>)>,
    /// brindled's time per container: the sum of its calls, microseconds.
    per_container: Vec<u64>,
    /// Releases committed after `ReleaseAddress` answered: how long after, microseconds.
    commits: Vec<u64>,
}

impl CallBreakdown {
    /// The calls in each window between consecutive `marks` of `log`.
    fn from_log(log: &[u8], marks: &[u64]) -> Self {
        let mut out = CallBreakdown {
            containers: marks.len().saturating_sub(1),
            calls: Vec::new(),
            per_container: Vec::new(),
            commits: Vec::new(),
        };
        for w in marks.windows(2) {
            let end = (w[1] as usize).min(log.len());
            let start = (w[0] as usize).min(end);
            let text = String::from_utf8_lossy(&log[start..end]);
            let mut sum = 0;
            for (name, micros) in text.lines().filter_map(docker_call) {
                sum += micros;
                out.add(name, micros);
            }
            out.commits
                .extend(text.lines().filter_map(release_committed));
            out.per_container.push(sum);
        }
        out
    }

    fn add(&mut self, name: &str, micros: u64) {
        match self.calls.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(micros),
            None => self.calls.push((name.to_string(), vec![micros])),
        }
    }

    /// How many times a container makes a call, on average.
    fn per_container_count(&self, times: &[u64]) -> f64 {
        times.len() as f64 / self.containers.max(1) as f64
    }

    /// The median of the per-container sums, ms (`None` without a logged call).
    fn container_ms(&self) -> Option<f64> {
        if self.calls.is_empty() {
            return None;
        }
        Some(median_us(&self.per_container) as f64 / 1e3)
    }

    /// Sum over the calls of median x count per container, ms: the same figure built
    /// from the per-call rows.
    fn sum_of_medians_ms(&self) -> f64 {
        let us: f64 = self
            .calls
            .iter()
            .map(|(_, t)| median_us(t) as f64 * self.per_container_count(t))
            .sum();
        us / 1e3
    }

    fn goal_met(&self) -> Option<bool> {
        self.container_ms().map(|ms| ms <= BRINDLED_GOAL_MS)
    }
}

/// `(call, micros)` of a `docker call` line (`call=/IpamDriver.RequestAddress status=200
/// micros=12617`), the call without its leading slash.
fn docker_call(line: &str) -> Option<(&str, u64)> {
    if !line.contains(" docker call ") {
        return None;
    }
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
    };
    let name = field("call")?.trim_start_matches('/');
    Some((name, field("micros")?.parse().ok()?))
}

/// `commit_us` of brindled's `address released` line: a release committed that long
/// after `ReleaseAddress` answered.
fn release_committed(line: &str) -> Option<u64> {
    if !line.contains(" address released ") {
        return None;
    }
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("commit_us="))?
        .parse()
        .ok()
}

/// The median as [`stats`] takes it (the upper middle of an even count).
fn median_us(v: &[u64]) -> u64 {
    let mut s = v.to_vec();
    s.sort_unstable();
    s.get(((s.len().max(1) - 1) as f64 * 0.5).round() as usize)
        .copied()
        .unwrap_or(0)
}

fn print_brindled_calls(b: &CallBreakdown) {
    println!(
        "brindled's time per Docker call, {} brindle container(s) of the sequential phase (from its log):",
        b.containers
    );
    println!("{:<42} {:>14} {:>10}", "call", "per container", "median ms");
    for (name, times) in &b.calls {
        println!(
            "{name:<42} {:>14.2} {:>10.3}",
            b.per_container_count(times),
            median_us(times) as f64 / 1e3
        );
    }
    let Some(ms) = b.container_ms() else {
        println!(
            "goal: brindled's own time per container at most {BRINDLED_GOAL_MS:.0} ms: \
             unknown, no `docker call` line in brindled's log (debug level)"
        );
        return;
    };
    println!(
        "brindled per container: {ms:.2} ms (median of per-container sums; sum of per-call medians x count {:.2} ms)",
        b.sum_of_medians_ms()
    );
    if !b.commits.is_empty() {
        println!(
            "ReleaseAddress's write, committed after its answer (not in the figures above): median {:.3} ms after the answer, {} release(s)",
            median_us(&b.commits) as f64 / 1e3,
            b.commits.len()
        );
    }
    println!(
        "goal: brindled's own time per container at most {BRINDLED_GOAL_MS:.0} ms: {ms:.2} ms ({})",
        met(ms <= BRINDLED_GOAL_MS)
    );
}

fn brindled_calls_json(b: &CallBreakdown) -> serde_json::Value {
    let calls: Vec<serde_json::Value> = b
        .calls
        .iter()
        .map(|(name, times)| {
            serde_json::json!({
                "call": name,
                "per_container": b.per_container_count(times),
                "median_us": median_us(times),
            })
        })
        .collect();
    serde_json::json!({
        "containers": b.containers,
        "calls": calls,
        "per_container_ms": b.container_ms(),
        "sum_of_medians_ms": b.sum_of_medians_ms(),
        "release_commit_after_answer_us": (!b.commits.is_empty()).then(|| median_us(&b.commits)),
        "goal_ms": BRINDLED_GOAL_MS,
        "goal_met": b.goal_met(),
    })
}

/// Setup overhead of network `i`: its median minus the median of `none`.
fn overhead(s: &[Stats], i: usize) -> f64 {
    s[i].median - s[0].median
}

fn tail_ratio(s: &Stats) -> f64 {
    s.p99 / s.median
}

fn print_sequential(args: &Args, dockerd: &str, s: &[Stats]) {
    println!(
        "docker run --rm IMAGE true, {} runs per network (dockerd {dockerd}), {}, milliseconds:",
        args.runs,
        if args.idle {
            "networks otherwise empty (--idle)"
        } else {
            "one container left running on each network"
        }
    );
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "network", "median", "mean", "p10", "p90", "p99", "min", "overhead"
    );
    for (i, label) in LABELS.iter().enumerate() {
        let over = if i == 0 {
            "-".to_string()
        } else {
            format!("{:+.1}", overhead(s, i))
        };
        println!(
            "{:<12} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10}",
            label, s[i].median, s[i].mean, s[i].p10, s[i].p90, s[i].p99, s[i].min, over
        );
    }
    println!(
        "setup overhead over --net none: bridge {:.1} ms, user-defined bridge {:.1} ms, macvlan {:.1} ms, brindle {:.1} ms",
        overhead(s, SEQ_BRIDGE),
        overhead(s, SEQ_USER_BRIDGE),
        overhead(s, SEQ_MACVLAN),
        overhead(s, SEQ_BRINDLE)
    );
    let ratio = overhead(s, SEQ_BRINDLE) / overhead(s, SEQ_BRIDGE);
    let ratio_user = overhead(s, SEQ_BRINDLE) / overhead(s, SEQ_USER_BRIDGE);
    let floor = overhead(s, SEQ_MACVLAN) / overhead(s, SEQ_USER_BRIDGE);
    println!("ratio brindle/bridge: {ratio:.2}");
    println!(
        "ratio brindle/user-defined bridge: {ratio_user:.2} (goal <= {USER_BRIDGE_GOAL}: {}; like for like: both get Docker's embedded DNS)",
        met(ratio_user <= USER_BRIDGE_GOAL)
    );
    println!(
        "floor: macvlan/user-defined bridge {floor:.2} (Docker's leanest driver, one netlink link per \
         container and no remote calls; its overhead is what dockerd spends on any user-defined network); \
         brindle/macvlan {:.2}",
        overhead(s, SEQ_BRINDLE) / overhead(s, SEQ_MACVLAN)
    );
    let tail = tail_ratio(&s[SEQ_BRINDLE]);
    println!(
        "brindle p99/p50: {tail:.2} ({:.1} / {:.1} ms; goal <= {P99_GOAL:.1}: {}); \
         user-defined bridge {:.2}, bridge {:.2}",
        s[SEQ_BRINDLE].p99,
        s[SEQ_BRINDLE].median,
        met(tail <= P99_GOAL),
        tail_ratio(&s[SEQ_USER_BRIDGE]),
        tail_ratio(&s[SEQ_BRIDGE])
    );
}

fn print_json(
    args: &Args,
    dockerd: &str,
    s: &[Stats],
    calls: &CallBreakdown,
    bursts: Option<&[Burst]>,
) {
    let row = |i: usize| {
        serde_json::json!({
            "median_ms": s[i].median, "mean_ms": s[i].mean, "p10_ms": s[i].p10,
            "p90_ms": s[i].p90, "p99_ms": s[i].p99, "min_ms": s[i].min,
            "overhead_ms": overhead(s, i),
        })
    };
    let tail = tail_ratio(&s[SEQ_BRINDLE]);
    let out = serde_json::json!({
        "runs": args.runs, "dockerd": dockerd, "idle": args.idle,
        "none": row(0), "bridge": row(SEQ_BRIDGE), "user_bridge": row(SEQ_USER_BRIDGE),
        "macvlan": row(SEQ_MACVLAN), "brindle": row(SEQ_BRINDLE),
        "ratio_brindle_over_bridge": overhead(s, SEQ_BRINDLE) / overhead(s, SEQ_BRIDGE),
        "ratio_brindle_over_user_bridge": overhead(s, SEQ_BRINDLE) / overhead(s, SEQ_USER_BRIDGE),
        "ratio_macvlan_over_user_bridge": overhead(s, SEQ_MACVLAN) / overhead(s, SEQ_USER_BRIDGE),
        "brindle_p99_over_p50": tail,
        "brindle_p99_goal_met": tail <= P99_GOAL,
        "brindled_calls": brindled_calls_json(calls),
        "burst": bursts.map(|b| burst_json(args, b)),
    });
    println!("{out}");
}

// --- the burst phase ------------------------------------------------------------------

/// One network's bursts.
#[derive(Default)]
struct Burst {
    walls: Vec<Duration>,
    /// The first stderr line of every failed run (or why it could not start).
    failures: Vec<String>,
    /// What a burst left behind: containers, brindle addresses, endpoints, veths.
    leftovers: Vec<String>,
}

impl Burst {
    fn median_ms(&self) -> f64 {
        stats(&self.walls).median
    }
}

/// `--burst-rounds` rounds; in each, one burst per network, the first network rotating.
fn burst_phase(host: &Host, args: &Args) -> Vec<Burst> {
    eprintln!(
        "burst phase: {} runs at once, {} round(s) per network...",
        args.burst, args.burst_rounds
    );
    let mut bursts: Vec<Burst> = BURST_NETS.iter().map(|_| Burst::default()).collect();
    for round in 0..args.burst_rounds {
        for k in 0..BURST_NETS.len() {
            let i = (round + k) % BURST_NETS.len();
            let (net, label, _) = BURST_NETS[i];
            let before = (i == BURST_BRINDLE).then(|| brindle_state(host));
            let (wall, failures) = burst_once(host, net, args.burst);
            eprintln!(
                "  round {}: {label} {:.0} ms, {} failed",
                round + 1,
                wall.as_secs_f64() * 1e3,
                failures.len()
            );
            let b = &mut bursts[i];
            b.walls.push(wall);
            b.failures.extend(failures);
            b.leftovers.extend(leftover_containers(host, net));
            if let Some(before) = before {
                b.leftovers.extend(brindle_leftovers(host, &before));
            }
        }
    }
    bursts
}

/// Start `size` `docker run --rm` at once, then wait for every one: the wall time from
/// the first start to the last exit, and the failures.
fn burst_once(host: &Host, net: &str, size: usize) -> (Duration, Vec<String>) {
    let start = Instant::now();
    let children: Vec<std::io::Result<Child>> = (0..size).map(|_| spawn_run(host, net)).collect();
    let mut failures = Vec::new();
    for child in children {
        match child.and_then(Child::wait_with_output) {
            Ok(out) if out.status.success() => {}
            Ok(out) => failures.push(first_line(&out.stderr, out.status)),
            Err(e) => failures.push(format!("could not run docker: {e}")),
        }
    }
    (start.elapsed(), failures)
}

fn spawn_run(host: &Host, net: &str) -> std::io::Result<Child> {
    Command::new("docker")
        .env("DOCKER_HOST", host.docker_host())
        .args(["run", "--rm", "--net", net, IMAGE, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
}

/// What a failed run said: its stderr's first line, or its exit status when silent.
fn first_line(stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    match text.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => line.to_string(),
        None => format!("exited with {status}, no stderr"),
    }
}

/// Containers still on `net` after a burst (`--rm` removes them before `docker run`
/// exits, so there should be none), each removed so the next burst starts clean.
fn leftover_containers(host: &Host, net: &str) -> Vec<String> {
    let filter = format!("network={net}");
    let ids = host.docker_ok(&["ps", "-aq", "--filter", &filter]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let mut rm = vec!["rm", "-f"];
    rm.extend(&ids);
    let _ = host.docker(&rm);
    ids.iter()
        .map(|id| format!("container {id} left on {net}"))
        .collect()
}

/// What brindle holds on the bench host: addresses, endpoint records, host veths.
#[derive(Debug, PartialEq, Eq)]
struct BrindleState {
    allocated: u64,
    endpoints: usize,
    veths: usize,
}

fn brindle_state(host: &Host) -> BrindleState {
    let allocated = host.brindle_json(&["ipam", "show"])["pools"]
        .as_array()
        .map(|pools| pools.iter().filter_map(|p| p["allocated"].as_u64()).sum())
        .unwrap_or(0);
    let endpoints = host
        .brindle_json(&["endpoints"])
        .as_array()
        .map_or(0, Vec::len);
    BrindleState {
        allocated,
        endpoints,
        veths: host.brl_links().len(),
    }
}

/// brindle's state after a burst against the state before it. Docker releases
/// everything before `docker run --rm` returns; a few seconds of slack still separate a
/// slow release from a leak.
fn brindle_leftovers(host: &Host, before: &BrindleState) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = brindle_state(host);
        if now == *before {
            return Vec::new();
        }
        if Instant::now() > deadline {
            return vec![format!(
                "brindle holds {} addresses, {} endpoints, {} veths (before the burst: {}, {}, {})",
                now.allocated,
                now.endpoints,
                now.veths,
                before.allocated,
                before.endpoints,
                before.veths
            )];
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn burst_ratio(b: &[Burst], baseline: usize) -> f64 {
    b[BURST_BRINDLE].median_ms() / b[baseline].median_ms()
}

fn print_bursts(args: &Args, b: &[Burst]) {
    println!(
        "burst: {} x docker run --rm started at once, {} round(s) per network, wall time of the whole burst (ms):",
        args.burst, args.burst_rounds
    );
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "network", "median", "min", "max", "failed", "leftovers"
    );
    for (i, (_, label, _)) in BURST_NETS.iter().enumerate() {
        let s = stats(&b[i].walls);
        let max = b[i]
            .walls
            .iter()
            .max()
            .map_or(0.0, |d| d.as_secs_f64() * 1e3);
        println!(
            "{:<12} {:>8.0} {:>8.0} {:>8.0} {:>8} {:>10}",
            label,
            s.median,
            s.min,
            max,
            b[i].failures.len(),
            b[i].leftovers.len()
        );
    }
    let ratio = burst_ratio(b, BURST_BASELINE);
    println!(
        "burst ratio brindle/user-defined bridge: {ratio:.2} (goal <= 1.0: {})",
        met(ratio <= 1.0)
    );
    println!(
        "burst ratio brindle/bridge: {:.2}",
        burst_ratio(b, BURST_BRIDGE)
    );
    for (i, (_, label, _)) in BURST_NETS.iter().enumerate() {
        print_failures(label, &b[i].failures);
        for line in &b[i].leftovers {
            println!("  {label}: left behind: {line}");
        }
    }
}

fn burst_json(args: &Args, b: &[Burst]) -> serde_json::Value {
    let mut out = serde_json::json!({
        "size": args.burst,
        "rounds": args.burst_rounds,
        "ratio_brindle_over_user_bridge": burst_ratio(b, BURST_BASELINE),
        "ratio_brindle_over_bridge": burst_ratio(b, BURST_BRIDGE),
        "goal_met": burst_ratio(b, BURST_BASELINE) <= 1.0,
    });
    for (i, (_, _, key)) in BURST_NETS.iter().enumerate() {
        let walls: Vec<f64> = b[i].walls.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        out[*key] = serde_json::json!({
            "median_ms": b[i].median_ms(),
            "walls_ms": walls,
            "failed": b[i].failures.len(),
            "failures": b[i].failures,
            "leftovers": b[i].leftovers,
        });
    }
    out
}

/// An error naming how many runs failed and what was left, when any.
fn burst_verdict(b: &[Burst]) -> Result<(), String> {
    let failed: usize = b.iter().map(|x| x.failures.len()).sum();
    let left: usize = b.iter().map(|x| x.leftovers.len()).sum();
    if failed == 0 && left == 0 {
        return Ok(());
    }
    Err(format!(
        "burst phase: {failed} failed run(s), {left} leftover(s) (details above)"
    ))
}

/// The Docker part of `make demo`, narrated on stdout.
fn demo() -> Result<(), String> {
    const DEMO_SUBNET: &str = "10.230.0.0/24";
    let _guard = UnreachableRoute::add(DEMO_SUBNET);
    eprintln!("starting etcd, brindled and dockerd in a network namespace...");
    let host = Host::start(HostConfig {
        plugin: "brindledemo".into(),
        node: "demo".into(),
        iptables: true,
        ..Default::default()
    });
    let step = |cmd: &str, args: &[&str]| -> Result<String, String> {
        println!("$ {cmd} {}", args.join(" "));
        let out = if cmd == "docker" {
            host.docker(args)
        } else {
            host.brindle(args).output().map_err(|e| e.to_string())?
        };
        let text = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
        if !text.is_empty() {
            println!("{text}");
        }
        if !out.status.success() {
            return Err(format!(
                "{cmd} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    };
    step(
        "docker",
        &[
            "network",
            "create",
            "-d",
            "brindledemo",
            "--ipam-driver",
            "brindledemo",
            "--subnet",
            DEMO_SUBNET,
            "demo",
        ],
    )?;
    let run = |name: &str, extra: &[&str]| -> Result<String, String> {
        let mut args = vec!["run", "-d", "--init", "--name", name, "--net", "demo"];
        args.extend_from_slice(extra);
        args.extend([IMAGE, "sleep", "600"]);
        step("docker", &args)
    };
    run("fixed", &["--ip", "10.230.0.10"])?;
    run("dynamic", &[])?;
    let dynamic_ip = step(
        "docker",
        &[
            "inspect",
            "-f",
            "{{.NetworkSettings.Networks.demo.IPAddress}}",
            "dynamic",
        ],
    )?;
    step("docker", &["exec", "fixed", "ping", "-c2", &dynamic_ip])?;
    step("docker", &["exec", "dynamic", "ping", "-c2", "10.230.0.10"])?;
    step("docker", &["exec", "fixed", "ip", "route"])?;
    // The container id is learnt from dockerd just after the start.
    std::thread::sleep(Duration::from_millis(500));
    step("brindle", &["endpoints"])?;
    step("docker", &["rm", "-f", "fixed", "dynamic"])?;
    step("docker", &["network", "rm", "demo"])?;
    drop(host);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_grouped_by_container_window() {
        let first = "t DEBUG brindle_plugin::docker::http: docker call call=/IpamDriver.RequestAddress status=200 micros=1000\n\
                     t  INFO brindle_plugin::docker: something else micros=99\n\
                     t DEBUG brindle_plugin::docker::http: docker call call=/NetworkDriver.Join status=200 micros=3000\n";
        let second = "t DEBUG brindle_plugin::docker::http: docker call call=/IpamDriver.RequestAddress status=200 micros=2000\n";
        let log = format!("{first}{second}");
        let marks = [0, first.len() as u64, log.len() as u64];
        let b = CallBreakdown::from_log(log.as_bytes(), &marks);
        assert_eq!(b.containers, 2);
        assert_eq!(b.per_container, vec![4000, 2000]);
        let names: Vec<&str> = b.calls.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["IpamDriver.RequestAddress", "NetworkDriver.Join"]);
        assert_eq!(b.per_container_count(&b.calls[1].1), 0.5);
        assert_eq!(b.container_ms(), Some(4.0));
        assert!(b.commits.is_empty());
        let committed = "t  INFO brindle_plugin::docker::ipam_driver: address released ip=10.0.0.2 handle=h endpoint=None commit_us=2150\n";
        let c = CallBreakdown::from_log(committed.as_bytes(), &[0, committed.len() as u64]);
        assert_eq!(c.commits, vec![2150]);
        assert_eq!(
            c.per_container,
            vec![0],
            "not part of brindled's time per container"
        );
    }
}
