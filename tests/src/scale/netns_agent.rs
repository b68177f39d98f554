//! One real brindled in a network namespace of its own, so the routes it programs
//! (blackholes for its blocks, a /32 per endpoint) never touch the machine's own
//! routing table. The namespace reaches etcd through a veth pair to the root
//! namespace on a /30 of 198.19.0.0/16 (RFC 2544 benchmark addresses; the BGP suites
//! use 198.18.X.0/24). brindled's metrics (`--metrics-addr` inside the namespace)
//! tell when it has loaded its view and programmed its routes.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bins::bin;
use crate::netns::{sh, Netns};
use crate::topology::Proc;

/// Port of brindled's metrics inside the namespace.
const METRICS_PORT: u16 = 9469;

/// The namespace's link to the root namespace; the root end is deleted on drop (the
/// kernel deletes its peer with it).
pub struct Uplink {
    root_if: String,
    /// The root namespace's address (etcd listens on it too).
    pub root_ip: Ipv4Addr,
    /// The namespace's address.
    pub ns_ip: Ipv4Addr,
}

impl Uplink {
    /// A veth pair from the root namespace into `ns`, on a free /30.
    pub fn new(ns: &Netns) -> anyhow::Result<Self> {
        let third = free_third_octet()?;
        let root_ip = Ipv4Addr::new(198, 19, third, 1);
        let ns_ip = Ipv4Addr::new(198, 19, third, 2);
        let root_if = format!("bsc{}", std::process::id() % 1_000_000);
        sh(
            "ip",
            &[
                "link", "add", &root_if, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
            ],
        );
        let link = Uplink {
            root_if,
            root_ip,
            ns_ip,
        };
        sh(
            "ip",
            &[
                "addr",
                "add",
                &format!("{root_ip}/30"),
                "dev",
                &link.root_if,
            ],
        );
        sh("ip", &["link", "set", &link.root_if, "up"]);
        ns.ok(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", "eth0"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        Ok(link)
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.root_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A third octet X such that nothing on this machine uses 198.19.X.0/24 yet.
fn free_third_octet() -> anyhow::Result<u8> {
    let used =
        sh("ip", &["-4", "route", "show", "table", "all"]) + &sh("ip", &["-4", "-o", "addr"]);
    let start = (std::process::id() % 200) as u8;
    (0..=255u8)
        .map(|k| start.wrapping_add(k))
        .find(|x| !used.contains(&format!("198.19.{x}.")))
        .context("no free 198.19.X.0/24 for the benchmark's uplink")
}

/// Host veths named like brindle's (`brl...`), up, each with its peer (up too, so
/// routes to the host side are accepted) in the same namespace: `ip -batch`, about
/// 2 ms per pair.
pub fn add_veths(ns: &Netns, host_ifnames: &[String]) -> anyhow::Result<()> {
    let mut script = String::new();
    for (i, name) in host_ifnames.iter().enumerate() {
        let peer = format!("c{i}");
        script.push_str(&format!(
            "link add {name} type veth peer name {peer}\nlink set {name} up\nlink set {peer} up\n"
        ));
    }
    let out = ns.exec_input(&["ip", "-batch", "-"], &script);
    if !out.status.success() {
        bail!("ip -batch: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Routes with brindle's protocol (98) in the namespace.
pub fn our_routes(ns: &Netns) -> usize {
    ns.ok(&["ip", "-4", "route", "show", "proto", "98"])
        .lines()
        .count()
}

/// What brindled needs to start in the namespace.
pub struct Launch<'a> {
    pub ns: &'a Netns,
    pub uplink: &'a Uplink,
    /// Sockets and log.
    pub dir: &'a Path,
    pub etcd_endpoint: &'a str,
    pub prefix: &'a str,
    pub node: &'a str,
}

/// A running brindled, killed by PID on drop.
pub struct Brindled {
    proc: Proc,
    metrics: SocketAddr,
}

/// How a start went.
#[derive(Debug, Clone, Copy)]
pub struct Startup {
    /// Spawn until the first full load of its view (metrics: one snapshot load).
    pub loaded: Duration,
    /// Spawn until the route pass left every blackhole and endpoint route in place.
    pub ready: Duration,
}

impl Brindled {
    /// Starts brindled inside the namespace: routes only (no BIRD), no firewall, no
    /// Docker, sockets in `dir`, the crash repair's grace far beyond the run (the
    /// simulated containers have veths but no namespaces).
    pub fn spawn(l: &Launch<'_>, tag: &str) -> Self {
        let metrics = SocketAddr::from((l.uplink.ns_ip, METRICS_PORT));
        let sock = |name: &str| l.dir.join(name).display().to_string();
        let plugins = l.dir.join("plugins");
        std::fs::create_dir_all(&plugins).expect("plugin dir");
        let brindled = bin("brindled").display().to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &l.ns.name, &brindled])
            .args(["--etcd-endpoints", l.etcd_endpoint])
            .args(["--etcd-prefix", l.prefix])
            .args(["--node", l.node])
            .args(["--api-socket", &sock("api.sock")])
            .args(["--docker-plugin-dir", &plugins.display().to_string()])
            .args(["--docker-api-socket", &sock("no-docker.sock")])
            .args(["--metrics-addr", &metrics.to_string()])
            .args(["--firewall", "false"])
            .args(["--reconcile-grace", "1h"])
            .env("BRINDLE_LOG", "info");
        let log = l.dir.join(format!("brindled-{tag}.log"));
        Brindled {
            proc: Proc::spawn("brindled", cmd, &log),
            metrics,
        }
    }

    /// Its PID (`ip netns exec` execs brindled in its own process).
    pub fn pid(&self) -> u32 {
        self.proc.pid().expect("running")
    }

    /// Waits until it has loaded its view and reports `endpoints` endpoint routes and
    /// `blocks` blackholes in place; `started` is when it was spawned.
    pub fn wait_ready(
        &mut self,
        started: Instant,
        endpoints: usize,
        blocks: usize,
        timeout: Duration,
    ) -> anyhow::Result<Startup> {
        let mut loaded = None;
        while started.elapsed() < timeout {
            if !self.proc.running() {
                bail!("brindled exited:\n{}", self.proc.log_text());
            }
            let m = self.scrape();
            let count = |name: &str| m.get(name).copied().unwrap_or(0.0) as usize;
            if loaded.is_none() && count("brindle_agent_snapshot_loads_total") > 0 {
                loaded = Some(started.elapsed());
            }
            if let Some(loaded) = loaded {
                if count("brindle_agent_endpoint_routes") == endpoints
                    && count("brindle_agent_blackhole_routes") == blocks
                {
                    let ready = started.elapsed();
                    return Ok(Startup { loaded, ready });
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        bail!(
            "brindled not ready after {timeout:?}:\n{}",
            self.proc.log_text()
        )
    }

    /// `VmRSS` and `VmHWM` (peak) in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = self.status();
        (status_kib(&status, "VmRSS:"), status_kib(&status, "VmHWM:"))
    }

    /// What `VmRSS` is made of, in KiB: `RssAnon` (heap, stacks) and `RssFile` (the
    /// pages of the binary and libraries it touched, shared with other processes).
    pub fn rss_split_kib(&self) -> (u64, u64) {
        let status = self.status();
        (
            status_kib(&status, "RssAnon:"),
            status_kib(&status, "RssFile:"),
        )
    }

    fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("brindled's /proc status")
    }

    /// Its metrics by name (empty while it does not answer yet).
    fn scrape(&self) -> HashMap<String, f64> {
        let Ok(mut conn) = TcpStream::connect_timeout(&self.metrics, Duration::from_millis(200))
        else {
            return HashMap::new();
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /metrics HTTP/1.1\r\nHost: brindled\r\nConnection: close\r\n\r\n";
        let mut text = String::new();
        if conn.write_all(request.as_bytes()).is_err() || conn.read_to_string(&mut text).is_err() {
            return HashMap::new();
        }
        text.lines()
            .filter(|l| l.starts_with("brindle_"))
            .filter_map(|l| l.split_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
            .collect()
    }

    /// Kills it (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        self.proc.stop();
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.proc.log_text()
    }
}

/// The KiB value of one `/proc/PID/status` line.
pub fn status_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
