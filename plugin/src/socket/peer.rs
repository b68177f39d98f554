//! Who may call a brindled socket, decided per request from the connecting process's
//! credentials (`SO_PEERCRED`, captured when it connected): root, the user brindled
//! runs as, and, on the local API, the members of `--api-group`.
//!
//! `SO_PEERCRED` carries the caller's uid and primary gid but not its supplementary
//! groups, so membership through `/etc/group` is looked up in the group database
//! (only for callers the credentials alone do not settle).

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use tracing::warn;

use super::{nss, UnixPeer};
use crate::cni::error::{code, CniError};

/// The group named by brindled's `--api-group`, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiGroup {
    pub name: String,
    pub gid: u32,
}

/// Why `--api-group` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("--api-group {name}: no group of that name in the group database (create it with `groupadd {name}`)")]
    Unknown { name: String },
    #[error("--api-group {name}: cannot read the group database: {source}")]
    Lookup {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl ApiGroup {
    /// Resolve a group name (names only: a number is looked up as a name too).
    pub fn lookup(name: &str) -> Result<Self, GroupError> {
        match nss::group_gid(name) {
            Ok(Some(gid)) => Ok(ApiGroup {
                name: name.to_string(),
                gid,
            }),
            Ok(None) => Err(GroupError::Unknown {
                name: name.to_string(),
            }),
            Err(source) => Err(GroupError::Lookup {
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// How a refusal is written, in the protocol of the socket's callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// brindle-cni: a CNI error (`{"code","msg"}`), which it prints.
    Cni,
    /// dockerd: the plugin error `{"Err": ...}`.
    Docker,
}

/// One socket's policy: who may call, and how refusals are written.
#[derive(Debug, Clone)]
pub struct Access {
    pub group: Option<ApiGroup>,
    pub refusal: Refusal,
    /// The uid brindled runs as (root in production; a test's own user otherwise).
    pub own_uid: u32,
}

impl Access {
    /// Root (and brindled's own user) only.
    pub fn root_only(refusal: Refusal) -> Self {
        Self::new(None, refusal)
    }

    /// Root, brindled's own user and, when given, the members of `group`.
    pub fn new(group: Option<ApiGroup>, refusal: Refusal) -> Self {
        // SAFETY: geteuid cannot fail.
        let own_uid = unsafe { libc::geteuid() };
        Access {
            group,
            refusal,
            own_uid,
        }
    }
}

/// What the credentials alone say about a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Refuse,
    /// Allowed if user `uid` is a member of group `gid` in the group database.
    IfMember {
        uid: u32,
        gid: u32,
    },
}

/// Decide from the peer's credentials. Unknown credentials are refused.
pub fn decide(peer: &UnixPeer, own_uid: u32, group: Option<&ApiGroup>) -> Decision {
    let Some(uid) = peer.uid else {
        return Decision::Refuse;
    };
    if uid == 0 || uid == own_uid {
        return Decision::Allow;
    }
    match group {
        None => Decision::Refuse,
        Some(g) if peer.gid == Some(g.gid) => Decision::Allow,
        Some(g) => Decision::IfMember { uid, gid: g.gid },
    }
}

/// The sentence a refused caller sees.
pub fn refusal_message(peer: &UnixPeer, own_uid: u32, group: Option<&ApiGroup>) -> String {
    let who = match peer.uid {
        Some(uid) => format!("uid {uid}"),
        None => "a caller whose credentials it cannot read".to_string(),
    };
    let root = if own_uid == 0 {
        "root".to_string()
    } else {
        format!("root or uid {own_uid}")
    };
    match group {
        Some(g) => format!(
            "brindled refused {who}: only {root} or members of group {} may call",
            g.name
        ),
        None => format!("brindled refused {who}: only {root} may call"),
    }
}

/// `router` with every request checked against `access`.
pub fn layer(router: Router, access: Access) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        Arc::new(access),
        check,
    ))
}

async fn check(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    // Served without connect info (not through `socket::BoundSocket`): nothing to go by.
    let peer = req
        .extensions()
        .get::<ConnectInfo<UnixPeer>>()
        .map(|ConnectInfo(p)| *p)
        .unwrap_or_default();
    let allowed = match decide(&peer, access.own_uid, access.group.as_ref()) {
        Decision::Allow => true,
        Decision::Refuse => false,
        Decision::IfMember { uid, gid } => {
            // The group database may be remote (LDAP, sssd): off the runtime's threads.
            match tokio::task::spawn_blocking(move || nss::user_in_group(uid, gid)).await {
                Ok(Ok(member)) => member,
                Ok(Err(e)) => {
                    warn!(uid, gid, error = %e, "cannot read the group database; refusing");
                    false
                }
                Err(e) => {
                    warn!(uid, gid, error = %e, "group lookup failed; refusing");
                    false
                }
            }
        }
    };
    if allowed {
        return next.run(req).await;
    }
    let msg = refusal_message(&peer, access.own_uid, access.group.as_ref());
    warn!(uid = ?peer.uid, gid = ?peer.gid, pid = ?peer.pid, path = %req.uri().path(), "{msg}");
    refuse(access.refusal, msg)
}

fn refuse(style: Refusal, msg: String) -> Response {
    match style {
        Refusal::Cni => (
            StatusCode::FORBIDDEN,
            Json(CniError::new(code::REFUSED, msg)),
        )
            .into_response(),
        Refusal::Docker => (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "Err": msg })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(uid: Option<u32>, gid: Option<u32>) -> UnixPeer {
        UnixPeer {
            pid: Some(42),
            uid,
            gid,
        }
    }

    fn group() -> ApiGroup {
        ApiGroup {
            name: "brindle".into(),
            gid: 990,
        }
    }

    #[test]
    fn root_and_own_user_are_allowed() {
        assert_eq!(decide(&peer(Some(0), Some(5)), 0, None), Decision::Allow);
        assert_eq!(
            decide(&peer(Some(1000), Some(1000)), 1000, None),
            Decision::Allow
        );
    }

    #[test]
    fn others_are_refused_without_a_group() {
        assert_eq!(
            decide(&peer(Some(65534), Some(65534)), 0, None),
            Decision::Refuse
        );
        // The api group's gid means nothing when no group is configured.
        assert_eq!(
            decide(&peer(Some(65534), Some(990)), 0, None),
            Decision::Refuse
        );
    }

    #[test]
    fn unknown_credentials_are_refused() {
        assert_eq!(
            decide(&peer(None, None), 0, Some(&group())),
            Decision::Refuse
        );
        assert_eq!(
            decide(&peer(None, Some(990)), 0, Some(&group())),
            Decision::Refuse
        );
    }

    #[test]
    fn primary_gid_of_the_group_is_allowed_else_membership_decides() {
        let g = group();
        assert_eq!(
            decide(&peer(Some(1001), Some(990)), 0, Some(&g)),
            Decision::Allow
        );
        assert_eq!(
            decide(&peer(Some(1001), Some(100)), 0, Some(&g)),
            Decision::IfMember {
                uid: 1001,
                gid: 990
            }
        );
    }

    #[test]
    fn messages_name_the_uid_and_the_group() {
        assert_eq!(
            refusal_message(&peer(Some(65534), None), 0, Some(&group())),
            "brindled refused uid 65534: only root or members of group brindle may call"
        );
        assert_eq!(
            refusal_message(&peer(Some(65534), None), 0, None),
            "brindled refused uid 65534: only root may call"
        );
        assert!(refusal_message(&peer(None, None), 1000, None)
            .contains("only root or uid 1000 may call"));
    }

    #[test]
    fn unknown_group_is_an_error_naming_it() {
        let e = ApiGroup::lookup("brindle-no-such-group-x9").unwrap_err();
        assert!(e.to_string().contains("brindle-no-such-group-x9"), "{e}");
        assert_eq!(ApiGroup::lookup("root").unwrap().gid, 0);
    }
}
