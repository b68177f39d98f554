//! `brindle ipam alloc|release|show|check`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::ExitCode;

use brindle_ipam::{AllocRequest, IpamError};
use clap::{ArgGroup, Subcommand};

use super::output::{print_json, print_table, Format};
use super::Cli;

#[derive(Debug, Subcommand)]
pub enum IpamCommand {
    /// Allocate an address for a handle and print it.
    Alloc {
        /// The owner of the address; asking again with it returns the same address.
        #[arg(long)]
        handle: String,
        /// A fixed address.
        #[arg(long, conflicts_with = "pool")]
        ip: Option<Ipv4Addr>,
        /// The pool to allocate from (default: any enabled pool).
        #[arg(long)]
        pool: Option<String>,
        /// An owner attribute KEY=VALUE (repeatable).
        #[arg(long = "attr", value_name = "KEY=VALUE")]
        attrs: Vec<String>,
    },
    /// Release by handle or by address.
    #[command(group(ArgGroup::new("what").required(true).args(["handle", "ip"])))]
    Release {
        #[arg(long)]
        handle: Option<String>,
        #[arg(long)]
        ip: Option<Ipv4Addr>,
    },
    /// Show pool usage, or one address.
    Show {
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// List every block.
        #[arg(long)]
        blocks: bool,
    },
    /// Check consistency; exits 1 when problems remain.
    Check {
        /// Repair what is safe to repair.
        #[arg(long)]
        gc: bool,
    },
}

pub async fn exec(cli: &Cli, cmd: &IpamCommand) -> anyhow::Result<ExitCode> {
    let ipam = cli.etcd.ipam().await?;
    match cmd {
        IpamCommand::Alloc {
            handle,
            ip,
            pool,
            attrs,
        } => {
            let req = AllocRequest {
                handle: handle.clone(),
                node: cli.node(),
                ip: *ip,
                pool: pool.clone(),
                attrs: parse_attrs(attrs)?,
                ..AllocRequest::default()
            };
            let a = ipam.allocate(&req).await?;
            match cli.output {
                Format::Json => print_json(&serde_json::json!({
                    "ip": a.ip, "pool": a.pool, "pool_cidr": a.pool_cidr, "block": a.block,
                    "handle": handle, "node": req.node, "existing": a.existing,
                }))?,
                Format::Table => println!("{}", a.ip),
            }
        }
        IpamCommand::Release { handle, ip } => {
            let (released, holder): (Vec<Ipv4Addr>, Option<String>) = match (handle, ip) {
                (Some(h), _) => (ipam.release_handle(h).await?, Some(h.clone())),
                (None, Some(ip)) => {
                    let holder = ipam.release_ip(*ip).await?;
                    let released = holder.iter().map(|_| *ip).collect();
                    (released, holder)
                }
                (None, None) => unreachable!("clap requires --handle or --ip"),
            };
            match cli.output {
                Format::Json => {
                    print_json(&serde_json::json!({ "released": released, "handle": holder }))?
                }
                Format::Table if released.is_empty() => match (handle, ip) {
                    (Some(h), _) => println!("handle {h} holds no addresses; nothing to release"),
                    (_, Some(ip)) => println!("{ip} was not allocated; nothing to release"),
                    _ => {}
                },
                Format::Table => {
                    for ip in &released {
                        println!(
                            "released {ip} (handle {})",
                            holder.as_deref().unwrap_or("?")
                        );
                    }
                }
            }
        }
        IpamCommand::Show { ip: Some(ip), .. } => {
            let report = ipam.address(*ip).await?;
            match cli.output {
                Format::Json => print_json(&report)?,
                Format::Table => {
                    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
                    println!("ip:         {}", report.ip);
                    println!("allocated:  {}", report.allocated);
                    println!("pool:       {}", or_dash(report.pool.clone()));
                    println!(
                        "block:      {}",
                        or_dash(report.block.map(|b| b.to_string()))
                    );
                    println!("node:       {}", or_dash(report.node.clone()));
                    println!("handle:     {}", or_dash(report.handle.clone()));
                    for (k, v) in &report.attributes {
                        println!("attribute:  {k}={v}");
                    }
                }
            }
        }
        IpamCommand::Show { ip: None, blocks } => {
            let usage = ipam.usage().await?;
            match cli.output {
                Format::Json => print_json(&usage)?,
                Format::Table => {
                    let rows: Vec<Vec<String>> = usage
                        .pools
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.cidr.to_string(),
                                p.size.to_string(),
                                p.allocated.to_string(),
                                format!(
                                    "{:.1}%",
                                    100.0 * p.allocated as f64 / p.size.max(1) as f64
                                ),
                                p.blocks.len().to_string(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["POOL", "CIDR", "SIZE", "ALLOCATED", "USED", "BLOCKS"],
                        &rows,
                    );
                    if *blocks {
                        println!();
                        let rows: Vec<Vec<String>> = usage
                            .pools
                            .iter()
                            .flat_map(|p| {
                                p.blocks.iter().map(|b| {
                                    vec![
                                        b.cidr.to_string(),
                                        p.name.clone(),
                                        b.node.clone().unwrap_or_else(|| "-".into()),
                                        b.size.to_string(),
                                        b.allocated.to_string(),
                                        b.borrowed.to_string(),
                                    ]
                                })
                            })
                            .collect();
                        print_table(
                            &["BLOCK", "POOL", "NODE", "SIZE", "ALLOCATED", "BORROWED"],
                            &rows,
                        );
                    }
                }
            }
        }
        IpamCommand::Check { gc } => {
            let report = ipam.check(*gc).await?;
            match cli.output {
                Format::Json => print_json(&report)?,
                Format::Table => {
                    let c = &report.checked;
                    println!(
                        "checked {} pools, {} blocks, {} affinities, {} handles, {} allocations",
                        c.pools, c.blocks, c.affinities, c.handles, c.allocations
                    );
                    for p in &report.problems {
                        let state = if p.repaired { "repaired" } else { "found" };
                        println!("{state}: {:?}: {} ({})", p.kind, p.detail, p.action);
                    }
                    if report.problems.is_empty() {
                        println!("no problems found");
                    }
                }
            }
            if !report.clean {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_attrs(attrs: &[String]) -> Result<BTreeMap<String, String>, IpamError> {
    attrs
        .iter()
        .map(|a| match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(IpamError::InvalidAttribute(a.clone())),
        })
        .collect()
}
