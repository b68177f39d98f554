//! A real etcd (Debian `etcd-server`) on free loopback ports in a temp dir: one server
//! ([`Etcd`]) or a multi-member cluster with fault injection ([`EtcdCluster`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ports::free_port;

mod cluster;

pub use cluster::EtcdCluster;

/// TLS material for an etcd that requires client certificates.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// One etcd server process; killed (by PID) and its data removed on drop.
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub tls: Option<TlsFiles>,
    /// With [`Etcd::start_also_on`]: the same server on another local address, e.g.
    /// one that hosts in other network namespaces can reach (they cannot reach the
    /// root namespace's loopback).
    pub extra_endpoint: Option<String>,
}

impl Etcd {
    /// Plain-HTTP etcd.
    pub fn start() -> Self {
        Self::launch(false, None, &[])
    }

    /// etcd serving HTTPS and requiring a client certificate signed by its CA.
    pub fn start_tls() -> Self {
        Self::launch(true, None, &[])
    }

    /// Plain-HTTP etcd listening on 127.0.0.1 and also on `addr` (same port), which
    /// must be an address of this namespace; see [`Etcd::extra_endpoint`].
    pub fn start_also_on(addr: std::net::Ipv4Addr) -> Self {
        Self::launch(false, Some(addr), &[])
    }

    /// Plain-HTTP etcd with extra server flags (`--max-request-bytes N`, ...).
    pub fn start_with_flags(flags: &[&str]) -> Self {
        Self::launch(false, None, flags)
    }

    fn launch(tls: bool, extra: Option<std::net::Ipv4Addr>, flags: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("brindle-etcd-")
            .tempdir()
            .expect("temp dir");
        let client_port = free_port();
        let peer_port = free_port();
        let scheme = if tls { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let extra_endpoint = extra.map(|a| format!("{scheme}://{a}:{client_port}"));
        let listen = match &extra_endpoint {
            Some(e) => format!("{endpoint},{e}"),
            None => endpoint.clone(),
        };
        let files = tls.then(|| make_tls(dir.path()));
        let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
        let mut cmd = Command::new(etcd_binary());
        cmd.arg("--name")
            .arg("brindle-test")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&listen)
            .arg("--advertise-client-urls")
            .arg(&endpoint)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("brindle-test={peer}"))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(f) = &files {
            cmd.arg("--cert-file")
                .arg(&f.server_cert)
                .arg("--key-file")
                .arg(&f.server_key)
                .arg("--trusted-ca-file")
                .arg(&f.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        let etcd = Etcd {
            child,
            dir,
            endpoint,
            tls: files,
            extra_endpoint,
        };
        etcd.wait_ready();
        etcd
    }

    /// The etcd log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            let mut probe = Command::new("etcdctl");
            probe
                .env("ETCDCTL_API", "3")
                .arg("--endpoints")
                .arg(&self.endpoint)
                .arg("--dial-timeout=1s")
                .arg("endpoint")
                .arg("health");
            if let Some(f) = &self.tls {
                probe
                    .arg("--cacert")
                    .arg(&f.ca)
                    .arg("--cert")
                    .arg(&f.client_cert)
                    .arg("--key")
                    .arg(&f.client_key);
            }
            let ok = probe
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
            "etcd did not become healthy at {}:\n{}",
            self.endpoint,
            self.log()
        );
    }

    /// Run `etcdctl` against this server and return stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("etcdctl");
        cmd.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.endpoint);
        if let Some(f) = &self.tls {
            cmd.arg("--cacert")
                .arg(&f.ca)
                .arg("--cert")
                .arg(&f.client_cert)
                .arg("--key")
                .arg(&f.client_key);
        }
        let out = cmd.args(args).output().expect("run etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under a prefix.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        self.etcdctl(&["get", "--prefix", "--keys-only", prefix])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcd_binary() -> String {
    // Debian installs the server as /usr/bin/etcd.
    std::env::var("BRINDLE_ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

/// A throw-away CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_tls(dir: &Path) -> TlsFiles {
    let p = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(p("san.ext"), "subjectAltName=IP:127.0.0.1\n").expect("write san.ext");
    std::fs::write(p("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write client.ext");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=brindle-test-ca",
    ]);
    for (name, ext) in [("server", "san.ext"), ("client", "client.ext")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            ext,
        ]);
    }
    TlsFiles {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    }
}
