//! Who may use brindled's sockets, and which netns paths its API opens: the Docker
//! plugin socket and the local API socket are 0600 from the start, a caller other than
//! root is refused with a sentence naming its uid, `--api-group` opens the API (0660,
//! that group) to the group's members only, an unknown group stops brindled, and a netns
//! outside the allowed directories is refused while the same namespace under
//! `/run/netns` (or a `--netns-dir`) works.
//!
//! Root only (each test says so and returns otherwise). Unprivileged callers run through
//! util-linux's `setpriv`. The groups, namespaces and bind mounts made here are removed
//! when each test ends; processes are stopped by PID.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use brindle_ipam::Keys;
use brindle_tests::bins::{bin, brindle};
use brindle_tests::cni::{
    host_ifname, host_link_exists, run_with_stdin, Brindle, Brindled, Call, CniOutput, PluginDir,
};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, sh, Netns, RootIpForward, UnreachableRoute};
use serde_json::Value;

/// brindle's CNI error code for a refused caller or netns path.
const REFUSED: u64 = 106;

// Each test's pool lies in 10.232.0.0/24 (no other suite uses it), a /26 per test
// since the tests run side by side, and is kept on the machine by an `unreachable`
// route.

fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (setpriv, groupadd, netns, veths)");
        return false;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipping {test}: setpriv (util-linux) is missing");
        return false;
    }
    true
}

/// Mode bits and group of a file.
fn mode_and_gid(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.mode() & 0o7777, m.gid())
}

/// A group made for one test; deleted on drop.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new(tag: &str) -> Self {
        let name = format!("brt-{tag}-{}", std::process::id());
        // A group left by a killed run of this PID would make groupadd fail.
        let _ = Command::new("groupdel")
            .arg(&name)
            .stderr(Stdio::null())
            .status();
        sh("groupadd", &[&name]);
        let line = sh("getent", &["group", &name]);
        let gid = line
            .split(':')
            .nth(2)
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("gid of {name} in {line:?}"));
        TestGroup { name, gid }
    }

    /// Make `user` a member in the group database (`/etc/group`).
    fn add_member(&self, user: &str) {
        sh("gpasswd", &["-a", user, &self.name]);
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// A file bind-mounted onto another (a netns outside `/run/netns`); unmounted on drop.
struct BindMount {
    target: PathBuf,
}

impl BindMount {
    fn new(source: &str, target: &Path) -> Self {
        std::fs::write(target, b"").expect("mount point");
        sh("mount", &["--bind", source, &target.display().to_string()]);
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}

/// etcd with the suite's pool, the plugins, and the route that keeps the pool here.
struct World {
    etcd: Etcd,
    plugins: PluginDir,
    guard: UnreachableRoute,
}

impl World {
    fn new(cidr: &str) -> Self {
        let guard = UnreachableRoute::add(cidr);
        let etcd = Etcd::start();
        let out = brindle(&etcd.endpoint, "n1")
            .args(["pool", "add", "p", "--cidr", cidr, "--block-size", "28"])
            .output()
            .expect("brindle pool add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        World {
            etcd,
            plugins: PluginDir::new(),
            guard,
        }
    }

    /// Settings for the fast path through `d`.
    fn via(&self, d: &Brindled) -> Brindle {
        Brindle {
            etcd: self.etcd.endpoint.clone(),
            node: "n1".into(),
            api_socket: d.api_socket.display().to_string(),
            pool: Some("p".into()),
        }
    }

    /// CNI STATUS through `d`, as the user `setpriv` makes of this process.
    fn status_as(&self, d: &Brindled, setpriv: &[&str]) -> CniOutput {
        let conf = self.via(d).main_conf("1.1.0", "sockacc");
        let mut cmd = Command::new("setpriv");
        // The binary itself: the plugin dir is a 0700 temp dir, closed to other users.
        cmd.args(setpriv)
            .arg(bin("brindle-cni"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", self.plugins.path());
        run_with_stdin(cmd, &serde_json::to_vec(&conf).expect("json"))
    }

    /// CNI ADD (main plugin) through `d` into `netns`, as root.
    fn add(&self, d: &Brindled, cid: &str, netns: &str) -> CniOutput {
        let conf = self.via(d).main_conf("1.1.0", "sockacc");
        Call::new("ADD", cid, netns, "eth0")
            .path(self.plugins.path())
            .run(&self.plugins.plugin("brindle"), &conf)
    }

    fn del(&self, d: &Brindled, cid: &str, netns: &str) -> CniOutput {
        let conf = self.via(d).main_conf("1.1.0", "sockacc");
        Call::new("DEL", cid, netns, "eth0")
            .path(self.plugins.path())
            .run(&self.plugins.plugin("brindle"), &conf)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // brindled is stopped by SIGKILL, which leaves its block routes (protocol 98)
        // in the root namespace: remove the ones of this suite's pool.
        let _ = Command::new("ip")
            .args(["route", "flush", "root", &self.guard.cidr, "proto", "98"])
            .status();
    }
}

const NOBODY: [&str; 3] = ["--reuid=nobody", "--regid=nogroup", "--clear-groups"];

fn msg(e: &Value) -> String {
    e["msg"].as_str().unwrap_or_default().to_string()
}

#[test]
fn sockets_are_root_only_and_refuse_others_by_uid() {
    if !root_or_skip("sockets_are_root_only_and_refuse_others_by_uid") {
        return;
    }
    let w = World::new("10.232.0.0/26");
    let d = Brindled::start(&w.etcd.endpoint, "n1");
    d.wait_listening(&d.api_socket);
    d.wait_listening(&d.docker_socket());
    assert_eq!(mode_and_gid(&d.api_socket), (0o600, 0));
    assert_eq!(mode_and_gid(&d.docker_socket()), (0o600, 0));

    // Root is served.
    w.status_as(&d, &["--reuid=root"]).ok();

    // nobody cannot connect (the socket's mode), and is told so instead of being sent
    // to etcd directly.
    let out = w.status_as(&d, &NOBODY);
    let e = out.err(REFUSED);
    assert!(msg(&e).contains("brindled refused uid 65534"), "{e}");
    assert!(msg(&e).contains("--api-group"), "{e}");
}

#[test]
fn api_group_members_may_call_and_others_are_refused_by_credentials() {
    if !root_or_skip("api_group_members_may_call_and_others_are_refused_by_credentials") {
        return;
    }
    let w = World::new("10.232.0.64/26");
    let group = TestGroup::new("api");
    let d = Brindled::start_with(&w.etcd.endpoint, "n1", &["--api-group", &group.name]);
    d.wait_listening(&d.api_socket);
    d.wait_listening(&d.docker_socket());
    assert_eq!(mode_and_gid(&d.api_socket), (0o660, group.gid));
    // dockerd is root: the Docker socket does not open to the group.
    assert_eq!(mode_and_gid(&d.docker_socket()), (0o600, 0));

    // The group's gid as a supplementary group only, with no membership in the group
    // database: the connection is possible (0660), SO_PEERCRED shows neither root nor
    // the group, so brindled refuses.
    let supplementary = format!("--groups={}", group.gid);
    let out = w.status_as(&d, &["--reuid=nobody", "--regid=nogroup", &supplementary]);
    let e = out.err(REFUSED);
    assert_eq!(
        msg(&e),
        format!(
            "brindled refused uid 65534: only root or members of group {} may call",
            group.name
        ),
        "{e}"
    );
    assert!(
        d.log().contains("brindled refused uid 65534"),
        "refusal not logged:\n{}",
        d.log()
    );

    // The group as the caller's primary gid: allowed.
    let primary = format!("--regid={}", group.gid);
    w.status_as(&d, &["--reuid=nobody", &primary, "--clear-groups"])
        .ok();

    // A member in /etc/group: allowed, looked up per request (no restart).
    group.add_member("nobody");
    w.status_as(&d, &["--reuid=nobody", "--regid=nogroup", &supplementary])
        .ok();
}

#[test]
fn unknown_api_group_stops_brindled_naming_it() {
    if !root_or_skip("unknown_api_group_stops_brindled_naming_it") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let name = format!("brt-none-{}", std::process::id());
    let mut child = Command::new(bin("brindled"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // Nothing listens there: the group is checked before etcd is.
        .args(["--etcd-endpoints", "http://127.0.0.1:9"])
        .args(["--node", "n1", "--firewall", "false", "--api-group", &name])
        .arg("--api-socket")
        .arg(dir.path().join("brindled.sock"))
        .arg("--docker-plugin-dir")
        .arg(dir.path().join("plugins"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start brindled");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("brindled kept running with an unknown --api-group");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("--api-group {name}: no group of that name")),
        "{stderr}"
    );
    assert!(!dir.path().join("brindled.sock").exists());
}

#[test]
fn netns_outside_the_allowed_directories_is_refused() {
    if !root_or_skip("netns_outside_the_allowed_directories_is_refused") {
        return;
    }
    let _forward = RootIpForward::hold();
    let w = World::new("10.232.0.128/26");
    let ns = Netns::new("sockacc");
    let outside = tempfile::Builder::new()
        .prefix("brindle-netns-")
        .tempdir()
        .expect("temp dir");
    let bound = outside.path().join("ns");
    let _mount = BindMount::new(&ns.path(), &bound);
    let bound_str = bound.display().to_string();

    let mut d = Brindled::start(&w.etcd.endpoint, "n1");
    d.wait_listening(&d.api_socket);

    // The same namespace under /tmp: refused, naming the path and the directories,
    // before anything is allocated or wired.
    let e = w.add(&d, "c-out", &bound_str).err(REFUSED);
    let m = msg(&e);
    assert!(m.contains(&format!("refuses netns {bound_str}")), "{e}");
    assert!(m.contains("/run/netns/, /var/run/netns/"), "{e}");
    assert!(m.contains("--netns-dir"), "{e}");
    assert!(!host_link_exists(&host_ifname("c-out", "eth0")));
    assert!(w.etcd.keys(&Keys::default_prefix().handles()).is_empty());

    // `..` out of an allowed directory: refused as well.
    let sneaky = format!("/run/netns/../..{bound_str}");
    let e = w.add(&d, "c-dots", &sneaky).err(REFUSED);
    assert!(msg(&e).contains("contains `..`"), "{e}");

    // The namespace by its /run/netns path: works.
    let result = w.add(&d, "c-in", &ns.path()).ok();
    assert!(result["ips"][0]["address"].is_string(), "{result}");
    w.del(&d, "c-in", &ns.path()).ok();
    // Restarted with another flag as an operator would (SIGTERM): the stop finishes the
    // veth deletion the DEL deferred, so the namespace's eth0 is free for the next ADD.
    // A kill -9 here, before the reaper and the release ran, would leave the veth, the
    // record and the address while this namespace lives: a known gap, left for an
    // issue of its own (see the closing note of issue 12).
    let status = d.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "brindled did not stop cleanly ({status:?})"
    );

    // With its directory configured, the /tmp path works too.
    let dir_flag = outside.path().display().to_string();
    let d = Brindled::start_with(&w.etcd.endpoint, "n1", &["--netns-dir", &dir_flag]);
    d.wait_listening(&d.api_socket);
    let result = w.add(&d, "c-cfg", &bound_str).ok();
    assert!(result["ips"][0]["address"].is_string(), "{result}");
    w.del(&d, "c-cfg", &bound_str).ok();
}
