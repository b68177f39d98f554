//! `brindle endpoints [--node N] [--all-nodes]`: every container interface brindle wired
//! (Docker and CNI), with its node, container, network, IP, MAC and host interface.
//!
//! `-o json` prints the stored records as a list, sorted by node then endpoint id:
//! `[{"id", "node", "orchestrator", "container_id", "network", "ip", "mac",
//! "host_ifname", "handle"}]` (`container_id` and `mac` may be `null`; for Docker,
//! `id` is the endpoint id, `network` the network id and `container_id` the first 12
//! hex digits of the container id; for CNI, `id` is `<container id>+<ifname>`).

use std::process::ExitCode;

use clap::Args;

use super::output::{print_json, print_table, Format};
use super::Cli;
use crate::endpoints::list_endpoints;

#[derive(Debug, Args)]
pub struct EndpointsArgs {
    /// List every node's endpoints even when --node or BRINDLE_NODE is set.
    #[arg(long)]
    pub all_nodes: bool,
}

pub async fn exec(cli: &Cli, args: &EndpointsArgs) -> anyhow::Result<ExitCode> {
    let ipam = cli.etcd.ipam().await?;
    // The global --node (or BRINDLE_NODE) narrows the list; without it, all nodes.
    let node = cli.node.as_deref().filter(|_| !args.all_nodes);
    let endpoints = list_endpoints(ipam.store(), ipam.keys(), node).await?;
    match cli.output {
        Format::Json => print_json(&endpoints)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = endpoints
                .iter()
                .map(|e| {
                    vec![
                        e.node.clone(),
                        e.orchestrator.clone(),
                        e.container_id
                            .as_deref()
                            .map(short)
                            .unwrap_or("-")
                            .to_string(),
                        short(&e.network).to_string(),
                        e.ip.to_string(),
                        e.mac.clone().unwrap_or_else(|| "-".into()),
                        e.host_ifname.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "NODE",
                    "ORCHESTRATOR",
                    "CONTAINER",
                    "NETWORK",
                    "IP",
                    "MAC",
                    "INTERFACE",
                ],
                &rows,
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Docker ids are 64 hex digits; show the 12 `docker ps` shows.
fn short(id: &str) -> &str {
    let hex = id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit());
    if hex {
        &id[..12]
    } else {
        id
    }
}
