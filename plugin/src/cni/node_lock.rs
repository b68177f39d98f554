//! The direct path's per-node lock. Plugin processes of one node that talk to etcd
//! themselves all allocate from the node's block, and at once they would mostly lose
//! their compares to each other and retry (a burst of 200 took 3–8 times ptp's). So they
//! take turns on an `flock` (Calico's CNI plugin does the same on its host).
//!
//! The lock only spares etcd the lost compares; the compares keep the allocations
//! right with or without it. So it is best effort: a lock file that cannot be opened,
//! or a turn that does not come within [`WAIT`] (a holder stuck on an unreachable
//! etcd), and the process goes on without it. The kernel drops the lock when its holder
//! exits, however it exits.
//!
//! The holder also keeps the node's blocks in the file, one CIDR per line, for the next
//! process to read beside its first round trip to etcd (a guess: see
//! `Ipam::expect_blocks`).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnetwork::Ipv4Network;
use tracing::debug;

/// Longest a process waits for its turn before it goes on without one.
pub const WAIT: Duration = Duration::from_secs(5);

/// The default lock of `node`: `/run/brindle/ipam-NODE.lock`. Node names are ASCII with
/// no `/`; one too long for a file name is replaced by its hash.
pub fn default_path(node: &str) -> PathBuf {
    let name = if node.len() <= 200 {
        node.to_string()
    } else {
        format!("{:016x}", fnv1a(node.as_bytes()))
    };
    PathBuf::from(format!("/run/brindle/ipam-{name}.lock"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A turn on the node's lock, or the lack of one; the lock is released when dropped.
#[derive(Debug)]
pub struct Turn {
    file: Option<File>,
}

impl Turn {
    pub fn held(&self) -> bool {
        self.file.is_some()
    }

    /// The blocks the last holder kept in the file (none without a turn); lines that
    /// are not a CIDR are passed over.
    pub fn remembered_blocks(&self) -> Vec<Ipv4Network> {
        let Some(mut file) = self.file.as_ref() else {
            return Vec::new();
        };
        let mut text = String::new();
        // A file this small (a few CIDRs) is read whole; a larger one is not ours.
        if file.rewind().is_err() || file.take(4096).read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        text.lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// Keep `blocks` in the file for the next holder (only with a turn). Best effort,
    /// as the lock is.
    pub fn remember_blocks(&self, blocks: &[Ipv4Network]) {
        let Some(mut file) = self.file.as_ref() else {
            return;
        };
        let text: String = blocks.iter().map(|b| format!("{b}\n")).collect();
        let written = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(text.as_bytes()));
        if let Err(e) = written {
            debug!(error = %e, "cannot keep the node's blocks in its lock file");
        }
    }
}

/// Wait up to `wait` for the lock at `path`.
pub fn take(path: &Path, wait: Duration) -> Turn {
    match try_take(path, wait) {
        Ok(file) => Turn { file },
        Err(e) => {
            debug!(path = %path.display(), error = %e, "going on without the node's lock");
            Turn { file: None }
        }
    }
}

fn try_take(path: &Path, wait: Duration) -> io::Result<Option<File>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let fd = file.as_raw_fd();
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(e);
    }
    // Blocked on a thread of its own, so the wait can be bounded: a turn that comes
    // after the bound finds nobody to take it and is given back at once.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("brindle-node-lock".into())
        .spawn(move || {
            // SAFETY: flock on the descriptor of the file this thread owns.
            let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0;
            let result = if locked {
                Ok(file)
            } else {
                Err(io::Error::last_os_error())
            };
            let _ = tx.send(result);
        })?;
    match rx.recv_timeout(wait) {
        Ok(result) => result.map(Some),
        Err(_) => {
            debug!(path = %path.display(), ?wait, "no turn on the node's lock in time");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn default_paths_name_the_node_and_stay_valid_file_names() {
        assert_eq!(
            default_path("node-1"),
            PathBuf::from("/run/brindle/ipam-node-1.lock")
        );
        let long = "n".repeat(250);
        let p = default_path(&long);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert!(name.len() < 255, "{name}");
        assert_ne!(default_path(&long), default_path(&"m".repeat(250)));
    }

    #[test]
    fn turns_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/ipam-n.lock");
        let first = take(&path, WAIT);
        assert!(first.held());
        // A second description of the file (another process, as flock sees it) waits
        // its bound out and goes on without a turn.
        let started = Instant::now();
        let second = take(&path, Duration::from_millis(200));
        assert!(!second.held());
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(first);
        assert!(take(&path, WAIT).held());
    }

    #[test]
    fn the_holder_keeps_the_nodes_blocks_for_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam-n.lock");
        let blocks: Vec<Ipv4Network> = vec![
            "10.1.0.64/26".parse().unwrap(),
            "10.2.0.0/26".parse().unwrap(),
        ];
        let first = take(&path, WAIT);
        assert!(
            first.remembered_blocks().is_empty(),
            "a new file holds none"
        );
        first.remember_blocks(&blocks);
        drop(first);
        let next = take(&path, WAIT);
        assert_eq!(next.remembered_blocks(), blocks);
        // Fewer blocks replace more: nothing of the longer list is left behind.
        next.remember_blocks(&blocks[1..]);
        assert_eq!(next.remembered_blocks(), blocks[1..]);
        drop(next);
        // Whatever else the file holds is passed over.
        std::fs::write(&path, "garbage\n10.3.0.0/26\n\n999.1.1.1/26\n").unwrap();
        let turn = take(&path, WAIT);
        assert_eq!(
            turn.remembered_blocks(),
            vec!["10.3.0.0/26".parse::<Ipv4Network>().unwrap()]
        );
        // Without a turn nothing is read or written.
        let other = take(&path, Duration::from_millis(10));
        assert!(!other.held());
        assert!(other.remembered_blocks().is_empty());
        other.remember_blocks(&blocks);
        drop(other);
        assert_eq!(turn.remembered_blocks().len(), 1);
    }

    #[test]
    fn a_lock_file_that_cannot_be_made_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        // Its directory is a regular file.
        let turn = take(&blocker.join("ipam.lock"), WAIT);
        assert!(!turn.held());
    }
}
