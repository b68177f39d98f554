//! Golden files: every renderer against the reviewed files in `tests/golden/`, and
//! every rendered BIRD text through the real `bird -p -c`.
//!
//! `UPDATE_GOLDEN=1 cargo test -p brindle-bgp --test golden` rewrites the files;
//! review the diff before committing. `BRINDLE_BIRD=/path/to/bird` picks another
//! BIRD; `BRINDLE_SKIP_BIRD=1` skips the BIRD checks (otherwise a missing BIRD fails).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use brindle_bgp::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn node(name: &str, addr: &str) -> BgpNode {
    BgpNode {
        name: name.into(),
        ip: ip(addr),
        as_num: None,
        rr_cluster_id: None,
    }
}

fn peer(name: &str, addr: &str, as_num: u32, on: Option<&str>) -> BgpPeer {
    BgpPeer {
        name: name.into(),
        peer_ip: ip(addr),
        as_num,
        node: on.map(Into::into),
        password: None,
        passive: false,
        allow_local_as: None,
    }
}

fn block(cidr: &str, on: Option<&str>) -> RoutedBlock {
    RoutedBlock {
        cidr: cidr.parse().unwrap(),
        node: on.map(Into::into),
    }
}

fn borrowed(addr: &str, on: &str) -> BorrowedIp {
    BorrowedIp {
        ip: ip(addr),
        node: on.into(),
    }
}

/// Three nodes a, b, c (10.0.0.11-13, AS 64512); pool `default` 10.244.0.0/16 and
/// the disabled pool `legacy` 172.20.0.0/24; node c holds one address borrowed from
/// a's block and one from a block without affinity.
fn cluster_nodes() -> Vec<BgpNode> {
    vec![
        node("a", "10.0.0.11"),
        node("b", "10.0.0.12"),
        node("c", "10.0.0.13"),
    ]
}

fn cluster_view() -> RoutingView {
    RoutingView {
        blocks: vec![
            block("10.244.0.64/26", Some("a")),
            block("10.244.0.0/26", Some("a")),
            block("10.244.1.0/26", Some("b")),
            block("172.20.0.0/26", Some("b")),
            block("10.244.2.0/26", Some("c")),
            block("10.244.3.0/26", None),
        ],
        borrowed: vec![borrowed("10.244.3.5", "c"), borrowed("10.244.0.9", "c")],
        pools: vec![
            RoutedPool {
                name: "default".into(),
                cidr: "10.244.0.0/16".parse().unwrap(),
                disabled: false,
            },
            RoutedPool {
                name: "legacy".into(),
                cidr: "172.20.0.0/24".parse().unwrap(),
                disabled: true,
            },
        ],
    }
}

fn render_for(
    global: &BgpGlobal,
    nodes: &[BgpNode],
    me: &str,
    peers: &[BgpPeer],
    view: &RoutingView,
) -> String {
    let node = nodes.iter().find(|n| n.name == me).unwrap();
    let input = BirdInput {
        global,
        node,
        nodes,
        peers,
        view,
    };
    input.validate().expect("fixture is valid");
    render_bird(&input)
}

/// Every BIRD variant: (golden file name, rendered text).
fn bird_variants() -> Vec<(&'static str, String)> {
    let nodes = cluster_nodes();
    let view = cluster_view();
    let mut out = Vec::new();

    // 1. Full mesh of three nodes, seen from a (two affine blocks, no peers).
    out.push((
        "bird-mesh3-a.conf",
        render_for(&BgpGlobal::default(), &nodes, "a", &[], &view),
    ));

    // 2. Mesh off, one global eBGP peer (a ToR) with a password; all nodes share
    //    AS 64512 behind it, so the peer allows our AS once in received paths.
    let global = BgpGlobal {
        node_mesh: false,
        restart_time: Some(90),
        ..BgpGlobal::default()
    };
    let mut tor = peer("tor1", "10.0.0.1", 65000, None);
    tor.password = Some("s3cret-md5".into());
    tor.allow_local_as = Some(1);
    out.push((
        "bird-global-peer-password.conf",
        render_for(&global, &nodes, "b", &[tor], &view),
    ));

    // 3. Per-node peers: a's own passive peer, b's peer (absent from a), a global
    //    peer replaced on a by a's peer with the same address, and a global peer on
    //    node c's address replacing the mesh session to c.
    let mut own = peer("tor-a", "10.0.0.2", 65001, Some("a"));
    own.passive = true;
    own.password = Some("rack-a key".into());
    let peers = vec![
        own,
        peer("tor-b", "10.0.0.3", 65001, Some("b")),
        peer("edge", "10.0.0.2", 65001, None),
        peer("c-direct", "10.0.0.13", 64512, None),
    ];
    out.push((
        "bird-node-peer.conf",
        render_for(&BgpGlobal::default(), &nodes, "a", &peers, &view),
    ));

    // 4. Route reflectors a and d (cluster 244.0.0.1), clients b and c, node e in
    //    another AS, mesh off, plus an external iBGP peer; seen from a and from b.
    let rr_global = BgpGlobal {
        node_mesh: false,
        ..BgpGlobal::default()
    };
    let mut rr_nodes = cluster_nodes();
    rr_nodes[0].rr_cluster_id = Some(ip("244.0.0.1"));
    let mut d = node("d", "10.0.0.14");
    d.rr_cluster_id = Some(ip("244.0.0.1"));
    rr_nodes.push(d);
    let mut e = node("e", "10.0.0.15");
    e.as_num = Some(65010);
    rr_nodes.push(e);
    let rr_peers = vec![peer("core", "192.168.50.1", 64512, None)];
    out.push((
        "bird-route-reflector.conf",
        render_for(&rr_global, &rr_nodes, "a", &rr_peers, &view),
    ));
    out.push((
        "bird-rr-client.conf",
        render_for(&rr_global, &rr_nodes, "b", &rr_peers, &view),
    ));

    // 5. Borrowed /32s: c announces its block plus the two addresses it holds from
    //    a's block and from a block without affinity.
    out.push((
        "bird-borrowed.conf",
        render_for(&BgpGlobal::default(), &nodes, "c", &[], &view),
    ));

    // 6. A fresh node without blocks; graceful restart off, fast timers, a mesh
    //    password.
    let fast = BgpGlobal {
        graceful_restart: false,
        mesh_password: Some("mesh-pw".into()),
        timers: BgpTimers {
            connect_delay: 1,
            connect_retry: 1,
            error_wait_min: 1,
            error_wait_max: 5,
            hold: Some(9),
            keepalive: Some(3),
        },
        ..BgpGlobal::default()
    };
    let mut with_d = cluster_nodes();
    with_d.push(node("d", "10.0.0.14"));
    out.push((
        "bird-no-blocks.conf",
        render_for(&fast, &with_d, "d", &[], &view),
    ));

    // 7. A single node, nothing configured yet.
    let solo = vec![node("solo", "192.0.2.10")];
    out.push((
        "bird-standalone.conf",
        render_for(
            &BgpGlobal::default(),
            &solo,
            "solo",
            &[],
            &RoutingView::default(),
        ),
    ));
    out
}

fn routes_view() -> (RoutingView, Vec<BgpNode>) {
    let mut view = cluster_view();
    view.blocks.push(block("10.244.9.0/26", Some("ghost")));
    (view, cluster_nodes())
}

fn routes_variants() -> Vec<(String, String)> {
    let (view, nodes) = routes_view();
    let mut out: Vec<(String, String)> = RouteFormat::ALL
        .iter()
        .map(|&f| {
            (
                format!("routes.{f}"),
                render_static_routes(&view, &nodes, f).text,
            )
        })
        .collect();
    let warnings = render_static_routes(&view, &nodes, RouteFormat::Iproute2).warnings;
    let text: String = warnings.iter().map(|w| format!("{w}\n")).collect();
    out.push(("routes.warnings".into(), text));
    out
}

fn router_variants() -> Vec<(&'static str, String)> {
    let nodes = {
        let mut n = cluster_nodes();
        n.push(BgpNode {
            as_num: Some(65010),
            ..node("e", "10.0.0.15")
        });
        n
    };
    let mesh_off = BgpGlobal {
        node_mesh: false,
        ..BgpGlobal::default()
    };
    vec![
        (
            "router-frr-ibgp.conf",
            render_router_config(&BgpGlobal::default(), &nodes, 64512, RouterFormat::Frr),
        ),
        (
            "router-frr-ebgp.conf",
            render_router_config(&mesh_off, &nodes, 65000, RouterFormat::Frr),
        ),
        (
            "router-bird-ibgp.conf",
            render_router_config(&BgpGlobal::default(), &nodes, 64512, RouterFormat::Bird),
        ),
        (
            "router-bird-ebgp.conf",
            render_router_config(&mesh_off, &nodes, 65000, RouterFormat::Bird),
        ),
    ]
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn check_golden(name: &str, actual: &str) -> Option<String> {
    let path = golden_dir().join(name);
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::create_dir_all(golden_dir()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    match std::fs::read_to_string(&path) {
        Err(e) => Some(format!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )),
        Ok(expected) if expected == actual => None,
        Ok(expected) => {
            let line = expected
                .lines()
                .zip(actual.lines())
                .position(|(a, b)| a != b)
                .map(|i| i + 1)
                .unwrap_or(expected.lines().count().min(actual.lines().count()) + 1);
            Some(format!(
                "{} differs from the renderer output from line {line}; expected:\n{}\n--- actual:\n{}",
                path.display(),
                expected,
                actual
            ))
        }
    }
}

fn assert_goldens<N: AsRef<str>>(variants: &[(N, String)]) {
    let failures: Vec<String> = variants
        .iter()
        .filter_map(|(n, text)| check_golden(n.as_ref(), text))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bird_configs_match_golden_files() {
    assert_goldens(&bird_variants());
}

#[test]
fn static_routes_match_golden_files() {
    assert_goldens(&routes_variants());
}

#[test]
fn router_configs_match_golden_files() {
    assert_goldens(&router_variants());
}

#[test]
fn rendering_is_deterministic_whatever_the_input_order() {
    let nodes = cluster_nodes();
    let view = cluster_view();
    let mut rev_nodes = nodes.clone();
    rev_nodes.reverse();
    let mut rev_view = view.clone();
    rev_view.blocks.reverse();
    rev_view.borrowed.reverse();
    rev_view.pools.reverse();
    let peers = vec![
        peer("p1", "10.9.0.1", 65000, None),
        peer("p2", "10.9.0.2", 65000, None),
    ];
    let mut rev_peers = peers.clone();
    rev_peers.reverse();
    let g = BgpGlobal::default();
    for me in ["a", "b", "c"] {
        assert_eq!(
            render_for(&g, &nodes, me, &peers, &view),
            render_for(&g, &rev_nodes, me, &rev_peers, &rev_view)
        );
    }
}

/// The BIRD binary, or a failing test unless BRINDLE_SKIP_BIRD=1.
fn bird_bin() -> Option<PathBuf> {
    if std::env::var("BRINDLE_SKIP_BIRD").as_deref() == Ok("1") {
        eprintln!("BRINDLE_SKIP_BIRD=1: BIRD checks skipped");
        return None;
    }
    let bin = std::env::var_os("BRINDLE_BIRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIRD_BIN));
    assert!(
        bin.is_file(),
        "BIRD not found at {}: install Debian's bird2 (apt-get install bird2), point \
         BRINDLE_BIRD at the binary, or set BRINDLE_SKIP_BIRD=1 to skip the BIRD checks",
        bin.display()
    );
    Some(bin)
}

#[test]
fn every_rendered_bird_text_passes_bird_parse() {
    let Some(bin) = bird_bin() else { return };
    let mut texts: Vec<(String, String)> = bird_variants()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    for (n, t) in routes_variants() {
        if n == "routes.bird" {
            texts.push((n, t));
        }
    }
    for (n, t) in router_variants() {
        if n.starts_with("router-bird") {
            texts.push((n.to_string(), t));
        }
    }
    assert!(texts.len() >= 11);
    let failures: Vec<String> = texts
        .iter()
        .filter_map(|(n, t)| {
            validate_with_bird(t, &bin)
                .err()
                .map(|e| format!("{n}: {e}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn bird_parse_reports_bird_message_on_a_broken_config() {
    let Some(bin) = bird_bin() else { return };
    let config =
        "router id 10.0.0.1;\nprotocol device {}\nprotocol kernel { ipv4 { import al; }; }\n";
    let err = validate_with_bird(config, &bin).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BgpError::BirdRejected { .. }), "{msg}");
    assert!(msg.contains(".conf:3:"), "BIRD's line number in {msg}");
}

#[test]
fn a_missing_bird_binary_is_a_clear_error() {
    let err =
        validate_with_bird("router id 10.0.0.1;\n", Path::new("/nonexistent/bird")).unwrap_err();
    assert!(matches!(err, BgpError::BirdUnavailable { .. }));
    assert!(err.to_string().contains("/nonexistent/bird"), "{err}");
}

#[test]
fn hostile_or_invalid_input_still_renders_a_config_bird_accepts() {
    let Some(bin) = bird_bin() else { return };
    let nodes = vec![
        node("me\"; protocol static evil { ipv4; }", "10.0.0.1"),
        node("b#x\\", "10.0.0.2"),
        node("dup-ip", "10.0.0.2"),
        node("zero", "0.0.0.0"),
    ];
    let mut bad_pw = peer("tor1", "10.0.0.9", 65000, None);
    bad_pw.password = Some("x\";\n}\nprotocol static evil2 { ipv4; }".into());
    let peers = vec![
        bad_pw,
        peer("bad name!", "10.0.0.8", 65000, None),
        peer("dup1", "10.0.0.7", 65000, None),
        peer("dup2", "10.0.0.7", 65001, None),
        peer("zero-as", "10.0.0.6", 0, None),
    ];
    let global = BgpGlobal {
        mesh_password: Some("bad\"pw".into()),
        ..BgpGlobal::default()
    };
    let view = RoutingView {
        blocks: vec![block("10.244.0.77/26", Some(&nodes[0].name))],
        borrowed: vec![borrowed("10.244.5.5", &nodes[0].name)],
        pools: vec![RoutedPool {
            name: "p\"ool\nx".into(),
            cidr: "10.244.1.1/16".parse().unwrap(),
            disabled: false,
        }],
    };
    let input = BirdInput {
        global: &global,
        node: &nodes[0],
        nodes: &nodes,
        peers: &peers,
        view: &view,
    };
    assert!(input.validate().is_err());
    let text = render_bird(&input);
    validate_with_bird(&text, &bin).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(!text.contains("protocol static"), "{text}");
    assert!(
        text.contains("if net = 10.244.0.64/26 then accept;"),
        "{text}"
    );
    assert!(
        text.contains("if net ~ 10.244.0.0/16 then return true;"),
        "{text}"
    );
    assert_eq!(text.matches("protocol bgp ").count(), 2, "{text}"); // Mesh_10_0_0_2, Global_10_0_0_7
}

/// Global settings out of BIRD's ranges (as another tool could store them) made every
/// node's configuration one BIRD refuses: the `bird_render` fuzz target found "Hold
/// time must be in range 3-65535 or zero"; checking BIRD's other range rules after it
/// found "Remote AS number must be set" (AS 0). Each is replaced by its default, with
/// a note.
#[test]
fn invalid_global_settings_fall_back_to_defaults_bird_accepts() {
    let Some(bin) = bird_bin() else { return };
    let mut nodes = cluster_nodes();
    nodes[0].as_num = Some(0);
    let global = BgpGlobal {
        as_num: 0,
        restart_time: Some(5000),
        timers: BgpTimers {
            hold: Some(1),
            keepalive: Some(7),
            ..BgpTimers::default()
        },
        ..BgpGlobal::default()
    };
    let view = RoutingView::default();
    let input = BirdInput {
        global: &global,
        node: &nodes[0],
        nodes: &nodes,
        peers: &[],
        view: &view,
    };
    assert!(input.validate().is_err());
    let text = render_bird(&input);
    validate_with_bird(&text, &bin).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for note in [
        "# - global AS ignored",
        "# - graceful restart time 5000 ignored",
        "# - session timers ignored",
        "# - AS 0 of this node ignored",
    ] {
        assert!(text.contains(note), "{note}: {text}");
    }
    assert!(text.contains("  local as 64512;\n"), "{text}");
    assert!(text.contains("  neighbor 10.0.0.12 as 64512;\n"), "{text}");
    assert!(!text.contains("hold time"), "{text}");
}

/// Found while checking BIRD's timer rules after the `bird_render` fuzz target's
/// first finding: a keepalive time with hold time 0 passed validation, and BIRD
/// refuses it ("Keepalive time must be at most hold time").
#[test]
fn a_keepalive_with_hold_time_zero_is_invalid_and_left_out() {
    let Some(bin) = bird_bin() else { return };
    let nodes = cluster_nodes();
    let global = BgpGlobal {
        timers: BgpTimers {
            hold: Some(0),
            keepalive: Some(5),
            ..BgpTimers::default()
        },
        ..BgpGlobal::default()
    };
    assert!(validate_global(&global).is_err());
    let view = RoutingView::default();
    let text = render_bird(&BirdInput {
        global: &global,
        node: &nodes[0],
        nodes: &nodes,
        peers: &[],
        view: &view,
    });
    validate_with_bird(&text, &bin).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(!text.contains("keepalive time"), "{text}");
}
