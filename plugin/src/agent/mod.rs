//! The node agent loops: node registration, route programming, BIRD rendering.
//!
//! One task follows etcd with the watch API (`watch.rs`) and publishes an immutable
//! [`Snapshot`] of what this node acts on: nodes, global BGP settings, peers, pools,
//! and compact views of blocks and of every node's endpoints, shared between
//! snapshots so that publishing one copies pointers (`snapshot.rs`, `cow.rs`,
//! `endpoint_view.rs`). The reconcile loop wakes on every new snapshot
//! (a change converges in milliseconds, well within a second) and every
//! [`RESYNC`] (to repair drift: a route someone deleted, BIRD restarted) and makes
//! one pass:
//! 1. `ip_forward=1` (until it succeeded once);
//! 2. kernel routes (`routes.rs`): a blackhole per block affine to this node, the /32
//!    of each local endpoint;
//! 3. the host firewall (`firewall.rs`): FORWARD's accept path for endpoint traffic,
//!    isolation between networks, outgoing NAT; checked every [`firewall::CHECK`] for
//!    outside changes (dockerd restarts, an admin's flush);
//! 4. BIRD (`bird.rs`), when `--bird-config` is given: render this node's
//!    configuration, check it with `bird -p -c`, swap it in, `birdc configure`;
//!    retried every [`RETRY`] while BIRD is not up.
//!
//! Registration (`register.rs`) writes this node's record at start, compare-and-swap.
//!
//! Beside the loop, brindled runs the crash repair (`reconcile.rs`) at start and every
//! `--reconcile-period`: veths without records, records whose container is gone and
//! allocations whose owner is gone, each repaired after `--reconcile-grace`.

pub mod bird;
pub mod cow;
pub mod endpoint_view;
pub mod firewall;
pub mod memory;
pub mod metrics;
pub mod reconcile;
pub mod register;
pub mod routes;
pub mod snapshot;
pub mod watch;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_bgp::{render_bird, validate_bird_input, BgpNode, BirdInput};
use brindle_dataplane::{Dataplane, Firewall};
use brindle_ipam::{Keys, Store};
use tracing::{info, warn};

use bird::{BirdManager, BirdPaths, SyncState};
use metrics::METRICS;
use register::Registered;
use routes::{Desired, RouteReconciler};
pub use snapshot::{EndpointView, Endpoints, Prefixes, Snapshot};

/// Full re-check of kernel routes and BIRD, even without etcd changes.
pub const RESYNC: Duration = Duration::from_secs(10);

/// Retry interval while something is pending (BIRD not up, a route failed).
pub const RETRY: Duration = Duration::from_secs(1);

/// Quiet time after a change before a pass, so a burst of etcd events makes one pass.
pub const DEBOUNCE: Duration = Duration::from_millis(5);

/// What the agent needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Node name.
    pub node: String,
    /// `--node-ip`.
    pub node_ip: Option<Ipv4Addr>,
    /// `--as`.
    pub as_num: Option<u32>,
    /// BIRD management; `None` without `--bird-config`.
    pub bird: Option<BirdPaths>,
    /// Keep the host firewall (`--firewall`, on by default).
    pub firewall: bool,
}

/// One node's reconcile state: what the passes remember between snapshots.
pub struct Agent {
    cfg: AgentConfig,
    dataplane: Arc<dyn Dataplane>,
    routes: RouteReconciler,
    bird: Option<BirdManager>,
    forwarding: bool,
    last_warning: Option<String>,
    had_own_record: bool,
}

impl Agent {
    /// A fresh agent for `cfg`.
    pub fn new(cfg: AgentConfig, dataplane: Arc<dyn Dataplane>) -> Self {
        let bird = cfg.bird.clone().map(BirdManager::new);
        Self {
            cfg,
            dataplane,
            routes: RouteReconciler::default(),
            bird,
            forwarding: false,
            last_warning: None,
            had_own_record: false,
        }
    }

    /// This node as BGP speaker: its stored record, else what the flags say.
    pub fn me(&self, snap: &Snapshot) -> Option<BgpNode> {
        snap.nodes.get(&self.cfg.node).cloned().or_else(|| {
            self.cfg.node_ip.map(|ip| BgpNode {
                name: self.cfg.node.clone(),
                ip,
                as_num: self.cfg.as_num,
                rr_cluster_id: None,
            })
        })
    }

    /// This node's BIRD configuration according to `snap` (`None` without an IP).
    pub fn render(&mut self, snap: &Snapshot) -> Option<String> {
        let me = self.me(snap)?;
        let nodes = snap.node_list();
        let peers = snap.peer_list();
        let view = snap.routing_view();
        let input = BirdInput {
            global: &snap.global,
            node: &me,
            nodes: &nodes,
            peers: &peers,
            view: &view,
        };
        match validate_bird_input(&input) {
            Ok(()) => self.last_warning = None,
            Err(e) => {
                let msg = e.to_string();
                if self.last_warning.as_deref() != Some(msg.as_str()) {
                    warn!(error = %msg, "BGP settings have a problem; the BIRD configuration leaves the bad entry out");
                    self.last_warning = Some(msg);
                }
            }
        }
        Some(render_bird(&input))
    }

    /// One pass over `snap`; `full` also re-checks kernel routes that should be
    /// unchanged. Returns how soon the next pass is needed without a new snapshot.
    pub async fn pass(&mut self, snap: &Snapshot, full: bool) -> Duration {
        METRICS.reconciles.inc();
        METRICS.snapshot_revision.set(snap.revision);
        let mut wait = RESYNC;

        if !self.forwarding {
            match self.dataplane.enable_ip_forward().await {
                Ok(()) => {
                    info!("ip_forward enabled");
                    self.forwarding = true;
                }
                Err(e) => {
                    warn!(error = %e, "cannot enable ip_forward; retrying");
                    wait = RETRY;
                }
            }
        }

        match snap.nodes.contains_key(&self.cfg.node) {
            true => self.had_own_record = true,
            false if self.had_own_record => {
                self.had_own_record = false;
                warn!(node = %self.cfg.node, "this node's record was removed from etcd; other nodes stop peering with it (restart brindled to register again)");
            }
            false => {}
        }

        let desired = Desired::from_snapshot(snap, &self.cfg.node);
        if full || self.routes.needs_pass(&desired) {
            match self
                .routes
                .reconcile(self.dataplane.as_ref(), &desired, Instant::now())
                .await
            {
                Ok(p) if p.errors > 0 => wait = RETRY,
                Ok(_) => {}
                Err(e) => {
                    METRICS.route_errors.inc();
                    warn!(error = %e, "cannot list kernel routes; retrying");
                    wait = RETRY;
                }
            }
        }

        if self.bird.is_some() {
            match self.render(snap) {
                Some(text) => {
                    let bird = self.bird.as_mut().expect("checked");
                    match bird.sync(&text).await {
                        SyncState::InSync | SyncState::Rejected => {}
                        SyncState::ReloadPending | SyncState::Failed => wait = RETRY,
                    }
                }
                None => {
                    let msg = format!(
                        "node {} has no IP: no BIRD configuration until `brindle node set {} --ip ADDR` or --node-ip",
                        self.cfg.node, self.cfg.node
                    );
                    if self.last_warning.as_deref() != Some(msg.as_str()) {
                        warn!("{msg}");
                        self.last_warning = Some(msg);
                    }
                }
            }
        }
        wait
    }
}

/// Registers the node; returns whether registration is settled (done, or nothing to
/// register), false when it should be retried.
async fn try_register<S: Store>(
    store: &S,
    keys: &Keys,
    cfg: &AgentConfig,
    failures: &mut u32,
) -> bool {
    match register::register(store, keys, &cfg.node, cfg.node_ip, cfg.as_num).await {
        Ok(Registered::Node(n)) => {
            METRICS.node_registered.set(1);
            info!(node = %n.name, ip = %n.ip, as_num = ?n.as_num, "node registered");
            true
        }
        Ok(Registered::NoIp) => {
            warn!(node = %cfg.node, "no --node-ip and no stored node record: this node takes part in BGP once `brindle node set {} --ip ADDR` gives it an address", cfg.node);
            true
        }
        Err(e) => {
            *failures += 1;
            if *failures == 1 || failures.is_multiple_of(60) {
                warn!(error = %e, attempts = *failures, "cannot register this node; retrying every second");
            }
            false
        }
    }
}

/// Aborts the watch task when the agent stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The agent loop on any store: etcd in brindled, the in-process store in tests.
pub async fn run_on<S: Store + Clone>(
    store: S,
    keys: Keys,
    cfg: AgentConfig,
    dataplane: Arc<dyn Dataplane>,
    firewall: Arc<dyn Firewall>,
) -> anyhow::Result<()> {
    run_with(store, keys, cfg, dataplane, firewall, None).await
}

/// [`run_on`], with the crash repair beside the loop when `repair` is given.
pub async fn run_with<S: Store + Clone>(
    store: S,
    keys: Keys,
    cfg: AgentConfig,
    dataplane: Arc<dyn Dataplane>,
    firewall: Arc<dyn Firewall>,
    repair: Option<reconcile::Task<S>>,
) -> anyhow::Result<()> {
    match &cfg.bird {
        Some(b) => {
            info!(config = %b.config.display(), socket = %b.socket.display(), "managing BIRD")
        }
        None => info!("no --bird-config: routes only, BIRD is not managed"),
    }

    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let prefixes = Prefixes::for_node(&keys, &cfg.node);
    let _watch = AbortOnDrop(tokio::spawn(watch::run(store.clone(), prefixes, tx)));
    let _repair = repair.map(|task| {
        let (node, dp, snapshots) = (cfg.node.clone(), dataplane.clone(), rx.clone());
        AbortOnDrop(tokio::spawn(reconcile::run(task, node, dp, snapshots)))
    });

    // The firewall has its own task: a slow `iptables-save` on a busy host must not
    // delay routes or BIRD, nor they the firewall.
    let _firewall = cfg.firewall.then(|| {
        let (node, snapshots) = (cfg.node.clone(), rx.clone());
        AbortOnDrop(tokio::spawn(firewall::run(node, firewall, snapshots)))
    });

    let mut agent = Agent::new(cfg.clone(), dataplane);
    let mut registered = false;
    let mut register_failures = 0;
    let mut next_full = Instant::now();
    loop {
        if !registered {
            registered = try_register(&store, &keys, &cfg, &mut register_failures).await;
        }
        let snap = rx.borrow_and_update().clone();
        let mut wait = if registered { RESYNC } else { RETRY };
        if snap.is_loaded() {
            let now = Instant::now();
            let full = now >= next_full;
            if full {
                next_full = now + RESYNC;
            }
            wait = wait.min(agent.pass(&snap, full).await);
            if full {
                memory::trim();
            }
        }
        let until_full = next_full.saturating_duration_since(Instant::now());
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the store watch task stopped");
                }
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep(wait.min(until_full.max(Duration::from_millis(10)))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brindle_dataplane::FakeDataplane;
    use brindle_ipam::Block;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    fn snap_with(nodes: &[(&str, &str)], blocks: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot {
            revision: 5,
            ..Default::default()
        };
        for (name, ip) in nodes {
            s.nodes.insert(
                name.to_string(),
                BgpNode {
                    name: name.to_string(),
                    ip: ip.parse().unwrap(),
                    as_num: None,
                    rr_cluster_id: None,
                },
            );
        }
        for (cidr, node) in blocks {
            let b = Block {
                cidr: cidr.parse().unwrap(),
                pool: "p".into(),
                affinity: Some(node.to_string()),
                allocations: Default::default(),
                cursor: 0,
            };
            s.blocks.insert(cidr.to_string(), Arc::new(b));
        }
        s
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn a_pass_programs_routes_and_installs_the_rendered_config() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("birdc.log");
        let cfg = AgentConfig {
            node: "a".into(),
            node_ip: Some("10.0.0.1".parse().unwrap()),
            as_num: None,
            bird: Some(BirdPaths {
                config: dir.path().join("bird.conf"),
                socket: dir.path().join("bird.ctl"),
                bird_bin: script(dir.path(), "bird", "exit 0"),
                birdc_bin: script(
                    dir.path(),
                    "birdc",
                    &format!("echo \"$@\" >> {}\necho Reconfigured", log.display()),
                ),
            }),
            firewall: true,
        };
        let dp = Arc::new(FakeDataplane::new());
        let mut agent = Agent::new(cfg, dp.clone());
        let snap = snap_with(
            &[("a", "10.0.0.1"), ("b", "10.0.0.2")],
            &[("10.5.0.0/26", "a"), ("10.5.0.64/26", "b")],
        );
        let wait = agent.pass(&snap, true).await;
        assert_eq!(wait, RESYNC);
        assert!(dp.ip_forward_enabled());
        assert_eq!(dp.blackholes(), vec!["10.5.0.0/26".parse().unwrap()]);
        let conf = std::fs::read_to_string(dir.path().join("bird.conf")).unwrap();
        assert!(conf.contains("router id 10.0.0.1;"), "{conf}");
        assert!(conf.contains("protocol bgp Mesh_10_0_0_2"), "{conf}");
        assert!(conf.contains("if net = 10.5.0.0/26 then accept;"), "{conf}");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            calls.trim(),
            format!("-s {} configure", dir.path().join("bird.ctl").display())
        );

        // The block moves away: blackhole removed, config re-rendered and reloaded.
        let snap2 = snap_with(
            &[("a", "10.0.0.1"), ("b", "10.0.0.2")],
            &[("10.5.0.64/26", "b")],
        );
        agent.pass(&snap2, false).await;
        assert!(dp.blackholes().is_empty());
        let conf = std::fs::read_to_string(dir.path().join("bird.conf")).unwrap();
        assert!(!conf.contains("10.5.0.0/26 then accept"), "{conf}");
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
        // Nothing changed: no reload.
        agent.pass(&snap2, false).await;
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn without_an_ip_or_bird_config_only_routes_are_kept() {
        let dp = Arc::new(FakeDataplane::new());
        let cfg = AgentConfig {
            node: "a".into(),
            node_ip: None,
            as_num: None,
            bird: None,
            firewall: true,
        };
        let mut agent = Agent::new(cfg, dp.clone());
        let snap = snap_with(&[], &[("10.5.0.0/26", "a")]);
        assert!(agent.me(&snap).is_none());
        agent.pass(&snap, true).await;
        assert_eq!(dp.blackholes().len(), 1);
    }

    #[tokio::test]
    async fn the_agent_loop_runs_on_the_in_process_store() {
        use brindle_ipam::store::{Op, Txn};
        use brindle_ipam::MemoryStore;

        let store = MemoryStore::new().with_page_size(2);
        let keys = Keys::new("/brindle");
        let prefixes = Prefixes::new(&keys);
        let cfg = AgentConfig {
            node: "a".into(),
            node_ip: Some("10.0.0.1".parse().unwrap()),
            as_num: None,
            bird: None,
            firewall: false,
        };
        let dp = Arc::new(FakeDataplane::new());
        let fw = Arc::new(brindle_dataplane::FakeFirewall::new());
        let agent = tokio::spawn(run_on(store.clone(), keys, cfg, dp.clone(), fw));
        let _stop = AbortOnDrop(tokio::spawn(async move {
            let _ = agent.await;
        }));

        let block = |cidr: &str, node: &str| Op::Put {
            key: format!("{}{}", prefixes.blocks, cidr.replace('/', "-")),
            value: serde_json::to_vec(&Block {
                cidr: cidr.parse().unwrap(),
                pool: "p".into(),
                affinity: Some(node.into()),
                allocations: Default::default(),
                cursor: 0,
            })
            .unwrap(),
        };
        let ops = vec![block("10.5.0.0/26", "a"), block("10.5.0.64/26", "b")];
        store
            .txn(Txn {
                ops,
                ..Txn::default()
            })
            .await
            .unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while dp.blackholes() != vec!["10.5.0.0/26".parse().unwrap()] {
            assert!(
                Instant::now() < deadline,
                "blackholes: {:?}",
                dp.blackholes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let registered = store.get(&format!("{}a", prefixes.nodes)).await.unwrap();
        assert!(registered.is_some(), "the node registered itself");
        assert!(dp.ip_forward_enabled());

        // The block moves to another node: its blackhole goes.
        let ops = vec![block("10.5.0.0/26", "b")];
        store
            .txn(Txn {
                ops,
                ..Txn::default()
            })
            .await
            .unwrap();
        while !dp.blackholes().is_empty() {
            assert!(
                Instant::now() < deadline,
                "blackholes: {:?}",
                dp.blackholes()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
