//! Log setup shared by the binaries: tracing to stderr (never stdout, which carries
//! results), level from `BRINDLE_LOG` or `RUST_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The level filter from `BRINDLE_LOG` or `RUST_LOG` (`info`, `warn,brindle_plugin=debug`:
/// a default level and levels per module), else `default`. `Targets` rather than
/// `EnvFilter`: brindle's logs need no span or field filters, and `EnvFilter` brings
/// a regex engine into every binary.
fn level_filter(default: &str) -> Targets {
    let fallback = || {
        default
            .parse()
            .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO))
    };
    let Ok(spec) = std::env::var("BRINDLE_LOG").or_else(|_| std::env::var("RUST_LOG")) else {
        return fallback();
    };
    spec.parse().unwrap_or_else(|e| {
        eprintln!(
            "brindle: ignoring the log filter {spec:?} ({e}); valid: a level (error, warn, \
             info, debug, trace) and module=level pairs, comma-separated"
        );
        fallback()
    })
}

// Layers on a bare registry, not `fmt().finish()`: that subscriber has its own INFO
// ceiling, under which `BRINDLE_LOG=debug` would silently log nothing more.

/// Text logs on stderr at `default` level unless the environment says otherwise.
pub fn init_stderr(default: &str) {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .with(level_filter(default))
        .try_init();
}

/// JSON logs on stderr, for `--log-format json`.
pub fn init_stderr_json(default: &str) {
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr),
        )
        .with(level_filter(default))
        .try_init();
}
