//! The CNI operations on one attachment, free of CNI's wire format: IPAM, dataplane and
//! endpoint records. brindled runs these for the fast path (its local API carries the
//! request types below as JSON); the plugin runs the very same code when it talks to
//! etcd itself.
//!
//! # Crash safety: the order of ADD and DEL
//!
//! The process running the operation (brindle-cni, or brindled on the fast path) may be
//! killed between any two steps. The runtime answers a failed ADD with a DEL, and DEL
//! works on whatever part of an ADD exists; what nobody cleans is found by brindled's
//! reconcile (`agent/reconcile.rs`, after its grace period):
//!
//! | step | killed after it, left behind | repaired by |
//! |---|---|---|
//! | ADD 1. allocate (handle `<container>+<ifname>`, `cni_mode`), main mode with the endpoint record in the same transaction and, while that is in flight, the veth into the netns without its host route | an address (and its record, maybe an unrouted veth) | DEL; else the reconcile (a record whose veth is gone; the agent routes a record whose veth exists; in `ipam` mode nothing judges it: CNI GC) |
//! | ADD 2. host /32 route (only now is the address reachable) | — (done) | — |
//! | DEL 1. host /32 routes deleted 2. veth handed to the reaper | a route-less veth | the retried DEL; else the reconcile (the veth has no route: its deletion was decided) |
//! | DEL 3. record deleted and address released, in one transaction (through brindled, main mode: committed after DEL answered, `api/attachments.rs`) | through brindled: the record and its address, without route or veth | the reconcile (a record whose veth is gone) |
//!
//! A repeated ADD of an attachment that holds its address already writes its record
//! after the veth, as a separate write.
//!
//! `brindle-ipam` allocations (another main plugin's interface) carry no veth or record
//! to judge them by: CNI GC releases those.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use brindle_dataplane::{host_ifname_for_cni, Dataplane, EndpointSpec, Reaper};
use brindle_ipam::{Ipam, Store};
use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::error::{code, CniError};
use crate::endpoints::{delete_endpoint_op, list_endpoints};

/// Allocation attribute keys brindle's CNI plugin sets. GC only ever touches
/// allocations carrying `orchestrator=cni`, this node and the network being collected.
pub const ATTR_ORCHESTRATOR: &str = "orchestrator";
pub const ATTR_NETWORK: &str = "network";
pub const ATTR_CONTAINER: &str = "container";
pub const ATTR_IFNAME: &str = "ifname";
/// `main` (brindle wired the veth) or `ipam` (another main plugin did).
pub const ATTR_CNI_MODE: &str = "cni_mode";
pub const ORCHESTRATOR_CNI: &str = "cni";

/// How brindle serves the attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `type: brindle`: address plus brindle's routed veth.
    Main,
    /// `ipam.type: brindle-ipam` under another main plugin: the address only.
    Ipam,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Main => "main",
            Mode::Ipam => "ipam",
        }
    }
}

/// A CNI attachment: container id and interface name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    /// The IPAM handle and endpoint id: `<containerID>+<ifname>`.
    pub fn handle(&self) -> String {
        handle_for(&self.container_id, &self.ifname)
    }

    /// The host-side veth of a main-plugin attachment.
    pub fn host_ifname(&self) -> String {
        host_ifname_for_cni(&self.container_id, &self.ifname)
    }
}

/// The isolation segment of a CNI network: `cni:` + the netconf `name`.
pub fn segment_for(network: &str) -> String {
    format!("{ORCHESTRATOR_CNI}:{network}")
}

/// `<containerID>+<ifname>`.
pub fn handle_for(container_id: &str, ifname: &str) -> String {
    format!("{container_id}+{ifname}")
}

/// Which brindle installation a request is meant for: brindled refuses requests for
/// another node or key prefix (the plugin then talks to etcd itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub node: String,
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    pub target: Target,
    pub mode: Mode,
    pub network: String,
    pub attachment: Attachment,
    /// Container netns path (main mode).
    pub netns: Option<String>,
    pub ip: Option<Ipv4Addr>,
    pub pool: Option<String>,
    pub mtu: Option<u32>,
    /// `brindle.allow-from` of the netconf (main mode), stored in the endpoint record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<Ipv4Network>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddReply {
    pub ip: Ipv4Addr,
    pub pool: String,
    pub pool_cidr: Ipv4Network,
    /// Main mode: the host veth and the container interface's MAC.
    pub host_ifname: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DelRequest {
    pub target: Target,
    pub mode: Mode,
    pub attachment: Attachment,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckRequest {
    pub target: Target,
    pub mode: Mode,
    pub attachment: Attachment,
    pub netns: Option<String>,
    /// The address the ADD result reported, if the runtime passed it back.
    pub ip: Option<Ipv4Addr>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GcRequest {
    pub target: Target,
    pub mode: Mode,
    pub network: String,
    pub valid: Vec<Attachment>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReply {
    /// Handles released.
    pub released: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusRequest {
    pub target: Target,
    pub pool: Option<String>,
}

/// Empty reply of DEL, CHECK and STATUS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// What the operations run on.
pub struct Ctx<'a, S: Store> {
    pub ipam: &'a Ipam<S>,
    /// Needed for main-mode ADD/DEL/CHECK/GC only.
    pub dataplane: Option<&'a dyn Dataplane>,
    pub node: &'a str,
    /// Who finishes veth deletions after DEL has answered (see [`Reaper`]: DEL takes
    /// the endpoint off the network at once, and the reaper deletes exactly the link
    /// DEL saw); `None` deletes the veth before DEL returns.
    pub reaper: Option<&'a Reaper>,
}

impl<S: Store> Ctx<'_, S> {
    fn dataplane(&self) -> Result<&dyn Dataplane, CniError> {
        self.dataplane
            .ok_or_else(|| CniError::new(code::INTERNAL, "no dataplane for a main-plugin request"))
    }
}

/// DEL: take the endpoint off the network (main mode: its route and veth), then
/// release the address and delete the endpoint record. Every step treats "already
/// gone" as done, so DEL succeeds after a partial ADD, without a netns and when
/// repeated.
pub async fn del<S: Store>(ctx: &Ctx<'_, S>, req: &DelRequest) -> Result<Done, CniError> {
    let unwired = unwire(ctx, req).await?;
    let released = release(ctx, &unwired).await?;
    info!(
        handle = %unwired.handle,
        ?released,
        unwire_us = micros(unwired.took),
        release_us = micros(unwired.started.elapsed() - unwired.took),
        total_us = micros(unwired.started.elapsed()),
        "cni del"
    );
    Ok(Done {})
}

/// What DEL's first step took off the network, for its release.
#[derive(Debug)]
pub struct Unwired {
    pub handle: String,
    pub mode: Mode,
    /// The addresses whose host routes DEL deleted (main mode with a reaper).
    pub unrouted: Vec<Ipv4Addr>,
    started: Instant,
    /// How long the unwiring took.
    pub took: Duration,
}

/// DEL's first step: main mode, the endpoint leaves the network (its routes go, and
/// its veth, to the reaper or at once); IPAM mode, nothing.
///
/// The endpoint leaves the network before its address is released: releasing while
/// the route still exists could hand the address to a new container that the stale
/// route would shadow. (brindled's agent restores the route of a record it still sees
/// only while the veth exists, and the reaper deletes the veth, route included, right
/// away.) The reaper gets the link as it is now: should it run after the next ADD of
/// this attachment (podman restart), it cannot take that ADD's veth of the same name.
/// The addresses come from what this process allocated when it can (no round trip).
pub async fn unwire<S: Store>(ctx: &Ctx<'_, S>, req: &DelRequest) -> Result<Unwired, CniError> {
    let started = Instant::now();
    let handle = req.attachment.handle();
    let mut unrouted = Vec::new();
    if req.mode == Mode::Main {
        let dp = ctx.dataplane()?;
        let host = req.attachment.host_ifname();
        match ctx.reaper {
            Some(reaper) => {
                unrouted = match ctx.ipam.cached_addresses_of(&handle) {
                    Some(ips) => ips,
                    None => ctx.ipam.addresses_of(&handle).await?,
                };
                for ip in &unrouted {
                    dp.del_host_route(*ip).await?;
                }
                if let Some(link) = dp.host_veth(&host).await? {
                    reaper.schedule(link, unrouted.first().copied());
                }
            }
            None => {
                dp.delete_endpoint(&host).await?;
            }
        }
    }
    Ok(Unwired {
        handle,
        mode: req.mode,
        unrouted,
        started,
        took: started.elapsed(),
    })
}

/// DEL's second step: release the handle's addresses, main mode with the endpoint
/// record's delete in the same transaction. Returns the addresses released.
pub async fn release<S: Store>(
    ctx: &Ctx<'_, S>,
    unwired: &Unwired,
) -> Result<Vec<Ipv4Addr>, CniError> {
    let handle = &unwired.handle;
    if unwired.mode == Mode::Ipam {
        return Ok(ctx.ipam.release_handle(handle).await?);
    }
    let record = delete_endpoint_op(ctx.ipam.keys(), ctx.node, handle);
    let released = ctx.ipam.release_handle_with(handle, &[record]).await?;
    if ctx.reaper.is_some() {
        // The handle changed under us (another process wrote it since this one
        // cached it): a route to an address released just now must go as well.
        let dp = ctx.dataplane()?;
        for ip in released.iter().filter(|ip| !unwired.unrouted.contains(ip)) {
            warn!(%handle, %ip, "cni del: the handle held an address not cached; removing its route late");
            dp.del_host_route(*ip).await?;
        }
    }
    Ok(released)
}

/// CHECK: the handle still holds the address the ADD returned; in main mode the veth,
/// container address and routes, and the host route are as ADD made them.
pub async fn check<S: Store>(ctx: &Ctx<'_, S>, req: &CheckRequest) -> Result<Done, CniError> {
    let att = &req.attachment;
    let handle = att.handle();
    let held = ctx.ipam.addresses_of(&handle).await?;
    let Some(&first) = held.first() else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("no address is allocated to attachment {handle}"),
        ));
    };
    let ip = match req.ip {
        Some(ip) if held.contains(&ip) => ip,
        Some(ip) => {
            return Err(CniError::new(
                code::CHECK_FAILED,
                format!(
                    "attachment {handle} holds {}, not {ip} as its ADD result says",
                    held.iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
        None => first,
    };
    if req.mode == Mode::Main {
        let netns = req
            .netns
            .as_deref()
            .ok_or_else(|| CniError::env("required env variables [CNI_NETNS] missing"))?;
        let spec = EndpointSpec::for_cni(&att.container_id, &att.ifname, netns, ip, req.mtu);
        ctx.dataplane()?.check_endpoint(&spec).await?;
    }
    Ok(Done {})
}

/// GC: release this node's CNI allocations of `network` whose attachment is not in
/// `valid` (and, in main mode, their veths and endpoint records). Docker allocations,
/// other networks and other nodes are never touched. Keeps going past failures and
/// reports them together at the end.
pub async fn gc<S: Store>(ctx: &Ctx<'_, S>, req: &GcRequest) -> Result<GcReply, CniError> {
    let valid: BTreeSet<String> = req.valid.iter().map(Attachment::handle).collect();
    let mut stale: BTreeMap<String, Attachment> = BTreeMap::new();
    for block in ctx.ipam.all_blocks().await? {
        for alloc in block.allocations.values() {
            let a = &alloc.attrs;
            let ours = a.get(ATTR_ORCHESTRATOR).map(String::as_str) == Some(ORCHESTRATOR_CNI)
                && a.get(ATTR_NETWORK) == Some(&req.network)
                && alloc.node() == Some(ctx.node);
            if !ours || valid.contains(&alloc.handle) {
                continue;
            }
            let (Some(container_id), Some(ifname)) = (a.get(ATTR_CONTAINER), a.get(ATTR_IFNAME))
            else {
                continue;
            };
            let att = Attachment {
                container_id: container_id.clone(),
                ifname: ifname.clone(),
            };
            // Only handles of the form we create: never release a foreign handle that
            // merely copied our attributes.
            if att.handle() == alloc.handle {
                stale.insert(alloc.handle.clone(), att);
            }
        }
    }
    if req.mode == Mode::Main {
        let records = list_endpoints(ctx.ipam.store(), ctx.ipam.keys(), Some(ctx.node)).await?;
        for r in records {
            if r.orchestrator == ORCHESTRATOR_CNI
                && r.network == req.network
                && !valid.contains(&r.id)
                && !stale.contains_key(&r.id)
            {
                if let Some((cid, ifname)) = r.id.rsplit_once('+') {
                    stale.insert(
                        r.id.clone(),
                        Attachment {
                            container_id: cid.to_string(),
                            ifname: ifname.to_string(),
                        },
                    );
                }
            }
        }
    }
    let mut reply = GcReply::default();
    let mut errors = Vec::new();
    for (handle, att) in stale {
        let del_req = DelRequest {
            target: req.target.clone(),
            mode: req.mode,
            attachment: att,
        };
        match del(ctx, &del_req).await {
            Ok(_) => {
                info!(%handle, "cni gc: released");
                reply.released.push(handle);
            }
            Err(e) => errors.push(format!("{handle}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(reply)
    } else {
        Err(CniError::new(
            code::TRY_AGAIN,
            format!("gc could not release {} attachments", errors.len()),
        )
        .with_details(errors.join("; ")))
    }
}

/// STATUS: etcd answers, and the configured pool (if any) exists and is enabled.
pub async fn status<S: Store>(ctx: &Ctx<'_, S>, req: &StatusRequest) -> Result<Done, CniError> {
    let pools = ctx.ipam.list_pools().await.map_err(|e| {
        CniError::new(code::NOT_AVAILABLE, "brindle cannot serve ADD now")
            .with_details(e.to_string())
    })?;
    let usable = |p: &&brindle_ipam::Pool| !p.disabled && !p.deleting;
    let ok = match &req.pool {
        Some(name) => pools.iter().filter(usable).any(|p| p.name == *name),
        None => pools.iter().any(|p| usable(&p)),
    };
    if ok {
        return Ok(Done {});
    }
    let what = match &req.pool {
        Some(name) => format!("pool {name} does not exist or is disabled"),
        None => "no enabled pool exists".to_string(),
    };
    Err(CniError::new(code::NOT_AVAILABLE, "brindle cannot serve ADD now").with_details(what))
}

/// Microseconds, for the step timings of the log lines `make bench-cni` reads.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Refuses a CNI_NETNS that is our own namespace: wiring "the container" there would put
/// its address and default route on the host.
fn ensure_foreign_netns(netns: &str) -> Result<(), CniError> {
    let (Ok(target), Ok(own)) = (
        std::fs::metadata(Path::new(netns)),
        std::fs::metadata("/proc/self/ns/net"),
    ) else {
        // A missing path is reported by the dataplane, naming it.
        return Ok(());
    };
    if target.dev() == own.dev() && target.ino() == own.ino() {
        return Err(CniError::env(format!(
            "CNI_NETNS {netns} is the plugin's own network namespace, not a container's"
        )));
    }
    Ok(())
}

mod add;
pub use add::add;

#[cfg(test)]
mod tests;
