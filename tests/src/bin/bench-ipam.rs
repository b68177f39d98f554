//! `make bench-ipam`: IPAM allocate/release against a local etcd, next to a raw etcd
//! baseline measured in the same run (one get plus one compare-revision transaction per
//! operation, at the same concurrency), and allocation p99 as the pool fills.
//!
//! usage: bench-ipam [OPS_PER_NODE] [FILL]   (defaults 1000 and 50000)

use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_ipam::pools::NewPool;
use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam};
use brindle_tests::etcd::Etcd;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

struct Stats {
    ops: usize,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn merge(parts: Vec<Stats>, wall: Duration) -> Stats {
        let mut latencies: Vec<Duration> = parts.into_iter().flat_map(|s| s.latencies).collect();
        latencies.sort();
        Stats {
            ops: latencies.len(),
            wall,
            latencies,
        }
    }
    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
    fn rate(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn store(endpoint: &str) -> EtcdStore {
    EtcdStore::connect(&EtcdConfig {
        endpoints: vec![endpoint.to_string()],
        ..EtcdConfig::default()
    })
    .await
    .expect("connect etcd")
}

/// One node: `ops` operations alternating allocate and release (a warm allocation keeps
/// the node's block alive, as a node running containers would).
async fn brindle_node(endpoint: String, node: String, ops: usize) -> Stats {
    let ipam = Ipam::new(store(&endpoint).await, "/brindle");
    let req = |h: String| AllocRequest {
        handle: h,
        node: node.clone(),
        ..AllocRequest::default()
    };
    ipam.allocate(&req(format!("{node}-warm")))
        .await
        .expect("warm");
    let mut latencies = Vec::with_capacity(ops);
    let start = Instant::now();
    for i in 0..ops / 2 {
        let handle = format!("{node}-{i}");
        let t = Instant::now();
        ipam.allocate(&req(handle.clone())).await.expect("allocate");
        latencies.push(t.elapsed());
        let t = Instant::now();
        ipam.release_handle(&handle).await.expect("release");
        latencies.push(t.elapsed());
    }
    Stats {
        ops: latencies.len(),
        wall: start.elapsed(),
        latencies,
    }
}

/// The raw baseline: per operation one get and one transaction comparing the revision read.
async fn raw_client(endpoint: String, id: usize, ops: usize) -> Stats {
    let s = store(&endpoint).await;
    let mut kv = s.client().await.expect("etcd client").kv_client();
    let key = format!("/bench/raw/{id}");
    kv.put(key.as_str(), "0", None).await.expect("seed");
    let mut latencies = Vec::with_capacity(ops);
    let start = Instant::now();
    for i in 0..ops {
        let t = Instant::now();
        let got = kv.get(key.as_str(), None).await.expect("get");
        let rev = got.kvs()[0].mod_revision();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.as_str(), i.to_string(), None)]);
        let resp = kv.txn(txn).await.expect("txn");
        assert!(resp.succeeded(), "uncontended CAS failed");
        latencies.push(t.elapsed());
    }
    Stats {
        ops,
        wall: start.elapsed(),
        latencies,
    }
}

async fn concurrent<F, Fut>(n: usize, f: F) -> Stats
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Stats> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(f(i))).collect();
    let mut parts = Vec::new();
    for t in tasks {
        parts.push(t.await.expect("bench task"));
    }
    Stats::merge(parts, start.elapsed())
}

/// Fill the pool to `level` with 8 concurrent filler nodes.
async fn fill_to(filled: &mut usize, level: usize, endpoint: &str) {
    let need = level.saturating_sub(*filled);
    if need == 0 {
        return;
    }
    let per = need.div_ceil(8);
    let base = *filled;
    let ep = endpoint.to_string();
    concurrent(8, move |n| {
        let ep = ep.clone();
        async move {
            let ipam = Ipam::new(store(&ep).await, "/brindle");
            for i in 0..per {
                let req = AllocRequest {
                    handle: format!("fill-{base}-{n}-{i}"),
                    node: format!("filler-{n}"),
                    ..AllocRequest::default()
                };
                ipam.allocate(&req).await.expect("fill");
            }
            Stats {
                ops: per,
                wall: Duration::ZERO,
                latencies: vec![Duration::ZERO],
            }
        }
    })
    .await;
    *filled += per * 8;
}

/// Compact etcd's history to now and defragment, as a production etcd with
/// auto-compaction would be: the probes then measure the pool's fill, not the growth of
/// an uncompacted history of every write the benchmark made.
async fn compact(endpoint: &str) {
    let s = store(endpoint).await;
    let mut client = s.client().await.expect("etcd client");
    let rev = client
        .get("/", None)
        .await
        .expect("get")
        .header()
        .map(|h| h.revision())
        .unwrap_or_default();
    client
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await
        .expect("compact");
    client.defragment().await.expect("defragment");
}

/// p99 of `sample` allocations by the probe node (its own long-lived agent) and of the
/// raw get+CAS baseline at the current fill level, interleaved one for one so both see
/// the same etcd (which, right after a burst of writes, is busy for a while).
async fn probe_p99(
    ipam: &Ipam<EtcdStore>,
    filled: &mut usize,
    sample: usize,
    endpoint: &str,
) -> (Duration, Duration) {
    let raw_store = store(endpoint).await;
    let mut kv = raw_store.client().await.expect("etcd client").kv_client();
    let key = format!("/bench/probe/{filled}");
    kv.put(key.as_str(), "0", None).await.expect("seed");
    let (mut ours, mut raw) = (Vec::with_capacity(sample), Vec::with_capacity(sample));
    for i in 0..sample {
        let req = AllocRequest {
            handle: format!("probe-{filled}-{i}"),
            node: "probe".into(),
            ..AllocRequest::default()
        };
        let t = Instant::now();
        ipam.allocate(&req).await.expect("probe");
        ours.push(t.elapsed());

        let t = Instant::now();
        let got = kv.get(key.as_str(), None).await.expect("get");
        let rev = got.kvs()[0].mod_revision();
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, rev)])
            .and_then([TxnOp::put(key.as_str(), i.to_string(), None)]);
        assert!(kv.txn(txn).await.expect("txn").succeeded());
        raw.push(t.elapsed());
    }
    *filled += sample;
    let p99 = |latencies: Vec<Duration>| {
        Stats {
            ops: sample,
            wall: Duration::from_secs(1),
            latencies,
        }
        .pct(0.99)
    };
    (p99(ours), p99(raw))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ops: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let fill: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let etcd = Etcd::start();
    let ep = etcd.endpoint.clone();
    let admin = Ipam::new(store(&ep).await, "/brindle");
    admin
        .add_pool(NewPool::new("bench", "10.128.0.0/16".parse().unwrap()))
        .await
        .expect("pool");
    println!(
        "bench-ipam: etcd {} (pid {}), {ops} ops per client, fill to {fill}",
        ep,
        etcd.pid()
    );
    println!();
    println!("| clients | what | ops/s | p50 | p99 |");
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for clients in [1usize, 8] {
        let e = ep.clone();
        let raw = concurrent(clients, move |i| {
            raw_client(e.clone(), i + clients * 100, ops)
        })
        .await;
        let e = ep.clone();
        let ours = concurrent(clients, move |i| {
            brindle_node(e.clone(), format!("bench-{clients}-{i}"), ops)
        })
        .await;
        for (what, s) in [
            ("raw etcd get+CAS (baseline)", &raw),
            ("brindle alloc/release", &ours),
        ] {
            println!(
                "| {clients} | {what} | {:.0} | {} | {} |",
                s.rate(),
                ms(s.pct(0.5)),
                ms(s.pct(0.99))
            );
        }
        ratios.push((clients, ours.rate() / raw.rate()));
    }
    println!();
    for (clients, r) in &ratios {
        println!(
            "throughput ratio brindle/baseline with {clients} client(s): {r:.2}x (goal >= 1.0x)"
        );
    }
    let probe = Arc::new(Ipam::new(store(&ep).await, "/brindle"));
    let mut filled = 0usize;
    fill_to(&mut filled, 1_000, &ep).await;
    compact(&ep).await;
    let (small, raw_small) = probe_p99(&probe, &mut filled, 500, &ep).await;
    fill_to(&mut filled, fill, &ep).await;
    compact(&ep).await;
    let (large, raw_large) = probe_p99(&probe, &mut filled, 500, &ep).await;
    println!(
        "allocation p99 at ~1k allocated: {}; at ~{}k allocated: {}; ratio {:.2}x (goal <= 1.2x)",
        ms(small),
        fill / 1000,
        ms(large),
        large.as_secs_f64() / small.as_secs_f64()
    );
    println!(
        "raw etcd get+CAS p99, interleaved with those: {} and {} (ratio {:.2}x): how much etcd itself slowed",
        ms(raw_small),
        ms(raw_large),
        raw_large.as_secs_f64() / raw_small.as_secs_f64()
    );
}
