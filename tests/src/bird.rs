//! A real BIRD 2 (Debian `bird2`) inside a network namespace:
//! `ip netns exec NS bird -f -c CONF -s SOCK -P PIDFILE`, owned as a child process
//! (`-f` keeps it in the foreground) and killed by PID on drop.
//!
//! A missing `bird` is a test failure, not a skip: the suites exist to prove routing
//! with the real daemon.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// `bird` (`BRINDLE_BIRD_BIN`, default `/usr/sbin/bird`); panics with the fix when absent.
pub fn bird_bin() -> PathBuf {
    let p = PathBuf::from(
        std::env::var("BRINDLE_BIRD_BIN").unwrap_or_else(|_| "/usr/sbin/bird".into()),
    );
    assert!(
        p.exists(),
        "BIRD is missing at {}: install it (apt-get install -y bird2) or set BRINDLE_BIRD_BIN",
        p.display()
    );
    p
}

/// `birdc` next to [`bird_bin`] (`BRINDLE_BIRDC_BIN` overrides).
pub fn birdc_bin() -> PathBuf {
    let p = match std::env::var("BRINDLE_BIRDC_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => bird_bin().with_file_name("birdc"),
    };
    assert!(
        p.exists(),
        "birdc is missing at {}: install bird2 or set BRINDLE_BIRDC_BIN",
        p.display()
    );
    p
}

/// One running BIRD.
pub struct Bird {
    child: Child,
    /// The namespace it runs in.
    pub netns: String,
    /// Its configuration file.
    pub conf: PathBuf,
    /// Its control socket.
    pub ctl: PathBuf,
    /// Its stdout/stderr.
    pub log: PathBuf,
}

impl Bird {
    /// Starts BIRD in `ns` with `conf`; socket, PID file and log go to `dir`.
    pub fn start(ns: &Netns, conf: &Path, dir: &Path) -> Self {
        let ctl = dir.join("bird.ctl");
        let pid = dir.join("bird.pid");
        let log = dir.join("bird.log");
        let out = std::fs::File::create(&log).expect("bird log");
        let err = out.try_clone().expect("bird log");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(bird_bin())
            .arg("-f")
            .arg("-c")
            .arg(conf)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start bird");
        let bird = Bird {
            child,
            netns: ns.name.clone(),
            conf: conf.to_path_buf(),
            ctl,
            log,
        };
        bird.wait_ready();
        bird
    }

    /// PID of the daemon (`ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ctl.exists() && self.try_birdc(&["show", "status"]).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "BIRD in {} did not open {}: {}",
            self.netns,
            self.ctl.display(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// `birdc -s SOCK ARGS...`; Err with the output when birdc fails.
    pub fn try_birdc(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(birdc_bin())
            .arg("-s")
            .arg(&self.ctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run birdc: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }

    /// `birdc show protocols` (or the error text).
    pub fn protocols(&self) -> String {
        self.try_birdc(&["show", "protocols"]).unwrap_or_else(|e| e)
    }

    /// Waits until protocol `name` is `Established`.
    pub fn wait_established(&self, name: &str, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(out) = self.try_birdc(&["show", "protocols", name]) {
                if out.contains("Established") {
                    return Ok(start.elapsed());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "BGP session {name} in {} not Established after {timeout:?}:\n{}",
            self.netns,
            self.protocols()
        ))
    }

    /// The BIRD log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
