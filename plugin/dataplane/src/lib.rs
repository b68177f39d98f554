//! Routed dataplane (veth + host routes), all netlink behind one trait.
//!
//! The wiring is Calico's: every workload gets a veth pair; the host end carries the fixed
//! MAC [`HOST_MAC`], has `proxy_arp=1` and a `/32` route to the workload's address; the
//! container end has the address as a `/32`, a link-scope route to [`GATEWAY_IP`] and a
//! default route via it. No bridge, no encapsulation.
//!
//! Callers (the Docker driver, the CNI plugin, the agent) use the [`Dataplane`] trait;
//! [`LinuxDataplane`] is the real one, [`FakeDataplane`] a recording fake for tests
//! without root. Only `netlink.rs` builds netlink messages.
//!
//! ```no_run
//! # async fn demo() -> Result<(), brindle_dataplane::DataplaneError> {
//! use std::sync::Arc;
//! use brindle_dataplane::{Dataplane, EndpointSpec, LinuxDataplane};
//!
//! // In the host namespace, inside a tokio runtime (any flavour).
//! let dp: Arc<dyn Dataplane> = Arc::new(LinuxDataplane::connect()?);
//! let ip = "10.1.0.5".parse().unwrap();
//! let spec = EndpointSpec::for_cni("c0ffee", "eth0", "/run/netns/ctr", ip, None);
//! let mac = dp.create_veth_into_netns(&spec).await?;
//! dp.check_endpoint(&spec).await?;
//! let link = dp.host_veth(&spec.host_ifname).await?.expect("just created");
//! dp.delete_host_link(&link).await?; // exactly that veth; idempotent
//! # let _ = mac; Ok(()) }
//! ```

mod error;
mod fake;
pub mod firewall;
mod link_dump;
mod linux;
mod names;
mod netlink;
mod netns;
mod reaper;
mod sysctl;
mod types;

pub use error::DataplaneError;
pub use fake::{FakeCall, FakeDataplane, FakeOp};
pub use firewall::{FakeFirewall, Firewall, FirewallSpec, LinuxFirewall};
pub use linux::LinuxDataplane;
pub use names::{host_ifname_for, host_ifname_for_cni, temp_ifname_for, validate_ifname};
pub use reaper::Reaper;
pub use types::{container_mac_for, EndpointSpec, HostLink, MacAddr, OwnedRoute, RouteTarget};

use std::net::Ipv4Addr;
use std::path::Path;

use futures::future::BoxFuture;
use ipnetwork::Ipv4Network;

/// MAC address of every host-side veth (as Calico): the container only ever talks to
/// this MAC, whatever it asks for with ARP, so the host end needs no per-endpoint state.
pub const HOST_MAC: MacAddr = MacAddr([0xee; 6]);

/// The container's next hop. Nothing owns this address: the host veth answers ARP for it
/// through `proxy_arp`. Link-local, so it never collides with a pool.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// Route protocol number (`ip route ... proto 98`) on every route brindle programs: the
/// endpoint `/32`s and the per-block blackholes. It lets the agent list and clean up only
/// its own routes, and BIRD's export filter match them with `krt_source = 98`.
///
/// 98 is not in iproute2's `rt_protos` table (nor its FRR/BIRD/babel entries). We avoid
/// 80, the number Calico's Felix is commonly seen using, so routes of a Calico install
/// being migrated are never mistaken for ours. Name it locally with
/// `echo '98 brindle' > /etc/iproute2/rt_protos.d/brindle.conf`.
pub const ROUTE_PROTOCOL: u8 = brindle_bgp::ROUTE_PROTOCOL;

/// Linux's interface name limit (`IFNAMSIZ` 16, minus the trailing NUL).
pub const IFNAME_MAX: usize = 15;

/// A boxed, `Send` future returning a dataplane result: keeps [`Dataplane`] object-safe
/// (`Arc<dyn Dataplane>`) and usable from multi-threaded runtimes such as axum's.
pub type DpFuture<'a, T> = BoxFuture<'a, Result<T, DataplaneError>>;

/// Everything the Docker driver, the CNI plugin and the agent ask of the kernel.
///
/// Each operation either completes or leaves nothing behind (creates roll back).
/// Deletes are idempotent: what is already gone counts as deleted. A create future
/// dropped half-way (e.g. by a timeout) cannot roll back: follow it with
/// [`Dataplane::delete_endpoint`].
pub trait Dataplane: Send + Sync {
    /// Docker (CNM) style: create the veth pair with both ends on the host.
    ///
    /// `spec.host_ifname` gets [`HOST_MAC`], is set up, gets `proxy_arp=1` and
    /// `proxy_delay=0`, and a `/32` route for `spec.ip` (scope link, [`ROUTE_PROTOCOL`]).
    /// `spec.container_ifname` is the peer's temporary host-side name (left down); Docker
    /// moves it into the container and sets its address and gateway. `spec.netns` must be
    /// `None`. Returns the peer's MAC.
    fn create_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr>;

    /// CNI style: create the veth pair with the peer directly inside `spec.netns` (which
    /// must be `Some`) named `spec.container_ifname`, configure the container side
    /// (`ip/32`, link and `lo` up, `169.254.1.1/32 scope link`, `default via 169.254.1.1`)
    /// and the host side as [`Dataplane::create_veth_on_host`]. Returns the container MAC.
    fn create_veth_into_netns<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr>;

    /// [`Dataplane::create_veth_into_netns`] but for the host's `/32` route, so that
    /// nothing outside the container reaches it yet: for a caller whose address is
    /// still being committed. Follow it with [`Dataplane::route_endpoint`].
    fn create_unrouted_veth_into_netns<'a>(
        &'a self,
        spec: &'a EndpointSpec,
    ) -> DpFuture<'a, MacAddr>;

    /// [`Dataplane::create_veth_on_host`] but for the host's `/32` route, for the same
    /// reason. Follow it with [`Dataplane::route_endpoint`].
    fn create_unrouted_veth_on_host<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, MacAddr>;

    /// Add the host's `/32` route of an endpoint made by
    /// [`Dataplane::create_unrouted_veth_into_netns`] or
    /// [`Dataplane::create_unrouted_veth_on_host`] (a route that already points at its
    /// veth is accepted). On failure the endpoint is deleted, as a failed create is.
    fn route_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()>;

    /// Delete the host veth (the kernel removes its peer and its routes with it).
    /// Returns `false` when it was already gone. Refuses to delete a non-veth link.
    fn delete_endpoint<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, bool>;

    /// The host veth named `host_ifname` as it is now (name and index), to delete later
    /// with [`Dataplane::delete_host_link`]; `None` when no veth has that name.
    fn host_veth<'a>(&'a self, host_ifname: &'a str) -> DpFuture<'a, Option<HostLink>>;

    /// Delete exactly `link`: the link with its index, and only while it is still a
    /// veth with its name. Returns `false` when that link is gone; a newer link that
    /// took the name is left alone.
    fn delete_host_link<'a>(&'a self, link: &'a HostLink) -> DpFuture<'a, bool>;

    /// CNI CHECK: verify what [`Dataplane::create_veth_into_netns`] made is still there.
    /// Fails with [`DataplaneError::Check`] listing everything missing or wrong.
    fn check_endpoint<'a>(&'a self, spec: &'a EndpointSpec) -> DpFuture<'a, ()>;

    /// Program a blackhole route for a block affine to this node. Idempotent; fails if a
    /// route for exactly this prefix exists that is not brindle's blackhole.
    fn add_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, ()>;

    /// Remove brindle's blackhole for `cidr`. Returns `false` if there was none.
    fn del_blackhole_route(&self, cidr: Ipv4Network) -> DpFuture<'_, bool>;

    /// All IPv4 routes in the main table carrying [`ROUTE_PROTOCOL`].
    fn list_routes_with_our_protocol(&self) -> DpFuture<'_, Vec<OwnedRoute>>;

    /// Make `ip/32` point at `ifname` (scope link, [`ROUTE_PROTOCOL`]), replacing any
    /// route for that exact `/32`.
    fn replace_host_route<'a>(&'a self, ip: Ipv4Addr, ifname: &'a str) -> DpFuture<'a, ()>;

    /// Remove brindle's `/32` route for `ip`. Returns `false` if there was none.
    fn del_host_route(&self, ip: Ipv4Addr) -> DpFuture<'_, bool>;

    /// Set `net.ipv4.ip_forward=1` in the host namespace.
    fn enable_ip_forward(&self) -> DpFuture<'_, ()>;

    /// Names of the host namespace's veths with brindle's prefix (`brl...`).
    fn list_host_veths(&self) -> DpFuture<'_, Vec<String>>;

    /// The link-local (`169.254.0.0/16`) next hops the namespace at `netns` routes
    /// through now: each route's gateway and each `/32` destination in that range. A
    /// Docker sandbox that already has a brindle interface shows its next hop here, so
    /// another network joined to the same container can pick a different one.
    fn next_hops_in_netns<'a>(&'a self, netns: &'a Path) -> DpFuture<'a, Vec<Ipv4Addr>>;
}
