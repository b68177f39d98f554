//! `brindled`, the node agent: the Docker network + IPAM driver socket, the local API
//! socket for brindle-cni, and the agent loops (routes, BIRD).

mod socket;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use brindle_dataplane::{Dataplane, Firewall, LinuxDataplane, LinuxFirewall};
use clap::{Parser, ValueEnum};
use tracing::info;

use crate::config::{hostname, EtcdArgs};
pub use socket::{serve_unix, UnixPeer};
pub use state::NodeState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// brindled's flags; each has a `BRINDLE_*` environment variable.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "brindled",
    version,
    about = "brindle node agent: Docker driver, CNI fast path, routes, BGP"
)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// This node's name (default: hostname).
    #[arg(long, env = "BRINDLE_NODE")]
    pub node: Option<String>,
    /// This node's IP: BGP router id and next hop for its blocks.
    #[arg(long, env = "BRINDLE_NODE_IP")]
    pub node_ip: Option<Ipv4Addr>,
    /// This node's AS number (default: the global AS).
    #[arg(long = "as", env = "BRINDLE_AS")]
    pub as_num: Option<u32>,
    /// Where Docker looks for plugin sockets; brindled serves `<dir>/brindle.sock`.
    #[arg(
        long,
        env = "BRINDLE_DOCKER_PLUGIN_DIR",
        default_value = "/run/docker/plugins"
    )]
    pub docker_plugin_dir: PathBuf,
    /// dockerd's API socket: the Docker driver asks it which container holds each
    /// endpoint (Docker never tells drivers), for `brindle endpoints`.
    #[arg(
        long,
        env = "BRINDLE_DOCKER_API_SOCKET",
        default_value = "/var/run/docker.sock"
    )]
    pub docker_api_socket: PathBuf,
    /// Local API socket used by brindle-cni.
    #[arg(
        long,
        env = "BRINDLE_API_SOCKET",
        default_value = "/run/brindle/brindled.sock"
    )]
    pub api_socket: PathBuf,
    /// BIRD config file to render and keep current (no BIRD management when absent).
    #[arg(long, env = "BRINDLE_BIRD_CONFIG")]
    pub bird_config: Option<PathBuf>,
    /// birdc control socket.
    #[arg(
        long,
        env = "BRINDLE_BIRDC_SOCKET",
        default_value = "/run/bird/bird.ctl"
    )]
    pub birdc_socket: PathBuf,
    /// `bird`, used to check each rendered configuration (`bird -p -c`).
    #[arg(long, env = "BRINDLE_BIRD_BIN", default_value = "/usr/sbin/bird")]
    pub bird_bin: PathBuf,
    /// `birdc`, used to make BIRD load a new configuration.
    #[arg(long, env = "BRINDLE_BIRDC_BIN", default_value = "/usr/sbin/birdc")]
    pub birdc_bin: PathBuf,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9469).
    #[arg(long, env = "BRINDLE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Keep the host firewall: FORWARD's accept path for endpoint traffic (needed where
    /// its policy is DROP, as dockerd, ufw and firewalld set it), isolation between
    /// networks and outgoing NAT. `false` leaves the firewall to the admin.
    #[arg(long, env = "BRINDLE_FIREWALL", default_value_t = true, action = clap::ArgAction::Set)]
    pub firewall: bool,
    #[arg(long, env = "BRINDLE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl DaemonArgs {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(hostname)
    }
}

/// Run brindled until SIGTERM or SIGINT.
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    let ipam = args.etcd.ipam().await.context("connect to etcd")?;
    let dataplane: Arc<dyn Dataplane> =
        Arc::new(LinuxDataplane::connect().context("open rtnetlink")?);
    let firewall: Arc<dyn Firewall> = Arc::new(LinuxFirewall::new());
    let state = Arc::new(NodeState::new(args.clone(), ipam, dataplane, firewall));
    info!(node = %state.node, "brindled starting");

    let docker_sock = args.docker_plugin_dir.join("brindle.sock");
    let docker = serve_unix(docker_sock, crate::docker::router(state.clone()));
    let api = serve_unix(args.api_socket.clone(), crate::api::router(state.clone()));
    let agent = crate::agent::run(state.clone());
    let metrics = async {
        match args.metrics_addr {
            Some(addr) => crate::agent::metrics::serve(addr).await,
            None => std::future::pending().await,
        }
    };
    let stop = shutdown_signal();
    tokio::select! {
        r = docker => r.context("docker plugin socket")?,
        r = api => r.context("local API socket")?,
        r = agent => r.context("agent")?,
        r = metrics => r.context("metrics")?,
        _ = stop => info!("brindled stopping"),
    }
    let _ = std::fs::remove_file(args.docker_plugin_dir.join("brindle.sock"));
    let _ = std::fs::remove_file(&args.api_socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
