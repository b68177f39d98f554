//! Network namespace handles and running code inside one.
//!
//! `setns` moves only the calling OS thread, and a netlink socket or a `/proc/sys/net`
//! lookup belongs to the namespace of the thread that made it. Tokio worker (and
//! `spawn_blocking`) threads are shared and reused, so moving one would leak the
//! namespace into unrelated tasks: code that must run inside a namespace runs on a fresh
//! OS thread that exits afterwards.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use futures::channel::oneshot;
use nix::sched::{setns, CloneFlags};

use super::DataplaneError;

/// The calling thread's own network namespace.
const THREAD_SELF_NS: &str = "/proc/thread-self/ns/net";

/// An open network namespace file. The fd stays valid (and the namespace alive) as long
/// as this value lives.
#[derive(Debug)]
pub(crate) struct Netns {
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Opens a namespace file such as `/run/netns/NAME` or `/proc/PID/ns/net`.
    pub(crate) fn open(path: &Path) -> Result<Self, DataplaneError> {
        let file = File::open(path).map_err(|cause| DataplaneError::Netns {
            op: "open netns".into(),
            path: path.to_path_buf(),
            cause,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The namespace the calling thread is in now.
    pub(crate) fn current() -> Result<Self, DataplaneError> {
        Self::open(Path::new(THREAD_SELF_NS))
    }

    /// The path it was opened from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The open namespace file (for `IFLA_NET_NS_FD`).
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Whether the calling thread is in this namespace right now.
    pub(crate) fn is_current(&self) -> bool {
        match (self.file.metadata(), std::fs::metadata(THREAD_SELF_NS)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Runs `f` on a new OS thread that first joins this namespace; awaits its result
    /// without blocking the async runtime.
    pub(crate) async fn run<T, F>(&self, f: F) -> Result<T, DataplaneError>
    where
        F: FnOnce() -> Result<T, DataplaneError> + Send + 'static,
        T: Send + 'static,
    {
        let err = |op: &str, cause: io::Error| DataplaneError::Netns {
            op: op.into(),
            path: self.path.clone(),
            cause,
        };
        let file = self
            .file
            .try_clone()
            .map_err(|e| err("duplicate fd of netns", e))?;
        let path = self.path.clone();
        let (tx, rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("brindle-netns".into())
            .spawn(move || {
                let res = match setns(&file, CloneFlags::CLONE_NEWNET) {
                    Ok(()) => f(),
                    Err(errno) => Err(DataplaneError::Netns {
                        op: "enter netns".into(),
                        path,
                        cause: io::Error::from(errno),
                    }),
                };
                // The receiver is gone only if the caller was cancelled.
                let _ = tx.send(res);
            })
            .map_err(|e| err("spawn thread for netns", e))?;
        rx.await
            .map_err(|_| err("run in netns", io::Error::other("netns thread panicked")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_netns_names_path() {
        let e = Netns::open(Path::new("/run/netns/brindle-does-not-exist")).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(
            e.to_string()
                .starts_with("open netns /run/netns/brindle-does-not-exist: "),
            "{e}"
        );
    }

    #[test]
    fn current_netns_is_current() {
        let ns = Netns::current().unwrap();
        assert!(ns.is_current());
        assert_eq!(ns.path(), Path::new(THREAD_SELF_NS));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn run_in_own_netns_returns_value() {
        // Joining the namespace we are already in needs no privilege beyond owning it,
        // but setns still requires CAP_SYS_ADMIN: skip when not root.
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping run_in_own_netns_returns_value: needs root");
            return;
        }
        let ns = Netns::current().unwrap();
        let v = ns.run(|| Ok(41 + 1)).await.unwrap();
        assert_eq!(v, 42);
    }
}
