//! What the host firewall should hold: pure data, built by the agent from etcd.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

/// The policy guarding one local endpoint: who may connect to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Guard {
    /// The endpoint's network (segment); its members may always connect.
    pub segment: String,
    /// Sources outside every pool allowed to connect; empty allows any.
    pub allow_from: BTreeSet<Ipv4Network>,
}

/// The desired contents of brindle's nftables table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallSpec {
    /// Every pool: a source inside one of these but outside the destination's segment
    /// is another network's container and is dropped.
    pub pools: BTreeSet<Ipv4Network>,
    /// Pools whose traffic to destinations outside every pool is masqueraded.
    pub nat_pools: BTreeSet<Ipv4Network>,
    /// Segment → the addresses (on any host) allowed in as members.
    pub members: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// This node's endpoints: address → the guard enforced on traffic to it.
    pub local: BTreeMap<Ipv4Addr, Guard>,
}

impl FirewallSpec {
    /// The guards in use, in a stable order.
    pub fn guards(&self) -> BTreeSet<&Guard> {
        self.local.values().collect()
    }

    /// Whether `other` has the same sets, chains and rules, so moving from `self` to
    /// `other` only adds and deletes set elements.
    pub fn same_shape(&self, other: &FirewallSpec) -> bool {
        self.pools == other.pools
            && self.nat_pools == other.nat_pools
            && self.members.keys().eq(other.members.keys())
            && self.guards() == other.guards()
    }
}

/// Element changes between two specs of the same shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetDelta {
    /// Segment → addresses to add.
    pub add_members: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Segment → addresses to delete.
    pub del_members: BTreeMap<String, BTreeSet<Ipv4Addr>>,
    /// Local endpoints to map to a guard (new, or whose guard changed).
    pub add_local: BTreeMap<Ipv4Addr, Guard>,
    /// Local endpoints to unmap.
    pub del_local: BTreeSet<Ipv4Addr>,
}

impl SetDelta {
    /// What turns `old` into `new` (both of the same shape).
    pub fn between(old: &FirewallSpec, new: &FirewallSpec) -> Self {
        let mut d = SetDelta::default();
        for (seg, now) in &new.members {
            let before = old.members.get(seg).cloned().unwrap_or_default();
            let add: BTreeSet<_> = now.difference(&before).copied().collect();
            let del: BTreeSet<_> = before.difference(now).copied().collect();
            if !add.is_empty() {
                d.add_members.insert(seg.clone(), add);
            }
            if !del.is_empty() {
                d.del_members.insert(seg.clone(), del);
            }
        }
        for (ip, guard) in &old.local {
            if new.local.get(ip) != Some(guard) {
                d.del_local.insert(*ip);
            }
        }
        for (ip, guard) in &new.local {
            if old.local.get(ip) != Some(guard) {
                d.add_local.insert(*ip, guard.clone());
            }
        }
        d
    }

    pub fn is_empty(&self) -> bool {
        self.add_members.is_empty()
            && self.del_members.is_empty()
            && self.add_local.is_empty()
            && self.del_local.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(seg: &str) -> Guard {
        Guard {
            segment: seg.into(),
            allow_from: BTreeSet::new(),
        }
    }

    fn spec(members: &[(&str, &[&str])], local: &[(&str, &str)]) -> FirewallSpec {
        FirewallSpec {
            pools: ["10.0.0.0/16".parse().unwrap()].into(),
            nat_pools: BTreeSet::new(),
            members: members
                .iter()
                .map(|(s, ips)| {
                    (
                        s.to_string(),
                        ips.iter().map(|i| i.parse().unwrap()).collect(),
                    )
                })
                .collect(),
            local: local
                .iter()
                .map(|(ip, s)| (ip.parse().unwrap(), guard(s)))
                .collect(),
        }
    }

    #[test]
    fn a_new_endpoint_is_an_element_change() {
        let old = spec(&[("a", &["10.0.0.1"])], &[("10.0.0.1", "a")]);
        let new = spec(
            &[("a", &["10.0.0.1", "10.0.0.2"])],
            &[("10.0.0.1", "a"), ("10.0.0.2", "a")],
        );
        assert!(old.same_shape(&new));
        let d = SetDelta::between(&old, &new);
        assert_eq!(d.add_members["a"].len(), 1);
        assert_eq!(d.add_local.len(), 1);
        assert!(d.del_members.is_empty() && d.del_local.is_empty());
        assert!(SetDelta::between(&new, &new).is_empty());
    }

    #[test]
    fn a_new_segment_or_guard_changes_the_shape() {
        let old = spec(&[("a", &["10.0.0.1"])], &[("10.0.0.1", "a")]);
        let new_seg = spec(&[("a", &["10.0.0.1"]), ("b", &[])], &[("10.0.0.1", "a")]);
        assert!(!old.same_shape(&new_seg));
        let mut new_guard = old.clone();
        new_guard
            .local
            .get_mut(&"10.0.0.1".parse().unwrap())
            .unwrap()
            .allow_from = ["192.0.2.0/24".parse().unwrap()].into();
        assert!(!old.same_shape(&new_guard));
    }

    #[test]
    fn a_moved_endpoint_is_unmapped_then_mapped() {
        let old = spec(
            &[("a", &["10.0.0.1"]), ("b", &[])],
            &[("10.0.0.1", "a"), ("10.0.0.9", "b")],
        );
        let new = spec(
            &[("a", &["10.0.0.1"]), ("b", &[])],
            &[("10.0.0.1", "b"), ("10.0.0.9", "b")],
        );
        let d = SetDelta::between(&old, &new);
        assert_eq!(d.del_local, ["10.0.0.1".parse().unwrap()].into());
        assert_eq!(d.add_local.len(), 1);
    }
}
