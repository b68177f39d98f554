//! Log setup shared by the binaries: tracing to stderr (never stdout, which carries
//! results), level from `BRINDLE_LOG` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Text logs on stderr at `default` level unless the environment says otherwise.
pub fn init_stderr(default: &str) {
    let filter = std::env::var("BRINDLE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// JSON logs on stderr, for `--log-format json`.
pub fn init_stderr_json(default: &str) {
    let filter = std::env::var("BRINDLE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.to_string());
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
