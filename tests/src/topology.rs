//! Multi-host topologies made of network namespaces, for the BGP suites and the
//! dataplane benchmark:
//!
//! ```text
//!   root ns: etcd on 127.0.0.1 and on F.254 (its veth into the fabric)
//!                                   |
//!   router ns "bgr-*":  bridge fab0 F.1/24 ---+--- host h1 "bgh-*" eth0 F.11 -- containers
//!   (optionally BIRD, or static routes)       +--- host h2 "bgh-*" eth0 F.12 -- containers
//! ```
//!
//! `F` is a free /24 of 198.18.0.0/15 (RFC 2544 test addresses); each topology gets
//! its own test pool `10.X.0.0/16`, covered by an `unreachable` route in the root
//! namespace, so a stray packet never leaves the machine. Each host runs its own
//! `brindled` (per-host sockets and BIRD paths in a temp dir) and, when asked, BIRD.
//! Containers are namespaces wired the way brindle wires them (host veth `brl...` with
//! MAC ee:ee:ee:ee:ee:ee and proxy_arp, `/32` inside, default via 169.254.1.1), with
//! their address from IPAM and an endpoint record in etcd; the agent keeps their /32
//! route. Everything is killed by PID and deleted on drop, also when a test fails,
//! and a failing test prints every log and routing table first.
//!
//! Hosts start with the firewall of a real Docker host (see [`ForwardPolicy`]):
//! `ip_forward` 0 and FORWARD's policy DROP with Docker's `DOCKER-USER` chain, so the
//! suites only pass when brindled opens the path for its endpoints itself.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brindle_ipam::Keys;
use brindle_plugin::endpoints::EndpointRecord;
use serde_json::Value;

use crate::bins::bin;
use crate::bird::{bird_bin, birdc_bin, Bird};
use crate::etcd::Etcd;
use crate::netns::{sh, Netns, UnreachableRoute};

/// Fabric /24s in use by this process (parallel tests).
static TAKEN: Mutex<Option<HashSet<u8>>> = Mutex::new(None);
static IFCOUNT: AtomicU32 = AtomicU32::new(0);

/// Block size of every test pool.
pub const BLOCK_SIZE: u8 = 26;

/// A child process killed (and reaped) on drop.
pub struct Proc {
    child: Option<Child>,
    /// What it is, for messages.
    pub name: String,
    /// Its stdout/stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr into `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
        }
    }

    /// Its PID.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills it now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One simulated host.
pub struct Host {
    /// `PATH` for its brindled; `None`: the test's own. Set before the agent starts
    /// (e.g. a directory without the firewall tools).
    pub path: Option<PathBuf>,
    /// Node name (`h1`, `h2`, ...).
    pub name: String,
    /// Its fabric address (node IP).
    pub ip: Ipv4Addr,
    /// Its private directory (BIRD config and socket, brindled sockets, logs).
    pub dir: PathBuf,
    /// brindled, once started.
    pub brindled: Option<Proc>,
    /// BIRD, once started.
    pub bird: Option<Bird>,
    /// The host namespace (dropped last).
    pub ns: Netns,
}

impl Host {
    /// `--bird-config` of this host.
    pub fn bird_config(&self) -> PathBuf {
        self.dir.join("bird.conf")
    }

    /// `--birdc-socket` of this host.
    pub fn bird_ctl(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// `--api-socket` of this host's brindled.
    pub fn api_socket(&self) -> PathBuf {
        self.dir.join("brindled.sock")
    }

    /// Replaces the host's `filter` table with `rules` (`iptables-restore`, which
    /// flushes what was there, as a restarting firewall service does).
    pub fn restore_filter(&self, rules: &str) {
        let out = self.ns.exec_input(&["iptables-restore"], rules);
        assert!(
            out.status.success(),
            "iptables-restore in {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops brindled (and BIRD) on this host.
    pub fn stop_agent(&mut self) {
        if let Some(p) = self.brindled.as_mut() {
            p.stop();
        }
        self.bird = None;
    }
}

/// One simulated container.
pub struct Container {
    /// Endpoint id and IPAM handle.
    pub id: String,
    /// Index of its host in [`Topology::hosts`].
    pub host: usize,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Host-side veth.
    pub host_ifname: String,
    /// Placed with `brindle-cni` (removed with CNI DEL) rather than by the harness.
    pub cni: bool,
    /// Its network: the segment `test:NAME` for harness-made containers, the conflist
    /// name (segment `cni:NAME`) for CNI ones.
    pub network: String,
    /// `brindle.allow-from` of that network.
    pub allow_from: Vec<String>,
    /// Further interfaces on other networks ([`Topology::add_interface`]).
    pub extra: Vec<Interface>,
    /// Its namespace.
    pub ns: Netns,
}

/// A container's further interface (`eth1`, ...) on another network.
pub struct Interface {
    /// Endpoint id and IPAM handle.
    pub id: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Host-side veth.
    pub host_ifname: String,
    /// Its network (segment `test:NAME`).
    pub network: String,
}

/// The router namespace: fabric bridge, optional BIRD.
pub struct Router {
    /// Its fabric address (`F.1`).
    pub ip: Ipv4Addr,
    /// BIRD, when the test starts one.
    pub bird: Option<Bird>,
    /// The namespace.
    pub ns: Netns,
}

/// Removes the root namespace's fabric veth on drop.
struct RootLink(String);

impl Drop for RootLink {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

/// Releases the fabric /24 on drop.
struct FabricSlot(u8);

impl Drop for FabricSlot {
    fn drop(&mut self) {
        if let Ok(mut t) = TAKEN.lock() {
            if let Some(set) = t.as_mut() {
                set.remove(&self.0);
            }
        }
    }
}

/// FORWARD's policy in the hosts' `filter` table when they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPolicy {
    /// What dockerd leaves on a host where forwarding was off when it started (the
    /// usual case; ufw and firewalld hosts drop too): only brindle's own accept rules
    /// let endpoint traffic through.
    Drop,
    /// A host whose forwarding was already on: nothing drops forwarded traffic, so a
    /// denial seen there can only come from brindle's isolation, not from the policy.
    Accept,
}

impl ForwardPolicy {
    /// The `iptables-restore` input dockerd's start leaves behind: the policy,
    /// `DOCKER-USER` (empty but for its `RETURN`) and FORWARD's jump to it. Fixed text.
    pub fn docker_filter(self) -> &'static str {
        match self {
            ForwardPolicy::Drop => {
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                 :DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
            }
            ForwardPolicy::Accept => {
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                 :DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\n-A DOCKER-USER -j RETURN\nCOMMIT\n"
            }
        }
    }
}

/// How to build a topology.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of hosts.
    pub hosts: usize,
    /// Fast BGP timers (connect delay 1 s etc.), set before any agent starts.
    pub fast_timers: bool,
    /// FORWARD's policy on the hosts: DROP as on real Docker hosts; a run with ACCEPT
    /// shows isolation does not lean on the policy.
    pub forward: ForwardPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            hosts: 2,
            fast_timers: true,
            forward: ForwardPolicy::Drop,
        }
    }
}

/// A whole test network. Fields drop in order: containers, hosts, router, the root
/// veth, etcd, the unreachable guard, the temp dir.
pub struct Topology {
    /// Containers.
    pub containers: Vec<Container>,
    /// Hosts.
    pub hosts: Vec<Host>,
    /// The router.
    pub router: Router,
    _root_link: RootLink,
    /// etcd (root namespace).
    pub etcd: Etcd,
    _unreachable: UnreachableRoute,
    _slot: FabricSlot,
    /// The fabric prefix's first three octets.
    pub fabric: [u8; 3],
    /// The test pool (CIDR), named `pool`.
    pub pool: String,
    /// Scratch directory.
    pub dir: tempfile::TempDir,
}

fn pick_fabric() -> u8 {
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = taken.get_or_insert_with(HashSet::new);
    let start = (std::process::id() % 64) as u8 * 3;
    for k in 0..=255u16 {
        let i = start.wrapping_add(k as u8);
        if set.contains(&i) {
            continue;
        }
        let used = sh("ip", &["-4", "route", "show", "table", "all"]);
        let addrs = sh("ip", &["-4", "-o", "addr"]);
        let needle = format!("198.18.{i}.");
        if used.contains(&needle) || addrs.contains(&needle) {
            continue;
        }
        let pool_needle = format!("10.{}.", 100 + u16::from(i) % 150);
        if used.contains(&pool_needle) {
            continue;
        }
        set.insert(i);
        return i;
    }
    panic!("no free 198.18.X.0/24 for a test fabric");
}

impl Topology {
    /// Builds the fabric, etcd, the router namespace and `opts.hosts` hosts (no
    /// agents yet), and adds pool `pool` (blocks of /26).
    pub fn new(opts: Options) -> Self {
        let slot = FabricSlot(pick_fabric());
        let i = slot.0;
        let fabric = [198, 18, i];
        let pool = format!("10.{}.0.0/16", 100 + u16::from(i) % 150);
        let unreachable = UnreachableRoute::add(&pool);
        let dir = tempfile::Builder::new()
            .prefix("brindle-topo-")
            .tempdir()
            .expect("temp dir");
        let f = |last: u8| Ipv4Addr::new(fabric[0], fabric[1], fabric[2], last);

        let router_ns = Netns::new("bgr");
        router_ns.ok(&["ip", "link", "add", "fab0", "type", "bridge"]);
        router_ns.ok(&["ip", "addr", "add", &format!("{}/24", f(1)), "dev", "fab0"]);
        router_ns.ok(&["ip", "link", "set", "fab0", "up"]);
        let router = Router {
            ip: f(1),
            bird: None,
            ns: router_ns,
        };

        // The root namespace's foot on the fabric, only so that brindled in the host
        // namespaces reaches etcd.
        let n = IFCOUNT.fetch_add(1, Ordering::SeqCst);
        let root_if = format!("bgf{}x{n}", std::process::id() % 100_000);
        sh(
            "ip",
            &[
                "link",
                "add",
                &root_if,
                "type",
                "veth",
                "peer",
                "name",
                "root",
                "netns",
                &router.ns.name,
            ],
        );
        let root_link = RootLink(root_if.clone());
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", f(254)), "dev", &root_if],
        );
        sh("ip", &["link", "set", &root_if, "up"]);
        router
            .ns
            .ok(&["ip", "link", "set", "root", "master", "fab0", "up"]);
        let etcd = Etcd::start_also_on(f(254));

        let mut hosts = Vec::new();
        for h in 0..opts.hosts {
            let name = format!("h{}", h + 1);
            let ip = f(11 + h as u8);
            let ns = Netns::new("bgh");
            let port = format!("p{}", h + 1);
            sh(
                "ip",
                &[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &ns.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &port,
                    "netns",
                    &router.ns.name,
                ],
            );
            router
                .ns
                .ok(&["ip", "link", "set", &port, "master", "fab0", "up"]);
            ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            ns.ok(&["ip", "link", "set", "eth0", "up"]);
            // Needed for proxy ARP of 169.254.1.1 (a route to it must exist), as on
            // real hosts; the router forwards nothing unless a test says so.
            ns.ok(&["ip", "route", "add", "default", "via", &f(1).to_string()]);
            // A Docker host as dockerd leaves it; forwarding stays off until brindled
            // turns it on.
            ns.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
            let host = Host {
                path: None,
                name,
                ip,
                dir: dir.path().join(format!("h{}", h + 1)),
                brindled: None,
                bird: None,
                ns,
            };
            std::fs::create_dir_all(&host.dir).expect("host dir");
            host.restore_filter(opts.forward.docker_filter());
            hosts.push(host);
        }
        let topo = Topology {
            containers: Vec::new(),
            hosts,
            router,
            _root_link: root_link,
            etcd,
            _unreachable: unreachable,
            _slot: slot,
            fabric,
            pool,
            dir,
        };
        topo.cli_ok(
            "h1",
            &[
                "pool",
                "add",
                "pool",
                "--cidr",
                &topo.pool,
                "--block-size",
                &BLOCK_SIZE.to_string(),
            ],
        );
        if opts.fast_timers {
            topo.cli_ok(
                "h1",
                &[
                    "bgp",
                    "set",
                    "--connect-delay",
                    "1",
                    "--connect-retry",
                    "1",
                    "--error-wait",
                    "1,5",
                    "--hold",
                    "9",
                ],
            );
        }
        topo
    }

    /// An address of the fabric.
    pub fn fabric_ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.fabric[0], self.fabric[1], self.fabric[2], last)
    }

    /// The etcd endpoint hosts use.
    pub fn etcd_for_hosts(&self) -> String {
        self.etcd
            .extra_endpoint
            .clone()
            .expect("etcd listens on the fabric")
    }

    /// A namespace `F.last/24` on the fabric (an "internet" host): no route beyond
    /// the fabric, so it cannot answer a container address. Dropped by the caller.
    pub fn fabric_host(&self, last: u8) -> Netns {
        let ns = Netns::new("bgx");
        let n = IFCOUNT.fetch_add(1, Ordering::SeqCst);
        let port = format!("x{n}");
        sh(
            "ip",
            &[
                "link",
                "add",
                "eth0",
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &self.router.ns.name,
            ],
        );
        self.router
            .ns
            .ok(&["ip", "link", "set", &port, "master", "fab0", "up"]);
        let addr = format!("{}/24", self.fabric_ip(last));
        ns.ok(&["ip", "addr", "add", &addr, "dev", "eth0"]);
        ns.ok(&["ip", "link", "set", "eth0", "up"]);
        ns
    }

    /// `brindle ARGS` run inside host `h`'s namespace as its node, the way an admin
    /// runs it on that host (host-local verbs: `node status`, `node cleanup`).
    pub fn host_cli(&self, h: usize, args: &[&str]) -> Output {
        let host = &self.hosts[h];
        Command::new("ip")
            .args(["netns", "exec", &host.ns.name])
            .arg(bin("brindle"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BRINDLE_ETCD_ENDPOINTS", self.etcd_for_hosts())
            .env("BRINDLE_NODE", &host.name)
            .output()
            .expect("run brindle")
    }

    /// A `brindle` command as node `node` (from the root namespace).
    pub fn cli(&self, node: &str, args: &[&str]) -> Output {
        crate::bins::brindle(&self.etcd.endpoint, node)
            .args(args)
            .output()
            .expect("run brindle")
    }

    /// Runs `brindle` and expects success; returns stdout.
    pub fn cli_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.cli(node, args);
        assert!(
            out.status.success(),
            "brindle {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts brindled on host `h`; with `bird`, it manages a BIRD config, and BIRD
    /// is started once brindled wrote the first one.
    pub fn start_agent(&mut self, h: usize, bird: bool) {
        self.start_agent_with(h, bird, bird, &[]);
    }

    /// Starts brindled on host `h` with `extra` flags; with `bird_config` it manages a
    /// BIRD config, and with `start_bird` BIRD starts once the first one is written.
    pub fn start_agent_with(
        &mut self,
        h: usize,
        bird_config: bool,
        start_bird: bool,
        extra: &[&str],
    ) {
        let bird = bird_config;
        let endpoint = self.etcd_for_hosts();
        let host = &mut self.hosts[h];
        let path = match &host.path {
            Some(p) => p.clone().into_os_string(),
            None => std::env::var_os("PATH").unwrap_or_default(),
        };
        // `ip` from the test's PATH: with the child's PATH set, Command would look there.
        let mut cmd = Command::new(program_in_path("ip"));
        cmd.args(["netns", "exec", &host.ns.name])
            .arg(bin("brindled"))
            .env_clear()
            .env("PATH", path)
            .env(
                "BRINDLE_LOG",
                std::env::var("BRINDLE_TEST_LOG")
                    .unwrap_or_else(|_| "info,brindle_plugin=debug".into()),
            )
            .args(["--node", &host.name])
            .args(["--node-ip", &host.ip.to_string()])
            .args(["--etcd-endpoints", &endpoint])
            .arg("--docker-plugin-dir")
            .arg(host.dir.join("plugins"))
            .arg("--api-socket")
            .arg(host.api_socket());
        if bird {
            cmd.arg("--bird-config")
                .arg(host.bird_config())
                .arg("--birdc-socket")
                .arg(host.bird_ctl())
                .arg("--bird-bin")
                .arg(bird_bin())
                .arg("--birdc-bin")
                .arg(birdc_bin());
        }
        cmd.args(extra);
        let log = host.dir.join("brindled.log");
        host.brindled = Some(Proc::spawn(&format!("brindled {}", host.name), cmd, &log));
        if !start_bird {
            return;
        }
        let conf = host.bird_config();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !conf.exists() {
            let running = host.brindled.as_mut().is_some_and(Proc::running);
            assert!(
                running && Instant::now() < deadline,
                "brindled on {} wrote no BIRD config (running: {running}):\n{}",
                host.name,
                host.brindled
                    .as_ref()
                    .map(Proc::log_text)
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        host.bird = Some(Bird::start(&host.ns, &conf, &host.dir));
    }

    /// Starts brindled (and BIRD) on every host and waits until every BGP mesh
    /// session is up (when the mesh is on).
    pub fn start_agents(&mut self, bird: bool) {
        for h in 0..self.hosts.len() {
            self.start_agent(h, bird);
        }
    }

    /// Waits until host `h`'s BIRD has session `proto` established.
    pub fn wait_session(&self, h: usize, proto: &str) -> Duration {
        let bird = self.hosts[h].bird.as_ref().expect("BIRD runs on the host");
        match bird.wait_established(proto, Duration::from_secs(30)) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// Waits for the full mesh between all hosts.
    pub fn wait_mesh(&self) {
        for a in 0..self.hosts.len() {
            for b in 0..self.hosts.len() {
                if a != b {
                    let proto = format!("Mesh_{}", self.hosts[b].ip.to_string().replace('.', "_"));
                    self.wait_session(a, &proto);
                }
            }
        }
    }

    /// A container on host `h` with a dynamic address from the node's blocks, or
    /// `fixed`, on network `test`. Returns its index in [`Topology::containers`].
    pub fn add_container(&mut self, h: usize, fixed: Option<Ipv4Addr>) -> usize {
        self.add_container_on(h, fixed, "test", &[])
    }

    /// A container on host `h` (dynamic address, or `fixed`) on network `network`
    /// (segment `test:NETWORK`), admitting only `allow_from` from outside every pool
    /// when not empty. Returns its index in [`Topology::containers`].
    pub fn add_container_on(
        &mut self,
        h: usize,
        fixed: Option<Ipv4Addr>,
        network: &str,
        allow_from: &[&str],
    ) -> usize {
        let n = IFCOUNT.fetch_add(1, Ordering::SeqCst);
        let id = format!("ctr{}x{n}", std::process::id());
        let ns = Netns::new("bgc");
        let (ip, host_ifname) = self.wire(h, &ns, &id, &id, "eth0", fixed, network, allow_from);
        // Its only interface so far: the default route goes through it.
        ns.ok(&[
            "ip",
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ]);
        ns.ok(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ]);
        self.containers.push(Container {
            id,
            host: h,
            ip,
            host_ifname,
            cni: false,
            network: network.to_string(),
            allow_from: allow_from.iter().map(|s| s.to_string()).collect(),
            extra: Vec::new(),
            ns,
        });
        self.containers.len() - 1
    }

    /// Gives harness-made container `c` another interface (`eth1`, ...) on `network`
    /// with its own address: one container on two networks (its endpoint records share
    /// the `container_id`). Its default route stays on `eth0`. Returns the address.
    pub fn add_interface(&mut self, c: usize, network: &str, allow_from: &[&str]) -> Ipv4Addr {
        let ctr = &self.containers[c];
        assert!(!ctr.cni, "add_interface is for harness-made containers");
        let ifname = format!("eth{}", ctr.extra.len() + 1);
        let id = format!("{}{ifname}", ctr.id);
        let (h, container_id) = (ctr.host, ctr.id.clone());
        let (ip, host_ifname) = self.wire(
            h,
            &self.containers[c].ns,
            &id,
            &container_id,
            &ifname,
            None,
            network,
            allow_from,
        );
        self.containers[c].extra.push(Interface {
            id,
            ip,
            host_ifname,
            network: network.to_string(),
        });
        ip
    }

    /// Allocates an address (handle `id`) and wires it as brindle does: host veth
    /// `brl...` (MAC ee:ee:ee:ee:ee:ee, proxy ARP) to `ifname` in `ns` holding the
    /// /32, then writes the endpoint record. Returns the address and the host veth.
    #[allow(clippy::too_many_arguments)]
    fn wire(
        &self,
        h: usize,
        ns: &Netns,
        id: &str,
        container_id: &str,
        ifname: &str,
        fixed: Option<Ipv4Addr>,
        network: &str,
        allow_from: &[&str],
    ) -> (Ipv4Addr, String) {
        let n = IFCOUNT.fetch_add(1, Ordering::SeqCst);
        let node = self.hosts[h].name.clone();
        let mut args = vec![
            "ipam".to_string(),
            "alloc".into(),
            "--handle".into(),
            id.to_string(),
            "--attr".into(),
            format!("endpoint={id}"),
            "-o".into(),
            "json".into(),
        ];
        if let Some(ip) = fixed {
            args.push("--ip".into());
            args.push(ip.to_string());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out: Value = serde_json::from_str(&self.cli_ok(&node, &argv)).expect("alloc json");
        let ip: Ipv4Addr = out["ip"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("allocated ip");

        let host_ifname = format!(
            "brl{:011x}",
            (u64::from(std::process::id()) << 16) | u64::from(n)
        );
        let host_ifname = host_ifname[..14.min(host_ifname.len())].to_string();
        let hns = &self.hosts[h].ns;
        sh(
            "ip",
            &[
                "link",
                "add",
                &host_ifname,
                "netns",
                &hns.name,
                "type",
                "veth",
                "peer",
                "name",
                ifname,
                "netns",
                &ns.name,
            ],
        );
        hns.ok(&[
            "ip",
            "link",
            "set",
            &host_ifname,
            "address",
            "ee:ee:ee:ee:ee:ee",
        ]);
        hns.ok(&["ip", "link", "set", &host_ifname, "up"]);
        hns.ok(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{host_ifname}.proxy_arp=1"),
            &format!("net.ipv4.neigh.{host_ifname}.proxy_delay=0"),
        ]);
        ns.ok(&["ip", "addr", "add", &format!("{ip}/32"), "dev", ifname]);
        ns.ok(&["ip", "link", "set", ifname, "up"]);

        // The endpoint record: brindled keeps the /32 route and the firewall from it.
        let record = EndpointRecord {
            id: id.to_string(),
            node: node.clone(),
            orchestrator: "test".into(),
            container_id: Some(container_id.to_string()),
            network: network.to_string(),
            ip,
            mac: None,
            host_ifname: host_ifname.clone(),
            handle: id.to_string(),
            segment: Some(format!("test:{network}")),
            allow_from: allow_from
                .iter()
                .map(|s| s.parse().expect("allow_from CIDR"))
                .collect(),
        };
        self.etcd.etcdctl(&[
            "put",
            &Keys::default_prefix().endpoint(&node, id),
            &serde_json::to_string(&record).expect("endpoint record json"),
        ]);
        (ip, host_ifname)
    }

    /// The CNI network configuration hosts use (`type: brindle`, IPAM
    /// `brindle-ipam`, brindled's fast path on host `h`), network `bgp-test`.
    pub fn cni_conf(&self, h: usize) -> Value {
        self.cni_conf_on(h, "bgp-test", &[])
    }

    /// The CNI network configuration of network `name` (segment `cni:NAME`) on host
    /// `h`, with `brindle.allow-from` when `allow_from` is not empty.
    pub fn cni_conf_on(&self, h: usize, name: &str, allow_from: &[String]) -> Value {
        let host = &self.hosts[h];
        let mut conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "type": "brindle",
            "etcd_endpoints": self.etcd_for_hosts(),
            "node": host.name,
            "api_socket": host.api_socket(),
            "ipam": {"type": "brindle-ipam", "pool": "pool"},
        });
        if !allow_from.is_empty() {
            conf["brindle.allow-from"] = serde_json::json!(allow_from);
        }
        conf
    }

    /// Runs `brindle-cni` inside host `h`'s namespace, as a runtime there would.
    fn cni(
        &self,
        h: usize,
        conf: &Value,
        command: &str,
        id: &str,
        ns: &Netns,
        ip: Option<Ipv4Addr>,
    ) -> Value {
        let dir = self.dir.path().join("cni-bin");
        if !dir.exists() {
            std::fs::create_dir_all(&dir).expect("cni bin dir");
            for name in ["brindle", "brindle-ipam"] {
                std::os::unix::fs::symlink(bin("brindle-cni"), dir.join(name))
                    .expect("symlink brindle-cni");
            }
        }
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[h].ns.name])
            .arg(dir.join("brindle"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ip) = ip {
            cmd.env("CNI_ARGS", format!("IP={ip}"));
        }
        let mut child = cmd.spawn().expect("run brindle-cni");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(conf.to_string().as_bytes())
                .expect("write netconf");
        }
        let out = child.wait_with_output().expect("brindle-cni");
        assert!(
            out.status.success(),
            "brindle-cni {command} on {} failed: {}{}",
            self.hosts[h].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// A container on host `h` placed by `brindle-cni` ADD (dynamic address, or
    /// `fixed` through `CNI_ARGS=IP=`) on network `bgp-test`. Returns its index.
    pub fn add_container_cni(&mut self, h: usize, fixed: Option<Ipv4Addr>) -> usize {
        self.add_container_cni_on(h, fixed, "bgp-test", &[])
    }

    /// A container on host `h` placed by `brindle-cni` ADD with the conflist `name`
    /// (segment `cni:NAME`) and `brindle.allow-from` = `allow_from` when not empty.
    pub fn add_container_cni_on(
        &mut self,
        h: usize,
        fixed: Option<Ipv4Addr>,
        name: &str,
        allow_from: &[&str],
    ) -> usize {
        let n = IFCOUNT.fetch_add(1, Ordering::SeqCst);
        let id = format!("ctr{}x{n}", std::process::id());
        let ns = Netns::new("bgc");
        let allow_from: Vec<String> = allow_from.iter().map(|s| s.to_string()).collect();
        let conf = self.cni_conf_on(h, name, &allow_from);
        let result = self.cni(h, &conf, "ADD", &id, &ns, fixed);
        let ip: Ipv4Addr = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in the CNI result {result}"));
        let host_ifname = result["interfaces"]
            .as_array()
            .and_then(|l| l.iter().find(|i| i.get("sandbox").is_none()))
            .and_then(|i| i["name"].as_str())
            .unwrap_or_else(|| panic!("no host interface in the CNI result {result}"))
            .to_string();
        self.containers.push(Container {
            id,
            host: h,
            ip,
            host_ifname,
            cni: true,
            network: name.to_string(),
            allow_from,
            extra: Vec::new(),
            ns,
        });
        self.containers.len() - 1
    }

    /// Deletes container `c`: veth, endpoint record, address (the namespace goes
    /// when the topology drops).
    pub fn remove_container(&mut self, c: usize) {
        let ctr = &self.containers[c];
        if ctr.cni {
            let conf = self.cni_conf_on(ctr.host, &ctr.network, &ctr.allow_from);
            self.cni(ctr.host, &conf, "DEL", &ctr.id, &ctr.ns, None);
            return;
        }
        let host = &self.hosts[ctr.host];
        let ifaces = std::iter::once((&ctr.id, &ctr.host_ifname))
            .chain(ctr.extra.iter().map(|i| (&i.id, &i.host_ifname)));
        for (id, host_ifname) in ifaces {
            let _ = host.ns.exec(&["ip", "link", "del", host_ifname]);
            self.etcd
                .etcdctl(&["del", &Keys::default_prefix().endpoint(&host.name, id)]);
            self.cli_ok(&host.name, &["ipam", "release", "--handle", id]);
        }
    }

    /// The block (CIDR) holding `ip`.
    pub fn block_of(ip: Ipv4Addr) -> String {
        let mask = u32::MAX << (32 - BLOCK_SIZE);
        format!("{}/{BLOCK_SIZE}", Ipv4Addr::from(u32::from(ip) & mask))
    }

    /// `ip -j route show` in a namespace, as JSON objects.
    pub fn routes(ns: &Netns) -> Vec<Value> {
        let out = ns.ok(&["ip", "-j", "-4", "route", "show"]);
        serde_json::from_str::<Vec<Value>>(&out).unwrap_or_default()
    }

    /// The route for exactly `dst` (`10.0.0.0/26`, or `10.0.0.5` for a /32).
    pub fn route(ns: &Netns, dst: &str) -> Option<Value> {
        let want = dst.strip_suffix("/32").unwrap_or(dst);
        Self::routes(ns)
            .into_iter()
            .find(|r| r["dst"].as_str() == Some(want))
    }

    /// Waits until `ns` has a route for `dst` via `gateway` (any gateway: `None`).
    pub fn wait_route(
        ns: &Netns,
        dst: &str,
        gateway: Option<Ipv4Addr>,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if let Some(r) = Self::route(ns, dst) {
                let gw = r["gateway"].as_str();
                if gateway.is_none_or(|g| gw == Some(g.to_string().as_str())) {
                    return Ok(start.elapsed());
                }
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} has no route {dst} via {gateway:?} after {timeout:?}; routes: {}",
                    ns.name,
                    ns.ok(&["ip", "-4", "route", "show"])
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `ns` has no route for `dst`.
    pub fn wait_no_route(ns: &Netns, dst: &str, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            if Self::route(ns, dst).is_none() {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{} still routes {dst} after {timeout:?}: {}",
                    ns.name,
                    ns.ok(&["ip", "-4", "route", "show"])
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ping` from container `from` to `to`: how many of `count` came back.
    pub fn ping(&self, from: usize, to: Ipv4Addr, count: u32) -> u32 {
        ping_from(&self.containers[from].ns, to, count)
    }

    /// Everything useful when a test fails: logs, routes, BIRD sessions.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        for h in &self.hosts {
            s.push_str(&format!("==== host {} ({}) {}\n", h.name, h.ip, h.ns.name));
            s.push_str(&String::from_utf8_lossy(
                &h.ns.exec(&["ip", "-4", "route", "show"]).stdout,
            ));
            s.push_str("-- iptables-save -t filter\n");
            s.push_str(&String::from_utf8_lossy(
                &h.ns.exec(&["iptables-save", "-t", "filter"]).stdout,
            ));
            s.push_str("-- nft list table ip brindle\n");
            s.push_str(&String::from_utf8_lossy(
                &h.ns.exec(&["nft", "list", "table", "ip", "brindle"]).stdout,
            ));
            if let Some(b) = &h.bird {
                s.push_str(&format!("-- birdc show protocols\n{}\n", b.protocols()));
                s.push_str(&format!("-- bird log\n{}\n", b.log_text()));
            }
            if let Some(p) = &h.brindled {
                let log = p.log_text();
                let tail: Vec<&str> = log.lines().rev().take(80).collect();
                s.push_str("-- brindled log (last 80 lines)\n");
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s.push_str(&format!("==== router {}\n", self.router.ns.name));
        s.push_str(&String::from_utf8_lossy(
            &self.router.ns.exec(&["ip", "-4", "route", "show"]).stdout,
        ));
        if let Some(b) = &self.router.bird {
            s.push_str(&format!("-- birdc show protocols\n{}\n", b.protocols()));
        }
        s
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        // Processes first (explicitly, before any namespace goes away).
        for h in &mut self.hosts {
            if let Some(p) = h.brindled.as_mut() {
                p.stop();
            }
            h.bird = None;
        }
        self.router.bird = None;
        // The fields then drop in order: containers, hosts, router (namespaces and
        // veths), the root veth, etcd, the unreachable route, the temp dir.
    }
}

/// The first `name` in the test's own PATH (absolute), or `name` itself.
fn program_in_path(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// `busybox ping` from inside `ns`: replies received out of `count`.
pub fn ping_from(ns: &Netns, to: Ipv4Addr, count: u32) -> u32 {
    let out = ns.exec(&[
        "busybox",
        "ping",
        "-c",
        &count.to_string(),
        "-i",
        "0.2",
        "-W",
        "2",
        "-w",
        "8",
        &to.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(" packets transmitted, ")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// Kinds of interfaces in `ns` (`ip -d -j link`), e.g. `veth`, `bridge`, `ipip`.
pub fn link_kinds(ns: &Netns) -> Vec<(String, String)> {
    let out = ns.ok(&["ip", "-d", "-j", "link", "show"]);
    let links: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    links
        .iter()
        .map(|l| {
            (
                l["ifname"].as_str().unwrap_or("?").to_string(),
                l["linkinfo"]["info_kind"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}
