//! Every node's endpoints as the agent's passes read them: per endpoint only its
//! address, host veth, segment, `allow-from` and container, grouped by node so a
//! change copies one node's group, not the cluster's.
//!
//! Readers: routes (this node's address → veth), the firewall (every endpoint's
//! segment and container, this node's `allow-from`), the crash repair (every veth
//! name, so two nodes sharing one kernel leave each other's veths alone).
//!
//! Sized for clusters of tens of thousands of endpoints, most of them other nodes':
//! a group is a sorted vector behind an `Arc` (72 bytes an endpoint, no tree nodes
//! half empty), and an endpoint's key and veth name share one allocation.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;

use super::cow::CowMap;
use crate::endpoints::EndpointRecord;

/// What the passes read of one endpoint record (its node is the group's).
#[derive(Clone, PartialEq, Eq)]
pub struct EndpointView {
    /// The entry's key, then the host veth's name.
    names: Box<str>,
    key_len: u16,
    /// With `owner` `None`: the owner is this many leading bytes of the key (a CNI
    /// endpoint's id starts with its container id), saving a copy of it.
    owner_len: u16,
    pub ip: Ipv4Addr,
    owner: Option<Box<str>>,
    /// [`EndpointRecord::segment`], shared by every endpoint of that network.
    pub segment: Arc<str>,
    /// `brindle.allow-from`.
    pub allow_from: Box<[Ipv4Network]>,
}

impl EndpointView {
    /// The view of `record`, stored under `key`, in `segment`; `None` for a key or a
    /// veth name too long for this compact form (no valid record has one).
    fn new(key: &str, record: EndpointRecord, segment: Arc<str>) -> Option<Self> {
        let key_len = u16::try_from(key.len()).ok()?;
        u16::try_from(key.len() + record.host_ifname.len()).ok()?;
        // The firewall groups a container's endpoints by this; one without a known
        // container stands alone.
        let owner = record
            .container_id
            .unwrap_or_else(|| format!("endpoint:{}", record.id));
        let (owner_len, owner) = match u16::try_from(owner.len()) {
            Ok(n) if key.starts_with(owner.as_str()) => (n, None),
            _ => (0, Some(owner.into_boxed_str())),
        };
        Some(Self {
            names: [key, &record.host_ifname].concat().into_boxed_str(),
            key_len,
            owner_len,
            ip: record.ip,
            owner,
            segment,
            allow_from: record.allow_from.into_boxed_slice(),
        })
    }

    /// The key it is stored under within its node.
    fn key(&self) -> &str {
        &self.names[..usize::from(self.key_len)]
    }

    /// Host-side veth.
    pub fn host_ifname(&self) -> &str {
        &self.names[usize::from(self.key_len)..]
    }

    /// Its container id, or `endpoint:ID` when the record names none.
    pub fn owner(&self) -> &str {
        match &self.owner {
            Some(o) => o,
            None => &self.names[..usize::from(self.owner_len)],
        }
    }
}

impl fmt::Debug for EndpointView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointView")
            .field("key", &self.key())
            .field("ip", &self.ip)
            .field("host_ifname", &self.host_ifname())
            .field("segment", &self.segment)
            .finish_non_exhaustive()
    }
}

/// One endpoint as iterated: its node, and its view.
#[derive(Clone, Copy)]
pub struct Entry<'a> {
    pub node: &'a str,
    pub view: &'a EndpointView,
}

impl<'a> Entry<'a> {
    /// Its container id, or `endpoint:ID` when the record names none.
    pub fn owner(&self) -> &'a str {
        self.view.owner()
    }
}

/// One node's endpoints, sorted by key, copied on the first write while shared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Group(Arc<Vec<EndpointView>>);

impl Group {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|v| v.key().cmp(key))
    }

    /// Adds or replaces; returns whether it was new.
    fn put(&mut self, view: EndpointView) -> bool {
        match self.find(view.key()) {
            Ok(i) => {
                Arc::make_mut(&mut self.0)[i] = view;
                false
            }
            Err(i) => {
                Arc::make_mut(&mut self.0).insert(i, view);
                true
            }
        }
    }

    /// Removes `key`; returns whether it was there. Looked up read-only first: a
    /// delete of an unknown key copies nothing.
    fn remove(&mut self, key: &str) -> bool {
        let Ok(i) = self.find(key) else {
            return false;
        };
        Arc::make_mut(&mut self.0).remove(i);
        true
    }

    /// Gives back the room growing left, when no other snapshot shares the group.
    fn shrink(&mut self) {
        if let Some(v) = Arc::get_mut(&mut self.0) {
            v.shrink_to_fit();
        }
    }
}

/// Every node's endpoints: node → its group.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    nodes: CowMap<String, Group>,
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

    /// Adds or replaces `record` as `node`'s entry under `key`. A key or veth name
    /// over 64 KiB (which no valid record has) is dropped instead, with the entry it
    /// would replace.
    pub fn put(&mut self, node: &str, key: &str, record: EndpointRecord) {
        let segment = self.intern(record.segment());
        let Some(view) = EndpointView::new(key, record, segment) else {
            self.remove(node, key);
            return;
        };
        if !self.nodes.contains_key(node) {
            self.nodes.insert(node.to_string(), Group::default());
        }
        let group = self.nodes.get_mut(node).expect("inserted");
        if group.put(view) {
            self.len += 1;
        }
    }

    /// Removes `node`'s entry under `key`, if any.
    pub fn remove(&mut self, node: &str, key: &str) {
        if self.nodes.get(node).is_none_or(|g| g.find(key).is_err()) {
            return;
        }
        let group = self.nodes.get_mut(node).expect("checked");
        group.remove(key);
        self.len -= 1;
        if group.0.is_empty() {
            self.nodes.remove(node);
        }
    }

    /// Gives back the spare room of groups no other snapshot shares (after a load).
    pub fn shrink(&mut self) {
        for group in self.nodes.values_mut() {
            group.shrink();
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

    fn entries<'a>(node: &'a str, group: &'a Group) -> impl Iterator<Item = Entry<'a>> {
        group.0.iter().map(move |view| Entry { node, view })
    }

    /// Whether `self` and `other` share `node`'s group (tests: a change elsewhere
    /// must not copy it).
    pub fn shares_node(&self, other: &Self, node: &str) -> bool {
        match (self.nodes.get(node), other.nodes.get(node)) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.0, &b.0),
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

    #[test]
    fn a_key_too_long_for_the_compact_form_is_dropped_with_what_it_replaced() {
        let mut e = Endpoints::default();
        e.put(
            "n1",
            &"k".repeat(70_000),
            record("x", "n1", None, "10.0.0.1"),
        );
        assert!(e.is_empty());
        e.put("n1", "a", record("a", "n1", None, "10.0.0.2"));
        e.put("n1", "b", record("b", "n1", None, "10.0.0.3"));
        let mut huge = record("a", "n1", None, "10.0.0.2");
        huge.host_ifname = "v".repeat(70_000);
        e.put("n1", "a", huge);
        let ips: Vec<String> = e.on("n1").map(|x| x.view.ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.3"]);
        assert_eq!(e.len(), 1);
    }
}
