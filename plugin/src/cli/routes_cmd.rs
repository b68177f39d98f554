//! `brindle routes [--format F]`: static routes for routers without BGP, one per block
//! (and per borrowed /32) via the IP of the node serving it, ready to paste.
//! Blocks and addresses that get no route are warnings on stderr.

use std::process::ExitCode;

use brindle_bgp::{render_static_routes, RouteFormat};
use clap::Args;

use super::output::Format;
use super::Cli;
use crate::bgpstore;

#[derive(Debug, Args)]
pub struct RoutesArgs {
    /// Output dialect: iproute2 (default), frr, bird, junos, ios or json (`-o json`
    /// alone means json).
    #[arg(long)]
    format: Option<String>,
}

pub async fn exec(cli: &Cli, args: &RoutesArgs) -> anyhow::Result<ExitCode> {
    let format = match (&args.format, cli.output) {
        (Some(f), _) => f.parse::<RouteFormat>()?,
        (None, Format::Json) => RouteFormat::Json,
        (None, Format::Table) => RouteFormat::Iproute2,
    };
    let ipam = cli.etcd.ipam().await?;
    let keys = ipam.keys();
    let nodes = bgpstore::list_nodes(ipam.store(), keys).await?;
    let blocks = ipam.all_blocks().await?;
    let pools = ipam.list_pools().await?;
    let view = bgpstore::routing_view(&blocks, &pools);
    let out = render_static_routes(&view, &nodes, format);
    for w in &out.warnings {
        eprintln!("brindle: warning: {w}");
    }
    print!("{}", out.text);
    Ok(ExitCode::SUCCESS)
}
