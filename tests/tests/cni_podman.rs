//! podman 4 with the CNI backend running containers on a brindle conflist: dynamic and
//! `--ip` addresses, directly against etcd and through brindled, reachable from the
//! host, released when the container goes.
//!
//! Root only. The pool lies under an `unreachable` route; traffic goes only to the
//! containers made here.

use std::net::Ipv4Addr;

use brindle_ipam::Keys;
use brindle_tests::bins::brindle;
use brindle_tests::cni::{Brindle, Brindled, PluginDir};
use brindle_tests::docker::{shared_host, Scope, HOST_IP};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, RootIpForward, UnreachableRoute};
use brindle_tests::podman::{Podman, IMAGE};

const POOL: &str = "10.241.7.0/24";

/// The `inet A/32` of eth0 printed by `ip -4 addr show eth0` in the container.
fn eth0_address(out: &str) -> Ipv4Addr {
    let inet = out
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("inet "))
        .unwrap_or_else(|| panic!("no inet line in {out}"));
    let cidr = inet.split_whitespace().next().expect("address");
    assert!(
        cidr.ends_with("/32"),
        "container address is not a /32: {cidr}"
    );
    cidr.trim_end_matches("/32").parse().expect("ipv4")
}

fn in_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) & 0xffff_ff00 == u32::from(Ipv4Addr::new(10, 241, 7, 0))
}

fn handles(etcd: &Etcd) -> Vec<String> {
    etcd.keys(&Keys::default_prefix().handles())
}

#[test]
fn cni_podman_run_gets_its_address_with_and_without_ip() {
    if !is_root() {
        eprintln!("skipping cni_podman_run_gets_its_address_with_and_without_ip: needs root");
        return;
    }
    // Forwarding on while the test runs (the host pings the container through its
    // proxy-ARP veth; brindled turns it on), as found afterwards.
    let _forwarding = RootIpForward::hold();
    let _guard = UnreachableRoute::add(POOL);
    let etcd = Etcd::start();
    let out = brindle(&etcd.endpoint, "n1")
        .args(["pool", "add", "pm", "--cidr", POOL, "--block-size", "28"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = PluginDir::new();
    let podman = Podman::new(plugins.path());
    let direct = Brindle {
        etcd: etcd.endpoint.clone(),
        node: "n1".into(),
        api_socket: "none".into(),
        pool: Some("pm".into()),
    };
    // podman 4.3's libcni speaks up to 1.0.0.
    podman.add_network("brdirect", &direct.conflist("1.0.0", "brdirect"));

    // Without --ip: a dynamic address from the pool, as a /32 with brindle's routes.
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "brdirect",
        IMAGE,
        "sh",
        "-c",
        "ip -4 addr show eth0; ip route",
    ]);
    let ip = eth0_address(&out);
    assert!(in_pool(ip), "{ip} not in {POOL}");
    assert!(out.contains("default via 169.254.1.1 dev eth0"), "{out}");
    // --rm ran CNI DEL: the address is free again.
    assert!(handles(&etcd).is_empty(), "{:?}", handles(&etcd));

    // With --ip: exactly that address.
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "brdirect",
        "--ip",
        "10.241.7.50",
        IMAGE,
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert_eq!(eth0_address(&out), Ipv4Addr::new(10, 241, 7, 50));
    assert!(handles(&etcd).is_empty());

    // A long-running container is reachable from the host at its fixed address.
    let id = podman
        .ok(&[
            "run",
            "-d",
            "--network",
            "brdirect",
            "--ip",
            "10.241.7.51",
            IMAGE,
            "sleep",
            "300",
        ])
        .trim()
        .to_string();
    let ping = std::process::Command::new("busybox")
        .args(["ping", "-c1", "-W2", "10.241.7.51"])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "host cannot reach the podman container"
    );
    // brindle records it as a CNI endpoint of this node.
    let eps = etcd.keys(&Keys::default_prefix().node_endpoints("n1"));
    assert_eq!(eps.len(), 1, "{eps:?}");
    assert!(eps[0].ends_with(&format!("{id}+eth0")), "{eps:?}");
    // The same --ip for a second container is refused, and leaves nothing behind.
    let clash = podman.run(&[
        "run",
        "--rm",
        "--network",
        "brdirect",
        "--ip",
        "10.241.7.51",
        IMAGE,
        "true",
    ]);
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(err.contains("10.241.7.51"), "{err}");
    podman.ok(&["rm", "-f", "-t", "0", &id]);
    assert!(handles(&etcd).is_empty(), "{:?}", handles(&etcd));

    // Through brindled (fast path): the plugin's own etcd endpoint is unreachable, so
    // only brindled can serve these.
    let d = Brindled::start(&etcd.endpoint, "n1");
    let fast = Brindle {
        etcd: format!("http://127.0.0.1:{}", brindle_tests::ports::free_port()),
        api_socket: d.api_socket.display().to_string(),
        ..direct
    };
    podman.add_network("brfast", &fast.conflist("1.0.0", "brfast"));
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "brfast",
        IMAGE,
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert!(in_pool(eth0_address(&out)));
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "brfast",
        "--ip",
        "10.241.7.60",
        IMAGE,
        "ip",
        "-4",
        "addr",
        "show",
        "eth0",
    ]);
    assert_eq!(eth0_address(&out), Ipv4Addr::new(10, 241, 7, 60));
    assert!(
        d.log().contains("10.241.7.60"),
        "brindled did not serve the ADD"
    );
    assert!(handles(&etcd).is_empty(), "{:?}", handles(&etcd));
}

/// podman (CNI) containers on a real Docker host: the Docker suites' namespace-host,
/// booted as real hosts are (forwarding off when dockerd started, so FORWARD's policy is
/// DROP), with etcd, brindled and dockerd inside and podman entered into it with
/// nsenter, so the CNI plugin talks to that host's brindled. Containers of one conflist
/// reach each other through brindle's own accept path. A Docker network on the same
/// pool is another brindle network (`docker:...` against `cni:NAME`, docs/firewall.md),
/// so it and the podman containers cannot reach each other; the host reaches both.
#[test]
fn cni_podman_containers_on_a_docker_host_reach_each_other_not_docker_networks() {
    let Some(guard) =
        shared_host("cni_podman_containers_on_a_docker_host_reach_each_other_not_docker_networks")
    else {
        return;
    };
    let host = guard.as_ref().expect("shared host");
    assert_eq!(
        host.forward_policy(),
        "DROP",
        "podman/CNI containers must be proven on a real Docker host's firewall"
    );
    let mut t = Scope::new(host, "cnipm");
    let cidr = "10.241.9.0/24";
    t.guard(cidr);
    let net = t.network("mixed", &["--subnet", cidr]);
    let pool = "docker-10.241.9.0-24";
    let docker_c = t.run("dock", &["--net", &net, "--ip", "10.241.9.10"]);

    let plugins = PluginDir::new();
    let netns = std::path::PathBuf::from(format!("/run/netns/{}", host.ns.name));
    let podman = Podman::new_in(plugins.path(), Some(&netns));
    let conf = Brindle {
        // etcd and brindled of the namespace-host.
        etcd: "http://127.0.0.1:2379".into(),
        node: host.cfg.node.clone(),
        api_socket: host.dir().join("api.sock").display().to_string(),
        pool: Some(pool.into()),
    };
    podman.add_network("mixed", &conf.conflist("1.0.0", "mixed"));
    let run_d = |ip: &str| {
        podman
            .ok(&[
                "run",
                "-d",
                "--network",
                "mixed",
                "--ip",
                ip,
                IMAGE,
                "sleep",
                "300",
            ])
            .trim()
            .to_string()
    };
    let p1 = run_d("10.241.9.21");
    let p2 = run_d("10.241.9.22");
    // One ping from a podman container (three tries, as `Scope::pings`).
    let podman_pings = |id: &str, ip: &str| {
        (0..3).any(|_| {
            podman
                .run(&["exec", id, "ping", "-c1", "-W2", ip])
                .status
                .success()
        })
    };

    // Same conflist: reachable both ways, although FORWARD drops by default.
    assert!(podman_pings(&p1, "10.241.9.22"), "podman -> podman");
    assert!(podman_pings(&p2, "10.241.9.21"), "podman -> podman, back");
    // A new container reaches its network as soon as it runs.
    let out = podman.run(&[
        "run",
        "--rm",
        "--network",
        "mixed",
        "--ip",
        "10.241.9.20",
        IMAGE,
        "ping",
        "-c1",
        "-W2",
        "10.241.9.21",
    ]);
    assert!(
        out.status.success(),
        "a fresh podman container cannot reach its network: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The Docker network is another network: denied both ways.
    assert!(t.pings(&docker_c, HOST_IP), "the Docker container is up");
    assert!(
        !podman_pings(&p1, "10.241.9.10"),
        "podman -> Docker network must be dropped"
    );
    assert!(
        !t.pings(&docker_c, "10.241.9.21"),
        "Docker network -> podman must be dropped"
    );
    // The host, outside every pool, reaches both kinds.
    assert!(host.host_pings("10.241.9.21") && host.host_pings("10.241.9.10"));

    // Both kinds are brindle endpoints of this node.
    let eps = host.brindle_json(&["endpoints"]);
    let ips: Vec<&str> = eps
        .as_array()
        .expect("endpoint list")
        .iter()
        .filter_map(|e| e["ip"].as_str())
        .collect();
    assert!(
        ips.contains(&"10.241.9.10") && ips.contains(&"10.241.9.21"),
        "{eps}"
    );
    podman.ok(&["rm", "-f", "-t", "0", &p1, &p2]);
    drop(podman);
    assert_eq!(
        host.brindle_json(&["ipam", "show", "--ip", "10.241.9.21"])["allocated"],
        false
    );
}
