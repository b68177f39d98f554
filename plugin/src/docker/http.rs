//! HTTP plumbing of the plugin socket: a lenient JSON body extractor, the one error reply
//! both APIs understand (for any [`DockerError`]), the caller's dockerd identity, and the
//! 404 for unknown calls.

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::dockerd;
use super::error::DockerError;
use crate::socket::UnixPeer;

/// A JSON request body, read whatever the `Content-Type` (Docker 20.10 sends none) and
/// taking an empty body (`Plugin.Activate`, the capability calls) or `null` as `{}`.
#[derive(Debug)]
pub struct DockerJson<T>(pub T);

impl<T, S> FromRequest<S> for DockerJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = DockerError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let path = req.uri().path().to_string();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| DockerError::BadRequest(format!("cannot read the body of {path}: {e}")))?;
        parse_body(&path, &bytes).map(DockerJson)
    }
}

/// Decode a request body leniently (see [`DockerJson`]).
pub fn parse_body<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, DockerError> {
    let trimmed = bytes.trim_ascii();
    let body: &[u8] = if trimmed.is_empty() || trimmed == b"null" {
        b"{}"
    } else {
        trimmed
    };
    serde_json::from_slice(body).map_err(|source| DockerError::BadJson {
        path: path.to_string(),
        source,
    })
}

/// Every error reaches Docker as HTTP 500 with `{"Err": message}`, which both the network
/// driver and the IPAM client treat as a failure and show as `<Subsystem>.<Method>:
/// message`.
impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        warn!(error = %message, kind = self.kind(), errno = ?self.errno(), "docker request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(serde_json::json!({ "Err": message })),
        )
            .into_response()
    }
}

/// The dockerd instance calling us (`PID:STARTTIME`), from the socket's peer
/// credentials; `None` when unknown (another PID namespace, a test client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let pid = parts
            .extensions
            .get::<ConnectInfo<UnixPeer>>()
            .and_then(|ConnectInfo(peer)| peer.pid)
            .filter(|pid| *pid > 0);
        Ok(Caller(pid.and_then(dockerd::identity)))
    }
}

/// Log every call with its status and duration (debug level).
pub async fn log_call(req: Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path().to_string();
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    debug!(
        call = %path,
        status = response.status().as_u16(),
        micros = start.elapsed().as_micros() as u64,
        "docker call"
    );
    response
}

/// Unknown paths: 404, so Docker treats newer optional calls as not implemented.
pub async fn not_found(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({
            "Err": format!("brindle does not implement {}", uri.path())
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::wire::RequestPoolRequest;

    #[test]
    fn empty_and_null_bodies_are_empty_objects() {
        for body in [&b""[..], b"  \n", b"null", b"null\n", b"{}\n"] {
            let r: RequestPoolRequest = parse_body("/IpamDriver.RequestPool", body).unwrap();
            assert!(r.pool.is_empty());
        }
    }

    #[test]
    fn bad_json_names_the_call() {
        let e = parse_body::<RequestPoolRequest>("/IpamDriver.RequestPool", b"{nope").unwrap_err();
        assert!(matches!(e, DockerError::BadJson { .. }));
        assert!(
            e.to_string()
                .starts_with("invalid JSON in the request to /IpamDriver.RequestPool:"),
            "{e}"
        );
    }
}
