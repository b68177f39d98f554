//! `brindle pool add|set|list|rm`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use brindle_ipam::cidr::{parse_cidr, DEFAULT_BLOCK_SIZE};
use brindle_ipam::pools::{NewPool, PoolUpdate};
use clap::{ArgGroup, Subcommand};
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
        /// Masquerade traffic from the pool to destinations outside every pool.
        #[arg(long)]
        nat_outgoing: bool,
    },
    /// Change a pool's settings.
    #[command(group(ArgGroup::new("setting").required(true).args(["nat_outgoing"])))]
    Set {
        name: String,
        /// Masquerade traffic from the pool to destinations outside every pool
        /// (`--nat-outgoing` alone means true).
        #[arg(
            long,
            value_name = "true|false",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::BoolValueParser::new()
        )]
        nat_outgoing: Option<bool>,
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
    nat_outgoing: bool,
    reserved: BTreeSet<Ipv4Addr>,
    size: u64,
    allocated: u64,
    /// Marked for removal by `pool rm`: it hands out no addresses.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    deleting: bool,
    /// Since when (seconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    deleting_since: Option<u64>,
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
            nat_outgoing,
        } => {
            let pool = ipam
                .add_pool(NewPool {
                    name: name.clone(),
                    cidr: parse_cidr(cidr)?,
                    block_size: *block_size,
                    disabled: *disabled,
                    reserved: reserved.iter().copied().collect(),
                    nat_outgoing: *nat_outgoing,
                })
                .await?;
            match cli.output {
                Format::Json => print_json(&pool)?,
                Format::Table => println!(
                    "pool {} added: {} in blocks of /{}{}{}",
                    pool.name,
                    pool.cidr,
                    pool.block_size,
                    if pool.disabled { " (disabled)" } else { "" },
                    if pool.nat_outgoing {
                        " (nat-outgoing)"
                    } else {
                        ""
                    }
                ),
            }
        }
        PoolCommand::Set { name, nat_outgoing } => {
            let update = PoolUpdate {
                nat_outgoing: *nat_outgoing,
            };
            let pool = ipam.update_pool(name, &update).await?;
            match cli.output {
                Format::Json => print_json(&pool)?,
                Format::Table => println!("pool {}: nat-outgoing {}", pool.name, pool.nat_outgoing),
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
                    nat_outgoing: p.nat_outgoing,
                    reserved: p.reserved,
                    size: u.size,
                    allocated: u.allocated,
                    deleting: p.deleting,
                    deleting_since: p.deleting_since,
                })
                .collect();
            match cli.output {
                Format::Json => print_json(&serde_json::json!({ "pools": rows }))?,
                Format::Table => print_table(
                    &[
                        "NAME",
                        "CIDR",
                        "BLOCK",
                        "SIZE",
                        "ALLOCATED",
                        "DISABLED",
                        "NAT-OUTGOING",
                        "STATE",
                    ],
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
                                r.nat_outgoing.to_string(),
                                match (r.deleting, r.deleting_since) {
                                    (false, _) => "active".to_string(),
                                    (true, Some(t)) => format!("deleting ({} ago)", ago(t)),
                                    (true, None) => "deleting".to_string(),
                                },
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
            for r in rows.iter().filter(|r| r.deleting) {
                let since = r
                    .deleting_since
                    .map(|t| format!(" {} ago", ago(t)))
                    .unwrap_or_default();
                eprintln!(
                    "brindle: warning: pool {} was marked for removal{since} and hands out no addresses; if no `brindle pool rm {}` is running any more, run it again: it finishes the removal or, without --force, gives the pool back while it still has addresses",
                    r.name, r.name
                );
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

/// `3m12s`: how long ago `t` (seconds since the Unix epoch) was.
fn ago(t: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(t);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::PoolCommand;
    use crate::cli::{Cli, Command};

    fn set(args: &[&str]) -> Result<Option<bool>, clap::Error> {
        let argv = ["brindle", "pool", "set", "p"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Pool(PoolCommand::Set { nat_outgoing, .. }) => Ok(nat_outgoing),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn set_takes_true_or_false() {
        assert_eq!(set(&["--nat-outgoing=true"]).unwrap(), Some(true));
        assert_eq!(set(&["--nat-outgoing=false"]).unwrap(), Some(false));
        assert_eq!(set(&["--nat-outgoing"]).unwrap(), Some(true));
        let e = set(&["--nat-outgoing=maybe"]).unwrap_err().to_string();
        assert!(e.contains("invalid value 'maybe'"), "{e}");
        assert!(e.contains("[possible values: true, false]"), "{e}");
        // Nothing to change is an error too.
        assert!(set(&[]).is_err());
    }

    #[test]
    fn add_has_a_nat_outgoing_flag() {
        let cli = Cli::try_parse_from([
            "brindle",
            "pool",
            "add",
            "p",
            "--cidr",
            "10.0.0.0/24",
            "--nat-outgoing",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Pool(PoolCommand::Add {
                nat_outgoing: true,
                ..
            })
        ));
    }
}
