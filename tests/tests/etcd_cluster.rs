//! Availability on a 3-member etcd cluster: allocations keep working while a member is
//! stopped, killed (the leader, with kill -9) or frozen (SIGSTOP, as a partition looks
//! from outside); every CLI call works with one member down; a long-lived store keeps
//! working across auth-token expiry and an etcd restart; the agent's watch moves off a
//! frozen member and resumes from its revision; a CNI release brindled commits after
//! answering the DEL gets through a frozen member and a killed leader, and a graceful
//! stop commits it first.
//!
//! The tests share the machine's two cores with etcd's fsyncs, so they run one at a time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use brindle_ipam::pools::NewPool;
use brindle_ipam::store::{Op, Store, StoreError, Txn};
use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam, Keys};
use brindle_plugin::agent::metrics::METRICS;
use brindle_plugin::agent::snapshot::{Prefixes, Snapshot};
use brindle_plugin::agent::watch;
use brindle_tests::bins::{bin, brindle};
use brindle_tests::cni::{eventually, Brindle, Brindled, Call, PluginDir};
use brindle_tests::etcd::EtcdCluster;
use brindle_tests::netns::{is_root, Netns, UnreachableRoute};
use serde_json::{json, Value};

/// The availability budget: no failure later than this after a fault.
const BUDGET: Duration = Duration::from_secs(5);
/// Slack for a process to exit and its pipe to drain after it failed.
const SLACK: Duration = Duration::from_millis(500);

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run brindle")
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli(cluster: &EtcdCluster, args: &[&str]) -> Command {
    let mut c = brindle(&cluster.endpoints_csv(), "admin");
    c.args(args);
    c
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A runtime and a store listing every member, as brindled would have.
fn runtime_and_store(cluster: &EtcdCluster) -> (tokio::runtime::Runtime, EtcdStore) {
    let rt = runtime();
    let store = rt
        .block_on(EtcdStore::connect(&EtcdConfig {
            endpoints: cluster.endpoints(),
            ..EtcdConfig::default()
        }))
        .expect("store");
    (rt, store)
}

fn check_clean(cluster: &EtcdCluster) {
    let out = ok(&mut cli(cluster, &["ipam", "check", "-o", "json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("check JSON");
    assert_eq!(v["clean"].as_bool(), Some(true), "ipam check: {out}");
}

// ------------------------------------------------------------------ allocation burst

/// What one allocating worker saw.
#[derive(Default)]
struct Seen {
    allocated: Vec<(Instant, Ipv4Addr)>,
    failures: Vec<(Instant, String)>,
}

/// Three OS processes at a time (`ipam-node`, one long-lived store each) allocating
/// until stopped; a process that fails is replaced by a fresh one under a new node name.
struct Burst {
    stop: Arc<AtomicBool>,
    workers: Vec<std::thread::JoinHandle<Seen>>,
}

impl Burst {
    fn start(endpoints: &str, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..workers)
            .map(|w| {
                let (stop, endpoints) = (stop.clone(), endpoints.to_string());
                std::thread::spawn(move || allocate_until(w, &endpoints, &stop))
            })
            .collect();
        Burst { stop, workers }
    }

    fn finish(self) -> Vec<Seen> {
        self.stop.store(true, Ordering::Relaxed);
        self.workers
            .into_iter()
            .map(|w| w.join().expect("worker thread"))
            .collect()
    }
}

fn allocate_until(worker: usize, endpoints: &str, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let mut round = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let node = format!("w{worker}r{round}");
        let mut child = Command::new(bin("ipam-node"))
            .args([endpoints, &node, "alloc", "60", "burst"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ipam-node");
        let stdout = child.stdout.take().expect("stdout");
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(ip) = line.trim().parse() {
                seen.allocated.push((Instant::now(), ip));
            }
        }
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().expect("wait ipam-node");
        if !status.success() {
            seen.failures.push((Instant::now(), err.trim().to_string()));
        }
    }
    seen
}

/// One injected fault.
struct Fault {
    what: String,
    at: Instant,
}

/// Zero duplicates; no failure later than the budget after the latest fault; after
/// every fault each worker allocates again within the budget. Prints what it measured.
fn assert_available(seen: &[Seen], faults: &[Fault], end: Instant) {
    let mut owner: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut total = 0;
    for (w, s) in seen.iter().enumerate() {
        for (_, ip) in &s.allocated {
            total += 1;
            if let Some(other) = owner.insert(*ip, w) {
                panic!("{ip} handed out twice (workers {other} and {w})");
            }
        }
    }
    eprintln!("{total} allocations by {} workers", seen.len());
    let first = faults.first().map(|f| f.at).unwrap_or(end);
    for (w, s) in seen.iter().enumerate() {
        for (t, err) in &s.failures {
            let fault = faults.iter().rev().find(|f| f.at <= *t);
            let Some(fault) = fault else {
                panic!("worker {w} failed before any fault: {err}");
            };
            let late = t.duration_since(fault.at);
            eprintln!(
                "worker {w}: failure {:.2}s after {}: {err}",
                late.as_secs_f32(),
                fault.what
            );
            assert!(
                late <= BUDGET + SLACK,
                "worker {w} failed {late:?} after {}: {err}",
                fault.what
            );
        }
        assert!(
            s.allocated.iter().any(|(t, _)| *t < first),
            "worker {w} allocated nothing before the first fault"
        );
    }
    for (i, f) in faults.iter().enumerate() {
        let until = faults.get(i + 1).map(|n| n.at).unwrap_or(end);
        let mut recovery = Duration::ZERO;
        for (w, s) in seen.iter().enumerate() {
            let next = s.allocated.iter().map(|(t, _)| *t).find(|t| *t > f.at);
            let Some(next) = next.filter(|t| *t <= until) else {
                panic!(
                    "worker {w} allocated nothing after {} before the next step",
                    f.what
                );
            };
            recovery = recovery.max(next.duration_since(f.at));
        }
        let gap = max_gap(seen, f.at, until);
        eprintln!(
            "{}: every worker allocated again within {:.2}s; longest pause {:.2}s",
            f.what,
            recovery.as_secs_f32(),
            gap.as_secs_f32()
        );
        assert!(
            recovery <= BUDGET && gap <= BUDGET,
            "{}: a worker needed {recovery:?} to allocate again, or paused {gap:?}",
            f.what
        );
    }
}

/// The longest time any worker went without an allocation in `[from, until]`.
fn max_gap(seen: &[Seen], from: Instant, until: Instant) -> Duration {
    seen.iter()
        .map(|s| {
            let mut last = from;
            let mut gap = Duration::ZERO;
            for (t, _) in s.allocated.iter().filter(|(t, _)| *t > from && *t <= until) {
                gap = gap.max(t.duration_since(last));
                last = *t;
            }
            gap
        })
        .max()
        .unwrap_or_default()
}

#[test]
fn allocations_survive_stop_kill_and_freeze_of_members() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    ok(&mut cli(
        &cluster,
        &[
            "pool",
            "add",
            "burst",
            "--cidr",
            "10.160.0.0/14",
            "--block-size",
            "24",
        ],
    ));
    let burst = Burst::start(&cluster.endpoints_csv(), 3);
    std::thread::sleep(Duration::from_secs(1));
    let mut faults = Vec::new();
    let mut fault = |what: String| {
        eprintln!("fault: {what}");
        faults.push(Fault {
            what,
            at: Instant::now(),
        });
    };

    // (a) Stop each member in turn (the workers' current member among them).
    for i in 0..cluster.size() {
        fault(format!("stop member {i}"));
        cluster.stop(i);
        std::thread::sleep(Duration::from_secs(3));
        cluster.restart(i);
        std::thread::sleep(Duration::from_secs(1));
    }

    // (b) kill -9 the leader mid-burst; `ipam check` must work at once.
    let leader = cluster.wait_leader();
    fault(format!("kill -9 leader {leader}"));
    cluster.kill(leader);
    std::thread::sleep(Duration::from_millis(300));
    let check = Instant::now();
    ok(&mut cli(&cluster, &["ipam", "check", "-o", "json"]));
    eprintln!(
        "ipam check right after the kill took {:.2}s",
        check.elapsed().as_secs_f32()
    );
    std::thread::sleep(Duration::from_secs(3));
    cluster.restart(leader);
    std::thread::sleep(Duration::from_secs(1));

    // (c) Freeze the leader, then a follower (one of them is what workers talk to).
    let leader = cluster.wait_leader();
    let follower = (leader + 1) % cluster.size();
    for (role, i) in [("leader", leader), ("follower", follower)] {
        fault(format!("SIGSTOP {role} {i}"));
        cluster.pause(i);
        std::thread::sleep(Duration::from_secs(4));
        cluster.resume(i);
        cluster.wait_healthy(i);
        std::thread::sleep(Duration::from_secs(1));
    }

    let end = Instant::now();
    let seen = burst.finish();
    assert_available(&seen, &faults, end);
    check_clean(&cluster);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f32());
}

// ------------------------------------------------------------------ the CLI

#[test]
fn every_cli_call_works_with_one_member_down() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    ok(&mut cli(
        &cluster,
        &["pool", "add", "cli", "--cidr", "10.170.0.0/16"],
    ));
    let alloc_six = |cluster: &EtcdCluster, tag: &str| {
        let mut slowest = Duration::ZERO;
        for k in 0..6 {
            let t = Instant::now();
            let out = ok(&mut cli(
                cluster,
                &["ipam", "alloc", "--handle", &format!("{tag}-{k}")],
            ));
            assert!(
                out.trim().parse::<Ipv4Addr>().is_ok(),
                "alloc printed {out:?}"
            );
            slowest = slowest.max(t.elapsed());
        }
        eprintln!(
            "{tag}: 6 of 6 allocations, slowest {:.2}s",
            slowest.as_secs_f32()
        );
        assert!(slowest < BUDGET, "{tag}: an allocation took {slowest:?}");
    };

    // The first listed member refuses connections: every call moves on at once.
    cluster.stop(0);
    alloc_six(&cluster, "stopped");
    ok(&mut cli(&cluster, &["pool", "list"]));
    ok(&mut cli(
        &cluster,
        &["ipam", "release", "--handle", "stopped-0"],
    ));
    check_clean(&cluster);
    cluster.restart(0);

    // The first listed member is frozen: its TCP handshake succeeds and nothing answers.
    cluster.pause(0);
    alloc_six(&cluster, "frozen");
    ok(&mut cli(&cluster, &["ipam", "show"]));
    cluster.resume(0);

    // Every member down: one clear sentence naming the endpoints, within the budget.
    for i in 0..cluster.size() {
        cluster.stop(i);
    }
    let t = Instant::now();
    let out = run(&mut cli(&cluster, &["ipam", "alloc", "--handle", "outage"]));
    let took = t.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "alloc succeeded with etcd down");
    assert!(stderr.contains("cannot reach etcd"), "{stderr}");
    for e in cluster.endpoints() {
        assert!(stderr.contains(&e), "{e} not named: {stderr}");
    }
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(took < BUDGET + Duration::from_secs(1), "took {took:?}");
    eprintln!(
        "full outage: failed in {:.2}s: {}",
        took.as_secs_f32(),
        stderr.trim()
    );
    eprintln!("took {:.1}s", started.elapsed().as_secs_f32());
}

// ------------------------------------------------------------------ auth tokens

fn put(key: &str, value: &str) -> Txn {
    Txn {
        compares: Vec::new(),
        ops: vec![Op::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
        }],
        read_on_conflict: Vec::new(),
    }
}

#[test]
fn a_long_lived_store_survives_token_expiry_and_an_etcd_restart() {
    let _serial = serial();
    let started = Instant::now();
    let mut cluster =
        EtcdCluster::start_with(1, &["--auth-token", "simple", "--auth-token-ttl", "2"]);
    cluster.enable_auth("s3cret");
    let endpoint = cluster.endpoint(0).to_string();
    let rt = runtime();
    let store = rt
        .block_on(EtcdStore::connect(&EtcdConfig {
            endpoints: vec![endpoint.clone()],
            username: Some("root".into()),
            password: Some("s3cret".into()),
            ..EtcdConfig::default()
        }))
        .expect("store");
    // A client that never logs in again shows the token really expires.
    let mut raw = rt
        .block_on(etcd_client::Client::connect(
            [endpoint.as_str()],
            Some(etcd_client::ConnectOptions::new().with_user("root", "s3cret")),
        ))
        .expect("raw client");
    rt.block_on(store.txn(put("/t/a", "1")))
        .expect("first write");
    rt.block_on(raw.get("/t/a", None)).expect("raw read");

    std::thread::sleep(Duration::from_millis(3500));
    let expired = rt.block_on(raw.get("/t/a", None));
    assert!(
        expired
            .as_ref()
            .is_err_and(|e| e.to_string().contains("invalid auth token")),
        "the token should have expired after its 2 s TTL: {:?}",
        expired.map(|_| ())
    );
    let got = rt.block_on(store.get("/t/a")).expect("read after expiry");
    assert_eq!(got.map(|kv| kv.value), Some(b"1".to_vec()));
    rt.block_on(store.txn(put("/t/a", "2")))
        .expect("write after expiry");

    // Restart: the member forgets every token; a call during the outage fails within
    // the budget, and the same store works again once etcd is back.
    cluster.kill(0);
    let t = Instant::now();
    let down = rt.block_on(store.get("/t/a"));
    assert!(
        matches!(down, Err(StoreError::Unreachable { .. })),
        "expected unreachable: {down:?}"
    );
    assert!(t.elapsed() < BUDGET + SLACK, "took {:?}", t.elapsed());
    cluster.restart(0);
    let got = rt.block_on(store.get("/t/a")).expect("read after restart");
    assert_eq!(got.map(|kv| kv.value), Some(b"2".to_vec()));
    rt.block_on(store.txn(put("/t/a", "3")))
        .expect("write after restart");
    std::thread::sleep(Duration::from_millis(2500));
    rt.block_on(store.get("/t/a"))
        .expect("read after a second expiry");
    eprintln!("took {:.1}s", started.elapsed().as_secs_f32());
}

// ------------------------------------------------------------------ the agent's watch

/// Waits until the published snapshot satisfies `cond`; how long it took.
fn wait_snapshot(
    rx: &mut tokio::sync::watch::Receiver<Arc<Snapshot>>,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Snapshot) -> bool,
) -> Duration {
    let t = Instant::now();
    loop {
        if cond(&rx.borrow_and_update()) {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "{what}: not seen within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_agent_watch_moves_off_a_frozen_member_and_resumes_from_its_revision() {
    let _serial = serial();
    // The watch's warnings (member silent, resumed) help when this fails.
    brindle_plugin::logging::init_stderr("warn");
    let started = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    let (rt, store) = runtime_and_store(&cluster);
    let prefixes = Prefixes::new(&Keys::new("/brindle"));
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let task = rt.spawn(watch::run(store, prefixes, tx));
    wait_snapshot(&mut rx, "first load", Duration::from_secs(10), |s| {
        s.is_loaded()
    });
    let loads = METRICS.snapshot_loads.get();

    // The watch runs on the first member; freeze it, then change something.
    cluster.pause(0);
    ok(&mut cli(
        &cluster,
        &["pool", "add", "p1", "--cidr", "10.180.0.0/24"],
    ));
    let took = wait_snapshot(&mut rx, "pool p1", Duration::from_secs(10), |s| {
        s.pools.values().any(|p| p.name == "p1")
    });
    eprintln!(
        "watch saw a change made while its member was frozen after {:.2}s",
        took.as_secs_f32()
    );
    cluster.resume(0);
    // One fault at a time: with member 0 still catching up, killing another member
    // leaves no quorum (a loaded machine showed "no leader" for over 5 s).
    cluster.wait_healthy(0);

    // Kill the member it moved to: it resumes on the last one left.
    let now_on = 1;
    cluster.kill(now_on);
    ok(&mut cli(
        &cluster,
        &["pool", "add", "p2", "--cidr", "10.180.1.0/24"],
    ));
    let took = wait_snapshot(&mut rx, "pool p2", Duration::from_secs(10), |s| {
        s.pools.values().any(|p| p.name == "p2")
    });
    eprintln!(
        "watch saw a change after its member was killed after {:.2}s",
        took.as_secs_f32()
    );
    assert_eq!(
        METRICS.snapshot_loads.get(),
        loads,
        "the watch reloaded instead of resuming from its revision"
    );
    task.abort();
    cluster.restart(now_on);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f32());
}

// ------------------------------------------------------------------ bounded work

/// A frozen cluster (every member stopped with SIGSTOP): allocations queued in one
/// process behind the same block each fail within the budget of their own start, not
/// one budget after another, and service resumes when the members do.
#[test]
fn queued_allocations_each_fail_within_the_budget_while_the_cluster_is_frozen() {
    let _serial = serial();
    let mut cluster = EtcdCluster::start(3);
    let (rt, store) = runtime_and_store(&cluster);
    let ipam = Arc::new(Ipam::new(store, "/brindle"));
    rt.block_on(ipam.add_pool(NewPool::new("frozen", "10.94.0.0/24".parse().unwrap())))
        .expect("pool");
    let request = |handle: &str| AllocRequest {
        handle: handle.into(),
        node: "n1".into(),
        ..AllocRequest::default()
    };
    // The node's block and the pool list cached, as in a running brindled.
    rt.block_on(ipam.allocate(&request("warm")))
        .expect("warm-up");

    for i in 0..cluster.size() {
        cluster.pause(i);
    }
    let results: Vec<(Result<Ipv4Addr, String>, Duration)> = rt.block_on(async {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let ipam = ipam.clone();
                let req = request(&format!("q{i}"));
                tokio::spawn(async move {
                    let t = Instant::now();
                    let r = ipam.allocate(&req).await;
                    (r.map(|a| a.ip).map_err(|e| e.to_string()), t.elapsed())
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    for i in 0..cluster.size() {
        cluster.resume(i);
    }
    let slowest = results.iter().map(|(_, t)| *t).max().unwrap_or_default();
    for (r, took) in &results {
        let err = r
            .as_ref()
            .expect_err("an allocation succeeded on a frozen cluster");
        assert!(*took < BUDGET, "failed only after {took:?}: {err}");
    }
    eprintln!("20 queued allocations on a frozen cluster: slowest failed after {slowest:?}");

    let t = Instant::now();
    rt.block_on(ipam.allocate(&request("after")))
        .expect("allocation after the members resumed");
    eprintln!("first allocation after resume: {:?}", t.elapsed());
    rt.block_on(ipam.release_handle("warm")).expect("release");
    rt.block_on(ipam.release_handle("after")).expect("release");
    check_clean(&cluster);
}

// ------------------------------------------------------------------ releases after the answer

/// One CNI plugin call through brindled: its result (`Null` for a DEL); panics with the
/// plugin's output on failure.
fn cni_ok(command: &str, cid: &str, ns: &Netns, plugins: &PluginDir, conf: &Value) -> Value {
    Call::new(command, cid, &ns.path(), "eth0")
        .path(plugins.path())
        .run(&plugins.plugin("brindle"), conf)
        .ok()
}

/// The IPAM handles etcd holds, asked of the members that run.
fn handles(cluster: &EtcdCluster) -> Vec<String> {
    let prefix = Keys::default_prefix().handles();
    cluster
        .etcdctl(&["get", "--prefix", "--keys-only", &prefix])
        .lines()
        .filter(|l| !l.is_empty())
        .map(|k| k.trim_start_matches(&prefix).to_string())
        .collect()
}

fn address_of(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().expect("an address");
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

/// brindled answers a CNI DEL once the endpoint is off the network and commits the
/// release after (write-behind). That commit has to get through the same faults as any
/// other write: with the member brindled talks to frozen, and with the leader killed,
/// it commits through the others, and an ADD asking for the released address waits for
/// it instead of failing "in use". A graceful stop with a member frozen commits the
/// pending release before brindled exits.
#[test]
fn releases_answered_before_their_write_commit_with_a_member_frozen_or_the_leader_killed() {
    if !is_root() {
        eprintln!("skipping: needs root (network namespaces, veths, routes)");
        return;
    }
    let _serial = serial();
    let started = Instant::now();
    let mut cluster = EtcdCluster::start(3);
    let cidr = "10.181.0.0/26";
    let _guard = UnreachableRoute::add(cidr);
    ok(&mut cli(&cluster, &["pool", "add", "wb", "--cidr", cidr]));
    let plugins = PluginDir::new();
    let namespaces: Vec<Netns> = (0..6).map(|_| Netns::new("wbe")).collect();
    let mut daemon = Brindled::start(&cluster.endpoints_csv(), "wb");
    let endpoints = cluster.endpoints_csv();
    let conf_for = |daemon: &Brindled| {
        Brindle {
            etcd: endpoints.clone(),
            node: "wb".into(),
            api_socket: daemon.api_socket.display().to_string(),
            pool: Some("wb".into()),
        }
        .main_conf("1.0.0", "wbnet")
    };
    let conf = conf_for(&daemon);
    let with_ip = |ip: &str| {
        let mut c = conf.clone();
        c["runtimeConfig"] = json!({"ips": [ip]});
        c
    };
    let released = |cluster: &EtcdCluster, handle: &str| {
        eventually(Duration::from_secs(20), || {
            !handles(cluster).iter().any(|h| h == handle)
        })
    };

    // (a) The first listed member, the one brindled talks to, frozen.
    let first = cni_ok("ADD", "wb-a1", &namespaces[0], &plugins, &conf);
    let ip = address_of(&first);
    cluster.pause(0);
    eprintln!("fault: SIGSTOP member 0");
    cni_ok("DEL", "wb-a1", &namespaces[0], &plugins, &conf);
    // The same address for another container: it waits for the release's commit.
    let again = cni_ok("ADD", "wb-a2", &namespaces[1], &plugins, &with_ip(&ip));
    assert_eq!(address_of(&again), ip);
    assert_eq!(handles(&cluster), vec!["wb-a2+eth0".to_string()]);

    // (b) Still frozen: a DEL, then at once a graceful stop. The pending release
    // commits before brindled exits.
    cni_ok("DEL", "wb-a2", &namespaces[1], &plugins, &conf);
    let status = daemon.terminate(Duration::from_secs(40));
    assert!(
        status.is_some_and(|s| s.success()),
        "brindled did not stop cleanly ({status:?}):\n{}",
        daemon.log()
    );
    assert!(
        handles(&cluster).is_empty(),
        "brindled exited with its release pending: {:?}\n{}",
        handles(&cluster),
        daemon.log()
    );
    cluster.resume(0);
    cluster.wait_healthy(0);

    // (c) The leader killed with kill -9 right before a DEL.
    let daemon = Brindled::start(&endpoints, "wb");
    let conf = conf_for(&daemon);
    let third = cni_ok("ADD", "wb-c1", &namespaces[2], &plugins, &conf);
    let ip = address_of(&third);
    let leader = cluster.wait_leader();
    eprintln!("fault: kill -9 leader {leader}");
    cluster.kill(leader);
    cni_ok("DEL", "wb-c1", &namespaces[2], &plugins, &conf);
    assert!(
        released(&cluster, "wb-c1+eth0"),
        "the release did not commit after the leader was killed:\n{}",
        daemon.log()
    );
    let mut fixed = conf.clone();
    fixed["runtimeConfig"] = json!({"ips": [ip]});
    let again = cni_ok("ADD", "wb-c2", &namespaces[3], &plugins, &fixed);
    assert_eq!(address_of(&again), ip);
    cni_ok("DEL", "wb-c2", &namespaces[3], &plugins, &conf);
    assert!(
        released(&cluster, "wb-c2+eth0"),
        "the release did not commit:\n{}",
        daemon.log()
    );
    cluster.restart(leader);
    check_clean(&cluster);
    eprintln!("took {:.1}s", started.elapsed().as_secs_f32());
}
