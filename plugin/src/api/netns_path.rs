//! Which netns paths brindled opens for a caller of its API. brindled runs as root and
//! enters the namespace it is given; a caller (a member of `--api-group`) must not make
//! it open any file it likes. Accepted: `/proc/<pid>/ns/net`,
//! `/proc/<pid>/task/<tid>/ns/net`, and paths under `/run/netns`, `/var/run/netns` and
//! each `--netns-dir`.
//!
//! The check is lexical: `.` and repeated slashes are dropped, `..` and relative paths
//! are refused, and symlinks are not followed. The allowed directories are writable by
//! root only, so a symlink inside them is root's doing.

use std::path::{Component, Path, PathBuf};

/// Where runtimes put named network namespaces (podman, containerd, CRI-O, `ip netns`).
pub const DEFAULT_DIRS: [&str; 2] = ["/run/netns", "/var/run/netns"];

/// The directories whose netns files the API opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsDirs {
    dirs: Vec<PathBuf>,
}

/// Why a path is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Relative,
    ParentComponent,
    Outside,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Why::Relative => "it is not an absolute path",
            Why::ParentComponent => "it contains `..`",
            Why::Outside => "it lies outside the allowed directories",
        })
    }
}

/// A netns path the API refuses, with what it would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("brindled refuses netns {path}: {why}; it opens only /proc/<pid>/ns/net, /proc/<pid>/task/<tid>/ns/net and paths under {allowed} (brindled --netns-dir adds a directory)")]
pub struct NetnsRefused {
    pub path: String,
    pub why: Why,
    /// The allowed directories, comma-separated.
    pub allowed: String,
}

impl NetnsDirs {
    /// The default directories plus `extra` (each absolute, without `..`: see
    /// [`parse_dir`]).
    pub fn new(extra: &[PathBuf]) -> Self {
        let mut dirs: Vec<PathBuf> = DEFAULT_DIRS.iter().map(PathBuf::from).collect();
        for d in extra {
            let d = normalize(d);
            if !dirs.contains(&d) {
                dirs.push(d);
            }
        }
        NetnsDirs { dirs }
    }

    /// Accept `path` if it is a process's netns under `/proc` or lies under one of the
    /// directories.
    pub fn check(&self, path: &str) -> Result<(), NetnsRefused> {
        let refuse = |why| NetnsRefused {
            path: path.to_string(),
            why,
            allowed: self.allowed(),
        };
        let p = Path::new(path);
        if !p.is_absolute() {
            return Err(refuse(Why::Relative));
        }
        if p.components().any(|c| c == Component::ParentDir) {
            return Err(refuse(Why::ParentComponent));
        }
        let p = normalize(p);
        let under = |d: &PathBuf| p.starts_with(d) && p != *d;
        if is_proc_netns(&p) || self.dirs.iter().any(under) {
            Ok(())
        } else {
            Err(refuse(Why::Outside))
        }
    }

    fn allowed(&self) -> String {
        self.dirs
            .iter()
            .map(|d| format!("{}/", d.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `path` with `.` components and repeated or trailing slashes dropped.
fn normalize(path: &Path) -> PathBuf {
    path.components().collect()
}

/// Exactly `/proc/<digits>/ns/net` or `/proc/<digits>/task/<digits>/ns/net`.
fn is_proc_netns(p: &Path) -> bool {
    let parts: Vec<&str> = p
        .components()
        .map(|c| match c {
            Component::Normal(s) => s.to_str().unwrap_or("\u{0}"),
            _ => "/",
        })
        .collect();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        ["/", "proc", pid, "ns", "net"] => digits(pid),
        ["/", "proc", pid, "task", tid, "ns", "net"] => digits(pid) && digits(tid),
        _ => false,
    }
}

/// clap parser for `--netns-dir`: an absolute directory without `..`, not `/`.
pub fn parse_dir(s: &str) -> Result<PathBuf, String> {
    let p = Path::new(s);
    if !p.is_absolute() {
        return Err(format!("{s:?} is not an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{s:?} contains `..`"));
    }
    let p = normalize(p);
    if p == Path::new("/") {
        return Err("`/` would allow every file as a netns".to_string());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> NetnsDirs {
        NetnsDirs::new(&[PathBuf::from("/srv/netns/")])
    }

    #[test]
    fn runtime_paths_are_allowed() {
        let d = dirs();
        for ok in [
            "/run/netns/cni-1234",
            "/var/run/netns/netns-5f1c",
            "/run/netns/sub/dir/ns",
            "/proc/4242/ns/net",
            "/proc/4242/task/4243/ns/net",
            "/srv/netns/pod-a",
            // Lexically the same as allowed ones.
            "/run//netns/./x",
            "/proc/1/ns/net/",
        ] {
            assert_eq!(d.check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn other_paths_are_refused_naming_path_and_directories() {
        let d = dirs();
        for bad in [
            "/tmp/ns",
            "/etc/shadow",
            "/run/netns",
            "/run/netnsx/a",
            "/proc/self/ns/net",
            "/proc/1/ns/mnt",
            "/proc/1/ns/net/extra",
            "/proc/1/task/x/ns/net",
            "/proc//ns/net",
            "/srv/netns",
            "/srv/netnsfoo/a",
        ] {
            let e = d.check(bad).unwrap_err();
            assert_eq!(e.why, Why::Outside, "{bad}");
            let msg = e.to_string();
            assert!(msg.contains(bad), "{msg}");
            assert!(
                msg.contains("/run/netns/, /var/run/netns/, /srv/netns/"),
                "{msg}"
            );
        }
    }

    #[test]
    fn parent_components_and_relative_paths_are_refused() {
        let d = dirs();
        assert_eq!(
            d.check("/run/netns/../../tmp/ns").unwrap_err().why,
            Why::ParentComponent
        );
        assert_eq!(
            d.check("/proc/1/ns/../ns/net").unwrap_err().why,
            Why::ParentComponent
        );
        assert_eq!(d.check("run/netns/x").unwrap_err().why, Why::Relative);
        assert_eq!(d.check("").unwrap_err().why, Why::Relative);
        assert_eq!(d.check("./x").unwrap_err().why, Why::Relative);
    }

    #[test]
    fn configured_directories_are_validated() {
        assert_eq!(parse_dir("/srv/netns/"), Ok(PathBuf::from("/srv/netns")));
        assert!(parse_dir("srv/netns").is_err());
        assert!(parse_dir("/srv/../etc").is_err());
        assert!(parse_dir("/").is_err());
        assert!(parse_dir("//").is_err());
        // Without extra directories only the defaults apply.
        assert!(NetnsDirs::new(&[]).check("/srv/netns/a").is_err());
    }
}
