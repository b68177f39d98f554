//! `make bench-scale`: brindle at scale on one local etcd (fsync on, as in production).
//!
//! - A cluster of `--nodes` nodes and `--endpoints` CNI endpoints, `--local-endpoints`
//!   of them on node `n000`, written as real records (see `brindle_tests::scale`).
//! - brindled for `n000`, the release binary, in a network namespace of its own with a
//!   veth per local endpoint: time from start to its view loaded and every route in
//!   place, cold (empty kernel) and restarted (routes in place), and its RSS after it
//!   settled (goal at most 15 MB).
//! - BIRD render time, with the agent's own render on that cluster: a node of the
//!   full mesh, and with 2 route reflectors a client and a reflector (goal at most
//!   50 ms); each configuration is checked once with `bird -p -c`.
//! - `--nodes` simulated agents, each a task with its own etcd client running the
//!   agent's load-and-watch loop: time from a node's first allocation (which claims a
//!   new block) until every simulated agent's view shows the block (goal at most 1 s).
//! - IPAM, under a prefix of its own: allocation p50/p99 of one long-lived node with
//!   `--baseline` and with `--allocations` addresses allocated in the pool (goal: p99
//!   at most 1.2x), interleaved one for one with a raw etcd get+CAS as bench-ipam does,
//!   after compacting etcd's history; then `ipam check` on all of it (goal under 10 s).
//!
//! usage: bench-scale [--nodes 100] [--endpoints 10000] [--local-endpoints 1000]
//!        [--allocations 100000] [--baseline 1000] [--probes 500] [--rounds 10]
//!        [--renders 50] [--phases brindled,bird,views,ipam]

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use brindle_bgp::{validate_with_bird, DEFAULT_BIRD_BIN};
use brindle_dataplane::FakeDataplane;
use brindle_ipam::pools::NewPool;
use brindle_ipam::store::Op;
use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam, Keys, Pool, Store};
use brindle_plugin::agent::{watch, Agent, AgentConfig, Prefixes, Snapshot};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, Netns};
use brindle_tests::scale::netns_agent::{
    add_veths, our_routes, status_kib, Brindled, Launch, Startup, Uplink,
};
use brindle_tests::scale::views::{Seen, View, Views};
use brindle_tests::scale::{
    batches, cni_endpoint, cni_owner, commit_all, container_id, endpoint_op, node_op, BulkPool,
};
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

/// The cluster's key prefix (brindled's default).
const PREFIX: &str = "/brindle";
/// A prefix holding nothing: brindled's fixed cost.
const EMPTY_PREFIX: &str = "/scale-empty";
/// The IPAM measurements' own prefix: their 100,000 allocations stay out of the
/// cluster the agents follow.
const IPAM_PREFIX: &str = "/scale-ipam";
/// The cluster's pool: room for 1,024 blocks of /26.
const CLUSTER_POOL: &str = "10.64.0.0/16";
/// The IPAM pool: room for 4,096 blocks of /26 (262,144 addresses).
const IPAM_POOL: &str = "10.68.0.0/14";
const BLOCK_SIZE: u8 = 26;
/// The route reflectors' cluster id.
const RR_CLUSTER: [u8; 4] = [198, 51, 100, 1];
/// How long brindled runs after it is ready before its RSS is read: the crash repair's
/// first pass and a periodic resync happen meanwhile.
const SETTLE: Duration = Duration::from_secs(12);
/// Simulated agents that load the cluster at once.
const WAVE: usize = 10;
/// Worker threads of the simulated agents' runtime (one per core of the machine
/// the figures were recorded on).
const AGENT_THREADS: usize = 2;

const RSS_GOAL_MB: f64 = 15.0;
const VIEW_GOAL: Duration = Duration::from_secs(1);
const RENDER_GOAL: Duration = Duration::from_millis(50);
const P99_RATIO_GOAL: f64 = 1.2;
const CHECK_GOAL: Duration = Duration::from_secs(10);

/// Every phase, in the order they run.
const PHASES: [&str; 4] = ["brindled", "bird", "views", "ipam"];

struct Args {
    nodes: usize,
    endpoints: usize,
    local: usize,
    allocations: usize,
    baseline: usize,
    probes: usize,
    rounds: usize,
    renders: usize,
    /// The phases to run (`--phases brindled,bird,views,ipam`, all by default).
    phases: Vec<String>,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut a = Args {
            nodes: 100,
            endpoints: 10_000,
            local: 1_000,
            allocations: 100_000,
            baseline: 1_000,
            probes: 500,
            rounds: 10,
            renders: 50,
            phases: PHASES.iter().map(|p| p.to_string()).collect(),
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        for pair in argv.chunks(2) {
            let value = || -> anyhow::Result<usize> {
                let v = pair.get(1).context("a flag without its value")?;
                v.parse()
                    .with_context(|| format!("{}: not a number: {v}", pair[0]))
            };
            match pair[0].as_str() {
                "--nodes" => a.nodes = value()?,
                "--endpoints" => a.endpoints = value()?,
                "--local-endpoints" => a.local = value()?,
                "--allocations" => a.allocations = value()?,
                "--baseline" => a.baseline = value()?,
                "--probes" => a.probes = value()?,
                "--rounds" => a.rounds = value()?,
                "--renders" => a.renders = value()?,
                "--phases" => {
                    let list = pair.get(1).context("--phases without its value")?;
                    a.phases = list.split(',').map(str::to_string).collect();
                }
                other => anyhow::bail!(
                    "unknown flag {other} (see the usage at the top of bench-scale.rs)"
                ),
            }
        }
        anyhow::ensure!(
            a.nodes >= 3,
            "--nodes: at least 3 (a client and 2 reflectors)"
        );
        anyhow::ensure!(
            a.local <= a.endpoints,
            "--local-endpoints above --endpoints"
        );
        anyhow::ensure!(
            a.baseline < a.allocations,
            "--baseline must be below --allocations"
        );
        Ok(a)
    }

    fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }

    /// Endpoints of node `i`: the local ones on node 0, the rest spread evenly.
    fn endpoints_on(&self, i: usize) -> usize {
        if i == 0 {
            return self.local;
        }
        let (rest, others) = (self.endpoints - self.local, self.nodes - 1);
        rest / others + usize::from(i - 1 < rest % others)
    }
}

/// Every goal's verdict, printed as measured and again at the end.
#[derive(Default)]
struct Goals(Vec<String>);

impl Goals {
    fn check(&mut self, what: &str, value: String, goal: &str, ok: bool) {
        let line = format!(
            "{what}: {value} (goal {goal}): {}",
            if ok { "met" } else { "NOT MET" }
        );
        println!("{line}");
        self.0.push(line);
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn pct(values: &[Duration], p: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn node_name(i: usize) -> String {
    format!("n{i:03}")
}

async fn connect(endpoint: &str) -> anyhow::Result<EtcdStore> {
    Ok(EtcdStore::connect(&EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        ..EtcdConfig::default()
    })
    .await?)
}

async fn add_pool(store: &EtcdStore, prefix: &str, name: &str, cidr: &str) -> anyhow::Result<Pool> {
    let pool = NewPool {
        name: name.into(),
        cidr: cidr.parse()?,
        block_size: BLOCK_SIZE,
        disabled: false,
        reserved: Default::default(),
        nat_outgoing: false,
    };
    Ok(Ipam::new(store.clone(), prefix).add_pool(pool).await?)
}

/// The filesystem type of the temp dir (etcd's data dir lives there).
fn temp_fs() -> String {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(std::env::temp_dir())
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn own_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status_kib(&status, "VmRSS:")
}

// ------------------------------------------------------------------ the cluster

/// What the later phases need to know about the cluster written.
struct Cluster {
    /// Host veths of node 0's endpoints.
    local_veths: Vec<String>,
    /// Blocks affine to node 0.
    local_blocks: usize,
}

/// Writes the pool, the node records, and every node's endpoints with their
/// allocations (blocks, affinities, handles) and endpoint records.
async fn populate_cluster(store: &EtcdStore, a: &Args) -> anyhow::Result<Cluster> {
    let started = Instant::now();
    let keys = Keys::new(PREFIX);
    let pool = add_pool(store, PREFIX, "scale", CLUSTER_POOL).await?;
    let mut bulk = BulkPool::new(store, keys.clone(), pool).await?;
    let mut ops: Vec<Op> = Vec::new();
    let mut txns = Vec::new();
    let mut cluster = Cluster {
        local_veths: Vec::new(),
        local_blocks: 0,
    };
    for i in 0..a.nodes {
        let node = node_name(i);
        let ip = std::net::Ipv4Addr::new(100, 64, (i / 250) as u8, (i % 250 + 1) as u8);
        ops.push(node_op(&keys, &node, ip));
        let containers: Vec<String> = (0..a.endpoints_on(i))
            .map(|n| container_id(&node, n))
            .collect();
        let owners = containers.iter().map(|c| cni_owner(c)).collect();
        let (claims, placed) = bulk.allocate(&node, owners)?;
        txns.extend(claims);
        for (c, p) in containers.iter().zip(&placed) {
            let record = cni_endpoint(&node, c, p.ip);
            if i == 0 {
                cluster.local_veths.push(record.host_ifname.clone());
            }
            ops.push(endpoint_op(&keys, &record));
        }
        if i == 0 {
            let blocks: BTreeSet<_> = placed.iter().map(|p| p.block).collect();
            cluster.local_blocks = blocks.len();
        }
    }
    let claims = txns.len();
    txns.extend(batches(ops));
    let count = txns.len();
    commit_all(store, txns).await?;
    println!(
        "set-up: {} nodes, {} endpoints with their addresses in {} blocks ({} on {}), {count} transactions, {}",
        a.nodes,
        a.endpoints,
        claims,
        cluster.local_blocks,
        node_name(0),
        secs(started.elapsed())
    );
    Ok(cluster)
}

async fn print_db_size(store: &EtcdStore, when: &str) -> anyhow::Result<()> {
    let mut client = store.client().await?;
    let status = client.status().await?;
    println!(
        "etcd database {when}: {:.1} MB",
        status.db_size() as f64 / 1e6
    );
    Ok(())
}

// ------------------------------------------------------------------ brindled

/// brindled for node 0, cold and restarted, in its network namespace.
async fn brindled_phase(
    ns: &Netns,
    uplink: &Uplink,
    etcd: &Etcd,
    cluster: &Cluster,
    goals: &mut Goals,
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("brindle-scale-")
        .tempdir()?;
    let endpoint = etcd.extra_endpoint.clone().context("etcd on the uplink")?;
    let node = node_name(0);
    let mut launch = Launch {
        ns,
        uplink,
        dir: dir.path(),
        etcd_endpoint: &endpoint,
        prefix: EMPTY_PREFIX,
        node: &node,
    };
    // The fixed cost: the same brindled on a prefix holding nothing at all.
    run_brindled(&launch, "empty-cluster", 0, 0).await?;

    let started = Instant::now();
    add_veths(ns, &cluster.local_veths)?;
    println!(
        "set-up: {} host veths in namespace {}, {}",
        cluster.local_veths.len(),
        ns.name,
        secs(started.elapsed())
    );
    launch.prefix = PREFIX;
    let (endpoints, blocks) = (cluster.local_veths.len(), cluster.local_blocks);
    let cold = run_brindled(&launch, "cold", endpoints, blocks).await?;
    let restart = run_brindled(&launch, "restart", endpoints, blocks).await?;
    let mb = cold.max(restart) as f64 * 1024.0 / 1e6;
    goals.check(
        &format!("brindled RSS with {endpoints} local endpoints, settled"),
        format!("{mb:.1} MB"),
        &format!("<= {RSS_GOAL_MB} MB"),
        mb <= RSS_GOAL_MB,
    );
    Ok(())
}

/// One start of brindled: until its view is loaded and `endpoints` endpoint routes
/// and `blocks` blackholes are in place, then [`SETTLE`]; prints the times and RSS,
/// returns the settled RSS in KiB.
async fn run_brindled(
    launch: &Launch<'_>,
    tag: &str,
    endpoints: usize,
    blocks: usize,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut b = Brindled::spawn(launch, tag);
    let start = b.wait_ready(started, endpoints, blocks, Duration::from_secs(120))?;
    let routes = our_routes(launch.ns);
    anyhow::ensure!(
        routes == endpoints + blocks,
        "{routes} routes of brindle's in the namespace, expected {}:\n{}",
        endpoints + blocks,
        b.log()
    );
    let at_ready = b.rss_kib().0;
    tokio::time::sleep(SETTLE).await;
    let (rss, peak) = b.rss_kib();
    let split = b.rss_split_kib();
    b.kill();
    print_start(tag, &start, at_ready, (rss, split), peak, routes);
    Ok(rss)
}

/// `rss`: settled RSS, with its split into anonymous memory and file pages.
fn print_start(
    tag: &str,
    s: &Startup,
    at_ready: u64,
    (rss, (anon, file)): (u64, (u64, u64)),
    peak: u64,
    routes: usize,
) {
    let mb = |kib: u64| format!("{:.1} MB", kib as f64 * 1024.0 / 1e6);
    println!(
        "brindled, {tag}: view loaded after {}, {routes} routes in place after {}; RSS {} when ready, {} after {}s (heap and stacks {}, binary and library pages {}), peak {}",
        ms(s.loaded),
        ms(s.ready),
        mb(at_ready),
        mb(rss),
        SETTLE.as_secs(),
        mb(anon),
        mb(file),
        mb(peak)
    );
}

// ------------------------------------------------------------------ BIRD

/// One node's configuration rendered `n` times by the agent's own render.
fn time_renders(snap: &Snapshot, node: &str, n: usize) -> anyhow::Result<(Vec<Duration>, String)> {
    let cfg = AgentConfig {
        node: node.to_string(),
        node_ip: None,
        as_num: None,
        bird: None,
        firewall: false,
    };
    let mut agent = Agent::new(cfg, Arc::new(FakeDataplane::new()));
    let mut times = Vec::with_capacity(n);
    let mut text = String::new();
    for _ in 0..n.max(1) {
        let t = Instant::now();
        text = agent.render(snap).context("the node has no IP")?;
        times.push(t.elapsed());
    }
    Ok((times, text))
}

/// `bird -p -c` on `text` (as the agent runs it before installing a configuration),
/// three times; the median time.
fn bird_check(text: &str) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        validate_with_bird(text, Path::new(DEFAULT_BIRD_BIN))?;
        times.push(t.elapsed());
    }
    Ok(pct(&times, 0.5))
}

/// Renders for a mesh node, and with 2 reflectors for a client and a reflector.
async fn bird_phase(store: &EtcdStore, a: &Args, goals: &mut Goals) -> anyhow::Result<()> {
    let mesh = watch::load(store, &Prefixes::new(&Keys::new(PREFIX))).await?;
    let mut rr = mesh.clone();
    rr.global.node_mesh = false;
    let reflectors = [node_name(a.nodes - 2), node_name(a.nodes - 1)];
    for name in &reflectors {
        let node = rr.nodes.get_mut(name).context("reflector node")?;
        node.rr_cluster_id = Some(RR_CLUSTER.into());
    }
    let client = node_name(1);
    let cases = [
        ("full mesh", &mesh, &client, "node"),
        ("2 route reflectors", &rr, &client, "client"),
        ("2 route reflectors", &rr, &reflectors[0], "reflector"),
    ];
    for (topology, snap, node, role) in cases {
        let (times, text) = time_renders(snap, node, a.renders)?;
        let sessions = text.matches("protocol bgp ").count();
        let parse = bird_check(&text)
            .with_context(|| format!("bird -p -c refused the {topology} {role} configuration"))?;
        println!(
            "BIRD config, {} nodes, {topology}, {role} {node}: {sessions} BGP sessions, {} bytes, render p50 {} max {} over {}; bird -p -c (median of 3) {}",
            a.nodes,
            text.len(),
            ms(pct(&times, 0.5)),
            ms(pct(&times, 1.0)),
            times.len(),
            ms(parse)
        );
        let p50 = pct(&times, 0.5);
        goals.check(
            &format!("BIRD render p50, {} nodes, {topology}, {role}", a.nodes),
            ms(p50),
            &format!("<= {}", ms(RENDER_GOAL)),
            p50 <= RENDER_GOAL,
        );
    }
    let total_mesh = a.nodes * (a.nodes - 1) / 2;
    let total_rr = 2 * (a.nodes - 2) + 1;
    println!("BGP sessions in the whole cluster: {total_mesh} with the full mesh, {total_rr} with 2 route reflectors");
    Ok(())
}

// ------------------------------------------------------------------ route views

/// Starts `n` simulated agents in waves of [`WAVE`] (each wave loads the whole
/// cluster at once); returns the time of the first wave and of all.
async fn start_agents(
    endpoint: &str,
    n: usize,
) -> anyhow::Result<(Views<Arc<Snapshot>>, Duration, Duration)> {
    let started = Instant::now();
    let mut views = Views::new(AGENT_THREADS)?;
    let mut first_wave = None;
    while views.len() < n {
        views
            .add_agents(endpoint, PREFIX, WAVE.min(n - views.len()))
            .await?;
        views.wait_loaded(Duration::from_secs(120)).await?;
        first_wave.get_or_insert(started.elapsed());
    }
    Ok((views, first_wave.unwrap_or_default(), started.elapsed()))
}

/// What one agent pays per change it acts on: the watch loop publishes a full copy of
/// its view (`Snapshot::clone`).
fn clone_cost(snap: &Snapshot) -> Duration {
    let times: Vec<Duration> = (0..10)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(snap.clone());
            t.elapsed()
        })
        .collect();
    pct(&times, 0.5)
}

/// The block claims of one kind of simulated node: per claim, the time until the
/// first, half and all of them saw it.
struct Fanout {
    first: Vec<Duration>,
    half: Vec<Duration>,
    all: Vec<Duration>,
}

/// `rounds` new nodes (`KIND-joiner-RR`) each make their first allocation, which
/// claims a block, seen by simulated nodes of one kind (`watcher`, `agent`); prints
/// each round and the summary.
async fn claim_rounds<T: View + Clone + Default>(
    views: &Views<T>,
    store: &EtcdStore,
    kind: &str,
    rounds: usize,
) -> anyhow::Result<Fanout> {
    let mut f = Fanout {
        first: Vec::new(),
        half: Vec::new(),
        all: Vec::new(),
    };
    for round in 0..rounds {
        let node = format!("{kind}-joiner-{round:02}");
        let (allocated, times) = claim_round(views, store, &node).await?;
        println!(
            "{node}: allocation (claims a block) {}; block seen by the first after {}, half of them {}, all {} {}",
            ms(allocated),
            ms(pct(&times, 0.0)),
            ms(pct(&times, 0.5)),
            views.len(),
            ms(pct(&times, 1.0))
        );
        f.first.push(pct(&times, 0.0));
        f.half.push(pct(&times, 0.5));
        f.all.push(pct(&times, 1.0));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "new block -> {} {kind}s over {} claims: first p50 {}, half of them p50 {}, all p50 {} max {}",
        views.len(),
        f.all.len(),
        ms(pct(&f.first, 0.5)),
        ms(pct(&f.half, 0.5)),
        ms(pct(&f.all, 0.5)),
        ms(pct(&f.all, 1.0))
    );
    Ok(f)
}

/// Node `node`'s first allocation, which claims a block; returns how long the
/// allocation took and, per simulated node, the time from its start until the block
/// was in its view.
async fn claim_round<T: View + Clone + Default>(
    views: &Views<T>,
    store: &EtcdStore,
    node: &str,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let ipam = Ipam::new(store.clone(), PREFIX);
    let owner = cni_owner(&container_id(node, 0));
    let request = AllocRequest {
        handle: owner.handle,
        node: node.to_string(),
        attrs: owner.attrs,
        ..AllocRequest::default()
    };
    let since = Instant::now();
    let pending = views.expect_block_of(node, since);
    ipam.allocate(&request).await?;
    let allocated = since.elapsed();
    let times = pending.all(Duration::from_secs(60)).await?;
    Ok((allocated, times))
}

/// `--nodes` bare watchers (etcd's fan-out alone), then `--nodes` simulated agents;
/// `--rounds` new nodes claim their first block under each.
async fn views_phase(
    endpoint: &str,
    store: &EtcdStore,
    a: &Args,
    goals: &mut Goals,
) -> anyhow::Result<()> {
    let mut watchers: Views<Seen> = Views::new(AGENT_THREADS)?;
    watchers.add_watchers(endpoint, PREFIX, a.nodes).await?;
    watchers.wait_loaded(Duration::from_secs(60)).await?;
    println!(
        "{} bare watchers (the store's watch alone, no view kept):",
        watchers.len()
    );
    claim_rounds(&watchers, store, "watcher", a.rounds).await?;
    drop(watchers);

    let before = own_rss_kib();
    let (agents, first_wave, loaded) = start_agents(endpoint, a.nodes).await?;
    let per_agent =
        own_rss_kib().saturating_sub(before) as f64 * 1024.0 / 1e6 / agents.len() as f64;
    let snap = agents.first().context("no agent")?;
    println!(
        "set-up: {} simulated agents loaded the cluster in waves of {WAVE}: first wave {}, all {}; about {per_agent:.1} MB of this process per agent",
        agents.len(),
        secs(first_wave),
        secs(loaded)
    );
    println!(
        "one agent's view: {} blocks, {} endpoints; copying it (once per change, by the watch loop) takes {}",
        snap.blocks.len(),
        snap.endpoints.len(),
        ms(clone_cost(&snap))
    );
    drop(snap);
    println!(
        "{} simulated agents (the agent's load-and-watch loop; they share this machine's {AGENT_THREADS} cores):",
        agents.len()
    );
    let f = claim_rounds(&agents, store, "agent", a.rounds).await?;
    let max = pct(&f.all, 1.0);
    goals.check(
        &format!(
            "new block -> all {} agents' views, max over {} claims",
            agents.len(),
            f.all.len()
        ),
        ms(max),
        &format!("<= {}", ms(VIEW_GOAL)),
        max <= VIEW_GOAL,
    );
    // Let their runtime drop the agents (and their copies) before the next phase.
    drop(agents);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(())
}

// ------------------------------------------------------------------ IPAM

/// Bulk allocations spread over `a.nodes` nodes; `round` keeps handles unique.
async fn fill(
    store: &EtcdStore,
    bulk: &mut BulkPool,
    a: &Args,
    count: usize,
    round: usize,
) -> anyhow::Result<()> {
    let started = Instant::now();
    bulk.refresh(store).await?;
    let mut txns = Vec::new();
    for i in 0..a.nodes {
        let node = format!("ipam-{}", node_name(i));
        let share = count / a.nodes + usize::from(i < count % a.nodes);
        let tag = format!("{node}/{round}");
        let owners = (0..share)
            .map(|n| cni_owner(&container_id(&tag, n)))
            .collect();
        txns.extend(bulk.allocate(&node, owners)?.0);
    }
    let n = txns.len();
    commit_all(store, txns).await?;
    println!(
        "set-up: {count} allocations on {} nodes ({n} new blocks, {} blocks in the pool), {}",
        a.nodes,
        bulk.claimed(),
        secs(started.elapsed())
    );
    Ok(())
}

/// Compact etcd's history to now and defragment, as a production etcd with
/// auto-compaction would be: the probes then measure the pool's fill, not the growth
/// of an uncompacted history of every write the benchmark made.
async fn compact(store: &EtcdStore) -> anyhow::Result<()> {
    let mut client = store.client().await?;
    let revision = client
        .get("/", None)
        .await?
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    let physical = etcd_client::CompactionOptions::new().with_physical();
    client.compact(revision, Some(physical)).await?;
    client.defragment().await?;
    Ok(())
}

/// Latencies of the probe node's allocations, of those among them that claimed a new
/// block, and of the raw etcd get+CAS interleaved with them.
struct Probe {
    ours: Vec<Duration>,
    claims: Vec<Duration>,
    raw: Vec<Duration>,
}

/// `n` allocations by the probe node and as many raw etcd get+CAS, interleaved one
/// for one so both see the same etcd. `block` is the probe's current block (a new one
/// means the allocation claimed it).
async fn probe(
    ipam: &Ipam<EtcdStore>,
    store: &EtcdStore,
    n: usize,
    level: usize,
    block: &mut Option<ipnetwork::Ipv4Network>,
) -> anyhow::Result<Probe> {
    let mut kv = store.client().await?.kv_client();
    let key = format!("/scale-raw/{level}");
    kv.put(key.as_str(), "0", None).await?;
    let mut p = Probe {
        ours: Vec::with_capacity(n),
        claims: Vec::new(),
        raw: Vec::with_capacity(n),
    };
    for i in 0..n {
        let owner = cni_owner(&container_id(&format!("probe/{level}"), i));
        let request = AllocRequest {
            handle: owner.handle,
            node: "probe".into(),
            attrs: owner.attrs,
            ..AllocRequest::default()
        };
        let t = Instant::now();
        let assigned = ipam.allocate(&request).await?;
        p.ours.push(t.elapsed());
        if block.replace(assigned.block) != Some(assigned.block) {
            p.claims.push(t.elapsed());
        }

        let t = Instant::now();
        let got = kv.get(key.as_str(), None).await?;
        let revision = got.kvs().first().context("raw key")?.mod_revision();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key.as_str(), i.to_string(), None)]);
        anyhow::ensure!(kv.txn(txn).await?.succeeded(), "uncontended raw CAS failed");
        p.raw.push(t.elapsed());
    }
    Ok(p)
}

fn print_probe(level: usize, p: &Probe) {
    let claims: Vec<String> = p.claims.iter().map(|d| ms(*d)).collect();
    println!(
        "allocation at ~{level} allocated: p50 {} p90 {} p99 {} max {} over {}; {} of them claimed a block: {}; raw etcd get+CAS interleaved: p50 {} p99 {}",
        ms(pct(&p.ours, 0.5)),
        ms(pct(&p.ours, 0.9)),
        ms(pct(&p.ours, 0.99)),
        ms(pct(&p.ours, 1.0)),
        p.ours.len(),
        p.claims.len(),
        claims.join(", "),
        ms(pct(&p.raw, 0.5)),
        ms(pct(&p.raw, 0.99))
    );
}

/// How long the listings behind `ipam check` take on their own: every IPAM key in one
/// listing (what the check reads), and handles and blocks each in a listing of its own.
async fn print_listings(store: &EtcdStore) -> anyhow::Result<()> {
    let keys = Keys::new(IPAM_PREFIX);
    for (what, prefix) in [
        ("every IPAM key", keys.all()),
        ("the handles alone", keys.handles()),
        ("the blocks alone", keys.blocks()),
    ] {
        let started = Instant::now();
        let listed = store.list(&prefix).await?.len();
        println!(
            "paginated listing of {what}: {listed} keys, {}",
            secs(started.elapsed())
        );
    }
    Ok(())
}

async fn ipam_phase(store: &EtcdStore, a: &Args, goals: &mut Goals) -> anyhow::Result<()> {
    let pool = add_pool(store, IPAM_PREFIX, "bench", IPAM_POOL).await?;
    let mut bulk = BulkPool::new(store, Keys::new(IPAM_PREFIX), pool).await?;
    // The probe node: one long-lived allocator with its cache warm, as in brindled.
    let ipam = Ipam::new(store.clone(), IPAM_PREFIX);
    let warm = cni_owner(&container_id("probe/warm", 0));
    let warmed = ipam
        .allocate(&AllocRequest {
            handle: warm.handle,
            node: "probe".into(),
            attrs: warm.attrs,
            ..AllocRequest::default()
        })
        .await?;
    let mut block = Some(warmed.block);
    fill(store, &mut bulk, a, a.baseline - 1, 0).await?;
    compact(store).await?;
    let small = probe(&ipam, store, a.probes, a.baseline, &mut block).await?;
    print_probe(a.baseline, &small);

    let filled = a.baseline + a.probes;
    fill(store, &mut bulk, a, a.allocations.saturating_sub(filled), 1).await?;
    compact(store).await?;
    print_db_size(store, "with the IPAM fill").await?;
    let large = probe(&ipam, store, a.probes, a.allocations, &mut block).await?;
    print_probe(a.allocations, &large);
    let p99 = |p: &Probe| pct(&p.ours, 0.99).as_secs_f64();
    let raw_p99 = |p: &Probe| pct(&p.raw, 0.99).as_secs_f64();
    let ratio = p99(&large) / p99(&small);
    let raw_ratio = raw_p99(&large) / raw_p99(&small);
    println!("raw etcd get+CAS p99 ratio over the same levels: {raw_ratio:.2}x (how much etcd itself slowed)");
    goals.check(
        &format!(
            "allocation p99 at ~{} vs ~{} allocated",
            a.allocations, a.baseline
        ),
        format!("{ratio:.2}x"),
        &format!("<= {P99_RATIO_GOAL}x"),
        ratio <= P99_RATIO_GOAL,
    );

    print_listings(store).await?;
    let checker = Ipam::new(store.clone(), IPAM_PREFIX);
    let started = Instant::now();
    let report = checker.check(false).await?;
    let took = started.elapsed();
    let c = &report.checked;
    println!(
        "ipam check: {} allocations, {} handles, {} blocks, {} affinities, {} problems, {}",
        c.allocations,
        c.handles,
        c.blocks,
        c.affinities,
        report.problems.len(),
        secs(took)
    );
    anyhow::ensure!(
        report.clean,
        "ipam check found problems in the benchmark's own records: {:?}",
        report.problems.first()
    );
    goals.check(
        &format!("ipam check on {} allocations", c.allocations),
        secs(took),
        &format!("< {}", secs(CHECK_GOAL)),
        took < CHECK_GOAL,
    );
    Ok(())
}

// ------------------------------------------------------------------ main

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    // Errors only: a simulated agent's load that times out under the herd is retried
    // by the agent's own loop and only makes the set-up slower (BRINDLE_LOG=warn
    // shows each).
    brindle_plugin::logging::init_stderr("error");
    let a = Args::parse()?;
    let started = Instant::now();
    // brindled's namespace first: etcd must also listen on its uplink's root address.
    let netns = is_root().then(|| Netns::new("bsc"));
    let uplink = netns.as_ref().map(Uplink::new).transpose()?;
    let etcd = match &uplink {
        Some(u) => Etcd::start_also_on(u.root_ip),
        None => Etcd::start(),
    };
    let fs = temp_fs();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "bench-scale ({} build): etcd {} (pid {}), data in {} on {fs}{}",
        if cfg!(debug_assertions) {
            "DEBUG"
        } else {
            "release"
        },
        etcd.endpoint,
        etcd.pid(),
        std::env::temp_dir().display(),
        if fs == "tmpfs" {
            ": tmpfs, so fsync costs nothing and every etcd write is faster than on a disk"
        } else {
            " (fsync on)"
        }
    );
    let store = connect(&etcd.endpoint).await?;
    let cluster = populate_cluster(&store, &a).await?;
    print_db_size(&store, "with the cluster").await?;
    let mut goals = Goals::default();

    if a.runs("brindled") {
        println!("\n## brindled");
        match (&netns, &uplink) {
            (Some(ns), Some(u)) => brindled_phase(ns, u, &etcd, &cluster, &mut goals).await?,
            _ => println!("skipped: brindled needs root for its network namespace"),
        }
    }
    if a.runs("bird") {
        println!("\n## BIRD render");
        bird_phase(&store, &a, &mut goals).await?;
    }
    if a.runs("views") {
        println!("\n## route views");
        views_phase(&etcd.endpoint, &store, &a, &mut goals).await?;
    }
    if a.runs("ipam") {
        println!("\n## IPAM");
        // A client of its own: the agents' clients and views are gone.
        let store = connect(&etcd.endpoint).await?;
        ipam_phase(&store, &a, &mut goals).await?;
    }

    println!("\n## goals");
    for line in &goals.0 {
        println!("{line}");
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "(whole run {}; load average at the end {})",
        secs(started.elapsed()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
