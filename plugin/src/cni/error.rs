//! CNI errors: a code from the spec (or brindle's own, ≥ 100), a one-sentence message and
//! optional details. Printed as the one JSON document on stdout when an operation fails.

use brindle_dataplane::DataplaneError;
use brindle_ipam::{IpamError, StoreError};
use serde::{Deserialize, Serialize};

/// Error codes: 1–99 from the CNI spec, 100+ brindle's own (documented in docs/cni.md).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (message names key and value).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist (e.g. its netns is gone during ADD).
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables (message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (reading stdin).
    pub const IO: u32 = 5;
    /// Failed to decode content (JSON on stdin).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later: etcd unreachable, too much contention, brindled went away.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// No address left (pool exhausted, no enabled pool).
    pub const NO_ADDRESS: u32 = 100;
    /// The requested address cannot be had (taken, outside every pool, reserved, ...).
    pub const ADDRESS_REJECTED: u32 = 101;
    /// The kernel refused a dataplane change.
    pub const DATAPLANE: u32 = 102;
    /// The container interface already exists (repeated ADD without DEL).
    pub const INTERFACE_EXISTS: u32 = 103;
    /// CHECK found the attachment missing or different from its ADD result.
    pub const CHECK_FAILED: u32 = 104;
    /// brindled answered the fast-path request with something unusable.
    pub const BRINDLED: u32 = 105;
    /// brindled refused the call: the caller is not root nor in its `--api-group`, or
    /// `CNI_NETNS` lies outside the directories it opens.
    pub const REFUSED: u32 = 106;
    /// Any other failure.
    pub const INTERNAL: u32 = 999;
}

/// One CNI error, as printed on stdout (with `cniVersion` added) and as carried by
/// brindled's local API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", details_suffix(.details))]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

fn details_suffix(details: &Option<String>) -> String {
    details
        .as_ref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    pub fn env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg)
    }

    pub fn config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg)
    }

    pub fn unsupported(msg: impl Into<String>) -> Self {
        Self::new(code::UNSUPPORTED_FIELD, msg)
    }

    /// The JSON printed on stdout.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
        });
        if let Some(d) = &self.details {
            v["details"] = serde_json::Value::String(d.clone());
        }
        v
    }
}

impl From<StoreError> for CniError {
    fn from(e: StoreError) -> Self {
        let c = match e {
            StoreError::Unreachable { .. } => code::TRY_AGAIN,
            StoreError::TlsFile { .. } | StoreError::BadEndpoint(_) => code::INVALID_CONFIG,
            StoreError::Etcd { .. }
            | StoreError::Compacted { .. }
            | StoreError::RecordTooLarge { .. } => code::INTERNAL,
        };
        CniError::new(c, e.to_string())
    }
}

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        let c = match &e {
            IpamError::Store(StoreError::Unreachable { .. })
            | IpamError::Contention { .. }
            | IpamError::Busy(_) => code::TRY_AGAIN,
            IpamError::Store(StoreError::TlsFile { .. } | StoreError::BadEndpoint(_)) => {
                code::INVALID_CONFIG
            }
            IpamError::PoolExhausted { .. }
            | IpamError::AllPoolsExhausted { .. }
            | IpamError::RangeExhausted { .. }
            | IpamError::NoPools
            | IpamError::PoolDisabled(_)
            | IpamError::PoolDeleting(_) => code::NO_ADDRESS,
            IpamError::NotInAnyPool { .. }
            | IpamError::NotInPool { .. }
            | IpamError::PoolEdge { .. }
            | IpamError::Reserved { .. }
            | IpamError::AddressTaken { .. }
            | IpamError::HandleHoldsOther { .. } => code::ADDRESS_REJECTED,
            IpamError::PoolNotFound { .. }
            | IpamError::RangeOutsidePools { .. }
            | IpamError::InvalidHandle(_)
            | IpamError::InvalidAttribute(_) => code::INVALID_CONFIG,
            _ => code::INTERNAL,
        };
        CniError::new(c, e.to_string())
    }
}

impl From<DataplaneError> for CniError {
    fn from(e: DataplaneError) -> Self {
        let c = match &e {
            DataplaneError::AlreadyExists { .. } => code::INTERFACE_EXISTS,
            DataplaneError::Netns { op, .. }
                if op == "open netns" && e.errno() == Some(libc::ENOENT) =>
            {
                code::UNKNOWN_CONTAINER
            }
            DataplaneError::Check { .. } => code::CHECK_FAILED,
            DataplaneError::Invalid { .. } => code::INVALID_CONFIG,
            _ => code::DATAPLANE,
        };
        CniError::new(c, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn json_shape() {
        let e = CniError::config("bad").with_details("why");
        assert_eq!(
            e.to_json("1.0.0"),
            serde_json::json!({"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"})
        );
        assert_eq!(e.to_string(), "bad: why");
        let plain = CniError::env("missing");
        assert!(plain.to_json("1.1.0").get("details").is_none());
    }

    #[test]
    fn codes_from_lower_layers() {
        let unreachable = IpamError::Store(StoreError::Unreachable {
            endpoints: "http://x:1".into(),
            timeout: Duration::from_secs(5),
            detail: "no answer".into(),
        });
        assert_eq!(CniError::from(unreachable).code, code::TRY_AGAIN);
        let taken = IpamError::AddressTaken {
            ip: "10.0.0.1".parse().unwrap(),
            handle: "h".into(),
        };
        assert_eq!(CniError::from(taken).code, code::ADDRESS_REJECTED);
        assert_eq!(CniError::from(IpamError::NoPools).code, code::NO_ADDRESS);
        let exists = DataplaneError::AlreadyExists {
            op: "create veth".into(),
            what: "interface eth0".into(),
        };
        assert_eq!(CniError::from(exists).code, code::INTERFACE_EXISTS);
        let gone = DataplaneError::Netns {
            op: "open netns".into(),
            path: "/run/netns/x".into(),
            cause: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert_eq!(CniError::from(gone).code, code::UNKNOWN_CONTAINER);
    }
}
