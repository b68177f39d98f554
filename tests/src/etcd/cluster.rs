//! A multi-member etcd cluster on loopback (free ports, one temp dir), with the faults
//! availability claims are tested against: stop, kill -9, SIGSTOP/SIGCONT, restart.
//! Every process is stopped by PID when the cluster is dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    child: Option<Child>,
    paused: bool,
}

/// A cluster of `etcd` processes started with a static `--initial-cluster`.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    extra_args: Vec<String>,
    /// `user:password` for etcdctl once [`EtcdCluster::enable_auth`] ran.
    auth: Option<String>,
}

impl EtcdCluster {
    /// `size` members with etcd's default timings; returns once every member is healthy.
    pub fn start(size: usize) -> Self {
        Self::start_with(size, &[])
    }

    /// As [`EtcdCluster::start`], with extra flags for every member (e.g.
    /// `--auth-token-ttl 2`).
    pub fn start_with(size: usize, extra_args: &[&str]) -> Self {
        assert!(size > 0, "a cluster needs at least one member");
        let dir = tempfile::Builder::new()
            .prefix("brindle-etcd-cluster-")
            .tempdir()
            .expect("temp dir");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("http://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                child: None,
                paused: false,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            token: format!(
                "brindle-{}",
                dir.path().file_name().unwrap_or_default().to_string_lossy()
            ),
            dir,
            members,
            initial_cluster,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            auth: None,
        };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The client URLs comma-separated, as `--etcd-endpoints` takes them.
    pub fn endpoints_csv(&self) -> String {
        self.endpoints().join(",")
    }

    pub fn endpoint(&self, i: usize) -> &str {
        &self.members[i].client_url
    }

    /// PID of member `i` while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// Member `i`'s log (every run appends to it).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log");
        let m = &self.members[i];
        let child = Command::new(super::etcd_binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.dir.path().join(&m.name))
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&m.peer_url)
            .arg("--initial-cluster")
            .arg(&self.initial_cluster)
            .arg("--initial-cluster-token")
            .arg(&self.token)
            // Ignored once the data dir exists, so restarts rejoin.
            .arg("--initial-cluster-state")
            .arg("new")
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.members[i].child = Some(child);
        self.members[i].paused = false;
    }

    fn signal(&self, i: usize, sig: &str) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("member {i} is not running"));
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {pid} (member {i}) failed");
    }

    /// Stop member `i` gracefully (SIGTERM) and wait for it to exit.
    pub fn stop(&mut self, i: usize) {
        self.signal(i, "TERM");
        self.reap(i);
    }

    /// Kill member `i` with SIGKILL and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(c) = self.members[i].child.as_mut() {
            let _ = c.kill();
        }
        self.reap(i);
    }

    fn reap(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.wait();
        }
        self.members[i].paused = false;
    }

    /// Freeze member `i` (SIGSTOP): its sockets stay open and nothing answers, as a
    /// partition looks from outside.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "STOP");
        self.members[i].paused = true;
    }

    /// Thaw member `i` (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "CONT");
        self.members[i].paused = false;
    }

    /// Start member `i` again on its data dir and wait until it is healthy (needs a
    /// quorum: use [`EtcdCluster::start_member`] to bring several back at once).
    pub fn restart(&mut self, i: usize) {
        self.start_member(i);
        self.wait_healthy(i);
    }

    /// Start member `i` again without waiting.
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} still runs");
        self.spawn(i);
    }

    fn etcdctl_cmd(&self, endpoints: &str) -> Command {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(endpoints)
            .arg("--dial-timeout=1s")
            .arg("--command-timeout=3s");
        if let Some(user) = &self.auth {
            cmd.arg("--user").arg(user);
        }
        cmd
    }

    /// Wait until member `i` reports healthy (it has a leader and serves a quorum read).
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = self
                .etcdctl_cmd(self.endpoint(i))
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd member {i} did not become healthy at {}:\n{}",
            self.endpoint(i),
            self.log(i)
        );
    }

    /// Index of the current leader, asked of every running, unpaused member
    /// (`etcdctl endpoint status -w json`); `None` when no member names one.
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() || m.paused {
                continue;
            }
            let Ok(out) = self
                .etcdctl_cmd(&m.client_url)
                .args(["endpoint", "status", "-w", "json"])
                .output()
            else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
                continue;
            };
            let Some(status) = v.get(0).and_then(|e| e.get("Status")) else {
                continue;
            };
            let leader = status.get("leader").and_then(|l| l.as_u64());
            let me = status
                .get("header")
                .and_then(|h| h.get("member_id"))
                .and_then(|id| id.as_u64());
            if leader.is_some() && leader == me {
                return Some(i);
            }
        }
        None
    }

    /// The leader, waiting up to 10 s for an election to finish.
    pub fn wait_leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.leader() {
                return i;
            }
            assert!(Instant::now() < deadline, "no etcd leader within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Run `etcdctl` against the running, unpaused members and return stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let live: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.child.is_some() && !m.paused)
            .map(|m| m.client_url.as_str())
            .collect();
        let out = self
            .etcdctl_cmd(&live.join(","))
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Create user `root` with `password` and turn authentication on; etcdctl calls
    /// made through the harness use it from then on.
    pub fn enable_auth(&mut self, password: &str) {
        self.etcdctl(&["user", "add", &format!("root:{password}")]);
        self.etcdctl(&["auth", "enable"]);
        self.auth = Some(format!("root:{password}"));
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                // SIGKILL ends a stopped process too.
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
