//! Every node's endpoints as the agent's passes read them: per endpoint only its
//! address, host veth, segment, `allow-from` and container, grouped by node so a
//! change copies one node's group (see `cow.rs`), not the cluster's.
//!
//! Readers: routes (this node's address → veth), the firewall (every endpoint's
//! segment and container, this node's `allow-from`), the crash repair (every veth
//! name, so two nodes sharing one kernel leave each other's veths alone).

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;

use super::cow::CowMap;
use crate::endpoints::EndpointRecord;

/// What the passes read of one endpoint record (its node is the group's).
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub ip: Ipv4Addr,
    /// With `owner` `None`: the owner is this many leading bytes of the entry's key
    /// (a CNI endpoint's id starts with its container id), saving a copy of it.
    owner_len: u16,
    owner: Option<Box<str>>,
    /// Host-side veth.
    pub host_ifname: Box<str>,
    /// [`EndpointRecord::segment`], shared by every endpoint of that network.
    pub segment: Arc<str>,
    /// `brindle.allow-from`.
    pub allow_from: Box<[Ipv4Network]>,
}

impl EndpointView {
    /// The view of `record`, stored under `key`, in `segment`.
    fn new(key: &str, record: EndpointRecord, segment: Arc<str>) -> Self {
        // The firewall groups a container's endpoints by this; one without a known
        // container stands alone.
        let owner = record
            .container_id
            .unwrap_or_else(|| format!("endpoint:{}", record.id));
        let (owner_len, owner) = match u16::try_from(owner.len()) {
            Ok(n) if key.starts_with(owner.as_str()) => (n, None),
            _ => (0, Some(owner.into_boxed_str())),
        };
        Self {
            ip: record.ip,
            owner_len,
            owner,
            host_ifname: record.host_ifname.into_boxed_str(),
            segment,
            allow_from: record.allow_from.into_boxed_slice(),
        }
    }
}

impl fmt::Debug for EndpointView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointView")
            .field("ip", &self.ip)
            .field("host_ifname", &self.host_ifname)
            .field("segment", &self.segment)
            .finish_non_exhaustive()
    }
}

/// One endpoint as iterated: its node, and its view.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub node: &'a str,
    key: &'a str,
    pub view: &'a EndpointView,
}

impl<'a> Entry<'a> {
    /// Its container id, or `endpoint:ID` when the record names none.
    pub fn owner(&self) -> &'a str {
        match &self.view.owner {
            Some(o) => o,
            None => &self.key[..usize::from(self.view.owner_len)],
        }
    }
}

/// Every node's endpoints: node → key → view.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    nodes: CowMap<String, CowMap<Box<str>, EndpointView>>,
    len: usize,
    /// Every segment seen, each stored once (networks are few; never pruned).
    segments: CowMap<Arc<str>, ()>,
}

/// Equal when they hold the same endpoints, whatever segments each has seen.
impl PartialEq for Endpoints {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
    }
}

impl Endpoints {
    /// Adds or replaces `record` under `key` (any name unique within its node).
    pub fn insert(&mut self, key: impl AsRef<str>, record: EndpointRecord) {
        let node = record.node.clone();
        self.put(&node, key.as_ref(), record);
    }

    /// Adds or replaces `record` as `node`'s entry under `key`.
    pub fn put(&mut self, node: &str, key: &str, record: EndpointRecord) {
        let segment = self.intern(record.segment());
        let view = EndpointView::new(key, record, segment);
        if !self.nodes.contains_key(node) {
            self.nodes.insert(node.to_string(), CowMap::default());
        }
        let group = self.nodes.get_mut(node).expect("inserted");
        if group.insert(key.into(), view).is_none() {
            self.len += 1;
        }
    }

    /// Removes `node`'s entry under `key`, if any.
    pub fn remove(&mut self, node: &str, key: &str) {
        // Looked up read-only first: a delete of an unknown key copies nothing.
        if !self.nodes.get(node).is_some_and(|g| g.contains_key(key)) {
            return;
        }
        let group = self.nodes.get_mut(node).expect("checked");
        group.remove(key);
        self.len -= 1;
        if group.is_empty() {
            self.nodes.remove(node);
        }
    }

    fn intern(&mut self, segment: String) -> Arc<str> {
        if let Some((known, _)) = self.segments.get_key_value(segment.as_str()) {
            return Arc::clone(known);
        }
        let new: Arc<str> = segment.into();
        self.segments.insert(Arc::clone(&new), ());
        new
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every endpoint, by node and key.
    pub fn iter(&self) -> impl Iterator<Item = Entry<'_>> {
        self.nodes
            .iter()
            .flat_map(|(node, group)| Self::entries(node, group))
    }

    /// The endpoints of `node`, by key.
    pub fn on<'a>(&'a self, node: &str) -> impl Iterator<Item = Entry<'a>> {
        self.nodes
            .get_key_value(node)
            .into_iter()
            .flat_map(|(node, group)| Self::entries(node, group))
    }

    fn entries<'a>(
        node: &'a str,
        group: &'a CowMap<Box<str>, EndpointView>,
    ) -> impl Iterator<Item = Entry<'a>> {
        group
            .iter()
            .map(move |(key, view)| Entry { node, key, view })
    }

    /// Whether `self` and `other` share `node`'s group (tests: a change elsewhere
    /// must not copy it).
    pub fn shares_node(&self, other: &Self, node: &str) -> bool {
        match (self.nodes.get(node), other.nodes.get(node)) {
            (Some(a), Some(b)) => a.shares(b),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, node: &str, container: Option<&str>, ip: &str) -> EndpointRecord {
        EndpointRecord {
            id: id.into(),
            node: node.into(),
            orchestrator: "cni".into(),
            container_id: container.map(Into::into),
            network: "net".into(),
            ip: ip.parse().unwrap(),
            mac: None,
            host_ifname: format!("brl{node}"),
            handle: id.into(),
            segment: None,
            allow_from: vec!["192.0.2.0/24".parse().unwrap()],
        }
    }

    #[test]
    fn owners_segments_and_groups() {
        let mut e = Endpoints::default();
        e.insert("c1+eth0", record("c1+eth0", "n1", Some("c1"), "10.0.0.1"));
        e.insert("x", record("x", "n1", Some("c2"), "10.0.0.2"));
        e.insert("d1", record("d1", "n2", None, "10.0.0.3"));
        assert_eq!(e.len(), 3);
        let all: Vec<_> = e
            .iter()
            .map(|x| (x.node, x.owner(), x.view.ip.to_string(), &*x.view.segment))
            .collect();
        assert_eq!(
            all,
            [
                ("n1", "c1", "10.0.0.1".into(), "cni:net"),
                ("n1", "c2", "10.0.0.2".into(), "cni:net"),
                ("n2", "endpoint:d1", "10.0.0.3".into(), "cni:net"),
            ]
        );
        assert!(e.on("n1").all(|x| x.view.allow_from.len() == 1));
        assert_eq!(e.on("n3").count(), 0);
        let segs: Vec<&Arc<str>> = e.iter().map(|x| &x.view.segment).collect();
        assert!(Arc::ptr_eq(segs[0], segs[2]), "one copy per segment");
        // The owner's bytes are not kept twice when the key starts with them.
        let first = e.on("n1").next().unwrap();
        assert!(first.view.owner.is_none());

        // Replacing keeps the count; removing the last of a node drops its group.
        e.insert("x", record("x", "n1", Some("c2"), "10.0.0.9"));
        assert_eq!(e.len(), 3);
        e.remove("n2", "d1");
        e.remove("n2", "d1");
        e.remove("n9", "zz");
        assert_eq!(e.len(), 2);
        assert_eq!(e.iter().filter(|x| x.node == "n2").count(), 0);
    }

    #[test]
    fn a_change_on_one_node_copies_that_node_only() {
        let mut e = Endpoints::default();
        e.insert("a", record("a", "n1", None, "10.0.0.1"));
        e.insert("b", record("b", "n2", None, "10.0.0.2"));
        let published = e.clone();
        e.insert("c", record("c", "n2", None, "10.0.0.3"));
        assert!(e.shares_node(&published, "n1"));
        assert!(!e.shares_node(&published, "n2"));
        assert_eq!(published.len(), 2);
        assert_eq!(e.len(), 3);
    }
}
