//! `brindle-cni`: the CNI plugin, installed as `/opt/cni/bin/brindle` (main plugin) and
//! `/opt/cni/bin/brindle-ipam` (IPAM plugin for ptp, bridge, ...). See docs/cni.md.
//!
//! A runtime starts it twice per container (ADD, DEL), so `make` links it statically
//! and at a fixed address: with no dynamic loader, no shared libraries to map and no
//! relocations to apply, a start takes 0.7–1 ms less on the benchmark machines
//! (docs/benchmarks.md, CNI).

mod nss;

fn main() -> std::process::ExitCode {
    nss::keep_to_built_in_sources();
    brindle_plugin::cni::main()
}
