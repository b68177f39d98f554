//! Root tests of the routed dataplane against the real kernel.
//!
//! Each test runs on its own thread that first moves into a fresh network namespace (the
//! test's "host"), so nothing touches the machine's root namespace; containers are
//! `ip netns add brdp-<pid>-<n>` namespaces removed by a Drop guard even on failure.
//! Traffic is only sent between these namespaces. Assertions read kernel state with
//! `ip -j` (spawned from the test thread, so it runs in the test's host namespace) and
//! `ip netns exec`. Without root every test prints a note and passes.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use brindle_dataplane::{
    Dataplane, DataplaneError, EndpointSpec, LinuxDataplane, Reaper, RouteTarget, GATEWAY_IP,
    HOST_MAC, ROUTE_PROTOCOL,
};
use ipnetwork::Ipv4Network;
use nix::sched::{setns, unshare, CloneFlags};
use serde_json::Value;

// ---------------------------------------------------------------- harness

/// Root and iproute2 are needed; otherwise print why and skip.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping {test}: needs root (network namespaces)");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipping {test}: needs iproute2's `ip`");
        return false;
    }
    true
}

/// Runs `f` on a new thread inside a fresh network namespace, on a current-thread
/// runtime there; re-raises its panic.
fn in_host_ns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let res = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(f());
    })
    .join();
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A named netns (`/run/netns/brdp-<pid>-<n>`), deleted on drop.
struct TestNetns {
    name: String,
}

impl TestNetns {
    fn new() -> Self {
        let name = format!(
            "brdp-{}-{}",
            std::process::id(),
            NS_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        run_ok("ip", &["netns", "add", &name]);
        Self { name }
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// `ip netns exec NAME args...`
    fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "in {}: {args:?}: {}",
            self.name,
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j ARGS` inside this netns, parsed.
    fn ip_json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["ip", "-j"];
        full.extend_from_slice(args);
        parse_json(&self.exec_ok(&full))
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd}: {e}"))
}

fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", stderr(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn parse_json(s: &str) -> Vec<Value> {
    if s.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Vec<Value>>(s).unwrap_or_else(|e| panic!("ip json {s:?}: {e}"))
}

/// `ip -j ARGS` in the calling thread's (the test host's) namespace.
fn host_ip_json(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    parse_json(&run_ok("ip", &full))
}

fn host_link_exists(name: &str) -> bool {
    run("ip", &["link", "show", "dev", name]).status.success()
}

/// Our routes in the host namespace, as `ip -j route show proto 98`.
fn host_routes_ours() -> Vec<Value> {
    host_ip_json(&["route", "show", "proto", &ROUTE_PROTOCOL.to_string()])
}

fn read_sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
        .trim()
        .to_string()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn has_flag(link: &Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == flag))
}

fn connect() -> LinuxDataplane {
    LinuxDataplane::connect().expect("connect dataplane in test host netns")
}

/// Makes the test host look like a real one for routing: an address (ping source), and
/// a default route, without which 169.254.1.1 is unroutable and proxy ARP stays silent.
/// The default goes to a veth pair that ends in this same netns, so nothing can leave.
fn give_host_an_uplink() {
    run_ok("ip", &["link", "set", "lo", "up"]);
    add_veth_pair("uplink0", "uplink1");
    run_ok("ip", &["addr", "add", "192.0.2.1/24", "dev", "uplink0"]);
    run_ok("ip", &["route", "add", "default", "dev", "uplink0"]);
}

/// A veth pair with both ends up in the test host netns (this kernel may lack `dummy`).
fn add_veth_pair(a: &str, b: &str) {
    run_ok("ip", &["link", "add", a, "type", "veth", "peer", "name", b]);
    run_ok("ip", &["link", "set", a, "up"]);
    run_ok("ip", &["link", "set", b, "up"]);
}

/// Accepts one TCP connection on `ip:port` inside `ns` and echoes what it reads.
/// Returns once the listener is bound.
fn spawn_echo_server(ns: &Path, addr: SocketAddr) -> std::thread::JoinHandle<Result<(), String>> {
    let ns_file = std::fs::File::open(ns).expect("open container netns");
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || -> Result<(), String> {
        setns(&ns_file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        let listener = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"));
        let ok = listener.is_ok();
        let _ = tx.send(ok);
        let listener = listener?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("no connection within 10s".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        conn.set_nonblocking(false).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut buf = [0u8; 64];
        let n = conn.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        conn.write_all(&buf[..n])
            .map_err(|e| format!("write: {e}"))?;
        Ok(())
    });
    assert_eq!(rx.recv().ok(), Some(true), "echo server failed to bind");
    handle
}

fn cni_spec(ns: &TestNetns, id: &str, ip: [u8; 4], mtu: Option<u32>) -> EndpointSpec {
    EndpointSpec::for_cni(id, "eth0", ns.path(), Ipv4Addr::from(ip), mtu)
}

// ---------------------------------------------------------------- tests

#[test]
fn cni_create_wires_container_and_host_and_carries_traffic() {
    if !can_run("cni_create_wires_container_and_host_and_carries_traffic") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-create", [10, 99, 0, 5], Some(1400));
        let mac = dp.create_veth_into_netns(&spec).await.expect("create");

        // Container: address /32, MTU, MAC, up; lo up.
        let links = ctr.ip_json(&["addr", "show", "dev", "eth0"]);
        let eth0 = &links[0];
        assert_eq!(str_of(eth0, "address"), mac.to_string());
        assert_eq!(eth0["mtu"], 1400);
        assert!(has_flag(eth0, "UP"), "{eth0}");
        let addrs: Vec<(String, u64)> = eth0["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["family"] == "inet")
            .map(|a| {
                (
                    str_of(a, "local").to_string(),
                    a["prefixlen"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(addrs, vec![("10.99.0.5".to_string(), 32)]);
        let lo = &ctr.ip_json(&["link", "show", "dev", "lo"])[0];
        assert!(has_flag(lo, "UP"), "{lo}");

        // Container routes: exactly Calico's pair.
        let routes = ctr.ip_json(&["route", "show"]);
        assert!(
            routes.iter().any(|r| str_of(r, "dst") == "169.254.1.1"
                && str_of(r, "dev") == "eth0"
                && str_of(r, "scope") == "link"),
            "{routes:?}"
        );
        assert!(
            routes.iter().any(|r| str_of(r, "dst") == "default"
                && str_of(r, "gateway") == GATEWAY_IP.to_string()
                && str_of(r, "dev") == "eth0"),
            "{routes:?}"
        );

        // Host: fixed MAC, up, MTU, proxy_arp, /32 route with our protocol.
        let host = &host_ip_json(&["link", "show", "dev", &spec.host_ifname])[0];
        assert_eq!(str_of(host, "address"), HOST_MAC.to_string());
        assert_eq!(host["mtu"], 1400);
        assert!(has_flag(host, "UP"), "{host}");
        let conf = format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", spec.host_ifname);
        assert_eq!(read_sysctl(&conf), "1");
        let neigh = format!("/proc/sys/net/ipv4/neigh/{}/proxy_delay", spec.host_ifname);
        assert_eq!(read_sysctl(&neigh), "0");
        let ours = host_routes_ours();
        assert!(
            ours.iter().any(|r| str_of(r, "dst") == "10.99.0.5"
                && str_of(r, "dev") == spec.host_ifname
                && str_of(r, "scope") == "link"),
            "{ours:?}"
        );
        dp.check_endpoint(&spec).await.expect("check after create");

        // Traffic between the test's host netns and the container only.
        give_host_an_uplink();
        dp.enable_ip_forward().await.expect("ip_forward");
        let echo = spawn_echo_server(&ctr.path(), "10.99.0.5:7777".parse().unwrap());
        let mut s =
            TcpStream::connect_timeout(&"10.99.0.5:7777".parse().unwrap(), Duration::from_secs(5))
                .expect("tcp connect host -> container");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"brindle").unwrap();
        let mut back = [0u8; 7];
        s.read_exact(&mut back).expect("echo reply");
        assert_eq!(&back, b"brindle");
        echo.join().unwrap().expect("echo server");
        if Command::new("busybox").arg("true").output().is_ok() {
            let out = run("busybox", &["ping", "-c", "1", "-W", "2", "10.99.0.5"]);
            assert!(
                out.status.success(),
                "ping: {}{}",
                String::from_utf8_lossy(&out.stdout),
                stderr(&out)
            );
        } else {
            eprintln!("note: busybox not installed, ICMP ping skipped (TCP echo passed)");
        }
    });
}

#[test]
fn cnm_create_on_host_then_delete() {
    if !can_run("cnm_create_on_host_then_delete") {
        return;
    }
    in_host_ns(|| async {
        let dp = connect();
        let spec = EndpointSpec::for_docker(
            "e1d2c3b4a5968778695a4b3c",
            Ipv4Addr::new(10, 99, 0, 7),
            None,
        );
        let peer_mac = dp.create_veth_on_host(&spec).await.expect("create on host");

        let host = &host_ip_json(&["link", "show", "dev", &spec.host_ifname])[0];
        assert_eq!(str_of(host, "address"), HOST_MAC.to_string());
        assert!(has_flag(host, "UP"), "{host}");
        let peer = &host_ip_json(&["link", "show", "dev", &spec.container_ifname])[0];
        assert_eq!(str_of(peer, "address"), peer_mac.to_string());
        assert_ne!(peer_mac, HOST_MAC);
        let conf = format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", spec.host_ifname);
        assert_eq!(read_sysctl(&conf), "1");
        let ours = host_routes_ours();
        assert!(
            ours.iter()
                .any(|r| str_of(r, "dst") == "10.99.0.7" && str_of(r, "dev") == spec.host_ifname),
            "{ours:?}"
        );
        let listed = dp.list_routes_with_our_protocol().await.unwrap();
        assert!(
            listed
                .iter()
                .any(|r| r.dst == "10.99.0.7/32".parse::<Ipv4Network>().unwrap()
                    && r.target
                        == RouteTarget::Interface {
                            ifindex: host["ifindex"].as_u64().unwrap() as u32,
                            ifname: Some(spec.host_ifname.clone()),
                        }),
            "{listed:?}"
        );

        assert!(dp.delete_endpoint(&spec.host_ifname).await.unwrap());
        assert!(!host_link_exists(&spec.host_ifname));
        assert!(
            !host_link_exists(&spec.container_ifname),
            "peer goes with the host end"
        );
        assert!(host_routes_ours().is_empty());
        assert!(
            !dp.delete_endpoint(&spec.host_ifname).await.unwrap(),
            "second delete is a no-op"
        );
    });
}

#[test]
fn delete_removes_everything_and_is_idempotent() {
    if !can_run("delete_removes_everything_and_is_idempotent") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-del", [10, 99, 0, 11], None);
        dp.create_veth_into_netns(&spec).await.expect("create");
        assert!(host_link_exists(&spec.host_ifname));

        assert!(dp.delete_endpoint(&spec.host_ifname).await.expect("delete"));
        assert!(!host_link_exists(&spec.host_ifname));
        assert!(host_routes_ours().is_empty(), "host /32 gone");
        assert!(
            !ctr.exec(&["ip", "link", "show", "dev", "eth0"])
                .status
                .success(),
            "peer gone"
        );
        assert!(!ctr
            .ip_json(&["route", "show"])
            .iter()
            .any(|r| str_of(r, "dev") == "eth0"));

        assert!(!dp
            .delete_endpoint(&spec.host_ifname)
            .await
            .expect("second delete"));
        // Deleting something never made is fine too; deleting a non-veth is refused.
        assert!(!dp.delete_endpoint("brlneverexist").await.unwrap());
        run_ok("ip", &["link", "add", "notaveth0", "type", "bridge"]);
        let err = dp.delete_endpoint("notaveth0").await.unwrap_err();
        assert!(matches!(err, DataplaneError::Invalid { .. }), "{err}");
        assert!(host_link_exists("notaveth0"));
    });
}

/// The DEL → ADD → late reaper race of `podman restart`, on real veths: a reaper that
/// runs after the next ADD of the same attachment deletes only the link it was given.
#[test]
fn late_reaper_spares_a_newer_veth_with_the_same_name() {
    if !can_run("late_reaper_spares_a_newer_veth_with_the_same_name") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = Arc::new(connect());
        let spec = cni_spec(&ctr, "ctr-late", [10, 99, 0, 13], None);
        dp.create_veth_into_netns(&spec).await.expect("create");
        let old = dp
            .host_veth(&spec.host_ifname)
            .await
            .expect("look up")
            .expect("veth");
        // Not a veth: never returned, so never handed to a reaper.
        run_ok("ip", &["link", "add", "notaveth1", "type", "bridge"]);
        assert_eq!(dp.host_veth("notaveth1").await.expect("look up"), None);

        // DEL takes it off the network and decides its deletion; the ADD that follows
        // replaces it before the deletion runs.
        dp.del_host_route(spec.ip).await.expect("unroute");
        assert!(dp
            .delete_endpoint(&spec.host_ifname)
            .await
            .expect("replace"));
        dp.create_veth_into_netns(&spec)
            .await
            .expect("create again");
        let new = dp.host_veth(&spec.host_ifname).await.unwrap().unwrap();
        assert_ne!(new.index, old.index);

        // Only now does the DEL's reaper run.
        let reaper = Reaper::tasks(dp.clone());
        reaper.schedule(old.clone(), Some(spec.ip));
        reaper.settle(&spec.host_ifname).await;
        assert!(host_link_exists(&spec.host_ifname), "the new veth survives");
        assert_eq!(host_routes_ours().len(), 1, "and its /32");
        assert!(!dp.delete_host_link(&old).await.expect("old again"));
        assert!(dp.delete_host_link(&new).await.expect("delete new"));
        assert!(!host_link_exists(&spec.host_ifname));
    });
}

#[test]
fn delete_after_netns_is_gone_succeeds() {
    if !can_run("delete_after_netns_is_gone_succeeds") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-gone", [10, 99, 0, 12], None);
        dp.create_veth_into_netns(&spec).await.expect("create");
        drop(ctr); // ip netns del: the container (and so the veth pair) goes away

        dp.delete_endpoint(&spec.host_ifname)
            .await
            .expect("delete after netns gone");
        // Namespace teardown is asynchronous in the kernel; give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while host_link_exists(&spec.host_ifname) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!host_link_exists(&spec.host_ifname));
        assert!(host_routes_ours().is_empty());
        assert!(!dp
            .delete_endpoint(&spec.host_ifname)
            .await
            .expect("delete again"));
    });
}

#[test]
fn existing_container_ifname_fails_and_leaves_no_host_veth() {
    if !can_run("existing_container_ifname_fails_and_leaves_no_host_veth") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        ctr.exec_ok(&["ip", "link", "add", "eth0", "type", "bridge"]);
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-clash", [10, 99, 0, 13], None);

        let err = dp.create_veth_into_netns(&spec).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("interface eth0 in /run/netns/brdp-"), "{msg}");
        assert!(msg.contains(&spec.host_ifname), "{msg}");
        assert!(!host_link_exists(&spec.host_ifname));
        assert!(host_routes_ours().is_empty());
        let eth0 = &ctr.ip_json(&["-d", "link", "show", "dev", "eth0"])[0];
        assert_eq!(
            eth0["linkinfo"]["info_kind"], "bridge",
            "the container's own eth0 untouched"
        );
    });
}

#[test]
fn failure_after_veth_rolls_back_everything() {
    if !can_run("failure_after_veth_rolls_back_everything") {
        return;
    }
    in_host_ns(|| async {
        // Another device already owns the /32: the last step (host route) fails after the
        // veth and the container side were made, so all of that must be undone.
        add_veth_pair("other0", "other1");
        run_ok("ip", &["route", "add", "10.99.0.14/32", "dev", "other0"]);
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-rollback", [10, 99, 0, 14], None);

        let err = dp.create_veth_into_netns(&spec).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(
            err.to_string().contains("route 10.99.0.14/32 dev other0"),
            "{err}"
        );
        assert!(
            !host_link_exists(&spec.host_ifname),
            "host veth rolled back"
        );
        assert!(
            !ctr.exec(&["ip", "link", "show", "dev", "eth0"])
                .status
                .success(),
            "peer rolled back"
        );
        let routes = host_ip_json(&["route", "show", "10.99.0.14/32"]);
        assert_eq!(routes.len(), 1);
        assert_eq!(
            str_of(&routes[0], "dev"),
            "other0",
            "the other route is untouched"
        );

        // The same for Docker style.
        let d = EndpointSpec::for_docker("f00dfeedbeef0001", Ipv4Addr::new(10, 99, 0, 14), None);
        assert!(dp.create_veth_on_host(&d).await.is_err());
        assert!(!host_link_exists(&d.host_ifname));
        assert!(!host_link_exists(&d.container_ifname));
    });
}

/// CNI's ADD builds the veth while its allocation commits: unrouted first (the
/// container is set up, the host has no /32 for it), routed once the address is ours.
/// A route another device holds fails the routing and takes the veth with it.
#[test]
fn unrouted_veth_is_reachable_only_once_routed() {
    if !can_run("unrouted_veth_is_reachable_only_once_routed") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-unrouted", [10, 99, 0, 21], None);
        dp.create_unrouted_veth_into_netns(&spec)
            .await
            .expect("create unrouted");
        assert!(host_link_exists(&spec.host_ifname));
        let inside = ctr.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        assert!(inside[0].to_string().contains("10.99.0.21"), "{inside:?}");
        assert!(
            host_ip_json(&["route", "show", "10.99.0.21/32"]).is_empty(),
            "no host route before route_endpoint"
        );
        dp.route_endpoint(&spec).await.expect("route");
        let routes = host_ip_json(&["route", "show", "10.99.0.21/32"]);
        assert_eq!(str_of(&routes[0], "dev"), spec.host_ifname, "{routes:?}");
        dp.check_endpoint(&spec).await.expect("check after routing");
        // Routing again is accepted: the route points at the endpoint's own veth.
        dp.route_endpoint(&spec).await.expect("route again");

        // Docker style: both ends on the host, routed once the allocation is stored.
        let d = EndpointSpec::for_docker("f00dfeedbeef0021", Ipv4Addr::new(10, 99, 0, 23), None);
        dp.create_unrouted_veth_on_host(&d)
            .await
            .expect("create unrouted on host");
        assert!(host_link_exists(&d.host_ifname) && host_link_exists(&d.container_ifname));
        assert!(host_ip_json(&["route", "show", "10.99.0.23/32"]).is_empty());
        dp.route_endpoint(&d).await.expect("route docker endpoint");
        let routes = host_ip_json(&["route", "show", "10.99.0.23/32"]);
        assert_eq!(str_of(&routes[0], "dev"), d.host_ifname, "{routes:?}");
        assert!(dp.delete_endpoint(&d.host_ifname).await.expect("delete"));

        add_veth_pair("other0", "other1");
        run_ok("ip", &["route", "add", "10.99.0.22/32", "dev", "other0"]);
        let ctr2 = TestNetns::new();
        let taken = cni_spec(&ctr2, "ctr-taken", [10, 99, 0, 22], None);
        dp.create_unrouted_veth_into_netns(&taken)
            .await
            .expect("create unrouted beside another route");
        let err = dp.route_endpoint(&taken).await.unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
        assert!(err.to_string().contains("dev other0"), "{err}");
        assert!(!host_link_exists(&taken.host_ifname), "veth rolled back");
        let routes = host_ip_json(&["route", "show", "10.99.0.22/32"]);
        assert_eq!(str_of(&routes[0], "dev"), "other0");
    });
}

#[test]
fn check_detects_missing_pieces() {
    if !can_run("check_detects_missing_pieces") {
        return;
    }
    in_host_ns(|| async {
        let ctr = TestNetns::new();
        let dp = connect();
        let spec = cni_spec(&ctr, "ctr-check", [10, 99, 0, 15], None);
        dp.create_veth_into_netns(&spec).await.expect("create");
        dp.check_endpoint(&spec)
            .await
            .expect("fresh endpoint checks out");

        ctr.exec_ok(&["ip", "route", "del", "default"]);
        let err = dp.check_endpoint(&spec).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, DataplaneError::Check { .. }), "{msg}");
        assert!(
            msg.contains("container route default via 169.254.1.1 dev eth0 missing"),
            "{msg}"
        );
        assert!(!msg.contains("host route"), "{msg}");

        run_ok("ip", &["route", "del", "10.99.0.15/32"]);
        let msg = dp.check_endpoint(&spec).await.unwrap_err().to_string();
        assert!(
            msg.contains(&format!(
                "host route 10.99.0.15/32 dev {} missing",
                spec.host_ifname
            )),
            "{msg}"
        );
        assert!(msg.contains("default via"), "both problems listed: {msg}");

        let wrong_ip = EndpointSpec {
            ip: Ipv4Addr::new(10, 99, 0, 16),
            ..spec.clone()
        };
        let msg = dp.check_endpoint(&wrong_ip).await.unwrap_err().to_string();
        assert!(msg.contains("has no address 10.99.0.16/32"), "{msg}");

        dp.delete_endpoint(&spec.host_ifname).await.unwrap();
        let msg = dp.check_endpoint(&spec).await.unwrap_err().to_string();
        assert!(
            msg.contains("host interface") && msg.contains("missing"),
            "{msg}"
        );
        assert!(
            msg.contains("interface eth0 missing in /run/netns/"),
            "{msg}"
        );
    });
}

#[test]
fn agent_route_programming() {
    if !can_run("agent_route_programming") {
        return;
    }
    in_host_ns(|| async {
        let dp = connect();
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        dp.enable_ip_forward().await.expect("ip_forward");
        assert_eq!(read_sysctl("/proc/sys/net/ipv4/ip_forward"), "1");

        let block: Ipv4Network = "10.98.0.0/26".parse().unwrap();
        dp.add_blackhole_route(block).await.expect("blackhole");
        dp.add_blackhole_route(block)
            .await
            .expect("blackhole again is a no-op");
        let bh = host_ip_json(&[
            "route",
            "show",
            "type",
            "blackhole",
            "proto",
            &ROUTE_PROTOCOL.to_string(),
        ]);
        assert_eq!(bh.len(), 1, "{bh:?}");
        assert_eq!(str_of(&bh[0], "dst"), "10.98.0.0/26");

        // Someone else's route for the same prefix is not taken over.
        run_ok("ip", &["route", "add", "blackhole", "10.98.1.0/26"]);
        let err = dp
            .add_blackhole_route("10.98.1.0/26".parse().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not owned by brindle"), "{err}");

        add_veth_pair("dummya", "dummya1");
        add_veth_pair("dummyb", "dummyb1");
        let ip = Ipv4Addr::new(10, 98, 0, 70);
        dp.replace_host_route(ip, "dummya")
            .await
            .expect("host route");
        dp.replace_host_route(ip, "dummyb")
            .await
            .expect("host route moved");
        let routes = host_ip_json(&["route", "show", "10.98.0.70/32"]);
        assert_eq!(routes.len(), 1, "{routes:?}");
        assert_eq!(str_of(&routes[0], "dev"), "dummyb");
        assert_eq!(str_of(&routes[0], "scope"), "link");
        let missing = dp.replace_host_route(ip, "nosuchdev0").await.unwrap_err();
        assert!(
            matches!(missing, DataplaneError::NotFound { .. }),
            "{missing}"
        );

        let mut listed: Vec<String> = dp
            .list_routes_with_our_protocol()
            .await
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            vec!["10.98.0.70/32 dev dummyb", "blackhole 10.98.0.0/26"]
        );

        assert!(dp.del_host_route(ip).await.unwrap());
        assert!(!dp.del_host_route(ip).await.unwrap());
        assert!(dp.del_blackhole_route(block).await.unwrap());
        assert!(!dp.del_blackhole_route(block).await.unwrap());
        // Not ours: never deleted.
        assert!(!dp
            .del_blackhole_route("10.98.1.0/26".parse().unwrap())
            .await
            .unwrap());
        assert_eq!(host_ip_json(&["route", "show", "10.98.1.0/26"]).len(), 1);
        assert!(host_routes_ours().is_empty());
    });
}

#[test]
fn host_namespace_is_fixed_at_connect() {
    if !can_run("host_namespace_is_fixed_at_connect") {
        return;
    }
    in_host_ns(|| async {
        // Connect in namespace A, then move this thread to a new namespace B: the
        // dataplane must keep changing A (netlink socket and sysctls alike).
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        let ns_a = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let dp = connect();
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare B");
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();

        dp.enable_ip_forward().await.expect("ip_forward");
        let spec = EndpointSpec::for_docker("aaaabbbbccccdddd", Ipv4Addr::new(10, 97, 0, 2), None);
        dp.create_veth_on_host(&spec).await.expect("create");

        assert_eq!(
            read_sysctl("/proc/sys/net/ipv4/ip_forward"),
            "0",
            "B untouched"
        );
        assert!(!host_link_exists(&spec.host_ifname), "veth not in B");
        assert_eq!(
            dp.list_host_veths().await.expect("list"),
            vec![spec.host_ifname.clone()],
            "links listed in A"
        );
        let host_ifname = spec.host_ifname.clone();
        let (fwd, proxy_arp, link_in_a) = std::thread::spawn(move || {
            setns(&ns_a, CloneFlags::CLONE_NEWNET).unwrap();
            (
                read_sysctl("/proc/sys/net/ipv4/ip_forward"),
                read_sysctl(&format!("/proc/sys/net/ipv4/conf/{host_ifname}/proxy_arp")),
                host_link_exists(&host_ifname),
            )
        })
        .join()
        .unwrap();
        assert_eq!(fwd, "1", "A forwarding");
        assert_eq!(proxy_arp, "1", "proxy_arp written in A");
        assert!(link_in_a, "veth made in A");
        assert!(dp.delete_endpoint(&spec.host_ifname).await.unwrap());
    });
}

#[test]
fn host_veths_are_listed_across_a_dump_of_many_chunks() {
    if !can_run("host_veths_are_listed_across_a_dump_of_many_chunks") {
        return;
    }
    in_host_ns(|| async {
        // 400 pairs: 800 links, a dump the kernel sends in dozens of chunks.
        let pairs = 400;
        let mut batch = String::new();
        for i in 0..pairs {
            batch.push_str(&format!(
                "link add brl{i:04} type veth peer name xpeer{i:04}\n"
            ));
        }
        // Our prefix, but not a veth: never listed (so never reaped).
        batch.push_str("link add brlbridge0 type bridge\n");
        let mut child = Command::new("ip")
            .args(["-batch", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("ip -batch");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "ip -batch failed");

        let dp = connect();
        let mut listed = dp.list_host_veths().await.expect("list host veths");
        listed.sort();
        let expected: Vec<String> = (0..pairs).map(|i| format!("brl{i:04}")).collect();
        assert_eq!(listed, expected);
    });
}
