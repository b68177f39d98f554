//! The dataplane's error type.
//!
//! Every message is lowercase and colon-chained and already ends with the cause, e.g.
//! `create veth brl0123456789a (peer eth0 in /run/netns/c1): file exists (EEXIST)`, so
//! callers can hand `to_string()` straight to Docker or a CNI error. For that reason the
//! underlying error is kept in a `cause` field rather than exposed as `source()` (which
//! would print it twice in `{:#}` chains).

use std::io;
use std::path::PathBuf;

use nix::errno::Errno;

/// Why a dataplane operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel (or the netlink socket) refused a request.
    #[error("{op}: {}", describe_netlink(*.errno, .cause))]
    Netlink {
        /// What we asked, naming the objects: `add route 10.0.0.5/32 dev brl1`.
        op: String,
        /// The positive errno from the kernel's NLMSG_ERROR, if there was one.
        errno: Option<i32>,
        /// The rtnetlink error as returned.
        cause: rtnetlink::Error,
    },
    /// An object we were about to create exists already (`EEXIST`), with the culprit named.
    #[error("{op}: {what} already exists")]
    AlreadyExists {
        /// What we tried to do.
        op: String,
        /// The object in the way: `interface eth0 in /run/netns/c1`.
        what: String,
    },
    /// Something the operation needs is not there.
    #[error("{what} not found")]
    NotFound {
        /// The missing object: `interface brl0123 in the host namespace`.
        what: String,
    },
    /// Opening or entering a network namespace failed.
    #[error("{op} {}: {}", .path.display(), describe_io(.cause))]
    Netns {
        /// `open netns`, `enter netns`, ...
        op: String,
        /// The namespace file.
        path: PathBuf,
        /// The OS error.
        cause: io::Error,
    },
    /// Another OS-level failure (opening a netlink socket, spawning a thread).
    #[error("{op}: {}", describe_io(.cause))]
    Io {
        /// What we tried: `open netlink socket`.
        op: String,
        /// The OS error.
        cause: io::Error,
    },
    /// Writing a `/proc/sys` file failed.
    #[error("write {value} to {}: {}", .path.display(), describe_io(.cause))]
    Sysctl {
        /// The file, e.g. `/proc/sys/net/ipv4/conf/brl1/proxy_arp`.
        path: PathBuf,
        /// What we wrote.
        value: String,
        /// The OS error.
        cause: io::Error,
    },
    /// CNI CHECK found the endpoint incomplete.
    #[error("check endpoint {endpoint}: {}", .problems.join("; "))]
    Check {
        /// Host interface of the endpoint checked.
        endpoint: String,
        /// One entry per missing or wrong item.
        problems: Vec<String>,
    },
    /// The caller passed something unusable (bad interface name, missing netns, ...).
    #[error("invalid {what}")]
    Invalid {
        /// What is wrong and why.
        what: String,
    },
    /// A firewall tool brindle runs is not installed.
    #[error("{program} not found in PATH (install the Debian package {package})")]
    MissingProgram {
        /// The binary: `nft`, `iptables-nft-restore`, ...
        program: String,
        /// The package that provides it.
        package: String,
    },
    /// A firewall tool ran and failed.
    #[error("{command}: {status}: {}", .stderr.trim())]
    Command {
        /// The command line (program and fixed arguments; input goes on stdin).
        command: String,
        /// `exit status 1`, `timed out after 10s`, or the spawn error.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// An operation failed and undoing its partial work failed too.
    #[error("{error} (cleanup also failed: {cleanup})")]
    Rollback {
        /// The original failure.
        error: Box<DataplaneError>,
        /// The failure while removing what had been created.
        cleanup: Box<DataplaneError>,
    },
}

impl DataplaneError {
    /// Wraps an rtnetlink error, keeping the kernel's errno.
    pub fn netlink(op: impl Into<String>, cause: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            errno: netlink_errno(&cause),
            cause,
        }
    }

    /// A netlink error with a given errno, as the kernel would return it (for fakes).
    pub fn from_errno(op: impl Into<String>, errno: i32) -> Self {
        let mut msg = rtnetlink::packet_core::ErrorMessage::default();
        msg.code = std::num::NonZeroI32::new(-errno.abs());
        Self::netlink(op, rtnetlink::Error::NetlinkError(msg))
    }

    /// The positive OS errno behind this error, if any (`EEXIST` for
    /// [`DataplaneError::AlreadyExists`]); for a rollback, the original error's.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink { errno, .. } => *errno,
            Self::AlreadyExists { .. } => Some(libc::EEXIST),
            Self::Netns { cause, .. } | Self::Sysctl { cause, .. } | Self::Io { cause, .. } => {
                cause.raw_os_error()
            }
            Self::Rollback { error, .. } => error.errno(),
            Self::NotFound { .. }
            | Self::Check { .. }
            | Self::Invalid { .. }
            | Self::MissingProgram { .. }
            | Self::Command { .. } => None,
        }
    }

    /// True for "no such device/route/file" errors, which deletes treat as success.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
            || matches!(
                self.errno(),
                Some(libc::ENODEV | libc::ESRCH | libc::ENOENT)
            )
    }
}

/// The positive errno of an NLMSG_ERROR (the kernel sends it negated).
pub(crate) fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| c.get().abs()),
        _ => None,
    }
}

/// `file exists (EEXIST)`: the C library's text, lowercased, plus the symbolic name.
fn describe_errno(errno: i32) -> String {
    let e = Errno::from_raw(errno);
    format!("{} ({e:?})", lower_first(e.desc()))
}

fn describe_netlink(errno: Option<i32>, cause: &rtnetlink::Error) -> String {
    match errno {
        Some(e) => describe_errno(e),
        None => lower_first(&cause.to_string()),
    }
}

fn describe_io(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(e) => describe_errno(e),
        None => lower_first(&err.to_string()),
    }
}

fn lower_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netlink_error_keeps_errno_and_reads_well() {
        let e = DataplaneError::from_errno("create veth brl1 (peer eth0)", libc::EEXIST);
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert_eq!(
            e.to_string(),
            "create veth brl1 (peer eth0): file exists (EEXIST)"
        );
        assert!(!e.is_not_found());
        let gone = DataplaneError::from_errno("delete link brl1", libc::ENODEV);
        assert!(gone.is_not_found());
    }

    #[test]
    fn io_backed_errors_name_the_path() {
        let e = DataplaneError::Netns {
            op: "open netns".into(),
            path: "/run/netns/nope".into(),
            cause: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(
            e.to_string(),
            "open netns /run/netns/nope: no such file or directory (ENOENT)"
        );
        assert_eq!(e.errno(), Some(libc::ENOENT));
        let s = DataplaneError::Sysctl {
            path: "/proc/sys/net/ipv4/ip_forward".into(),
            value: "1".into(),
            cause: io::Error::from_raw_os_error(libc::EACCES),
        };
        assert_eq!(
            s.to_string(),
            "write 1 to /proc/sys/net/ipv4/ip_forward: permission denied (EACCES)"
        );
    }

    #[test]
    fn check_and_rollback_messages() {
        let c = DataplaneError::Check {
            endpoint: "brl1".into(),
            problems: vec![
                "no address 10.0.0.5/32 on eth0".into(),
                "no default route".into(),
            ],
        };
        assert_eq!(
            c.to_string(),
            "check endpoint brl1: no address 10.0.0.5/32 on eth0; no default route"
        );
        let r = DataplaneError::Rollback {
            error: Box::new(DataplaneError::from_errno("add route", libc::EEXIST)),
            cleanup: Box::new(DataplaneError::from_errno("delete link brl1", libc::EBUSY)),
        };
        assert_eq!(r.errno(), Some(libc::EEXIST));
        assert!(
            r.to_string()
                .contains("(cleanup also failed: delete link brl1:"),
            "{r}"
        );
        let x = DataplaneError::AlreadyExists {
            op: "create veth brl1".into(),
            what: "interface brl1".into(),
        };
        assert_eq!(
            x.to_string(),
            "create veth brl1: interface brl1 already exists"
        );
        assert_eq!(x.errno(), Some(libc::EEXIST));
    }
}
