//! The firewall half of `bench-dataplane`: how long from a new endpoint record in etcd
//! to its address being in force in brindle's nftables table on its host, with 10, 100
//! and 1,000 other endpoints in the network's set (goal: under 50 ms and flat).
//!
//! The new endpoint is seen arriving with `nft monitor` in the host's namespace, so the
//! figure is etcd write → watch → agent pass → `nft` batch applied by the kernel.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use brindle_ipam::state::encode;
use brindle_ipam::store::{Op, Store, Txn};
use brindle_ipam::{EtcdStore, Keys};
use brindle_plugin::endpoints::EndpointRecord;
use serde_json::Value;

use crate::netns::Netns;

/// The segment every endpoint of the measurement is on.
const SEGMENT: &str = "bench:rules";

/// `nft monitor` in a namespace: lines with their arrival time.
pub struct NftMonitor {
    child: Child,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl NftMonitor {
    pub fn start(ns: &Netns) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nft", "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nft monitor (apt-get install nftables)");
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
        std::thread::sleep(Duration::from_millis(200));
        NftMonitor { child, rx }
    }

    /// Waits for a line containing every one of `needles`; its arrival time.
    pub fn wait(&self, needles: &[&str], timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((at, line)) if needles.iter().all(|n| line.contains(n)) => return Some(at),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for NftMonitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn record(node: &str, id: &str, ip: Ipv4Addr) -> (String, Vec<u8>) {
    let record = EndpointRecord {
        id: id.to_string(),
        node: node.to_string(),
        orchestrator: "bench".into(),
        container_id: Some(id.to_string()),
        network: "rules".into(),
        ip,
        mac: None,
        host_ifname: format!("brl{}", &id[..id.len().min(11)]),
        handle: id.to_string(),
        segment: Some(SEGMENT.into()),
        allow_from: Vec::new(),
    };
    (Keys::default_prefix().endpoint(node, id), encode(&record))
}

async fn put_all(store: &EtcdStore, records: Vec<(String, Vec<u8>)>) {
    // etcd allows 128 operations per transaction by default.
    for chunk in records.chunks(100) {
        let ops = chunk
            .iter()
            .map(|(key, value)| Op::Put {
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        store
            .txn(Txn {
                ops,
                ..Default::default()
            })
            .await
            .expect("write endpoint records");
    }
}

/// Elements of the members set of [`SEGMENT`] in `ns`, from `nft -j`.
fn members(ns: &Netns) -> usize {
    let out = ns.exec(&["nft", "-j", "list", "table", "ip", "brindle"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i.get("set"))
        .find(|s| s["comment"].as_str() == Some(SEGMENT))
        .and_then(|s| s["elem"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// One size's figures.
#[derive(Debug, Clone)]
pub struct RulesLatency {
    pub endpoints: usize,
    pub ms: Vec<f64>,
}

/// For each size, fills the segment with remote endpoints (as other hosts' would be),
/// then times `probes` new local endpoints of `node` (whose namespace is `ns`) until
/// the kernel has their address in the local map. Addresses come from `base` upward.
pub fn measure(
    store: &EtcdStore,
    ns: &Netns,
    node: &str,
    base: Ipv4Addr,
    sizes: &[usize],
    probes: usize,
) -> Vec<RulesLatency> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = |k: usize| Ipv4Addr::from(u32::from(base) + k as u32);
    // One local endpoint on the segment first, so every probe is an element update of an
    // existing guard (what a new container on a known network costs).
    rt.block_on(put_all(store, vec![record(node, "anchor0", addr(0))]));
    let monitor = NftMonitor::start(ns);
    let mut filled = 0;
    let mut out = Vec::new();
    for &size in sizes {
        let more: Vec<_> = (filled..size)
            .map(|k| record("filler", &format!("filler{k}"), addr(10 + k)))
            .collect();
        rt.block_on(put_all(store, more));
        filled = filled.max(size);
        let deadline = Instant::now() + Duration::from_secs(30);
        while members(ns) < size + 1 {
            assert!(
                Instant::now() < deadline,
                "the set never reached {size} endpoints"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut ms = Vec::new();
        for p in 0..probes {
            let ip = addr(5000 + size + p);
            let id = format!("probe{size}x{p}");
            let (key, value) = record(node, &id, ip);
            let t0 = Instant::now();
            rt.block_on(put_all(store, vec![(key.clone(), value)]));
            let ip_text = ip.to_string();
            let seen = monitor
                .wait(
                    &["add element ip brindle local", &ip_text],
                    Duration::from_secs(10),
                )
                .unwrap_or_else(|| panic!("endpoint {ip} never reached the local map"));
            ms.push(seen.duration_since(t0).as_secs_f64() * 1000.0);
            rt.block_on(store.txn(Txn {
                ops: vec![Op::Delete { key }],
                ..Default::default()
            }))
            .expect("delete probe");
            monitor.wait(
                &["delete element ip brindle local", &ip_text],
                Duration::from_secs(10),
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        out.push(RulesLatency {
            endpoints: size,
            ms,
        });
    }
    // Leave the records as they were: delete everything written here.
    let mut keys = vec![record(node, "anchor0", addr(0)).0];
    keys.extend((0..filled).map(|k| record("filler", &format!("filler{k}"), addr(10 + k)).0));
    for chunk in keys.chunks(100) {
        let ops = chunk
            .iter()
            .map(|k| Op::Delete { key: k.clone() })
            .collect();
        rt.block_on(store.txn(Txn {
            ops,
            ..Default::default()
        }))
        .expect("delete records");
    }
    out
}
