//! `brindled`, the node agent: the Docker network + IPAM driver socket, the local API
//! socket for brindle-cni, and the agent loops (routes, BIRD).

mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use brindle_dataplane::{Dataplane, Firewall, LinuxDataplane, LinuxFirewall};
use clap::{Parser, ValueEnum};
use tokio::task::JoinError;
use tracing::{info, warn};

use crate::api::netns_path::{self, NetnsDirs};
use crate::config::{hostname, EtcdArgs};
use crate::socket::{bind_unix, Access, ApiGroup, Refusal, SocketError};
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
    /// The machine's identity: brindled claims its node name for this machine-id at
    /// start and refuses a name another machine owns (a cloned VM).
    #[arg(
        long,
        env = "BRINDLE_MACHINE_ID_FILE",
        default_value = "/etc/machine-id"
    )]
    pub machine_id_file: PathBuf,
    /// The boot id: a new one tells a reboot of the same machine.
    #[arg(
        long,
        env = "BRINDLE_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_file: PathBuf,
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
    /// A group whose members may call the local API besides root: the socket becomes
    /// mode 0660 owned by it (else 0600). The group must exist.
    #[arg(long, env = "BRINDLE_API_GROUP", value_name = "GROUP")]
    pub api_group: Option<String>,
    /// A directory (besides /run/netns and /var/run/netns) whose files the local API
    /// accepts as a container's netns; repeatable, comma-separated in the environment.
    #[arg(
        long = "netns-dir",
        env = "BRINDLE_NETNS_DIR",
        value_name = "DIR",
        value_delimiter = ',',
        value_parser = netns_path::parse_dir
    )]
    pub netns_dirs: Vec<PathBuf>,
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
    /// How often the crash repair checks this node's veths, endpoint records and
    /// allocations against each other and the runtimes (`10s`, `500ms`, `1m`).
    #[arg(long, env = "BRINDLE_RECONCILE_PERIOD", default_value = "10s", value_parser = crate::agent::reconcile::parse_duration)]
    pub reconcile_period: Duration,
    /// How long a finding of the crash repair (a veth without a record, a record
    /// whose container is gone, an address nobody holds) must last before it is
    /// repaired: longer than any create or delete takes between two of its steps.
    #[arg(long, env = "BRINDLE_RECONCILE_GRACE", default_value = "60s", value_parser = crate::agent::reconcile::parse_duration)]
    pub reconcile_grace: Duration,
}

impl DaemonArgs {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(hostname)
    }
}

/// How long a stop waits for the requests in flight, then for the releases and the
/// veth deletions they deferred.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Run brindled until SIGTERM or SIGINT.
///
/// A stop is graceful: both sockets keep answering until the callers pause (`Drain`),
/// then stop accepting (Docker retries its calls until the next brindled answers;
/// brindle-cni works directly against etcd meanwhile), every request in flight
/// finishes, then the releases they committed after answering, then the veth deletions
/// those requests deferred to the reaper. Whatever a
/// kill -9 interrupts instead is found by the next start's reconcile
/// (`agent/reconcile.rs`).
pub async fn run(args: DaemonArgs) -> anyhow::Result<()> {
    // A mistyped group stops brindled at once, naming it.
    let api_group = args
        .api_group
        .as_deref()
        .map(ApiGroup::lookup)
        .transpose()?;
    let ipam = args.etcd.ipam().await.context("connect to etcd")?;
    let dataplane: Arc<dyn Dataplane> =
        Arc::new(LinuxDataplane::connect().context("open rtnetlink")?);
    let firewall: Arc<dyn Firewall> = Arc::new(LinuxFirewall::new());
    let state = Arc::new(NodeState::new(args.clone(), ipam, dataplane, firewall));
    info!(node = %state.node, "brindled starting");
    // Before serving anything: the node name must be this machine's (agent/register.rs).
    let me = crate::agent::register::machine_identity(
        &args.machine_id_file,
        &args.boot_id_file,
        hostname(),
    )?;
    // One attempt decides before anything is served when etcd answers. While etcd is
    // unreachable brindled serves anyway (nothing can be allocated without etcd, so no
    // address can be handed out twice) and keeps claiming; a name found taken then
    // stops it.
    let claimed = match crate::bgpstore::claim_node(
        state.ipam.store(),
        state.ipam.keys(),
        &state.node,
        &me,
    )
    .await
    {
        Ok(_) => true,
        Err(
            e @ (crate::bgpstore::BgpStoreError::Store(_)
            | crate::bgpstore::BgpStoreError::Contention { .. }),
        ) => {
            warn!(error = %e, "cannot claim the node name yet; serving and retrying every second");
            false
        }
        Err(e) => return Err(e.into()),
    };
    let claim = async {
        if !claimed {
            crate::agent::register::claim_name(
                state.ipam.store(),
                state.ipam.keys(),
                &state.node,
                &me,
            )
            .await?;
        }
        std::future::pending::<anyhow::Result<()>>().await
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopping = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let drain = Drain::default();
    // Both sockets are bound here, from this task, before the servers, the agent and
    // the metrics start: they are created under a process-wide umask
    // (`socket::umask`), and no other thread creates files yet. dockerd runs as root,
    // so the Docker socket stays root-only; `--api-group` opens the local API only.
    let docker_sock = bind_unix(
        &args.docker_plugin_dir.join("brindle.sock"),
        Access::root_only(Refusal::Docker),
    )
    .context("docker plugin socket")?;
    let api_sock = bind_unix(&args.api_socket, Access::new(api_group, Refusal::Cni))
        .context("local API socket")?;
    let docker_router = drain.layer(crate::docker::router(state.clone()));
    let mut docker = tokio::spawn(docker_sock.serve_until(docker_router, stopping()));
    let netns_dirs = NetnsDirs::new(&args.netns_dirs);
    let api_router = drain.layer(crate::api::router(state.clone(), netns_dirs));
    let mut api = tokio::spawn(api_sock.serve_until(api_router, stopping()));
    let agent = state::run_agent(state.clone());
    let metrics = async {
        match args.metrics_addr {
            Some(addr) => crate::agent::metrics::serve(addr).await,
            None => std::future::pending().await,
        }
    };
    let stop = shutdown_signal();
    let served = |r: Result<Result<(), SocketError>, JoinError>| match r {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(e) => Err(anyhow::anyhow!("the server task ended: {e}")),
    };
    tokio::select! {
        r = &mut docker => served(r).context("docker plugin socket")?,
        r = &mut api => served(r).context("local API socket")?,
        r = agent => r.context("agent")?,
        r = metrics => r.context("metrics")?,
        r = claim => r.context("claim the node name")?,
        _ = stop => info!("brindled stopping: finishing the requests in flight"),
    }
    drain.until_quiet().await;
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(STOP_TIMEOUT, async {
        let _ = (&mut docker).await;
        let _ = (&mut api).await;
    })
    .await;
    if drained.is_err() {
        warn!(timeout = ?STOP_TIMEOUT, "requests still in flight; stopping anyway (the next start's reconcile repairs what they leave)");
    }
    finish_deferred(
        "releases answered already",
        || state.write_behind.pending(),
        state.write_behind.settle_all(),
        "the next start's reconcile frees their addresses",
    )
    .await;
    finish_deferred(
        "deferred veth deletions",
        || state.reaper.pending(),
        state.reaper.settle_all(),
        "the next start's reconcile removes the veths",
    )
    .await;
    let _ = std::fs::remove_file(args.docker_plugin_dir.join("brindle.sock"));
    let _ = std::fs::remove_file(&args.api_socket);
    info!("brindled stopped");
    Ok(())
}

/// Wait, at most [`STOP_TIMEOUT`], for work the requests left to finish after their
/// answer (`what`, `pending` of it); say what happens to what is still left.
async fn finish_deferred(
    what: &str,
    pending: impl Fn() -> usize,
    settled: impl std::future::Future<Output = ()>,
    otherwise: &str,
) {
    let n = pending();
    if n == 0 {
        return;
    }
    info!(pending = n, "finishing the {what}");
    if tokio::time::timeout(STOP_TIMEOUT, settled).await.is_err() {
        warn!(pending = pending(), "{what} unfinished; {otherwise}");
    }
}

/// The first phase of a graceful stop. Closing a keep-alive connection races with a
/// request the client is writing on it at that moment, and dockerd's plugin client
/// retries such a request with an empty body (moby's retry re-reads the buffer the
/// first attempt drained), which fails the call. So once stopping, every answer says
/// `Connection: close` (the client opens a new connection for its next call, which is
/// still served), and the sockets close only after [`QUIET`] without a request (at
/// most [`DRAIN_MAX`]): what races then is a client's first call on an idle
/// connection, and new connections are refused, which dockerd retries intact.
#[derive(Clone)]
struct Drain {
    stopping: Arc<std::sync::atomic::AtomicBool>,
    last_request: Arc<std::sync::Mutex<std::time::Instant>>,
}

/// How long the sockets must have been idle before a stop closes them.
const QUIET: Duration = Duration::from_millis(300);

/// The longest a stop waits for [`QUIET`].
const DRAIN_MAX: Duration = Duration::from_secs(5);

impl Default for Drain {
    fn default() -> Self {
        Self {
            stopping: Arc::default(),
            last_request: Arc::new(std::sync::Mutex::new(std::time::Instant::now())),
        }
    }
}

impl Drain {
    fn touch(&self) {
        *self.last_request.lock().unwrap_or_else(|e| e.into_inner()) = std::time::Instant::now();
    }

    /// `router`, with every request noted and, once stopping, every answer closing its
    /// connection.
    fn layer(&self, router: axum::Router) -> axum::Router {
        let drain = self.clone();
        router.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let drain = drain.clone();
                async move {
                    drain.touch();
                    let mut response = next.run(req).await;
                    drain.touch();
                    if drain.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        response.headers_mut().insert(
                            axum::http::header::CONNECTION,
                            axum::http::HeaderValue::from_static("close"),
                        );
                    }
                    response
                }
            },
        ))
    }

    /// Start stopping; return once no request came for [`QUIET`] (or [`DRAIN_MAX`]).
    async fn until_quiet(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let start = std::time::Instant::now();
        loop {
            let idle = self
                .last_request
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed();
            if idle >= QUIET || start.elapsed() >= DRAIN_MAX {
                return;
            }
            tokio::time::sleep(QUIET - idle.min(QUIET) + Duration::from_millis(10)).await;
        }
    }
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
