//! Keeps the host firewall in force for this node (see `brindle_dataplane::firewall`):
//! - FORWARD's accept path is checked every [`CHECK`] and restored when dockerd's
//!   restart or an admin's flush removed it;
//! - brindle's nftables table follows the snapshot: a new or removed endpoint is a set
//!   element update; a new network, guard or pool replaces the table atomically; a
//!   table that vanished (or a failed update) is rebuilt whole.
//!
//! Membership: an address is a member of every network its container is on, so a
//! container on two networks reaches both whichever of its addresses it sends from.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_dataplane::firewall::{Firewall, FirewallSpec, Guard, SetDelta};
use brindle_dataplane::DataplaneError;
use tracing::{info, warn};

use super::metrics::METRICS;
use super::snapshot::Snapshot;

/// How often FORWARD and the table are checked for outside changes: well inside the
/// 5 s in which reachability must come back after dockerd rewrites its chains.
pub const CHECK: Duration = Duration::from_secs(2);

/// Pause before retrying a firewall change that failed.
const RETRY: Duration = Duration::from_secs(1);

/// The firewall's own loop beside the agent's (which keeps routes and BIRD): it wakes
/// on every new snapshot and every [`CHECK`], until the snapshot channel closes.
pub async fn run(
    node: String,
    fw: Arc<dyn Firewall>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
) {
    let mut reconciler = FirewallReconciler::default();
    loop {
        let snap = snapshots.borrow_and_update().clone();
        let mut wait = CHECK;
        if snap.is_loaded() {
            let spec = desired(&snap, &node);
            let now = Instant::now();
            wait = match reconciler.reconcile(fw.as_ref(), &spec, now).await {
                true => reconciler
                    .next_check
                    .saturating_duration_since(Instant::now()),
                false => RETRY,
            };
        }
        tokio::select! {
            changed = snapshots.changed() => {
                if changed.is_err() {
                    return;
                }
                tokio::time::sleep(super::DEBOUNCE).await;
            }
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
        }
    }
}

/// What the firewall should hold on `node` according to `snap`.
pub fn desired(snap: &Snapshot, node: &str) -> FirewallSpec {
    let mut spec = FirewallSpec {
        pools: snap.pools.values().map(|p| p.cidr).collect(),
        nat_pools: snap
            .pools
            .values()
            .filter(|p| p.nat_outgoing)
            .map(|p| p.cidr)
            .collect(),
        ..Default::default()
    };
    // The segments of each container (endpoints without a known container stand alone).
    let mut containers: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
    for e in snap.endpoints.iter() {
        containers
            .entry((e.node, e.owner()))
            .or_default()
            .insert(&e.view.segment);
    }
    for e in snap.endpoints.iter() {
        let v = e.view;
        for &segment in &containers[&(e.node, e.owner())] {
            match spec.members.get_mut(segment) {
                Some(set) => set.insert(v.ip),
                None => spec
                    .members
                    .entry(segment.to_string())
                    .or_default()
                    .insert(v.ip),
            };
        }
        if e.node == node {
            spec.local.insert(
                v.ip,
                Guard {
                    segment: v.segment.to_string(),
                    allow_from: v.allow_from.iter().copied().collect(),
                },
            );
        }
    }
    spec
}

/// The firewall's state across passes.
#[derive(Debug)]
pub struct FirewallReconciler {
    /// What the table holds as far as we know; `None` forces a full replace.
    applied: Option<FirewallSpec>,
    /// When FORWARD and the table's presence are next checked for outside changes.
    next_check: Instant,
    /// The last failure of each half, logged once until it changes or clears.
    forward_error: Option<String>,
    table_error: Option<String>,
}

impl Default for FirewallReconciler {
    fn default() -> Self {
        Self {
            applied: None,
            next_check: Instant::now(),
            forward_error: None,
            table_error: None,
        }
    }
}

/// Logs `result` of one half once per distinct failure; returns whether it succeeded.
fn settle(
    slot: &mut Option<String>,
    result: Result<(), DataplaneError>,
    consequence: &str,
) -> bool {
    match result {
        Ok(()) => {
            if slot.take().is_some() {
                info!("{consequence}: fixed, in force again");
            }
            true
        }
        Err(e) => {
            METRICS.firewall_errors.inc();
            let msg = e.to_string();
            if slot.as_deref() != Some(msg.as_str()) {
                warn!(error = %msg, "{consequence}; retrying (routes, BGP and the Docker/CNI service go on)");
                *slot = Some(msg);
            }
            false
        }
    }
}

impl FirewallReconciler {
    /// One pass: FORWARD's accept path (checked every [`CHECK`] or while it fails),
    /// then the isolation table for `spec`. The halves fail independently, so a host
    /// without `nft` still forwards. Returns whether both are in force.
    pub async fn reconcile(
        &mut self,
        fw: &dyn Firewall,
        spec: &FirewallSpec,
        now: Instant,
    ) -> bool {
        let check =
            now >= self.next_check || self.forward_error.is_some() || self.applied.is_none();
        if check {
            self.next_check = now + CHECK;
        }
        let forward = match check {
            true => Self::ensure_forward(fw).await,
            false => Ok(()),
        };
        let forward_ok = settle(
            &mut self.forward_error,
            forward,
            "cannot install brindle's accept rules in FORWARD: endpoint traffic is dropped where FORWARD's policy is DROP",
        );
        let table = self.sync_table(fw, spec, check).await;
        if table.is_err() {
            self.applied = None;
        }
        let table_ok = settle(
            &mut self.table_error,
            table,
            "cannot program brindle's nftables table: networks are not isolated from each other and outgoing NAT is off",
        );
        let ok = forward_ok && table_ok;
        METRICS.firewall_in_force.set(i64::from(ok));
        ok
    }

    async fn ensure_forward(fw: &dyn Firewall) -> Result<(), DataplaneError> {
        let status = fw.ensure_forward_accept().await?;
        if status.repaired {
            METRICS.firewall_repairs.inc();
            info!(backend = status.backend.name(), policy = ?status.policy, "FORWARD's jump to BRINDLE-FORWARD installed");
        }
        Ok(())
    }

    async fn sync_table(
        &mut self,
        fw: &dyn Firewall,
        spec: &FirewallSpec,
        check: bool,
    ) -> Result<(), DataplaneError> {
        if check && self.applied.is_some() && !fw.table_present().await? {
            warn!("brindle's nftables table was removed from outside; rebuilding it");
            self.applied = None;
        }
        match &self.applied {
            Some(old) if old.same_shape(spec) => {
                let delta = SetDelta::between(old, spec);
                if delta.is_empty() {
                    return Ok(());
                }
                if let Err(e) = fw.update_sets(&delta).await {
                    warn!(error = %e, "set update failed; replacing brindle's table");
                    self.replace(fw, spec).await?;
                } else {
                    METRICS.firewall_updates.inc();
                    self.applied = Some(spec.clone());
                }
            }
            _ => self.replace(fw, spec).await?,
        }
        Ok(())
    }

    async fn replace(
        &mut self,
        fw: &dyn Firewall,
        spec: &FirewallSpec,
    ) -> Result<(), DataplaneError> {
        self.applied = None;
        fw.replace_table(spec).await?;
        METRICS.firewall_replaces.inc();
        self.applied = Some(spec.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// Waits up to 5 s for `cond`.
    async fn until(cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(Instant::now() < deadline, "the firewall loop did not act");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn the_loop_follows_snapshots_and_repairs_on_its_own() {
        let fw = Arc::new(FakeFirewall::new());
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
        let task = tokio::spawn(run("n1".into(), fw.clone(), rx));
        tx.send(Arc::new(snap(
            &[ep("a1", "n1", "c1", "blue", "10.10.0.1")],
            false,
        )))
        .unwrap();
        until(|| fw.table().is_some_and(|t| t.local.len() == 1)).await;
        // An admin flushes FORWARD: the next check (within CHECK) puts it back.
        fw.flush_forward();
        until(|| fw.counts().2 == 2).await;
        drop(tx);
        task.await.unwrap();
    }

    use super::*;
    use crate::endpoints::EndpointRecord;
    use brindle_dataplane::FakeFirewall;
    use brindle_ipam::{Keys, Pool};

    fn ep(id: &str, node: &str, container: &str, segment: &str, ip: &str) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            node: node.into(),
            orchestrator: "cni".into(),
            container_id: Some(container.into()),
            network: segment.into(),
            ip: ip.parse().unwrap(),
            mac: None,
            host_ifname: format!("brl{id}"),
            handle: id.into(),
            segment: Some(segment.into()),
            allow_from: Vec::new(),
        }
    }

    fn snap(endpoints: &[EndpointRecord], nat: bool) -> Snapshot {
        let mut s = Snapshot {
            revision: 3,
            ..Default::default()
        };
        s.pools.insert(
            "p".into(),
            Pool {
                name: "p".into(),
                cidr: "10.10.0.0/16".parse().unwrap(),
                block_size: 26,
                disabled: false,
                reserved: Default::default(),
                deleting: false,
                deleting_since: None,
                nat_outgoing: nat,
            },
        );
        for e in endpoints {
            s.endpoints
                .insert(Keys::new("/b").endpoint(&e.node, &e.id), e.clone());
        }
        s
    }

    #[test]
    fn members_span_hosts_and_a_shared_container_joins_both_networks() {
        let s = snap(
            &[
                ep("a1", "n1", "c1", "blue", "10.10.0.1"),
                ep("b1", "n2", "c2", "red", "10.10.0.2"),
                // c3 on n2 is on blue and red.
                ep("a3", "n2", "c3", "blue", "10.10.0.3"),
                ep("b3", "n2", "c3", "red", "10.10.0.4"),
            ],
            true,
        );
        let spec = desired(&s, "n1");
        let ips = |v: &[&str]| {
            v.iter()
                .map(|i| i.parse().unwrap())
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(
            spec.members["blue"],
            ips(&["10.10.0.1", "10.10.0.3", "10.10.0.4"])
        );
        assert_eq!(
            spec.members["red"],
            ips(&["10.10.0.2", "10.10.0.3", "10.10.0.4"])
        );
        assert_eq!(spec.local.len(), 1, "only n1's endpoints are guarded here");
        assert_eq!(spec.local[&"10.10.0.1".parse().unwrap()].segment, "blue");
        assert_eq!(spec.nat_pools.len(), 1);
    }

    #[tokio::test]
    async fn a_new_endpoint_is_a_set_update_and_outside_damage_is_repaired() {
        let fw = FakeFirewall::new();
        let mut r = FirewallReconciler::default();
        let t0 = Instant::now();
        let one = desired(
            &snap(&[ep("a1", "n1", "c1", "blue", "10.10.0.1")], false),
            "n1",
        );
        assert!(r.reconcile(&fw, &one, t0).await);
        assert_eq!(fw.counts(), (1, 0, 1));
        let two = desired(
            &snap(
                &[
                    ep("a1", "n1", "c1", "blue", "10.10.0.1"),
                    ep("a2", "n1", "c2", "blue", "10.10.0.2"),
                ],
                false,
            ),
            "n1",
        );
        assert!(r.reconcile(&fw, &two, t0).await);
        assert_eq!(fw.counts(), (1, 1, 1), "one element update, no replace");
        assert_eq!(fw.table().unwrap(), two);

        // dockerd restarts (FORWARD rewritten) and an admin drops the table: both are
        // back at the next check.
        fw.flush_forward();
        fw.drop_table();
        assert!(r.reconcile(&fw, &two, t0 + CHECK).await);
        assert_eq!(fw.counts(), (2, 1, 2));
        assert_eq!(fw.table().unwrap(), two);
    }

    #[tokio::test]
    async fn a_failed_update_falls_back_to_a_replace() {
        let fw = FakeFirewall::new();
        let mut r = FirewallReconciler::default();
        let t0 = Instant::now();
        let two = desired(
            &snap(
                &[
                    ep("a1", "n1", "c1", "blue", "10.10.0.1"),
                    ep("a2", "n1", "c2", "blue", "10.10.0.2"),
                ],
                false,
            ),
            "n1",
        );
        r.reconcile(&fw, &two, t0).await;
        // Someone deletes our table between checks: the next delta fails, a replace follows.
        fw.drop_table();
        let one = desired(
            &snap(&[ep("a1", "n1", "c1", "blue", "10.10.0.1")], false),
            "n1",
        );
        assert!(r.reconcile(&fw, &one, t0).await);
        assert_eq!(fw.table().unwrap(), one);
        assert_eq!(fw.counts().0, 2);
    }

    #[tokio::test]
    async fn missing_tools_are_reported_not_fatal() {
        let fw = FakeFirewall::new();
        fw.without_tools();
        let mut r = FirewallReconciler::default();
        let spec = desired(&snap(&[], false), "n1");
        assert!(!r.reconcile(&fw, &spec, Instant::now()).await);
        assert!(r
            .table_error
            .as_deref()
            .unwrap()
            .contains("install the Debian package nftables"));
        assert!(r
            .forward_error
            .as_deref()
            .unwrap()
            .contains("install the Debian package iptables"));
    }

    #[tokio::test]
    async fn without_nft_forwarding_still_works() {
        let fw = FakeFirewall::new();
        fw.without_nft();
        let mut r = FirewallReconciler::default();
        let spec = desired(&snap(&[], false), "n1");
        assert!(!r.reconcile(&fw, &spec, Instant::now()).await);
        assert!(r.forward_error.is_none(), "{:?}", r.forward_error);
        assert_eq!(fw.counts().2, 1, "FORWARD's accept path is installed");
        assert!(r.table_error.as_deref().unwrap().contains("nftables"));
    }
}
