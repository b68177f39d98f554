//! A self-contained Docker host for the e2e suites and the Docker benchmark.
//!
//! Everything runs inside one network namespace that plays the host: etcd (on the
//! namespace's own 127.0.0.1:2379), brindled and a dedicated dockerd (Debian `docker.io`,
//! own `--data-root`, `--exec-root`, pidfile and API socket in a temp dir). Containers,
//! their veths, brindle's routes, Docker's bridge and iptables rules all live in that
//! namespace, so nothing here can disturb the machine's own routes or another suite's
//! brindled (whose agent reconciles every brindle route of its namespace), and no
//! packet can leave: the namespace's only uplink is a veth whose peer stays down.
//!
//! Processes run in the namespace with `nsenter --net` (not `ip netns exec`, which
//! remounts /sys and hides the cgroup mounts dockerd needs). dockerd only looks for
//! plugin sockets in /run/docker/plugins, so brindled serves the plugin there under the
//! name `brindle`, or, for other names, behind a spec file in /etc/docker/plugins.
//! Everything started is stopped by PID when the host is dropped.
//!
//! The host boots like a real one: forwarding is off when dockerd starts, so dockerd
//! turns it on and sets FORWARD's policy to DROP, and only brindle's own accept path
//! (brindled's firewall) lets container traffic through. [`Host::start`] asserts that
//! policy; [`HostConfig::forwarding_before_dockerd`] gives the kinder ACCEPT host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::bins::bin;
use crate::netns::{is_root, sh, Netns, UnreachableRoute};

/// The test image: Debian's static busybox with applet links, imported with
/// `docker import` (no registry needed).
pub const IMAGE: &str = "brindle-bb:latest";

/// The host's own address (on its uplink), for container → host traffic.
pub const HOST_IP: &str = "10.209.255.1";

/// busybox applets linked in the image.
const APPLETS: &[&str] = &[
    "sh", "ash", "ping", "ip", "nc", "sleep", "cat", "ls", "echo", "true", "false", "ifconfig",
    "route", "arp", "hostname", "ps", "kill", "grep", "awk", "wget", "ln", "mkdir", "env",
];

/// How the plugin is published to dockerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// Docker driver name. `brindle` is served at /run/docker/plugins/brindle.sock;
    /// any other name through /etc/docker/plugins/NAME.spec.
    pub plugin: String,
    /// brindle node name.
    pub node: String,
    /// Start dockerd with its iptables management (inside the namespace only).
    pub iptables: bool,
    /// Turn `net.ipv4.ip_forward` on before dockerd starts, so dockerd leaves FORWARD's
    /// policy at ACCEPT. Real hosts boot with forwarding off and dockerd then sets the
    /// policy to DROP, which is the default here; issue 8 asks to keep one run with
    /// ACCEPT too (the kind setting that hid the bug), and only that run sets this.
    pub forwarding_before_dockerd: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        Self {
            plugin: "brindle".into(),
            node: "dockerhost".into(),
            iptables: true,
            forwarding_before_dockerd: false,
        }
    }
}

/// One namespace-host with etcd, brindled and dockerd.
pub struct Host {
    pub cfg: HostConfig,
    pub ns: Netns,
    /// Extra environment of brindled (`BRINDLE_RECONCILE_GRACE`, ...), applied at its
    /// next start.
    pub brindled_env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    etcd: Option<Child>,
    brindled: Option<Child>,
    dockerd: Option<Child>,
}

impl Host {
    /// Create the namespace and start everything; panics with logs when a part fails.
    pub fn start(cfg: HostConfig) -> Host {
        let ns = Netns::new("brldock");
        // The uplink: an address for the host and a default route (the host veths
        // answer ARP for 169.254.1.1 only for addresses routed elsewhere), on a veth
        // whose peer stays down, so nothing routed there goes anywhere.
        ns.ok(&[
            "ip", "link", "add", "hostif", "type", "veth", "peer", "name", "hostpeer",
        ]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            "hostif",
        ]);
        ns.ok(&["ip", "link", "set", "hostif", "up"]);
        ns.ok(&["ip", "route", "add", "default", "dev", "hostif"]);
        // Forwarding off when dockerd starts, as on a freshly booted host: dockerd turns
        // it on and sets FORWARD's policy to DROP (unless the config asks for ACCEPT).
        let forward = if cfg.forwarding_before_dockerd {
            "1"
        } else {
            "0"
        };
        ns.ok(&[
            "sh",
            "-c",
            &format!("echo {forward} > /proc/sys/net/ipv4/ip_forward"),
        ]);
        let dir = tempfile::Builder::new()
            .prefix("brindle-docker-")
            .tempdir()
            .expect("temp dir");
        let mut host = Host {
            cfg,
            ns,
            brindled_env: Vec::new(),
            dir,
            etcd: None,
            brindled: None,
            dockerd: None,
        };
        host.publish_plugin();
        host.start_etcd();
        // dockerd before brindled, as a host boots: brindled turns ip_forward on, and
        // dockerd finding it on would leave FORWARD at ACCEPT.
        host.start_dockerd();
        host.check_forward_policy();
        host.start_brindled();
        host.import_image();
        host
    }

    /// The policy dockerd left on FORWARD is the one this host claims to have, so the
    /// test world cannot silently become kinder than a real Docker host.
    fn check_forward_policy(&self) {
        if !self.cfg.iptables {
            return;
        }
        let want = if self.cfg.forwarding_before_dockerd {
            "ACCEPT"
        } else {
            "DROP"
        };
        assert_eq!(
            self.forward_policy(),
            want,
            "dockerd started with ip_forward={} should leave FORWARD's policy at {want}:\n{}",
            u8::from(self.cfg.forwarding_before_dockerd),
            self.ns.ok(&["iptables", "-S", "FORWARD"])
        );
    }

    /// The `filter` table's FORWARD policy in the host (`ACCEPT`, `DROP`), as
    /// `iptables -S FORWARD` shows it.
    pub fn forward_policy(&self) -> String {
        let rules = self.ns.ok(&["iptables", "-S", "FORWARD"]);
        rules
            .lines()
            .find_map(|l| l.strip_prefix("-P FORWARD "))
            .unwrap_or_else(|| panic!("no FORWARD policy in:\n{rules}"))
            .trim()
            .to_string()
    }

    /// The keys under `prefix` in the host's etcd.
    pub fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        let out = self
            .nsenter("etcdctl")
            .args(["get", "--prefix", "--keys-only", prefix])
            .env("ETCDCTL_API", "3")
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl get {prefix}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `DOCKER_HOST` of this host's dockerd.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.dir().join("docker.sock").display())
    }

    /// A command run in the host's network namespace (`nsenter --net`).
    pub fn nsenter(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg("--")
            .arg(program);
        cmd
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(name))
            .expect("log file")
    }

    /// A whole log of the host's dir (`brindled.log`, `dockerd.log`, `etcd.log`),
    /// without terminal color codes.
    pub fn log(&self, name: &str) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir().join(name)).unwrap_or_default())
    }

    /// The last lines of a log in the host's dir (`etcd.log`, `brindled.log`, ...).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        let text = self.log(name);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    // --- etcd ---------------------------------------------------------------------

    pub fn start_etcd(&mut self) {
        assert!(self.etcd.is_none(), "etcd already running");
        let child = self
            .nsenter("etcd")
            .args(["--name", "e2e", "--data-dir"])
            .arg(self.dir().join("etcd"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(self.log_file("etcd.log"))
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.etcd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let ok = self
                .nsenter("etcdctl")
                .args(["--dial-timeout=1s", "endpoint", "health"])
                .env("ETCDCTL_API", "3")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd did not become healthy:\n{}",
            self.log_tail("etcd.log", 30)
        );
    }

    /// Kill etcd (its data stays for [`Host::start_etcd`]).
    pub fn stop_etcd(&mut self) {
        if let Some(mut c) = self.etcd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // --- brindled -----------------------------------------------------------------

    fn plugin_dir(&self) -> PathBuf {
        if self.cfg.plugin == "brindle" {
            PathBuf::from("/run/docker/plugins")
        } else {
            self.dir().join("plugin")
        }
    }

    /// The socket brindled serves the plugin on.
    pub fn plugin_socket(&self) -> PathBuf {
        self.plugin_dir().join("brindle.sock")
    }

    fn spec_file(&self) -> Option<PathBuf> {
        (self.cfg.plugin != "brindle")
            .then(|| PathBuf::from(format!("/etc/docker/plugins/{}.spec", self.cfg.plugin)))
    }

    fn publish_plugin(&self) {
        if let Some(spec) = self.spec_file() {
            std::fs::create_dir_all("/etc/docker/plugins").expect("create /etc/docker/plugins");
            std::fs::write(
                &spec,
                format!("unix://{}\n", self.plugin_socket().display()),
            )
            .expect("write plugin spec");
        }
    }

    pub fn start_brindled(&mut self) {
        assert!(self.brindled.is_none(), "brindled already running");
        let child = self
            .nsenter(bin("brindled"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BRINDLE_ETCD_ENDPOINTS", "http://127.0.0.1:2379")
            .env("BRINDLE_NODE", &self.cfg.node)
            .env("BRINDLE_DOCKER_PLUGIN_DIR", self.plugin_dir())
            .env("BRINDLE_API_SOCKET", self.api_socket())
            .env("BRINDLE_DOCKER_API_SOCKET", self.dir().join("docker.sock"))
            .env("BRINDLE_LOG", "info,brindle_plugin::docker=debug")
            .envs(self.brindled_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(self.log_file("brindled.log"))
            .stderr(self.log_file("brindled.log"))
            .spawn()
            .expect("start brindled");
        self.brindled = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if is_socket(&self.plugin_socket()) {
                return;
            }
            if let Some(Ok(Some(status))) = self.brindled.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "brindled exited with {status}:\n{}",
                    self.log_tail("brindled.log", 30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "brindled did not create {}:\n{}",
            self.plugin_socket().display(),
            self.log_tail("brindled.log", 30)
        );
    }

    /// SIGTERM brindled and wait for it.
    pub fn stop_brindled(&mut self) {
        if let Some(c) = self.brindled.take() {
            stop_child(c, Duration::from_secs(10));
        }
    }

    /// SIGKILL brindled (kill -9: no cleanup of any kind) and reap it. Its stale plugin
    /// socket is removed (dockerd retries either way) so that [`Host::start_brindled`]
    /// waits for the next brindled's.
    pub fn kill_brindled(&mut self) {
        if let Some(mut c) = self.brindled.take() {
            let _ = c.kill();
            let _ = c.wait();
            let _ = std::fs::remove_file(self.plugin_socket());
        }
    }

    /// brindled's PID, while it runs.
    pub fn brindled_pid(&self) -> Option<u32> {
        self.brindled.as_ref().map(Child::id)
    }

    /// `BRINDLE_API_SOCKET` of brindled (the CNI fast path).
    pub fn api_socket(&self) -> PathBuf {
        self.dir().join("api.sock")
    }

    // --- dockerd ------------------------------------------------------------------

    pub fn start_dockerd(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd already running");
        let d = self.dir();
        let child = self
            .nsenter("dockerd")
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("-H")
            .arg(self.docker_host())
            .arg(format!("--iptables={}", self.cfg.iptables))
            .stdin(Stdio::null())
            .stdout(self.log_file("dockerd.log"))
            .stderr(self.log_file("dockerd.log"))
            .spawn()
            .expect("start dockerd (apt-get install docker.io)");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self
                .docker(&["version", "--format", "{{.Server.Version}}"])
                .status
                .success()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.dockerd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "dockerd exited with {status}:\n{}",
                    self.log_tail("dockerd.log", 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "dockerd did not answer:\n{}",
            self.log_tail("dockerd.log", 30)
        );
    }

    /// SIGTERM dockerd (it stops its containers) and wait up to `timeout`, then SIGKILL.
    pub fn stop_dockerd(&mut self, timeout: Duration) {
        if let Some(c) = self.dockerd.take() {
            stop_child(c, timeout);
        }
        // dockerd makes its data root a private bind mount of itself; unmount what it
        // leaves behind in our mount namespace.
        unmount_under(self.dir());
    }

    /// Run the docker CLI against this host.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", self.docker_host())
            .args(args)
            .output()
            .expect("run docker")
    }

    /// Run docker and expect success; returns trimmed stdout.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\nbrindled:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail("brindled.log", 20)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Run docker and expect failure; returns stderr.
    pub fn docker_fails(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn import_image(&self) {
        if self.docker(&["image", "inspect", IMAGE]).status.success() {
            return;
        }
        let root = self.dir().join("rootfs");
        let bindir = root.join("bin");
        std::fs::create_dir_all(&bindir).expect("rootfs dir");
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox (apt-get install busybox-static)");
        std::fs::copy(busybox, bindir.join("busybox")).expect("copy busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", bindir.join(applet)).expect("applet link");
        }
        let tar = self.dir().join("rootfs.tar");
        sh(
            "tar",
            &[
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ],
        );
        self.docker_ok(&["import", &tar.display().to_string(), IMAGE]);
    }

    // --- the host's view ----------------------------------------------------------

    /// A `brindle` CLI command for this host's etcd and node.
    pub fn brindle(&self, args: &[&str]) -> Command {
        let mut cmd = self.nsenter(bin("brindle"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BRINDLE_ETCD_ENDPOINTS", "http://127.0.0.1:2379")
            .env("BRINDLE_NODE", &self.cfg.node)
            .args(args);
        cmd
    }

    /// Run `brindle ARGS` and expect success; returns stdout.
    pub fn brindle_ok(&self, args: &[&str]) -> String {
        let out = self.brindle(args).output().expect("run brindle");
        assert!(
            out.status.success(),
            "brindle {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `brindle ARGS -o json`, parsed.
    pub fn brindle_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.brindle_ok(&all)).expect("brindle -o json prints JSON")
    }

    /// Host veths brindle created (`brl...`).
    pub fn brl_links(&self) -> Vec<String> {
        self.ns
            .ok(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("brl"))
            .collect()
    }

    /// brindle's routes in the host (`ip route show proto 98`).
    pub fn brindle_routes(&self) -> Vec<String> {
        self.ns
            .ok(&["ip", "route", "show", "proto", "98"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// One ping from the host to `ip`.
    pub fn host_pings(&self, ip: &str) -> bool {
        (0..3).any(|_| {
            self.ns
                .exec(&["busybox", "ping", "-c1", "-W2", ip])
                .status
                .success()
        })
    }
}

impl Host {
    /// The IPv4 address of `container` on `network`.
    pub fn ip_of(&self, container: &str, network: &str) -> String {
        self.docker_ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            container,
        ])
    }

    /// Run a command in a container; returns trimmed stdout (panics on failure).
    pub fn exec(&self, container: &str, cmd: &[&str]) -> String {
        let mut all = vec!["exec", container];
        all.extend_from_slice(cmd);
        self.docker_ok(&all)
    }

    /// One ping from `container` to `ip` succeeds (three tries).
    pub fn pings(&self, container: &str, ip: &str) -> bool {
        (0..3).any(|_| {
            self.docker(&["exec", container, "ping", "-c1", "-W2", ip])
                .status
                .success()
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = self.docker(&args);
            }
            let nets = self.docker(&["network", "ls", "-q", "--filter", "type=custom"]);
            for id in String::from_utf8_lossy(&nets.stdout).split_whitespace() {
                let _ = self.docker(&["network", "rm", id]);
            }
            self.stop_dockerd(Duration::from_secs(30));
        }
        self.stop_brindled();
        self.stop_etcd();
        if let Some(spec) = self.spec_file() {
            let _ = std::fs::remove_file(spec);
        }
        unmount_under(self.dir());
        // The Netns drop kills whatever is left inside and deletes the namespace.
    }
}

/// Drop `ESC [ ... letter` sequences (tracing colors its output even into files).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(path)
        .map(|m| m.file_type().is_socket())
        .unwrap_or(false)
}

/// SIGTERM, wait up to `timeout`, then SIGKILL; by PID.
fn stop_child(mut child: Child, timeout: Duration) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Unmount (lazily, deepest first) every mount point under `dir`.
fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}

// --- the shared host of a test binary -------------------------------------------------

static SHARED: OnceLock<Mutex<Option<Host>>> = OnceLock::new();

/// Exclusive use of this test binary's host, started on first use with the default
/// config; `None` (after printing a note) when not root. Holding the guard serialises
/// the tests: restarting brindled or dockerd must not hit a neighbour mid-test.
pub fn shared_host(test: &str) -> Option<MutexGuard<'static, Option<Host>>> {
    let mut guard = exclusive_turn(test)?;
    if guard.is_none() {
        *guard = Some(Host::start(HostConfig::default()));
    }
    Some(guard)
}

/// The shared host's turn, without starting it: for a test that brings its own
/// [`Host`] and must not run beside the others. `None` (after a note) when not root.
pub fn exclusive_turn(test: &str) -> Option<MutexGuard<'static, Option<Host>>> {
    if !is_root() {
        eprintln!("skipping {test}: the Docker e2e tests need root");
        return None;
    }
    let cell = SHARED.get_or_init(|| {
        register_exit_cleanup();
        Mutex::new(None)
    });
    Some(cell.lock().unwrap_or_else(|e| e.into_inner()))
}

extern "C" fn stop_shared_host() {
    if let Some(cell) = SHARED.get() {
        // A test still holding the host (a hang) must not block the exit.
        let host = match cell.try_lock() {
            Ok(mut g) => g.take(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        drop(host);
    }
}

fn register_exit_cleanup() {
    extern "C" {
        fn atexit(cb: extern "C" fn()) -> std::os::raw::c_int;
    }
    // SAFETY: registering a plain function pointer; it runs once at process exit.
    unsafe {
        atexit(stop_shared_host);
    }
}

// --- per-test resources -----------------------------------------------------------------

/// What one test creates on the host: containers and networks (named `<tag>-...`) and
/// unreachable routes for its pools; all removed on drop, also when the test panics.
pub struct Scope<'h> {
    pub host: &'h Host,
    tag: String,
    containers: Vec<String>,
    networks: Vec<String>,
    pools: Vec<String>,
    _routes: Vec<UnreachableRoute>,
}

impl<'h> Scope<'h> {
    pub fn new(host: &'h Host, tag: &str) -> Self {
        Self {
            host,
            tag: tag.to_string(),
            containers: Vec::new(),
            networks: Vec::new(),
            pools: Vec::new(),
            _routes: Vec::new(),
        }
    }

    /// The full name of one of this test's objects.
    pub fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.tag)
    }

    /// Guard a pool CIDR: an `unreachable` route in the root namespace (and one in the
    /// host, below brindle's more specific routes) so a stray packet goes nowhere.
    pub fn guard(&mut self, cidr: &str) {
        self._routes.push(UnreachableRoute::add(cidr));
        let _ = self
            .host
            .ns
            .exec(&["ip", "route", "replace", "unreachable", cidr]);
    }

    /// `brindle pool add NAME --cidr CIDR`, removed (forced) at the end.
    pub fn pool(&mut self, short: &str, cidr: &str) -> String {
        let name = self.name(short);
        self.guard(cidr);
        self.host
            .brindle_ok(&["pool", "add", &name, "--cidr", cidr]);
        self.pools.push(name.clone());
        name
    }

    /// Remember a container created outside [`Scope::run`] for removal.
    pub fn adopt_container(&mut self, name: &str) {
        self.containers.push(name.to_string());
    }

    /// Remember a pool created outside [`Scope::pool`] for removal.
    pub fn forget_pool_later(&mut self, name: &str) {
        self.pools.push(name.to_string());
    }

    /// `docker network create -d brindle --ipam-driver brindle ARGS NAME`.
    pub fn network(&mut self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        let plugin = self.host.cfg.plugin.clone();
        let mut all = vec!["network", "create", "-d", &plugin, "--ipam-driver", &plugin];
        all.extend_from_slice(args);
        all.push(&name);
        self.host.docker_ok(&all);
        self.networks.push(name.clone());
        name
    }

    /// Like [`Scope::network`] but expected to fail; returns stderr.
    pub fn network_fails(&mut self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        let mut all = vec!["network", "create"];
        all.extend_from_slice(args);
        all.push(&name);
        let out = self.host.docker(&all);
        if out.status.success() {
            self.networks.push(name.clone());
            panic!("docker {all:?} should fail");
        }
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `docker run -d --init --name NAME ARGS IMAGE sleep`: a long-running container.
    pub fn run(&mut self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        self.containers.push(name.clone());
        let mut all = vec![
            "run",
            "-d",
            "--init",
            "--stop-timeout",
            "2",
            "--name",
            &name,
        ];
        all.extend_from_slice(args);
        all.extend([IMAGE, "sleep", "100000"]);
        self.host.docker_ok(&all);
        name
    }

    /// Like [`Scope::run`] but expected to fail; returns stderr.
    pub fn run_fails(&mut self, short: &str, args: &[&str]) -> String {
        let name = self.name(short);
        self.containers.push(name.clone());
        let mut all = vec!["run", "-d", "--init", "--name", &name];
        all.extend_from_slice(args);
        all.extend([IMAGE, "sleep", "100000"]);
        self.host.docker_fails(&all)
    }

    /// The IPv4 address of `container` on `network`.
    pub fn ip_of(&self, container: &str, network: &str) -> String {
        self.host.ip_of(container, network)
    }

    /// Run a command in a container; returns stdout (panics on failure).
    pub fn exec(&self, container: &str, cmd: &[&str]) -> String {
        self.host.exec(container, cmd)
    }

    /// One ping from `container` to `ip` succeeds (three tries).
    pub fn pings(&self, container: &str, ip: &str) -> bool {
        self.host.pings(container, ip)
    }

    /// Hand everything over without cleaning up, to get `&mut Host` back (for a
    /// restart); [`Scope::attach`] takes it back. The guard routes stay in place.
    pub fn detach(mut self) -> Owned {
        Owned {
            tag: self.tag.clone(),
            containers: std::mem::take(&mut self.containers),
            networks: std::mem::take(&mut self.networks),
            pools: std::mem::take(&mut self.pools),
            routes: std::mem::take(&mut self._routes),
        }
    }

    /// Resume a detached scope.
    pub fn attach(host: &'h Host, owned: Owned) -> Self {
        Self {
            host,
            tag: owned.tag,
            containers: owned.containers,
            networks: owned.networks,
            pools: owned.pools,
            _routes: owned.routes,
        }
    }
}

/// A detached [`Scope`]'s resources.
pub struct Owned {
    tag: String,
    containers: Vec<String>,
    networks: Vec<String>,
    pools: Vec<String>,
    routes: Vec<UnreachableRoute>,
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        if !self.containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(self.containers.iter().map(String::as_str));
            let _ = self.host.docker(&args);
        }
        for n in self.networks.iter().rev() {
            let _ = self.host.docker(&["network", "rm", n]);
        }
        for p in &self.pools {
            let _ = self.host.brindle(&["pool", "rm", p, "--force"]).output();
        }
        for r in &self._routes {
            let _ = self
                .host
                .ns
                .exec(&["ip", "route", "del", "unreachable", &r.cidr]);
        }
    }
}
