//! Keeping BIRD's configuration current: render, let `bird -p -c` parse it, swap the
//! file in atomically (same directory, rename), then `birdc -s SOCKET configure`.
//! While BIRD is not up (no socket yet, or not answering), the reload is retried on
//! every pass; the file is already in place, so a BIRD that starts later reads it.
//! A configuration BIRD refuses is never installed and not retried until the
//! rendered text changes. The file holds TCP-MD5 passwords: it is always mode 0600,
//! whatever mode an existing file had.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use brindle_bgp::{validate_with_bird, BgpError};
use tracing::{debug, error, info, warn};

use super::metrics::METRICS;

/// Mode of the BIRD configuration file: it holds TCP-MD5 passwords.
pub const CONFIG_MODE: u32 = 0o600;

/// Longest a `birdc configure` may take.
const BIRDC_TIMEOUT: Duration = Duration::from_secs(10);

/// Where BIRD lives and where its configuration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdPaths {
    /// The configuration file brindled owns (`--bird-config`).
    pub config: PathBuf,
    /// BIRD's control socket (`--birdc-socket`).
    pub socket: PathBuf,
    /// `bird`, for `bird -p -c`.
    pub bird_bin: PathBuf,
    /// `birdc`.
    pub birdc_bin: PathBuf,
}

/// Result of one [`BirdManager::sync`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncState {
    /// BIRD runs the desired configuration.
    InSync,
    /// The file is in place; BIRD has not loaded it yet (retry soon).
    ReloadPending,
    /// The configuration could not be checked or written (retry soon).
    Failed,
    /// BIRD refused this configuration; it stays out until the text changes.
    Rejected,
}

/// Owns the configuration file and the reloads.
#[derive(Debug)]
pub struct BirdManager {
    paths: BirdPaths,
    /// What the file holds (as last written or read at start).
    installed: Option<String>,
    /// A text BIRD refused, not to be tried again.
    rejected: Option<String>,
    reload_pending: bool,
    reload_failures: u32,
}

impl BirdManager {
    /// A manager for `paths`. Reads the current file (and makes it 0600 if it was
    /// more open, even when its text needs no change), and asks for one reload so a
    /// running BIRD surely has what the file says.
    pub fn new(paths: BirdPaths) -> Self {
        let installed = std::fs::read_to_string(&paths.config).ok();
        if installed.is_some() {
            restrict_mode(&paths.config);
        }
        Self {
            paths,
            installed,
            rejected: None,
            reload_pending: true,
            reload_failures: 0,
        }
    }

    /// The paths in use.
    pub fn paths(&self) -> &BirdPaths {
        &self.paths
    }

    /// Whether another pass is needed soon (reload or write pending).
    pub fn pending(&self) -> bool {
        self.reload_pending
    }

    /// Brings BIRD to `desired`.
    pub async fn sync(&mut self, desired: &str) -> SyncState {
        if self.installed.as_deref() != Some(desired) {
            if self.rejected.as_deref() == Some(desired) {
                return SyncState::Rejected;
            }
            METRICS.bird_renders.inc();
            let text = desired.to_string();
            let bird = self.paths.bird_bin.clone();
            let checked =
                tokio::task::spawn_blocking(move || validate_with_bird(&text, &bird)).await;
            match checked {
                Ok(Ok(())) => {}
                Ok(Err(e @ BgpError::BirdRejected { .. })) => {
                    METRICS.bird_rejected.inc();
                    error!(error = %e, config = %self.paths.config.display(),
                        "not installing a BIRD configuration BIRD refuses; keeping the current one");
                    self.rejected = Some(desired.to_string());
                    return SyncState::Rejected;
                }
                Ok(Err(e)) => {
                    error!(error = %e, "cannot check the BIRD configuration; will retry");
                    self.reload_pending = true;
                    METRICS.bird_config_pending.set(1);
                    return SyncState::Failed;
                }
                Err(e) => {
                    error!(error = %e, "BIRD configuration check panicked; will retry");
                    self.reload_pending = true;
                    return SyncState::Failed;
                }
            }
            if let Err(e) = write_atomically(&self.paths.config, desired) {
                error!(error = %e, "cannot install the BIRD configuration; will retry");
                self.reload_pending = true;
                METRICS.bird_config_pending.set(1);
                return SyncState::Failed;
            }
            info!(config = %self.paths.config.display(), "BIRD configuration updated");
            self.installed = Some(desired.to_string());
            self.rejected = None;
            self.reload_pending = true;
        }
        if !self.reload_pending {
            return SyncState::InSync;
        }
        METRICS.bird_config_pending.set(1);
        match birdc_configure(&self.paths).await {
            Ok(msg) => {
                METRICS.bird_reloads.inc();
                METRICS.bird_config_pending.set(0);
                if self.reload_failures > 0 {
                    info!(
                        attempts = self.reload_failures + 1,
                        "BIRD is up and reloaded"
                    );
                } else {
                    info!(reply = %msg, "BIRD reloaded");
                }
                self.reload_pending = false;
                self.reload_failures = 0;
                SyncState::InSync
            }
            Err(e) => {
                METRICS.bird_reload_failures.inc();
                self.reload_failures += 1;
                if self.reload_failures == 1 || self.reload_failures.is_multiple_of(60) {
                    warn!(error = %e, socket = %self.paths.socket.display(), attempts = self.reload_failures,
                        "BIRD did not take the configuration (not running yet?); retrying");
                } else {
                    debug!(error = %e, "birdc configure failed");
                }
                SyncState::ReloadPending
            }
        }
    }
}

/// `birdc -s SOCKET configure`; Ok with BIRD's reply when it took the file.
pub async fn birdc_configure(paths: &BirdPaths) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(&paths.birdc_bin);
    cmd.arg("-s")
        .arg(&paths.socket)
        .arg("configure")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(BIRDC_TIMEOUT, cmd.output()).await {
        Err(_) => return Err(format!("no answer within {}s", BIRDC_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(format!("cannot run {}: {e}", paths.birdc_bin.display())),
        Ok(Ok(out)) => out,
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let reply = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("BIRD ") && !l.starts_with("Reading "))
        .collect::<Vec<_>>()
        .join("; ");
    if out.status.success() && text.contains("Reconfigur") {
        Ok(reply)
    } else if reply.is_empty() {
        Err(format!("birdc exited with {}", out.status))
    } else {
        Err(reply)
    }
}

/// Makes an existing file at `path` mode 0600 if it is not; logs what it did.
fn restrict_mode(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_file() || mode == CONFIG_MODE {
        return;
    }
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(CONFIG_MODE)) {
        Ok(()) => info!(config = %path.display(), old_mode = format!("{mode:04o}"),
            "BIRD configuration made 0600: it holds BGP passwords"),
        Err(e) => warn!(config = %path.display(), error = %e,
            "cannot make the BIRD configuration 0600"),
    }
}

/// Writes `text` to `path` so readers see the old or the new file, never a mix:
/// a temporary file in the same directory, created 0600, synced, renamed over `path`.
/// The result is always mode 0600 (it holds TCP-MD5 passwords), whatever mode an
/// existing file had; the existing file's owner and group are kept (BIRD may run as
/// its own user), a new file gets the directory's group.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bird.conf".into());
    let tmp = dir.join(format!(".{name}.brindle-{}", std::process::id()));
    let (uid, gid) = match std::fs::metadata(path) {
        Ok(m) => (Some(m.uid()), Some(m.gid())),
        Err(_) => (None, std::fs::metadata(&dir).ok().map(|m| m.gid())),
    };
    let result = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(CONFIG_MODE)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        if uid.is_some() || gid.is_some() {
            // Only root may give a file away; otherwise keep our own ids.
            let _ = std::os::unix::fs::fchown(&f, uid, gid);
        }
        // Explicitly: the umask only narrows `mode()`, and fchown may clear bits.
        f.set_permissions(std::fs::Permissions::from_mode(CONFIG_MODE))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn atomic_write_replaces_and_is_always_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bird.conf");
        write_atomically(&path, "one\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\n");
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, "two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(mode(&path), 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }

    fn paths(dir: &Path, bird: &str, birdc: &str) -> BirdPaths {
        BirdPaths {
            config: dir.join("bird.conf"),
            socket: dir.join("bird.ctl"),
            bird_bin: PathBuf::from(bird),
            birdc_bin: PathBuf::from(birdc),
        }
    }

    /// A fake `bird`/`birdc`: a shell script answering with `reply` and `code`.
    fn script(dir: &Path, name: &str, reply: &str, code: i32) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho '{reply}'\nexit {code}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    #[tokio::test]
    async fn writes_after_check_then_retries_reload_until_bird_answers() {
        let dir = tempfile::tempdir().unwrap();
        let bird = script(dir.path(), "bird", "", 0);
        let down = script(
            dir.path(),
            "birdc-down",
            "Unable to connect to server control socket",
            1,
        );
        let mut m = BirdManager::new(paths(dir.path(), &bird, &down));
        assert_eq!(
            m.sync("router id 1.1.1.1;\n").await,
            SyncState::ReloadPending
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bird.conf")).unwrap(),
            "router id 1.1.1.1;\n"
        );
        assert!(m.pending());
        assert_eq!(
            m.sync("router id 1.1.1.1;\n").await,
            SyncState::ReloadPending
        );
        m.paths.birdc_bin = script(dir.path(), "birdc-up", "Reconfigured", 0).into();
        assert_eq!(m.sync("router id 1.1.1.1;\n").await, SyncState::InSync);
        assert!(!m.pending());
        assert_eq!(m.sync("router id 1.1.1.1;\n").await, SyncState::InSync);
    }

    #[tokio::test]
    async fn a_refused_config_is_not_installed_nor_retried() {
        let dir = tempfile::tempdir().unwrap();
        let ok_bird = script(dir.path(), "bird-ok", "", 0);
        let birdc = script(dir.path(), "birdc", "Reconfigured", 0);
        let mut m = BirdManager::new(paths(dir.path(), &ok_bird, &birdc));
        assert_eq!(m.sync("good;\n").await, SyncState::InSync);
        m.paths.bird_bin = script(dir.path(), "bird-no", "x.conf:1:1 syntax error", 1).into();
        assert_eq!(m.sync("bad;\n").await, SyncState::Rejected);
        assert_eq!(m.sync("bad;\n").await, SyncState::Rejected);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bird.conf")).unwrap(),
            "good;\n"
        );
        // Going back to what is installed needs nothing.
        assert_eq!(m.sync("good;\n").await, SyncState::InSync);
    }

    #[tokio::test]
    async fn an_existing_0644_config_is_0600_after_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let bird = script(dir.path(), "bird", "", 0);
        let birdc = script(dir.path(), "birdc", "Reconfigured", 0);
        let conf = dir.path().join("bird.conf");
        let open = || std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644));
        // Text that changes: rewritten 0600.
        std::fs::write(&conf, "old;\n").unwrap();
        open().unwrap();
        let mut m = BirdManager::new(paths(dir.path(), &bird, &birdc));
        open().unwrap();
        assert_eq!(m.sync("password \"x\";\n").await, SyncState::InSync);
        assert_eq!(mode(&conf), 0o600);
        // Text already current (nothing to write): made 0600 all the same.
        open().unwrap();
        let mut m = BirdManager::new(paths(dir.path(), &bird, &birdc));
        assert_eq!(m.sync("password \"x\";\n").await, SyncState::InSync);
        assert_eq!(mode(&conf), 0o600);
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), "password \"x\";\n");
    }

    #[tokio::test]
    async fn missing_bird_binary_is_a_retryable_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = BirdManager::new(paths(dir.path(), "/nonexistent/bird", "/nonexistent/birdc"));
        assert_eq!(m.sync("x;\n").await, SyncState::Failed);
        assert!(m.pending());
        assert!(!dir.path().join("bird.conf").exists());
    }
}
