//! The etcd key layout. Values are JSON, readable with `etcdctl get`.
//!
//! ```text
//! PREFIX/v1/pools/NAME                     Pool
//! PREFIX/v1/meta/pools                     bumped on every pool add/remove (guards overlap checks)
//! PREFIX/v1/ipam/blocks/CIDR               Block (CIDR with '/' written as '-')
//! PREFIX/v1/ipam/affinity/NODE/CIDR        Affinity
//! PREFIX/v1/ipam/handles/ID                HandleRecord
//! ```

use ipnetwork::Ipv4Network;

/// Builds every key under one prefix (default `/brindle`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let trimmed = prefix.trim_end_matches('/');
        Self {
            root: format!("{trimmed}/v1"),
        }
    }

    /// `PREFIX/v1`, for other components (nodes, BGP, Docker) that share the layout.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn pools(&self) -> String {
        format!("{}/pools/", self.root)
    }
    pub fn pool(&self, name: &str) -> String {
        format!("{}/pools/{name}", self.root)
    }
    pub fn pools_meta(&self) -> String {
        format!("{}/meta/pools", self.root)
    }
    pub fn blocks(&self) -> String {
        format!("{}/ipam/blocks/", self.root)
    }
    pub fn block(&self, cidr: Ipv4Network) -> String {
        format!("{}/ipam/blocks/{}", self.root, cidr_key(cidr))
    }
    pub fn affinities(&self) -> String {
        format!("{}/ipam/affinity/", self.root)
    }
    pub fn node_affinities(&self, node: &str) -> String {
        format!("{}/ipam/affinity/{node}/", self.root)
    }
    pub fn affinity(&self, node: &str, cidr: Ipv4Network) -> String {
        format!("{}/ipam/affinity/{node}/{}", self.root, cidr_key(cidr))
    }
    pub fn handles(&self) -> String {
        format!("{}/ipam/handles/", self.root)
    }
    pub fn handle(&self, id: &str) -> String {
        format!("{}/ipam/handles/{id}", self.root)
    }

    /// The CIDR at the end of a block or affinity key.
    pub fn cidr_of(key: &str) -> Option<Ipv4Network> {
        let last = key.rsplit('/').next()?;
        last.replacen('-', "/", 1).parse().ok()
    }

    /// `(node, cidr)` of an affinity key.
    pub fn parse_affinity(&self, key: &str) -> Option<(String, Ipv4Network)> {
        let rest = key.strip_prefix(&self.affinities())?;
        let (node, cidr) = rest.split_once('/')?;
        Some((node.to_string(), Self::cidr_of(cidr)?))
    }
}

fn cidr_key(cidr: Ipv4Network) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_keys_round_trip() {
        let keys = Keys::new("/brindle/");
        let cidr: Ipv4Network = "10.1.2.64/26".parse().unwrap();
        assert_eq!(keys.block(cidr), "/brindle/v1/ipam/blocks/10.1.2.64-26");
        assert_eq!(Keys::cidr_of(&keys.block(cidr)), Some(cidr));
        let aff = keys.affinity("node-1", cidr);
        assert_eq!(aff, "/brindle/v1/ipam/affinity/node-1/10.1.2.64-26");
        assert_eq!(keys.parse_affinity(&aff), Some(("node-1".into(), cidr)));
    }
}
