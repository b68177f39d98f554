//! `brindle-cni`: the CNI plugin, installed as `/opt/cni/bin/brindle` (main plugin) and
//! `/opt/cni/bin/brindle-ipam` (IPAM plugin for ptp, bridge, ...). See docs/cni.md.
//!
//! A runtime starts it twice per container (ADD, DEL), so `make` links it statically:
//! with no dynamic loader and no shared libraries to map, a start takes 0.5–0.7 ms
//! less on the benchmark machine (docs/benchmarks.md, CNI).

mod nss;

fn main() -> std::process::ExitCode {
    nss::keep_to_built_in_sources();
    brindle_plugin::cni::main()
}
