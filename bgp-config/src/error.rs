//! Errors: each names the bad value and what would be valid, in one sentence.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Everything this crate can refuse.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// An AS number outside 1..=4294967295, or text that is no AS number.
    #[error(
        "invalid AS number {value:?}: use 1 to 4294967295 (asplain) or 0.1 to 65535.65535 (asdot)"
    )]
    InvalidAs {
        /// The offending value, as given.
        value: String,
    },

    /// A peer name that is empty, too long or has other characters.
    #[error(
        "invalid BGP peer name {name:?}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidPeerName {
        /// The offending name.
        name: String,
    },

    /// A node name that cannot be stored or rendered.
    #[error("invalid node name {name:?}: use 1 to 250 printable ASCII characters without '/'")]
    InvalidNodeName {
        /// The offending name.
        name: String,
    },

    /// A password BIRD cannot take. The password itself is never printed.
    #[error("invalid BGP password for {owner}: it {problem}; a password is 1 to 80 bytes without '\"' or line breaks")]
    InvalidPassword {
        /// Whose password (`peer "tor1"`, `the node mesh`).
        owner: String,
        /// What is wrong, e.g. `contains '"'`.
        problem: String,
    },

    /// An address that cannot serve in that role.
    #[error("invalid {what} {addr}: {reason}")]
    InvalidAddress {
        /// The role (`IP of node "a"`, `address of peer "tor1"`).
        what: String,
        /// The offending address.
        addr: Ipv4Addr,
        /// Why, and what would be valid.
        reason: String,
    },

    /// A timer or counter out of range.
    #[error("invalid {name} {value}: {valid}")]
    InvalidSetting {
        /// Setting name as the user knows it (`restart_time`, `timers.hold`).
        name: String,
        /// The offending value.
        value: u64,
        /// The valid range, as a sentence fragment.
        valid: String,
    },

    /// Two peers (or two nodes) that would be the same BGP session.
    #[error(
        "{what} {ip} is used twice, by {first:?} and by {second:?}: each needs its own address"
    )]
    DuplicateAddress {
        /// `node IP`, `global peer address`, ...
        what: String,
        /// The shared address.
        ip: Ipv4Addr,
        /// The first name using it.
        first: String,
        /// The second name using it.
        second: String,
    },

    /// Two peers or two nodes with one name.
    #[error("{what} name {name:?} is used twice: names must be unique")]
    DuplicateName {
        /// `BGP peer`, `node`.
        what: String,
        /// The repeated name.
        name: String,
    },

    /// An unknown output format name.
    #[error("invalid format {value:?}: use one of {valid}")]
    InvalidFormat {
        /// The offending format name.
        value: String,
        /// The valid names, comma separated.
        valid: &'static str,
    },

    /// The `bird` binary could not be started.
    #[error("cannot run BIRD at {}: {source} (install Debian's bird2 or pass the right path)", bin.display())]
    BirdUnavailable {
        /// The path that was tried.
        bin: PathBuf,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },

    /// `bird -p` refused the configuration.
    #[error("BIRD rejected the configuration: {message}")]
    BirdRejected {
        /// BIRD's own message (`bird: FILE:LINE:COL ...`).
        message: String,
    },

    /// The configuration could not be written to a temporary file for checking.
    #[error("cannot write a temporary BIRD configuration in {}: {source}", dir.display())]
    TempFile {
        /// The directory tried.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
