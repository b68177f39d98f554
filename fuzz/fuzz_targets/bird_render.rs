//! The BIRD renderer on arbitrary models: global settings, nodes, peers and the IPAM
//! routing view, valid or not (the renderer skips what is invalid with a comment).
//! Rendering must not panic, must be deterministic, and BIRD itself must accept the
//! text: `bird -p -c FILE` (BIRD 2, `/usr/sbin/bird`, or `BRINDLE_BIRD_BIN`).
//!
//! Running bird costs a process and a parse (a few milliseconds, about a hundred times
//! the render), so it checks one input in [`BIRD_EVERY`] (`BRINDLE_FUZZ_BIRD_EVERY`
//! overrides it), the first one included (so a single input replayed from a crash file
//! is always checked).

#![no_main]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use arbitrary::Arbitrary;
use brindle_bgp::{
    render_bird, validate_with_bird, BgpGlobal, BgpNode, BgpPeer, BgpTimers, BirdInput, BorrowedIp,
    RoutedBlock, RoutedPool, RoutingView, DEFAULT_BIRD_BIN,
};
use ipnetwork::Ipv4Network;
use libfuzzer_sys::fuzz_target;

/// One input in this many is checked with bird.
const BIRD_EVERY: u64 = 100;

/// A name: mostly from a small set (so nodes, peers and blocks refer to each other),
/// sometimes any string (quotes, line breaks, braces).
#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Any(String),
}

impl Name {
    fn get(&self) -> String {
        match self {
            Name::Known(n) => format!("node-{}", n % 4),
            Name::Any(s) => s.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Model {
    as_num: u32,
    node_mesh: bool,
    mesh_password: Option<String>,
    graceful_restart: bool,
    restart_time: Option<u32>,
    timers: [u32; 4],
    hold: Option<u32>,
    keepalive: Option<u32>,
    /// Which of `nodes` the configuration is for.
    me: u8,
    nodes: Vec<Node>,
    peers: Vec<Peer>,
    blocks: Vec<(Ipv4Addr, u8, Option<Name>)>,
    borrowed: Vec<(Ipv4Addr, Name)>,
    pools: Vec<(Name, Ipv4Addr, u8, bool)>,
}

#[derive(Debug, Arbitrary)]
struct Node {
    name: Name,
    ip: Ipv4Addr,
    as_num: Option<u32>,
    rr_cluster_id: Option<Ipv4Addr>,
}

#[derive(Debug, Arbitrary)]
struct Peer {
    name: Name,
    peer_ip: Ipv4Addr,
    as_num: u32,
    node: Option<Name>,
    password: Option<String>,
    passive: bool,
    allow_local_as: Option<u32>,
}

fn net(addr: Ipv4Addr, prefix: u8) -> Ipv4Network {
    Ipv4Network::new(addr, prefix % 33).expect("a prefix of at most 32")
}

fuzz_target!(|model: Model| {
    let global = BgpGlobal {
        as_num: model.as_num,
        node_mesh: model.node_mesh,
        mesh_password: model.mesh_password,
        graceful_restart: model.graceful_restart,
        restart_time: model.restart_time,
        timers: BgpTimers {
            connect_delay: model.timers[0],
            connect_retry: model.timers[1],
            error_wait_min: model.timers[2],
            error_wait_max: model.timers[3],
            hold: model.hold,
            keepalive: model.keepalive,
        },
    };
    let nodes: Vec<BgpNode> = model
        .nodes
        .iter()
        .map(|n| BgpNode {
            name: n.name.get(),
            ip: n.ip,
            as_num: n.as_num,
            rr_cluster_id: n.rr_cluster_id,
        })
        .collect();
    let Some(me) = nodes.get(usize::from(model.me) % nodes.len().max(1)) else {
        return;
    };
    let peers: Vec<BgpPeer> = model
        .peers
        .iter()
        .map(|p| BgpPeer {
            name: p.name.get(),
            peer_ip: p.peer_ip,
            as_num: p.as_num,
            node: p.node.as_ref().map(Name::get),
            password: p.password.clone(),
            passive: p.passive,
            allow_local_as: p.allow_local_as,
        })
        .collect();
    let view = RoutingView {
        blocks: model
            .blocks
            .iter()
            .map(|(addr, prefix, node)| RoutedBlock {
                cidr: net(*addr, *prefix),
                node: node.as_ref().map(Name::get),
            })
            .collect(),
        borrowed: model
            .borrowed
            .iter()
            .map(|(ip, node)| BorrowedIp {
                ip: *ip,
                node: node.get(),
            })
            .collect(),
        pools: model
            .pools
            .iter()
            .map(|(name, addr, prefix, disabled)| RoutedPool {
                name: name.get(),
                cidr: net(*addr, *prefix),
                disabled: *disabled,
            })
            .collect(),
    };
    let input = BirdInput {
        global: &global,
        node: me,
        nodes: &nodes,
        peers: &peers,
        view: &view,
    };
    let config = render_bird(&input);
    assert_eq!(
        config,
        render_bird(&input),
        "rendering is not deterministic"
    );

    static RUNS: AtomicU64 = AtomicU64::new(0);
    let every = std::env::var("BRINDLE_FUZZ_BIRD_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(BIRD_EVERY);
    if RUNS.fetch_add(1, Ordering::Relaxed) % every == 0 {
        let bird = std::env::var_os("BRINDLE_BIRD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIRD_BIN));
        if let Err(e) = validate_with_bird(&config, &bird) {
            panic!("bird refuses the configuration: {e}\n{config}");
        }
    }
});
