//! [`FakeDataplane`]: an in-memory [`Dataplane`] for unit tests without root.
//!
//! It records every call, keeps a small model of what exists (endpoints, host routes,
//! blackholes) with the real one's semantics (create fails on an existing name or a
//! routed address, deletes are idempotent, check reports what is missing), and can be
//! told to fail any operation with a given errno.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use futures::channel::oneshot;

use ipnetwork::Ipv4Network;

use super::{
    validate_ifname, Dataplane, DataplaneError, DpFuture, EndpointSpec, HostLink, MacAddr,
    OwnedRoute, RouteTarget,
};

/// The operations of [`Dataplane`], to choose which one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeOp {
    /// [`Dataplane::create_veth_on_host`]
    CreateVethOnHost,
    /// [`Dataplane::create_veth_into_netns`]
    CreateVethIntoNetns,
    /// [`Dataplane::create_unrouted_veth_on_host`]
    CreateUnroutedVethOnHost,
    /// [`Dataplane::create_unrouted_veth_into_netns`]
    CreateUnroutedVethIntoNetns,
    /// [`Dataplane::route_endpoint`]
    RouteEndpoint,
    /// [`Dataplane::delete_endpoint`]
    DeleteEndpoint,
    /// [`Dataplane::host_veth`]
    HostVeth,
    /// [`Dataplane::delete_host_link`]
    DeleteHostLink,
    /// [`Dataplane::check_endpoint`]
    CheckEndpoint,
    /// [`Dataplane::add_blackhole_route`]
    AddBlackholeRoute,
    /// [`Dataplane::del_blackhole_route`]
    DelBlackholeRoute,
    /// [`Dataplane::list_routes_with_our_protocol`]
    ListRoutes,
    /// [`Dataplane::replace_host_route`]
    ReplaceHostRoute,
    /// [`Dataplane::del_host_route`]
    DelHostRoute,
    /// [`Dataplane::enable_ip_forward`]
    EnableIpForward,
    /// [`Dataplane::list_host_veths`]
    ListHostVeths,
    /// [`Dataplane::next_hops_in_netns`]
    NextHopsInNetns,
}

/// One recorded call with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// `create_veth_on_host(spec)`
    CreateVethOnHost(EndpointSpec),
    /// `create_veth_into_netns(spec)`
    CreateVethIntoNetns(EndpointSpec),
    /// `create_unrouted_veth_on_host(spec)`
    CreateUnroutedVethOnHost(EndpointSpec),
    /// `create_unrouted_veth_into_netns(spec)`
    CreateUnroutedVethIntoNetns(EndpointSpec),
    /// `route_endpoint(spec)`
    RouteEndpoint(EndpointSpec),
    /// `delete_endpoint(host_ifname)`
    DeleteEndpoint(String),
    /// `host_veth(host_ifname)`
    HostVeth(String),
    /// `delete_host_link(link)`
    DeleteHostLink(HostLink),
    /// `check_endpoint(spec)`
    CheckEndpoint(EndpointSpec),
    /// `add_blackhole_route(cidr)`
    AddBlackholeRoute(Ipv4Network),
    /// `del_blackhole_route(cidr)`
    DelBlackholeRoute(Ipv4Network),
    /// `list_routes_with_our_protocol()`
    ListRoutes,
    /// `replace_host_route(ip, ifname)`
    ReplaceHostRoute(Ipv4Addr, String),
    /// `del_host_route(ip)`
    DelHostRoute(Ipv4Addr),
    /// `enable_ip_forward()`
    EnableIpForward,
    /// `list_host_veths()`
    ListHostVeths,
    /// `next_hops_in_netns(path)`
    NextHopsInNetns(PathBuf),
}

impl FakeCall {
    /// Which operation this call was.
    pub fn op(&self) -> FakeOp {
        match self {
            Self::CreateVethOnHost(_) => FakeOp::CreateVethOnHost,
            Self::CreateVethIntoNetns(_) => FakeOp::CreateVethIntoNetns,
            Self::CreateUnroutedVethOnHost(_) => FakeOp::CreateUnroutedVethOnHost,
            Self::CreateUnroutedVethIntoNetns(_) => FakeOp::CreateUnroutedVethIntoNetns,
            Self::RouteEndpoint(_) => FakeOp::RouteEndpoint,
            Self::DeleteEndpoint(_) => FakeOp::DeleteEndpoint,
            Self::HostVeth(_) => FakeOp::HostVeth,
            Self::DeleteHostLink(_) => FakeOp::DeleteHostLink,
            Self::CheckEndpoint(_) => FakeOp::CheckEndpoint,
            Self::AddBlackholeRoute(_) => FakeOp::AddBlackholeRoute,
            Self::DelBlackholeRoute(_) => FakeOp::DelBlackholeRoute,
            Self::ListRoutes => FakeOp::ListRoutes,
            Self::ReplaceHostRoute(..) => FakeOp::ReplaceHostRoute,
            Self::DelHostRoute(_) => FakeOp::DelHostRoute,
            Self::EnableIpForward => FakeOp::EnableIpForward,
            Self::ListHostVeths => FakeOp::ListHostVeths,
            Self::NextHopsInNetns(_) => FakeOp::NextHopsInNetns,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failure {
    errno: i32,
    /// `None`: every call fails until cleared.
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<FakeCall>,
    failures: HashMap<FakeOp, Failure>,
    /// host ifname → (spec, ifindex, mac returned)
    endpoints: BTreeMap<String, (EndpointSpec, u32, MacAddr)>,
    host_routes: BTreeMap<Ipv4Addr, String>,
    blackholes: BTreeSet<Ipv4Network>,
    ip_forward: bool,
    last_ifindex: u32,
    /// netns path → the link-local next hops routed there (what Docker installs).
    netns_next_hops: BTreeMap<PathBuf, BTreeSet<Ipv4Addr>>,
    /// Operations whose next call waits for its gate before it takes effect.
    holds: HashMap<FakeOp, oneshot::Receiver<()>>,
}

/// A recording, failure-injecting, in-memory [`Dataplane`].
#[derive(Debug, Default)]
pub struct FakeDataplane {
    state: Mutex<State>,
}

impl FakeDataplane {
    /// An empty fake: no endpoints, no routes, nothing fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every call of `op` fail with a netlink error carrying `errno`, until
    /// [`FakeDataplane::clear_failure`]. A failing create leaves nothing behind.
    pub fn fail(&self, op: FakeOp, errno: i32) {
        self.lock().failures.insert(
            op,
            Failure {
                errno,
                remaining: None,
            },
        );
    }

    /// Makes only the next call of `op` fail with `errno`.
    pub fn fail_once(&self, op: FakeOp, errno: i32) {
        self.lock().failures.insert(
            op,
            Failure {
                errno,
                remaining: Some(1),
            },
        );
    }

    /// Stops injecting failures into `op`.
    pub fn clear_failure(&self, op: FakeOp) {
        self.lock().failures.remove(&op);
    }

    /// Every call so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<FakeCall> {
        self.lock().calls.clone()
    }

    /// The calls of one operation, in order.
    pub fn calls_of(&self, op: FakeOp) -> Vec<FakeCall> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.op() == op)
            .cloned()
            .collect()
    }

    /// Forgets the recorded calls (state stays).
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The endpoints that currently exist, by host interface name.
    pub fn endpoints(&self) -> Vec<EndpointSpec> {
        self.lock()
            .endpoints
            .values()
            .map(|(s, _, _)| s.clone())
            .collect()
    }

    /// The host veth of an endpoint as [`Dataplane::host_veth`] would return it, without
    /// recording a call.
    pub fn link_of(&self, host_ifname: &str) -> Option<HostLink> {
        self.lock()
            .endpoints
            .get(host_ifname)
            .map(|(_, index, _)| HostLink {
                name: host_ifname.to_string(),
                index: *index,
            })
    }

    /// Whether an endpoint with this host interface exists.
    pub fn has_endpoint(&self, host_ifname: &str) -> bool {
        self.lock().endpoints.contains_key(host_ifname)
    }

    /// Host `/32` routes: address → interface.
    pub fn host_routes(&self) -> Vec<(Ipv4Addr, String)> {
        self.lock()
            .host_routes
            .iter()
            .map(|(ip, dev)| (*ip, dev.clone()))
            .collect()
    }

    /// Blackhole routes present.
    pub fn blackholes(&self) -> Vec<Ipv4Network> {
        self.lock().blackholes.iter().copied().collect()
    }

    /// Whether `enable_ip_forward` succeeded at least once.
    pub fn ip_forward_enabled(&self) -> bool {
        self.lock().ip_forward
    }

    /// Routes `hop` inside the namespace at `netns`, as Docker does with the gateway
    /// of an interface it moves into a sandbox.
    pub fn route_next_hop_in_netns(&self, netns: &Path, hop: Ipv4Addr) {
        self.lock()
            .netns_next_hops
            .entry(netns.to_path_buf())
            .or_default()
            .insert(hop);
    }

    /// Removes that route again (Docker's `Leave` takes the interface out).
    pub fn unroute_next_hop_in_netns(&self, netns: &Path, hop: Ipv4Addr) {
        if let Some(hops) = self.lock().netns_next_hops.get_mut(netns) {
            hops.remove(&hop);
        }
    }

    /// Makes the next call of `op` wait, before it takes effect, until the returned
    /// gate is fired or dropped: a slow kernel, to order concurrent requests in tests.
    pub fn hold_next(&self, op: FakeOp) -> oneshot::Sender<()> {
        let (open, gate) = oneshot::channel();
        self.lock().holds.insert(op, gate);
        open
    }

    /// Removes an endpoint's host route as if someone else had (to test CHECK).
    pub fn remove_host_route_externally(&self, ip: Ipv4Addr) {
        self.lock().host_routes.remove(&ip);
    }

    /// The MAC the fake returns for an endpoint: `02:42` + the IPv4 octets, like Docker.
    pub fn mac_for(ip: Ipv4Addr) -> MacAddr {
        let o = ip.octets();
        MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not poison the fake for the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the call and applies `f` unless a failure is injected for it.
    /// Records `call`, then applies `f` (or an injected failure) at once, or once the
    /// gate of [`FakeDataplane::hold_next`] opens.
    fn call<'a, T: Send + 'a>(
        &'a self,
        call: FakeCall,
        f: impl FnOnce(&mut State) -> Result<T, DataplaneError> + Send + 'a,
    ) -> DpFuture<'a, T> {
        let op = call.op();
        let held = {
            let mut st = self.lock();
            st.calls.push(call);
            st.holds.remove(&op)
        };
        match held {
            None => Box::pin(std::future::ready(self.apply(op, f))),
            Some(gate) => Box::pin(async move {
                let _ = gate.await;
                self.apply(op, f)
            }),
        }
    }

    fn apply<T>(
        &self,
        op: FakeOp,
        f: impl FnOnce(&mut State) -> Result<T, DataplaneError>,
    ) -> Result<T, DataplaneError> {
        let mut st = self.lock();
        let injected = match st.failures.get_mut(&op) {
            Some(fail) => {
                let errno = fail.errno;
                if let Some(n) = fail.remaining.as_mut() {
                    *n -= 1;
                    if *n == 0 {
                        st.failures.remove(&op);
                    }
                }
                Some(errno)
            }
            None => None,
        };
        match injected {
            Some(errno) => Err(DataplaneError::from_errno(
                format!("{op:?} (injected)"),
                errno,
            )),
            None => f(&mut st),
        }
    }
}

fn create(
    st: &mut State,
    spec: &EndpointSpec,
    want_netns: bool,
) -> Result<MacAddr, DataplaneError> {
    let mac = create_unrouted(st, spec, want_netns)?;
    if let Err(e) = add_route(st, spec) {
        st.endpoints.remove(&spec.host_ifname);
        return Err(e);
    }
    Ok(mac)
}

/// The `/32` of an endpoint made; like the kernel, refused when another link holds it.
fn add_route(st: &mut State, spec: &EndpointSpec) -> Result<(), DataplaneError> {
    match st.host_routes.get(&spec.ip) {
        Some(dev) if *dev == spec.host_ifname => Ok(()),
        Some(dev) => Err(DataplaneError::AlreadyExists {
            op: format!("add route {}/32 dev {}", spec.ip, spec.host_ifname),
            what: format!("route {}/32 dev {dev}", spec.ip),
        }),
        None => {
            st.host_routes.insert(spec.ip, spec.host_ifname.clone());
            Ok(())
        }
    }
}

fn create_unrouted(
    st: &mut State,
    spec: &EndpointSpec,
    want_netns: bool,
) -> Result<MacAddr, DataplaneError> {
    validate_ifname(&spec.host_ifname)?;
    validate_ifname(&spec.container_ifname)?;
    if spec.netns.is_some() != want_netns {
        return Err(DataplaneError::Invalid {
            what: format!(
                "endpoint {}: netns must be {}",
                spec.host_ifname,
                if want_netns { "set" } else { "unset" }
            ),
        });
    }
    let op = format!(
        "create veth {} (peer {})",
        spec.host_ifname, spec.container_ifname
    );
    if st.endpoints.contains_key(&spec.host_ifname) {
        return Err(DataplaneError::AlreadyExists {
            op,
            what: format!("interface {} on the host", spec.host_ifname),
        });
    }
    st.last_ifindex += 1;
    let mac = spec
        .container_mac
        .unwrap_or_else(|| FakeDataplane::mac_for(spec.ip));
    st.endpoints.insert(
        spec.host_ifname.clone(),
        (spec.clone(), st.last_ifindex + 100, mac),
    );
    Ok(mac)
}

fn check(st: &State, spec: &EndpointSpec) -> Result<(), DataplaneError> {
    let mut problems = Vec::new();
    match st.endpoints.get(&spec.host_ifname) {
        None => problems.push(format!("host interface {} missing", spec.host_ifname)),
        Some((have, _, _)) => {
            if have.ip != spec.ip {
                problems.push(format!(
                    "container interface {} has no address {}/32",
                    spec.container_ifname, spec.ip
                ));
            }
            if have.container_ifname != spec.container_ifname {
                problems.push(format!(
                    "interface {} missing in the container",
                    spec.container_ifname
                ));
            }
        }
    }
    if st.host_routes.get(&spec.ip) != Some(&spec.host_ifname) {
        problems.push(format!(
            "host route {}/32 dev {} missing",
            spec.ip, spec.host_ifname
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::Check {
            endpoint: spec.host_ifname.clone(),
            problems,
        })
    }
}

impl Dataplane for FakeDataplane {
    fn create_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        self.call(FakeCall::CreateVethOnHost(spec.clone()), |st| {
            create(st, spec, false)
        })
    }

    fn create_veth_into_netns<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        self.call(FakeCall::CreateVethIntoNetns(spec.clone()), |st| {
            create(st, spec, true)
        })
    }

    fn create_unrouted_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        self.call(FakeCall::CreateUnroutedVethOnHost(spec.clone()), |st| {
            create_unrouted(st, spec, false)
        })
    }

    fn create_unrouted_veth_into_netns<'a>(
        &'a self,
        spec: &'a EndpointSpec,
    ) -> DpFuture<'a, MacAddr> {
        self.call(FakeCall::CreateUnroutedVethIntoNetns(spec.clone()), |st| {
            create_unrouted(st, spec, true)
        })
    }

    fn route_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()> {
        self.call(FakeCall::RouteEndpoint(spec.clone()), |st| {
            if !st.endpoints.contains_key(&spec.host_ifname) {
                return Err(DataplaneError::NotFound {
                    what: format!("interface {} on the host", spec.host_ifname),
                });
            }
            add_route(st, spec).inspect_err(|_| {
                st.endpoints.remove(&spec.host_ifname);
            })
        })
    }

    fn delete_endpoint<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, bool> {
        self.call(
            FakeCall::DeleteEndpoint(host_ifname.to_string()),
            move |st| {
                validate_ifname(host_ifname)?;
                let existed = st.endpoints.remove(host_ifname).is_some();
                // The kernel drops every route through a deleted link.
                st.host_routes.retain(|_, dev| dev != host_ifname);
                Ok(existed)
            },
        )
    }

    fn host_veth<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, Option<HostLink>> {
        self.call(FakeCall::HostVeth(host_ifname.to_string()), |st| {
            validate_ifname(host_ifname)?;
            Ok(st.endpoints.get(host_ifname).map(|(_, index, _)| HostLink {
                name: host_ifname.to_string(),
                index: *index,
            }))
        })
    }

    fn delete_host_link<'a>(&'a self, link: &'a HostLink) -> DpFuture<'a, bool> {
        self.call(FakeCall::DeleteHostLink(link.clone()), |st| {
            validate_ifname(&link.name)?;
            if !matches!(st.endpoints.get(&link.name), Some((_, index, _)) if *index == link.index)
            {
                return Ok(false);
            }
            st.endpoints.remove(&link.name);
            st.host_routes.retain(|_, dev| *dev != link.name);
            Ok(true)
        })
    }

    fn check_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()> {
        self.call(FakeCall::CheckEndpoint(spec.clone()), |st| check(st, spec))
    }

    fn add_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, ()> {
        self.call(FakeCall::AddBlackholeRoute(cidr), move |st| {
            st.blackholes
                .insert(Ipv4Network::new(cidr.network(), cidr.prefix()).expect("valid prefix"));
            Ok(())
        })
    }

    fn del_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, bool> {
        self.call(FakeCall::DelBlackholeRoute(cidr), move |st| {
            Ok(st
                .blackholes
                .remove(&Ipv4Network::new(cidr.network(), cidr.prefix()).expect("valid prefix")))
        })
    }

    fn list_routes_with_our_protocol(&self) -> DpFuture<'_, Vec<OwnedRoute>> {
        self.call(FakeCall::ListRoutes, move |st| {
            let mut out: Vec<OwnedRoute> = st
                .blackholes
                .iter()
                .map(|dst| OwnedRoute {
                    dst: *dst,
                    target: RouteTarget::Blackhole,
                })
                .collect();
            for (ip, dev) in &st.host_routes {
                let ifindex = st.endpoints.get(dev).map_or(0, |(_, i, _)| *i);
                out.push(OwnedRoute {
                    dst: Ipv4Network::new(*ip, 32).expect("/32 is valid"),
                    target: RouteTarget::Interface {
                        ifindex,
                        ifname: Some(dev.clone()),
                    },
                });
            }
            Ok(out)
        })
    }

    fn replace_host_route<'a>(&'a self, ip: Ipv4Addr, ifname: &'a str) -> DpFuture<'a, ()> {
        self.call(
            FakeCall::ReplaceHostRoute(ip, ifname.to_string()),
            move |st| {
                validate_ifname(ifname)?;
                if !st.endpoints.contains_key(ifname) {
                    return Err(DataplaneError::NotFound {
                        what: format!("interface {ifname} on the host"),
                    });
                }
                st.host_routes.insert(ip, ifname.to_string());
                Ok(())
            },
        )
    }

    fn del_host_route(&self, ip: Ipv4Addr) -> DpFuture<'_, bool> {
        self.call(FakeCall::DelHostRoute(ip), move |st| {
            Ok(st.host_routes.remove(&ip).is_some())
        })
    }

    fn enable_ip_forward(&self) -> DpFuture<'_, ()> {
        self.call(FakeCall::EnableIpForward, move |st| {
            st.ip_forward = true;
            Ok(())
        })
    }

    fn list_host_veths(&self) -> DpFuture<'_, Vec<String>> {
        self.call(FakeCall::ListHostVeths, move |st| {
            Ok(st.endpoints.keys().cloned().collect())
        })
    }

    fn next_hops_in_netns<'a>(&'a self, netns: &'a Path) -> DpFuture<'a, Vec<Ipv4Addr>> {
        self.call(FakeCall::NextHopsInNetns(netns.to_path_buf()), move |st| {
            Ok(st
                .netns_next_hops
                .get(netns)
                .map(|hops| hops.iter().copied().collect())
                .unwrap_or_default())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn spec(id: &str, ip: [u8; 4]) -> EndpointSpec {
        EndpointSpec::for_cni(
            id,
            "eth0",
            format!("/run/netns/{id}"),
            Ipv4Addr::from(ip),
            None,
        )
    }

    #[tokio::test]
    async fn records_calls_and_models_state() {
        let fake = FakeDataplane::new();
        let dp: Arc<dyn Dataplane> = Arc::new(FakeDataplane::new());
        // Usable as a trait object too.
        dp.enable_ip_forward().await.unwrap();

        let s = spec("c1", [10, 1, 0, 5]);
        let mac = fake.create_veth_into_netns(&s).await.unwrap();
        assert_eq!(mac, crate::container_mac_for(s.ip));
        assert!(fake.has_endpoint(&s.host_ifname));
        assert_eq!(fake.host_routes(), vec![(s.ip, s.host_ifname.clone())]);
        fake.check_endpoint(&s).await.unwrap();

        assert!(fake.delete_endpoint(&s.host_ifname).await.unwrap());
        assert!(
            !fake.delete_endpoint(&s.host_ifname).await.unwrap(),
            "second delete is a no-op"
        );
        assert!(fake.host_routes().is_empty(), "route goes with the veth");
        assert_eq!(
            fake.calls(),
            vec![
                FakeCall::CreateVethIntoNetns(s.clone()),
                FakeCall::CheckEndpoint(s.clone()),
                FakeCall::DeleteEndpoint(s.host_ifname.clone()),
                FakeCall::DeleteEndpoint(s.host_ifname.clone()),
            ]
        );
    }

    #[tokio::test]
    async fn delete_host_link_spares_a_newer_link_with_the_name() {
        let fake = FakeDataplane::new();
        let s = spec("c1", [10, 1, 0, 5]);
        fake.create_veth_into_netns(&s).await.unwrap();
        let old = fake.host_veth(&s.host_ifname).await.unwrap().unwrap();
        assert_eq!(fake.link_of(&s.host_ifname), Some(old.clone()));
        assert!(fake.delete_endpoint(&s.host_ifname).await.unwrap());
        fake.create_veth_into_netns(&s).await.unwrap();
        let new = fake.host_veth(&s.host_ifname).await.unwrap().unwrap();
        assert_ne!(old.index, new.index, "indexes are not reused");
        assert!(!fake.delete_host_link(&old).await.unwrap());
        assert!(fake.has_endpoint(&s.host_ifname), "the newer link stays");
        assert!(fake.delete_host_link(&new).await.unwrap());
        assert!(fake.host_routes().is_empty(), "routes go with the link");
        assert!(fake.host_veth(&s.host_ifname).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn injected_failure_leaves_nothing_and_keeps_errno() {
        let fake = FakeDataplane::new();
        let s = spec("c1", [10, 1, 0, 5]);
        fake.fail_once(FakeOp::CreateVethIntoNetns, libc::EEXIST);
        let err = fake.create_veth_into_netns(&s).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(fake.endpoints().is_empty());
        // fail_once: the retry succeeds.
        fake.create_veth_into_netns(&s).await.unwrap();

        fake.fail(FakeOp::DeleteEndpoint, libc::EBUSY);
        for _ in 0..2 {
            assert_eq!(
                fake.delete_endpoint(&s.host_ifname)
                    .await
                    .unwrap_err()
                    .errno(),
                Some(libc::EBUSY)
            );
        }
        fake.clear_failure(FakeOp::DeleteEndpoint);
        assert!(fake.delete_endpoint(&s.host_ifname).await.unwrap());
        assert_eq!(fake.calls_of(FakeOp::DeleteEndpoint).len(), 3);
    }

    #[tokio::test]
    async fn create_conflicts_like_the_kernel() {
        let fake = FakeDataplane::new();
        let a = spec("c1", [10, 1, 0, 5]);
        fake.create_veth_into_netns(&a).await.unwrap();
        let err = fake.create_veth_into_netns(&a).await.unwrap_err();
        assert!(matches!(err, DataplaneError::AlreadyExists { .. }), "{err}");
        let same_ip = spec("c2", [10, 1, 0, 5]);
        let err = fake.create_veth_into_netns(&same_ip).await.unwrap_err();
        assert!(err.to_string().contains("route 10.1.0.5/32"), "{err}");
        assert!(!fake.has_endpoint(&same_ip.host_ifname));
        // Docker style wants no netns; CNI style needs one.
        let d = EndpointSpec::for_docker("abcdef0123456789", Ipv4Addr::new(10, 1, 0, 9), None);
        fake.create_veth_on_host(&d).await.unwrap();
        assert!(matches!(
            fake.create_veth_into_netns(&d).await,
            Err(DataplaneError::Invalid { .. })
        ));
    }

    #[tokio::test]
    async fn check_reports_missing_route_and_routes_are_listed() {
        let fake = FakeDataplane::new();
        let s = spec("c1", [10, 1, 0, 5]);
        fake.create_veth_into_netns(&s).await.unwrap();
        fake.remove_host_route_externally(s.ip);
        let err = fake.check_endpoint(&s).await.unwrap_err();
        assert!(err.to_string().contains("host route 10.1.0.5/32"), "{err}");

        fake.replace_host_route(s.ip, &s.host_ifname).await.unwrap();
        let block: Ipv4Network = "10.1.0.0/26".parse().unwrap();
        fake.add_blackhole_route(block).await.unwrap();
        fake.add_blackhole_route(block).await.unwrap();
        let routes = fake.list_routes_with_our_protocol().await.unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(
            routes[0],
            OwnedRoute {
                dst: block,
                target: RouteTarget::Blackhole
            }
        );
        assert!(fake.del_blackhole_route(block).await.unwrap());
        assert!(!fake.del_blackhole_route(block).await.unwrap());
        assert!(fake.del_host_route(s.ip).await.unwrap());
        assert!(matches!(
            fake.replace_host_route(s.ip, "brlnope").await,
            Err(DataplaneError::NotFound { .. })
        ));
    }
}
