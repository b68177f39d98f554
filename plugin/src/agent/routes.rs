//! Kernel routes of this node, all with brindle's route protocol (98):
//! - a blackhole for each block affine to the node (not for /32 blocks: the
//!   endpoint's own /32 is the whole block), removed when the block goes away or
//!   moves to another node. BIRD learns it and announces the block; the endpoints'
//!   /32s inside it win by longest prefix, everything else in the block is dropped
//!   here instead of bouncing back to the fabric;
//! - the /32 of each local endpoint (record at `PREFIX/v1/endpoints/NODE/ID`) to its
//!   host veth, re-added if it disappears. A /32 of ours that no record explains is
//!   removed only after a grace period, since the Docker driver may create the route
//!   a moment before it writes the record (a fixed address: both at once). A new
//!   CNI or dynamic Docker endpoint is the other way round: its record is stored
//!   before its veth is routed, so this may route it first (the endpoint's own route
//!   step accepts a route already at its veth).
//!
//! Cleanup is scoped: a route of ours is only removed when it lies inside one of the
//! IP pools in etcd (or this process added it). Another brindled on the same kernel
//! with another etcd (test suites do that) keeps its routes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use brindle_dataplane::{Dataplane, DataplaneError, RouteTarget};
use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use super::metrics::METRICS;
use super::snapshot::Snapshot;

/// How long a /32 of ours may exist without an endpoint record before it is removed.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// The routes this node should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Blocks affine to this node (canonical, shorter than /32).
    pub blackholes: BTreeSet<Ipv4Network>,
    /// Local endpoint address → host veth.
    pub host_routes: BTreeMap<Ipv4Addr, String>,
    /// The IP pools: stale routes are only removed inside them.
    pub pools: Vec<Ipv4Network>,
}

impl Desired {
    /// What `node` should have according to `snap`.
    pub fn from_snapshot(snap: &Snapshot, node: &str) -> Self {
        let blackholes = snap
            .blocks
            .values()
            .filter(|b| b.affinity.as_deref() == Some(node))
            .filter_map(|b| Ipv4Network::new(b.cidr.network(), b.cidr.prefix()).ok())
            .filter(|c| c.prefix() < 32)
            .collect();
        let host_routes = snap
            .endpoints
            .on(node)
            .map(|e| (e.view.ip, e.view.host_ifname().to_string()))
            .collect();
        let pools = snap.pools.values().map(|p| p.cidr).collect();
        Self {
            blackholes,
            host_routes,
            pools,
        }
    }

    fn in_pools(&self, net: Ipv4Network) -> bool {
        self.pools
            .iter()
            .any(|p| p.contains(net.network()) && p.prefix() <= net.prefix())
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Route changes made.
    pub changes: usize,
    /// Changes that failed (retried on the next pass).
    pub errors: usize,
    /// Endpoints whose interface does not exist (yet): nothing to route to.
    pub missing_interfaces: usize,
    /// Orphaned /32s still inside their grace period.
    pub orphans_waiting: usize,
}

/// Brings the kernel to [`Desired`], remembering orphans across passes.
#[derive(Debug)]
pub struct RouteReconciler {
    grace: Duration,
    orphans: HashMap<Ipv4Addr, Instant>,
    last_applied: Option<Desired>,
    /// Blackholes this process added (removed when stale even outside the pools,
    /// e.g. after the pool itself was removed).
    added: BTreeSet<Ipv4Network>,
}

impl Default for RouteReconciler {
    fn default() -> Self {
        Self::new(ORPHAN_GRACE)
    }
}

impl RouteReconciler {
    /// A reconciler removing unexplained /32s after `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            orphans: HashMap::new(),
            last_applied: None,
            added: BTreeSet::new(),
        }
    }

    /// Whether `desired` differs from what the last clean pass applied (a pass can be
    /// skipped when nothing changed and no periodic check is due).
    pub fn needs_pass(&self, desired: &Desired) -> bool {
        self.last_applied.as_ref() != Some(desired) || !self.orphans.is_empty()
    }

    /// One pass: list brindle's routes, add what is missing, remove what is stale.
    pub async fn reconcile(
        &mut self,
        dp: &dyn Dataplane,
        desired: &Desired,
        now: Instant,
    ) -> Result<Pass, DataplaneError> {
        let current = dp.list_routes_with_our_protocol().await?;
        let mut pass = Pass::default();
        let mut have_blackholes = BTreeSet::new();
        let mut have_hosts: BTreeMap<Ipv4Addr, Option<String>> = BTreeMap::new();
        for r in &current {
            match &r.target {
                RouteTarget::Blackhole => {
                    have_blackholes.insert(r.dst);
                }
                RouteTarget::Interface { ifname, .. } if r.dst.prefix() == 32 => {
                    have_hosts.insert(r.dst.ip(), ifname.clone());
                }
                _ => debug!(route = %r, "leaving a route of ours alone"),
            }
        }

        for &cidr in desired.blackholes.difference(&have_blackholes) {
            match dp.add_blackhole_route(cidr).await {
                Ok(()) => {
                    self.added.insert(cidr);
                    pass.changes += 1;
                    METRICS.routes_added.inc();
                }
                Err(e) => {
                    pass.errors += 1;
                    METRICS.route_errors.inc();
                    warn!(%cidr, error = %e, "cannot add the blackhole route of a block");
                }
            }
        }
        for &cidr in have_blackholes.difference(&desired.blackholes) {
            if !desired.in_pools(cidr) && !self.added.contains(&cidr) {
                debug!(%cidr, "leaving a blackhole outside our pools alone");
                continue;
            }
            info!(%cidr, "block no longer affine to this node: removing its blackhole");
            match dp.del_blackhole_route(cidr).await {
                Ok(_) => {
                    self.added.remove(&cidr);
                    pass.changes += 1;
                    METRICS.routes_removed.inc();
                }
                Err(e) => {
                    pass.errors += 1;
                    METRICS.route_errors.inc();
                    warn!(%cidr, error = %e, "cannot remove a stale blackhole route");
                }
            }
        }

        let mut in_place: usize = 0;
        for (&ip, ifname) in &desired.host_routes {
            if have_hosts.get(&ip) == Some(&Some(ifname.clone())) {
                in_place += 1;
                continue;
            }
            match dp.replace_host_route(ip, ifname).await {
                Ok(()) => {
                    in_place += 1;
                    pass.changes += 1;
                    METRICS.routes_added.inc();
                    info!(%ip, %ifname, "endpoint route restored");
                }
                Err(DataplaneError::NotFound { .. }) => {
                    pass.missing_interfaces += 1;
                    debug!(%ip, %ifname, "endpoint interface missing: no route to keep");
                }
                Err(e) => {
                    pass.errors += 1;
                    METRICS.route_errors.inc();
                    warn!(%ip, %ifname, error = %e, "cannot program an endpoint route");
                }
            }
        }

        // /32s of ours that no endpoint record explains.
        let unexplained: BTreeSet<Ipv4Addr> = have_hosts
            .keys()
            .filter(|ip| !desired.host_routes.contains_key(ip))
            .filter(|ip| desired.in_pools(Ipv4Network::from(**ip)))
            .copied()
            .collect();
        self.orphans.retain(|ip, _| unexplained.contains(ip));
        for ip in unexplained {
            let since = *self.orphans.entry(ip).or_insert(now);
            if now.duration_since(since) < self.grace {
                pass.orphans_waiting += 1;
                continue;
            }
            info!(%ip, "removing a /32 route no local endpoint record explains");
            match dp.del_host_route(ip).await {
                Ok(_) => {
                    self.orphans.remove(&ip);
                    pass.changes += 1;
                    METRICS.routes_removed.inc();
                }
                Err(e) => {
                    pass.errors += 1;
                    METRICS.route_errors.inc();
                    warn!(%ip, error = %e, "cannot remove an orphaned /32 route");
                }
            }
        }

        METRICS
            .blackhole_routes
            .set(i64::try_from(desired.blackholes.len()).unwrap_or(i64::MAX));
        METRICS
            .endpoint_routes
            .set(i64::try_from(in_place).unwrap_or(i64::MAX));
        self.last_applied = (pass.errors == 0).then(|| desired.clone());
        Ok(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::EndpointRecord;
    use brindle_dataplane::{EndpointSpec, FakeCall, FakeDataplane, FakeOp};
    use brindle_ipam::Block;
    use std::sync::Arc;

    fn block(cidr: &str, node: Option<&str>) -> Block {
        Block {
            cidr: cidr.parse().unwrap(),
            pool: "p".into(),
            affinity: node.map(Into::into),
            allocations: Default::default(),
            cursor: 0,
        }
    }

    fn endpoint(id: &str, node: &str, ip: &str, ifname: &str) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            node: node.into(),
            orchestrator: "cni".into(),
            container_id: None,
            network: "net".into(),
            ip: ip.parse().unwrap(),
            mac: None,
            host_ifname: ifname.into(),
            handle: id.into(),
            segment: None,
            allow_from: Vec::new(),
        }
    }

    fn snapshot(blocks: &[Block], endpoints: &[EndpointRecord]) -> Snapshot {
        let mut s = Snapshot {
            revision: 1,
            ..Default::default()
        };
        for cidr in ["10.1.0.0/16", "10.9.0.0/16"] {
            s.pools.insert(
                cidr.into(),
                brindle_ipam::Pool {
                    name: cidr.into(),
                    cidr: cidr.parse().unwrap(),
                    block_size: 26,
                    disabled: false,
                    reserved: Default::default(),
                    deleting: false,
                    deleting_since: None,
                    nat_outgoing: false,
                },
            );
        }
        for b in blocks {
            s.blocks.insert(b.cidr.to_string(), Arc::new(b.clone()));
        }
        for e in endpoints {
            s.endpoints.insert(&e.id, e.clone());
        }
        s
    }

    #[test]
    fn desired_state_takes_own_blocks_but_not_slash_32_blocks() {
        let s = snapshot(
            &[
                block("10.1.0.0/26", Some("me")),
                block("10.1.0.64/26", Some("other")),
                block("10.1.0.128/26", None),
                block("10.1.1.7/32", Some("me")),
            ],
            &[endpoint("e1", "me", "10.1.0.5", "brl1")],
        );
        let d = Desired::from_snapshot(&s, "me");
        let bh: Vec<String> = d.blackholes.iter().map(ToString::to_string).collect();
        assert_eq!(bh, ["10.1.0.0/26"]);
        assert_eq!(d.host_routes.len(), 1);
    }

    #[tokio::test]
    async fn adds_missing_and_removes_stale_blackholes() {
        let dp = FakeDataplane::new();
        dp.add_blackhole_route("10.9.0.0/26".parse().unwrap())
            .await
            .unwrap();
        let mut r = RouteReconciler::default();
        let s = snapshot(&[block("10.1.0.0/26", Some("me"))], &[]);
        let d = Desired::from_snapshot(&s, "me");
        assert!(r.needs_pass(&d));
        let pass = r.reconcile(&dp, &d, Instant::now()).await.unwrap();
        assert_eq!(pass.changes, 2);
        assert_eq!(dp.blackholes(), vec!["10.1.0.0/26".parse().unwrap()]);
        assert!(!r.needs_pass(&d));
        // Idempotent.
        dp.clear_calls();
        let pass = r.reconcile(&dp, &d, Instant::now()).await.unwrap();
        assert_eq!(pass.changes, 0);
        assert_eq!(dp.calls(), vec![FakeCall::ListRoutes]);
    }

    #[tokio::test]
    async fn keeps_endpoint_routes_and_waits_before_removing_orphans() {
        let dp = FakeDataplane::new();
        let ip: Ipv4Addr = "10.1.0.5".parse().unwrap();
        let spec = EndpointSpec::for_docker("aaaaaaaaaaaa", ip, None);
        dp.create_veth_on_host(&spec).await.unwrap();
        // Someone deletes the route: the agent puts it back.
        dp.remove_host_route_externally(ip);
        let e = endpoint("e1", "me", "10.1.0.5", &spec.host_ifname);
        let mut r = RouteReconciler::new(Duration::from_secs(30));
        let t0 = Instant::now();
        let d = Desired::from_snapshot(&snapshot(&[], &[e]), "me");
        let pass = r.reconcile(&dp, &d, t0).await.unwrap();
        assert_eq!(pass.changes, 1);
        assert_eq!(dp.host_routes(), vec![(ip, spec.host_ifname.clone())]);

        // The record goes away: the route stays for the grace period, then goes.
        let empty = Desired::from_snapshot(&snapshot(&[], &[]), "me");
        let pass = r.reconcile(&dp, &empty, t0).await.unwrap();
        assert_eq!(pass.orphans_waiting, 1);
        assert_eq!(dp.host_routes().len(), 1);
        let pass = r
            .reconcile(&dp, &empty, t0 + Duration::from_secs(31))
            .await
            .unwrap();
        assert_eq!(pass.changes, 1);
        assert!(dp.host_routes().is_empty());
    }

    #[tokio::test]
    async fn routes_outside_our_pools_are_someone_elses() {
        let dp = FakeDataplane::new();
        let foreign: Ipv4Network = "172.16.0.0/26".parse().unwrap();
        dp.add_blackhole_route(foreign).await.unwrap();
        let spec = EndpointSpec::for_docker("bbbbbbbbbbbb", "172.16.0.5".parse().unwrap(), None);
        dp.create_veth_on_host(&spec).await.unwrap();
        let mut r = RouteReconciler::new(Duration::ZERO);
        let d = Desired::from_snapshot(&snapshot(&[], &[]), "me");
        let t0 = Instant::now();
        r.reconcile(&dp, &d, t0).await.unwrap();
        r.reconcile(&dp, &d, t0 + Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(dp.blackholes(), vec![foreign]);
        assert_eq!(dp.host_routes().len(), 1);
        // One we added ourselves is ours to remove even once its pool is gone.
        let ours: Ipv4Network = "10.1.0.0/26".parse().unwrap();
        let s = snapshot(&[block("10.1.0.0/26", Some("me"))], &[]);
        r.reconcile(&dp, &Desired::from_snapshot(&s, "me"), t0)
            .await
            .unwrap();
        assert!(dp.blackholes().contains(&ours));
        r.reconcile(&dp, &Desired::default(), t0).await.unwrap();
        assert_eq!(dp.blackholes(), vec![foreign]);
    }

    #[tokio::test]
    async fn missing_interface_is_not_an_error_and_failures_are_retried() {
        let dp = FakeDataplane::new();
        let mut r = RouteReconciler::default();
        let e = endpoint("e1", "me", "10.1.0.5", "brlgone");
        let s = snapshot(&[block("10.1.0.0/26", Some("me"))], &[e]);
        let d = Desired::from_snapshot(&s, "me");
        dp.fail_once(FakeOp::AddBlackholeRoute, libc::EPERM);
        let pass = r.reconcile(&dp, &d, Instant::now()).await.unwrap();
        assert_eq!((pass.errors, pass.missing_interfaces), (1, 1));
        assert!(r.needs_pass(&d), "a failed pass is retried");
        let pass = r.reconcile(&dp, &d, Instant::now()).await.unwrap();
        assert_eq!(pass.errors, 0);
        assert_eq!(dp.blackholes().len(), 1);
    }
}
