//! The etcd key layout: every key brindle reads or writes is built here, and nowhere
//! else. Values are JSON ([`super::codec`]), readable with `etcdctl get --prefix`.
//! The README's "Records in etcd" table mirrors this one.
//!
//! ```text
//! KEY                                  VALUE                       WRITTEN BY
//! PREFIX/v1/pools/NAME                 Pool                        brindle pool add/rm/set, Docker --subnet
//! PREFIX/v1/meta/pools                 {generation}                every pool add/rm (guards the overlap check)
//! PREFIX/v1/ipam/blocks/CIDR           Block                       the allocator
//! PREFIX/v1/ipam/affinity/NODE/CIDR    Affinity                    the allocator (a node's claim on a block)
//! PREFIX/v1/ipam/handles/ID            HandleRecord                the allocator
//! PREFIX/v1/nodes/NAME                 BgpNode                     brindled at start, brindle node set
//! PREFIX/v1/node-identity/NAME         NodeMachine                 brindled at start (the machine owning the name)
//! PREFIX/v1/bgp/global                 BgpGlobal                   brindle bgp set (absent = defaults)
//! PREFIX/v1/bgp/peers/NAME             BgpPeer                     brindle bgp peer add/rm
//! PREFIX/v1/endpoints/NODE/ID          EndpointRecord              brindle-cni, the Docker driver
//!                                      (DockerEndpoint: a superset written by the Docker driver)
//! PREFIX/v1/docker/networks/ID         NetworkRecord               the Docker driver
//! PREFIX/v1/docker/pools/POOL          PoolMarker                  the Docker driver (pool made for a --subnet)
//! ```
//!
//! CIDRs in keys are written with `-` for `/` (`10.1.2.64-26`). The record types live
//! with their owners: `Pool`, `Block`, `HandleRecord` in this crate's `model`; the BGP
//! types in `brindle-bgp`; endpoint and Docker records in `brindle-plugin`.

use ipnetwork::Ipv4Network;

/// The prefix of every key unless `--etcd-prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "/brindle";

/// Builds every key under one prefix (default [`DEFAULT_PREFIX`]).
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

    /// The keys under [`DEFAULT_PREFIX`].
    pub fn default_prefix() -> Self {
        Self::new(DEFAULT_PREFIX)
    }

    /// `PREFIX/v1` (no trailing `/`), for messages. Build keys with the methods below,
    /// never from this.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `PREFIX/v1/`: every record of the schema.
    pub fn all(&self) -> String {
        format!("{}/", self.root)
    }

    // --------------------------------------------------------------- pools

    /// `PREFIX/v1/pools/`.
    pub fn pools(&self) -> String {
        format!("{}/pools/", self.root)
    }
    /// `PREFIX/v1/pools/NAME`.
    pub fn pool(&self, name: &str) -> String {
        format!("{}/pools/{name}", self.root)
    }
    /// `PREFIX/v1/meta/pools`.
    pub fn pools_meta(&self) -> String {
        format!("{}/meta/pools", self.root)
    }

    // --------------------------------------------------------------- allocations

    /// `PREFIX/v1/ipam/`: blocks, affinities and handles.
    pub fn ipam(&self) -> String {
        format!("{}/ipam/", self.root)
    }
    /// `PREFIX/v1/ipam/blocks/`.
    pub fn blocks(&self) -> String {
        format!("{}/ipam/blocks/", self.root)
    }
    /// `PREFIX/v1/ipam/blocks/CIDR`.
    pub fn block(&self, cidr: Ipv4Network) -> String {
        format!("{}/ipam/blocks/{}", self.root, cidr_key(cidr))
    }
    /// `PREFIX/v1/ipam/affinity/`.
    pub fn affinities(&self) -> String {
        format!("{}/ipam/affinity/", self.root)
    }
    /// `PREFIX/v1/ipam/affinity/NODE/`.
    pub fn node_affinities(&self, node: &str) -> String {
        format!("{}/ipam/affinity/{node}/", self.root)
    }
    /// `PREFIX/v1/ipam/affinity/NODE/CIDR`.
    pub fn affinity(&self, node: &str, cidr: Ipv4Network) -> String {
        format!("{}/ipam/affinity/{node}/{}", self.root, cidr_key(cidr))
    }
    /// `PREFIX/v1/ipam/handles/`.
    pub fn handles(&self) -> String {
        format!("{}/ipam/handles/", self.root)
    }
    /// `PREFIX/v1/ipam/handles/ID`.
    pub fn handle(&self, id: &str) -> String {
        format!("{}/ipam/handles/{id}", self.root)
    }

    // --------------------------------------------------------------- BGP

    /// `PREFIX/v1/nodes/`.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.root)
    }
    /// `PREFIX/v1/nodes/NAME`.
    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.root)
    }
    /// `PREFIX/v1/node-identity/`.
    pub fn node_identities(&self) -> String {
        format!("{}/node-identity/", self.root)
    }
    /// `PREFIX/v1/node-identity/NAME`: the machine that owns node name NAME (kept
    /// apart from the BGP record, which a node without an IP does not have).
    pub fn node_identity(&self, name: &str) -> String {
        format!("{}/node-identity/{name}", self.root)
    }
    /// `PREFIX/v1/bgp/global`.
    pub fn bgp_global(&self) -> String {
        format!("{}/bgp/global", self.root)
    }
    /// `PREFIX/v1/bgp/peers/`.
    pub fn bgp_peers(&self) -> String {
        format!("{}/bgp/peers/", self.root)
    }
    /// `PREFIX/v1/bgp/peers/NAME`.
    pub fn bgp_peer(&self, name: &str) -> String {
        format!("{}/bgp/peers/{name}", self.root)
    }

    // --------------------------------------------------------------- endpoints

    /// `PREFIX/v1/endpoints/`: every node's endpoints.
    pub fn endpoints(&self) -> String {
        format!("{}/endpoints/", self.root)
    }
    /// `PREFIX/v1/endpoints/NODE/`: one node's endpoints.
    pub fn node_endpoints(&self, node: &str) -> String {
        format!("{}/endpoints/{node}/", self.root)
    }
    /// `PREFIX/v1/endpoints/NODE/ID`.
    pub fn endpoint(&self, node: &str, id: &str) -> String {
        format!("{}/endpoints/{node}/{id}", self.root)
    }

    // --------------------------------------------------------------- Docker

    /// `PREFIX/v1/docker/networks/`.
    pub fn docker_networks(&self) -> String {
        format!("{}/docker/networks/", self.root)
    }
    /// `PREFIX/v1/docker/networks/ID`.
    pub fn docker_network(&self, id: &str) -> String {
        format!("{}/docker/networks/{id}", self.root)
    }
    /// `PREFIX/v1/docker/pools/`.
    pub fn docker_pool_markers(&self) -> String {
        format!("{}/docker/pools/", self.root)
    }
    /// `PREFIX/v1/docker/pools/POOL`.
    pub fn docker_pool_marker(&self, pool: &str) -> String {
        format!("{}/docker/pools/{pool}", self.root)
    }

    // --------------------------------------------------------------- parsing

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

    /// The name a key has under one of the collection prefixes above (`pools()`,
    /// `nodes()`, `docker_pool_markers()`, ...): the non-empty rest of the key.
    pub fn name_in<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(prefix).filter(|rest| !rest.is_empty())
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

    /// Moved from the BGP store (`BgpKeys`).
    #[test]
    fn key_layout() {
        let k = Keys::new("/t");
        assert_eq!(k.node("a"), "/t/v1/nodes/a");
        assert_eq!(k.nodes(), "/t/v1/nodes/");
        assert_eq!(k.bgp_global(), "/t/v1/bgp/global");
        assert_eq!(k.bgp_peer("tor"), "/t/v1/bgp/peers/tor");
        assert_eq!(k.bgp_peers(), "/t/v1/bgp/peers/");
    }

    /// Every key of the schema, byte for byte as stored since v1.
    #[test]
    fn every_key_of_the_schema() {
        let k = Keys::new("/brindle");
        let cidr: Ipv4Network = "10.65.0.64/26".parse().unwrap();
        let all = [
            (k.all(), "/brindle/v1/"),
            (k.pools(), "/brindle/v1/pools/"),
            (k.pool("p"), "/brindle/v1/pools/p"),
            (k.pools_meta(), "/brindle/v1/meta/pools"),
            (k.ipam(), "/brindle/v1/ipam/"),
            (k.blocks(), "/brindle/v1/ipam/blocks/"),
            (k.block(cidr), "/brindle/v1/ipam/blocks/10.65.0.64-26"),
            (k.affinities(), "/brindle/v1/ipam/affinity/"),
            (k.node_affinities("n1"), "/brindle/v1/ipam/affinity/n1/"),
            (
                k.affinity("n1", cidr),
                "/brindle/v1/ipam/affinity/n1/10.65.0.64-26",
            ),
            (k.handles(), "/brindle/v1/ipam/handles/"),
            (k.handle("h"), "/brindle/v1/ipam/handles/h"),
            (k.nodes(), "/brindle/v1/nodes/"),
            (k.node("n1"), "/brindle/v1/nodes/n1"),
            (k.node_identities(), "/brindle/v1/node-identity/"),
            (k.node_identity("n1"), "/brindle/v1/node-identity/n1"),
            (k.bgp_global(), "/brindle/v1/bgp/global"),
            (k.bgp_peers(), "/brindle/v1/bgp/peers/"),
            (k.bgp_peer("tor"), "/brindle/v1/bgp/peers/tor"),
            (k.endpoints(), "/brindle/v1/endpoints/"),
            (k.node_endpoints("n1"), "/brindle/v1/endpoints/n1/"),
            (k.endpoint("n1", "e1"), "/brindle/v1/endpoints/n1/e1"),
            (k.docker_networks(), "/brindle/v1/docker/networks/"),
            (k.docker_network("abc"), "/brindle/v1/docker/networks/abc"),
            (k.docker_pool_markers(), "/brindle/v1/docker/pools/"),
            (k.docker_pool_marker("p"), "/brindle/v1/docker/pools/p"),
        ];
        for (built, want) in all {
            assert_eq!(built, want);
        }
        assert_eq!(k.root(), "/brindle/v1");
        assert_eq!(
            Keys::name_in(&k.docker_pool_markers(), "/brindle/v1/docker/pools/p"),
            Some("p")
        );
        assert_eq!(Keys::name_in(&k.nodes(), "/brindle/v1/nodes/"), None);
    }
}
