//! `brindle`, the operator CLI. Each subcommand lives in its own module; this one holds
//! the argument model and the dispatch.

mod bgp_cmd;
mod endpoints_cmd;
mod host_cmd;
mod ipam_cmd;
mod node_cmd;
mod output;
mod pool_cmd;
mod routes_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{hostname, EtcdArgs};
pub use output::Format;

#[derive(Debug, Parser)]
#[command(
    name = "brindle",
    version,
    about = "brindle: routed container networking on etcd"
)]
pub struct Cli {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// The node this command acts for (default: this host's name).
    #[arg(long, env = "BRINDLE_NODE", global = true)]
    pub node: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", env = "BRINDLE_OUTPUT", value_enum, default_value_t = Format::Table, global = true)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    pub fn node(&self) -> String {
        self.node.clone().unwrap_or_else(hostname)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage IP pools.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCommand),
    /// Allocate, release, show and check addresses.
    #[command(subcommand)]
    Ipam(ipam_cmd::IpamCommand),
    /// Nodes as BGP speakers: name, IP, AS.
    #[command(subcommand)]
    Node(node_cmd::NodeCommand),
    /// BGP settings, peers, rendered BIRD configuration, router configuration.
    #[command(subcommand)]
    Bgp(bgp_cmd::BgpCommand),
    /// Static routes to every block for routers without BGP.
    Routes(routes_cmd::RoutesArgs),
    /// Container interfaces wired by brindle (Docker and CNI); --node narrows the list.
    Endpoints(endpoints_cmd::EndpointsArgs),
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Pool(cmd) => pool_cmd::exec(&cli, cmd).await,
        Command::Ipam(cmd) => ipam_cmd::exec(&cli, cmd).await,
        Command::Node(cmd) => node_cmd::exec(&cli, cmd).await,
        Command::Bgp(cmd) => bgp_cmd::exec(&cli, cmd).await,
        Command::Routes(args) => routes_cmd::exec(&cli, args).await,
        Command::Endpoints(args) => endpoints_cmd::exec(&cli, args).await,
    }
}
