//! `brindle`, the operator CLI. Each subcommand lives in its own module; this one holds
//! the argument model and the dispatch.

mod ipam_cmd;
mod output;
mod pool_cmd;

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
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Pool(cmd) => pool_cmd::exec(&cli, cmd).await,
        Command::Ipam(cmd) => ipam_cmd::exec(&cli, cmd).await,
    }
}
