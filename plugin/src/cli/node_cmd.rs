//! `brindle node list|set|rm`: the nodes as BGP speakers (name, IP, AS); `node status`
//! and `node cleanup` act on this host (see `host_cmd.rs`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use brindle_bgp::{parse_as, BgpError, BgpNode};
use clap::Subcommand;
use serde::Serialize;

use super::output::{print_json, print_table, Format};
use super::Cli;
use crate::bgpstore::{self, NodeUpdate};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their IP, AS and blocks.
    List,
    /// Create or change a node (brindled registers its own with --node-ip).
    Set {
        /// Node name (brindled's --node, default the hostname).
        name: String,
        /// The node's IP: BGP router id and next hop of its blocks.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// The node's own AS number (asplain or asdot); default: the global AS.
        #[arg(long = "as", value_name = "N", conflicts_with = "clear_as")]
        as_num: Option<String>,
        /// Forget the node's own AS: it speaks the global AS again.
        #[arg(long)]
        clear_as: bool,
        /// Make the node a route reflector with this cluster id (an IPv4 address).
        #[arg(long, value_name = "ID", conflicts_with = "clear_rr_cluster_id")]
        rr_cluster_id: Option<Ipv4Addr>,
        /// Make the node a plain (non-reflector) node again.
        #[arg(long)]
        clear_rr_cluster_id: bool,
    },
    /// Remove a node record: other nodes stop peering with it and drop its routes.
    /// Stop its brindled first (it registers again when it starts).
    Rm {
        /// Node name.
        name: String,
    },
    /// This host: forwarding sysctl, FORWARD's policy, brindle's firewall rules and
    /// each network's set. Exits non-zero when endpoint traffic would be dropped.
    Status,
    /// Remove brindle's firewall chain and table, routes and leftover veths from this
    /// host (decommissioning it). Stop brindled first.
    Cleanup {
        /// brindled's API socket: cleanup refuses while it answers.
        #[arg(long, env = "BRINDLE_API_SOCKET", default_value_os_t = super::host_cmd::default_api_socket())]
        api_socket: PathBuf,
    },
}

/// An optional AS number (asplain or asdot), parsed after clap so a bad value is
/// one clear sentence.
pub(crate) fn parse_as_opt(s: Option<&str>) -> Result<Option<u32>, BgpError> {
    s.map(parse_as).transpose()
}

#[derive(Serialize)]
struct NodeRow {
    name: String,
    ip: Ipv4Addr,
    /// The AS the node speaks (its own or the global one).
    #[serde(rename = "as")]
    as_num: u32,
    /// Whether `as` is the node's own setting.
    own_as: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rr_cluster_id: Option<Ipv4Addr>,
    /// Blocks affine to the node.
    blocks: Vec<String>,
    /// The host that owns the node name (its brindled claimed it), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    machine_id: Option<String>,
}

pub async fn exec(cli: &Cli, cmd: &NodeCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NodeCommand::Status => return super::host_cmd::status(cli).await,
        NodeCommand::Cleanup { api_socket } => {
            return super::host_cmd::cleanup(cli, api_socket).await
        }
        _ => {}
    }
    let ipam = cli.etcd.ipam().await?;
    let store = ipam.store();
    let keys = ipam.keys();
    match cmd {
        NodeCommand::List => {
            let nodes = bgpstore::list_nodes(store, keys).await?;
            let mut machines = bgpstore::node_machines(store, keys).await?;
            let (global, _) = bgpstore::get_global(store, keys).await?;
            let mut blocks: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for b in ipam.all_blocks().await? {
                if let Some(n) = b.affinity {
                    blocks.entry(n).or_default().push(b.cidr.to_string());
                }
            }
            let rows: Vec<NodeRow> = nodes
                .iter()
                .map(|n| NodeRow {
                    name: n.name.clone(),
                    ip: n.ip,
                    as_num: n.local_as(&global),
                    own_as: n.as_num.is_some(),
                    rr_cluster_id: n.rr_cluster_id,
                    blocks: blocks.remove(&n.name).unwrap_or_default(),
                    host: machines.get(&n.name).map(|m| m.hostname.clone()),
                    machine_id: machines.remove(&n.name).map(|m| m.machine_id),
                })
                .collect();
            match cli.output {
                Format::Json => print_json(&serde_json::json!({ "nodes": rows }))?,
                Format::Table => print_table(
                    &["NAME", "IP", "AS", "ROUTE-REFLECTOR", "BLOCKS", "HOST"],
                    &rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.ip.to_string(),
                                if r.own_as {
                                    r.as_num.to_string()
                                } else {
                                    format!("{} (global)", r.as_num)
                                },
                                r.rr_cluster_id.map(|c| c.to_string()).unwrap_or_default(),
                                r.blocks.join(","),
                                r.host.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            for (node, cidrs) in blocks {
                eprintln!(
                    "brindle: warning: node {node:?} has blocks ({}) but no node record, so nothing routes them; register it with `brindle node set {node} --ip ADDR`",
                    cidrs.join(", ")
                );
            }
        }
        NodeCommand::Set {
            name,
            ip,
            as_num,
            clear_as,
            rr_cluster_id,
            clear_rr_cluster_id,
        } => {
            let update = NodeUpdate {
                ip: *ip,
                as_num: if *clear_as {
                    Some(None)
                } else {
                    parse_as_opt(as_num.as_deref())?.map(Some)
                },
                rr_cluster_id: if *clear_rr_cluster_id {
                    Some(None)
                } else {
                    rr_cluster_id.map(Some)
                },
            };
            let w = bgpstore::set_node(store, keys, name, &update).await?;
            match cli.output {
                Format::Json => print_json(&node_json(&w.node, w.created, w.changed))?,
                Format::Table => {
                    let verb = match (w.created, w.changed) {
                        (true, _) => "added",
                        (false, true) => "updated",
                        (false, false) => "unchanged",
                    };
                    println!("node {} {verb}: {}", w.node.name, describe(&w.node));
                }
            }
        }
        NodeCommand::Rm { name } => {
            let removed = bgpstore::remove_node(store, keys, name).await?;
            match cli.output {
                Format::Json => print_json(&serde_json::json!({
                    "removed": removed.node,
                    "machine": removed.machine,
                }))?,
                Format::Table => {
                    let mut what = Vec::new();
                    if let Some(n) = &removed.node {
                        what.push(n.ip.to_string());
                    }
                    if let Some(m) = &removed.machine {
                        what.push(format!("host {}, machine-id {}", m.hostname, m.machine_id));
                    }
                    println!("node {name} removed ({})", what.join("; "));
                }
            }
        }
        NodeCommand::Status | NodeCommand::Cleanup { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

fn node_json(n: &BgpNode, created: bool, changed: bool) -> serde_json::Value {
    serde_json::json!({ "node": n, "created": created, "changed": changed })
}

fn describe(n: &BgpNode) -> String {
    let mut s = format!("ip {}", n.ip);
    match n.as_num {
        Some(a) => s.push_str(&format!(", AS {a}")),
        None => s.push_str(", global AS"),
    }
    if let Some(c) = n.rr_cluster_id {
        s.push_str(&format!(", route reflector (cluster id {c})"));
    }
    s
}
