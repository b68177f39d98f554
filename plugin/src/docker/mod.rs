//! Docker's remote NetworkDriver + IpamDriver protocol (libnetwork), translated into
//! IPAM and dataplane calls. One socket, `<--docker-plugin-dir>/brindle.sock`, serves
//! both APIs; the driver name is `brindle` for `--driver` and `--ipam-driver`.
//!
//! - `wire.rs`: the JSON bodies; `http.rs`: lenient body extractor, `{"Err"}` replies,
//!   the caller's dockerd identity; `handlers.rs`: one thin axum handler per call;
//!   `error.rs`: [`DockerError`], every failure by kind, with its one-sentence message.
//! - `ipam_driver.rs`: pools (`--subnet`, `--ip-range`, `--ipam-opt pool=`) and
//!   addresses (`--ip`, `--gateway`, `--aux-address`, dynamic ones from this node's
//!   blocks); `pool_id.rs`: the self-describing `PoolID`.
//! - `net_driver.rs`: networks and endpoints: the routed veth of DESIGN.md, the
//!   169.254.1.x next hop returned by `Join`; `net_options.rs`: `-o` options, the
//!   isolation segment and a network's outgoing NAT.
//! - `records.rs`: what is persisted in etcd before Docker gets an answer.
//! - `reclaim.rs` + `dockerd.rs`: recovering addresses a dockerd that no longer runs
//!   never released (calico#746), without ever taking one from a live container.
//!
//! Protocol reference: docs/protocols.md in the shared docs, sections A–D.
//!
//! # Crash safety: the order of each path
//!
//! brindled may be killed (kill -9) between any two steps. dockerd retries a call that
//! met a dead plugin (transport errors, ~15 s) and then gives up, rolling back or
//! forgetting. Each step is idempotent, so a retry repeats it; what a call that is
//! never retried leaves is found by the reconcile (`agent/reconcile.rs`, after its
//! grace period):
//!
//! | path, in order | killed after this step, left behind | repaired by |
//! |---|---|---|
//! | `RequestAddress`, dynamic, a free address in this node's blocks or in the block it would claim next: reserved in memory only (handle `docker-<random>`), no write | — | `CreateEndpoint` on the restarted brindled allocates the address (free: a reservation it forgot), claiming its block if need be |
//! | `RequestAddress`, fixed (`--ip`, `--gateway`, `--aux-address`, which look alike), or dynamic with no block left to claim: 1. allocate (`orchestrator=docker`, `node`, `dockerd`) | an address no endpoint holds | the retry takes another; the reconcile releases it (no record, dockerd does not list it, no route) |
//! | `CreateEndpoint` of a reserved address: the veth without its route, and at the same time the allocation with the record (one transaction); then the /32 route | a record-less veth, or the allocation and record without a route, or both | the retry (the allocation is found, the veth replaced); else the reconcile deletes a record-less veth, removes a record once dockerd does not list the endpoint, then releases the address |
//! | `CreateEndpoint` of an allocated address: veth + /32 route, and at the same time the record (both before the answer) | a record-less veth, or a record without its veth, or both | the retry writes the record again and replaces the veth (the name derives from the endpoint id); else the reconcile, as above |
//! | `Join`: in memory only (the next hop is routed in the sandbox, where a restarted brindled reads it) | — | the retry |
//! | `Leave`: in memory only | — | — |
//! | `DeleteEndpoint`: 1. /32 route deleted 2. veth handed to the reaper (the record stays for `ReleaseAddress`) | a route-less veth and its record | the retry; `ReleaseAddress`, which sees the record's route gone; else the reconcile: record (dockerd no longer lists it), veth, address |
//! | `ReleaseAddress`: answered at once; then 1. release the handle and delete the record, one transaction, committed after the answer (nothing to write for an address only reserved) | the allocation and its record, without route or veth | the reconcile: record (dockerd no longer lists it), address |
//!
//! So a container with a dynamic address costs two etcd writes (the allocation with
//! the record, and the release with the record's delete), one with a fixed `--ip`
//! three. Docker waits for one of them (two with `--ip`): the release commits after
//! its answer (`write_behind.rs`), while the address stays allocated and its claim
//! lock held, so no request of this process or another host gets it early, and a
//! fixed claim of it waits for the commit. A node's first container is no different:
//! its `CreateEndpoint` claims the block with the allocation. A reservation whose
//! `CreateEndpoint` never comes (its dockerd died) keeps its address from others for
//! [`RESERVATION_TTL`], or until the sweep of that dockerd's leftovers.
//!
//! The reconcile acts on Docker state only while dockerd answers. A graceful stop
//! (SIGTERM) finishes the calls in flight, the releases they queued and the reaper's
//! deletions first.

mod containers;
mod dockerd;
mod error;
mod handlers;
mod http;
mod ipam_driver;
mod net_driver;
mod net_options;
mod pool_id;
mod reclaim;
pub mod records;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::routing::post;
use axum::Router;
use brindle_dataplane::{Dataplane, Reaper};
use brindle_ipam::locks::{KeyGuard, KeyedLocks};
use brindle_ipam::pools::NewPool;
use brindle_ipam::{budget, Ipam, IpamError, MemoryStore, Pool, Store};

use crate::write_behind::WriteBehind;
pub use containers::{network_view, NetworkView};
pub use error::DockerError;
pub use pool_id::PoolId;
use records::{DockerEndpoint, NetworkRecord};

/// `Implements` of `Plugin.Activate`.
pub const IMPLEMENTS: [&str; 2] = ["NetworkDriver", "IpamDriver"];
/// Address spaces reported to Docker (opaque names; `brindle-local` is the one used).
pub const LOCAL_ADDRESS_SPACE: &str = "brindle-local";
pub const GLOBAL_ADDRESS_SPACE: &str = "brindle-global";
/// The pool a network without `--subnet` and without `--ipam-opt pool=` uses.
pub const DEFAULT_POOL: &str = "default";
/// The `-o` options networks accept: the veth MTU, ...
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// ... the sources outside every pool allowed in (see `crate::allow_from`) ...
pub const ALLOW_FROM_OPTION: &str = crate::allow_from::KEY;
/// ... and outgoing NAT for the pool created for the network's `--subnet`.
pub const NAT_OUTGOING_OPTION: &str = "brindle.nat-outgoing";
/// The only `--ipam-opt` networks accept.
pub const POOL_OPTION: &str = "pool";

/// What the driver needs from brindled: the node's name, IPAM, dataplane and reaper
/// (brindled implements it on its node state; [`LocalBackend`] for tests and tools).
pub trait Backend: Send + Sync + 'static {
    type Store: Store;
    fn node(&self) -> &str;
    fn ipam(&self) -> &Ipam<Self::Store>;
    fn dataplane(&self) -> &dyn Dataplane;
    /// Who deletes an endpoint's veth after `DeleteEndpoint` has answered.
    fn reaper(&self) -> &Reaper;
    /// Who commits a release after `ReleaseAddress` has answered.
    fn write_behind(&self) -> &WriteBehind;
    /// The node's per-address locks, shared with the CNI API: a claim of an address
    /// waits for a release of it that has answered and not committed, whoever's.
    fn address_locks(&self) -> &KeyedLocks<Ipv4Addr>;
    /// dockerd's API socket, to learn each endpoint's container; `None`: never ask.
    fn docker_api_socket(&self) -> Option<&Path>;
}

/// A self-contained backend on the in-process store (unit tests, tools).
pub struct LocalBackend {
    pub node: String,
    pub ipam: Ipam<MemoryStore>,
    pub dataplane: Arc<dyn Dataplane>,
    /// Usually `Reaper::tasks(dataplane)`.
    pub reaper: Reaper,
    pub write_behind: WriteBehind,
    pub address_locks: KeyedLocks<Ipv4Addr>,
    pub docker_api_socket: Option<PathBuf>,
}

impl Backend for LocalBackend {
    type Store = MemoryStore;
    fn node(&self) -> &str {
        &self.node
    }
    fn ipam(&self) -> &Ipam<MemoryStore> {
        &self.ipam
    }
    fn dataplane(&self) -> &dyn Dataplane {
        self.dataplane.as_ref()
    }
    fn reaper(&self) -> &Reaper {
        &self.reaper
    }
    fn write_behind(&self) -> &WriteBehind {
        &self.write_behind
    }
    fn address_locks(&self) -> &KeyedLocks<Ipv4Addr> {
        &self.address_locks
    }
    fn docker_api_socket(&self) -> Option<&Path> {
        self.docker_api_socket.as_deref()
    }
}

/// The Docker driver of one node.
pub struct Driver<B: Backend> {
    backend: Arc<B>,
    cache: Mutex<Cache>,
    /// One lock per address for fixed claims, releases and reclaims, so a reclaim's
    /// checks and its release see no concurrent claim of the same address. Dynamic
    /// claims need none: they only take addresses nobody holds. The backend's
    /// [`Backend::address_locks`]: CNI requests of this node take the same ones.
    claims: KeyedLocks<Ipv4Addr>,
    /// One lock per sandbox for `Join`'s choice of a next hop unique in it.
    joins: KeyedLocks<String>,
}

/// What this process remembers; etcd stays the truth and fills every miss.
#[derive(Default)]
struct Cache {
    networks: HashMap<String, NetworkRecord>,
    endpoints: HashMap<String, DockerEndpoint>,
    /// Whether `endpoints` holds every Docker endpoint of this node.
    endpoints_loaded: bool,
    /// Addresses this process handed out (or looked up): their IPAM handle and owner.
    held: HashMap<Ipv4Addr, Held>,
    /// Endpoints whose record a takeover deleted (`reclaim.rs`), with their address:
    /// Docker may still send their `DeleteEndpoint` and then `ReleaseAddress`.
    reclaimed: HashMap<String, Ipv4Addr>,
    /// Addresses whose next `ReleaseAddress` belongs to such an endpoint (armed by its
    /// `DeleteEndpoint`, which Docker sends just before): the endpoint and when.
    stale_releases: HashMap<Ipv4Addr, (String, std::time::Instant)>,
    /// Endpoints `DeleteEndpoint` took down whose record goes in the transaction that
    /// releases their address (`ReleaseAddress` follows at once): by address.
    unreleased: HashMap<Ipv4Addr, Unreleased>,
    /// Pool name → CIDR.
    pools: HashMap<String, ipnetwork::Ipv4Network>,
    /// `RequestPool` answers not yet claimed by a `CreateNetwork`, by the subnet shown
    /// to Docker: `CreateNetwork` gets only that subnet, not the `PoolID` (which also
    /// names the pool and the `--ip-range`), and needs the whole id for the segment.
    requested: HashMap<ipnetwork::Ipv4Network, PoolId>,
    /// dockerd instances seen; the first request of each triggers an orphan sweep.
    dockerds: HashSet<String>,
}

/// A deleted endpoint whose record waits for its address's release.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unreleased {
    endpoint: String,
    /// The allocation the record names: only its release takes the record along.
    handle: String,
}

/// Who holds an address: the allocation's handle and the dockerd instance that asked
/// for it (the `dockerd` attribute; `None` when unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    handle: String,
    dockerd: Option<String>,
    /// Handed out by `RequestAddress` but not allocated yet, since when: a dynamic
    /// address, allocated by `CreateEndpoint` in the transaction of its record.
    reserved: Option<std::time::Instant>,
}

/// How long a dynamic address handed out by `RequestAddress` is kept from others
/// while its `CreateEndpoint` has not come (Docker sends it at once; a dockerd that
/// died in between never will). A `CreateEndpoint` later than that still allocates
/// the address, unless another container was given it meanwhile.
const RESERVATION_TTL: std::time::Duration = std::time::Duration::from_secs(120);

impl Held {
    /// A reservation still keeping its address from others.
    fn reserving(&self) -> bool {
        self.reserved
            .is_some_and(|at| at.elapsed() < RESERVATION_TTL)
    }
}

impl<B: Backend> Driver<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Self {
            claims: backend.address_locks().clone(),
            backend,
            cache: Mutex::new(Cache::default()),
            joins: KeyedLocks::default(),
        }
    }

    fn node(&self) -> &str {
        self.backend.node()
    }

    fn ipam(&self) -> &Ipam<B::Store> {
        self.backend.ipam()
    }

    fn store(&self) -> &B::Store {
        self.backend.ipam().store()
    }

    fn keys(&self) -> &brindle_ipam::Keys {
        self.backend.ipam().keys()
    }

    fn dataplane(&self) -> &dyn Dataplane {
        self.backend.dataplane()
    }

    async fn add_pool(&self, new: NewPool) -> Result<Pool, IpamError> {
        self.backend.ipam().add_pool(new).await
    }

    /// `Ipam::remove_pool(name, force = false)`.
    async fn remove_pool(&self, name: String) -> Result<u64, IpamError> {
        self.backend.ipam().remove_pool(&name, false).await
    }

    /// Wait for `ip`'s claim lock, within one IPAM operation's budget.
    async fn lock_address(&self, ip: Ipv4Addr) -> Result<KeyGuard<Ipv4Addr>, DockerError> {
        let deadline = budget::deadline_after(budget::OPERATION);
        Ok(self
            .claims
            .lock(ip, deadline)
            .await
            .map_err(IpamError::from)?)
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        // Every critical section is a few map operations: a panic cannot leave it
        // half-done, so a poisoned lock is still consistent.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The routes Docker calls on `/run/docker/plugins/brindle.sock`, for brindled's
/// backend.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    driver_router(Arc::new(Driver::new(backend)))
}

/// The plugin routes for any backend.
pub fn driver_router<B: Backend>(driver: Arc<Driver<B>>) -> Router {
    use handlers as h;
    Router::new()
        .route("/Plugin.Activate", post(h::activate))
        .route("/NetworkDriver.GetCapabilities", post(h::net_capabilities))
        .route("/NetworkDriver.CreateNetwork", post(h::create_network::<B>))
        .route("/NetworkDriver.DeleteNetwork", post(h::delete_network::<B>))
        .route("/NetworkDriver.AllocateNetwork", post(h::allocate_network))
        .route("/NetworkDriver.FreeNetwork", post(h::empty))
        .route(
            "/NetworkDriver.CreateEndpoint",
            post(h::create_endpoint::<B>),
        )
        .route("/NetworkDriver.EndpointOperInfo", post(h::oper_info::<B>))
        .route(
            "/NetworkDriver.DeleteEndpoint",
            post(h::delete_endpoint::<B>),
        )
        .route("/NetworkDriver.Join", post(h::join::<B>))
        .route("/NetworkDriver.Leave", post(h::leave::<B>))
        .route("/NetworkDriver.DiscoverNew", post(h::empty))
        .route("/NetworkDriver.DiscoverDelete", post(h::empty))
        .route("/NetworkDriver.ProgramExternalConnectivity", post(h::empty))
        .route("/NetworkDriver.RevokeExternalConnectivity", post(h::empty))
        .route("/IpamDriver.GetCapabilities", post(h::ipam_capabilities))
        .route(
            "/IpamDriver.GetDefaultAddressSpaces",
            post(h::address_spaces),
        )
        .route("/IpamDriver.RequestPool", post(h::request_pool::<B>))
        .route("/IpamDriver.ReleasePool", post(h::release_pool::<B>))
        .route("/IpamDriver.RequestAddress", post(h::request_address::<B>))
        .route("/IpamDriver.ReleaseAddress", post(h::release_address::<B>))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn(http::log_call))
        .with_state(driver)
}
