//! `brindle`: the operator CLI. Errors go to stderr as one sentence; exit code 1.

use std::process::ExitCode;

use brindle_plugin::cli::{run, Cli};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    brindle_plugin::logging::init_stderr("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("brindle: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("brindle: {e:#}");
            ExitCode::FAILURE
        }
    }
}
