//! `bench-docker`: how much a brindle network adds to `docker run`, next to Docker's
//! built-in bridge, in one run on one dockerd.
//!
//! Each sample is the wall time of `docker run --rm --net NET IMAGE true` (create, start,
//! exit, remove), taken round-robin so drift hits every network alike, for:
//! - `none`: the baseline;
//! - `bridge`: Docker's built-in default bridge;
//! - a user-defined bridge network (`docker network create -d bridge`);
//! - a brindle network.
//!
//! A network's setup overhead is its median minus the median of `none`; the figures of
//! merit are overhead(brindle) / overhead(bridge) (goal <= 1.0) and the same against
//! the user-defined bridge. The second is the like-for-like one: Docker gives every
//! user-defined network, whatever its driver, an embedded DNS resolver, set up in each
//! container by running `iptables` inside it, and skips that for the default bridge
//! only, so no network plugin can avoid that cost.
//!
//! Runs a namespace-host (etcd, brindled, dockerd with its default iptables handling;
//! see `brindle_tests::docker`) with the plugin published as `brindlebench`, so it never
//! touches a running e2e suite's `brindle` socket. Needs root.
//!
//! Usage: `bench-docker [--runs N] [--warmup N] [--json] [--keep-logs DIR]` (also
//! `BENCH_RUNS`), or `bench-docker --demo`: instead of timing, walk through a brindle
//! network with a fixed-IP and a dynamic container pinging each other, then
//! `brindle endpoints` (for `make demo`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use brindle_tests::docker::{Host, HostConfig, IMAGE};
use brindle_tests::netns::{is_root, UnreachableRoute};

const SUBNET: &str = "10.210.0.0/16";
const BRIDGE_SUBNET: &str = "10.212.0.0/24";

struct Args {
    runs: usize,
    warmup: usize,
    json: bool,
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
        json: false,
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
            "--json" => args.json = true,
            "--demo" => args.demo = true,
            "--keep-logs" => {
                args.keep_logs = Some(it.next().ok_or("--keep-logs needs a directory")?.into())
            }
            "-h" | "--help" => return Err(
                "usage: bench-docker [--runs N] [--warmup N] [--json] [--keep-logs DIR] | --demo"
                    .into(),
            ),
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

fn bench(args: &Args) -> Result<(), String> {
    let _guard = UnreachableRoute::add(SUBNET);
    let _bridge_guard = UnreachableRoute::add(BRIDGE_SUBNET);
    eprintln!("starting etcd, brindled and dockerd in a network namespace...");
    let host = Host::start(HostConfig {
        plugin: "brindlebench".into(),
        node: "bench".into(),
        iptables: true,
        ..Default::default()
    });
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
    let nets = ["none", "bridge", "benchbridge", "benchnet"];
    let labels = ["none", "bridge", "user-bridge", "brindle"];
    eprintln!(
        "warming up ({} runs each), then {} runs each, round-robin...",
        args.warmup, args.runs
    );
    for _ in 0..args.warmup {
        for net in nets {
            run_once(&host, net)?;
        }
    }
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); nets.len()];
    for i in 0..args.runs {
        // Rotate the order too, so no network always follows the same one.
        for k in 0..nets.len() {
            let n = (i + k) % nets.len();
            samples[n].push(run_once(&host, nets[n])?);
        }
    }
    let s: Vec<Stats> = samples.iter().map(|v| stats(v)).collect();
    let overhead = |i: usize| s[i].median - s[0].median;
    let ratio = overhead(3) / overhead(1);
    let ratio_user = overhead(3) / overhead(2);
    let dockerd = host
        .docker_ok(&["version", "--format", "{{.Server.Version}}"])
        .to_string();

    if args.json {
        let row = |i: usize| {
            serde_json::json!({
                "median_ms": s[i].median, "mean_ms": s[i].mean, "p10_ms": s[i].p10,
                "p90_ms": s[i].p90, "min_ms": s[i].min, "overhead_ms": overhead(i),
            })
        };
        let out = serde_json::json!({
            "runs": args.runs, "dockerd": dockerd,
            "none": row(0), "bridge": row(1), "user_bridge": row(2), "brindle": row(3),
            "ratio_brindle_over_bridge": ratio,
            "ratio_brindle_over_user_bridge": ratio_user,
        });
        println!("{out}");
    } else {
        println!(
            "docker run --rm IMAGE true, {} runs per network (dockerd {dockerd}), milliseconds:",
            args.runs
        );
        println!(
            "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10}",
            "network", "median", "mean", "p10", "p90", "min", "overhead"
        );
        for (i, label) in labels.iter().enumerate() {
            let over = if i == 0 {
                "-".to_string()
            } else {
                format!("{:+.1}", overhead(i))
            };
            println!(
                "{:<12} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10}",
                label, s[i].median, s[i].mean, s[i].p10, s[i].p90, s[i].min, over
            );
        }
        println!(
            "setup overhead over --net none: bridge {:.1} ms, user-defined bridge {:.1} ms, brindle {:.1} ms",
            overhead(1),
            overhead(2),
            overhead(3)
        );
        println!("ratio brindle/bridge: {ratio:.2} (goal <= 1.0, aim 0.7)");
        println!(
            "ratio brindle/user-defined bridge: {ratio_user:.2} (like for like: both get Docker's embedded DNS)"
        );
    }
    if let Some(dir) = &args.keep_logs {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        for log in ["brindled.log", "dockerd.log"] {
            std::fs::write(dir.join(log), host.log(log))
                .map_err(|e| format!("write {}: {e}", dir.join(log).display()))?;
        }
    }
    drop(host);
    Ok(())
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
