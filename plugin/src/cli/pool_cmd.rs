//! `brindle pool add|list|rm`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use brindle_ipam::cidr::{parse_cidr, DEFAULT_BLOCK_SIZE};
use brindle_ipam::pools::NewPool;
use clap::Subcommand;
use serde::Serialize;

use super::output::{print_json, print_table, Format};
use super::Cli;

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a pool.
    Add {
        name: String,
        /// The pool's IPv4 CIDR, e.g. 10.65.0.0/16.
        #[arg(long)]
        cidr: String,
        /// Prefix length of the per-node blocks (20 to 32).
        #[arg(long, default_value_t = DEFAULT_BLOCK_SIZE)]
        block_size: u8,
        /// Create it disabled: no dynamic addresses (fixed ones still work).
        #[arg(long)]
        disabled: bool,
        /// An address never to hand out (repeatable).
        #[arg(long = "reserve", value_name = "ADDR")]
        reserved: Vec<Ipv4Addr>,
    },
    /// List pools with their usage.
    List,
    /// Remove a pool.
    Rm {
        name: String,
        /// Also release every address still allocated in it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Serialize)]
struct PoolRow {
    name: String,
    cidr: String,
    block_size: u8,
    disabled: bool,
    reserved: BTreeSet<Ipv4Addr>,
    size: u64,
    allocated: u64,
}

pub async fn exec(cli: &Cli, cmd: &PoolCommand) -> anyhow::Result<ExitCode> {
    let ipam = cli.etcd.ipam().await?;
    match cmd {
        PoolCommand::Add {
            name,
            cidr,
            block_size,
            disabled,
            reserved,
        } => {
            let pool = ipam
                .add_pool(NewPool {
                    name: name.clone(),
                    cidr: parse_cidr(cidr)?,
                    block_size: *block_size,
                    disabled: *disabled,
                    reserved: reserved.iter().copied().collect(),
                })
                .await?;
            match cli.output {
                Format::Json => print_json(&pool)?,
                Format::Table => println!(
                    "pool {} added: {} in blocks of /{}{}",
                    pool.name,
                    pool.cidr,
                    pool.block_size,
                    if pool.disabled { " (disabled)" } else { "" }
                ),
            }
        }
        PoolCommand::List => {
            let pools = ipam.list_pools().await?;
            let usage = ipam.usage().await?;
            let rows: Vec<PoolRow> = pools
                .into_iter()
                .zip(usage.pools)
                .map(|(p, u)| PoolRow {
                    name: p.name,
                    cidr: p.cidr.to_string(),
                    block_size: p.block_size,
                    disabled: p.disabled,
                    reserved: p.reserved,
                    size: u.size,
                    allocated: u.allocated,
                })
                .collect();
            match cli.output {
                Format::Json => print_json(&serde_json::json!({ "pools": rows }))?,
                Format::Table => print_table(
                    &["NAME", "CIDR", "BLOCK", "SIZE", "ALLOCATED", "DISABLED"],
                    &rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.clone(),
                                r.cidr.clone(),
                                format!("/{}", r.block_size),
                                r.size.to_string(),
                                r.allocated.to_string(),
                                r.disabled.to_string(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        PoolCommand::Rm { name, force } => {
            let released = ipam.remove_pool(name, *force).await?;
            match cli.output {
                Format::Json => {
                    print_json(&serde_json::json!({ "removed": name, "released": released }))?
                }
                Format::Table if released > 0 => {
                    println!("pool {name} removed; released {released} addresses")
                }
                Format::Table => println!("pool {name} removed"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
