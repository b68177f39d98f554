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
            .chain(snap.endpoints.iter().map(|e| e.view.host_ifname()))
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
mod tests;
