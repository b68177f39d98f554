//! Paths of the workspace's binaries, built by `make` before the suites run.

use std::path::PathBuf;
use std::process::Command;

/// The directory holding this build's binaries (target/debug or target/release).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BRINDLE_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A workspace binary; panics with the fix when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `make build` first (make test does)",
        path.display()
    );
    path
}

/// A `brindle` CLI command pointed at an etcd endpoint, as node `node`.
pub fn brindle(endpoint: &str, node: &str) -> Command {
    let mut cmd = Command::new(bin("brindle"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BRINDLE_ETCD_ENDPOINTS", endpoint)
        .env("BRINDLE_NODE", node);
    cmd
}
