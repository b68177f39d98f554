//! CNI harness: a plugin directory holding `brindle`, `brindle-ipam` (both the workspace's
//! `brindle-cni`) next to the stock reference plugins, invocations the way libcni makes
//! them, network configurations, and a `brindled` serving the fast path.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::bins::bin;

/// Where Debian's containernetworking-plugins installs ptp, host-local, loopback, ...
pub const STOCK_PLUGINS: &str = "/usr/lib/cni";

/// A temp dir usable as `CNI_PATH`: `brindle`, `brindle-ipam` and the stock plugins.
pub struct PluginDir {
    pub dir: tempfile::TempDir,
}

impl PluginDir {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brindle-cni-bin-")
            .tempdir()
            .expect("temp dir");
        let cni = bin("brindle-cni");
        for name in ["brindle", "brindle-ipam"] {
            std::os::unix::fs::symlink(&cni, dir.path().join(name)).expect("symlink plugin");
        }
        if let Ok(entries) = std::fs::read_dir(STOCK_PLUGINS) {
            for e in entries.flatten() {
                let _ = std::os::unix::fs::symlink(e.path(), dir.path().join(e.file_name()));
            }
        }
        PluginDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A plugin executable by name.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

/// What one plugin run produced.
#[derive(Debug)]
pub struct CniOutput {
    pub success: bool,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    /// stdout as the one JSON document it must be (panics on anything else).
    pub fn json(&self) -> Value {
        let mut docs = serde_json::Deserializer::from_str(&self.stdout).into_iter::<Value>();
        let first = docs
            .next()
            .unwrap_or_else(|| panic!("no JSON on stdout; stderr: {}", self.stderr))
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout));
        assert!(
            docs.next().is_none(),
            "more than one JSON document on stdout: {:?}",
            self.stdout
        );
        first
    }

    /// Expect success; returns the result (or `Null` when stdout is empty, as DEL,
    /// CHECK, STATUS and GC answer).
    pub fn ok(&self) -> Value {
        assert!(
            self.success,
            "plugin failed: stdout {} stderr {}",
            self.stdout, self.stderr
        );
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }

    /// Expect a CNI error with `code`; returns the error object.
    pub fn err(&self, code: u64) -> Value {
        assert!(
            !self.success,
            "plugin should have failed with code {code}: stdout {}",
            self.stdout
        );
        let e = self.json();
        assert_eq!(
            e["code"].as_u64(),
            Some(code),
            "wrong error code: {e}; stderr {}",
            self.stderr
        );
        assert!(e["msg"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
        e
    }
}

/// One CNI call: the environment libcni sets, plus stdin.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    pub cni_path: String,
    /// Extra variables (`BRINDLE_*`), after the `CNI_*` ones.
    pub extra: Vec<(String, String)>,
}

impl Call {
    pub fn new(command: &str, container_id: &str, netns: &str, ifname: &str) -> Self {
        Call {
            command: command.into(),
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: ifname.into(),
            ..Default::default()
        }
    }

    pub fn args(mut self, args: &str) -> Self {
        self.args = args.into();
        self
    }

    pub fn path(mut self, dir: &Path) -> Self {
        self.cni_path = dir.display().to_string();
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.extra.push((k.into(), v.into()));
        self
    }

    /// Run `plugin` with a clean environment (all six `CNI_*` set, empty when unused, as
    /// libcni does) and `stdin`.
    pub fn run(&self, plugin: &Path, stdin: &Value) -> CniOutput {
        self.run_raw(plugin, serde_json::to_vec(stdin).expect("json").as_slice())
    }

    pub fn run_raw(&self, plugin: &Path, stdin: &[u8]) -> CniOutput {
        let mut cmd = Command::new(plugin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", &self.command)
            .env("CNI_CONTAINERID", &self.container_id)
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", &self.ifname)
            .env("CNI_ARGS", &self.args)
            .env("CNI_PATH", &self.cni_path);
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        run_with_stdin(cmd, stdin)
    }
}

/// Run a prepared command, feeding `stdin`, timing it.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> CniOutput {
    use std::io::Write;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plugin");
    let written = child.stdin.take().expect("stdin").write_all(stdin);
    // A plugin may answer without reading its configuration (no CNI_COMMAND: it prints
    // its versions; an oversized one) and exit first: a runtime sees a closed pipe.
    if let Err(e) = written {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    let out = child.wait_with_output().expect("wait for plugin");
    CniOutput {
        success: out.status.success(),
        exit_code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Settings every brindle netconf of a test carries.
#[derive(Debug, Clone)]
pub struct Brindle {
    pub etcd: String,
    pub node: String,
    /// brindled's socket, or `"none"` to force the direct path.
    pub api_socket: String,
    pub pool: Option<String>,
}

impl Brindle {
    fn keys(&self) -> Value {
        let mut v = json!({
            "etcd_endpoints": self.etcd,
            "node": self.node,
            "api_socket": self.api_socket,
        });
        if let Some(p) = &self.pool {
            v["pool"] = json!(p);
        }
        v
    }

    /// `type: brindle` request configuration.
    pub fn main_conf(&self, version: &str, name: &str) -> Value {
        let mut conf = json!({
            "cniVersion": version,
            "name": name,
            "type": "brindle",
            "ipam": {"type": "brindle-ipam"},
        });
        for (k, v) in self.keys().as_object().expect("object") {
            if k == "pool" {
                conf["ipam"]["pool"] = v.clone();
            } else {
                conf[k] = v.clone();
            }
        }
        conf
    }

    /// `type: ptp` with `ipam.type: brindle-ipam` (settings in the ipam section).
    pub fn ptp_conf(&self, version: &str, name: &str) -> Value {
        let mut ipam = self.keys();
        ipam["type"] = json!("brindle-ipam");
        json!({
            "cniVersion": version,
            "name": name,
            "type": "ptp",
            "ipMasq": false,
            "ipam": ipam,
        })
    }

    /// A conflist (for podman) wrapping [`Brindle::main_conf`] with the `ips` capability.
    pub fn conflist(&self, version: &str, name: &str) -> Value {
        let mut plugin = self.main_conf(version, name);
        let obj = plugin.as_object_mut().expect("object");
        obj.remove("cniVersion");
        obj.remove("name");
        obj.insert("capabilities".into(), json!({"ips": true}));
        json!({
            "cniVersion": version,
            "name": name,
            "plugins": [plugin],
        })
    }
}

/// `brindled` on the root namespace with its sockets in a temp dir; killed by PID on
/// drop.
pub struct Brindled {
    child: Child,
    pub dir: tempfile::TempDir,
    pub api_socket: PathBuf,
}

impl Brindled {
    pub fn start(etcd: &str, node: &str) -> Self {
        Self::start_with(etcd, node, &[])
    }

    /// [`Brindled::start`] with more flags. The temp dir is made 0755 so that callers
    /// other than root can reach the sockets (whose own modes decide who may connect).
    pub fn start_with(etcd: &str, node: &str, extra: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("brindle-cni-d-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let api_socket = dir.path().join("brindled.sock");
        let log = std::fs::File::create(dir.path().join("brindled.log")).expect("log file");
        let child = Command::new(bin("brindled"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("BRINDLE_LOG", "info")
            .arg("--etcd-endpoints")
            .arg(etcd)
            .arg("--node")
            .arg(node)
            .arg("--api-socket")
            .arg(&api_socket)
            .arg("--docker-plugin-dir")
            .arg(dir.path().join("plugins"))
            // The root namespace's firewall belongs to the machine running the tests,
            // not to a host the test made: leave it as found. The firewall is tested on
            // namespace hosts (firewall_e2e, docker_e2e).
            .args(["--firewall", "false"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start brindled");
        let mut d = Brindled {
            child,
            dir,
            api_socket,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.api_socket.exists() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("brindled exited with {status}:\n{}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "brindled did not open its API socket:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("brindled.log")).unwrap_or_default()
    }

    /// The Docker plugin socket (`--docker-plugin-dir` is `<dir>/plugins`).
    pub fn docker_socket(&self) -> PathBuf {
        self.dir.path().join("plugins").join("brindle.sock")
    }

    /// Wait until brindled logs that it listens on `socket` (set up: mode and group
    /// final).
    pub fn wait_listening(&self, socket: &Path) {
        let needle = format!("listening socket={}", socket.display());
        let ok = eventually(Duration::from_secs(20), || self.log().contains(&needle));
        assert!(ok, "brindled never logged {needle:?}:\n{}", self.log());
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stop it the way an init system does (SIGTERM, by PID) and wait up to `timeout`:
    /// its exit status, or `None` if it had to be killed (SIGKILL) after that.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        None
    }

    /// Stop it now (SIGKILL, by PID) and wait.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Brindled {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `ip -j` output of a command run in namespace `ns` (`None` = root namespace).
pub fn ip_json(ns: Option<&str>, args: &[&str]) -> Value {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let out = cmd.arg("-j").args(args).output().expect("run ip");
    if !out.status.success() {
        return Value::Array(Vec::new());
    }
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Array(Vec::new()))
}

/// IPv4 addresses (`a.b.c.d/len`) of `dev` in namespace `ns`.
pub fn addresses(ns: &str, dev: &str) -> Vec<String> {
    ip_json(Some(ns), &["-4", "addr", "show", "dev", dev])
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

/// Whether a link of that name exists in the root namespace.
pub fn host_link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Wait up to `timeout` for `cond`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The host veth name brindle derives for a CNI attachment (FNV-1a 64 of
/// `container_id NUL ifname`, 11 hex digits after `brl`), mirrored here so the
/// suites can check the host side.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id
        .as_bytes()
        .iter()
        .chain([0u8].iter())
        .chain(ifname.as_bytes())
    {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("brl{}", &format!("{h:016x}")[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ifname_matches_the_plugin() {
        // Pinned in plugin/dataplane/src/names.rs as well.
        assert_eq!(host_ifname("c0ffee", "eth0"), "brl2ba21fd802e");
    }
}
