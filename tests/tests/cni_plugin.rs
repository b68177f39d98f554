//! brindle-cni invoked directly, as libcni would, against a real etcd, wiring network
//! namespaces the tests create: every verb, both paths (brindled's socket and etcd
//! directly), the error paths, and brindle-ipam under the stock ptp plugin.
//!
//! Root only (each test says so and returns otherwise). Every pool lies under an
//! `unreachable` route; traffic goes only to the namespaces made here.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use brindle_ipam::Keys;
use brindle_tests::bins::brindle;
use brindle_tests::cni::{
    addresses, eventually, host_ifname, host_link_exists, ip_json, Brindle, Brindled, Call,
    PluginDir,
};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, Netns, RootIpForward, UnreachableRoute};
use serde_json::{json, Value};

fn root_or_skip(test: &str) -> bool {
    if !is_root() {
        eprintln!("skipping {test}: needs root (network namespaces, veths, routes)");
        return false;
    }
    true
}

/// A test's world: etcd, a pool under an unreachable route, the plugin dir.
struct World {
    etcd: Etcd,
    _guard: UnreachableRoute,
    plugins: PluginDir,
    cidr: String,
}

impl World {
    fn new(cidr: &str, block_size: &str) -> Self {
        let guard = UnreachableRoute::add(cidr);
        let etcd = Etcd::start();
        let out = brindle(&etcd.endpoint, "n1")
            .args([
                "pool",
                "add",
                "p",
                "--cidr",
                cidr,
                "--block-size",
                block_size,
            ])
            .output()
            .expect("brindle pool add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        World {
            etcd,
            _guard: guard,
            plugins: PluginDir::new(),
            cidr: cidr.to_string(),
        }
    }

    fn direct(&self) -> Brindle {
        Brindle {
            etcd: self.etcd.endpoint.clone(),
            node: "n1".into(),
            api_socket: "none".into(),
            pool: Some("p".into()),
        }
    }

    fn brindle(&self) -> std::path::PathBuf {
        self.plugins.plugin("brindle")
    }

    fn handles(&self) -> Vec<String> {
        let prefix = Keys::default_prefix().handles();
        self.etcd
            .keys(&prefix)
            .into_iter()
            .map(|k| k.trim_start_matches(&prefix).to_string())
            .collect()
    }

    fn endpoint_ids(&self) -> Vec<String> {
        let prefix = Keys::default_prefix().node_endpoints("n1");
        self.etcd
            .keys(&prefix)
            .into_iter()
            .map(|k| k.trim_start_matches(&prefix).to_string())
            .collect()
    }

    fn in_pool(&self, ip: Ipv4Addr) -> bool {
        in_cidr(&self.cidr, ip)
    }
}

/// Whether `ip` lies in `cidr` (`a.b.c.d/len`).
fn in_cidr(cidr: &str, ip: Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').expect("cidr");
    let net: Ipv4Addr = net.parse().expect("net");
    let len: u32 = len.parse().expect("len");
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The container address of an ADD result (`a.b.c.d/len` → address).
fn result_ip(result: &Value) -> Ipv4Addr {
    let a = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    a.split('/').next().unwrap().parse().expect("ipv4")
}

fn routes(ns: &str) -> Vec<Value> {
    ip_json(Some(ns), &["-4", "route", "show"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn ping(from: Option<&Netns>, ip: Ipv4Addr) -> bool {
    let ip = ip.to_string();
    // busybox's ping: Debian's busybox-static is installed for the test images anyway.
    let args = ["busybox", "ping", "-c1", "-W2", &ip];
    match from {
        Some(ns) => ns.exec(&args).status.success(),
        None => std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false),
    }
}

/// The wiring of one main-plugin attachment, checked from outside.
fn assert_wired(ns: &Netns, cid: &str, ifname: &str, ip: Ipv4Addr) {
    assert_eq!(addresses(&ns.name, ifname), vec![format!("{ip}/32")]);
    let r = routes(&ns.name);
    assert!(
        r.iter()
            .any(|r| r["dst"] == "default" && r["gateway"] == "169.254.1.1" && r["dev"] == ifname),
        "no default via 169.254.1.1: {r:?}"
    );
    assert!(
        r.iter()
            .any(|r| r["dst"] == "169.254.1.1" && r["scope"] == "link" && r["dev"] == ifname),
        "no link route to 169.254.1.1: {r:?}"
    );
    let host = host_ifname(cid, ifname);
    let hr = ip_json(None, &["-4", "route", "show", &format!("{ip}/32")]);
    assert!(
        hr.as_array()
            .is_some_and(|a| a.iter().any(|r| r["dev"] == host.as_str())),
        "no host route {ip} dev {host}: {hr}"
    );
    let link = ip_json(None, &["link", "show", "dev", &host]);
    assert_eq!(link[0]["address"], "ee:ee:ee:ee:ee:ee", "{link}");
    let proxy = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp"))
        .expect("proxy_arp");
    assert_eq!(proxy.trim(), "1");
}

#[test]
fn cni_every_verb_direct_path() {
    if !root_or_skip("cni_every_verb_direct_path") {
        return;
    }
    // Forwarding on while the test runs (the host pings the container), as found afterwards.
    let _forwarding = RootIpForward::hold();
    let w = World::new("10.241.1.0/24", "28");
    let b = w.direct();
    let ns = Netns::new("cniverb");
    let conf = b.main_conf("1.1.0", "verbnet");
    let plugin = w.brindle();

    // VERSION
    let v = Call::new("VERSION", "", "", "")
        .run(&plugin, &json!({"cniVersion": "1.0.0"}))
        .ok();
    assert_eq!(v["cniVersion"], "1.0.0");
    for want in ["1.0.0", "1.1.0"] {
        assert!(v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!(want)));
    }

    // STATUS (1.1.0)
    Call::new("STATUS", "", "", "").run(&plugin, &conf).ok();

    // ADD, dynamic
    let add = Call::new("ADD", "ctr1", &ns.path(), "eth0");
    let result = add.run(&plugin, &conf).ok();
    assert_eq!(result["cniVersion"], "1.1.0");
    let ip = result_ip(&result);
    assert!(w.in_pool(ip), "{ip} outside {}", w.cidr);
    assert_eq!(result["ips"][0]["address"], format!("{ip}/32"));
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["interfaces"][0]["name"], host_ifname("ctr1", "eth0"));
    assert_eq!(result["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], ns.path());
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    assert_wired(&ns, "ctr1", "eth0", ip);
    assert!(ping(None, ip), "host cannot reach the container at {ip}");
    assert_eq!(w.handles(), vec!["ctr1+eth0".to_string()]);
    assert_eq!(w.endpoint_ids(), vec!["ctr1+eth0".to_string()]);

    // A repeated ADD: the interface exists (an error), and the address stays.
    let again = add.run(&plugin, &conf).err(103);
    assert!(
        again["msg"].as_str().unwrap().contains("already exists"),
        "{again}"
    );
    assert_wired(&ns, "ctr1", "eth0", ip);

    // CHECK with the ADD result as prevResult.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    Call::new("CHECK", "ctr1", &ns.path(), "eth0")
        .run(&plugin, &check_conf)
        .ok();
    // CHECK notices a prevResult address the attachment does not hold...
    let mut wrong = check_conf.clone();
    wrong["prevResult"]["ips"][0]["address"] = json!("10.241.1.250/32");
    Call::new("CHECK", "ctr1", &ns.path(), "eth0")
        .run(&plugin, &wrong)
        .err(104);
    // ...a missing host route...
    std::process::Command::new("ip")
        .args(["route", "del", &format!("{ip}/32")])
        .status()
        .expect("ip route del");
    let e = Call::new("CHECK", "ctr1", &ns.path(), "eth0")
        .run(&plugin, &check_conf)
        .err(104);
    assert!(e["msg"].as_str().unwrap().contains("host route"), "{e}");
    // ...and a missing container route.
    let host = host_ifname("ctr1", "eth0");
    std::process::Command::new("ip")
        .args([
            "route",
            "replace",
            &format!("{ip}/32"),
            "dev",
            &host,
            "proto",
            "98",
            "scope",
            "link",
        ])
        .status()
        .expect("ip route replace");
    Call::new("CHECK", "ctr1", &ns.path(), "eth0")
        .run(&plugin, &check_conf)
        .ok();
    ns.ok(&["ip", "route", "del", "default"]);
    let e = Call::new("CHECK", "ctr1", &ns.path(), "eth0")
        .run(&plugin, &check_conf)
        .err(104);
    assert!(e["msg"].as_str().unwrap().contains("default"), "{e}");

    // DEL, twice; then the veth goes (in the background) and nothing is left.
    let del = Call::new("DEL", "ctr1", &ns.path(), "eth0");
    del.run(&plugin, &check_conf).ok();
    assert!(w.handles().is_empty());
    assert!(w.endpoint_ids().is_empty());
    let hr = ip_json(None, &["-4", "route", "show", &format!("{ip}/32")]);
    assert!(hr.as_array().is_some_and(|a| a.is_empty()), "{hr}");
    del.run(&plugin, &check_conf).ok();
    assert!(
        eventually(Duration::from_secs(5), || !host_link_exists(&host)),
        "host veth {host} still there after DEL"
    );
    assert!(addresses(&ns.name, "eth0").is_empty());
    // DEL without prevResult and with an empty CNI_NETNS works too.
    Call::new("DEL", "ctr1", "", "eth0")
        .run(&plugin, &conf)
        .ok();

    // ADD again, then the netns disappears: DEL still succeeds and releases.
    let ns2 = Netns::new("cniverb");
    let r2 = Call::new("ADD", "ctr2", &ns2.path(), "net1")
        .run(&plugin, &conf)
        .ok();
    let ip2 = result_ip(&r2);
    assert_wired(&ns2, "ctr2", "net1", ip2);
    let path2 = ns2.path();
    drop(ns2);
    Call::new("DEL", "ctr2", &path2, "net1")
        .run(&plugin, &conf)
        .ok();
    assert!(w.handles().is_empty());
    assert!(eventually(Duration::from_secs(5), || !host_link_exists(
        &host_ifname("ctr2", "net1")
    )));

    // CHECK of an attachment that is gone fails.
    let mut gone = conf.clone();
    gone["prevResult"] = r2;
    Call::new("CHECK", "ctr2", &ns.path(), "net1")
        .run(&plugin, &gone)
        .err(104);

    // GC with nothing valid: nothing to release, success.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("GC", "", "", "").run(&plugin, &gc).ok();
}

#[test]
fn cni_static_addresses_all_channels_and_versions() {
    if !root_or_skip("cni_static_addresses_all_channels_and_versions") {
        return;
    }
    let w = World::new("10.241.6.0/24", "28");
    let b = w.direct();
    let plugin = w.brindle();
    // One brindle attachment per namespace: each owns the namespace's 169.254.1.1 route.
    let ns = Netns::new("cnistatic");
    let ns2 = Netns::new("cnistatic");
    let ns3 = Netns::new("cnistatic");
    let ns4 = Netns::new("cnistatic");

    // runtimeConfig.ips (capability ips), with a prefix; 1.0.0 result.
    let mut conf = b.main_conf("1.0.0", "staticnet");
    conf["runtimeConfig"] = json!({"ips": ["10.241.6.77/24"]});
    let r = Call::new("ADD", "s1", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .ok();
    assert_eq!(r["cniVersion"], "1.0.0");
    assert_eq!(r["ips"][0]["address"], "10.241.6.77/32");
    assert!(r["ips"][0].get("version").is_none());
    assert_wired(&ns, "s1", "eth0", "10.241.6.77".parse().unwrap());
    // The same address for another attachment: taken.
    let e = Call::new("ADD", "s9", &ns4.path(), "eth9")
        .run(&plugin, &conf)
        .err(101);
    assert!(e["msg"].as_str().unwrap().contains("10.241.6.77"), "{e}");
    assert!(!host_link_exists(&host_ifname("s9", "eth9")));

    // args.cni.ips; a 0.4.0 result carries ips[].version.
    let mut conf = b.main_conf("0.4.0", "staticnet");
    conf["args"] = json!({"cni": {"ips": ["10.241.6.78"]}});
    let r = Call::new("ADD", "s2", &ns2.path(), "eth1")
        .run(&plugin, &conf)
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.241.6.78/32");
    assert_eq!(r["ips"][0]["version"], "4");

    // CNI_ARGS IP= with IgnoreUnknown and Kubernetes keys.
    let conf = b.main_conf("1.1.0", "staticnet");
    let r = Call::new("ADD", "s3", &ns3.path(), "eth2")
        .args("IgnoreUnknown=1;IP=10.241.6.79;K8S_POD_NAME=x;FOO=bar")
        .run(&plugin, &conf)
        .ok();
    assert_eq!(r["ips"][0]["address"], "10.241.6.79/32");
    // Unknown keys without IgnoreUnknown: invalid environment.
    Call::new("ADD", "s4", &ns4.path(), "eth3")
        .args("IP=10.241.6.80;FOO=bar")
        .run(&plugin, &conf)
        .err(4);
    // Outside every pool.
    let e = Call::new("ADD", "s5", &ns4.path(), "eth4")
        .args("IP=192.0.2.7")
        .run(&plugin, &conf)
        .err(101);
    assert!(
        e["msg"].as_str().unwrap().contains("not inside any pool"),
        "{e}"
    );
    // Two different addresses at once.
    let mut two = conf.clone();
    two["runtimeConfig"] = json!({"ips": ["10.241.6.81"]});
    Call::new("ADD", "s6", &ns4.path(), "eth5")
        .args("IP=10.241.6.82")
        .run(&plugin, &two)
        .err(7);
    // IPv6 is refused as unsupported.
    let mut v6 = conf.clone();
    v6["runtimeConfig"] = json!({"ips": ["fd00::7/64"]});
    Call::new("ADD", "s7", &ns4.path(), "eth6")
        .run(&plugin, &v6)
        .err(2);
    assert_eq!(w.handles().len(), 3, "{:?}", w.handles());
    for (cid, ifn, n) in [
        ("s1", "eth0", &ns),
        ("s2", "eth1", &ns2),
        ("s3", "eth2", &ns3),
    ] {
        Call::new("DEL", cid, &n.path(), ifn)
            .run(&plugin, &conf)
            .ok();
    }
    assert!(w.handles().is_empty());
}

#[test]
fn cni_error_paths() {
    if !root_or_skip("cni_error_paths") {
        return;
    }
    // A /30 pool: two usable addresses.
    let w = World::new("10.241.2.0/30", "30");
    let b = w.direct();
    let plugin = w.brindle();
    let ns = Netns::new("cnierr");
    let conf = b.main_conf("1.0.0", "errnet");
    let add = |cid: &str, ifname: &str| Call::new("ADD", cid, &ns.path(), ifname);

    // Bad JSON: decode error, reply in the newest version.
    let e = add("e1", "eth0").run_raw(&plugin, b"{not json").err(6);
    assert_eq!(e["cniVersion"], "1.1.0");
    // Unknown cniVersion: code 1 naming what we support.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("9.9.9");
    let e = add("e1", "eth0").run(&plugin, &bad).err(1);
    assert!(e["details"].as_str().unwrap().contains("1.1.0"), "{e}");
    // Missing keys: no cniVersion, no name, no type.
    for key in ["cniVersion", "name", "type"] {
        let mut c = conf.clone();
        c.as_object_mut().unwrap().remove(key);
        let e = add("e1", "eth0").run(&plugin, &c).err(7);
        assert!(e["cniVersion"].as_str().is_some());
    }
    // A key with the wrong type.
    let mut c = conf.clone();
    c["mtu"] = json!("big");
    add("e1", "eth0").run(&plugin, &c).err(7);
    // An IPAM type the main plugin cannot serve.
    let mut c = conf.clone();
    c["ipam"] = json!({"type": "host-local"});
    add("e1", "eth0").run(&plugin, &c).err(2);
    // Missing environment, naming the variables.
    let e = Call::new("ADD", "", "", "eth0").run(&plugin, &conf).err(4);
    assert_eq!(
        e["msg"],
        "required env variables [CNI_CONTAINERID CNI_NETNS] missing"
    );
    Call::new("DEL", "e1", "", "").run(&plugin, &conf).err(4);
    Call::new("ADD", "bad/id", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .err(4);
    Call::new("ADD", "e1", &ns.path(), "averyveryverylongname")
        .run(&plugin, &conf)
        .err(4);
    Call::new("FROB", "e1", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .err(4);
    // A netns that does not exist: container unknown.
    Call::new("ADD", "e1", "/run/netns/brindle-no-such-ns", "eth0")
        .run(&plugin, &conf)
        .err(3);
    // The plugin's own namespace as CNI_NETNS is refused.
    Call::new("ADD", "e1", "/proc/self/ns/net", "eth0")
        .run(&plugin, &conf)
        .err(4);
    // STATUS and GC need 1.1.0; CHECK needs 0.4.0.
    Call::new("STATUS", "", "", "").run(&plugin, &conf).err(1);
    Call::new("GC", "", "", "").run(&plugin, &conf).err(1);
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    Call::new("CHECK", "e1", &ns.path(), "eth0")
        .run(&plugin, &old)
        .err(1);
    // No CNI_COMMAND at all: the about text on stderr, nothing on stdout, exit 0.
    let about = Call::new("", "", "", "").run(&plugin, &conf);
    assert!(about.success && about.stdout.is_empty(), "{about:?}");
    assert!(about.stderr.contains("CNI protocol versions supported"));
    // Nothing of the above allocated anything.
    assert!(w.handles().is_empty(), "{:?}", w.handles());

    // Pool exhausted: two fit, the third gets code 100 and leaves nothing behind.
    add("x1", "eth0").run(&plugin, &conf).ok();
    let nsx = Netns::new("cnierr");
    Call::new("ADD", "x2", &nsx.path(), "eth1")
        .run(&plugin, &conf)
        .ok();
    let e = add("x3", "eth2").run(&plugin, &conf).err(100);
    assert!(e["msg"].as_str().unwrap().contains("exhausted"), "{e}");
    assert!(!host_link_exists(&host_ifname("x3", "eth2")));
    assert_eq!(w.handles().len(), 2);

    // etcd down: ADD and DEL are "try again later" (11), STATUS "not available" (50),
    // each within the 5 s etcd deadline (plus process overhead).
    let mut down = b.clone();
    down.etcd = format!("http://127.0.0.1:{}", brindle_tests::ports::free_port());
    let down_conf = down.main_conf("1.1.0", "errnet");
    let t = Instant::now();
    add("d1", "eth5").run(&plugin, &down_conf).err(11);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(!host_link_exists(&host_ifname("d1", "eth5")));
    Call::new("DEL", "x1", &ns.path(), "eth0")
        .run(&plugin, &down_conf)
        .err(11);
    let t = Instant::now();
    let e = Call::new("STATUS", "", "", "")
        .run(&plugin, &down_conf)
        .err(50);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(e["details"].as_str().unwrap().contains("etcd"), "{e}");

    for (cid, ifn, n) in [("x1", "eth0", &ns), ("x2", "eth1", &nsx)] {
        Call::new("DEL", cid, &n.path(), ifn)
            .run(&plugin, &conf)
            .ok();
    }
    assert!(w.handles().is_empty());
}

#[test]
fn cni_fast_path_through_brindled_and_fallback() {
    if !root_or_skip("cni_fast_path_through_brindled_and_fallback") {
        return;
    }
    // Forwarding on while the test runs (brindled turns it on; the host pings the container), as found afterwards.
    let _forwarding = RootIpForward::hold();
    let w = World::new("10.241.3.0/24", "28");
    let mut d = Brindled::start(&w.etcd.endpoint, "n1");
    let plugin = w.brindle();
    let ns = Netns::new("cnifast");
    // The plugin's own etcd endpoint is unreachable: only brindled can do the work.
    let fast = Brindle {
        etcd: format!("http://127.0.0.1:{}", brindle_tests::ports::free_port()),
        node: "n1".into(),
        api_socket: d.api_socket.display().to_string(),
        pool: Some("p".into()),
    };
    let conf = fast.main_conf("1.1.0", "fastnet");
    Call::new("STATUS", "", "", "").run(&plugin, &conf).ok();
    let r = Call::new("ADD", "f1", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .ok();
    let ip = result_ip(&r);
    assert_wired(&ns, "f1", "eth0", ip);
    assert!(ping(None, ip));
    assert!(
        d.log().contains("cni add"),
        "brindled did not serve the ADD"
    );
    let mut check = conf.clone();
    check["prevResult"] = r.clone();
    Call::new("CHECK", "f1", &ns.path(), "eth0")
        .run(&plugin, &check)
        .ok();
    Call::new("ADD", "f1", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .err(103);
    // IPAM-only through brindled too.
    let ipam_conf = fast.ptp_conf("1.1.0", "fastnet");
    let ir = Call::new("ADD", "f2", &ns.path(), "eth1")
        .run(&w.plugins.plugin("brindle-ipam"), &ipam_conf)
        .ok();
    assert!(w.in_pool(result_ip(&ir)));
    Call::new("DEL", "f2", &ns.path(), "eth1")
        .run(&w.plugins.plugin("brindle-ipam"), &ipam_conf)
        .ok();
    // DEL: off the network at once, the veth follows; a quick re-ADD of the same
    // attachment waits for it and succeeds.
    Call::new("DEL", "f1", &ns.path(), "eth0")
        .run(&plugin, &check)
        .ok();
    assert!(w.handles().is_empty());
    let r = Call::new("ADD", "f1", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .ok();
    assert_wired(&ns, "f1", "eth0", result_ip(&r));
    // GC through brindled: nothing valid, so f1 goes.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    Call::new("GC", "", "", "").run(&plugin, &gc).ok();
    assert!(w.handles().is_empty());
    assert!(eventually(Duration::from_secs(5), || !host_link_exists(
        &host_ifname("f1", "eth0")
    )));

    // brindled for another node declines; the plugin falls back to etcd (reachable now).
    let mut other = fast.clone();
    other.etcd = w.etcd.endpoint.clone();
    other.node = "n2".into();
    let ns3 = Netns::new("cnifast");
    let r = Call::new("ADD", "f3", &ns3.path(), "eth2")
        .run(&plugin, &other.main_conf("1.1.0", "fastnet"))
        .ok();
    assert_wired(&ns3, "f3", "eth2", result_ip(&r));
    assert!(
        !d.log().contains("f3+eth2"),
        "brindled served another node's ADD"
    );

    // A brindled whose etcd is down: STATUS says "not available" (50) and ADD "try
    // again later" (11), through the socket, without a second attempt elsewhere.
    let down_etcd = format!("http://127.0.0.1:{}", brindle_tests::ports::free_port());
    let sick = Brindled::start(&down_etcd, "n1");
    let sick_conf = Brindle {
        api_socket: sick.api_socket.display().to_string(),
        ..fast.clone()
    }
    .main_conf("1.1.0", "fastnet");
    let e = Call::new("STATUS", "", "", "")
        .run(&plugin, &sick_conf)
        .err(50);
    assert!(e["details"].as_str().unwrap().contains("etcd"), "{e}");
    let ns5 = Netns::new("cnifast");
    Call::new("ADD", "f5", &ns5.path(), "eth0")
        .run(&plugin, &sick_conf)
        .err(11);
    assert!(!host_link_exists(&host_ifname("f5", "eth0")));
    drop(sick);

    // brindled gone: the same configuration works directly against etcd.
    d.stop();
    let mut direct = fast.clone();
    direct.etcd = w.etcd.endpoint.clone();
    let conf = direct.main_conf("1.1.0", "fastnet");
    let ns4 = Netns::new("cnifast");
    let r = Call::new("ADD", "f4", &ns4.path(), "eth3")
        .run(&plugin, &conf)
        .ok();
    assert_wired(&ns4, "f4", "eth3", result_ip(&r));
    Call::new("DEL", "f4", &ns4.path(), "eth3")
        .run(&plugin, &conf)
        .ok();
    Call::new("DEL", "f3", &ns3.path(), "eth2")
        .run(&plugin, &other.main_conf("1.1.0", "fastnet"))
        .ok();
    assert!(w.handles().is_empty(), "{:?}", w.handles());
}

#[test]
fn cni_gc_releases_only_stale_cni_allocations_of_its_network() {
    if !root_or_skip("cni_gc_releases_only_stale_cni_allocations_of_its_network") {
        return;
    }
    let w = World::new("10.241.5.0/24", "28");
    let b = w.direct();
    let plugin = w.brindle();
    let ns = Netns::new("cnigc");
    let ns2 = Netns::new("cnigc");
    let conf = b.main_conf("1.1.0", "gcnet");
    for (cid, ifn, n) in [("keep", "eth0", &ns), ("stale", "eth1", &ns2)] {
        Call::new("ADD", cid, &n.path(), ifn)
            .run(&plugin, &conf)
            .ok();
    }
    // Another CNI network (IPAM only), a Docker-style allocation, another node's.
    let ipam = w.plugins.plugin("brindle-ipam");
    Call::new("ADD", "other", &ns.path(), "eth2")
        .run(&ipam, &b.ptp_conf("1.1.0", "othernet"))
        .ok();
    let docker = brindle(&w.etcd.endpoint, "n1")
        .args([
            "ipam",
            "alloc",
            "--handle",
            "dockerendpoint1",
            "--attr",
            "orchestrator=docker",
        ])
        .output()
        .unwrap();
    assert!(docker.status.success());
    let mut n2 = b.clone();
    n2.node = "n2".into();
    Call::new("ADD", "remote", &ns.path(), "eth3")
        .run(&ipam, &n2.ptp_conf("1.1.0", "gcnet"))
        .ok();

    let mut gc = conf.clone();
    // The list under the name of the spec-v1.1.0 tag.
    gc["cni.dev/attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    Call::new("GC", "", "", "").run(&plugin, &gc).ok();
    let mut h = w.handles();
    h.sort();
    assert_eq!(
        h,
        vec!["dockerendpoint1", "keep+eth0", "other+eth2", "remote+eth3"],
        "GC must release stale+eth1 only"
    );
    assert_eq!(w.endpoint_ids(), vec!["keep+eth0".to_string()]);
    assert!(eventually(Duration::from_secs(5), || !host_link_exists(
        &host_ifname("stale", "eth1")
    )));
    assert!(host_link_exists(&host_ifname("keep", "eth0")));
    // GC again with the newer key and the full list: nothing changes.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "keep", "ifname": "eth0"}]);
    Call::new("GC", "", "", "").run(&plugin, &gc).ok();
    assert_eq!(w.handles().len(), 4);
    Call::new("DEL", "keep", &ns.path(), "eth0")
        .run(&plugin, &conf)
        .ok();
}

/// `iptables` in the root namespace (the backend the host's `iptables` alternative
/// points at, as the firewall plugin's go-iptables uses); stdout, or `None` on failure.
fn iptables(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("iptables")
        .args(["-w"])
        .args(args)
        .output()
        .expect("run iptables (apt-get install iptables)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What the firewall plugin leaves in the root namespace after its DELs, removed on
/// drop: the `CNI-FORWARD` and `CNI-ADMIN` chains and FORWARD's jump to `CNI-FORWARD`
/// (its DEL removes only the per-address rules). Chains that existed before, or that
/// hold rules for addresses outside the test's pool by then, are left alone.
/// (ptp's `net.ipv4.ip_forward=1` is [`RootIpForward`]'s.)
struct CniChainsRestore {
    had_forward_chain: bool,
    had_admin_chain: bool,
    /// iptables is the nf_tables backend and had no `ip filter` table yet (the
    /// plugin's chains make iptables-nft create it, with FORWARD).
    no_nft_filter_table: bool,
    /// Whether an address is the test's (rules for it left by a failed run are ours).
    ours: Box<dyn Fn(Ipv4Addr) -> bool>,
}

const FORWARD_JUMP: &[&str] = &[
    "-m",
    "comment",
    "--comment",
    "CNI firewall plugin rules",
    "-j",
    "CNI-FORWARD",
];

impl CniChainsRestore {
    fn new(ours: impl Fn(Ipv4Addr) -> bool + 'static) -> Self {
        CniChainsRestore {
            had_forward_chain: iptables(&["-S", "CNI-FORWARD"]).is_some(),
            had_admin_chain: iptables(&["-S", "CNI-ADMIN"]).is_some(),
            no_nft_filter_table: iptables(&["-V"]).is_some_and(|v| v.contains("nf_tables"))
                && !nft_filter_table_exists(),
            ours: Box::new(ours),
        }
    }
}

impl Drop for CniChainsRestore {
    fn drop(&mut self) {
        if !self.had_forward_chain {
            // The admin jump the plugin puts first, and rules for the test's addresses
            // (a failed run's): nobody else uses the chain.
            let only_ours = iptables(&["-S", "CNI-FORWARD"]).is_some_and(|rules| {
                rules.lines().all(|l| {
                    l == "-N CNI-FORWARD"
                        || l.ends_with("-j CNI-ADMIN")
                        || rule_address(l).is_some_and(|ip| (self.ours)(ip))
                })
            });
            if only_ours {
                let mut del = vec!["-D", "FORWARD"];
                del.extend_from_slice(FORWARD_JUMP);
                while iptables(&del).is_some() {}
                let _ = iptables(&["-F", "CNI-FORWARD"]);
                let _ = iptables(&["-X", "CNI-FORWARD"]);
            }
        }
        if !self.had_admin_chain
            && iptables(&["-S", "CNI-ADMIN"]).is_some_and(|r| r.trim() == "-N CNI-ADMIN")
        {
            let _ = iptables(&["-X", "CNI-ADMIN"]);
        }
        // Drop the table iptables-nft made for the plugin if it holds nothing: only
        // built-in chains, no rules, every policy ACCEPT.
        if self.no_nft_filter_table {
            let empty = iptables(&["-S"]).is_some_and(|rules| {
                rules
                    .lines()
                    .all(|l| l.starts_with("-P ") && l.ends_with(" ACCEPT"))
            });
            if empty && nft_filter_table_exists() {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", "ip", "filter"])
                    .status();
            }
        }
    }
}

/// Whether nftables has an `ip filter` table (iptables-nft's `filter`).
fn nft_filter_table_exists() -> bool {
    std::process::Command::new("nft")
        .args(["list", "table", "ip", "filter"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The conflist a real runtime would use for brindle-ipam under ptp: `ptp`, then the
/// stock `firewall` plugin (iptables backend), as podman's default conflist chains it,
/// so forwarding through the host works whatever the FORWARD policy. [`Chain`] runs it
/// the way libcni does.
struct Chain {
    ptp: std::path::PathBuf,
    firewall: std::path::PathBuf,
    ptp_conf: Value,
    cni_path: std::path::PathBuf,
}

impl Chain {
    /// The firewall plugin's netconf: the list's name and version, the result so far.
    fn firewall_conf(&self, prev: &Value) -> Value {
        json!({
            "cniVersion": self.ptp_conf["cniVersion"],
            "name": self.ptp_conf["name"],
            "type": "firewall",
            "backend": "iptables",
            "prevResult": prev,
        })
    }

    fn call(&self, cmd: &str, cid: &str, ns: &Netns) -> Call {
        Call::new(cmd, cid, &ns.path(), "eth0").path(&self.cni_path)
    }

    /// ADD: ptp, then firewall with ptp's result; the list's result.
    fn add(&self, cid: &str, ns: &Netns) -> Value {
        let r = self
            .call("ADD", cid, ns)
            .run(&self.ptp, &self.ptp_conf)
            .ok();
        self.call("ADD", cid, ns)
            .run(&self.firewall, &self.firewall_conf(&r))
            .ok()
    }

    /// CHECK: every plugin in order, each with the list's cached result.
    fn check(&self, cid: &str, ns: &Netns, result: &Value) {
        let mut conf = self.ptp_conf.clone();
        conf["prevResult"] = result.clone();
        self.call("CHECK", cid, ns).run(&self.ptp, &conf).ok();
        self.call("CHECK", cid, ns)
            .run(&self.firewall, &self.firewall_conf(result))
            .ok();
    }

    /// DEL: in reverse order, each with the cached result.
    fn del(&self, cid: &str, ns: &Netns, result: &Value) {
        self.call("DEL", cid, ns)
            .run(&self.firewall, &self.firewall_conf(result))
            .ok();
        let mut conf = self.ptp_conf.clone();
        conf["prevResult"] = result.clone();
        self.call("DEL", cid, ns).run(&self.ptp, &conf).ok();
    }
}

/// The address of one of the firewall plugin's per-address rules
/// (`-A CNI-FORWARD -s A/32 -j ACCEPT`, `-A CNI-FORWARD -d A/32 -m conntrack ...`).
fn rule_address(rule: &str) -> Option<Ipv4Addr> {
    let mut words = rule.split_whitespace();
    words.find(|w| *w == "-s" || *w == "-d")?;
    words.next()?.strip_suffix("/32")?.parse().ok()
}

/// The firewall plugin's per-address rules in CNI-FORWARD for `ip`.
fn cni_forward_rules(ip: Ipv4Addr) -> Vec<String> {
    iptables(&["-S", "CNI-FORWARD"])
        .unwrap_or_default()
        .lines()
        .filter(|l| rule_address(l) == Some(ip))
        .map(str::to_string)
        .collect()
}

#[test]
fn cni_brindle_ipam_under_stock_ptp() {
    if !root_or_skip("cni_brindle_ipam_under_stock_ptp") {
        return;
    }
    // Forwarding on while the test runs (ptp turns it on; the containers reach each other through the host), as found afterwards.
    let _forwarding = RootIpForward::hold();
    let w = World::new("10.241.4.0/24", "28");
    let ptp = w.plugins.plugin("ptp");
    let firewall = w.plugins.plugin("firewall");
    if !ptp.exists() || !firewall.exists() {
        panic!("ptp or firewall missing: apt-get install containernetworking-plugins");
    }
    let cidr = w.cidr.clone();
    let _chains = CniChainsRestore::new(move |ip| in_cidr(&cidr, ip));
    let b = w.direct();
    let conf = b.ptp_conf("1.0.0", "ptpnet");
    let chain = Chain {
        ptp,
        firewall,
        ptp_conf: conf.clone(),
        cni_path: w.plugins.path().to_path_buf(),
    };
    let a = Netns::new("cniptp");
    let c = Netns::new("cniptp");
    let ra = chain.add("pa", &a);
    let rc = chain.add("pc", &c);
    let ipa = result_ip(&ra);
    let ipc = result_ip(&rc);
    assert!(w.in_pool(ipa) && w.in_pool(ipc) && ipa != ipc);
    // ptp applied brindle-ipam's answer: pool prefix, gateway 169.254.1.1.
    assert_eq!(addresses(&a.name, "eth0"), vec![format!("{ipa}/24")]);
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    // The firewall plugin accepts forwarding from and (established) to each address.
    let rules = cni_forward_rules(ipa);
    assert_eq!(rules.len(), 2, "CNI-FORWARD rules for {ipa}: {rules:?}");
    // Routed: the host reaches each, and they reach each other through the host, also
    // where the FORWARD policy is DROP (the firewall plugin's rules let them through).
    assert!(ping(None, ipa));
    assert!(ping(Some(&a), ipc), "{ipa} cannot reach {ipc} via the host");
    // The IPAM call is idempotent per attachment (direct delegate call).
    let ipam = w.plugins.plugin("brindle-ipam");
    let again = Call::new("ADD", "pa", &a.path(), "eth0")
        .run(&ipam, &conf)
        .ok();
    assert_eq!(result_ip(&again), ipa);
    assert_eq!(again["ips"][0]["address"], format!("{ipa}/24"));
    // CHECK through the list (ptp 1.1.1 checks its side and delegates to brindle-ipam).
    chain.check("pa", &a, &ra);
    // DEL through the list, twice; the allocation and the firewall rules are gone.
    chain.del("pa", &a, &ra);
    chain.del("pa", &a, &ra);
    let h = w.handles();
    assert_eq!(h, vec!["pc+eth0".to_string()], "{h:?}");
    let left = cni_forward_rules(ipa);
    assert!(left.is_empty(), "firewall DEL left {left:?}");
    // IPAM CHECK of a released attachment fails.
    let mut check = conf.clone();
    check["prevResult"] = ra.clone();
    Call::new("CHECK", "pa", &a.path(), "eth0")
        .run(&ipam, &check)
        .err(104);
    chain.del("pc", &c, &rc);
    assert!(w.handles().is_empty());
    let left = cni_forward_rules(ipc);
    assert!(left.is_empty(), "firewall DEL left {left:?}");
    // STATUS of brindle-ipam on its own.
    Call::new("STATUS", "", "", "")
        .run(&ipam, &b.ptp_conf("1.1.0", "ptpnet"))
        .ok();
}

#[test]
fn cni_etcd_over_tls_from_keys_and_env() {
    if !root_or_skip("cni_etcd_over_tls_from_keys_and_env") {
        return;
    }
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().expect("tls files");
    let p = |f: &std::path::Path| f.display().to_string();
    let out = brindle(&etcd.endpoint, "n1")
        .env("BRINDLE_ETCD_CA_FILE", &tls.ca)
        .env("BRINDLE_ETCD_CERT_FILE", &tls.client_cert)
        .env("BRINDLE_ETCD_KEY_FILE", &tls.client_key)
        .args(["pool", "add", "p", "--cidr", "10.241.10.0/24"])
        .output()
        .expect("brindle pool add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = PluginDir::new();
    let ipam = plugins.plugin("brindle-ipam");
    let b = Brindle {
        etcd: etcd.endpoint.clone(),
        node: "n1".into(),
        api_socket: "none".into(),
        pool: Some("p".into()),
    };
    // The TLS files as ipam keys (Calico's spelling of the CA key is accepted too).
    let mut conf = b.ptp_conf("1.1.0", "tlsnet");
    conf["ipam"]["etcd_ca_cert_file"] = json!(p(&tls.ca));
    conf["ipam"]["etcd_cert_file"] = json!(p(&tls.client_cert));
    conf["ipam"]["etcd_key_file"] = json!(p(&tls.client_key));
    Call::new("STATUS", "", "", "").run(&ipam, &conf).ok();
    let r = Call::new("ADD", "t1", "/run/netns/unused-by-ipam", "eth0")
        .run(&ipam, &conf)
        .ok();
    assert!(r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.241.10."));
    // Without them, etcd refuses the client: an error, on stdout, as JSON.
    let bare = b.ptp_conf("1.1.0", "tlsnet");
    let e = Call::new("STATUS", "", "", "").run(&ipam, &bare);
    assert!(!e.success);
    e.json();
    // The same files from the BRINDLE_* environment, and everything else too.
    let minimal = json!({
        "cniVersion": "1.1.0", "name": "tlsnet", "type": "ptp",
        "ipam": {"type": "brindle-ipam", "api_socket": "none"},
    });
    let del = Call::new("DEL", "t1", "", "eth0")
        .env("BRINDLE_ETCD_ENDPOINTS", &etcd.endpoint)
        .env("BRINDLE_NODE", "n1")
        .env("BRINDLE_POOL", "p")
        .env("BRINDLE_ETCD_CA_FILE", &p(&tls.ca))
        .env("BRINDLE_ETCD_CERT_FILE", &p(&tls.client_cert))
        .env("BRINDLE_ETCD_KEY_FILE", &p(&tls.client_key));
    del.run(&ipam, &minimal).ok();
    assert!(etcd.keys(&Keys::default_prefix().handles()).is_empty());
}

/// `etcd_password_file` in the netconf against etcd with auth (direct path): the file's
/// password is used, the conflist holds none, and a missing or empty file is an
/// invalid configuration (code 7) naming the path; `BRINDLE_ETCD_PASSWORD_FILE` too.
#[test]
fn cni_etcd_password_file() {
    if !root_or_skip("cni_etcd_password_file") {
        return;
    }
    const PW: &str = "cni-S3cret-k4";
    let etcd = Etcd::start();
    etcd.etcdctl(&["user", "add", &format!("root:{PW}")]);
    etcd.etcdctl(&["auth", "enable"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, content: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, content).expect("write password file");
        p.display().to_string()
    };
    let file = write("etcd-password", &format!("{PW}\n"));
    let out = brindle(&etcd.endpoint, "n1")
        .args(["--etcd-username", "root", "--etcd-password-file", &file])
        .args(["pool", "add", "p", "--cidr", "10.241.11.0/24"])
        .output()
        .expect("brindle pool add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = PluginDir::new();
    let ipam = plugins.plugin("brindle-ipam");
    let b = Brindle {
        etcd: etcd.endpoint.clone(),
        node: "n1".into(),
        api_socket: "none".into(),
        pool: Some("p".into()),
    };
    let with_file = |path: &str| {
        let mut conf = b.ptp_conf("1.1.0", "pwnet");
        conf["ipam"]["etcd_username"] = json!("root");
        conf["ipam"]["etcd_password_file"] = json!(path);
        conf
    };
    let conf = with_file(&file);
    assert!(!conf.to_string().contains(PW));
    Call::new("STATUS", "", "", "").run(&ipam, &conf).ok();
    let r = Call::new("ADD", "pw1", "/run/netns/unused-by-ipam", "eth0")
        .run(&ipam, &conf)
        .ok();
    assert!(r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("10.241.11."));
    // Without the password etcd refuses: an error, as JSON.
    let mut bare = b.ptp_conf("1.1.0", "pwnet");
    bare["ipam"]["etcd_username"] = json!("root");
    let e = Call::new("STATUS", "", "", "").run(&ipam, &bare);
    assert!(!e.success);
    e.json();
    // Missing and empty files: code 7, naming the path, before any etcd call.
    let missing = dir.path().join("missing").display().to_string();
    let e = Call::new("ADD", "pw2", "/run/netns/unused-by-ipam", "eth0")
        .run(&ipam, &with_file(&missing))
        .err(7);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("etcd_password_file") && msg.contains(&missing),
        "{e}"
    );
    let empty = write("empty", "");
    let e = Call::new("DEL", "pw1", "", "eth0")
        .run(&ipam, &with_file(&empty))
        .err(7);
    assert!(e["msg"].as_str().unwrap().contains(&empty), "{e}");
    // The file from the environment; DEL releases what ADD took.
    Call::new("DEL", "pw1", "", "eth0")
        .env("BRINDLE_ETCD_USERNAME", "root")
        .env("BRINDLE_ETCD_PASSWORD_FILE", &file)
        .run(&ipam, &b.ptp_conf("1.1.0", "pwnet"))
        .ok();
    let handles = etcd.etcdctl(&[
        "--user",
        &format!("root:{PW}"),
        "get",
        "--prefix",
        "--keys-only",
        &Keys::default_prefix().handles(),
    ]);
    assert!(handles.trim().is_empty(), "left behind: {handles}");
}

/// POSTs `len` bytes of `{` to `path` on a unix socket; the answer's status and body.
/// The writes stop early if the server closes the connection mid-body.
fn post_oversized(socket: &std::path::Path, path: &str, len: usize) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect to brindled");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: brindled\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    let chunk = vec![b'{'; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = chunk.len().min(len - sent);
        if s.write_all(&chunk[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.as_bytes().to_vec())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn an_api_body_over_the_limit_gets_a_cni_error_naming_the_limit() {
    if !root_or_skip("an_api_body_over_the_limit_gets_a_cni_error_naming_the_limit") {
        return;
    }
    let etcd = Etcd::start();
    let d = Brindled::start(&etcd.endpoint, "n1");
    let limit = brindle_plugin::api::MAX_BODY_BYTES;
    let (status, body) = post_oversized(&d.api_socket, "/v1/cni/add", limit + 1);
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let err: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not a CNI error ({e}): {}", String::from_utf8_lossy(&body)));
    let msg = err["msg"].as_str().unwrap_or_default();
    assert!(
        msg.contains(&format!("at most {limit} bytes")),
        "the error names the limit: {err}"
    );
    // Within the limit, a body that is not a request is still a decoding error (400),
    // on which the plugin goes to etcd itself.
    let (status, body) = post_oversized(&d.api_socket, "/v1/cni/add", 1000);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("cannot decode"));
}

/// `BRINDLE_LOG=debug` must reach debug lines: an operator asks for them to see why an
/// invocation went the way it did (and the Docker benchmark reads brindled's per-call
/// timings at debug level). A logger with its own INFO ceiling would print nothing more.
#[test]
fn brindle_log_debug_shows_debug_lines() {
    let plugins = PluginDir::new();
    let call = || Call::new("VERSION", "", "", "");
    let conf = json!({"cniVersion": "1.0.0"});
    let quiet = call().run(&plugins.plugin("brindle"), &conf);
    assert!(quiet.success, "{quiet:?}");
    assert!(!quiet.stderr.contains("DEBUG"), "{}", quiet.stderr);
    let debug = call()
        .env("BRINDLE_LOG", "debug")
        .run(&plugins.plugin("brindle"), &conf);
    assert!(debug.success, "{debug:?}");
    assert!(
        debug.stderr.contains("DEBUG") && debug.stderr.contains("cni invocation"),
        "no debug line with BRINDLE_LOG=debug: {}",
        debug.stderr
    );
}

/// Direct-path plugins of one node take turns on the node's lock file (as Calico's do),
/// so a burst does not spend itself on lost compares; and the lock is best effort: a
/// holder that never lets go (stuck on etcd, say) delays an ADD by the lock's bound,
/// not forever, and the ADD then succeeds without its turn.
#[test]
fn direct_adds_take_turns_on_the_nodes_lock_and_go_on_without_it_after_its_bound() {
    if !root_or_skip(
        "direct_adds_take_turns_on_the_nodes_lock_and_go_on_without_it_after_its_bound",
    ) {
        return;
    }
    let w = World::new("10.241.7.0/24", "28");
    let ns = Netns::new("lck");
    let locks = tempfile::tempdir().expect("temp dir");
    let lock = locks.path().join("ipam-n1.lock");
    let mut conf = w.direct().main_conf("1.0.0", "locknet");
    conf["ipam_lock_file"] = json!(lock.display().to_string());

    // Another process holds the node's lock and never lets go.
    std::fs::write(&lock, "").expect("lock file");
    // `--no-fork`: the PID killed at the end is the process that holds the lock.
    let holder = KilledOnDrop(
        std::process::Command::new("flock")
            .args(["--no-fork", "--exclusive"])
            .arg(&lock)
            .args(["sleep", "600"])
            .spawn()
            .expect("run flock"),
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            // `flock -n` fails while the holder has it.
            !std::process::Command::new("flock")
                .args(["--nonblock", "--exclusive"])
                .arg(&lock)
                .arg("true")
                .status()
                .expect("run flock")
                .success()
        }),
        "the holder never took the lock"
    );

    let (plugin, path, cfg) = (w.brindle(), ns.path(), conf.clone());
    let add =
        std::thread::spawn(move || Call::new("ADD", "lck1", &path, "eth0").run(&plugin, &cfg));
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !add.is_finished(),
        "a direct ADD ran while another process held the node's lock"
    );
    // The holder keeps the lock: the ADD goes on without its turn once the bound is
    // out, and succeeds.
    let out = add.join().expect("ADD thread");
    let result = out.ok();
    let ip = result_ip(&result);
    assert!(w.in_pool(ip), "{ip} outside {}", w.cidr);
    assert!(
        out.elapsed >= Duration::from_secs(4),
        "the ADD did not wait for its turn: {:?}",
        out.elapsed
    );
    drop(holder);

    // Free again: the DEL takes its turn at once.
    let mut del = conf.clone();
    del["prevResult"] = result;
    Call::new("DEL", "lck1", &ns.path(), "eth0")
        .run(&w.brindle(), &del)
        .ok();
    assert!(w.handles().is_empty());
}

/// A child process killed (by PID) and reaped when the test ends, pass or fail.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The plugin as `make` builds it and runtimes start it: linked statically (no dynamic
/// loader, its start is most of a CNI call), and still reaching etcd by host name. It
/// runs in a mount namespace of its own where `/etc/hosts` names the test's etcd and
/// `/etc/nsswitch.conf` lists only `systemd` and `dns` for hosts. The static plugin
/// loads no NSS module (a static program must not) and looks in `/etc/hosts`, then DNS,
/// whatever nsswitch.conf says: the name resolves although `files` is not listed, and a
/// name in neither fails cleanly.
#[test]
fn the_static_plugin_reaches_etcd_by_a_name_in_etc_hosts() {
    if !root_or_skip("the_static_plugin_reaches_etcd_by_a_name_in_etc_hosts") {
        return;
    }
    let w = World::new("10.241.8.0/24", "28");
    let plugin = brindle_tests::bins::bin("brindle-cni");
    let elf = read_elf(&plugin);
    assert!(
        !needs_program_interpreter(&elf),
        "{} is linked dynamically; `make build` links it statically",
        plugin.display()
    );
    assert!(
        !is_position_independent(&elf),
        "{} is a position-independent executable, which relocates itself at every start; \
         `make build` links it at a fixed address",
        plugin.display()
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let files = dir.path();
    std::fs::write(
        files.join("hosts"),
        "127.0.0.1 localhost\n127.0.0.1 brindle-test-etcd\n",
    )
    .expect("hosts");
    std::fs::write(files.join("nsswitch.conf"), "hosts: systemd dns\n").expect("nsswitch.conf");
    // `unshare --mount` makes the binds private to the plugin: the host's files stay.
    let wrapper = files.join("brindle");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'mount --bind {d}/hosts /etc/hosts && mount --bind {d}/nsswitch.conf /etc/nsswitch.conf && exec \"$0\"' {plugin}\n",
            d = files.display(),
            plugin = w.brindle().display(),
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");

    let port = w
        .etcd
        .endpoint
        .rsplit(':')
        .next()
        .expect("etcd endpoint has a port")
        .to_string();
    let ns = Netns::new("byname");
    let mut conf = w.direct().main_conf("1.0.0", "bynamenet");
    conf["etcd_endpoints"] = json!(format!("http://brindle-test-etcd:{port}"));
    let add = Call::new("ADD", "byname1", &ns.path(), "eth0").run(&wrapper, &conf);
    let result = add.ok();
    let ip = result_ip(&result);
    assert!(w.in_pool(ip), "{ip} outside {}", w.cidr);
    assert_wired(&ns, "byname1", "eth0", ip);
    let mut del = conf.clone();
    del["prevResult"] = result;
    Call::new("DEL", "byname1", &ns.path(), "eth0")
        .run(&wrapper, &del)
        .ok();
    assert!(w.handles().is_empty(), "{:?}", w.handles());

    // A name neither file knows: a CNI error naming the endpoint, not a crash.
    let mut unknown = conf.clone();
    unknown["etcd_endpoints"] = json!(format!("http://brindle-no-such-etcd.invalid:{port}"));
    let failed = Call::new("ADD", "byname2", &ns.path(), "eth0").run(&wrapper, &unknown);
    assert_eq!(
        failed.exit_code,
        Some(1),
        "the plugin did not exit with a CNI error: {failed:?}"
    );
    let e = failed.json();
    assert!(
        e["msg"]
            .as_str()
            .is_some_and(|m| m.contains("brindle-no-such-etcd.invalid")),
        "the error does not name the endpoint: {e}"
    );
    assert!(w.handles().is_empty(), "{:?}", w.handles());
}

/// A 64-bit ELF file's bytes.
fn read_elf(path: &std::path::Path) -> Vec<u8> {
    let elf = std::fs::read(path).expect("read the plugin");
    assert_eq!(
        &elf[..4],
        b"\x7fELF",
        "{} is not an ELF file",
        path.display()
    );
    assert_eq!(elf[4], 2, "{} is not a 64-bit ELF file", path.display());
    elf
}

/// Whether an ELF executable names a program interpreter (`PT_INTERP`): the dynamic
/// loader a dynamically linked program starts through.
fn needs_program_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes")) as usize;
    let (entry_size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == PT_INTERP
    })
}

/// Whether an ELF executable may be loaded anywhere (`e_type` `ET_DYN`, a PIE), rather
/// than at the addresses it was linked for (`ET_EXEC`).
fn is_position_independent(elf: &[u8]) -> bool {
    const ET_DYN: u16 = 3;
    u16::from_le_bytes([elf[0x10], elf[0x11]]) == ET_DYN
}
