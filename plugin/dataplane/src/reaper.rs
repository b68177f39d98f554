//! [`Reaper`]: finishing host veth deletions after the request that decided them has
//! answered. The one reaper of brindle: Docker's `DeleteEndpoint`, the CNI fast path
//! through brindled and the CNI direct path all use it.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{Dataplane, DataplaneError, HostLink, LinuxDataplane};

/// Finishes veth deletions in the background.
///
/// The kernel takes ~20 ms to tear a veth down (it waits for RCU grace periods inside
/// the RTM_DELLINK call), longer than the rest of a CNI DEL or a Docker `DeleteEndpoint`
/// together. Callers therefore take the endpoint off the network at once (delete its
/// host `/32`; the address may then be released) and hand the link itself to a reaper.
///
/// The contract:
/// - [`Reaper::schedule`] returns at once. Later, exactly that [`HostLink`] is deleted
///   ([`Dataplane::delete_host_link`]: by index, while it still has its name): never a
///   newer link that took the name, so a late deletion cannot take the veth of a
///   following ADD of the same CNI attachment (`podman restart`). A link already gone
///   counts as deleted; other failures are logged, and the veth left behind is found
///   again by the next ADD of the attachment or the agent's reconcile.
/// - [`Reaper::settle`] and [`Reaper::settle_ip`] wait until no deletion that this
///   reaper runs in this process, of a link of that name or that served that address,
///   is pending. A create of the same name or address calls them first to avoid
///   meeting the old link. The detached backend runs in other processes and knows none:
///   there, a create that meets the old link removes it itself.
/// - Backends: [`Reaper::dedicated`] (a thread with its own runtime and netlink socket,
///   so the ~20 ms teardowns never block another request's socket: brindled),
///   [`Reaper::tasks`] (tasks on the caller's runtime, through any [`Dataplane`]: tests
///   and the fallback), [`Reaper::detached`] (a detached copy of the running program:
///   the short-lived `brindle-cni` direct path, whose DEL must not wait).
pub struct Reaper {
    backend: Backend,
    pending: Pending,
}

/// Deletions scheduled and not finished, in this process.
type Pending = Arc<Mutex<Vec<Entry>>>;

struct Entry {
    link: HostLink,
    ip: Option<Ipv4Addr>,
    done: watch::Receiver<bool>,
}

type Job = (HostLink, watch::Sender<bool>);

enum Backend {
    Thread(mpsc::UnboundedSender<Job>),
    Tasks(Arc<dyn Dataplane>),
    Detached {
        env: &'static str,
        /// The threads starting copies, joined on drop.
        starting: Mutex<Vec<std::thread::JoinHandle<()>>>,
    },
}

impl Reaper {
    /// Deletions one after another on a thread of their own, with its own runtime and a
    /// netlink socket in the calling thread's network namespace.
    pub fn dedicated() -> Result<Self, DataplaneError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let pending: Pending = Arc::default();
        let map = pending.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("brindle-reaper".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(cause) => {
                        let _ = ready_tx.send(Err(DataplaneError::Io {
                            op: "start the reaper's runtime".into(),
                            cause,
                        }));
                        return;
                    }
                };
                rt.block_on(async move {
                    let dp = match LinuxDataplane::connect() {
                        Ok(dp) => dp,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    while let Some((link, done)) = rx.recv().await {
                        reap_one(&dp, &link).await;
                        finish(&map, &link, &done);
                    }
                });
            })
            .map_err(|cause| DataplaneError::Io {
                op: "spawn the reaper thread".into(),
                cause,
            })?;
        ready_rx.recv().map_err(|_| DataplaneError::Io {
            op: "start the reaper thread".into(),
            cause: std::io::Error::other("the thread ended before it was ready"),
        })??;
        Ok(Self {
            backend: Backend::Thread(tx),
            pending,
        })
    }

    /// Deletions as tasks of the current tokio runtime, through `dataplane`.
    pub fn tasks(dataplane: Arc<dyn Dataplane>) -> Self {
        Self {
            backend: Backend::Tasks(dataplane),
            pending: Arc::default(),
        }
    }

    /// Each deletion in a detached copy of the running program (its own process group,
    /// no stdio: the caller neither waits for it nor reads from it), which finds the
    /// link in the environment variable `env` and must call [`Reaper::run_job`] with
    /// it before anything else. A copy starts (fork and exec, about 0.5 ms) on a
    /// thread of its own, beside what the caller does next; when it cannot start, that
    /// thread deletes the link itself. Dropping the reaper waits until every copy has
    /// started, so a caller that exits after the drop loses no deletion.
    pub fn detached(env: &'static str) -> Self {
        Self {
            backend: Backend::Detached {
                env,
                starting: Mutex::default(),
            },
            pending: Arc::default(),
        }
    }

    /// The detached copy's whole job: delete the link `job` (the value of the
    /// variable given to [`Reaper::detached`]) names. Blocks; returns whether the link
    /// was still there.
    pub fn run_job(job: &str) -> Result<bool, DataplaneError> {
        let link: HostLink = job
            .parse()
            .map_err(|what| DataplaneError::Invalid { what })?;
        delete_blocking(&link)
    }

    /// Delete exactly `link` later (see the type's contract); `ip` is the address it
    /// served, for [`Reaper::settle_ip`]. Returns at once.
    pub fn schedule(&self, link: HostLink, ip: Option<Ipv4Addr>) {
        let (env, starting) = match &self.backend {
            Backend::Detached { env, starting } => (*env, starting),
            Backend::Thread(_) | Backend::Tasks(_) => return self.track(link, ip),
        };
        let job = link.clone();
        match std::thread::Builder::new()
            .name("reaper-start".into())
            .spawn(move || start_copy(env, &job))
        {
            Ok(thread) => lock(starting).push(thread),
            Err(e) => {
                debug!(host = %link.name, %e, "no thread to start the copy from; starting it here");
                start_copy(env, &link);
            }
        }
    }

    /// Run the deletion on this process's thread or runtime, tracked in `pending`.
    fn track(&self, link: HostLink, ip: Option<Ipv4Addr>) {
        let mut pending = lock(&self.pending);
        if pending.iter().any(|e| e.link == link) {
            return;
        }
        let (tx, rx) = watch::channel(false);
        pending.push(Entry {
            link: link.clone(),
            ip,
            done: rx,
        });
        match &self.backend {
            Backend::Thread(jobs) => {
                if let Err(returned) = jobs.send((link, tx)) {
                    // The thread is gone: nothing will delete it; a create of the same
                    // attachment, or the reconcile, removes the leftover veth.
                    let (link, done) = returned.0;
                    warn!(host = %link.name, "reaper thread gone; veth left for the next ADD or the reconcile");
                    pending.retain(|e| e.link != link);
                    let _ = done.send(true);
                }
            }
            Backend::Tasks(dp) => {
                let dp = dp.clone();
                let map = self.pending.clone();
                tokio::spawn(async move {
                    reap_one(dp.as_ref(), &link).await;
                    finish(&map, &link, &tx);
                });
            }
            Backend::Detached { .. } => unreachable!("detached deletions are not tracked"),
        }
    }

    /// Wait until no deletion of a link named `host_ifname` is pending here.
    pub fn settle<'a>(&'a self, host_ifname: &'a str) -> BoxFuture<'a, ()> {
        self.wait_for(|e| e.link.name == host_ifname)
    }

    /// Wait until no deletion of a link that served `ip` is pending here.
    pub fn settle_ip(&self, ip: Ipv4Addr) -> BoxFuture<'_, ()> {
        self.wait_for(move |e| e.ip == Some(ip))
    }

    fn wait_for(&self, matches: impl Fn(&Entry) -> bool) -> BoxFuture<'_, ()> {
        let waits: Vec<watch::Receiver<bool>> = lock(&self.pending)
            .iter()
            .filter(|e| matches(e))
            .map(|e| e.done.clone())
            .collect();
        Box::pin(async move {
            for mut rx in waits {
                let _ = rx.wait_for(|done| *done).await;
            }
        })
    }

    /// Wait until every deletion pending here has finished: a graceful stop calls it,
    /// so no veth is left behind by a deletion that was already decided.
    pub fn settle_all(&self) -> BoxFuture<'_, ()> {
        self.wait_for(|_| true)
    }

    /// Deletions still running in this process.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }
}

impl Drop for Reaper {
    /// A detached copy must have started before the caller exits.
    fn drop(&mut self) {
        if let Backend::Detached { starting, .. } = &self.backend {
            for thread in std::mem::take(&mut *lock(starting)) {
                let _ = thread.join();
            }
        }
    }
}

/// Start the detached copy that deletes `link` (see [`Reaper::detached`]); when it
/// cannot start, delete the link here.
fn start_copy(env: &str, link: &HostLink) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let spawned = Command::new("/proc/self/exe")
        .env_clear()
        .env(env, link.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    match spawned {
        // Not waited for: it is re-parented when we exit.
        Ok(child) => debug!(host = %link.name, pid = child.id(), "veth deletion detached"),
        Err(e) => {
            debug!(host = %link.name, %e, "cannot detach the veth deletion; deleting now");
            if let Err(e) = delete_blocking(link) {
                warn!(host = %link.name, %e, "deleting veth failed");
            }
        }
    }
}

fn lock<T>(list: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is one push, take or retain: a poisoned lock is consistent.
    list.lock().unwrap_or_else(|e| e.into_inner())
}

fn finish(pending: &Pending, link: &HostLink, done: &watch::Sender<bool>) {
    lock(pending).retain(|e| e.link != *link);
    let _ = done.send(true);
}

async fn reap_one(dp: &dyn Dataplane, link: &HostLink) {
    match dp.delete_host_link(link).await {
        Ok(existed) => {
            debug!(host = %link.name, index = link.index, existed, "reaper: veth deleted")
        }
        Err(e) => warn!(host = %link.name, index = link.index, %e, "reaper: deleting veth failed"),
    }
}

/// Delete `link` now, on a thread of its own (the caller may itself be inside a
/// runtime) with its own runtime and netlink socket.
fn delete_blocking(link: &HostLink) -> Result<bool, DataplaneError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|cause| DataplaneError::Io {
                    op: "start a runtime to delete a veth".into(),
                    cause,
                })?;
            rt.block_on(async { LinuxDataplane::connect()?.delete_host_link(link).await })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(DataplaneError::Io {
                op: format!("delete veth {}", link.name),
                cause: std::io::Error::other("the deleting thread panicked"),
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{EndpointSpec, FakeDataplane};

    fn spec() -> EndpointSpec {
        EndpointSpec::for_cni(
            "c1",
            "eth0",
            "/run/netns/c1",
            Ipv4Addr::new(10, 1, 0, 5),
            None,
        )
    }

    /// The DEL → ADD → late reaper race (`podman restart`): the reaper of the DEL runs
    /// only after the next ADD of the same attachment has replaced the veth, and must
    /// leave the new one alone.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_deletion_spares_the_newer_link_with_the_same_name() {
        let dp = Arc::new(FakeDataplane::new());
        let reaper = Reaper::tasks(dp.clone());
        let s = spec();
        dp.create_veth_into_netns(&s).await.unwrap();
        let old = dp.host_veth(&s.host_ifname).await.unwrap().unwrap();
        dp.del_host_route(s.ip).await.unwrap();
        reaper.schedule(old.clone(), Some(s.ip));
        assert_eq!(reaper.pending(), 1);
        // The next ADD, before the task ran (a current-thread runtime runs it only at
        // the next await that yields): it meets the old veth and replaces it.
        assert!(dp.create_veth_into_netns(&s).await.is_err());
        assert!(dp.delete_endpoint(&s.host_ifname).await.unwrap());
        dp.create_veth_into_netns(&s).await.unwrap();
        let new = dp.link_of(&s.host_ifname).unwrap();
        assert_ne!(new, old);
        // Now the late deletion runs.
        reaper.settle(&s.host_ifname).await;
        assert_eq!(reaper.pending(), 0);
        assert_eq!(
            dp.link_of(&s.host_ifname),
            Some(new),
            "the new veth survives"
        );
        assert_eq!(dp.host_routes(), vec![(s.ip, s.host_ifname.clone())]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn settles_by_name_and_address_and_tracks_each_link_once() {
        let dp = Arc::new(FakeDataplane::new());
        let reaper = Reaper::tasks(dp.clone());
        let s = spec();
        dp.create_veth_into_netns(&s).await.unwrap();
        let link = dp.link_of(&s.host_ifname).unwrap();
        reaper.schedule(link.clone(), Some(s.ip));
        reaper.schedule(link.clone(), Some(s.ip));
        assert_eq!(reaper.pending(), 1);
        reaper.settle_ip(s.ip).await;
        assert_eq!(reaper.pending(), 0);
        assert!(!dp.has_endpoint(&s.host_ifname));
        // Nothing pending: both return at once.
        reaper.settle("brlneverasked").await;
        reaper.settle_ip(Ipv4Addr::new(10, 9, 9, 9)).await;
        assert_eq!(
            dp.calls_of(crate::FakeOp::DeleteHostLink),
            vec![crate::FakeCall::DeleteHostLink(link)]
        );
    }

    #[test]
    fn links_travel_as_name_and_index() {
        let link = HostLink {
            name: "brl0123456789a".into(),
            index: 42,
        };
        assert_eq!(link.to_string(), "brl0123456789a:42");
        assert_eq!("brl0123456789a:42".parse::<HostLink>(), Ok(link));
        for bad in ["brl1", "brl1:", ":3", "brl1:0", "brl1:x"] {
            assert!(bad.parse::<HostLink>().is_err(), "{bad}");
        }
        assert!(matches!(
            Reaper::run_job("nope"),
            Err(DataplaneError::Invalid { .. })
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dedicated_thread_settles_when_it_can_start() {
        // Without CAP_NET_ADMIN the socket still opens; deleting a missing index is a
        // no-op, but the bookkeeping runs.
        let Ok(reaper) = Reaper::dedicated() else {
            return;
        };
        let link = HostLink {
            name: "brlnoexist0001".into(),
            index: 999_999,
        };
        reaper.schedule(link, None);
        reaper.settle("brlnoexist0001").await;
        assert_eq!(reaper.pending(), 0);
    }
}
