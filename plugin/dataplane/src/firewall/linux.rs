//! [`LinuxFirewall`]: the host's real firewall through `nft` and `iptables-restore`.
//!
//! The iptables backend is the one that already holds the host's rules, as kube-proxy
//! and Docker choose it: the legacy tables when they are loaded and hold more rules
//! (or a dropping FORWARD policy) than the nf_tables ones, else nf_tables.

use std::path::PathBuf;

use super::exec::{find_program, require, run};
use super::iptables::{self, FilterState};
use super::nft;
use super::{Backend, Firewall, FirewallSpec, ForwardStatus, SetDelta};
use crate::{DataplaneError, DpFuture};

/// The legacy tables the kernel has loaded in this namespace.
const LEGACY_TABLES: &str = "/proc/net/ip_tables_names";

/// The host firewall through the Debian tools.
#[derive(Debug, Default, Clone)]
pub struct LinuxFirewall;

impl LinuxFirewall {
    pub fn new() -> Self {
        Self
    }

    async fn nft(&self, input: &str) -> Result<String, DataplaneError> {
        let nft = require("nft", "nftables")?;
        run(&nft, &["-f", "-"], input).await
    }

    /// `iptables-save -t filter` of one backend, if its tools are installed.
    async fn save(backend: Backend) -> Result<Option<FilterState>, DataplaneError> {
        let Some(prog) = find_program(backend.save_program()) else {
            return Ok(None);
        };
        let out = run(&prog, &["-t", "filter"], "").await?;
        Ok(Some(FilterState::parse(&out)))
    }

    /// The backend the host uses and its filter table.
    async fn detect() -> Result<(Backend, FilterState), DataplaneError> {
        let nft = Self::save(Backend::Nft).await?;
        let legacy_loaded = std::fs::read_to_string(LEGACY_TABLES)
            .map(|t| t.lines().any(|l| l == "filter"))
            .unwrap_or(false);
        let legacy = match legacy_loaded {
            true => Self::save(Backend::Legacy).await?,
            false => None,
        };
        match (nft, legacy) {
            (Some(n), Some(l)) if l.weight() > n.weight() => Ok((Backend::Legacy, l)),
            (Some(n), _) => Ok((Backend::Nft, n)),
            (None, Some(l)) => Ok((Backend::Legacy, l)),
            (None, None) => match find_program(Backend::Legacy.save_program()) {
                Some(_) => Ok((Backend::Legacy, FilterState::default())),
                None => Err(DataplaneError::MissingProgram {
                    program: "iptables-nft-save or iptables-legacy-save".into(),
                    package: "iptables".into(),
                }),
            },
        }
    }

    async fn restore(backend: Backend, input: &str) -> Result<(), DataplaneError> {
        let prog: PathBuf = require(backend.restore_program(), "iptables")?;
        run(&prog, &["-w", "5", "--noflush"], input).await.map(drop)
    }
}

impl Firewall for LinuxFirewall {
    fn replace_table<'a>(&'a self, spec: &'a FirewallSpec) -> DpFuture<'a, ()> {
        Box::pin(async move { self.nft(&nft::render(spec)).await.map(drop) })
    }

    fn update_sets<'a>(&'a self, delta: &'a SetDelta) -> DpFuture<'a, ()> {
        Box::pin(async move {
            if delta.is_empty() {
                return Ok(());
            }
            self.nft(&nft::render_delta(delta)).await.map(drop)
        })
    }

    fn table_present(&self) -> DpFuture<'_, bool> {
        Box::pin(async move {
            let nft_bin = require("nft", "nftables")?;
            match run(&nft_bin, &["list", "chain", "ip", "brindle", "forward"], "").await {
                Ok(_) => Ok(true),
                Err(DataplaneError::Command { stderr, .. })
                    if stderr.contains("No such file or directory") =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn list_sets(&self) -> DpFuture<'_, Option<Vec<nft::ListedSet>>> {
        Box::pin(async move {
            let nft_bin = require("nft", "nftables")?;
            match run(&nft_bin, &["-j", "list", "table", "ip", "brindle"], "").await {
                Ok(out) => nft::parse_sets(&out)
                    .map(Some)
                    .map_err(|e| DataplaneError::Invalid {
                        what: format!("nft -j output: {e}"),
                    }),
                Err(DataplaneError::Command { stderr, .. })
                    if stderr.contains("No such file or directory") =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn ensure_forward_accept(&self) -> DpFuture<'_, ForwardStatus> {
        Box::pin(async move {
            let (backend, state) = Self::detect().await?;
            if state.is_current() {
                return Ok(ForwardStatus::from_state(backend, &state, false));
            }
            Self::restore(backend, &iptables::render_repair(&state)).await?;
            let (_, after) = Self::detect().await?;
            Ok(ForwardStatus::from_state(backend, &after, true))
        })
    }

    fn forward_status(&self) -> DpFuture<'_, ForwardStatus> {
        Box::pin(async move {
            let (backend, state) = Self::detect().await?;
            Ok(ForwardStatus::from_state(backend, &state, false))
        })
    }

    fn remove_all(&self) -> DpFuture<'_, Vec<String>> {
        Box::pin(async move {
            let mut removed = Vec::new();
            for backend in [Backend::Nft, Backend::Legacy] {
                if backend == Backend::Legacy
                    && !std::fs::read_to_string(LEGACY_TABLES)
                        .map(|t| t.lines().any(|l| l == "filter"))
                        .unwrap_or(false)
                {
                    continue;
                }
                if let Some(state) = Self::save(backend).await? {
                    if let Some(input) = iptables::render_removal(&state) {
                        Self::restore(backend, &input).await?;
                        removed.push(format!(
                            "iptables ({}) chain {} and its FORWARD jump",
                            backend.name(),
                            iptables::CHAIN
                        ));
                    }
                }
            }
            if find_program("nft").is_some() && self.list_sets().await?.is_some() {
                self.nft(&nft::render_removal()).await?;
                removed.push(format!("nftables table {}", nft::TABLE));
            }
            Ok(removed)
        })
    }
}
