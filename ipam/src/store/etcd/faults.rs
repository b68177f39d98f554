//! What an etcd error means for the next attempt: try another member, wait and retry,
//! log in again, or give up; and whether a refused write may still have been applied.

use tonic::Code;

/// How one failed attempt should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// The member is gone, stopped answering or dropped the connection: use another.
    Down,
    /// The member answered but cannot serve now (no leader, leader changed, server-side
    /// timeout, overload): retry shortly, preferably on another member.
    Transient,
    /// The member does not know our auth token (expired, or the member restarted and
    /// lost its in-memory tokens): log in to it again.
    Auth,
    /// A real answer (bad credentials, permission denied, bad request): do not retry.
    Fatal,
}

/// One classified failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Failure {
    pub fault: Fault,
    /// The request may have reached raft and been applied: a compare-and-swap whose
    /// outcome is unknown must not be reported as either result without a re-read.
    pub maybe_applied: bool,
}

impl Failure {
    const fn new(fault: Fault, maybe_applied: bool) -> Self {
        Self {
            fault,
            maybe_applied,
        }
    }
}

/// Classify an etcd-client error.
pub(super) fn classify(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    match e {
        E::TransportError(_) | E::IoError(_) => Failure::new(Fault::Down, true),
        E::GRpcStatus(s) => classify_status(s.code(), s.message()),
        // The client could not even build the request (bad URI, bad metadata): nothing
        // was sent and retrying cannot help.
        _ => Failure::new(Fault::Fatal, false),
    }
}

/// Classify a gRPC status from etcd (messages: etcd api/v3rpc/rpctypes/error.go).
fn classify_status(code: Code, message: &str) -> Failure {
    // Rejected before the request was proposed to raft: safe to send again anywhere.
    const REJECTED_TRANSIENT: [&str; 4] = [
        "etcdserver: no leader",
        "etcdserver: too many requests",
        "etcdserver: not capable",
        "etcdserver: revision of auth store is old",
    ];
    const TOKEN: [&str; 2] = [
        "etcdserver: invalid auth token",
        "etcdserver: user name is empty",
    ];
    if TOKEN.contains(&message) {
        return Failure::new(Fault::Auth, false);
    }
    if REJECTED_TRANSIENT.contains(&message) {
        return Failure::new(Fault::Transient, false);
    }
    if message.starts_with("etcdserver: ") && code == Code::Unavailable {
        // leader changed, request timed out (due to leader failure / connection lost),
        // server stopped, unhealthy: the proposal may have been committed.
        let fault = if message == "etcdserver: server stopped" {
            Fault::Down
        } else {
            Fault::Transient
        };
        return Failure::new(fault, true);
    }
    match code {
        // Raised by tonic/hyper for a refused, reset or silent connection.
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded => {
            Failure::new(Fault::Down, true)
        }
        Code::Unauthenticated => Failure::new(Fault::Auth, false),
        _ => Failure::new(Fault::Fatal, false),
    }
}

/// etcd refused a read at a revision that compaction removed.
pub(super) fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == Code::OutOfRange && s.message().contains("required revision has been compacted"))
}

/// Our client refused an answer larger than its message limit (4 MiB by default):
/// the same read asks for fewer keys.
pub(super) fn is_too_large(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if s.code() == Code::OutOfRange && s.message().contains("message length too large"))
}

/// The size of the answer [`is_too_large`] refused, when the client said it.
pub(super) fn too_large_size(e: &etcd_client::Error) -> Option<usize> {
    match e {
        etcd_client::Error::GRpcStatus(s) if is_too_large(e) => {
            super::paging::found_bytes(s.message())
        }
        _ => None,
    }
}

/// "tcp connect error: Connection refused (os error 111)" rather than the outer layer only.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

/// A short description for the `Unreachable` message: the gRPC message alone when
/// etcd answered, the whole chain for transport trouble.
pub(super) fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => {
            let message = s.message();
            match std::error::Error::source(s).map(error_chain) {
                Some(chain) if chain.contains(message) => chain,
                Some(chain) if !message.contains(&chain) => format!("{message}: {chain}"),
                _ => message.to_string(),
            }
        }
        _ => error_chain(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, message))
    }

    #[test]
    fn etcd_answers_are_classified() {
        struct Case {
            name: &'static str,
            code: Code,
            message: &'static str,
            fault: Fault,
            maybe_applied: bool,
        }
        let cases = [
            Case {
                name: "require-leader rejection",
                code: Code::Unavailable,
                message: "etcdserver: no leader",
                fault: Fault::Transient,
                maybe_applied: false,
            },
            Case {
                name: "leader changed while the proposal waited",
                code: Code::Unavailable,
                message: "etcdserver: leader changed",
                fault: Fault::Transient,
                maybe_applied: true,
            },
            Case {
                name: "server-side timeout",
                code: Code::Unavailable,
                message: "etcdserver: request timed out",
                fault: Fault::Transient,
                maybe_applied: true,
            },
            Case {
                name: "member shutting down",
                code: Code::Unavailable,
                message: "etcdserver: server stopped",
                fault: Fault::Down,
                maybe_applied: true,
            },
            Case {
                name: "connection refused",
                code: Code::Unavailable,
                message: "error trying to connect: tcp connect error",
                fault: Fault::Down,
                maybe_applied: true,
            },
            Case {
                name: "expired token",
                code: Code::Unauthenticated,
                message: "etcdserver: invalid auth token",
                fault: Fault::Auth,
                maybe_applied: false,
            },
            Case {
                name: "bad password",
                code: Code::InvalidArgument,
                message: "etcdserver: authentication failed, invalid user ID or password",
                fault: Fault::Fatal,
                maybe_applied: false,
            },
            Case {
                name: "permission denied",
                code: Code::PermissionDenied,
                message: "etcdserver: permission denied",
                fault: Fault::Fatal,
                maybe_applied: false,
            },
            Case {
                name: "stale auth revision",
                code: Code::InvalidArgument,
                message: "etcdserver: revision of auth store is old",
                fault: Fault::Transient,
                maybe_applied: false,
            },
        ];
        for c in cases {
            let got = classify(&status(c.code, c.message));
            assert_eq!(got.fault, c.fault, "{}", c.name);
            assert_eq!(got.maybe_applied, c.maybe_applied, "{}", c.name);
        }
    }

    #[test]
    fn a_compacted_revision_is_recognised_and_not_retried() {
        let e = status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted",
        );
        assert!(is_compacted(&e));
        assert_eq!(classify(&e).fault, Fault::Fatal);
        assert!(!is_compacted(&status(
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision"
        )));
        let big = status(
            Code::OutOfRange,
            "Error, decoded message length too large: found 6291456 bytes, the limit is: 4194304 bytes",
        );
        assert!(is_too_large(&big) && !is_compacted(&big));
        assert_eq!(too_large_size(&big), Some(6_291_456));
    }

    #[test]
    fn client_side_errors_are_fatal() {
        let e = etcd_client::Error::InvalidArgs("empty endpoints".into());
        assert_eq!(classify(&e).fault, Fault::Fatal);
    }
}
