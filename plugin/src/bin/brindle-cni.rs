//! `brindle-cni`: the CNI plugin, installed as `/opt/cni/bin/brindle` (main plugin) and
//! `/opt/cni/bin/brindle-ipam` (IPAM plugin for ptp, bridge, ...). See docs/cni.md.

fn main() -> std::process::ExitCode {
    brindle_plugin::cni::main()
}
