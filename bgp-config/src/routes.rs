//! `brindle routes`: static routes for routers without BGP, one per block (and per
//! borrowed /32) via the IP of the node that serves it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::model::{canonical, BgpNode, RoutingView};
use crate::BgpError;

/// Output formats of `brindle routes --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteFormat {
    /// `ip route add CIDR via NODE_IP`
    Iproute2,
    /// FRR / Quagga: `ip route CIDR NODE_IP`
    Frr,
    /// BIRD 2: `route CIDR via NODE_IP;` inside a `protocol static` block
    Bird,
    /// Junos: `set routing-options static route CIDR next-hop NODE_IP`
    Junos,
    /// Cisco IOS: `ip route NET MASK NODE_IP`
    Ios,
    /// JSON array of [`StaticRoute`]
    Json,
}

impl RouteFormat {
    /// Every format, in the order `--help` lists them.
    pub const ALL: [RouteFormat; 6] = [
        RouteFormat::Iproute2,
        RouteFormat::Frr,
        RouteFormat::Bird,
        RouteFormat::Junos,
        RouteFormat::Ios,
        RouteFormat::Json,
    ];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteFormat::Iproute2 => "iproute2",
            RouteFormat::Frr => "frr",
            RouteFormat::Bird => "bird",
            RouteFormat::Junos => "junos",
            RouteFormat::Ios => "ios",
            RouteFormat::Json => "json",
        }
    }
}

impl fmt::Display for RouteFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RouteFormat {
    type Err = BgpError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RouteFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| BgpError::InvalidFormat {
                value: s.to_string(),
                valid: "iproute2, frr, bird, junos, ios, json",
            })
    }
}

/// Whether a route covers a whole block or one borrowed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A block, via its affine node.
    Block,
    /// A borrowed address (/32), via the node that holds it.
    Borrowed,
}

/// One static route (also the JSON form: `{"cidr","via","node","kind"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticRoute {
    /// Destination.
    pub cidr: Ipv4Network,
    /// Next hop: the node's IP.
    pub via: Ipv4Addr,
    /// The node's name.
    pub node: String,
    /// Block or borrowed address.
    pub kind: RouteKind,
}

/// Something that got no route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RouteWarning {
    /// A block without (confirmed) affinity: nobody serves it as a whole.
    BlockWithoutNode {
        /// The block.
        cidr: Ipv4Network,
    },
    /// A block whose node is unknown or has no IP.
    BlockNodeWithoutIp {
        /// The block.
        cidr: Ipv4Network,
        /// Its node.
        node: String,
    },
    /// A borrowed address whose holding node is unknown or has no IP.
    BorrowedNodeWithoutIp {
        /// The address.
        ip: Ipv4Addr,
        /// The node holding it.
        node: String,
    },
}

impl fmt::Display for RouteWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteWarning::BlockWithoutNode { cidr } => {
                write!(f, "block {cidr} has no node affinity: no route printed for it")
            }
            RouteWarning::BlockNodeWithoutIp { cidr, node } => write!(
                f,
                "block {cidr} belongs to node {node:?}, which has no IP (set one with `brindle node set {node} --ip ADDR`): no route printed for it"
            ),
            RouteWarning::BorrowedNodeWithoutIp { ip, node } => write!(
                f,
                "address {ip} is used on node {node:?}, which has no IP (set one with `brindle node set {node} --ip ADDR`): no route printed for it"
            ),
        }
    }
}

/// Rendered routes, the routes themselves and what was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesOutput {
    /// The text in the requested format (ends with a newline unless empty).
    pub text: String,
    /// The routes, sorted by destination.
    pub routes: Vec<StaticRoute>,
    /// Blocks and addresses that got no route, for stderr.
    pub warnings: Vec<RouteWarning>,
}

/// Computes the routes: one per block with an affine node that has an IP, and one
/// /32 per borrowed address (held on a node other than its block's), via the
/// holding node. Sorted by destination address, then prefix length.
pub fn static_routes(
    view: &RoutingView,
    nodes: &[BgpNode],
) -> (Vec<StaticRoute>, Vec<RouteWarning>) {
    let ip_of: BTreeMap<&str, Ipv4Addr> = nodes
        .iter()
        .filter(|n| !n.ip.is_unspecified())
        .map(|n| (n.name.as_str(), n.ip))
        .collect();
    let mut routes: BTreeMap<(u32, u8), StaticRoute> = BTreeMap::new();
    let mut warnings = BTreeSet::new();

    for b in &view.blocks {
        let cidr = canonical(b.cidr);
        match &b.node {
            None => {
                warnings.insert(RouteWarning::BlockWithoutNode { cidr });
            }
            Some(node) => match ip_of.get(node.as_str()) {
                None => {
                    warnings.insert(RouteWarning::BlockNodeWithoutIp {
                        cidr,
                        node: node.clone(),
                    });
                }
                Some(&via) => {
                    routes
                        .entry((u32::from(cidr.network()), cidr.prefix()))
                        .or_insert(StaticRoute {
                            cidr,
                            via,
                            node: node.clone(),
                            kind: RouteKind::Block,
                        });
                }
            },
        }
    }

    for b in &view.borrowed {
        let owner = view
            .blocks
            .iter()
            .filter(|blk| canonical(blk.cidr).contains(b.ip))
            .max_by_key(|blk| blk.cidr.prefix())
            .and_then(|blk| blk.node.as_deref());
        if owner == Some(b.node.as_str()) {
            continue; // not borrowed after all: its block's route covers it
        }
        let Some(&via) = ip_of.get(b.node.as_str()) else {
            warnings.insert(RouteWarning::BorrowedNodeWithoutIp {
                ip: b.ip,
                node: b.node.clone(),
            });
            continue;
        };
        let cidr = Ipv4Network::from(b.ip);
        routes.entry((u32::from(b.ip), 32)).or_insert(StaticRoute {
            cidr,
            via,
            node: b.node.clone(),
            kind: RouteKind::Borrowed,
        });
    }

    (
        routes.into_values().collect(),
        warnings.into_iter().collect(),
    )
}

/// Renders `routes` in `format`.
pub fn format_static_routes(routes: &[StaticRoute], format: RouteFormat) -> String {
    let mut out = String::new();
    match format {
        RouteFormat::Json => {
            out = serde_json::to_string_pretty(routes).unwrap_or_else(|_| "[]".into());
            out.push('\n');
        }
        RouteFormat::Bird => {
            out.push_str("protocol static brindle_routes {\n  ipv4;\n");
            for r in routes {
                let _ = writeln!(out, "  route {} via {};", r.cidr, r.via);
            }
            out.push_str("}\n");
        }
        _ => {
            for r in routes {
                let _ = match format {
                    RouteFormat::Iproute2 => writeln!(out, "ip route add {} via {}", r.cidr, r.via),
                    RouteFormat::Frr => writeln!(out, "ip route {} {}", r.cidr, r.via),
                    RouteFormat::Junos => writeln!(
                        out,
                        "set routing-options static route {} next-hop {}",
                        r.cidr, r.via
                    ),
                    RouteFormat::Ios => writeln!(
                        out,
                        "ip route {} {} {}",
                        r.cidr.network(),
                        r.cidr.mask(),
                        r.via
                    ),
                    RouteFormat::Json | RouteFormat::Bird => Ok(()),
                };
            }
        }
    }
    out
}

/// `brindle routes --format F`: the routes in `format`, plus warnings for blocks
/// without affinity and nodes without IP (print those to stderr).
pub fn render_static_routes(
    view: &RoutingView,
    nodes: &[BgpNode],
    format: RouteFormat,
) -> RoutesOutput {
    let (routes, warnings) = static_routes(view, nodes);
    RoutesOutput {
        text: format_static_routes(&routes, format),
        routes,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BorrowedIp, RoutedBlock};

    fn nodes() -> Vec<BgpNode> {
        vec![
            BgpNode {
                name: "a".into(),
                ip: "10.0.0.11".parse().unwrap(),
                as_num: None,
                rr_cluster_id: None,
            },
            BgpNode {
                name: "b".into(),
                ip: "10.0.0.12".parse().unwrap(),
                as_num: None,
                rr_cluster_id: None,
            },
        ]
    }

    fn view() -> RoutingView {
        RoutingView {
            blocks: vec![RoutedBlock {
                // host bits set on purpose: printed canonical
                cidr: "10.244.0.5/26".parse().unwrap(),
                node: Some("a".into()),
            }],
            borrowed: vec![BorrowedIp {
                ip: "10.244.0.9".parse().unwrap(),
                node: "b".into(),
            }],
            pools: vec![],
        }
    }

    fn text(format: RouteFormat) -> String {
        render_static_routes(&view(), &nodes(), format).text
    }

    #[test]
    fn iproute2() {
        assert_eq!(
            text(RouteFormat::Iproute2),
            "ip route add 10.244.0.0/26 via 10.0.0.11\nip route add 10.244.0.9/32 via 10.0.0.12\n"
        );
    }

    #[test]
    fn frr() {
        assert_eq!(
            text(RouteFormat::Frr),
            "ip route 10.244.0.0/26 10.0.0.11\nip route 10.244.0.9/32 10.0.0.12\n"
        );
    }

    #[test]
    fn bird() {
        assert_eq!(
            text(RouteFormat::Bird),
            "protocol static brindle_routes {\n  ipv4;\n  route 10.244.0.0/26 via 10.0.0.11;\n  route 10.244.0.9/32 via 10.0.0.12;\n}\n"
        );
    }

    #[test]
    fn junos() {
        assert_eq!(
            text(RouteFormat::Junos),
            "set routing-options static route 10.244.0.0/26 next-hop 10.0.0.11\n\
             set routing-options static route 10.244.0.9/32 next-hop 10.0.0.12\n"
        );
    }

    #[test]
    fn ios_uses_dotted_masks() {
        assert_eq!(
            text(RouteFormat::Ios),
            "ip route 10.244.0.0 255.255.255.192 10.0.0.11\nip route 10.244.0.9 255.255.255.255 10.0.0.12\n"
        );
    }

    #[test]
    fn json() {
        let v: serde_json::Value = serde_json::from_str(&text(RouteFormat::Json)).unwrap();
        assert_eq!(
            v,
            serde_json::json!([
                {"cidr": "10.244.0.0/26", "via": "10.0.0.11", "node": "a", "kind": "block"},
                {"cidr": "10.244.0.9/32", "via": "10.0.0.12", "node": "b", "kind": "borrowed"}
            ])
        );
        let empty = render_static_routes(&RoutingView::default(), &[], RouteFormat::Json);
        assert_eq!(empty.text, "[]\n");
        assert!(empty.routes.is_empty() && empty.warnings.is_empty());
    }

    #[test]
    fn format_names() {
        for f in RouteFormat::ALL {
            assert_eq!(f.as_str().parse::<RouteFormat>().unwrap(), f);
            assert_eq!(f.to_string(), f.as_str());
        }
        assert_eq!("IOS".parse::<RouteFormat>().unwrap(), RouteFormat::Ios);
        let msg = "cisco".parse::<RouteFormat>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid format \"cisco\": use one of iproute2, frr, bird, junos, ios, json"
        );
    }

    #[test]
    fn skipped_blocks_and_addresses_are_warnings() {
        let mut v = view();
        v.blocks.push(RoutedBlock {
            cidr: "10.244.1.0/26".parse().unwrap(),
            node: None,
        });
        v.blocks.push(RoutedBlock {
            cidr: "10.244.2.0/26".parse().unwrap(),
            node: Some("gone".into()),
        });
        v.borrowed.push(BorrowedIp {
            ip: "10.244.1.3".parse().unwrap(),
            node: "gone".into(),
        });
        // Not borrowed after all (held by its block's node): covered by the block.
        v.borrowed.push(BorrowedIp {
            ip: "10.244.0.4".parse().unwrap(),
            node: "a".into(),
        });
        let mut ns = nodes();
        ns.push(BgpNode {
            name: "noip".into(),
            ip: std::net::Ipv4Addr::UNSPECIFIED,
            as_num: None,
            rr_cluster_id: None,
        });
        v.blocks.push(RoutedBlock {
            cidr: "10.244.3.0/26".parse().unwrap(),
            node: Some("noip".into()),
        });
        let out = render_static_routes(&v, &ns, RouteFormat::Iproute2);
        assert_eq!(out.routes.len(), 2, "{:?}", out.routes);
        let warnings: Vec<String> = out.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert!(warnings[0].starts_with("block 10.244.1.0/26 has no node affinity"));
        assert!(warnings[1]
            .starts_with("block 10.244.2.0/26 belongs to node \"gone\", which has no IP"));
        assert!(warnings[2].starts_with("block 10.244.3.0/26 belongs to node \"noip\""));
        assert!(warnings[3].starts_with("address 10.244.1.3 is used on node \"gone\""));
    }

    #[test]
    fn sorted_by_address_then_length_and_deduplicated() {
        let mut v = view();
        v.blocks.insert(
            0,
            RoutedBlock {
                cidr: "10.0.0.128/25".parse().unwrap(),
                node: Some("b".into()),
            },
        );
        v.blocks.push(v.blocks[1].clone());
        let routes = render_static_routes(&v, &nodes(), RouteFormat::Frr).routes;
        let cidrs: Vec<String> = routes.iter().map(|r| r.cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.0.0.128/25", "10.244.0.0/26", "10.244.0.9/32"]);
    }
}
