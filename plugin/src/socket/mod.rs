//! Serving an axum router on a unix socket only root (or brindled's `--api-group`) may
//! use: the socket has its final mode from the moment it exists (`umask`), lives in a
//! directory other users cannot write, and every request's caller is checked against
//! its credentials (`peer`).

mod nss;
pub mod peer;
mod umask;

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::UnixListener;
use tracing::info;

pub use peer::{Access, ApiGroup, GroupError, Refusal};

/// The process on the other end of a connection (`SO_PEERCRED`, as it was when it
/// connected), available to handlers as `ConnectInfo<UnixPeer>`. The Docker driver uses
/// the pid to tell one dockerd instance from the next; [`peer`] uses uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnixPeer {
    /// `None` when unknown, or 0 when the peer is in a PID namespace we cannot see.
    pub pid: Option<i32>,
    pub uid: Option<u32>,
    /// The peer's primary (effective) gid; supplementary groups are not carried.
    pub gid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for UnixPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => UnixPeer {
                pid: cred.pid(),
                uid: Some(cred.uid()),
                gid: Some(cred.gid()),
            },
            Err(_) => UnixPeer::default(),
        }
    }
}

/// Why a socket could not be set up or served.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is writable by every user (mode {mode:04o}), so anyone could put their own socket in place of brindled's; use a directory only root can write", path.display())]
    WorldWritableDir { path: PathBuf, mode: u32 },
    #[error("remove stale socket {}: {source}", path.display())]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("bind {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("give {} to group {group}: {source}", path.display())]
    Chown {
        path: PathBuf,
        group: String,
        #[source]
        source: io::Error,
    },
    #[error("serve {}: {source}", path.display())]
    Serve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A socket bound with its final owner and mode, not yet served.
pub struct BoundSocket {
    path: PathBuf,
    listener: UnixListener,
    access: Access,
}

/// Bind `path` for `access`: create its directory (0755) if missing and refuse one every
/// user may write, replace a stale socket, and create the socket mode 0600, or 0660 owned
/// by the access group. Call it from a tokio runtime, before other threads create files
/// (see `umask`).
pub fn bind_unix(path: &Path, access: Access) -> Result<BoundSocket, SocketError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        prepare_dir(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SocketError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let bind_err = |source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    };
    // Root-only from its first instant.
    let listener = umask::with_umask(0o177, || std::os::unix::net::UnixListener::bind(path))
        .map_err(bind_err)?;
    if let Some(group) = &access.group {
        // Widened only once the group is right: 0600 root → 0600 group → 0660, so at no
        // moment can anyone outside the group connect.
        let chown_err = |source| SocketError::Chown {
            path: path.to_path_buf(),
            group: group.name.clone(),
            source,
        };
        std::os::unix::fs::lchown(path, None, Some(group.gid)).map_err(chown_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(chown_err)?;
    }
    listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = UnixListener::from_std(listener).map_err(bind_err)?;
    Ok(BoundSocket {
        path: path.to_path_buf(),
        listener,
        access,
    })
}

/// Create `dir` if missing (0755, less the umask) and make sure not every user may write
/// it: whoever can write the directory can replace the socket with their own.
fn prepare_dir(dir: &Path) -> Result<(), SocketError> {
    let err = |source| SocketError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o002 != 0 {
        return Err(SocketError::WorldWritableDir {
            path: dir.to_path_buf(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

impl BoundSocket {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serve `router` (every request checked against the socket's access) until `stop`
    /// completes, then stop accepting, let every request in flight finish (idle
    /// keep-alive connections are closed) and return.
    pub async fn serve_until(
        self,
        router: Router,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), SocketError> {
        let BoundSocket {
            path,
            listener,
            access,
        } = self;
        let router = peer::layer(router, access);
        info!(socket = %path.display(), "listening");
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<UnixPeer>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .map_err(|source| SocketError::Serve { path, source })
    }
}

/// Bind `path` root-only (refusals as Docker plugin errors) and serve `router` on it
/// until the task is dropped.
pub async fn serve_unix(path: PathBuf, router: Router) -> anyhow::Result<()> {
    bind_unix(&path, Access::root_only(Refusal::Docker))?
        .serve_until(router, std::future::pending())
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn socket_is_0600_and_its_directory_is_created_0755() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/brindle/brindled.sock");
        let bound = bind_unix(&path, Access::root_only(Refusal::Cni)).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()) & 0o022, 0);
        drop(bound);
        // A stale socket is replaced.
        assert!(bind_unix(&path, Access::root_only(Refusal::Cni)).is_ok());
    }

    #[tokio::test]
    async fn world_writable_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = bind_unix(&dir.path().join("s.sock"), Access::root_only(Refusal::Cni))
            .err()
            .expect("refused");
        assert!(
            matches!(err, SocketError::WorldWritableDir { mode: 0o1777, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }
}
