//! `brindled`: the brindle node agent.

use brindle_plugin::daemon::{run, DaemonArgs, LogFormat};
use clap::Parser;

fn main() -> anyhow::Result<()> {
    brindle_plugin::agent::memory::tune_allocator();
    let args = DaemonArgs::parse();
    match args.log_format {
        LogFormat::Text => brindle_plugin::logging::init_stderr("info"),
        LogFormat::Json => brindle_plugin::logging::init_stderr_json("info"),
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run(args))
}
