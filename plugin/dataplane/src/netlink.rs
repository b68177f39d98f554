//! The only code that builds netlink messages (rtnetlink 0.24, `rtnetlink::packet_route`).
//!
//! Typed operations named after the kernel operation; callers see only [`Link`],
//! [`Route`] and [`DataplaneError`]. A [`Netlink`] talks to the namespace its socket was
//! opened in, whatever thread later drives it.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use ipnetwork::Ipv4Network;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::task::JoinHandle;

use super::error::netlink_errno;
use super::netns::Netns;
use super::{DataplaneError, MacAddr};

/// A link as read from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<MacAddr>,
    pub is_veth: bool,
    pub up: bool,
}

/// What a route does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKind {
    Unicast,
    Blackhole,
    Other,
}

/// An IPv4 route in the main table, for building requests and reading dumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub dst: Ipv4Network,
    pub kind: RouteKind,
    pub oif: Option<u32>,
    pub gateway: Option<Ipv4Addr>,
    /// Scope link (directly reachable on `oif`) rather than universe.
    pub scope_link: bool,
    pub protocol: u8,
}

impl Route {
    /// `dst dev oif scope link proto P`.
    pub(crate) fn device(dst: Ipv4Network, oif: u32, protocol: u8) -> Self {
        Self {
            dst,
            kind: RouteKind::Unicast,
            oif: Some(oif),
            gateway: None,
            scope_link: true,
            protocol,
        }
    }

    /// `blackhole dst proto P`.
    pub(crate) fn blackhole(dst: Ipv4Network, protocol: u8) -> Self {
        Self {
            dst,
            kind: RouteKind::Blackhole,
            oif: None,
            gateway: None,
            scope_link: false,
            protocol,
        }
    }

    /// `dst via gateway dev oif proto P`.
    pub(crate) fn via(dst: Ipv4Network, gateway: Ipv4Addr, oif: u32, protocol: u8) -> Self {
        Self {
            dst,
            kind: RouteKind::Unicast,
            oif: Some(oif),
            gateway: Some(gateway),
            scope_link: false,
            protocol,
        }
    }

    /// `ip route` style text, naming the output device `dev` (or `#index` if empty).
    pub(crate) fn describe(&self, dev: &str) -> String {
        let mut s = String::new();
        if self.kind == RouteKind::Blackhole {
            s.push_str("blackhole ");
        }
        s.push_str(&self.dst.to_string());
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        match (self.oif, dev) {
            (Some(oif), "") => s.push_str(&format!(" dev #{oif}")),
            (Some(_), dev) => s.push_str(&format!(" dev {dev}")),
            (None, _) => {}
        }
        if self.scope_link {
            s.push_str(" scope link");
        }
        s.push_str(&format!(" proto {}", self.protocol));
        s
    }
}

/// An rtnetlink connection; its background task stops when this is dropped.
pub(crate) struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn io_err(op: &str) -> impl FnOnce(std::io::Error) -> DataplaneError + '_ {
    move |cause| DataplaneError::Io {
        op: op.to_string(),
        cause,
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace. Needs a tokio runtime.
    pub(crate) fn connect() -> Result<Self, DataplaneError> {
        let rt = runtime()?;
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(io_err("open netlink socket"))?;
        Ok(Self {
            handle,
            task: rt.spawn(conn),
        })
    }

    /// Opens a socket inside `ns` (from a short-lived thread that joined it).
    pub(crate) async fn connect_in(ns: &Netns) -> Result<Self, DataplaneError> {
        let rt = runtime()?;
        let rt2 = rt.clone();
        let (conn, handle) = ns
            .run(move || {
                // The socket registers with the runtime's reactor: enter it on this thread.
                let _guard = rt2.enter();
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(io_err("open netlink socket in netns"))?;
                Ok((conn, handle))
            })
            .await?;
        Ok(Self {
            handle,
            task: rt.spawn(conn),
        })
    }

    /// RTM_GETLINK by name; `None` if there is no such link.
    pub(crate) async fn get_link(&self, name: &str) -> Result<Option<Link>, DataplaneError> {
        let req = self.handle.link().get().match_name(name.to_string());
        first_link(req.execute().try_next().await, || {
            format!("get link {name}")
        })
    }

    /// RTM_GETLINK by index; `None` if there is no such link.
    pub(crate) async fn get_link_by_index(
        &self,
        index: u32,
    ) -> Result<Option<Link>, DataplaneError> {
        let req = self.handle.link().get().match_index(index);
        first_link(req.execute().try_next().await, || {
            format!("get link #{index}")
        })
    }

    /// RTM_NEWLINK of a veth pair in one message: `host` (up, with `host_mac`) here and
    /// `peer` either here too or, with `peer_ns`, created directly inside that
    /// namespace, so no half-moved peer can ever be left on the host.
    pub(crate) async fn add_veth(
        &self,
        host: &str,
        host_mac: MacAddr,
        peer: &str,
        peer_mac: Option<MacAddr>,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
    ) -> Result<(), DataplaneError> {
        let mut peer_msg = LinkUnspec::new_with_name(peer);
        if let Some(mac) = peer_mac {
            peer_msg = peer_msg.address(mac.octets().to_vec());
        }
        if let Some(ns) = peer_ns {
            peer_msg = peer_msg.setns_by_fd(ns.file().as_raw_fd());
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let mut msg = LinkVeth::new(host, peer)
            .address(host_mac.octets().to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())))
            .up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .add(msg.build())
            .execute()
            .await
            .map_err(|e| {
                let where_ =
                    peer_ns.map_or(String::new(), |ns| format!(" in {}", ns.path().display()));
                DataplaneError::netlink(format!("create veth {host} (peer {peer}{where_})"), e)
            })
    }

    /// RTM_NEWLINK (set) IFF_UP.
    pub(crate) async fn set_link_up(&self, index: u32, name: &str) -> Result<(), DataplaneError> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("set link {name} up"), e))
    }

    /// RTM_DELLINK; `false` if the link was already gone.
    pub(crate) async fn del_link(&self, index: u32, name: &str) -> Result<bool, DataplaneError> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(format!("delete link {name}"), e)),
        }
    }

    /// RTM_NEWADDR `ip/prefix` on `index`.
    pub(crate) async fn add_address(
        &self,
        index: u32,
        name: &str,
        ip: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), DataplaneError> {
        self.handle
            .address()
            .add(index, IpAddr::V4(ip), prefix)
            .execute()
            .await
            .map_err(|e| DataplaneError::netlink(format!("add address {ip}/{prefix} to {name}"), e))
    }

    /// RTM_GETADDR dump, IPv4 addresses of `index`.
    pub(crate) async fn dump_addresses(
        &self,
        index: u32,
    ) -> Result<Vec<Ipv4Network>, DataplaneError> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink(format!("dump addresses of link #{index}"), e))?;
        let mut out = Vec::new();
        for m in msgs {
            let ip = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(ip))
                | AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(net) = ip.and_then(|ip| Ipv4Network::new(ip, m.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// RTM_NEWROUTE in the main table; `replace` swaps out any route for the same prefix
    /// (NLM_F_REPLACE) instead of failing with EEXIST (NLM_F_EXCL).
    /// `dev` names `route.oif` in the error message.
    pub(crate) async fn add_route(
        &self,
        route: &Route,
        dev: &str,
        replace: bool,
    ) -> Result<(), DataplaneError> {
        let mut req = self.handle.route().add(build_route(route));
        if replace {
            req = req.replace();
        }
        let verb = if replace { "replace" } else { "add" };
        req.execute().await.map_err(|e| {
            DataplaneError::netlink(format!("{verb} route {}", route.describe(dev)), e)
        })
    }

    /// RTM_DELROUTE of the route for `dst` of this kind and protocol (any scope, any
    /// device); `false` if there was none.
    pub(crate) async fn del_route(
        &self,
        dst: Ipv4Network,
        kind: RouteKind,
        protocol: u8,
    ) -> Result<bool, DataplaneError> {
        let mut msg = build_route(&Route {
            dst,
            kind,
            oif: None,
            gateway: None,
            scope_link: false,
            protocol,
        });
        // The kernel matches a delete on scope unless it is RT_SCOPE_NOWHERE ("any"), and
        // on protocol when non-zero: so only a route we own is ever removed.
        msg.header.scope = RouteScope::NoWhere;
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if netlink_errno(&e) == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(DataplaneError::netlink(
                format!("delete route {dst} proto {protocol}"),
                e,
            )),
        }
    }

    /// RTM_GETROUTE dump of the IPv4 main table.
    pub(crate) async fn dump_routes(&self) -> Result<Vec<Route>, DataplaneError> {
        // Each message boiled down as it arrives, not all held decoded at once.
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_filter_map(|m| std::future::ready(Ok(parse_route(&m))))
            .try_collect()
            .await
            .map_err(|e| DataplaneError::netlink("dump ipv4 routes", e))
    }
}

fn runtime() -> Result<tokio::runtime::Handle, DataplaneError> {
    tokio::runtime::Handle::try_current().map_err(|e| DataplaneError::Io {
        op: "open netlink socket".into(),
        cause: std::io::Error::other(e.to_string()),
    })
}

fn first_link(
    res: Result<Option<LinkMessage>, rtnetlink::Error>,
    op: impl FnOnce() -> String,
) -> Result<Option<Link>, DataplaneError> {
    match res {
        Ok(msg) => Ok(msg.as_ref().map(parse_link)),
        // A get by name/index of a missing link answers ENODEV.
        Err(e) if netlink_errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(DataplaneError::netlink(op(), e)),
    }
}

fn parse_link(msg: &LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
        is_veth: false,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(a),
            LinkAttribute::LinkInfo(infos) => {
                link.is_veth = infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
            }
            _ => {}
        }
    }
    link
}

fn build_route(route: &Route) -> RouteMessage {
    let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(route.dst.network(), route.dst.prefix())
        .protocol(RouteProtocol::from(route.protocol))
        .kind(match route.kind {
            RouteKind::Unicast => RouteType::Unicast,
            RouteKind::Blackhole => RouteType::BlackHole,
            // Unspec matches any type in a delete.
            RouteKind::Other => RouteType::Unspec,
        })
        .scope(if route.scope_link {
            RouteScope::Link
        } else {
            RouteScope::Universe
        });
    if let Some(oif) = route.oif {
        b = b.output_interface(oif);
    }
    if let Some(gw) = route.gateway {
        b = b.gateway(gw);
    }
    b.build()
}

fn parse_route(msg: &RouteMessage) -> Option<Route> {
    if msg.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(msg.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut oif = None;
    let mut gateway = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    Some(Route {
        dst: Ipv4Network::new(dst, msg.header.destination_prefix_length).ok()?,
        kind: match msg.header.kind {
            RouteType::Unicast => RouteKind::Unicast,
            RouteType::BlackHole => RouteKind::Blackhole,
            _ => RouteKind::Other,
        },
        oif,
        gateway,
        scope_link: msg.header.scope == RouteScope::Link,
        protocol: u8::from(msg.header.protocol),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_round_trips() {
        let cases = [
            Route::device("10.1.0.5/32".parse().unwrap(), 7, 98),
            Route::blackhole("10.1.0.0/26".parse().unwrap(), 98),
            Route::via(
                "0.0.0.0/0".parse().unwrap(),
                Ipv4Addr::new(169, 254, 1, 1),
                3,
                4,
            ),
        ];
        for route in cases {
            let msg = build_route(&route);
            assert_eq!(msg.header.table, RouteHeader::RT_TABLE_MAIN);
            assert_eq!(
                parse_route(&msg),
                Some(route.clone()),
                "{}",
                route.describe("")
            );
        }
    }

    #[test]
    fn build_route_uses_network_address() {
        let msg = build_route(&Route::blackhole("10.1.0.9/26".parse().unwrap(), 98));
        let back = parse_route(&msg).unwrap();
        assert_eq!(back.dst, "10.1.0.0/26".parse::<Ipv4Network>().unwrap());
        assert_eq!(msg.header.kind, RouteType::BlackHole);
        assert_eq!(u8::from(msg.header.protocol), 98);
    }

    #[test]
    fn parse_route_skips_other_tables() {
        let mut msg = build_route(&Route::device("10.1.0.5/32".parse().unwrap(), 7, 98));
        msg.header.table = 255; // local
        assert_eq!(parse_route(&msg), None);
    }

    #[test]
    fn route_display() {
        let r = Route::device("10.1.0.5/32".parse().unwrap(), 7, 98);
        assert_eq!(r.describe(""), "10.1.0.5/32 dev #7 scope link proto 98");
        assert_eq!(
            r.describe("brl1"),
            "10.1.0.5/32 dev brl1 scope link proto 98"
        );
        let b = Route::blackhole("10.1.0.0/26".parse().unwrap(), 98);
        assert_eq!(b.describe(""), "blackhole 10.1.0.0/26 proto 98");
    }
}
