//! The host firewall: brindle's accept path through the chain that drops forwarded
//! traffic, isolation between networks, outgoing NAT (docs/firewall.md).
//!
//! Two parts, because of how netfilter evaluates packets:
//! - **iptables** (`iptables.rs`): real hosts drop forwarded traffic (dockerd sets
//!   FORWARD's policy to DROP when it turns forwarding on; ufw and firewalld do the
//!   same), and only an accept in that chain lets it through. FORWARD jumps to
//!   `BRINDLE-FORWARD`, in whichever backend (nf_tables or legacy) the host uses.
//! - **nftables** (`nft.rs`): table `ip brindle` with per-network address sets; it
//!   drops traffic between networks before iptables' chains run (a drop anywhere is
//!   final) and masquerades pools with outgoing NAT. A new endpoint is a set update.
//!
//! Rendering is pure; [`LinuxFirewall`] runs `nft -f -` and `iptables-restore` with
//! one batch on stdin per change set; [`FakeFirewall`] records for tests without root.

mod exec;
mod fake;
pub mod iptables;
mod linux;
pub mod nft;
mod spec;

pub use fake::FakeFirewall;
pub use linux::LinuxFirewall;
pub use nft::ListedSet;
pub use spec::{FirewallSpec, Guard, SetDelta};

use serde::Serialize;

use super::DpFuture;

/// An iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// `iptables-nft`: iptables rules kept in nf_tables (Debian 11 and later).
    Nft,
    /// `iptables-legacy`: the x_tables kernel tables.
    Legacy,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }

    fn save_program(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-save",
            Backend::Legacy => "iptables-legacy-save",
        }
    }

    fn restore_program(self) -> &'static str {
        match self {
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

/// What FORWARD looks like to brindle's endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForwardStatus {
    /// The backend holding the host's rules.
    pub backend: Backend,
    /// FORWARD's policy (`ACCEPT`, `DROP`); `None` when the chain does not exist.
    pub policy: Option<String>,
    /// `BRINDLE-FORWARD` holds its rules and FORWARD jumps to it.
    pub rules_current: bool,
    /// This call had to (re)install them.
    pub repaired: bool,
}

impl ForwardStatus {
    fn from_state(backend: Backend, state: &iptables::FilterState, repaired: bool) -> Self {
        Self {
            backend,
            policy: state.forward_policy.clone(),
            rules_current: state.is_current(),
            repaired,
        }
    }

    /// Whether forwarded endpoint traffic passes FORWARD.
    pub fn passes(&self) -> bool {
        self.rules_current || self.policy.as_deref() != Some("DROP")
    }
}

/// Everything the agent and the CLI ask of the host firewall.
pub trait Firewall: Send + Sync {
    /// Replace brindle's nftables table with `spec`'s, atomically.
    fn replace_table<'a>(&'a self, spec: &'a FirewallSpec) -> DpFuture<'a, ()>;

    /// Apply set element changes in one batch; fails (changing nothing) when an
    /// element to delete is missing, after which the caller replaces the table.
    fn update_sets<'a>(&'a self, delta: &'a SetDelta) -> DpFuture<'a, ()>;

    /// Whether brindle's table (with its forward chain) is there: a cheap check.
    fn table_present(&self) -> DpFuture<'_, bool>;

    /// brindle's table's sets with their element counts; `None` when the table is gone.
    fn list_sets(&self) -> DpFuture<'_, Option<Vec<ListedSet>>>;

    /// Make sure FORWARD accepts endpoint traffic (chain and jump in place).
    fn ensure_forward_accept(&self) -> DpFuture<'_, ForwardStatus>;

    /// FORWARD as it is, changing nothing.
    fn forward_status(&self) -> DpFuture<'_, ForwardStatus>;

    /// Remove brindle's chain, jump and table; returns what was removed.
    fn remove_all(&self) -> DpFuture<'_, Vec<String>>;
}
