//! Crash repair: this node's kernel state, endpoint records and allocations checked
//! against each other and against the runtimes, at start and every [`PERIOD`].
//!
//! Every create and delete path (Docker's `RequestAddress` → `CreateEndpoint` → `Join`
//! and `Leave` → `DeleteEndpoint` → `ReleaseAddress`, CNI ADD and DEL, direct or
//! through brindled) is ordered so that a kill -9 between two of its steps leaves only
//! what one of these rules finds (see `docker/mod.rs` and `cni/ops.rs` for each path):
//!
//! | finding | repair, once it has lasted [`GRACE`] |
//! |---|---|
//! | a host veth `brl*` that no endpoint record names (without a route, or routed inside one of the pools: never another installation's) | that exact link (name and index) is deleted, its route with it |
//! | a Docker endpoint record whose endpoint dockerd no longer has on its network (only when dockerd answered) | the record (as read), its veth, its address (unless dockerd still lists it) |
//! | a CNI endpoint record whose host veth is gone (the kernel deletes the pair with the container's netns) | the record (as read) and its address |
//! | an allocation of this node with `orchestrator=docker` that no record holds, dockerd does not list (only when it answered) and no network reserves | released |
//! | an allocation of this node with `orchestrator=cni`, `cni_mode=main` that no record holds and whose veth is gone | released |
//!
//! An address is never released while a route of ours sends it to an existing
//! interface; CNI `brindle-ipam` allocations (another plugin's interface) are left to
//! CNI GC. Routes and blackholes follow the records in `routes.rs`.
//!
//! The grace period covers the moments every path has by design: a Docker veth exists a
//! moment before its record, a CNI record (stored with its address) a moment before its
//! veth, an address before its endpoint, an endpoint before dockerd lists it. A finding must last the whole period unchanged (same link index, same record or
//! handle revision); anything written meanwhile restarts its clock. Every write is a
//! compare-and-swap on what was read: a record is deleted only at the revision that was
//! judged, an address released only while its handle is at the revision that was
//! judged (and, for CNI, while the attachment still has no record), and a veth deleted
//! only as the link that was judged. A concurrent Docker or CNI request is never undone.
//!
//! Findings and repairs are logged and counted in the metrics
//! (`brindle_reconcile_*`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_dataplane::{host_ifname_for_cni, Dataplane, DataplaneError, HostLink, RouteTarget};
use brindle_ipam::state::{self, decode};
use brindle_ipam::store::Compare;
use brindle_ipam::{HandleRecord, Ipam, IpamError, Store};
use futures::future::BoxFuture;
use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use super::metrics::METRICS;
use super::snapshot::Snapshot;
use crate::cni::ops::{handle_for, ATTR_CNI_MODE, ATTR_CONTAINER, ATTR_IFNAME, ORCHESTRATOR_CNI};
use crate::docker::records::{self, DockerEndpoint, NetworkRecord, ORCHESTRATOR};
use crate::docker::{network_view, NetworkView};

/// How often the reconcile runs (`--reconcile-period`).
pub const PERIOD: Duration = Duration::from_secs(10);

/// How long a finding must last before it is repaired (`--reconcile-grace`).
pub const GRACE: Duration = Duration::from_secs(60);

/// Allocation attribute naming the orchestrator (Docker's and CNI's use the same key).
const ATTR_ORCHESTRATOR: &str = "orchestrator";

/// `--reconcile-period` and `--reconcile-grace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub period: Duration,
    pub grace: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            period: PERIOD,
            grace: GRACE,
        }
    }
}

/// A duration flag: `90`, `90s`, `500ms`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("invalid duration {s:?}: expected e.g. 60, 60s, 500ms, 2m or 1h");
    let (digits, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let n: f64 = digits.trim().parse().map_err(|_| bad())?;
    if !n.is_finite() || n < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(n * scale))
}

/// dockerd, as the reconcile asks it.
pub trait Dockerd: Send + Sync {
    /// What dockerd has on network `id`: `Ok(None)` when it has no such network, `Err`
    /// when it did not answer.
    fn network<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NetworkView>, String>>;
}

/// dockerd's API socket (`--docker-api-socket`).
pub struct DockerApi(pub PathBuf);

impl Dockerd for DockerApi {
    fn network<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<NetworkView>, String>> {
        Box::pin(network_view(&self.0, id))
    }
}

/// What a pass could not do (it is retried at the next one).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] IpamError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

impl From<brindle_ipam::StateError> for ReconcileError {
    fn from(e: brindle_ipam::StateError) -> Self {
        Self::Store(e.into())
    }
}

/// What one pass found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub veths_deleted: usize,
    pub records_removed: usize,
    pub addresses_released: usize,
    /// Findings still inside their grace period.
    pub waiting: usize,
    /// Repairs that failed (retried at the next pass).
    pub errors: usize,
    /// Whether dockerd answered every question (the Docker rules ran).
    pub docker_answered: bool,
}

/// The reconcile of one node, remembering since when each finding has lasted.
pub struct Reconciler {
    node: String,
    grace: Duration,
    /// Veths without a record, by the exact link.
    veths: HashMap<HostLink, Instant>,
    /// Records whose container looks gone: key → (revision, since).
    records: HashMap<String, (i64, Instant)>,
    /// Handles whose owner looks gone: handle → (handle record revision, since).
    handles: HashMap<String, (i64, Instant)>,
    docker_was_answering: Option<bool>,
}

/// An endpoint record of this node as read (Docker's superset decodes CNI's too).
struct Local {
    key: String,
    revision: i64,
    ep: DockerEndpoint,
}

/// What dockerd said in this pass.
struct DockerSays {
    /// Per network asked: its view, `None` when dockerd has no such network.
    networks: HashMap<String, Option<NetworkView>>,
    /// Every address dockerd holds on those networks.
    addresses: BTreeSet<Ipv4Addr>,
}

impl Reconciler {
    pub fn new(node: impl Into<String>, grace: Duration) -> Self {
        Self {
            node: node.into(),
            grace,
            veths: HashMap::new(),
            records: HashMap::new(),
            handles: HashMap::new(),
            docker_was_answering: None,
        }
    }

    /// One pass at `now` over what etcd (through `snap` for blocks and pools, directly
    /// for this node's records), the kernel and dockerd say.
    pub async fn pass<S: Store>(
        &mut self,
        ipam: &Ipam<S>,
        dp: &dyn Dataplane,
        dockerd: Option<&dyn Dockerd>,
        snap: &Snapshot,
        now: Instant,
    ) -> Result<Report, ReconcileError> {
        let mut report = Report::default();
        let keys = ipam.keys();
        let store = ipam.store();

        // Read everything first: the records, then the kernel (a veth created after the
        // records were read merely looks record-less for one pass).
        let mut locals = Vec::new();
        let mut corrupt = 0;
        for kv in store
            .list(&keys.node_endpoints(&self.node))
            .await
            .map_err(IpamError::from)?
        {
            match decode::<DockerEndpoint>(&kv) {
                Ok(v) => locals.push(Local {
                    key: kv.key,
                    revision: v.revision,
                    ep: v.value,
                }),
                Err(e) => {
                    corrupt += 1;
                    warn!(error = %e, "reconcile: skipping an endpoint record that does not decode");
                }
            }
        }
        let veths: BTreeSet<String> = dump(|| dp.list_host_veths()).await?.into_iter().collect();
        let mut routed: HashMap<String, Vec<Ipv4Network>> = HashMap::new();
        let mut live: HashSet<Ipv4Addr> = HashSet::new();
        for r in dump(|| dp.list_routes_with_our_protocol()).await? {
            if let RouteTarget::Interface { ifname, .. } = r.target {
                if r.dst.prefix() == 32 {
                    live.insert(r.dst.ip());
                }
                if let Some(name) = ifname {
                    routed.entry(name).or_default().push(r.dst);
                }
            }
        }
        let networks: Vec<NetworkRecord> = records::list_networks(store, keys)
            .await?
            .into_iter()
            .filter(|n| n.node == self.node)
            .collect();
        let docker = self.ask_dockerd(dockerd, &locals, &networks, snap).await;
        report.docker_answered = docker.is_some();

        // 1. Veths no record names: not this node's (read now), nor any node's in the
        // agent's view (two nodes sharing one kernel, as test benches do).
        let named: HashSet<&str> = locals
            .iter()
            .map(|l| l.ep.base.host_ifname.as_str())
            .chain(snap.endpoints.iter().map(|e| &*e.view.host_ifname))
            .collect();
        let pools: Vec<Ipv4Network> = snap.pools.values().map(|p| p.cidr).collect();
        let mut seen_links = HashSet::new();
        if corrupt == 0 {
            for name in veths.iter().filter(|n| !named.contains(n.as_str())) {
                let dsts = routed.get(name).map(Vec::as_slice).unwrap_or_default();
                let ours = dsts.iter().all(|d| {
                    pools
                        .iter()
                        .any(|p| p.contains(d.ip()) && p.prefix() <= d.prefix())
                });
                if !ours {
                    continue; // another installation's endpoint on this kernel
                }
                let Some(link) = dp.host_veth(name).await? else {
                    continue;
                };
                seen_links.insert(link.clone());
                let since = *self.veths.entry(link.clone()).or_insert_with(|| {
                    debug!(host = %link, "reconcile: veth without an endpoint record");
                    now
                });
                if now.duration_since(since) < self.grace {
                    report.waiting += 1;
                    continue;
                }
                match dp.delete_host_link(&link).await {
                    Ok(existed) => {
                        if existed {
                            report.veths_deleted += 1;
                            METRICS.reconcile_veths_deleted.inc();
                            info!(host = %link.name, index = link.index, grace = ?self.grace, "reconcile: deleted a veth no endpoint record names (left by an interrupted create or delete)");
                        }
                        self.veths.remove(&link);
                    }
                    Err(e) => {
                        report.errors += 1;
                        warn!(host = %link.name, error = %e, "reconcile: cannot delete a veth without an endpoint record");
                    }
                }
            }
        }
        self.veths.retain(|l, _| seen_links.contains(l));

        // 2. Records whose container is gone.
        let mut seen_records = HashSet::new();
        for l in &locals {
            let base = &l.ep.base;
            let gone = match base.orchestrator.as_str() {
                ORCHESTRATOR_CNI => !veths.contains(&base.host_ifname),
                ORCHESTRATOR => {
                    docker
                        .as_ref()
                        .is_some_and(|d| match d.networks.get(&base.network) {
                            Some(None) => true,
                            Some(Some(view)) => !view.endpoints.contains(&base.id),
                            None => false,
                        })
                }
                _ => false,
            };
            if !gone {
                continue;
            }
            seen_records.insert(l.key.clone());
            let entry = self
                .records
                .entry(l.key.clone())
                .or_insert((l.revision, now));
            if entry.0 != l.revision {
                *entry = (l.revision, now); // written meanwhile: judge it anew
            }
            if now.duration_since(entry.1) < self.grace {
                if entry.1 == now {
                    debug!(endpoint = %base.id, orchestrator = %base.orchestrator, "reconcile: endpoint record whose container looks gone");
                }
                report.waiting += 1;
                continue;
            }
            match self.remove_record(ipam, dp, l, docker.as_ref()).await {
                Ok(Some(released)) => {
                    self.records.remove(&l.key);
                    report.records_removed += 1;
                    report.addresses_released += released;
                }
                Ok(None) => {
                    self.records.remove(&l.key);
                }
                Err(e) => {
                    report.errors += 1;
                    warn!(endpoint = %base.id, error = %e, "reconcile: cannot remove an endpoint record whose container is gone");
                }
            }
        }
        self.records.retain(|k, _| seen_records.contains(k));

        // 3. Allocations whose owner is gone.
        let held: HashSet<&str> = locals.iter().map(|l| l.ep.base.handle.as_str()).collect();
        let mut orphans: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for block in snap.blocks.values() {
            for (ip, a) in &block.allocations {
                if a.node() != Some(self.node.as_str())
                    || held.contains(a.handle.as_str())
                    || live.contains(ip)
                {
                    continue;
                }
                let orphan = match a.attrs.get(ATTR_ORCHESTRATOR).map(String::as_str) {
                    Some(ORCHESTRATOR) => docker.as_ref().is_some_and(|d| {
                        !d.addresses.contains(ip)
                            && !networks.iter().any(|n| n.reserves(*ip).is_some())
                    }),
                    Some(ORCHESTRATOR_CNI) => {
                        let main = a.attrs.get(ATTR_CNI_MODE).map(String::as_str) == Some("main");
                        match (a.attrs.get(ATTR_CONTAINER), a.attrs.get(ATTR_IFNAME)) {
                            (Some(c), Some(i)) => {
                                main && a.handle == handle_for(c, i)
                                    && !veths.contains(&host_ifname_for_cni(c, i))
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                if orphan {
                    orphans.entry(a.handle.clone()).or_default().push(*ip);
                }
            }
        }
        let mut seen_handles = HashSet::new();
        for (handle, ips) in orphans {
            let Some(record) = state::read::<HandleRecord>(store, &keys.handle(&handle)).await?
            else {
                continue; // released meanwhile
            };
            seen_handles.insert(handle.clone());
            let entry = self
                .handles
                .entry(handle.clone())
                .or_insert((record.revision, now));
            if entry.0 != record.revision {
                *entry = (record.revision, now);
            }
            if now.duration_since(entry.1) < self.grace {
                if entry.1 == now {
                    debug!(%handle, ?ips, "reconcile: allocation whose owner looks gone");
                }
                report.waiting += 1;
                continue;
            }
            let guards = self.release_guards(keys, &handle);
            match ipam
                .release_handle_if(&handle, record.revision, &guards)
                .await
            {
                Ok(Some(released)) => {
                    self.handles.remove(&handle);
                    report.addresses_released += released.len();
                    for _ in &released {
                        METRICS.reconcile_addresses_released.inc();
                    }
                    info!(%handle, ?released, grace = ?self.grace, "reconcile: released an address no endpoint, container or network holds");
                }
                Ok(None) => {
                    self.handles.remove(&handle);
                    debug!(%handle, "reconcile: the allocation changed meanwhile; judged anew");
                }
                Err(e) => {
                    report.errors += 1;
                    warn!(%handle, error = %e, "reconcile: cannot release an address whose owner is gone");
                }
            }
        }
        self.handles.retain(|h, _| seen_handles.contains(h));

        METRICS.reconcile_waiting.set(report.waiting as i64);
        Ok(report)
    }

    /// What must still hold when an allocation of `handle` is released: a CNI
    /// attachment's handle is its endpoint id, so its record must still be absent (an
    /// ADD of the same attachment writes it). Docker handles are never reused.
    fn release_guards(&self, keys: &brindle_ipam::Keys, handle: &str) -> Vec<Compare> {
        if handle.contains('+') {
            vec![Compare::unchanged(keys.endpoint(&self.node, handle), None)]
        } else {
            Vec::new()
        }
    }

    /// Remove a record judged gone: the record at the revision judged, then its veth (the
    /// link there now), then its address. Returns how many addresses were released,
    /// or `None` when the record changed meanwhile (and was left to be judged anew).
    async fn remove_record<S: Store>(
        &self,
        ipam: &Ipam<S>,
        dp: &dyn Dataplane,
        l: &Local,
        docker: Option<&DockerSays>,
    ) -> Result<Option<usize>, ReconcileError> {
        let base = &l.ep.base;
        if !state::delete_if(ipam.store(), &l.key, l.revision).await? {
            debug!(endpoint = %base.id, "reconcile: the record changed meanwhile; judged anew");
            return Ok(None);
        }
        METRICS.reconcile_records_removed.inc();
        info!(endpoint = %base.id, orchestrator = %base.orchestrator, ip = %base.ip, container = ?base.container_id, grace = ?self.grace, "reconcile: removed the record of an endpoint whose container is gone");
        if let Some(link) = dp.host_veth(&base.host_ifname).await? {
            if base.orchestrator == ORCHESTRATOR_CNI {
                // A veth again: an ADD of the same attachment is under way; its
                // allocation is its own.
                return Ok(Some(0));
            }
            if dp.delete_host_link(&link).await? {
                METRICS.reconcile_veths_deleted.inc();
                info!(host = %link.name, "reconcile: deleted the veth of that endpoint");
            }
        }
        if docker.is_some_and(|d| d.addresses.contains(&base.ip)) {
            warn!(ip = %base.ip, endpoint = %base.id, "reconcile: dockerd still lists the address of a removed endpoint; not released");
            return Ok(Some(0));
        }
        let Some(handle) =
            state::read::<HandleRecord>(ipam.store(), &ipam.keys().handle(&base.handle)).await?
        else {
            return Ok(Some(0));
        };
        let mut guards = self.release_guards(ipam.keys(), &base.handle);
        guards.push(Compare::unchanged(l.key.clone(), None));
        let released = ipam
            .release_handle_if(&base.handle, handle.revision, &guards)
            .await?
            .unwrap_or_default();
        for ip in &released {
            METRICS.reconcile_addresses_released.inc();
            info!(%ip, handle = %base.handle, "reconcile: released the address of that endpoint");
        }
        Ok(Some(released.len()))
    }

    /// Ask dockerd about every network this node's Docker state refers to, when there
    /// is any; `None` when there is none, no dockerd, or it did not answer them all.
    async fn ask_dockerd(
        &mut self,
        dockerd: Option<&dyn Dockerd>,
        locals: &[Local],
        networks: &[NetworkRecord],
        snap: &Snapshot,
    ) -> Option<DockerSays> {
        let dockerd = dockerd?;
        let mut ids: BTreeSet<&str> = networks.iter().map(|n| n.id.as_str()).collect();
        ids.extend(
            locals
                .iter()
                .filter(|l| l.ep.base.orchestrator == ORCHESTRATOR)
                .map(|l| l.ep.base.network.as_str()),
        );
        let docker_allocations = snap.blocks.values().any(|b| {
            b.allocations.values().any(|a| {
                a.node() == Some(self.node.as_str())
                    && a.attrs.get(ATTR_ORCHESTRATOR).map(String::as_str) == Some(ORCHESTRATOR)
            })
        });
        if ids.is_empty() && !docker_allocations {
            return None;
        }
        let mut says = DockerSays {
            networks: HashMap::new(),
            addresses: BTreeSet::new(),
        };
        for id in ids {
            match dockerd.network(id).await {
                Ok(view) => {
                    if let Some(v) = &view {
                        says.addresses.extend(v.addresses.iter().copied());
                    }
                    says.networks.insert(id.to_string(), view);
                }
                Err(e) => {
                    if self.docker_was_answering != Some(false) {
                        warn!(error = %e, "reconcile: dockerd does not answer; Docker endpoints and addresses are left as they are until it does");
                    }
                    self.docker_was_answering = Some(false);
                    return None;
                }
            }
        }
        if self.docker_was_answering == Some(false) {
            info!("reconcile: dockerd answers again");
        }
        self.docker_was_answering = Some(true);
        Some(says)
    }
}

/// A kernel dump, again when links or routes changed under it (the kernel then fails
/// it with EBUSY), which a busy host does all the time.
async fn dump<'a, T>(
    mut list: impl FnMut() -> brindle_dataplane::DpFuture<'a, T>,
) -> Result<T, DataplaneError> {
    let mut tries = 0;
    loop {
        match list().await {
            Err(e) if e.errno() == Some(libc::EBUSY) && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// What the agent hands the reconcile task.
pub struct Task<S: Store> {
    /// An IPAM service of its own on the agent's store.
    pub ipam: Ipam<S>,
    pub settings: Settings,
    /// `None`: no Docker on this node (the Docker rules never run).
    pub dockerd: Option<Arc<dyn Dockerd>>,
}

/// Reconcile `node` at start (once the agent's view is loaded) and every period.
pub async fn run<S: Store>(
    task: Task<S>,
    node: String,
    dataplane: Arc<dyn Dataplane>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
) {
    let Task {
        ipam,
        settings,
        dockerd,
    } = task;
    info!(period = ?settings.period, grace = ?settings.grace, "reconcile of veths, endpoint records and allocations");
    let mut r = Reconciler::new(node, settings.grace);
    loop {
        let snap = snapshots.borrow_and_update().clone();
        if !snap.is_loaded() {
            if snapshots.changed().await.is_err() {
                return;
            }
            continue;
        }
        METRICS.reconcile_passes.inc();
        match r
            .pass(
                &ipam,
                dataplane.as_ref(),
                dockerd.as_deref(),
                &snap,
                Instant::now(),
            )
            .await
        {
            Ok(rep) => {
                if rep.errors > 0 {
                    METRICS.reconcile_errors.inc();
                }
                debug!(?rep, "reconcile pass");
            }
            Err(e) => {
                METRICS.reconcile_errors.inc();
                warn!(error = %e, "reconcile pass failed; retrying at the next one");
            }
        }
        super::memory::trim();
        tokio::time::sleep(settings.period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use brindle_dataplane::{EndpointSpec, FakeDataplane};
    use brindle_ipam::pools::NewPool;
    use brindle_ipam::{AllocRequest, MemoryStore};

    use crate::agent::snapshot::compact_block;
    use crate::cni::ops::{self, AddRequest, Attachment, Ctx, Mode, Target};
    use crate::endpoints::{get_endpoint, EndpointRecord};

    const NODE: &str = "n1";
    const GRACE: Duration = Duration::from_secs(60);
    const NET: &str = "net1";

    /// What the fake dockerd answers; `None`: it does not answer.
    #[derive(Default)]
    struct FakeDockerd(Mutex<Option<HashMap<String, NetworkView>>>);

    impl FakeDockerd {
        fn answering() -> Self {
            Self(Mutex::new(Some(HashMap::new())))
        }
        fn set(&self, net: &str, endpoints: &[&str], addresses: &[Ipv4Addr]) {
            self.0.lock().unwrap().as_mut().unwrap().insert(
                net.to_string(),
                NetworkView {
                    endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
                    addresses: addresses.iter().copied().collect(),
                },
            );
        }
        fn silent(&self) {
            *self.0.lock().unwrap() = None;
        }
    }

    impl Dockerd for FakeDockerd {
        fn network<'a>(
            &'a self,
            id: &'a str,
        ) -> BoxFuture<'a, Result<Option<NetworkView>, String>> {
            let answer = match &*self.0.lock().unwrap() {
                Some(nets) => Ok(nets.get(id).cloned()),
                None => Err("connect: no such file".to_string()),
            };
            Box::pin(async move { answer })
        }
    }

    struct World {
        ipam: Ipam<MemoryStore>,
        dp: Arc<FakeDataplane>,
        docker: FakeDockerd,
        r: Reconciler,
        t0: Instant,
    }

    impl World {
        async fn new() -> Self {
            let ipam = Ipam::new(MemoryStore::new(), "/brindle");
            ipam.add_pool(NewPool {
                name: "p".into(),
                cidr: "10.7.0.0/24".parse().unwrap(),
                block_size: 26,
                disabled: false,
                reserved: Default::default(),
                nat_outgoing: false,
            })
            .await
            .unwrap();
            Self {
                ipam,
                dp: Arc::new(FakeDataplane::new()),
                docker: FakeDockerd::answering(),
                r: Reconciler::new(NODE, GRACE),
                t0: Instant::now(),
            }
        }

        /// The agent's view: pools and blocks as stored now, compacted as the agent's.
        async fn snapshot(&self) -> Snapshot {
            let mut snap = Snapshot {
                revision: 1,
                ..Default::default()
            };
            for p in self.ipam.list_pools().await.unwrap() {
                snap.pools.insert(p.name.clone(), p);
            }
            for b in self.ipam.all_blocks().await.unwrap() {
                let b = compact_block(b, Some(NODE));
                snap.blocks.insert(b.cidr.to_string(), Arc::new(b));
            }
            snap
        }

        /// A pass `secs` seconds after the start.
        async fn pass_at(&mut self, secs: u64) -> Report {
            let snap = self.snapshot().await;
            let now = self.t0 + Duration::from_secs(secs);
            self.r
                .pass(&self.ipam, self.dp.as_ref(), Some(&self.docker), &snap, now)
                .await
                .unwrap()
        }

        /// `RequestAddress` + `CreateEndpoint` as the driver does them (dockerd then
        /// lists the endpoint unless the test says otherwise).
        async fn docker_endpoint(&self, eid: &str, record: bool) -> (Ipv4Addr, String) {
            let handle = format!("docker-{eid}");
            let ip = self.docker_address(&handle).await;
            let spec = EndpointSpec::for_docker(eid, ip, None);
            self.dp.create_veth_on_host(&spec).await.unwrap();
            if record {
                self.put_docker_record(eid, ip, &handle).await;
            }
            (ip, handle)
        }

        async fn docker_address(&self, handle: &str) -> Ipv4Addr {
            self.ipam
                .allocate(&AllocRequest {
                    handle: handle.into(),
                    node: NODE.into(),
                    pool: Some("p".into()),
                    attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
                    ..Default::default()
                })
                .await
                .unwrap()
                .ip
        }

        async fn put_docker_record(&self, eid: &str, ip: Ipv4Addr, handle: &str) {
            let ep = DockerEndpoint {
                base: EndpointRecord {
                    id: eid.into(),
                    node: NODE.into(),
                    orchestrator: ORCHESTRATOR.into(),
                    container_id: None,
                    network: NET.into(),
                    ip,
                    mac: None,
                    host_ifname: brindle_dataplane::host_ifname_for(eid),
                    handle: handle.into(),
                    segment: None,
                    allow_from: Vec::new(),
                },
                sandbox: None,
                gateway: None,
                dockerd: None,
            };
            let key = self.ipam.keys().endpoint(NODE, eid);
            state::put(self.ipam.store(), &key, &ep).await.unwrap();
        }

        async fn record_exists(&self, id: &str) -> bool {
            get_endpoint(self.ipam.store(), self.ipam.keys(), NODE, id)
                .await
                .unwrap()
                .is_some()
        }

        async fn held(&self, handle: &str) -> Vec<Ipv4Addr> {
            self.ipam.addresses_of(handle).await.unwrap()
        }

        /// A CNI ADD (main mode) of container `cid`.
        async fn cni_add(&self, cid: &str) -> Ipv4Addr {
            let ctx = Ctx {
                ipam: &self.ipam,
                dataplane: Some(self.dp.as_ref()),
                node: NODE,
                reaper: None,
            };
            ops::add(&ctx, &cni_req(cid, Mode::Main)).await.unwrap().ip
        }
    }

    impl World {
        /// A CNI allocation alone, as the first step of an ADD makes it (`main`: of
        /// brindle's own plugin; else of `brindle-ipam` under another plugin).
        async fn cni_allocation(&self, cid: &str, main: bool) {
            let ctx = Ctx {
                ipam: &self.ipam,
                dataplane: Some(self.dp.as_ref()),
                node: NODE,
                reaper: None,
            };
            ops::add(&ctx, &cni_req(cid, Mode::Ipam)).await.unwrap();
            if main {
                let handle = format!("{cid}+eth0");
                let attrs = BTreeMap::from([(ATTR_CNI_MODE.to_string(), "main".to_string())]);
                self.ipam.set_attributes(&handle, &attrs).await.unwrap();
            }
        }
    }

    fn cni_req(cid: &str, mode: Mode) -> AddRequest {
        AddRequest {
            target: Target {
                node: NODE.into(),
                prefix: "/brindle".into(),
            },
            mode,
            network: "cninet".into(),
            attachment: Attachment {
                container_id: cid.into(),
                ifname: "eth0".into(),
            },
            netns: Some("/run/netns/fake".into()),
            ip: None,
            pool: None,
            mtu: None,
            allow_from: Vec::new(),
        }
    }

    #[test]
    fn durations_parse_as_flags_give_them() {
        assert_eq!(parse_duration("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[tokio::test]
    async fn a_veth_without_a_record_goes_after_the_grace_period_and_one_with_a_record_stays() {
        let mut w = World::new().await;
        w.docker.set(NET, &["kept"], &[]);
        let (kept_ip, _) = w.docker_endpoint("kept", true).await;
        // CreateEndpoint killed between the veth and the record.
        let (_, orphan_handle) = w.docker_endpoint("orphan", false).await;
        let orphan = brindle_dataplane::host_ifname_for("orphan");
        let first = w.pass_at(0).await;
        assert_eq!(
            first.veths_deleted, 0,
            "a create makes the veth before the record"
        );
        assert!(first.waiting >= 1);
        assert!(w.dp.has_endpoint(&orphan));
        let later = w.pass_at(30).await;
        assert_eq!(later.veths_deleted, 0);
        let after = w.pass_at(60).await;
        assert_eq!(after.veths_deleted, 1, "{after:?}");
        assert!(!w.dp.has_endpoint(&orphan));
        assert!(w
            .dp
            .has_endpoint(&brindle_dataplane::host_ifname_for("kept")));
        assert!(w.dp.host_routes().iter().any(|(ip, _)| *ip == kept_ip));
        // Its address is now unrouted and nobody's: released after its own grace.
        assert_eq!(w.held(&orphan_handle).await.len(), 1);
        w.pass_at(61).await;
        let done = w.pass_at(121).await;
        assert_eq!(done.addresses_released, 1, "{done:?}");
        assert!(w.held(&orphan_handle).await.is_empty());
        assert_eq!(w.held("docker-kept").await, vec![kept_ip]);
    }

    #[tokio::test]
    async fn a_veth_being_created_right_now_is_kept_once_its_record_arrives() {
        let mut w = World::new().await;
        w.docker.set(NET, &["slow"], &[]);
        let (ip, handle) = w.docker_endpoint("slow", false).await;
        w.pass_at(0).await;
        w.put_docker_record("slow", ip, &handle).await;
        let r = w.pass_at(90).await;
        assert_eq!(
            r,
            Report {
                docker_answered: true,
                ..Default::default()
            }
        );
        assert!(w
            .dp
            .has_endpoint(&brindle_dataplane::host_ifname_for("slow")));
        assert!(w.record_exists("slow").await);
    }

    #[tokio::test]
    async fn veths_of_another_installation_are_left_alone_and_a_new_link_restarts_the_clock() {
        let mut w = World::new().await;
        // Routed outside every pool of ours: someone else's endpoint.
        let other = EndpointSpec::for_docker("foreign", "192.0.2.7".parse().unwrap(), None);
        w.dp.create_veth_on_host(&other).await.unwrap();
        // Without a route (its deletion was decided): ours to finish.
        let routeless = EndpointSpec::for_docker("gone", "10.7.0.9".parse().unwrap(), None);
        w.dp.create_veth_on_host(&routeless).await.unwrap();
        w.dp.del_host_route(routeless.ip).await.unwrap();
        w.pass_at(0).await;
        // The link is replaced by a new one of the same name: judged anew.
        w.dp.delete_endpoint(&routeless.host_ifname).await.unwrap();
        w.dp.create_veth_on_host(&routeless).await.unwrap();
        w.dp.del_host_route(routeless.ip).await.unwrap();
        assert_eq!(w.pass_at(60).await.veths_deleted, 0);
        assert_eq!(w.pass_at(120).await.veths_deleted, 1);
        assert!(!w.dp.has_endpoint(&routeless.host_ifname));
        assert!(w.dp.has_endpoint(&other.host_ifname));
    }

    #[tokio::test]
    async fn a_veth_another_node_records_on_the_same_kernel_is_left_alone() {
        let mut w = World::new().await;
        let ip: Ipv4Addr = "10.7.0.20".parse().unwrap();
        let spec = EndpointSpec::for_docker("othernode", ip, None);
        w.dp.create_veth_on_host(&spec).await.unwrap();
        let record = EndpointRecord {
            id: "othernode".into(),
            node: "n2".into(),
            orchestrator: ORCHESTRATOR.into(),
            container_id: None,
            network: NET.into(),
            ip,
            mac: None,
            host_ifname: spec.host_ifname.clone(),
            handle: "docker-othernode".into(),
            segment: None,
            allow_from: Vec::new(),
        };
        let key = w.ipam.keys().endpoint("n2", "othernode");
        state::put(w.ipam.store(), &key, &record).await.unwrap();
        for secs in [0, 60, 120] {
            let mut snap = w.snapshot().await;
            snap.endpoints.insert(key.clone(), record.clone());
            let now = w.t0 + Duration::from_secs(secs);
            let r =
                w.r.pass(&w.ipam, w.dp.as_ref(), Some(&w.docker), &snap, now)
                    .await
                    .unwrap();
            assert_eq!(r.veths_deleted, 0);
        }
        assert!(w.dp.has_endpoint(&spec.host_ifname));
    }

    #[tokio::test]
    async fn a_docker_record_dockerd_forgot_goes_with_its_veth_and_address() {
        let mut w = World::new().await;
        let (ip, handle) = w.docker_endpoint("e1", true).await;
        let (ip2, handle2) = w.docker_endpoint("e2", true).await;
        // dockerd lists e2 only.
        w.docker.set(NET, &["e2"], &[ip2]);
        assert_eq!(w.pass_at(0).await.records_removed, 0);
        // While dockerd does not answer, nothing is judged, and a finding must be seen
        // again for a whole grace period once it answers.
        w.docker.silent();
        let r = w.pass_at(60).await;
        assert!(!r.docker_answered);
        assert_eq!(r.records_removed, 0);
        assert!(w.record_exists("e1").await);
        w.docker = FakeDockerd::answering();
        w.docker.set(NET, &["e2"], &[ip2]);
        assert_eq!(w.pass_at(61).await.records_removed, 0);
        let r = w.pass_at(121).await;
        assert_eq!((r.records_removed, r.addresses_released), (1, 1), "{r:?}");
        assert!(!w.record_exists("e1").await);
        assert!(!w.dp.has_endpoint(&brindle_dataplane::host_ifname_for("e1")));
        assert!(w.held(&handle).await.is_empty());
        assert!(!w.dp.host_routes().iter().any(|(a, _)| *a == ip));
        assert!(w.record_exists("e2").await);
        assert_eq!(w.held(&handle2).await, vec![ip2]);
        // A network dockerd no longer has at all: its endpoints go too.
        w.docker = FakeDockerd::answering();
        w.pass_at(122).await;
        assert_eq!(w.pass_at(182).await.records_removed, 1);
        assert!(!w.record_exists("e2").await);
    }

    #[tokio::test]
    async fn a_record_written_meanwhile_is_judged_anew() {
        let mut w = World::new().await;
        w.docker.set(NET, &[], &[]);
        let (ip, handle) = w.docker_endpoint("e1", true).await;
        w.pass_at(0).await;
        // Join updates the record at 59 s: its clock restarts.
        w.put_docker_record("e1", ip, &handle).await;
        assert_eq!(w.pass_at(59).await.records_removed, 0);
        assert_eq!(w.pass_at(60).await.records_removed, 0);
        assert!(w.record_exists("e1").await);
        assert_eq!(w.pass_at(119).await.records_removed, 1);
    }

    #[tokio::test]
    async fn orphaned_docker_addresses_are_released_after_the_grace_period_only() {
        let mut w = World::new().await;
        let net = NetworkRecord {
            id: NET.into(),
            node: NODE.into(),
            subnets: vec![records::NetworkSubnet {
                subnet: "10.7.0.0/24".parse().unwrap(),
                gateway: Some("10.7.0.254".parse().unwrap()),
                aux: Default::default(),
            }],
            mtu: None,
            allow_from: Vec::new(),
            segment: None,
        };
        let key = w.ipam.keys().docker_network(NET);
        state::put(w.ipam.store(), &key, &net).await.unwrap();
        // RequestAddress answered, CreateEndpoint never came (killed, Docker gave up).
        let lost = w.docker_address("docker-lost").await;
        // One dockerd still lists (a container mid-start on another path).
        let listed = w.docker_address("docker-listed").await;
        // The network's --gateway.
        w.ipam
            .allocate(&AllocRequest {
                handle: "docker-gw".into(),
                node: NODE.into(),
                ip: Some("10.7.0.254".parse().unwrap()),
                attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
                ..Default::default()
            })
            .await
            .unwrap();
        // Another node's, and one without an orchestrator (the CLI's).
        w.ipam
            .allocate(&AllocRequest {
                handle: "docker-other-node".into(),
                node: "n2".into(),
                attrs: BTreeMap::from([(ATTR_ORCHESTRATOR.into(), ORCHESTRATOR.into())]),
                ..Default::default()
            })
            .await
            .unwrap();
        w.ipam
            .allocate(&AllocRequest {
                handle: "cli".into(),
                node: NODE.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        w.docker.set(NET, &[], &[listed]);
        let r = w.pass_at(0).await;
        assert_eq!(r.addresses_released, 0, "within its grace period");
        assert_eq!(r.waiting, 1);
        assert_eq!(w.pass_at(59).await.addresses_released, 0);
        let r = w.pass_at(60).await;
        assert_eq!(r.addresses_released, 1, "{r:?}");
        assert!(w.held("docker-lost").await.is_empty());
        let _ = lost;
        for kept in ["docker-listed", "docker-gw", "docker-other-node", "cli"] {
            assert_eq!(w.held(kept).await.len(), 1, "{kept}");
        }
        // Without an answer from dockerd, no Docker address is judged.
        let orphan = w.docker_address("docker-lost2").await;
        w.docker.silent();
        w.pass_at(61).await;
        assert_eq!(w.pass_at(200).await.addresses_released, 0);
        assert_eq!(w.held("docker-lost2").await, vec![orphan]);
    }

    #[tokio::test]
    async fn a_cni_record_whose_netns_is_gone_goes_with_its_address() {
        let mut w = World::new().await;
        let ip = w.cni_add("c1").await;
        let kept = w.cni_add("c2").await;
        let att = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        // The container's netns went away without a DEL: the kernel took the veth.
        w.dp.delete_endpoint(&att.host_ifname()).await.unwrap();
        assert_eq!(w.pass_at(0).await.records_removed, 0);
        let r = w.pass_at(60).await;
        assert_eq!((r.records_removed, r.addresses_released), (1, 1), "{r:?}");
        assert!(!w.record_exists("c1+eth0").await);
        assert!(w.held("c1+eth0").await.is_empty());
        assert!(w.record_exists("c2+eth0").await);
        assert_eq!(w.held("c2+eth0").await, vec![kept]);
        let _ = ip;
    }

    #[tokio::test]
    async fn cni_addresses_without_a_record_are_released_after_the_grace_period_only() {
        let mut w = World::new().await;
        // ADD killed after the allocation, before the veth.
        w.cni_allocation("killed", true).await;
        // Another plugin's interface (brindle-ipam under ptp): never judged here.
        w.cni_allocation("ptp", false).await;
        assert_eq!(w.pass_at(0).await.addresses_released, 0);
        assert_eq!(w.pass_at(30).await.addresses_released, 0, "within grace");
        // Released and taken again by a new ADD of the same attachment meanwhile: the
        // handle's revision changed, so its clock restarts.
        w.ipam.release_handle("killed+eth0").await.unwrap();
        w.cni_allocation("killed", true).await;
        assert_eq!(w.pass_at(60).await.addresses_released, 0);
        assert_eq!(w.held("killed+eth0").await.len(), 1);
        let r = w.pass_at(120).await;
        assert_eq!(r.addresses_released, 1, "{r:?}");
        assert!(w.held("killed+eth0").await.is_empty());
        assert_eq!(w.held("ptp+eth0").await.len(), 1);
    }

    #[tokio::test]
    async fn a_cni_address_whose_record_appears_meanwhile_is_kept() {
        let w = World::new().await;
        let ip = w.cni_add("c1").await;
        let keys = w.ipam.keys();
        let handle = state::read::<HandleRecord>(w.ipam.store(), &keys.handle("c1+eth0"))
            .await
            .unwrap()
            .unwrap();
        // The reconcile judged the handle orphaned; the ADD's record is there by the
        // time it releases: the guard keeps the address.
        let r = Reconciler::new(NODE, GRACE);
        let guards = r.release_guards(keys, "c1+eth0");
        let out = w
            .ipam
            .release_handle_if("c1+eth0", handle.revision, &guards)
            .await
            .unwrap();
        assert_eq!(out, None);
        assert_eq!(w.held("c1+eth0").await, vec![ip]);
        // Without the record, at the revision judged: released.
        state::delete(w.ipam.store(), &keys.endpoint(NODE, "c1+eth0"))
            .await
            .unwrap();
        let stale = w
            .ipam
            .release_handle_if("c1+eth0", handle.revision - 1, &guards)
            .await
            .unwrap();
        assert_eq!(stale, None, "a handle written since it was judged stays");
        let out = w
            .ipam
            .release_handle_if("c1+eth0", handle.revision, &guards)
            .await
            .unwrap();
        assert_eq!(out, Some(vec![ip]));
    }

    #[tokio::test]
    async fn an_address_is_released_only_once_no_interface_routes_it() {
        let mut w = World::new().await;
        w.docker.set(NET, &[], &[]);
        let handle = "docker-routed";
        let ip = w.docker_address(handle).await;
        // A record-less veth still routes it (CreateEndpoint killed before the record).
        let spec = EndpointSpec::for_docker("x", ip, None);
        w.dp.create_veth_on_host(&spec).await.unwrap();
        w.pass_at(0).await;
        let r = w.pass_at(120).await;
        assert_eq!((r.veths_deleted, r.addresses_released), (1, 0), "{r:?}");
        assert_eq!(w.held(handle).await, vec![ip]);
        // Unrouted from now on: its own grace period starts.
        assert_eq!(w.pass_at(121).await.addresses_released, 0);
        assert_eq!(w.pass_at(181).await.addresses_released, 1);
        assert!(w.held(handle).await.is_empty());
    }
}
