//! Route filters: which prefixes this node announces, accepts and installs.
//!
//! Reads only the IPAM [`RoutingView`] (blocks, borrowed addresses, pools) and this
//! node's name, never the sessions: the same filters serve every session. The
//! prefix sets are worked out first ([`RoutePolicy`]), then printed as BIRD
//! functions and filters ([`write_filters`]) that the session templates refer to
//! by name.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::model::{canonical, BgpNode, RoutingView, ROUTE_PROTOCOL};
use crate::text::safe;

/// The prefix sets behind the filters of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct RoutePolicy {
    /// Blocks affine to this node, canonical, deduplicated and sorted: announced as
    /// one prefix each, never installed from peers.
    pub own_blocks: Vec<Ipv4Network>,
    /// Borrowed addresses held here outside its own blocks: announced as /32s.
    pub borrowed: Vec<HeldBorrowed>,
    /// Pool prefixes with a label naming the pools: the only routes accepted.
    pub pools: Vec<(Ipv4Network, String)>,
}

/// A borrowed /32 this node announces, with where it comes from (for a comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct HeldBorrowed {
    pub ip: Ipv4Addr,
    pub origin: String,
}

impl RoutePolicy {
    /// The policy of `me` from IPAM's view.
    pub fn new(view: &RoutingView, me: &BgpNode) -> Self {
        RoutePolicy {
            own_blocks: own_blocks(view, me),
            borrowed: held_borrowed(view, me),
            pools: pools(view),
        }
    }
}

fn net_key(n: &Ipv4Network) -> (u32, u8) {
    (u32::from(n.network()), n.prefix())
}

fn own_blocks(view: &RoutingView, me: &BgpNode) -> Vec<Ipv4Network> {
    let set: BTreeSet<(u32, u8)> = view
        .blocks
        .iter()
        .filter(|b| b.node.as_deref() == Some(me.name.as_str()))
        .map(|b| net_key(&canonical(b.cidr)))
        .collect();
    set.into_iter()
        .filter_map(|(a, p)| Ipv4Network::new(Ipv4Addr::from(a), p).ok())
        .collect()
}

fn held_borrowed(view: &RoutingView, me: &BgpNode) -> Vec<HeldBorrowed> {
    let mut out: BTreeMap<Ipv4Addr, HeldBorrowed> = BTreeMap::new();
    for b in view.borrowed.iter().filter(|b| b.node == me.name) {
        let block = view
            .blocks
            .iter()
            .filter(|blk| canonical(blk.cidr).contains(b.ip))
            .max_by_key(|blk| blk.cidr.prefix());
        let origin = match block {
            Some(blk) if blk.node.as_deref() == Some(me.name.as_str()) => continue,
            Some(blk) => match &blk.node {
                Some(owner) => format!("block {} of node \"{}\"", canonical(blk.cidr), safe(owner)),
                None => format!("block {} without affinity", canonical(blk.cidr)),
            },
            None => "no known block".to_string(),
        };
        out.entry(b.ip).or_insert(HeldBorrowed { ip: b.ip, origin });
    }
    out.into_values().collect()
}

fn pools(view: &RoutingView) -> Vec<(Ipv4Network, String)> {
    let mut by_net: BTreeMap<(u32, u8), String> = BTreeMap::new();
    for p in &view.pools {
        let label = if p.disabled {
            format!("pool \"{}\" (disabled)", safe(&p.name))
        } else {
            format!("pool \"{}\"", safe(&p.name))
        };
        by_net
            .entry(net_key(&canonical(p.cidr)))
            .and_modify(|l| {
                l.push_str(", ");
                l.push_str(&label);
            })
            .or_insert(label);
    }
    by_net
        .into_iter()
        .filter_map(|((a, p), l)| Ipv4Network::new(Ipv4Addr::from(a), p).ok().map(|n| (n, l)))
        .collect()
}

/// Writes `brindle_in_pools`, `brindle_programmed`, `brindle_export`,
/// `brindle_import` and `brindle_kernel_export`, each after a blank line.
pub(super) fn write_filters(out: &mut String, policy: &RoutePolicy) {
    let RoutePolicy {
        own_blocks: blocks,
        borrowed,
        pools,
    } = policy;

    w!(out);
    w!(
        out,
        "# Prefixes inside brindle's IP pools: the only routes accepted from peers and\n\
         # installed in the kernel. Disabled pools count: they still have endpoints."
    );
    w!(out, "function brindle_in_pools()\n{{");
    if pools.is_empty() {
        w!(out, "  # no pools");
    }
    for (net, label) in pools {
        w!(out, "  if net ~ {net} then return true;   # {label}");
    }
    w!(out, "  return false;\n}}");

    w!(out);
    w!(
        out,
        "# Routes brindled put in the kernel (route protocol {ROUTE_PROTOCOL}), learned by protocol\n\
         # kernel: the blackhole of each affine block and the /32 of each local endpoint."
    );
    w!(
        out,
        "function brindle_programmed()\n{{\n  return source = RTS_INHERIT && krt_source = {ROUTE_PROTOCOL};\n}}"
    );

    w!(out);
    w!(
        out,
        "# Announced to peers: each block affine to this node as ONE prefix, and the /32\n\
         # of each borrowed address held here; never the endpoints inside own blocks,\n\
         # never host or fabric routes. reflect: on a route reflector's iBGP sessions,\n\
         # routes learned from other nodes are passed on too."
    );
    w!(out, "function brindle_export(bool reflect)\n{{");
    w!(
        out,
        "  if reflect && source = RTS_BGP then {{\n    if brindle_in_pools() then accept;\n    reject;\n  }}"
    );
    w!(out, "  if !brindle_programmed() then reject;");
    if blocks.is_empty() {
        w!(out, "  # blocks affine to this node: none");
    } else {
        w!(out, "  # blocks affine to this node");
    }
    for b in blocks {
        w!(out, "  if net = {b} then accept;");
        if b.prefix() < 32 {
            w!(out, "  if net ~ {b} then reject;   # its endpoints' /32s");
        }
    }
    if borrowed.is_empty() {
        w!(out, "  # borrowed addresses held on this node: none");
    } else {
        w!(out, "  # borrowed addresses held on this node");
    }
    for b in borrowed {
        w!(out, "  if net = {}/32 then accept;   # {}", b.ip, b.origin);
    }
    w!(out, "  reject;\n}}");

    w!(out);
    w!(
        out,
        "# Accepted from peers: other nodes' blocks and borrowed /32s, i.e. prefixes\n\
         # inside the pools; nothing else (no default or fabric routes)."
    );
    w!(
        out,
        "filter brindle_import\n{{\n  if brindle_in_pools() then accept;\n  reject;\n}}"
    );

    w!(out);
    w!(
        out,
        "# Installed in the kernel: routes learned from peers, with the announcing node\n\
         # as next hop. Never this node's own blocks: their blackhole stays."
    );
    w!(out, "filter brindle_kernel_export\n{{");
    w!(out, "  if source != RTS_BGP then reject;");
    for b in blocks {
        w!(out, "  if net = {b} then reject;   # own block");
    }
    w!(out, "  if brindle_in_pools() then accept;\n  reject;\n}}");
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::node;
    use super::*;
    use crate::model::{BorrowedIp, RoutedBlock, RoutedPool};

    fn block(cidr: &str, on: Option<&str>) -> RoutedBlock {
        RoutedBlock {
            cidr: cidr.parse().unwrap(),
            node: on.map(Into::into),
        }
    }

    fn borrowed(ip: &str, on: &str) -> BorrowedIp {
        BorrowedIp {
            ip: ip.parse().unwrap(),
            node: on.into(),
        }
    }

    fn view() -> RoutingView {
        RoutingView {
            blocks: vec![
                block("10.244.0.0/26", Some("a")),
                block("10.244.0.64/26", Some("b")),
                block("10.244.0.200/32", Some("a")),
                block("10.244.0.1/26", Some("a")), // same block, not canonical
                block("10.244.1.0/26", None),
            ],
            borrowed: vec![
                borrowed("10.244.0.70", "a"),
                // in a's own block: not borrowed, not a /32 of its own
                borrowed("10.244.0.5", "a"),
                // held by b: b's business
                borrowed("10.244.0.6", "b"),
                borrowed("10.244.1.9", "a"),
                borrowed("10.9.9.9", "a"),
                borrowed("10.244.0.70", "a"), // twice: once
            ],
            pools: vec![
                RoutedPool {
                    name: "default".into(),
                    cidr: "10.244.0.0/16".parse().unwrap(),
                    disabled: false,
                },
                RoutedPool {
                    name: "alias".into(),
                    cidr: "10.244.7.7/16".parse().unwrap(),
                    disabled: true,
                },
            ],
        }
    }

    #[test]
    fn policy_of_a_node() {
        let p = RoutePolicy::new(&view(), &node("a", "10.0.0.1"));
        let nets =
            |v: &[&str]| -> Vec<Ipv4Network> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(p.own_blocks, nets(&["10.244.0.0/26", "10.244.0.200/32"]));
        let held: Vec<(String, &str)> = p
            .borrowed
            .iter()
            .map(|b| (b.ip.to_string(), b.origin.as_str()))
            .collect();
        assert_eq!(
            held,
            [
                ("10.9.9.9".into(), "no known block"),
                ("10.244.0.70".into(), "block 10.244.0.64/26 of node \"b\""),
                ("10.244.1.9".into(), "block 10.244.1.0/26 without affinity"),
            ]
        );
        assert_eq!(
            p.pools,
            [(
                "10.244.0.0/16".parse().unwrap(),
                "pool \"default\", pool \"alias\" (disabled)".to_string()
            )]
        );
        let empty = RoutePolicy::new(&RoutingView::default(), &node("a", "10.0.0.1"));
        assert_eq!(empty, RoutePolicy::default());
    }

    #[test]
    fn export_filter_aggregates_own_blocks_and_announces_borrowed() {
        let mut text = String::new();
        write_filters(
            &mut text,
            &RoutePolicy::new(&view(), &node("a", "10.0.0.1")),
        );
        let export: String = text
            .split("function brindle_export(bool reflect)")
            .nth(1)
            .unwrap()
            .split("\n}\n")
            .next()
            .unwrap()
            .to_string();
        assert!(export.contains(
            "  if net = 10.244.0.0/26 then accept;\n  if net ~ 10.244.0.0/26 then reject;"
        ));
        assert!(
            export.contains("  if net = 10.244.0.200/32 then accept;\n"),
            "{export}"
        );
        assert!(!export.contains("net ~ 10.244.0.200/32"), "{export}");
        assert!(export.contains(
            "  if net = 10.244.0.70/32 then accept;   # block 10.244.0.64/26 of node \"b\""
        ));
        assert!(
            !export.contains("10.244.0.5/32") && !export.contains("10.244.0.6/32"),
            "{export}"
        );
        assert!(!export.contains("10.244.0.64/26 then"), "{export}");
        let kernel = text.split("filter brindle_kernel_export").nth(1).unwrap();
        assert!(kernel.contains("if net = 10.244.0.0/26 then reject;"));
    }
}
