//! Serving an axum router on a root-only unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::Context;
use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use axum::Router;
use tokio::net::UnixListener;
use tracing::info;

/// The process on the other end of a connection (`SO_PEERCRED`), available to handlers
/// as `ConnectInfo<UnixPeer>`. The Docker driver uses the pid to tell one dockerd
/// instance from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnixPeer {
    /// `None` when unknown, or 0 when the peer is in a PID namespace we cannot see.
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

impl Connected<IncomingStream<'_, UnixListener>> for UnixPeer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        match stream.io().peer_cred() {
            Ok(cred) => UnixPeer {
                pid: cred.pid(),
                uid: Some(cred.uid()),
            },
            Err(_) => UnixPeer::default(),
        }
    }
}

/// Bind `path` (replacing a stale socket, creating the directory), restrict it to root,
/// and serve `router` on it until the task is dropped.
pub async fn serve_unix(path: PathBuf, router: Router) -> anyhow::Result<()> {
    serve_unix_until(path, router, std::future::pending()).await
}

/// [`serve_unix`] until `stop` completes, then stop accepting, let every request in
/// flight finish (idle keep-alive connections are closed) and return.
pub async fn serve_unix_until(
    path: PathBuf,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove stale {}", path.display())),
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    // The socket allocates addresses and creates interfaces: root only.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    info!(socket = %path.display(), "listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<UnixPeer>(),
    )
    .with_graceful_shutdown(stop)
    .await
    .with_context(|| format!("serve {}", path.display()))
}
