//! Network namespaces the tests create (as containers, hosts and routers), and the
//! `unreachable` routes that keep test pools from ever leaving the machine. Everything
//! is removed on drop, processes inside a namespace killed by PID.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Run a command, panicking with its stderr when it fails; returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when running as root (the e2e suites need it).
pub fn is_root() -> bool {
    nix_uid() == 0
}

fn nix_uid() -> u32 {
    // /proc/self/status "Uid:\treal\teffective..." avoids a libc dependency here.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
        })
        .and_then(|u| u.parse().ok())
        .unwrap_or(u32::MAX)
}

/// A named network namespace (`/run/netns/NAME`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace named `<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{tag}-{}-{n}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// `/run/netns/NAME`, the path CNI runtimes pass as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Run a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Run a command inside the namespace with `input` on its stdin (for
    /// `iptables-restore` and `nft -f -`: fixed text, no shell).
    pub fn exec_input(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write as _;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec");
        // A tool that exits early closes its end; its status says why.
        let _ = child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes());
        child.wait_with_output().expect("ip netns exec")
    }

    /// Run inside and expect success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// PIDs of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// `ip route add unreachable CIDR` in the root namespace, so no packet for a test pool
/// can leave the machine even if a test goes wrong; removed on drop.
pub struct UnreachableRoute {
    pub cidr: String,
}

impl UnreachableRoute {
    pub fn add(cidr: &str) -> Self {
        // Replace, so a route left by a killed run does not fail the next one.
        sh("ip", &["route", "replace", "unreachable", cidr]);
        UnreachableRoute {
            cidr: cidr.to_string(),
        }
    }
}

impl Drop for UnreachableRoute {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["route", "del", "unreachable", &self.cidr])
            .status();
    }
}

/// `net.ipv4.ip_forward=1` in the root namespace while held, and the value found before
/// put back when the last holder lets go, in this process and in every other test
/// process on the machine (the suites run side by side). Root-namespace CNI tests need
/// forwarding: the host veths answer ARP for 169.254.1.1 (proxy_arp) only when the host
/// forwards, and ptp and brindled turn it on themselves; a real host that routes
/// containers has it on, a developer's machine usually not.
///
/// Holders keep a shared `flock` on [`FORWARD_HOLDERS`]; every change of holders happens
/// under an exclusive lock of [`FORWARD_MUTEX`]; the first holder writes the value it
/// found to [`FORWARD_ORIGINAL`], the last one writes it back and removes the file. A
/// killed run leaves that file, so the next run still restores the value from before.
pub struct RootIpForward {
    holder: Option<std::fs::File>,
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
pub const FORWARD_MUTEX: &str = "/run/brindle-tests-ip-forward.lock";
pub const FORWARD_HOLDERS: &str = "/run/brindle-tests-ip-forward.holders";
pub const FORWARD_ORIGINAL: &str = "/run/brindle-tests-ip-forward.orig";

fn lock_file(path: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"))
}

impl RootIpForward {
    /// Turn forwarding on (recording the value found, if first) and hold it on.
    pub fn hold() -> Self {
        let mutex = lock_file(FORWARD_MUTEX);
        mutex.lock().expect("lock ip_forward mutex");
        let holder = lock_file(FORWARD_HOLDERS);
        holder.lock_shared().expect("hold ip_forward");
        if !std::path::Path::new(FORWARD_ORIGINAL).exists() {
            let now = std::fs::read_to_string(IP_FORWARD).expect("read ip_forward");
            std::fs::write(FORWARD_ORIGINAL, now.trim()).expect("record ip_forward");
        }
        std::fs::write(IP_FORWARD, "1").expect("enable ip_forward");
        RootIpForward {
            holder: Some(holder),
        }
    }
}

impl Drop for RootIpForward {
    fn drop(&mut self) {
        let mutex = lock_file(FORWARD_MUTEX);
        if mutex.lock().is_err() {
            return;
        }
        drop(self.holder.take());
        let probe = lock_file(FORWARD_HOLDERS);
        if probe.try_lock().is_ok() {
            // Nobody else holds it: put back what the first holder found.
            if let Ok(original) = std::fs::read_to_string(FORWARD_ORIGINAL) {
                if std::fs::write(IP_FORWARD, original.trim()).is_ok() {
                    let _ = std::fs::remove_file(FORWARD_ORIGINAL);
                }
            }
        }
    }
}
