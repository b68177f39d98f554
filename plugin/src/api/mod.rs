//! brindled's local API for brindle-cni (the fast path: warm etcd connection, cached
//! blocks, one round trip per CNI operation).
//!
//! HTTP/1.1 on the unix socket `--api-socket` (default `/run/brindle/brindled.sock`,
//! mode 0600, or 0660 for `--api-group`). Every request is a `POST` with a JSON body;
//! every answer is JSON:
//!
//! | path | body | 200 answer |
//! |---|---|---|
//! | `/v1/cni/add` | [`AddRequest`] | [`AddReply`] |
//! | `/v1/cni/del` | [`DelRequest`] | `{}` |
//! | `/v1/cni/check` | [`CheckRequest`] | `{}` |
//! | `/v1/cni/gc` | [`GcRequest`] | [`GcReply`] |
//! | `/v1/cni/status` | [`StatusRequest`] | `{}` |
//!
//! A failed operation answers 500 with a [`CniError`] (`{"code","msg","details"}`), which
//! the plugin prints as its CNI error. A request for another node or key prefix than
//! brindled serves, or naming a netns path brindled cannot see, answers 409, and a
//! body that does not decode 400: the plugin then does the work itself against etcd.
//! A body over [`MAX_BODY_BYTES`] answers 413 with a CNI error naming the limit.
//! A caller other than root or a member of `--api-group` (`crate::socket::peer`), or a
//! netns path outside the directories brindled opens ([`netns_path`]), answers 403
//! with a CNI error of code 106, which the plugin prints: no second attempt directly.

mod attachments;
pub mod netns_path;

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use brindle_dataplane::{Dataplane, LinuxDataplane, Reaper};
use brindle_ipam::locks::KeyedLocks;
use brindle_ipam::{Ipam, Keys, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cni::client::paths;
use crate::cni::error::{code, CniError};
use crate::cni::ops::{
    self, AddRequest, CheckRequest, Ctx, DelRequest, GcRequest, StatusRequest, Target,
};
use crate::cni::MAX_CONFIG_BYTES;
use crate::write_behind::WriteBehind;
use attachments::Attachments;
use netns_path::NetnsDirs;

/// What the API needs from brindled (which implements it on its node state).
pub trait Backend: Send + Sync + 'static {
    type Store: Store;
    /// The node brindled serves.
    fn node(&self) -> &str;
    /// The etcd key prefix brindled serves.
    fn prefix(&self) -> &str;
    /// brindled's IPAM (its warm etcd connection and cached blocks).
    fn ipam(&self) -> &Ipam<Self::Store>;
    /// The shared dataplane, used when the API cannot open a netlink socket of its own.
    fn dataplane(&self) -> Arc<dyn Dataplane>;
    /// Who finishes veth deletions after DEL has answered.
    fn reaper(&self) -> &Reaper;
    /// Who commits DEL's release after DEL has answered.
    fn write_behind(&self) -> &WriteBehind;
    /// The node's per-address locks, shared with the Docker driver.
    fn address_locks(&self) -> &KeyedLocks<Ipv4Addr>;
}

/// What the handlers share: the backend, the dataplane CNI requests use and the
/// directories whose netns files they may name.
pub struct Api<B: Backend> {
    pub backend: Arc<B>,
    pub dataplane: Arc<dyn Dataplane>,
    pub netns_dirs: NetnsDirs,
    /// Orders each attachment's requests, and the releases DELs queued, per attachment
    /// and address.
    pub attachments: Attachments,
}

/// Largest request body brindled reads. A request carries fields brindle-cni took from
/// its stdin, which it caps at [`MAX_CONFIG_BYTES`]; twice that leaves room for JSON
/// escaping them again.
pub const MAX_BODY_BYTES: usize = 2 * MAX_CONFIG_BYTES as usize;

/// The routes served on `--api-socket`.
///
/// CNI requests get a netlink socket of their own (when one can be opened here, in the
/// host namespace, inside the runtime), so a veth being built never queues behind the
/// agent's route and link dumps on the shared one.
pub fn router<B: Backend>(backend: Arc<B>, netns_dirs: NetnsDirs) -> Router {
    let dataplane: Arc<dyn Dataplane> = match LinuxDataplane::connect() {
        Ok(dp) => Arc::new(dp),
        Err(e) => {
            tracing::warn!(%e, "cni api: no netlink socket of its own, sharing the agent's");
            backend.dataplane()
        }
    };
    let backend_locks = backend.address_locks().clone();
    let state = Arc::new(Api {
        backend,
        dataplane,
        netns_dirs,
        attachments: Attachments::new(backend_locks),
    });
    Router::new()
        .route(paths::ADD, post(add::<B>))
        .route(paths::DEL, post(del::<B>))
        .route(paths::CHECK, post(check::<B>))
        .route(paths::GC, post(gc::<B>))
        .route(paths::STATUS, post(status::<B>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

type Rejection = Box<Response>;

fn error_response(status: StatusCode, e: CniError) -> Response {
    (status, Json(e)).into_response()
}

/// A request body read whole, or the CNI error answering one that could not be read
/// (over [`MAX_BODY_BYTES`]: 413).
struct CniBody(Bytes);

impl<S: Send + Sync> FromRequest<S> for CniBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        Bytes::from_request(req, state)
            .await
            .map(CniBody)
            .map_err(|e| {
                error_response(
                    e.status(),
                    CniError::new(
                        code::BRINDLED,
                        format!(
                            "brindled cannot read the request body ({}): it takes at most {MAX_BODY_BYTES} bytes",
                            e.body_text()
                        ),
                    ),
                )
            })
    }
}

/// Decode the body and make sure it is meant for this brindled.
fn accept<T: DeserializeOwned, B: Backend>(
    api: &Api<B>,
    body: &[u8],
    target: impl Fn(&T) -> &Target,
) -> Result<T, Rejection> {
    let req: T = serde_json::from_slice(body).map_err(|e| {
        Box::new(error_response(
            StatusCode::BAD_REQUEST,
            CniError::new(
                code::BRINDLED,
                format!("brindled cannot decode the request: {e}"),
            ),
        ))
    })?;
    let st = &api.backend;
    let t = target(&req);
    let ours = Keys::new(st.prefix());
    if t.node != st.node() || Keys::new(&t.prefix) != ours {
        return Err(Box::new(error_response(
            StatusCode::CONFLICT,
            CniError::new(
                code::BRINDLED,
                format!(
                    "brindled serves node {} with prefix {}, not node {} with prefix {}",
                    st.node(),
                    st.prefix(),
                    t.node,
                    t.prefix
                ),
            ),
        )));
    }
    Ok(req)
}

fn ctx<B: Backend>(api: &Api<B>) -> Ctx<'_, B::Store> {
    Ctx {
        ipam: api.backend.ipam(),
        dataplane: Some(api.dataplane.as_ref()),
        node: api.backend.node(),
        reaper: Some(api.backend.reaper()),
    }
}

fn answer<T: Serialize>(r: Result<T, CniError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

async fn add<B: Backend>(State(st): State<Arc<Api<B>>>, CniBody(body): CniBody) -> Response {
    match accept(&st, &body, |r: &AddRequest| &r.target) {
        Ok(req) => match netns_usable(&st, req.mode, req.netns.as_deref()) {
            Ok(()) => answer(attachments::add(&st, &req).await),
            Err(r) => *r,
        },
        Err(r) => *r,
    }
}

/// The netns a main-mode request makes brindled enter (IPAM mode never opens it).
///
/// Outside the allowed directories it is refused (403): the plugin prints the error.
/// brindled may also run in other mount or PID namespaces than the runtime (a
/// container without `/run/netns` or `--pid host`): an allowed path it cannot see is
/// declined (409), and the plugin, which runs in the runtime's namespaces, does the
/// work itself.
fn netns_usable<B: Backend>(
    api: &Api<B>,
    mode: ops::Mode,
    netns: Option<&str>,
) -> Result<(), Rejection> {
    let Some(path) = netns.filter(|_| mode == ops::Mode::Main) else {
        return Ok(());
    };
    if let Err(e) = api.netns_dirs.check(path) {
        return Err(Box::new(error_response(
            StatusCode::FORBIDDEN,
            CniError::new(code::REFUSED, e.to_string()),
        )));
    }
    if !std::path::Path::new(path).exists() {
        return Err(Box::new(error_response(
            StatusCode::CONFLICT,
            CniError::new(code::BRINDLED, format!("brindled cannot see netns {path}")),
        )));
    }
    Ok(())
}

async fn del<B: Backend>(State(st): State<Arc<Api<B>>>, CniBody(body): CniBody) -> Response {
    match accept(&st, &body, |r: &DelRequest| &r.target) {
        Ok(req) => answer(attachments::del(&st, &req).await),
        Err(r) => *r,
    }
}

async fn check<B: Backend>(State(st): State<Arc<Api<B>>>, CniBody(body): CniBody) -> Response {
    match accept(&st, &body, |r: &CheckRequest| &r.target) {
        Ok(req) => match netns_usable(&st, req.mode, req.netns.as_deref()) {
            Ok(()) => answer(attachments::check(&st, &req).await),
            Err(r) => *r,
        },
        Err(r) => *r,
    }
}

async fn gc<B: Backend>(State(st): State<Arc<Api<B>>>, CniBody(body): CniBody) -> Response {
    match accept(&st, &body, |r: &GcRequest| &r.target) {
        Ok(req) => answer(ops::gc(&ctx(&st), &req).await),
        Err(r) => *r,
    }
}

async fn status<B: Backend>(State(st): State<Arc<Api<B>>>, CniBody(body): CniBody) -> Response {
    match accept(&st, &body, |r: &StatusRequest| &r.target) {
        Ok(req) => answer(ops::status(&ctx(&st), &req).await),
        Err(r) => *r,
    }
}
