//! `brindle bgp show|set|peer|render|router-config`: the cluster's BGP settings.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use brindle_bgp::{
    parse_as, render_bird, render_router_config, validate_bird_input, validate_with_bird, BgpError,
    BgpGlobal, BgpPeer, BirdInput, RouterFormat,
};
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

use super::node_cmd::parse_as_opt;
use super::output::{print_json, print_table, Format};
use super::Cli;
use crate::bgpstore::{self, BgpStoreError};
use crate::config::{read_password_file, PasswordFileError, Secret};

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn on(self) -> bool {
        self == OnOff::On
    }
}

#[derive(Debug, Subcommand)]
pub enum BgpCommand {
    /// Show the global BGP settings.
    Show,
    /// Change the global BGP settings (without flags: show them).
    Set(SetArgs),
    /// Manage BGP peers (routers, reflectors outside the cluster).
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Print the BIRD 2 configuration brindled renders for a node (--node, default
    /// this host).
    Render {
        /// Also let BIRD parse it (`bird -p -c`); fails when BIRD refuses it.
        #[arg(long)]
        check: bool,
        /// The `bird` binary for --check.
        #[arg(long, env = "BRINDLE_BIRD_BIN", default_value = "/usr/sbin/bird")]
        bird_bin: PathBuf,
    },
    /// Print what a top-of-rack router needs to peer with every node.
    RouterConfig {
        /// Router configuration dialect: frr or bird.
        #[arg(long, default_value = "frr")]
        format: String,
        /// The router's AS (default: the global AS, i.e. iBGP with the nodes as
        /// route-reflector clients).
        #[arg(long = "as", value_name = "N")]
        as_num: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Global AS number (asplain or asdot) of nodes without their own.
    #[arg(long = "as", value_name = "N")]
    as_num: Option<String>,
    /// Full node-to-node mesh.
    #[arg(long, value_enum)]
    mesh: Option<OnOff>,
    /// TCP-MD5 password of the mesh and route-reflector sessions.
    #[arg(long, conflicts_with_all = ["clear_mesh_password", "mesh_password_file"])]
    mesh_password: Option<Secret>,
    /// Read the mesh password from this file (first line), so that it never appears
    /// in argv or the shell's history.
    #[arg(long, value_name = "PATH", conflicts_with = "clear_mesh_password")]
    mesh_password_file: Option<PathBuf>,
    /// Remove the mesh password.
    #[arg(long)]
    clear_mesh_password: bool,
    /// Graceful restart (RFC 4724).
    #[arg(long, value_enum)]
    graceful_restart: Option<OnOff>,
    /// Seconds peers keep our routes while BIRD restarts (1-4095; 0 = BIRD's default).
    #[arg(long, value_name = "SECONDS")]
    restart_time: Option<u32>,
    /// Seconds before the first connection attempt.
    #[arg(long, value_name = "SECONDS")]
    connect_delay: Option<u32>,
    /// Seconds between connection attempts.
    #[arg(long, value_name = "SECONDS")]
    connect_retry: Option<u32>,
    /// Back-off after a session error, first and longest: MIN,MAX seconds.
    #[arg(long, value_name = "MIN,MAX")]
    error_wait: Option<String>,
    /// Hold time in seconds (0 = no keepalives, or 3-65535; default BIRD's 240).
    #[arg(long, value_name = "SECONDS")]
    hold: Option<u32>,
    /// Keepalive interval in seconds (default hold / 3).
    #[arg(long, value_name = "SECONDS")]
    keepalive: Option<u32>,
}

impl SetArgs {
    fn is_empty(&self) -> bool {
        self.as_num.is_none()
            && self.mesh.is_none()
            && self.mesh_password.is_none()
            && self.mesh_password_file.is_none()
            && !self.clear_mesh_password
            && self.graceful_restart.is_none()
            && self.restart_time.is_none()
            && self.connect_delay.is_none()
            && self.connect_retry.is_none()
            && self.error_wait.is_none()
            && self.hold.is_none()
            && self.keepalive.is_none()
    }

    /// Apply the flags; `mesh_password` is `--mesh-password` or the file's, read once.
    fn apply(&self, g: &mut BgpGlobal, mesh_password: Option<&Secret>) -> Result<(), BgpError> {
        if let Some(a) = parse_as_opt(self.as_num.as_deref())? {
            g.as_num = a;
        }
        if let Some(m) = self.mesh {
            g.node_mesh = m.on();
        }
        if let Some(p) = mesh_password {
            g.mesh_password = Some(p.expose().to_string());
        }
        if self.clear_mesh_password {
            g.mesh_password = None;
        }
        if let Some(gr) = self.graceful_restart {
            g.graceful_restart = gr.on();
        }
        if let Some(t) = self.restart_time {
            g.restart_time = (t != 0).then_some(t);
        }
        let t = &mut g.timers;
        if let Some(v) = self.connect_delay {
            t.connect_delay = v;
        }
        if let Some(v) = self.connect_retry {
            t.connect_retry = v;
        }
        if let Some(pair) = &self.error_wait {
            let (min, max) = parse_pair(pair)?;
            t.error_wait_min = min;
            t.error_wait_max = max;
        }
        if let Some(v) = self.hold {
            t.hold = Some(v);
        }
        if let Some(v) = self.keepalive {
            t.keepalive = Some(v);
        }
        Ok(())
    }
}

/// Whether `--node` was given on the command line (not only through BRINDLE_NODE).
fn node_flag_on_command_line() -> bool {
    std::env::args_os().skip(1).any(|a| {
        let a = a.to_string_lossy();
        a == "--node" || a.starts_with("--node=")
    })
}

/// The password of `--password` or `--password-file` (clap refuses both); the same
/// for the mesh's `--mesh-password` and `--mesh-password-file`.
fn password_of(
    password: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Option<Secret>, PasswordFileError> {
    match file {
        Some(path) => read_password_file(path).map(Some),
        None => Ok(password.clone()),
    }
}

/// `MIN,MAX` seconds.
fn parse_pair(s: &str) -> Result<(u32, u32), BgpError> {
    let bad = || BgpError::InvalidSetting {
        name: "--error-wait".into(),
        value: 0,
        valid: format!("{s:?} is no MIN,MAX pair; use seconds like 5,30"),
    };
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Add a peer: global (every node peers with it) or, with --node, of one node.
    Add {
        /// Peer name (1-64 of A-Z a-z 0-9 _ -).
        name: String,
        /// The peer's address.
        #[arg(long)]
        peer_ip: Ipv4Addr,
        /// The peer's AS (equal to the node's: iBGP; else eBGP).
        #[arg(long = "as", value_name = "N")]
        as_num: String,
        /// Only this node peers with it (BRINDLE_NODE does not count: without
        /// --node the peer is global).
        #[arg(long)]
        node: Option<String>,
        /// TCP-MD5 password; visible in `ps`: prefer --password-file.
        #[arg(long)]
        password: Option<Secret>,
        /// File holding the TCP-MD5 password (one trailing newline is ignored).
        #[arg(long, value_name = "PATH", conflicts_with = "password")]
        password_file: Option<PathBuf>,
        /// Wait for the peer to connect.
        #[arg(long)]
        passive: bool,
        /// Accept our own AS this many times in received AS paths (mesh off, all
        /// nodes in one AS behind an eBGP router).
        #[arg(long, value_name = "N")]
        allow_local_as: Option<u32>,
    },
    /// List peers (passwords are never shown).
    List,
    /// Remove a peer.
    Rm {
        /// Peer name.
        name: String,
    },
}

#[derive(Serialize)]
struct PeerRow<'a> {
    name: &'a str,
    peer_ip: Ipv4Addr,
    #[serde(rename = "as")]
    as_num: u32,
    /// `null` for a global peer.
    node: Option<&'a str>,
    has_password: bool,
    passive: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_local_as: Option<u32>,
}

impl<'a> From<&'a BgpPeer> for PeerRow<'a> {
    fn from(p: &'a BgpPeer) -> Self {
        Self {
            name: &p.name,
            peer_ip: p.peer_ip,
            as_num: p.as_num,
            node: p.node.as_deref(),
            has_password: p.password.is_some(),
            passive: p.passive,
            allow_local_as: p.allow_local_as,
        }
    }
}

/// The global settings as `-o json` shows them (the mesh password hidden).
fn global_json(g: &BgpGlobal) -> serde_json::Value {
    let mut v = serde_json::to_value(g).unwrap_or_default();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("mesh_password");
        obj.insert(
            "has_mesh_password".into(),
            serde_json::Value::Bool(g.mesh_password.is_some()),
        );
    }
    v
}

fn print_global(cli: &Cli, g: &BgpGlobal, stored: bool) -> anyhow::Result<()> {
    match cli.output {
        Format::Json => print_json(&global_json(g))?,
        Format::Table => {
            let t = &g.timers;
            let on = |b: bool| if b { "on" } else { "off" };
            let mut rows = vec![
                vec!["as".to_string(), g.as_num.to_string()],
                vec!["mesh".into(), on(g.node_mesh).into()],
                vec![
                    "mesh password".into(),
                    if g.mesh_password.is_some() {
                        "set"
                    } else {
                        "none"
                    }
                    .into(),
                ],
                vec!["graceful restart".into(), on(g.graceful_restart).into()],
                vec![
                    "restart time".into(),
                    g.restart_time
                        .map_or("BIRD default (120s)".into(), |t| format!("{t}s")),
                ],
                vec!["connect delay".into(), format!("{}s", t.connect_delay)],
                vec!["connect retry".into(), format!("{}s", t.connect_retry)],
                vec![
                    "error wait".into(),
                    format!("{}s, {}s", t.error_wait_min, t.error_wait_max),
                ],
                vec![
                    "hold time".into(),
                    t.hold
                        .map_or("BIRD default (240s)".into(), |h| format!("{h}s")),
                ],
                vec![
                    "keepalive".into(),
                    t.keepalive.map_or("hold / 3".into(), |k| format!("{k}s")),
                ],
            ];
            if !stored {
                rows.push(vec!["".into(), "(defaults: never set)".into()]);
            }
            print_table(&["SETTING", "VALUE"], &rows);
        }
    }
    Ok(())
}

pub async fn exec(cli: &Cli, cmd: &BgpCommand) -> anyhow::Result<ExitCode> {
    let ipam = cli.etcd.ipam().await?;
    let store = ipam.store();
    let keys = ipam.keys();
    match cmd {
        BgpCommand::Show => {
            let (g, rev) = bgpstore::get_global(store, keys).await?;
            print_global(cli, &g, rev.is_some())?;
        }
        BgpCommand::Set(args) if args.is_empty() => {
            let (g, rev) = bgpstore::get_global(store, keys).await?;
            print_global(cli, &g, rev.is_some())?;
        }
        BgpCommand::Set(args) => {
            let mesh_password = password_of(&args.mesh_password, &args.mesh_password_file)?;
            let g = bgpstore::update_global(store, keys, |g| {
                args.apply(g, mesh_password.as_ref())?;
                Ok(())
            })
            .await?;
            print_global(cli, &g, true)?;
        }
        BgpCommand::Peer(PeerCommand::Add {
            name,
            peer_ip,
            as_num,
            node,
            password,
            password_file,
            passive,
            allow_local_as,
        }) => {
            let password = password_of(password, password_file)?;
            // This `--node` shares its id with the global `--node`, whose
            // BRINDLE_NODE would otherwise silently scope the peer to one node.
            let node = node.clone().filter(|_| node_flag_on_command_line());
            let peer = BgpPeer {
                name: name.clone(),
                peer_ip: *peer_ip,
                as_num: parse_as(as_num)?,
                node,
                password: password.map(|p| p.expose().to_string()),
                passive: *passive,
                allow_local_as: *allow_local_as,
            };
            bgpstore::add_peer(store, keys, &peer).await?;
            if let Some(n) = &peer.node {
                if bgpstore::get_node(store, keys, n).await?.is_none() {
                    eprintln!("brindle: warning: node {n:?} is not registered yet; the peer takes effect once it is");
                }
            }
            match cli.output {
                Format::Json => print_json(&PeerRow::from(&peer))?,
                Format::Table => println!(
                    "BGP peer {} added: {} AS {}, {}",
                    peer.name,
                    peer.peer_ip,
                    peer.as_num,
                    match &peer.node {
                        Some(n) => format!("on node {n}"),
                        None => "on every node".into(),
                    }
                ),
            }
        }
        BgpCommand::Peer(PeerCommand::List) => {
            let peers = bgpstore::list_peers(store, keys).await?;
            let rows: Vec<PeerRow> = peers.iter().map(PeerRow::from).collect();
            match cli.output {
                Format::Json => print_json(&serde_json::json!({ "peers": rows }))?,
                Format::Table => print_table(
                    &["NAME", "PEER-IP", "AS", "NODE", "PASSWORD", "PASSIVE"],
                    &rows
                        .iter()
                        .map(|r| {
                            vec![
                                r.name.to_string(),
                                r.peer_ip.to_string(),
                                r.as_num.to_string(),
                                r.node.unwrap_or("(all)").to_string(),
                                if r.has_password { "yes" } else { "no" }.into(),
                                if r.passive { "yes" } else { "no" }.into(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        BgpCommand::Peer(PeerCommand::Rm { name }) => {
            let removed = bgpstore::remove_peer(store, keys, name).await?;
            match cli.output {
                Format::Json => print_json(&serde_json::json!({ "removed": removed.name }))?,
                Format::Table => println!("BGP peer {} removed", removed.name),
            }
        }
        BgpCommand::Render { check, bird_bin } => {
            let node_name = cli.node();
            let nodes = bgpstore::list_nodes(store, keys).await?;
            let Some(me) = nodes.iter().find(|n| n.name == node_name).cloned() else {
                return Err(BgpStoreError::NoSuchNode(node_name).into());
            };
            let peers = bgpstore::list_peers(store, keys).await?;
            let (global, _) = bgpstore::get_global(store, keys).await?;
            let blocks = ipam.all_blocks().await?;
            let pools = ipam.list_pools().await?;
            let view = bgpstore::routing_view(&blocks, &pools);
            let input = BirdInput {
                global: &global,
                node: &me,
                nodes: &nodes,
                peers: &peers,
                view: &view,
            };
            if let Err(e) = validate_bird_input(&input) {
                eprintln!("brindle: warning: {e} (the configuration leaves the bad entry out)");
            }
            let text = render_bird(&input);
            if *check {
                validate_with_bird(&text, bird_bin)?;
            }
            match cli.output {
                Format::Json => print_json(&serde_json::json!({
                    "node": me.name, "config": text, "checked": check,
                }))?,
                Format::Table => print!("{text}"),
            }
        }
        BgpCommand::RouterConfig { format, as_num } => {
            let nodes = bgpstore::list_nodes(store, keys).await?;
            let (global, _) = bgpstore::get_global(store, keys).await?;
            let router_as = parse_as_opt(as_num.as_deref())?.unwrap_or(global.as_num);
            let f: RouterFormat = format.parse()?;
            if nodes.is_empty() {
                eprintln!("brindle: warning: no nodes are registered yet, so the configuration has no neighbors");
            }
            let text = render_router_config(&global, &nodes, router_as, f);
            match cli.output {
                Format::Json => print_json(&serde_json::json!({
                    "format": f.as_str(), "as": router_as, "config": text,
                }))?,
                Format::Table => print!("{text}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["brindle", "bgp"].iter().chain(args))
    }

    fn peer_add(cli: &Cli) -> (&Option<Secret>, &Option<PathBuf>) {
        match &cli.command {
            super::super::Command::Bgp(BgpCommand::Peer(PeerCommand::Add {
                password,
                password_file,
                ..
            })) => (password, password_file),
            other => panic!("not peer add: {other:?}"),
        }
    }

    #[test]
    fn peer_password_from_a_file_or_the_flag_never_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("md5");
        std::fs::write(&file, "t0r-secret\n").unwrap();
        let file = file.display().to_string();
        let add = [
            "peer",
            "add",
            "tor",
            "--peer-ip",
            "10.0.0.1",
            "--as",
            "65000",
        ];

        let cli = parse(&[&add[..], &["--password-file", &file]].concat()).unwrap();
        let (p, f) = peer_add(&cli);
        let got = password_of(p, f).unwrap().unwrap();
        assert_eq!(got.expose(), "t0r-secret");

        let cli = parse(&[&add[..], &["--password", "fl4g"]].concat()).unwrap();
        let (p, f) = peer_add(&cli);
        assert_eq!(password_of(p, f).unwrap().unwrap().expose(), "fl4g");
        let cli = parse(&add).unwrap();
        let (p, f) = peer_add(&cli);
        assert!(password_of(p, f).unwrap().is_none());

        let both = [&add[..], &["--password", "x", "--password-file", &file]].concat();
        let e = parse(&both).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);

        let missing = dir.path().join("missing").display().to_string();
        let cli = parse(&[&add[..], &["--password-file", &missing]].concat()).unwrap();
        let (p, f) = peer_add(&cli);
        let e = password_of(p, f).unwrap_err().to_string();
        assert!(e.contains(&missing), "{e}");
    }

    #[test]
    fn debug_of_the_command_line_hides_passwords() {
        let add = [
            "peer",
            "add",
            "tor",
            "--peer-ip",
            "10.0.0.1",
            "--as",
            "65000",
            "--password",
            "fl4g",
            "--etcd-password",
            "etcd-pw",
        ];
        let shown = format!("{:?}", parse(&add).unwrap());
        assert!(
            !shown.contains("fl4g") && !shown.contains("etcd-pw"),
            "{shown}"
        );
        assert!(shown.contains("<redacted>"), "{shown}");
        let shown = format!("{:?}", parse(&["set", "--mesh-password", "m3sh"]).unwrap());
        assert!(!shown.contains("m3sh"), "{shown}");
    }
}
