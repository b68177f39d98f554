//! [`LinuxDataplane`]: the real [`Dataplane`], orchestrating `netlink.rs` and `sysctl.rs`
//! step by step with rollback.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use tracing::{debug, info, warn};

use super::link_dump::LinkDumper;
use super::netlink::{Link, Netlink, Route, RouteKind};
use super::netns::Netns;
use super::{
    sysctl, validate_ifname, Dataplane, DataplaneError, DpFuture, EndpointSpec, HostLink, MacAddr,
    OwnedRoute, RouteTarget, GATEWAY_IP, HOST_MAC, ROUTE_PROTOCOL,
};

/// Protocol of the two routes inside the container: RTPROT_BOOT, which `ip route` does
/// not print, so the container's table reads exactly like Calico's.
const CONTAINER_ROUTE_PROTOCOL: u8 = 3;

/// The kernel-backed dataplane. Its "host" is the network namespace of the thread that
/// called [`LinuxDataplane::connect`]; every host-side change lands there, whichever
/// thread later runs the futures.
pub struct LinuxDataplane {
    nl: Netlink,
    /// The host's link dumps (the container-side sockets never list links).
    links: LinkDumper,
    host_ns: Netns,
}

impl LinuxDataplane {
    /// Opens a netlink socket in the calling thread's network namespace. Must be called
    /// inside a tokio runtime (the socket's task is spawned on it), and needs
    /// CAP_NET_ADMIN (plus CAP_SYS_ADMIN to enter container namespaces) for the ops.
    pub fn connect() -> Result<Self, DataplaneError> {
        let host_ns = Netns::current()?;
        let nl = Netlink::connect()?;
        let links = LinkDumper::open()?;
        Ok(Self { nl, links, host_ns })
    }

    /// The veth pair on the host; the `/32` route too when `routed`.
    async fn create_on_host(
        &self,
        spec: &EndpointSpec,
        routed: bool,
    ) -> Result<MacAddr, DataplaneError> {
        validate_spec(spec)?;
        if let Some(ns) = &spec.netns {
            return Err(DataplaneError::Invalid {
                what: format!(
                    "endpoint {}: netns {} given to create_veth_on_host (use create_veth_into_netns)",
                    spec.host_ifname,
                    ns.display()
                ),
            });
        }
        info!(host = %spec.host_ifname, peer = %spec.container_ifname, ip = %spec.ip, "creating veth on host");
        let peer = spec.container_ifname.as_str();
        if let Err(e) = self
            .nl
            .add_veth(
                &spec.host_ifname,
                HOST_MAC,
                peer,
                spec.container_mac,
                None,
                spec.mtu,
            )
            .await
        {
            return Err(self.explain_exists(e, spec, "on the host").await);
        }
        let made = async {
            let host = self.host_link(&spec.host_ifname).await?;
            sysctl::write(&self.host_ns, sysctl::host_veth(&host.name)).await?;
            if routed {
                self.add_endpoint_route(spec, &host).await?;
            }
            let peer = self.host_link(peer).await?;
            peer.mac.ok_or_else(|| DataplaneError::NotFound {
                what: format!("mac address of interface {}", peer.name),
            })
        };
        self.or_rollback(spec, made).await
    }

    /// The veth into `spec.netns`, both sides set up; the host's `/32` route too when
    /// `routed`.
    async fn create_into_netns(
        &self,
        spec: &EndpointSpec,
        routed: bool,
    ) -> Result<MacAddr, DataplaneError> {
        validate_spec(spec)?;
        let path = spec.netns.as_ref().ok_or_else(|| DataplaneError::Invalid {
            what: format!(
                "endpoint {}: create_veth_into_netns needs a netns",
                spec.host_ifname
            ),
        })?;
        let ns = Netns::open(path)?;
        info!(host = %spec.host_ifname, container = %spec.container_ifname, netns = %path.display(), ip = %spec.ip, "creating veth into netns");
        let where_ = format!("in {}", path.display());
        let created = self.nl.add_veth(
            &spec.host_ifname,
            HOST_MAC,
            &spec.container_ifname,
            spec.container_mac,
            Some(&ns),
            spec.mtu,
        );
        if let Err(e) = created.await {
            return Err(self.explain_exists(e, spec, &where_).await);
        }
        let made = async {
            // The two sides are independent (each its own socket and namespace): set
            // them up at the same time.
            let host_side = async {
                let host = self.host_link(&spec.host_ifname).await?;
                sysctl::write(&self.host_ns, sysctl::host_veth(&host.name)).await?;
                Ok(host)
            };
            let (host, mac) = futures::try_join!(host_side, setup_container_side(&ns, spec))?;
            // The host /32 goes last: it is what makes the endpoint reachable (and what
            // BIRD may export), so it should only exist once the container is ready.
            if routed {
                self.add_endpoint_route(spec, &host).await?;
            }
            Ok(mac)
        };
        self.or_rollback(spec, made).await
    }

    /// The `/32` route of an endpoint made without it; on failure the veth goes too.
    async fn route_made_endpoint(&self, spec: &EndpointSpec) -> Result<(), DataplaneError> {
        let routed = async {
            let host = self.host_link(&spec.host_ifname).await?;
            self.add_endpoint_route(spec, &host).await
        };
        self.or_rollback(spec, routed).await
    }

    /// The `/32` route to the host veth.
    async fn add_endpoint_route(
        &self,
        spec: &EndpointSpec,
        host: &Link,
    ) -> Result<(), DataplaneError> {
        let route = Route::device(host_net(spec.ip), host.index, ROUTE_PROTOCOL);
        match self.nl.add_route(&route, &host.name, false).await {
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                // brindled's agent may have made it first: the endpoint record can be
                // stored before the veth exists, and the agent keeps a route for every
                // record whose veth it finds.
                if self.route_oif(host_net(spec.ip)).await == Some(host.index) {
                    return Ok(());
                }
                // Name whoever holds the address: usually another endpoint's veth.
                let holder = self.describe_existing(host_net(spec.ip)).await;
                Err(DataplaneError::AlreadyExists {
                    op: format!("add route {}", route.describe(&host.name)),
                    what: format!("route {holder}"),
                })
            }
            other => other,
        }
    }

    /// On error, deletes the host veth just created (taking the peer and any route with
    /// it) and returns the error.
    async fn or_rollback<T>(
        &self,
        spec: &EndpointSpec,
        made: impl Future<Output = Result<T, DataplaneError>>,
    ) -> Result<T, DataplaneError> {
        let error = match made.await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        warn!(host = %spec.host_ifname, %error, "endpoint setup failed, rolling back");
        match self.delete(&spec.host_ifname).await {
            Ok(_) => Err(error),
            Err(cleanup) => Err(DataplaneError::Rollback {
                error: Box::new(error),
                cleanup: Box::new(cleanup),
            }),
        }
    }

    /// EEXIST from RTM_NEWLINK does not say which name clashed: find out.
    async fn explain_exists(
        &self,
        e: DataplaneError,
        spec: &EndpointSpec,
        peer_where: &str,
    ) -> DataplaneError {
        if e.errno() != Some(libc::EEXIST) {
            return e;
        }
        let DataplaneError::Netlink { op, .. } = &e else {
            return e;
        };
        let op = op.clone();
        // A host link of that name answers it; otherwise it must be the peer's name.
        let what = if matches!(self.nl.get_link(&spec.host_ifname).await, Ok(Some(_))) {
            format!("interface {} on the host", spec.host_ifname)
        } else {
            format!("interface {} {peer_where}", spec.container_ifname)
        };
        DataplaneError::AlreadyExists { op, what }
    }

    async fn host_link(&self, name: &str) -> Result<Link, DataplaneError> {
        self.nl
            .get_link(name)
            .await?
            .ok_or_else(|| DataplaneError::NotFound {
                what: format!("interface {name} on the host"),
            })
    }

    /// `10.0.0.5/32 dev brl1 proto 98`, or just the prefix if it cannot be read.
    /// The interface of the route to exactly `dst`, if there is one. A dump that
    /// fails is tried again: while many endpoints come and go the kernel interrupts
    /// route dumps (`NLM_F_DUMP_INTR`), seen in 200-container bursts.
    async fn route_oif(&self, dst: Ipv4Network) -> Option<u32> {
        for _ in 0..5 {
            if let Ok(routes) = self.nl.dump_routes().await {
                return routes.into_iter().find(|r| r.dst == dst)?.oif;
            }
        }
        None
    }

    async fn describe_existing(&self, dst: Ipv4Network) -> String {
        let Ok(routes) = self.nl.dump_routes().await else {
            return dst.to_string();
        };
        let Some(r) = routes.into_iter().find(|r| r.dst == dst) else {
            return dst.to_string();
        };
        let dev = match r.oif {
            Some(i) => self
                .nl
                .get_link_by_index(i)
                .await
                .ok()
                .flatten()
                .map(|l| l.name),
            None => None,
        };
        r.describe(dev.as_deref().unwrap_or(""))
    }

    async fn delete(&self, host_ifname: &str) -> Result<bool, DataplaneError> {
        validate_ifname(host_ifname)?;
        let Some(link) = self.nl.get_link(host_ifname).await? else {
            debug!(host = %host_ifname, "delete endpoint: already gone");
            return Ok(false);
        };
        if !link.is_veth {
            return Err(DataplaneError::Invalid {
                what: format!(
                    "endpoint {host_ifname}: refusing to delete an interface that is not a veth"
                ),
            });
        }
        info!(host = %host_ifname, "deleting endpoint veth");
        self.nl.del_link(link.index, host_ifname).await
    }

    async fn find_veth(&self, host_ifname: &str) -> Result<Option<HostLink>, DataplaneError> {
        validate_ifname(host_ifname)?;
        Ok(match self.nl.get_link(host_ifname).await? {
            Some(link) if link.is_veth => Some(HostLink {
                name: link.name,
                index: link.index,
            }),
            Some(_) => {
                warn!(host = %host_ifname, "not a veth: left alone");
                None
            }
            None => None,
        })
    }

    async fn delete_exact(&self, link: &HostLink) -> Result<bool, DataplaneError> {
        validate_ifname(&link.name)?;
        match self.nl.get_link_by_index(link.index).await? {
            Some(now) if now.name == link.name && now.is_veth => {
                info!(host = %link.name, index = link.index, "deleting endpoint veth");
                self.nl.del_link(link.index, &link.name).await
            }
            Some(now) => {
                debug!(host = %link.name, index = link.index, now = %now.name, "link index now names another link: left alone");
                Ok(false)
            }
            None => {
                debug!(host = %link.name, index = link.index, "delete link: already gone");
                Ok(false)
            }
        }
    }

    async fn check(&self, spec: &EndpointSpec) -> Result<(), DataplaneError> {
        validate_spec(spec)?;
        let path = spec.netns.as_ref().ok_or_else(|| DataplaneError::Invalid {
            what: format!(
                "endpoint {}: check_endpoint needs a netns",
                spec.host_ifname
            ),
        })?;
        let mut problems = Vec::new();
        let host = self.nl.get_link(&spec.host_ifname).await?;
        match &host {
            None => problems.push(format!("host interface {} missing", spec.host_ifname)),
            Some(l) => {
                if l.mac != Some(HOST_MAC) {
                    let mac = l.mac.map_or("none".into(), |m| m.to_string());
                    problems.push(format!(
                        "host interface {} has mac {mac}, want {HOST_MAC}",
                        l.name
                    ));
                }
                if !l.up {
                    problems.push(format!("host interface {} is down", l.name));
                }
            }
        }
        let dst = host_net(spec.ip);
        let routes = self.nl.dump_routes().await?;
        match routes
            .iter()
            .find(|r| r.dst == dst && r.kind == RouteKind::Unicast)
        {
            None => problems.push(format!("host route {dst} dev {} missing", spec.host_ifname)),
            Some(r) if r.oif.is_none() || r.oif != host.as_ref().map(|l| l.index) => {
                let dev = match r.oif {
                    Some(i) => self.nl.get_link_by_index(i).await?.map(|l| l.name),
                    None => None,
                };
                problems.push(format!(
                    "host route {dst} goes to {}, not {}",
                    dev.unwrap_or_else(|| "no interface".into()),
                    spec.host_ifname
                ));
            }
            Some(_) => {}
        }
        let ns = Netns::open(path)?;
        problems.extend(check_container_side(&ns, spec).await?);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(DataplaneError::Check {
                endpoint: spec.host_ifname.clone(),
                problems,
            })
        }
    }

    async fn add_blackhole(&self, cidr: Ipv4Network) -> Result<(), DataplaneError> {
        let dst = normalize(cidr);
        let route = Route::blackhole(dst, ROUTE_PROTOCOL);
        info!(%dst, "adding blackhole route");
        match self.nl.add_route(&route, "", false).await {
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                let routes = self.nl.dump_routes().await?;
                let ours = routes.iter().any(|r| {
                    r.dst == dst && r.kind == RouteKind::Blackhole && r.protocol == ROUTE_PROTOCOL
                });
                if ours {
                    return Ok(());
                }
                Err(DataplaneError::AlreadyExists {
                    op: format!("add route {}", route.describe("")),
                    what: format!(
                        "route {} not owned by brindle",
                        self.describe_existing(dst).await
                    ),
                })
            }
            other => other,
        }
    }

    async fn list_ours(&self) -> Result<Vec<OwnedRoute>, DataplaneError> {
        let routes = self.nl.dump_routes().await?;
        let names: HashMap<u32, String> = self
            .links
            .dump()
            .await?
            .into_iter()
            .map(|l| (l.index, l.name))
            .collect();
        Ok(routes
            .into_iter()
            .filter(|r| r.protocol == ROUTE_PROTOCOL)
            .map(|r| OwnedRoute {
                dst: r.dst,
                target: match (r.kind, r.oif, r.gateway) {
                    (RouteKind::Blackhole, _, _) => RouteTarget::Blackhole,
                    (RouteKind::Unicast, Some(ifindex), None) => RouteTarget::Interface {
                        ifindex,
                        ifname: names.get(&ifindex).cloned(),
                    },
                    _ => RouteTarget::Other,
                },
            })
            .collect())
    }

    async fn replace_route(&self, ip: Ipv4Addr, ifname: &str) -> Result<(), DataplaneError> {
        validate_ifname(ifname)?;
        let link = self.host_link(ifname).await?;
        let route = Route::device(host_net(ip), link.index, ROUTE_PROTOCOL);
        info!(route = %route.describe(ifname), "replacing host route");
        self.nl.add_route(&route, ifname, true).await
    }

    async fn next_hops_in(&self, path: &std::path::Path) -> Result<Vec<Ipv4Addr>, DataplaneError> {
        let ns = match Netns::open(path) {
            Ok(ns) => ns,
            // Docker joins a new container before it creates the namespace: no
            // interface is in it yet.
            Err(DataplaneError::Netns { cause, .. })
                if cause.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let nl = Netlink::connect_in(&ns).await?;
        Ok(link_local_next_hops(&nl.dump_routes().await?))
    }
}

/// Gateways and `/32` destinations in `169.254.0.0/16`, once each, in order.
fn link_local_next_hops(routes: &[Route]) -> Vec<Ipv4Addr> {
    let mut hops: Vec<Ipv4Addr> = routes
        .iter()
        .flat_map(|r| [r.gateway, (r.dst.prefix() == 32).then(|| r.dst.ip())])
        .flatten()
        .filter(Ipv4Addr::is_link_local)
        .collect();
    hops.sort_unstable();
    hops.dedup();
    hops
}

/// The loopback device's index in every network namespace: the kernel registers it
/// first (`LOOPBACK_IFINDEX` in the kernel's netdevice.h).
const LOOPBACK_INDEX: u32 = 1;

/// Inside the container: address, link and lo up, the gateway and default routes.
///
/// The requests of each step go out back to back and their answers are awaited
/// together: `try_join!` polls its futures in order, each sends its message when first
/// polled, and the kernel handles one socket's messages in the order sent. So the
/// routes still come after the link is up (else ENETDOWN), and the default route after
/// the gateway's (else its next hop is unreachable); a failure still names its request.
async fn setup_container_side(ns: &Netns, spec: &EndpointSpec) -> Result<MacAddr, DataplaneError> {
    let nl = Netlink::connect_in(ns).await?;
    let name = spec.container_ifname.as_str();
    let link = container_link(&nl, ns, name).await?;
    futures::try_join!(
        nl.add_address(link.index, name, spec.ip, 32),
        nl.set_link_up(link.index, name),
        // Up already (the runtime's own set-up) is no error.
        nl.set_link_up(LOOPBACK_INDEX, "lo"),
    )?;
    let gw = Route::device(host_net(GATEWAY_IP), link.index, CONTAINER_ROUTE_PROTOCOL);
    // 169.254.1.1 is reachable through the scope-link route above, so no `onlink` needed.
    let default = Route::via(
        Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"),
        GATEWAY_IP,
        link.index,
        CONTAINER_ROUTE_PROTOCOL,
    );
    futures::try_join!(
        nl.add_route(&gw, name, false),
        nl.add_route(&default, name, false),
    )?;
    link.mac.ok_or_else(|| DataplaneError::NotFound {
        what: format!("mac address of interface {name} in {}", ns.path().display()),
    })
}

/// The container half of CNI CHECK: one message per problem.
async fn check_container_side(
    ns: &Netns,
    spec: &EndpointSpec,
) -> Result<Vec<String>, DataplaneError> {
    let nl = Netlink::connect_in(ns).await?;
    let name = spec.container_ifname.as_str();
    let Some(link) = nl.get_link(name).await? else {
        return Ok(vec![format!(
            "interface {name} missing in {}",
            ns.path().display()
        )]);
    };
    let mut problems = Vec::new();
    let want = host_net(spec.ip);
    if !nl.dump_addresses(link.index).await?.contains(&want) {
        problems.push(format!("container interface {name} has no address {want}"));
    }
    if !link.up {
        problems.push(format!("container interface {name} is down"));
    }
    let routes = nl.dump_routes().await?;
    let gw = host_net(GATEWAY_IP);
    if !routes
        .iter()
        .any(|r| r.dst == gw && r.oif == Some(link.index) && r.scope_link)
    {
        problems.push(format!(
            "container route {gw} dev {name} scope link missing"
        ));
    }
    let has_default = routes
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.gateway == Some(GATEWAY_IP) && r.oif == Some(link.index));
    if !has_default {
        problems.push(format!(
            "container route default via {GATEWAY_IP} dev {name} missing"
        ));
    }
    Ok(problems)
}

async fn container_link(nl: &Netlink, ns: &Netns, name: &str) -> Result<Link, DataplaneError> {
    nl.get_link(name)
        .await?
        .ok_or_else(|| DataplaneError::NotFound {
            what: format!("interface {name} in {}", ns.path().display()),
        })
}

fn validate_spec(spec: &EndpointSpec) -> Result<(), DataplaneError> {
    validate_ifname(&spec.host_ifname)?;
    validate_ifname(&spec.container_ifname)?;
    if spec.mtu == Some(0) {
        return Err(DataplaneError::Invalid {
            what: format!("endpoint {}: mtu 0", spec.host_ifname),
        });
    }
    Ok(())
}

fn host_net(ip: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::new(ip, 32).expect("/32 is valid")
}

fn normalize(cidr: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new(cidr.network(), cidr.prefix()).expect("prefix already valid")
}

impl Dataplane for LinuxDataplane {
    fn create_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        Box::pin(self.create_on_host(spec, true))
    }

    fn create_veth_into_netns<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        Box::pin(self.create_into_netns(spec, true))
    }

    fn create_unrouted_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr> {
        Box::pin(self.create_on_host(spec, false))
    }

    fn create_unrouted_veth_into_netns<'a>(
        &'a self,
        spec: &'a EndpointSpec,
    ) -> DpFuture<'a, MacAddr> {
        Box::pin(self.create_into_netns(spec, false))
    }

    fn route_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()> {
        Box::pin(self.route_made_endpoint(spec))
    }

    fn delete_endpoint<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, bool> {
        Box::pin(self.delete(host_ifname))
    }

    fn host_veth<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, Option<HostLink>> {
        Box::pin(self.find_veth(host_ifname))
    }

    fn delete_host_link<'a>(&'a self, link: &'a HostLink) -> DpFuture<'a, bool> {
        Box::pin(self.delete_exact(link))
    }

    fn check_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()> {
        Box::pin(self.check(spec))
    }

    fn add_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, ()> {
        Box::pin(self.add_blackhole(cidr))
    }

    fn del_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, bool> {
        Box::pin(async move {
            let dst = normalize(cidr);
            info!(%dst, "deleting blackhole route");
            self.nl
                .del_route(dst, RouteKind::Blackhole, ROUTE_PROTOCOL)
                .await
        })
    }

    fn list_routes_with_our_protocol(&self) -> DpFuture<'_, Vec<OwnedRoute>> {
        Box::pin(self.list_ours())
    }

    fn replace_host_route<'a>(&'a self, ip: Ipv4Addr, ifname: &'a str) -> DpFuture<'a, ()> {
        Box::pin(self.replace_route(ip, ifname))
    }

    fn del_host_route(&self, ip: Ipv4Addr) -> DpFuture<'_, bool> {
        Box::pin(async move {
            info!(%ip, "deleting host route");
            self.nl
                .del_route(host_net(ip), RouteKind::Unicast, ROUTE_PROTOCOL)
                .await
        })
    }

    fn enable_ip_forward(&self) -> DpFuture<'_, ()> {
        Box::pin(async move {
            info!("enabling net.ipv4.ip_forward");
            sysctl::write(&self.host_ns, vec![sysctl::ip_forward()]).await
        })
    }

    fn list_host_veths(&self) -> DpFuture<'_, Vec<String>> {
        Box::pin(async move {
            Ok(self
                .links
                .dump()
                .await?
                .into_iter()
                .filter(|l| l.is_veth && l.name.starts_with(super::names::HOST_PREFIX))
                .map(|l| l.name)
                .collect())
        })
    }

    fn next_hops_in_netns<'a>(&'a self, netns: &'a std::path::Path) -> DpFuture<'a, Vec<Ipv4Addr>> {
        Box::pin(self.next_hops_in(netns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_link_local_gateways_and_host_routes() {
        let net = |s: &str| s.parse::<Ipv4Network>().unwrap();
        let routes = [
            Route::device(net("169.254.1.1/32"), 2, 4),
            Route::via(net("0.0.0.0/0"), "169.254.1.1".parse().unwrap(), 2, 4),
            Route::device(net("169.254.1.2/32"), 3, 4),
            // Not next hops: a pool route, a gateway outside 169.254/16, a link-local net.
            Route::device(net("10.1.0.7/32"), 3, 4),
            Route::via(net("10.2.0.0/16"), "10.1.0.1".parse().unwrap(), 3, 4),
            Route::device(net("169.254.0.0/16"), 3, 4),
        ];
        assert_eq!(
            link_local_next_hops(&routes),
            ["169.254.1.1", "169.254.1.2"].map(|a| a.parse::<Ipv4Addr>().unwrap())
        );
    }
}
