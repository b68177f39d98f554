//! brindle's accept path in iptables' `filter` FORWARD chain (pure rendering and parsing).
//!
//! When dockerd (or ufw, firewalld) sets FORWARD's policy to DROP, only an accept in
//! that chain lets endpoint traffic through: an accept in a table of brindle's own
//! ends only that table's chain. So FORWARD jumps to `BRINDLE-FORWARD`, which accepts
//! traffic to and from `brl+` veths. The jump goes right after Docker's `DOCKER-USER`
//! jump when there is one (an admin's rules there come first, as Docker documents),
//! else first. Isolation between networks has already dropped what it must in brindle's
//! nftables table, which sees the packet earlier.

use crate::names::HOST_PREFIX;

/// brindle's chain in the filter table.
pub const CHAIN: &str = "BRINDLE-FORWARD";

/// The chain's rules, as `iptables-save` prints them.
pub fn chain_rules() -> [String; 2] {
    [
        format!("-A {CHAIN} -o {HOST_PREFIX}+ -m comment --comment \"brindle: to endpoints\" -j ACCEPT"),
        format!("-A {CHAIN} -i {HOST_PREFIX}+ -m comment --comment \"brindle: from endpoints\" -j ACCEPT"),
    ]
}

/// The jump rule (without `-A FORWARD`/`-I FORWARD N`).
const JUMP: &str = "-m comment --comment \"brindle: endpoint traffic\" -j BRINDLE-FORWARD";

/// What `iptables-save -t filter` shows of FORWARD and of brindle's chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterState {
    /// FORWARD's policy (`ACCEPT`, `DROP`); `None` when the chain does not exist.
    pub forward_policy: Option<String>,
    /// FORWARD's rules, in order, without the `-A FORWARD ` prefix.
    pub forward_rules: Vec<String>,
    /// Whether `BRINDLE-FORWARD` exists.
    pub chain_exists: bool,
    /// Its rules, as printed (`-A BRINDLE-FORWARD ...`).
    pub chain_rules: Vec<String>,
    /// Every `-A` rule in the table: how much the host uses this backend.
    pub rule_count: usize,
}

impl FilterState {
    /// Parses the `*filter` part of `iptables-save` output.
    pub fn parse(save: &str) -> Self {
        let mut st = FilterState::default();
        let mut in_filter = false;
        for line in save.lines() {
            let line = line.trim_end();
            if line.starts_with('*') {
                in_filter = line == "*filter";
                continue;
            }
            if !in_filter {
                continue;
            }
            if let Some(rest) = line.strip_prefix(":FORWARD ") {
                st.forward_policy = rest.split_whitespace().next().map(str::to_string);
            } else if line.starts_with(&format!(":{CHAIN} ")) {
                st.chain_exists = true;
            } else if let Some(rule) = line.strip_prefix("-A FORWARD ") {
                st.rule_count += 1;
                st.forward_rules.push(rule.to_string());
            } else if line.starts_with(&format!("-A {CHAIN} ")) {
                st.rule_count += 1;
                st.chain_rules.push(line.to_string());
            } else if line.starts_with("-A ") {
                st.rule_count += 1;
            }
        }
        st
    }

    /// Whether FORWARD jumps to brindle's chain.
    pub fn has_jump(&self) -> bool {
        self.forward_rules
            .iter()
            .any(|r| r.ends_with(&format!("-j {CHAIN}")))
    }

    /// Whether brindle's chain holds exactly its rules and FORWARD jumps to it.
    pub fn is_current(&self) -> bool {
        self.chain_exists && self.chain_rules == chain_rules() && self.has_jump()
    }

    /// Whether the host uses this backend at all: rules, or a policy that drops.
    pub fn weight(&self) -> usize {
        self.rule_count + usize::from(self.forward_policy.as_deref() == Some("DROP"))
    }

    /// Where the jump goes: after `DOCKER-USER`'s jump, else first (1-based).
    fn jump_position(&self) -> usize {
        self.forward_rules
            .iter()
            .position(|r| r.ends_with("-j DOCKER-USER"))
            .map_or(1, |i| i + 2)
    }
}

/// `iptables-restore --noflush` input that makes `state` current: declaring the
/// chain flushes it, its rules are appended, and the jump is inserted when missing.
pub fn render_repair(state: &FilterState) -> String {
    let mut s = format!("*filter\n:{CHAIN} - [0:0]\n");
    for rule in chain_rules() {
        s.push_str(&rule);
        s.push('\n');
    }
    if !state.has_jump() {
        s.push_str(&format!("-I FORWARD {} {JUMP}\n", state.jump_position()));
    }
    s.push_str("COMMIT\n");
    s
}

/// `iptables-restore --noflush` input that removes every jump and the chain.
pub fn render_removal(state: &FilterState) -> Option<String> {
    if !state.chain_exists && !state.has_jump() {
        return None;
    }
    let mut s = String::from("*filter\n");
    for rule in &state.forward_rules {
        if rule.ends_with(&format!("-j {CHAIN}")) {
            s.push_str(&format!("-D FORWARD {rule}\n"));
        }
    }
    if state.chain_exists {
        s.push_str(&format!("-F {CHAIN}\n-X {CHAIN}\n"));
    }
    s.push_str("COMMIT\n");
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "# Generated by iptables-nft-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -j DOCKER
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
COMMIT
";

    #[test]
    fn a_docker_host_gets_the_jump_after_docker_user() {
        let st = FilterState::parse(DOCKER);
        assert_eq!(st.forward_policy.as_deref(), Some("DROP"));
        assert_eq!(st.rule_count, 4, "nat rules are not counted");
        assert!(!st.is_current());
        let text = render_repair(&st);
        assert!(text.contains("-I FORWARD 2 -m comment"), "{text}");
        assert!(text.starts_with("*filter\n:BRINDLE-FORWARD - [0:0]\n-A BRINDLE-FORWARD -o brl+"));
    }

    #[test]
    fn a_current_chain_is_recognised_and_repair_keeps_the_jump() {
        let mut save = DOCKER.replace(
            ":DOCKER-USER - [0:0]\n",
            ":DOCKER-USER - [0:0]\n:BRINDLE-FORWARD - [0:0]\n",
        );
        save = save.replace(
            "-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n",
            &format!(
                "-A FORWARD {JUMP}\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n{}\n{}\n",
                chain_rules()[0],
                chain_rules()[1]
            ),
        );
        let st = FilterState::parse(&save);
        assert!(st.is_current(), "{st:?}");
        assert!(!render_repair(&st).contains("-I FORWARD"));
        let removal = render_removal(&st).unwrap();
        assert!(removal.contains(&format!("-D FORWARD {JUMP}")), "{removal}");
        assert!(removal.contains("-X BRINDLE-FORWARD"));
    }

    #[test]
    fn an_empty_host_gets_the_jump_first_and_nothing_to_remove() {
        let st = FilterState::parse("*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
        assert_eq!(st.weight(), 0);
        assert!(render_repair(&st).contains("-I FORWARD 1 "));
        assert!(render_removal(&st).is_none());
    }
}
