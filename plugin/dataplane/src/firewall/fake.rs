//! [`FakeFirewall`]: an in-memory [`Firewall`] for unit tests without root, with the
//! real one's semantics where the agent depends on them (a delta deleting a missing
//! element fails; an admin can flush the chain or drop the table).

use std::sync::{Mutex, MutexGuard};

use super::{Backend, Firewall, FirewallSpec, ForwardStatus, ListedSet, SetDelta};
use crate::{DataplaneError, DpFuture};

#[derive(Debug, Default)]
struct State {
    table: Option<FirewallSpec>,
    forward_rules: bool,
    replaces: usize,
    deltas: usize,
    repairs: usize,
    no_nft: bool,
    no_iptables: bool,
}

/// A recording firewall.
#[derive(Debug, Default)]
pub struct FakeFirewall {
    state: Mutex<State>,
}

impl FakeFirewall {
    pub fn new() -> Self {
        Self::default()
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The table as it is now.
    pub fn table(&self) -> Option<FirewallSpec> {
        self.st().table.clone()
    }

    /// (full replaces, element deltas, FORWARD repairs) so far.
    pub fn counts(&self) -> (usize, usize, usize) {
        let s = self.st();
        (s.replaces, s.deltas, s.repairs)
    }

    /// What an admin's `iptables -F FORWARD` does.
    pub fn flush_forward(&self) {
        self.st().forward_rules = false;
    }

    /// What an admin's `nft flush ruleset` does to brindle's table.
    pub fn drop_table(&self) {
        self.st().table = None;
    }

    /// Behave as a host without nft and iptables.
    pub fn without_tools(&self) {
        let mut s = self.st();
        s.no_nft = true;
        s.no_iptables = true;
    }

    /// Behave as a host with iptables but without nft.
    pub fn without_nft(&self) {
        self.st().no_nft = true;
    }

    fn nft(&self) -> Result<(), DataplaneError> {
        match self.st().no_nft {
            true => Err(DataplaneError::MissingProgram {
                program: "nft".into(),
                package: "nftables".into(),
            }),
            false => Ok(()),
        }
    }

    fn iptables(&self) -> Result<(), DataplaneError> {
        match self.st().no_iptables {
            true => Err(DataplaneError::MissingProgram {
                program: "iptables-nft-save or iptables-legacy-save".into(),
                package: "iptables".into(),
            }),
            false => Ok(()),
        }
    }
}

impl Firewall for FakeFirewall {
    fn replace_table<'a>(&'a self, spec: &'a FirewallSpec) -> DpFuture<'a, ()> {
        Box::pin(async move {
            self.nft()?;
            let mut s = self.st();
            s.table = Some(spec.clone());
            s.replaces += 1;
            Ok(())
        })
    }

    fn update_sets<'a>(&'a self, delta: &'a SetDelta) -> DpFuture<'a, ()> {
        Box::pin(async move {
            self.nft()?;
            let mut s = self.st();
            let missing = |what: String| DataplaneError::Command {
                command: "nft -f -".into(),
                status: "exit status: 1".into(),
                stderr: format!("Error: Could not process rule: No such file or directory: {what}"),
            };
            let mut table = s.table.clone().ok_or_else(|| missing("table".into()))?;
            for ip in &delta.del_local {
                table
                    .local
                    .remove(ip)
                    .ok_or_else(|| missing(ip.to_string()))?;
            }
            for (seg, ips) in &delta.del_members {
                let set = table
                    .members
                    .get_mut(seg)
                    .ok_or_else(|| missing(seg.clone()))?;
                for ip in ips {
                    if !set.remove(ip) {
                        return Err(missing(ip.to_string()));
                    }
                }
            }
            for (seg, ips) in &delta.add_members {
                let set = table
                    .members
                    .get_mut(seg)
                    .ok_or_else(|| missing(seg.clone()))?;
                set.extend(ips.iter().copied());
            }
            for (ip, guard) in &delta.add_local {
                table.local.insert(*ip, guard.clone());
            }
            s.table = Some(table);
            s.deltas += 1;
            Ok(())
        })
    }

    fn table_present(&self) -> DpFuture<'_, bool> {
        Box::pin(async move {
            self.nft()?;
            Ok(self.st().table.is_some())
        })
    }

    fn list_sets(&self) -> DpFuture<'_, Option<Vec<ListedSet>>> {
        Box::pin(async move {
            self.nft()?;
            Ok(self.st().table.as_ref().map(|t| {
                t.members
                    .iter()
                    .map(|(seg, ips)| ListedSet {
                        name: super::nft::members_set(seg),
                        comment: Some(seg.clone()),
                        elements: ips.len(),
                    })
                    .collect()
            }))
        })
    }

    fn ensure_forward_accept(&self) -> DpFuture<'_, ForwardStatus> {
        Box::pin(async move {
            self.iptables()?;
            let mut s = self.st();
            let repaired = !s.forward_rules;
            if repaired {
                s.forward_rules = true;
                s.repairs += 1;
            }
            Ok(ForwardStatus {
                backend: Backend::Nft,
                policy: Some("DROP".into()),
                rules_current: true,
                repaired,
            })
        })
    }

    fn forward_status(&self) -> DpFuture<'_, ForwardStatus> {
        Box::pin(async move {
            self.iptables()?;
            let s = self.st();
            Ok(ForwardStatus {
                backend: Backend::Nft,
                policy: Some("DROP".into()),
                rules_current: s.forward_rules,
                repaired: false,
            })
        })
    }

    fn remove_all(&self) -> DpFuture<'_, Vec<String>> {
        Box::pin(async move {
            self.iptables()?;
            self.nft()?;
            let mut s = self.st();
            let mut removed = Vec::new();
            if std::mem::take(&mut s.forward_rules) {
                removed.push("iptables chain".to_string());
            }
            if s.table.take().is_some() {
                removed.push("nftables table".to_string());
            }
            Ok(removed)
        })
    }
}
