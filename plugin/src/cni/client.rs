//! The brindle-cni side of brindled's local API (`crate::api` is the server side): one
//! HTTP/1.1 request on the unix socket per CNI operation (hyper's client over a tokio
//! `UnixStream`).

use std::path::Path;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::error::{code, CniError};

/// Paths of the API, shared with the server (`crate::api`).
pub mod paths {
    pub const ADD: &str = "/v1/cni/add";
    pub const DEL: &str = "/v1/cni/del";
    pub const CHECK: &str = "/v1/cni/check";
    pub const GC: &str = "/v1/cni/gc";
    pub const STATUS: &str = "/v1/cni/status";
}

/// Longest a fast-path call may take (brindled's etcd calls give up after 5 s each).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call did not produce a reply.
#[derive(Debug)]
pub enum CallError {
    /// Nothing was sent: brindled is not running here (no socket, refused). Safe to do
    /// the work directly.
    Unavailable(String),
    /// brindled declined before doing anything (another node or prefix, or it could not
    /// decode the request). Also safe to do the work directly.
    Declined(CniError),
    /// The operation ran (or may have run) and failed.
    Failed(CniError),
}

/// POST `body` to `path` on brindled's socket and decode the 200 answer.
pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &Req,
) -> Result<Rep, CallError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| CallError::Unavailable(format!("connect {}: {e}", socket.display())))?;
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| CallError::Unavailable(format!("handshake on {}: {e}", socket.display())))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let json = serde_json::to_vec(body).expect("API requests serialise");
    let request = Request::post(path)
        .header(HOST, "brindled")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(json)))
        .expect("static request parts are valid");
    let gone = |e: String| {
        CallError::Failed(CniError::new(
            code::TRY_AGAIN,
            format!(
                "brindled at {} went away during {path}: {e}",
                socket.display()
            ),
        ))
    };
    let exchange = async {
        let response = tx
            .send_request(request)
            .await
            .map_err(|e| gone(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| gone(e.to_string()))?
            .to_bytes();
        Ok::<_, CallError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| gone(format!("no answer within {}s", CALL_TIMEOUT.as_secs())))??;
    let bad = |what: String| {
        CallError::Failed(CniError::new(
            code::BRINDLED,
            format!("brindled answered {path} with {what}"),
        ))
    };
    if status == StatusCode::NOT_FOUND {
        // A brindled without this API (older, or serving something else): nothing ran.
        return Err(CallError::Declined(CniError::new(
            code::BRINDLED,
            format!("brindled at {} does not serve {path}", socket.display()),
        )));
    }
    if status == StatusCode::OK {
        return serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("an unreadable reply: {e}")));
    }
    let err: CniError = serde_json::from_slice(&bytes).map_err(|_| {
        bad(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ))
    })?;
    if status == StatusCode::CONFLICT || status == StatusCode::BAD_REQUEST {
        Err(CallError::Declined(err))
    } else {
        Err(CallError::Failed(err))
    }
}
