//! brindle's nftables table `ip brindle`, rendered as `nft -f` input (pure).
//!
//! ```text
//! table ip brindle {
//!   set pools     every pool (interval)
//!   set nat_pools pools with outgoing NAT (interval)
//!   set m_<h>     members of segment <h>: addresses of every container on it, any host
//!   set a_<h>_<g> allow-from sources of one guard (interval)
//!   chain g_<h>[_<g>]   who may reach an endpoint of that guard:
//!       members accept; other pools drop; [not in allow-from drop]
//!   map local     this node's endpoint address : jump its guard chain
//!   chain forward   hook forward, before iptables' filter (priority filter - 5):
//!       to a brl* veth: established/related accept, else daddr vmap @local
//!   chain postrouting  hook postrouting (srcnat + 5): nat_pools to non-pools masquerade
//! }
//! ```
//!
//! The accept here only ends this base chain: forwarding is accepted in iptables'
//! FORWARD (see `iptables.rs`); a drop here is final for the packet.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use super::spec::{FirewallSpec, Guard, SetDelta};
use crate::names::HOST_PREFIX;

/// The table's family and name.
pub const TABLE: &str = "ip brindle";

/// Priority of the forward chain: before iptables' filter chains (0), so isolation
/// drops win whatever FORWARD accepts.
const FORWARD_PRIORITY: &str = "filter - 5";

/// Set and chain names carry a 64-bit FNV-1a hash of the segment (16 hex digits);
/// the segment itself is kept in the set's comment.
fn hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The members set of `segment`.
pub fn members_set(segment: &str) -> String {
    format!("m_{}", hash(segment))
}

fn allow_key(allow: &BTreeSet<Ipv4Network>) -> String {
    let text: Vec<String> = allow.iter().map(|c| c.to_string()).collect();
    hash(&text.join(","))[..8].to_string()
}

/// The chain enforcing `guard`.
pub fn guard_chain(guard: &Guard) -> String {
    match guard.allow_from.is_empty() {
        true => format!("g_{}", hash(&guard.segment)),
        false => format!(
            "g_{}_{}",
            hash(&guard.segment),
            allow_key(&guard.allow_from)
        ),
    }
}

fn allow_set(guard: &Guard) -> String {
    format!(
        "a_{}_{}",
        hash(&guard.segment),
        allow_key(&guard.allow_from)
    )
}

/// An nft string literal: printable ASCII without quotes or backslashes, at most 120
/// bytes (a comment's limit is 128), since segment names come from etcd.
fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| *c != '"' && *c != '\\')
        .take(120)
        .collect();
    format!("\"{clean}\"")
}

fn list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn elements<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let text = list(items);
    match text.is_empty() {
        true => String::new(),
        false => format!(" elements = {{ {text} }};"),
    }
}

fn verdict(ip: &Ipv4Addr, guard: &Guard) -> String {
    format!("{ip} : jump {}", guard_chain(guard))
}

/// The whole table, replacing any previous one in the same atomic batch.
pub fn render(spec: &FirewallSpec) -> String {
    let mut s = String::new();
    // `table` creates it when absent, so the `delete` never fails: one batch, no gap.
    let _ = writeln!(s, "table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{");
    let _ = writeln!(
        s,
        "  comment \"brindle: isolation between networks and outgoing NAT; managed by brindled\""
    );
    let interval = "type ipv4_addr; flags interval; auto-merge;";
    let _ = writeln!(s, "  set pools {{ {interval}{} }}", elements(&spec.pools));
    let _ = writeln!(
        s,
        "  set nat_pools {{ {interval}{} }}",
        elements(&spec.nat_pools)
    );
    for (segment, ips) in &spec.members {
        let _ = writeln!(
            s,
            "  set {} {{ type ipv4_addr; comment {};{} }}",
            members_set(segment),
            comment(segment),
            elements(ips)
        );
    }
    for guard in spec.guards() {
        let members = members_set(&guard.segment);
        let chain = guard_chain(guard);
        if guard.allow_from.is_empty() {
            let _ = writeln!(
                s,
                "  chain {chain} {{ ip saddr @{members} accept; ip saddr @pools drop; }}"
            );
        } else {
            let allow = allow_set(guard);
            let _ = writeln!(
                s,
                "  set {allow} {{ {interval}{} }}",
                elements(&guard.allow_from)
            );
            let _ = writeln!(
                s,
                "  chain {chain} {{ ip saddr @{members} accept; ip saddr @pools drop; ip saddr != @{allow} drop; }}"
            );
        }
    }
    let _ = writeln!(
        s,
        "  map local {{ type ipv4_addr : verdict;{} }}",
        elements(spec.local.iter().map(|(ip, g)| verdict(ip, g)))
    );
    let _ = writeln!(
        s,
        "  chain forward {{ type filter hook forward priority {FORWARD_PRIORITY}; policy accept;\n    oifname \"{HOST_PREFIX}*\" ct state established,related accept\n    oifname \"{HOST_PREFIX}*\" ip daddr vmap @local\n  }}"
    );
    let _ = writeln!(
        s,
        "  chain postrouting {{ type nat hook postrouting priority srcnat + 5; policy accept;\n    ip saddr @nat_pools ip daddr != @pools masquerade\n  }}\n}}"
    );
    s
}

/// The element changes of `delta`, deletes first, as one batch.
pub fn render_delta(delta: &SetDelta) -> String {
    let mut s = String::new();
    if !delta.del_local.is_empty() {
        let _ = writeln!(
            s,
            "delete element {TABLE} local {{ {} }}",
            list(&delta.del_local)
        );
    }
    for (segment, ips) in &delta.del_members {
        let _ = writeln!(
            s,
            "delete element {TABLE} {} {{ {} }}",
            members_set(segment),
            list(ips)
        );
    }
    for (segment, ips) in &delta.add_members {
        let _ = writeln!(
            s,
            "add element {TABLE} {} {{ {} }}",
            members_set(segment),
            list(ips)
        );
    }
    if !delta.add_local.is_empty() {
        let _ = writeln!(
            s,
            "add element {TABLE} local {{ {} }}",
            list(delta.add_local.iter().map(|(ip, g)| verdict(ip, g)))
        );
    }
    s
}

/// The table's removal (`brindle node cleanup`); `table` first so it never fails.
pub fn render_removal() -> String {
    format!("table {TABLE}\ndelete table {TABLE}\n")
}

/// One members set as `nft -j list table` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedSet {
    pub name: String,
    pub comment: Option<String>,
    pub elements: usize,
}

/// The sets of `nft -j list table ip brindle` output, with their element counts.
pub fn parse_sets(json: &str) -> Result<Vec<ListedSet>, serde_json::Error> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    Ok(items
        .iter()
        .filter_map(|item| item.get("set"))
        .map(|set| ListedSet {
            name: set["name"].as_str().unwrap_or_default().to_string(),
            comment: set["comment"].as_str().map(str::to_string),
            elements: set["elem"].as_array().map_or(0, Vec::len),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        let guard = Guard {
            segment: "cni:blue".into(),
            allow_from: BTreeSet::new(),
        };
        let narrow = Guard {
            segment: "cni:red".into(),
            allow_from: ["192.0.2.0/24".parse().unwrap()].into(),
        };
        FirewallSpec {
            pools: ["10.10.0.0/16".parse().unwrap()].into(),
            nat_pools: BTreeSet::new(),
            members: [
                (
                    "cni:blue".to_string(),
                    ["10.10.0.1".parse().unwrap()].into(),
                ),
                ("cni:red".to_string(), BTreeSet::new()),
            ]
            .into(),
            local: [
                ("10.10.0.1".parse().unwrap(), guard),
                ("10.10.0.9".parse().unwrap(), narrow),
            ]
            .into(),
        }
    }

    #[test]
    fn render_names_every_set_and_chain() {
        let text = render(&spec());
        let blue = members_set("cni:blue");
        assert!(text.starts_with("table ip brindle\ndelete table ip brindle\n"));
        assert!(text.contains(&format!("set {blue} {{ type ipv4_addr; comment \"cni:blue\"; elements = {{ 10.10.0.1 }}; }}")), "{text}");
        assert!(
            text.contains("set nat_pools { type ipv4_addr; flags interval; auto-merge; }"),
            "{text}"
        );
        assert!(text.contains("ip saddr != @a_"), "{text}");
        assert!(text.contains("10.10.0.9 : jump g_"), "{text}");
        assert!(
            text.contains("oifname \"brl*\" ip daddr vmap @local"),
            "{text}"
        );
    }

    #[test]
    fn delta_deletes_before_it_adds() {
        let old = spec();
        let mut new = spec();
        let ip: Ipv4Addr = "10.10.0.2".parse().unwrap();
        new.members.get_mut("cni:blue").unwrap().insert(ip);
        new.members
            .get_mut("cni:blue")
            .unwrap()
            .remove(&"10.10.0.1".parse().unwrap());
        let text = render_delta(&SetDelta::between(&old, &new));
        let del = text.find("delete element").unwrap();
        let add = text.find("add element").unwrap();
        assert!(del < add, "{text}");
        assert!(text.contains("{ 10.10.0.2 }"), "{text}");
    }

    #[test]
    fn comments_cannot_break_out_of_their_string() {
        assert_eq!(comment("a\"; flush ruleset; \\"), "\"a; flush ruleset; \"");
        assert_eq!(comment(&"x".repeat(500)).len(), 122);
    }

    #[test]
    fn listed_sets_are_counted() {
        let json = r#"{"nftables":[{"metainfo":{}},{"set":{"family":"ip","name":"m_1","table":"brindle","comment":"cni:a","elem":["10.0.0.1","10.0.0.2"]}},{"set":{"name":"pools"}}]}"#;
        let sets = parse_sets(json).unwrap();
        assert_eq!(sets[0].elements, 2);
        assert_eq!(sets[0].comment.as_deref(), Some("cni:a"));
        assert_eq!(sets[1].elements, 0);
    }
}
