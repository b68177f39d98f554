//! `bird -p -c FILE`: let BIRD itself parse a rendered configuration.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::BgpError;

/// Where Debian's bird2 installs the daemon.
pub const DEFAULT_BIRD_BIN: &str = "/usr/sbin/bird";

/// Removes the temporary file however the check ends.
struct TempConfig(PathBuf);

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn write_temp(config: &str) -> Result<TempConfig, BgpError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    let err = |source| BgpError::TempFile {
        dir: dir.clone(),
        source,
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut attempt = 0;
    loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(
            "brindle-bird-{}-{seq}-{nanos}.conf",
            std::process::id()
        ));
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            // The configuration holds BGP passwords.
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(&path) {
            Ok(mut f) => {
                let guard = TempConfig(path);
                f.write_all(config.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(err)?;
                return Ok(guard);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 100 => {
                attempt += 1;
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// Parses `config` with `bird_bin -p -c FILE` (parse only: no sockets, no kernel,
/// no root needed). Returns BIRD's message when it refuses, e.g.
/// `bird: /tmp/brindle-bird-....conf:12:3 syntax error, unexpected ...`; line and
/// column refer to `config`. The temporary file (mode 0600: it may hold passwords)
/// is removed afterwards.
pub fn validate_with_bird(config: &str, bird_bin: &Path) -> Result<(), BgpError> {
    let file = write_temp(config)?;
    let output = Command::new(bird_bin)
        .arg("-p")
        .arg("-c")
        .arg(&file.0)
        .output()
        .map_err(|source| BgpError::BirdUnavailable {
            bin: bird_bin.to_path_buf(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let mut message = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !stdout.trim().is_empty() {
        if !message.is_empty() {
            message.push_str("; ");
        }
        message.push_str(stdout.trim());
    }
    if message.is_empty() {
        message = format!("bird exited with {}", output.status);
    }
    Err(BgpError::BirdRejected { message })
}
