//! Plain data types of the dataplane API (no kernel access here).

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use ipnetwork::Ipv4Network;

use super::names::{host_ifname_for, host_ifname_for_cni, temp_ifname_for};

/// One workload's veth pair and address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Host-side veth name, e.g. `brl0123456789a` (see [`host_ifname_for`]).
    pub host_ifname: String,
    /// Container-side name: the final name (`eth0`) for CNI, the temporary host-side
    /// name of the peer for Docker, which renames it when moving it.
    pub container_ifname: String,
    /// The workload's address; always configured and routed as a `/32`.
    pub ip: Ipv4Addr,
    /// MTU for both ends; `None` keeps the kernel default (1500).
    pub mtu: Option<u32>,
    /// Container network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`); `Some`
    /// for CNI, `None` for Docker.
    pub netns: Option<PathBuf>,
    /// The container side's MAC; `None` lets the kernel pick one. brindle's endpoints
    /// take theirs from the address ([`container_mac_for`]), so the endpoint record,
    /// written before or while the veth is made, already holds it.
    pub container_mac: Option<MacAddr>,
}

/// The container-side MAC of an endpoint (CNI, and Docker unless the user set one):
/// locally administered (`0e:62`, "b") plus
/// the four octets of its address. Only the veth's two ends see it (there is no shared
/// segment), and one address is on one endpoint at a time.
pub fn container_mac_for(ip: Ipv4Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x0e, 0x62, o[0], o[1], o[2], o[3]])
}

impl EndpointSpec {
    /// A Docker (CNM) endpoint: host end `brl<id>`, peer `tmp<id>` on the host; the
    /// kernel picks the peer's MAC unless `container_mac` is set.
    pub fn for_docker(endpoint_id: &str, ip: Ipv4Addr, mtu: Option<u32>) -> Self {
        Self {
            host_ifname: host_ifname_for(endpoint_id),
            container_ifname: temp_ifname_for(endpoint_id),
            ip,
            mtu,
            netns: None,
            container_mac: None,
        }
    }

    /// A CNI attachment: host end named from a hash of `container_id` and `ifname`.
    pub fn for_cni(
        container_id: &str,
        ifname: &str,
        netns: impl Into<PathBuf>,
        ip: Ipv4Addr,
        mtu: Option<u32>,
    ) -> Self {
        Self {
            host_ifname: host_ifname_for_cni(container_id, ifname),
            container_ifname: ifname.to_string(),
            ip,
            mtu,
            netns: Some(netns.into()),
            container_mac: Some(container_mac_for(ip)),
        }
    }
}

/// An Ethernet MAC address; displays and parses as `ee:ee:ee:ee:ee:ee`.
/// One host veth as it was when its deletion was decided: its name and the kernel's
/// interface index. A name comes back (the next ADD of the same CNI attachment, e.g.
/// `podman restart`); an index does not (the kernel hands them out cyclically), so
/// deleting by both never touches a newer link that took the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostLink {
    pub name: String,
    pub index: u32,
}

impl fmt::Display for HostLink {
    /// `brl0123456789a:42`; `:` never occurs in an interface name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.index)
    }
}

impl FromStr for HostLink {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid link {s:?}: expected NAME:INDEX");
        let (name, index) = s.rsplit_once(':').ok_or_else(bad)?;
        let index = index.parse().map_err(|_| bad())?;
        if name.is_empty() || index == 0 {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_string(),
            index,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// From a kernel `IFLA_ADDRESS` attribute; `None` unless exactly 6 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// Error of [`MacAddr::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mac address {0:?}: want six hex octets like ee:ee:ee:ee:ee:ee")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

/// A route carrying brindle's protocol number, as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRoute {
    /// Destination prefix.
    pub dst: Ipv4Network,
    /// Where it sends packets.
    pub target: RouteTarget,
}

/// What an [`OwnedRoute`] does with matching packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteTarget {
    /// Dropped (per-block aggregate, `blackhole 10.0.0.0/26`).
    Blackhole,
    /// Sent out of an interface with no gateway (endpoint `/32 dev brl... scope link`).
    Interface {
        /// Kernel interface index.
        ifindex: u32,
        /// Its name, if the link still existed when listed.
        ifname: Option<String>,
    },
    /// Anything else (brindle programs no such routes; listed so callers can clean up).
    Other,
}

impl fmt::Display for OwnedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            RouteTarget::Blackhole => write!(f, "blackhole {}", self.dst),
            RouteTarget::Interface {
                ifname: Some(name), ..
            } => write!(f, "{} dev {name}", self.dst),
            RouteTarget::Interface { ifindex, .. } => write!(f, "{} dev #{ifindex}", self.dst),
            RouteTarget::Other => write!(f, "{} (other)", self.dst),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_display_and_parse_round_trip() {
        let mac = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0xee]);
        assert_eq!(mac.to_string(), "ee:ee:ee:ee:ee:ee");
        assert_eq!("ee:ee:ee:ee:ee:ee".parse::<MacAddr>().unwrap(), mac);
        let mixed: MacAddr = "02:0A:ff:00:1b:c3".parse().unwrap();
        assert_eq!(mixed.octets(), [0x02, 0x0a, 0xff, 0x00, 0x1b, 0xc3]);
        assert_eq!(mixed.to_string(), "02:0a:ff:00:1b:c3");
    }

    #[test]
    fn mac_parse_rejects_bad_input() {
        for bad in [
            "",
            "ee:ee:ee:ee:ee",
            "ee:ee:ee:ee:ee:ee:ee",
            "e:ee:ee:ee:ee:eee",
            "gg:ee:ee:ee:ee:ee",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(
                err.to_string().starts_with("invalid mac address"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn mac_from_slice_needs_six_bytes() {
        assert_eq!(
            MacAddr::from_slice(&[1, 2, 3, 4, 5, 6]),
            Some(MacAddr([1, 2, 3, 4, 5, 6]))
        );
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn specs_derive_interface_names() {
        let ip = Ipv4Addr::new(10, 1, 0, 5);
        let d = EndpointSpec::for_docker("0123456789abcdef0123", ip, Some(1400));
        assert_eq!(d.host_ifname, "brl0123456789a");
        assert_eq!(d.container_ifname, "tmp0123456789a");
        assert_eq!(d.netns, None);
        let c = EndpointSpec::for_cni("ctr1", "eth0", "/run/netns/x", ip, None);
        assert_eq!(c.host_ifname, host_ifname_for_cni("ctr1", "eth0"));
        assert_eq!(c.container_ifname, "eth0");
        assert_eq!(c.netns, Some(PathBuf::from("/run/netns/x")));
    }

    #[test]
    fn owned_route_display() {
        let dst: Ipv4Network = "10.1.0.0/26".parse().unwrap();
        let r = OwnedRoute {
            dst,
            target: RouteTarget::Blackhole,
        };
        assert_eq!(r.to_string(), "blackhole 10.1.0.0/26");
        let r = OwnedRoute {
            dst: "10.1.0.5/32".parse().unwrap(),
            target: RouteTarget::Interface {
                ifindex: 7,
                ifname: Some("brl1".into()),
            },
        };
        assert_eq!(r.to_string(), "10.1.0.5/32 dev brl1");
    }
}
