//! Fault injection: brindled (and brindle-cni) killed with SIGKILL at random points of
//! create and delete bursts against a real dockerd, restarted at once; afterwards
//! nothing may be left behind (no allocation, endpoint record, `brl` veth or /32 route)
//! once the reconcile's grace period has passed, and no two live containers may ever
//! share an address.
//!
//! One namespace-host (see `brindle_tests::docker`: own etcd, brindled and dockerd,
//! FORWARD policy DROP) with a short reconcile grace (`BRINDLE_RECONCILE_GRACE`). The
//! random points come from a seed, printed; `FAULTS_SEED=N` replays a run, and
//! `FAULTS_RECONCILE_GRACE=1h` shows what is left without the reconcile. The tests
//! skip with a note when not run as root.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use brindle_tests::bins::bin;
use brindle_tests::docker::{exclusive_turn, Host, HostConfig, Scope, IMAGE};
use brindle_tests::netns::Netns;

/// The reconcile settings brindled runs with here: a grace period longer than dockerd's
/// retries of a call that met a dead brindled (1 + 2 + 4 s), a short period.
const GRACE_SECS: u64 = 10;
const PERIOD: &str = "1s";

/// How long everything may take to disappear after the last container is gone: an
/// unrouted record-less veth goes after one grace period, the address it routed after
/// a second one, plus passes and slack.
const SETTLE: Duration = Duration::from_secs(2 * GRACE_SECS + 25);

const NODE: &str = "faulthost";

/// A small deterministic generator (xorshift64*): the random points of a run.
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        (Rng(seed.max(1)), seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The test binary's host, started on first use with the short reconcile settings.
fn fault_host(test: &str) -> Option<MutexGuard<'static, Option<Host>>> {
    let mut guard = exclusive_turn(test)?;
    if guard.is_none() {
        let mut host = Host::start(HostConfig {
            node: NODE.into(),
            ..HostConfig::default()
        });
        // `FAULTS_RECONCILE_GRACE=1h` shows what is left without the reconcile.
        let grace =
            std::env::var("FAULTS_RECONCILE_GRACE").unwrap_or_else(|_| format!("{GRACE_SECS}s"));
        host.brindled_env = vec![
            ("BRINDLE_RECONCILE_GRACE".into(), grace),
            ("BRINDLE_RECONCILE_PERIOD".into(), PERIOD.into()),
        ];
        host.stop_brindled();
        host.start_brindled();
        *guard = Some(host);
    }
    Some(guard)
}

/// SIGKILL brindled and start it again at once.
fn kill_and_restart(host: &mut Host, why: &str, t0: Instant) {
    let pid = host.brindled_pid();
    host.kill_brindled();
    host.start_brindled();
    eprintln!(
        "  +{:>6} ms  kill -9 brindled {pid:?} {why}, restarted as {:?}",
        t0.elapsed().as_millis(),
        host.brindled_pid()
    );
}

/// `docker` against the host's dockerd, from any thread.
fn docker(docker_host: &str, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .env("DOCKER_HOST", docker_host)
        .args(args)
        .output()
        .expect("run docker")
}

/// Running containers on `network` and their addresses there; panics when two share
/// one.
fn assert_unique_addresses(host: &Host, network: &str, when: &str) -> usize {
    let ids = host.docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("network={network}"),
        "--filter",
        "status=running",
    ]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if ids.is_empty() {
        return 0;
    }
    let format =
        format!("{{{{.Name}}}} {{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let mut args = vec!["inspect", "-f", format.as_str()];
    args.extend(&ids);
    let out = docker(&host.docker_host(), &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut by_ip: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(ip)) = (parts.next(), parts.next()) else {
            continue;
        };
        by_ip
            .entry(ip.to_string())
            .or_default()
            .push(name.to_string());
    }
    let shared: Vec<_> = by_ip.iter().filter(|(_, names)| names.len() > 1).collect();
    assert!(
        shared.is_empty(),
        "{when}: live containers share an address: {shared:?}\nbrindled:\n{}",
        host.log_tail("brindled.log", 60)
    );
    by_ip.len()
}

/// Addresses allocated in `pool`.
fn allocated(host: &Host, pool: &str) -> u64 {
    host.brindle_json(&["ipam", "show"])["pools"]
        .as_array()
        .map(|pools| {
            pools
                .iter()
                .filter(|p| p["name"] == pool)
                .filter_map(|p| p["allocated"].as_u64())
                .sum()
        })
        .unwrap_or(0)
}

/// What is left of brindle on the host: allocations in `pool`, this node's endpoint
/// records, `brl` veths, endpoint (/32) routes. Empty when clean.
fn leftovers(host: &Host, pool: &str) -> Vec<String> {
    let mut left = Vec::new();
    let n = allocated(host, pool);
    if n > 0 {
        left.push(format!("{n} addresses allocated in pool {pool}"));
    }
    let eps = host.brindle_json(&["endpoints"]);
    let eps = eps.as_array().cloned().unwrap_or_default();
    if !eps.is_empty() {
        let ids: Vec<String> = eps
            .iter()
            .map(|e| format!("{} {}", e["id"], e["ip"]))
            .collect();
        left.push(format!("{} endpoint records: {ids:?}", eps.len()));
    }
    let links = host.brl_links();
    if !links.is_empty() {
        left.push(format!("{} brl veths: {links:?}", links.len()));
    }
    let routes: Vec<String> = host
        .brindle_routes()
        .into_iter()
        .filter(|r| !r.starts_with("blackhole"))
        .collect();
    if !routes.is_empty() {
        left.push(format!("{} endpoint routes: {routes:?}", routes.len()));
    }
    left
}

/// Wait until nothing is left (within [`SETTLE`]); returns how long it took.
fn assert_nothing_left(host: &Host, pool: &str) -> Duration {
    let start = Instant::now();
    loop {
        let left = leftovers(host, pool);
        if left.is_empty() {
            return start.elapsed();
        }
        if start.elapsed() > SETTLE {
            let log = host.log("brindled.log");
            let repairs: Vec<&str> = log.lines().filter(|l| l.contains("reconcile")).collect();
            panic!(
                "{:?} after everything was removed, still left: {left:#?}\nreconcile log:\n{}\nbrindled:\n{}",
                start.elapsed(),
                repairs[repairs.len().saturating_sub(40)..].join("\n"),
                host.log_tail("brindled.log", 40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The reconcile's repairs in brindled's log (all its runs), by kind.
fn repairs(host: &Host) -> String {
    let log = host.log("brindled.log");
    let count = |what: &str| log.lines().filter(|l| l.contains(what)).count();
    format!(
        "{} veths deleted, {} records removed, {} addresses released",
        count("reconcile: deleted a veth") + count("reconcile: deleted the veth"),
        count("reconcile: removed the record"),
        count("reconcile: released"),
    )
}

/// The `docker run` of one fault container.
fn run_args<'a>(name: &'a str, network: &'a str) -> Vec<&'a str> {
    vec![
        "run",
        "-d",
        "--init",
        "--stop-timeout",
        "1",
        "--name",
        name,
        "--net",
        network,
        IMAGE,
        "sleep",
        "100000",
    ]
}

#[test]
fn docker_bursts_with_brindled_killed_at_random_points_leave_nothing_behind() {
    let Some(mut guard) = fault_host("docker_bursts_with_brindled_killed") else {
        return;
    };
    let host = guard.as_mut().expect("started");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("FAULTS_SEED={seed}");
    const ROUNDS: usize = 6;
    const BURST: usize = 4;

    let cidr = "10.213.0.0/24";
    let mut scope = Scope::new(host, "flt");
    let pool = scope.pool("pool", cidr);
    let network = scope.network("net", &["--subnet", cidr]);
    let owned = scope.detach();
    let docker_host = host.docker_host();

    let t0 = Instant::now();
    let mut all: Vec<String> = Vec::new();
    let mut previous: Vec<String> = Vec::new();
    let (mut started, mut failed) = (0, 0);
    for round in 0..ROUNDS {
        // A burst of `docker run`, brindled killed somewhere inside it.
        let names: Vec<String> = (0..BURST).map(|i| format!("flt-c{round}-{i}")).collect();
        all.extend(names.iter().cloned());
        let delay = Duration::from_millis(rng.below(1500));
        let results: Vec<bool> = std::thread::scope(|s| {
            let workers: Vec<_> = names
                .iter()
                .map(|name| {
                    let (dh, net) = (&docker_host, &network);
                    s.spawn(move || {
                        let out = docker(dh, &run_args(name, net));
                        if !out.status.success() {
                            let err = String::from_utf8_lossy(&out.stderr);
                            eprintln!("  {name}: {}", err.trim());
                        }
                        out.status.success()
                    })
                })
                .collect();
            std::thread::sleep(delay);
            kill_and_restart(host, &format!("during run burst {round}"), t0);
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        started += results.iter().filter(|ok| **ok).count();
        failed += results.iter().filter(|ok| !**ok).count();
        let live = assert_unique_addresses(host, &network, &format!("after run burst {round}"));
        eprintln!(
            "  +{:>6} ms  round {round}: {}/{BURST} started, {live} running",
            t0.elapsed().as_millis(),
            results.iter().filter(|ok| **ok).count()
        );

        // Remove the previous burst (some containers live across a kill), brindled
        // killed somewhere inside that.
        if !previous.is_empty() {
            let delay = Duration::from_millis(rng.below(1200));
            std::thread::scope(|s| {
                for name in &previous {
                    let dh = &docker_host;
                    s.spawn(move || docker(dh, &["rm", "-f", name]));
                }
                std::thread::sleep(delay);
                kill_and_restart(host, &format!("during rm burst {round}"), t0);
            });
            assert_unique_addresses(host, &network, &format!("after rm burst {round}"));
        }
        previous = names;
    }
    eprintln!("{started} containers started, {failed} runs failed (interrupted by a kill)");
    assert!(started > 0, "no container ever started");

    // Remove everything, brindled up; the reconcile has to find the rest.
    let mut args = vec!["rm", "-f"];
    args.extend(all.iter().map(String::as_str));
    let _ = host.docker(&args);
    assert_eq!(assert_unique_addresses(host, &network, "at the end"), 0);
    let took = assert_nothing_left(host, &pool);
    if std::env::var_os("FAULTS_VERBOSE").is_some() {
        let log = host.log("brindled.log");
        for l in log
            .lines()
            .filter(|l| l.contains("reconcile") || l.contains("stopping"))
        {
            eprintln!("    {l}");
        }
    }
    eprintln!(
        "nothing left {took:?} after the last container went (grace {GRACE_SECS}s); repairs: {}; total {:?}",
        repairs(host),
        t0.elapsed()
    );
    drop(Scope::attach(host, owned));
}

/// One CNI invocation of brindle-cni in the host, as a runtime makes it: `fast` through
/// brindled's socket, else directly against etcd.
fn cni(host: &Host, command: &str, cid: &str, netns: &str, pool: &str, fast: bool) -> Child {
    let api = if fast {
        host.api_socket().display().to_string()
    } else {
        "none".to_string()
    };
    let mut child = host
        .nsenter(bin("brindle-cni"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", "")
        .env("CNI_PATH", "")
        .env("BRINDLE_ETCD_ENDPOINTS", "http://127.0.0.1:2379")
        .env("BRINDLE_NODE", NODE)
        .env("BRINDLE_POOL", pool)
        .env("BRINDLE_API_SOCKET", api)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start brindle-cni");
    let conf = br#"{"cniVersion":"1.0.0","name":"faultnet","type":"brindle"}"#;
    use std::io::Write;
    let _ = child.stdin.take().expect("stdin").write_all(conf);
    child
}

#[test]
fn cni_add_killed_midway_then_del_leaves_nothing_behind() {
    let Some(mut guard) = fault_host("cni_add_killed_midway") else {
        return;
    };
    let host = guard.as_mut().expect("started");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("FAULTS_SEED={seed}");
    let mut scope = Scope::new(host, "fltcni");
    let pool = scope.pool("pool", "10.214.0.0/24");
    let owned = scope.detach();
    let t0 = Instant::now();

    for i in 0..8 {
        let fast = i % 2 == 1;
        let cid = format!("fltcni{i:02}{seed:x}");
        let netns = Netns::new("fltcni");
        let delay = Duration::from_millis(rng.below(if fast { 40 } else { 80 }));
        let mut add = cni(host, "ADD", &cid, &netns.path(), &pool, fast);
        std::thread::sleep(delay);
        let what = if fast {
            // The fast path: brindled dies under the ADD it serves.
            kill_and_restart(host, &format!("during fast-path ADD {cid}"), t0);
            "brindled killed"
        } else {
            // The direct path: the plugin itself dies.
            let _ = add.kill();
            "brindle-cni killed"
        };
        let out = add.wait_with_output().expect("wait for ADD");
        eprintln!(
            "  ADD {cid} ({}, {what} after {delay:?}): {}",
            if fast { "fast" } else { "direct" },
            if out.status.success() {
                "completed".to_string()
            } else {
                format!(
                    "failed: {}",
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .chars()
                        .take(160)
                        .collect::<String>()
                )
            }
        );
        // The runtime's DEL of the failed ADD; then it drops the netns.
        let del = cni(host, "DEL", &cid, &netns.path(), &pool, fast)
            .wait_with_output()
            .expect("wait for DEL");
        assert!(
            del.status.success(),
            "DEL of {cid} after an interrupted ADD failed: {}{}",
            String::from_utf8_lossy(&del.stdout),
            String::from_utf8_lossy(&del.stderr)
        );
        drop(netns);
    }
    let took = assert_nothing_left(host, &pool);
    eprintln!(
        "nothing left {took:?} after the last DEL; total {:?}",
        t0.elapsed()
    );
    drop(Scope::attach(host, owned));
}

/// A graceful stop (SIGTERM) in the middle of `docker run` and `docker rm` bursts:
/// the calls in flight finish, later ones wait for the next brindled (dockerd retries),
/// so every container starts and goes, and nothing is left for the reconcile.
#[test]
fn sigterm_during_bursts_finishes_every_call_and_leaves_nothing() {
    let Some(mut guard) = fault_host("sigterm_during_bursts") else {
        return;
    };
    let host = guard.as_mut().expect("started");
    let (mut rng, seed) = Rng::seeded();
    eprintln!("FAULTS_SEED={seed}");
    let cidr = "10.215.0.0/24";
    let mut scope = Scope::new(host, "fltterm");
    let pool = scope.pool("pool", cidr);
    let network = scope.network("net", &["--subnet", cidr]);
    let owned = scope.detach();
    let docker_host = host.docker_host();
    let t0 = Instant::now();
    let restart = |host: &mut Host, why: &str| {
        let pid = host.brindled_pid();
        host.stop_brindled();
        host.start_brindled();
        eprintln!(
            "  +{:>6} ms  SIGTERM brindled {pid:?} {why}, restarted as {:?}",
            t0.elapsed().as_millis(),
            host.brindled_pid()
        );
    };

    let names: Vec<String> = (0..6).map(|i| format!("fltterm-c{i}")).collect();
    let delay = Duration::from_millis(rng.below(800));
    let runs: Vec<(String, bool, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .iter()
            .map(|name| {
                let (dh, net) = (&docker_host, &network);
                s.spawn(move || {
                    let out = docker(dh, &run_args(name, net));
                    let err = String::from_utf8_lossy(&out.stderr).into_owned();
                    (name.clone(), out.status.success(), err)
                })
            })
            .collect();
        std::thread::sleep(delay);
        restart(host, "during the run burst");
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let failed: Vec<_> = runs.iter().filter(|(_, ok, _)| !ok).collect();
    assert!(
        failed.is_empty(),
        "docker run failed across a graceful stop: {failed:#?}\nbrindled:\n{}",
        host.log_tail("brindled.log", 40)
    );
    assert_eq!(
        assert_unique_addresses(host, &network, "after the runs"),
        names.len()
    );

    let delay = Duration::from_millis(rng.below(800));
    let removed: Vec<bool> = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .iter()
            .map(|name| {
                let dh = &docker_host;
                s.spawn(move || docker(dh, &["rm", "-f", name]).status.success())
            })
            .collect();
        std::thread::sleep(delay);
        restart(host, "during the rm burst");
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    assert!(
        removed.iter().all(|ok| *ok),
        "docker rm failed: {removed:?}"
    );
    // Well inside the grace period: nothing was left for the reconcile to find.
    let start = Instant::now();
    let left = loop {
        let left = leftovers(host, &pool);
        if left.is_empty() || start.elapsed() > Duration::from_secs(GRACE_SECS / 2) {
            break left;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        left.is_empty(),
        "left after a graceful stop: {left:#?}\nbrindled:\n{}",
        host.log_tail("brindled.log", 40)
    );
    eprintln!(
        "all {} runs and removals done across two graceful stops, nothing left after {:?}",
        names.len(),
        start.elapsed()
    );
    drop(Scope::attach(host, owned));
}
