//! Creating a file under a given umask, so it has its final mode from its first instant
//! (a `bind` followed by `chmod` leaves a window in which anyone may connect).
//!
//! The umask is process-wide. Two callers at once would save and restore each other's
//! value (and could leave the tight one in place for good), so the lock below makes
//! them take turns. Threads that create other files do not take it; brindled therefore
//! binds its sockets from one task before its servers, agent and metrics start, when no
//! other thread creates files. Should one slip in anyway, it only gets a file tighter
//! than intended, never a looser one.

use std::sync::Mutex;

use libc::mode_t;

static UMASK: Mutex<()> = Mutex::new(());

/// Run `f` with the process umask set to `mask`, then restore the previous one.
pub fn with_umask<T>(mask: mode_t, f: impl FnOnce() -> T) -> T {
    let _turn = UMASK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask cannot fail; it only swaps the process's mask.
    let previous = unsafe { libc::umask(mask) };
    let _restore = Restore(previous);
    f()
}

/// Puts the saved umask back, also if `f` unwinds.
struct Restore(mode_t);

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::umask(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The process umask, read without changing it.
    fn current() -> Option<u32> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("Umask:"))?;
        u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
    }

    #[test]
    fn socket_is_created_with_the_mask() {
        // (Whether the old mask comes back is not asserted: other tests bind sockets
        // concurrently, so a read outside the lock may see their mask.)
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let inside = with_umask(0o177, current);
        let listener = with_umask(0o177, || std::os::unix::net::UnixListener::bind(&path));
        assert!(listener.is_ok());
        assert_eq!(inside, Some(0o177));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
