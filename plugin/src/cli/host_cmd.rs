//! `brindle node status` and `brindle node cleanup`: this host's kernel side of brindle
//! (forwarding, the firewall, routes, veths), read or removed locally.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use brindle_dataplane::firewall::{nft, ForwardStatus};
use brindle_dataplane::{Dataplane, Firewall, LinuxDataplane, LinuxFirewall, RouteTarget};
use serde::Serialize;

use super::output::{print_json, print_table, Format};
use super::Cli;
use crate::agent::firewall::desired;
use crate::agent::Snapshot;
use crate::endpoints::list_endpoints;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// One network's set on this host.
#[derive(Debug, Serialize)]
struct NetworkSet {
    /// The network (segment): `cni:NAME` or `docker:POOLID`.
    network: String,
    /// Addresses in its nftables set now; `null` when the set is missing.
    endpoints: Option<usize>,
    /// Addresses etcd says it should hold.
    expected: usize,
}

/// `brindle node status -o json`.
#[derive(Debug, Serialize)]
struct Status {
    node: String,
    /// `net.ipv4.ip_forward` is 1.
    ip_forward: bool,
    /// FORWARD as iptables shows it; `null` when it cannot be read.
    forward: Option<ForwardStatus>,
    /// brindle's nftables table exists.
    isolation_table: bool,
    /// Every network's set holds what etcd says.
    isolation_current: bool,
    networks: Vec<NetworkSet>,
    /// Endpoint traffic is forwarded (forwarding on, FORWARD accepts it).
    forwarding_ok: bool,
    /// What is wrong, one sentence each.
    problems: Vec<String>,
}

/// `brindle node status`.
pub async fn status(cli: &Cli) -> anyhow::Result<ExitCode> {
    let node = cli.node();
    let mut problems = Vec::new();
    let ip_forward = std::fs::read_to_string(IP_FORWARD)
        .map(|v| v.trim() == "1")
        .unwrap_or(false);
    if !ip_forward {
        problems.push(format!(
            "{IP_FORWARD} is not 1: the host forwards nothing (brindled sets it when it runs)"
        ));
    }
    let fw = LinuxFirewall::new();
    let forward = match fw.forward_status().await {
        Ok(f) => Some(f),
        Err(e) => {
            problems.push(format!("cannot read FORWARD: {e}"));
            None
        }
    };
    if let Some(f) = &forward {
        if !f.passes() {
            problems.push(format!(
                "FORWARD's policy is {} and brindle's accept rules (chain BRINDLE-FORWARD) are missing: endpoint traffic is dropped until brindled restores them",
                f.policy.as_deref().unwrap_or("unknown")
            ));
        }
    }

    // What the sets should hold, from etcd.
    let ipam = cli.etcd.ipam().await?;
    let mut snap = Snapshot::default();
    for p in ipam.list_pools().await? {
        snap.pools.insert(p.name.clone(), p);
    }
    for e in list_endpoints(ipam.store(), ipam.keys(), None).await? {
        snap.endpoints
            .insert(ipam.keys().endpoint(&e.node, &e.id), e);
    }
    let spec = desired(&snap, &node);
    let listed = match fw.list_sets().await {
        Ok(l) => l,
        Err(e) => {
            problems.push(format!("cannot read brindle's nftables table: {e}"));
            None
        }
    };
    let present: BTreeMap<String, usize> = listed
        .iter()
        .flatten()
        .map(|s| (s.name.clone(), s.elements))
        .collect();
    let networks: Vec<NetworkSet> = spec
        .members
        .iter()
        .map(|(segment, ips)| NetworkSet {
            network: segment.clone(),
            endpoints: present.get(&nft::members_set(segment)).copied(),
            expected: ips.len(),
        })
        .collect();
    let isolation_table = listed.is_some();
    let isolation_current =
        isolation_table && networks.iter().all(|n| n.endpoints == Some(n.expected));
    if !isolation_table {
        problems.push(format!(
            "nftables table {} is missing: networks are not isolated from each other",
            nft::TABLE
        ));
    } else if !isolation_current {
        problems.push(
            "some network sets differ from etcd: brindled has not caught up (or is not running)"
                .into(),
        );
    }
    let forwarding_ok = ip_forward && forward.as_ref().is_some_and(ForwardStatus::passes);
    let status = Status {
        node,
        ip_forward,
        forward,
        isolation_table,
        isolation_current,
        networks,
        forwarding_ok,
        problems,
    };
    match cli.output {
        Format::Json => print_json(&status)?,
        Format::Table => print_status(&status),
    }
    Ok(match status.forwarding_ok {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

fn print_status(s: &Status) {
    let yes = |b: bool| if b { "yes" } else { "no" }.to_string();
    let (backend, policy, rules) = match &s.forward {
        Some(f) => (
            f.backend.name().to_string(),
            f.policy.clone().unwrap_or_else(|| "none".into()),
            yes(f.rules_current),
        ),
        None => ("unknown".into(), "unknown".into(), "unknown".into()),
    };
    print_table(
        &[
            "NODE",
            "IP-FORWARD",
            "IPTABLES",
            "FORWARD-POLICY",
            "BRINDLE-RULES",
            "ISOLATION",
            "FORWARDING",
        ],
        &[vec![
            s.node.clone(),
            yes(s.ip_forward),
            backend,
            policy,
            rules,
            match (s.isolation_table, s.isolation_current) {
                (false, _) => "missing".into(),
                (true, true) => "current".into(),
                (true, false) => "stale".into(),
            },
            if s.forwarding_ok { "ok" } else { "DROPPED" }.into(),
        ]],
    );
    if !s.networks.is_empty() {
        println!();
        print_table(
            &["NETWORK", "ENDPOINTS", "EXPECTED"],
            &s.networks
                .iter()
                .map(|n| {
                    vec![
                        n.network.clone(),
                        n.endpoints.map_or("missing".into(), |c| c.to_string()),
                        n.expected.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        );
    }
    for p in &s.problems {
        eprintln!("brindle: {p}");
    }
}

/// `brindle node cleanup`: remove everything brindle made on this host's kernel.
pub async fn cleanup(cli: &Cli, api_socket: &Path) -> anyhow::Result<ExitCode> {
    if std::os::unix::net::UnixStream::connect(api_socket).is_ok() {
        anyhow::bail!(
            "brindled is running (its API socket {} answers): stop it first, or it puts everything back",
            api_socket.display()
        );
    }
    let mut removed = Vec::new();
    removed.extend(LinuxFirewall::new().remove_all().await?);
    let dp = LinuxDataplane::connect()?;
    let mut routes = 0;
    for r in dp.list_routes_with_our_protocol().await? {
        let gone = match r.target {
            RouteTarget::Blackhole => dp.del_blackhole_route(r.dst).await?,
            _ if r.dst.prefix() == 32 => dp.del_host_route(r.dst.ip()).await?,
            _ => false,
        };
        routes += usize::from(gone);
    }
    if routes > 0 {
        removed.push(format!(
            "{routes} routes with brindle's protocol ({})",
            brindle_dataplane::ROUTE_PROTOCOL
        ));
    }
    let mut veths = Vec::new();
    for name in dp.list_host_veths().await? {
        if dp.delete_endpoint(&name).await? {
            veths.push(name);
        }
    }
    if !veths.is_empty() {
        removed.push(format!("{} veths ({})", veths.len(), veths.join(", ")));
    }
    match cli.output {
        Format::Json => print_json(&serde_json::json!({ "removed": removed }))?,
        Format::Table if removed.is_empty() => println!("nothing of brindle's left on this host"),
        Format::Table => {
            for r in &removed {
                println!("removed {r}");
            }
        }
    }
    eprintln!(
        "brindle: node {} is still registered in etcd; `brindle node rm {}` removes it",
        cli.node(),
        cli.node()
    );
    Ok(ExitCode::SUCCESS)
}

/// Default of `node cleanup --api-socket`.
pub fn default_api_socket() -> PathBuf {
    PathBuf::from(crate::cni::conf::DEFAULT_API_SOCKET)
}
