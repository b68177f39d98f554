//! CNI invocations with arbitrary environment and stdin, through the same parsing,
//! checks and ADD/DEL/CHECK/GC/STATUS dispatch as `brindle-cni`
//! (`brindle_plugin::cni::run_on`), on the in-process store and the fake dataplane.
//!
//! One input is up to [`MAX_INVOCATIONS`] invocations on one store, each seven parts
//! separated by 0xFF: CNI_COMMAND (one byte picks a known command, longer parts are
//! taken as they are), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH (raw
//! bytes, not necessarily UTF-8), then the configuration on stdin. Every failure must
//! be a CNI error document (`code`, `msg`), never a panic.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use brindle_dataplane::FakeDataplane;
use brindle_fuzz::{ipam_with, parts, runtime, SeedPool, NODE};
use brindle_plugin::cni::conf::CniEnv;
use brindle_plugin::cni::ops::Ctx;
use brindle_plugin::cni::run_on;
use libfuzzer_sys::fuzz_target;

const MAX_INVOCATIONS: usize = 3;

const COMMANDS: [&str; 6] = ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"];

const VARS: [&str; 5] = [
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
    "CNI_PATH",
];

const POOLS: [SeedPool; 2] = [
    SeedPool {
        name: "p",
        cidr: "10.20.0.0/24",
        block_size: 28,
    },
    SeedPool {
        name: "q",
        cidr: "10.30.0.0/16",
        block_size: 26,
    },
];

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let ipam = ipam_with(&POOLS).await;
        let dataplane = FakeDataplane::new();
        let ctx = Ctx {
            ipam: &ipam,
            dataplane: Some(&dataplane),
            node: NODE,
            reaper: None,
        };
        let all: Vec<&[u8]> = parts(data, MAX_INVOCATIONS * 7).collect();
        for invocation in all.chunks(7) {
            let Some((stdin, vars)) = invocation.split_last() else {
                continue;
            };
            let env = environment(vars);
            let out = run_on(&env, stdin, &ctx).await;
            match (&out.stdout, out.success) {
                (Some(doc), false) => assert!(
                    doc["code"].is_u64() && doc["msg"].is_string(),
                    "not a CNI error document: {doc}"
                ),
                (Some(doc), true) => assert!(doc.is_object(), "{doc}"),
                (None, success) => assert!(success, "a failure without an error document"),
            }
        }
    });
});

/// The `CNI_*` variables of one invocation, from its first six parts.
fn environment(vars: &[&[u8]]) -> CniEnv {
    let command = match vars.first() {
        Some([one]) => COMMANDS[usize::from(*one) % COMMANDS.len()]
            .as_bytes()
            .to_vec(),
        Some(raw) => raw.to_vec(),
        None => Vec::new(),
    };
    let named = VARS
        .iter()
        .zip(vars.iter().skip(1))
        .map(|(name, value)| (OsString::from(name), OsString::from_vec(value.to_vec())));
    CniEnv::from_vars_os(
        std::iter::once((OsString::from("CNI_COMMAND"), OsString::from_vec(command))).chain(named),
    )
}
