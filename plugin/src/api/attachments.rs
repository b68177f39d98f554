//! CNI requests of one attachment in order, and DEL's release committed after DEL has
//! answered (`write_behind.rs`).
//!
//! DEL takes the endpoint off the network (route gone, veth to the reaper), answers,
//! and then releases the address with the record's delete in one transaction. Until
//! that commits the address stays allocated, so nothing else can take it; what must
//! not overtake the release waits for it:
//! - a later ADD, DEL or CHECK of the same attachment (`podman restart` reuses the
//!   container id): it holds the attachment's lock, which the release keeps until
//!   its commit; otherwise an ADD would find the old allocation, keep it, and see it
//!   released under it;
//! - an ADD asking for one of the addresses being released (the next container with
//!   the same fixed IP): the release keeps each address's lock as well.
//!
//! If brindled dies before the commit (or etcd stays unreachable past
//! `write_behind::RETRY_FOR`), the record and the allocation are still there together;
//! the veth is gone, and the reconcile releases both after its grace period. Main mode
//! only: an `ipam`-mode DEL (another plugin's interface) has no veth for the reconcile
//! to judge it by, so it answers after its release, as before.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use brindle_ipam::locks::{KeyGuard, KeyedLocks, LockError};
use brindle_ipam::{budget, IpamError};
use tracing::{info, warn};

use super::{ctx, Api, Backend};
use crate::cni::error::CniError;
use crate::cni::ops::{self, micros, AddReply, AddRequest, CheckRequest, DelRequest, Done, Mode};
use crate::write_behind::until_committed;

/// The locks of the attachments and addresses whose requests are in flight or whose
/// release has not committed yet.
pub struct Attachments {
    handles: KeyedLocks<String>,
    /// The node's, shared with the Docker driver: an ADD of an address also waits for
    /// a Docker release of it that has answered and not committed.
    addresses: KeyedLocks<Ipv4Addr>,
}

impl Attachments {
    pub fn new(addresses: KeyedLocks<Ipv4Addr>) -> Self {
        Self {
            handles: KeyedLocks::default(),
            addresses,
        }
    }

    async fn attachment(&self, handle: String) -> Result<KeyGuard<String>, CniError> {
        self.handles.lock(handle, deadline()).await.map_err(busy)
    }

    async fn address(&self, ip: Ipv4Addr) -> Result<KeyGuard<Ipv4Addr>, CniError> {
        self.addresses.lock(ip, deadline()).await.map_err(busy)
    }
}

/// ADD, after whatever an earlier DEL of the attachment or of its fixed address still
/// has to commit.
pub async fn add<B: Backend>(api: &Api<B>, req: &AddRequest) -> Result<AddReply, CniError> {
    let _attachment = api.attachments.attachment(req.attachment.handle()).await?;
    if let Some(ip) = req.ip {
        drop(api.attachments.address(ip).await?);
    }
    ops::add(&ctx(api), req).await
}

/// CHECK, after an earlier DEL of the attachment has committed.
pub async fn check<B: Backend>(api: &Api<B>, req: &CheckRequest) -> Result<Done, CniError> {
    let _attachment = api.attachments.attachment(req.attachment.handle()).await?;
    ops::check(&ctx(api), req).await
}

/// DEL: unwire, answer, then release (see the module doc).
pub async fn del<B: Backend>(api: &Arc<Api<B>>, req: &DelRequest) -> Result<Done, CniError> {
    let handle = req.attachment.handle();
    let attachment = api.attachments.attachment(handle.clone()).await?;
    let c = ctx(api);
    if req.mode == Mode::Ipam {
        // No veth judges an `ipam`-mode allocation: should its release fail, only the
        // runtime's retried DEL (or CNI GC) would free it, so DEL waits for the commit.
        return ops::del(&c, req).await;
    }
    let unwired = ops::unwire(&c, req).await?;
    let mut addresses = Vec::with_capacity(unwired.unrouted.len());
    for &ip in &unwired.unrouted {
        addresses.push(api.attachments.address(ip).await?);
    }
    info!(
        %handle,
        unwire_us = micros(unwired.took),
        total_us = micros(unwired.took),
        "cni del"
    );
    let answered = Instant::now();
    let api2 = api.clone();
    api.backend.write_behind().spawn(async move {
        let _locks = (attachment, addresses);
        let c = ctx(&api2);
        let what = format!("cni del of {}", unwired.handle);
        match until_committed(answered, &what, || ops::release(&c, &unwired)).await {
            Ok(released) => info!(
                handle = %unwired.handle,
                ?released,
                commit_us = micros(answered.elapsed()),
                "cni del: released"
            ),
            Err(e) => warn!(
                handle = %unwired.handle,
                error = %e,
                "cni del: release not committed; the reconcile frees the address and its record after its grace period"
            ),
        }
    });
    Ok(Done {})
}

fn deadline() -> std::time::Instant {
    budget::deadline_after(budget::OPERATION)
}

fn busy(e: LockError) -> CniError {
    IpamError::from(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use brindle_dataplane::{FakeDataplane, FakeOp, Reaper};
    use brindle_ipam::pools::NewPool;
    use brindle_ipam::{Ipam, MemoryStore};

    use crate::api::netns_path::NetnsDirs;
    use crate::cni::ops::{Attachment, Target};
    use crate::docker::LocalBackend;

    /// Node `n1` (the Docker driver's in-process backend, which serves the API too).
    async fn api() -> (Arc<Api<LocalBackend>>, MemoryStore, Arc<FakeDataplane>) {
        let store = MemoryStore::new();
        let ipam = Ipam::new(store.clone(), "/brindle");
        ipam.add_pool(NewPool {
            name: "p".into(),
            cidr: "10.9.4.0/24".parse().unwrap(),
            block_size: 28,
            disabled: false,
            reserved: Default::default(),
            nat_outgoing: false,
        })
        .await
        .unwrap();
        let dp = Arc::new(FakeDataplane::new());
        let node = LocalBackend {
            node: "n1".into(),
            ipam,
            dataplane: dp.clone(),
            reaper: Reaper::tasks(dp.clone()),
            write_behind: Default::default(),
            address_locks: KeyedLocks::default(),
            docker_api_socket: None,
        };
        let api = Api {
            attachments: Attachments::new(node.address_locks.clone()),
            backend: Arc::new(node),
            dataplane: dp.clone(),
            netns_dirs: NetnsDirs::new(&[]),
        };
        (Arc::new(api), store, dp)
    }

    fn target() -> Target {
        Target {
            node: "n1".into(),
            prefix: "/brindle".into(),
        }
    }

    fn att(cid: &str) -> Attachment {
        Attachment {
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    fn add_req(cid: &str, ip: Option<Ipv4Addr>) -> AddRequest {
        AddRequest {
            target: target(),
            mode: Mode::Main,
            network: "net".into(),
            attachment: att(cid),
            netns: Some("/run/netns/test-does-not-matter".into()),
            ip,
            pool: None,
            mtu: None,
            allow_from: Vec::new(),
        }
    }

    fn del_req(cid: &str) -> DelRequest {
        DelRequest {
            target: target(),
            mode: Mode::Main,
            attachment: att(cid),
        }
    }

    async fn holder(api: &Api<LocalBackend>, ip: Ipv4Addr) -> Option<String> {
        api.backend.ipam.address(ip).await.unwrap().handle
    }

    async fn record(api: &Api<LocalBackend>, cid: &str) -> bool {
        let handle = att(cid).handle();
        crate::endpoints::get_endpoint(
            api.backend.ipam.store(),
            api.backend.ipam.keys(),
            "n1",
            &handle,
        )
        .await
        .unwrap()
        .is_some()
    }

    /// The veths ADDs have built so far.
    fn veths(dp: &FakeDataplane) -> usize {
        dp.calls_of(FakeOp::CreateUnroutedVethIntoNetns).len()
    }

    /// DEL through brindled answers once the endpoint is off the network, before its
    /// release commits (Docker and CNI runtimes wait for one durable write per
    /// container, not two). Until the commit the address stays allocated with its
    /// record; the next ADD asking for that address, and the next ADD of the same
    /// attachment (`podman restart`), wait for the commit instead of failing "in use"
    /// or keeping an allocation about to be released.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn del_answers_before_its_release_and_later_adds_wait_for_the_commit() {
        let (api, store, dp) = api().await;
        let first = add(&api, &add_req("c1", None)).await.unwrap();
        let ip = first.ip;
        assert!(dp.host_routes().iter().any(|(r, _)| *r == ip));

        // The next container asks for the address being released.
        let etcd_slow = store.hold_writes().expect("writes not held yet");
        let before = store.revision();
        tokio::time::timeout(Duration::from_secs(5), del(&api, &del_req("c1")))
            .await
            .expect("DEL answers while its release is held back")
            .unwrap();
        assert_eq!(api.backend.write_behind.pending(), 1);
        assert_eq!(store.revision(), before, "nothing committed yet");
        assert!(
            !dp.host_routes().iter().any(|(r, _)| *r == ip),
            "off the network"
        );
        assert_eq!(holder(&api, ip).await, Some(att("c1").handle()));
        assert!(record(&api, "c1").await, "the record goes with the address");
        let fixed = tokio::spawn({
            let api = api.clone();
            async move { add(&api, &add_req("c2", Some(ip))).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !fixed.is_finished(),
            "the ADD of {ip} waits for its release"
        );
        assert_eq!(
            veths(&dp),
            1,
            "the ADD of {ip} built a veth before the release"
        );
        drop(etcd_slow);
        assert_eq!(fixed.await.unwrap().unwrap().ip, ip);
        assert!(!record(&api, "c1").await);
        assert_eq!(holder(&api, ip).await, Some(att("c2").handle()));

        // The same attachment again, while its release is pending.
        let etcd_slow = store.hold_writes().expect("writes not held yet");
        del(&api, &del_req("c2")).await.unwrap();
        let again = tokio::spawn({
            let api = api.clone();
            async move { add(&api, &add_req("c2", None)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!again.is_finished(), "the ADD of c2 waits for c2's release");
        assert_eq!(
            veths(&dp),
            2,
            "the ADD of c2 built a veth before its release"
        );
        drop(etcd_slow);
        let again = again.await.unwrap().unwrap();
        api.backend.write_behind.settle_all().await;
        assert_eq!(
            holder(&api, again.ip).await,
            Some(att("c2").handle()),
            "the new ADD's address was released under it"
        );
        assert!(record(&api, "c2").await);
        assert!(dp.host_routes().iter().any(|(r, _)| *r == again.ip));
        let report = api.backend.ipam.check(false).await.unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}
