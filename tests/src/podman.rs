//! podman 4 with the CNI network backend, fully private to one test: its own storage,
//! run and tmp dirs, CNI config dir, and containers.conf: the repo's
//! `tests/podman/containers.conf` (`network_backend = "cni"`, `default_ulimits = []`,
//! cgroupfs) plus this instance's plugin and config dirs, passed with `CONTAINERS_CONF`,
//! so podman reads neither /etc/containers nor the user's config and writes nothing
//! under /etc. An image is imported from Debian's busybox-static (no registry exists).
//! Containers are removed and the storage unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The image every test container runs.
pub const IMAGE: &str = "localhost/brindle-busybox:latest";

/// Where Debian's busybox-static installs its binary.
pub const BUSYBOX: &str = "/bin/busybox";

pub struct Podman {
    pub dir: tempfile::TempDir,
    pub net_dir: PathBuf,
    /// Run podman (and so the CNI plugins) inside this network namespace file, e.g.
    /// a namespace-host of the Docker suites; `None`: the root namespace.
    pub netns: Option<PathBuf>,
}

impl Podman {
    /// A private podman whose CNI plugins come from `cni_plugin_dir`, with [`IMAGE`]
    /// imported.
    pub fn new(cni_plugin_dir: &Path) -> Self {
        Self::new_in(cni_plugin_dir, None)
    }

    /// Like [`Podman::new`], with podman running in the network namespace `netns`
    /// (`nsenter --net`, which keeps /sys and the cgroup mounts as they are).
    pub fn new_in(cni_plugin_dir: &Path, netns: Option<&Path>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brindle-podman-")
            .tempdir()
            .expect("temp dir");
        let net_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&net_dir).expect("net.d");
        std::fs::write(
            dir.path().join("containers.conf"),
            containers_conf(cni_plugin_dir, &net_dir),
        )
        .expect("containers.conf");
        let p = Podman {
            dir,
            net_dir,
            netns: netns.map(Path::to_path_buf),
        };
        p.import_busybox();
        p
    }

    /// `podman` with this instance's storage and config.
    pub fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display()))
                    .arg("--")
                    .arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .arg("--network-config-dir")
            .arg(&self.net_dir);
        c
    }

    /// Run podman with `args`.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run podman")
    }

    /// Run and expect success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Write `<name>.conflist` into the CNI config dir.
    pub fn add_network(&self, name: &str, conflist: &Value) {
        std::fs::write(
            self.net_dir.join(format!("{name}.conflist")),
            serde_json::to_vec_pretty(conflist).expect("json"),
        )
        .expect("write conflist");
    }

    fn import_busybox(&self) {
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} missing: apt-get install busybox-static"
        );
        let rootfs = self.dir.path().join("rootfs");
        let bin = rootfs.join("bin");
        std::fs::create_dir_all(&bin).expect("rootfs");
        std::fs::copy(BUSYBOX, bin.join("busybox")).expect("copy busybox");
        for applet in ["sh", "ip", "ping", "sleep", "cat", "ls", "hostname"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet link");
        }
        let tar = self.dir.path().join("rootfs.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(st.success(), "tar rootfs");
        self.ok(&["import", &tar.display().to_string(), IMAGE]);
    }
}

/// The repo's podman settings (tests/podman/containers.conf), shared with the demo.
pub const CONTAINERS_CONF: &str = include_str!("../podman/containers.conf");

/// [`CONTAINERS_CONF`] with this instance's CNI plugin and config dirs appended to its
/// last table, `[network]`.
pub fn containers_conf(cni_plugin_dir: &Path, net_dir: &Path) -> String {
    let last_table = CONTAINERS_CONF
        .lines()
        .map(str::trim)
        .rfind(|l| l.starts_with('['));
    assert_eq!(
        last_table,
        Some("[network]"),
        "tests/podman/containers.conf must end with its [network] table"
    );
    let quote = |p: &Path| serde_json::to_string(&p.display().to_string()).expect("json");
    format!(
        "{}\ncni_plugin_dirs = [{}]\nnetwork_config_dir = {}\n",
        CONTAINERS_CONF.trim_end(),
        quote(cni_plugin_dir),
        quote(net_dir)
    )
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers first (their CNI DEL runs here), then storage, then any mount left.
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["rmi", "-af"]);
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|m| m.starts_with(&root))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}
