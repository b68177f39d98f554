//! Two hosts started with the same node name (a cloned VM): the second brindled must
//! refuse to start and name the first, since two agents acting as one node release
//! and sweep each other's addresses. The same machine after a reboot starts again; a
//! dead machine's claim is taken over after `brindle node rm`.
//!
//! Both brindleds run on this one machine, so they would read the same
//! /etc/machine-id and boot id: each gets its own identity files through
//! BRINDLE_MACHINE_ID_FILE and BRINDLE_BOOT_ID_FILE, as two VMs would have. They run
//! in the root namespace with their own sockets and `--firewall false`; the etcd has
//! no pools, so their route cleanup (scoped to pools) touches nothing, and the
//! forwarding sysctl they turn on is held and put back by [`RootIpForward`].

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use brindle_tests::bins::{bin, brindle};
use brindle_tests::etcd::Etcd;
use brindle_tests::netns::{is_root, RootIpForward};
use brindle_tests::topology::Proc;
use serde_json::Value;

const NODE: &str = "clone";

/// brindled as node `clone` with the identity of machine `machine` booted as `boot`.
fn brindled(etcd: &Etcd, dir: &Path, tag: &str, machine: &str, boot: &str, ip: &str) -> Proc {
    let own = dir.join(tag);
    std::fs::create_dir_all(own.join("plugins")).unwrap();
    let machine_file = own.join("machine-id");
    let boot_file = own.join("boot_id");
    std::fs::write(&machine_file, format!("{machine}\n")).unwrap();
    std::fs::write(&boot_file, format!("{boot}\n")).unwrap();
    let mut cmd = Command::new(bin("brindled"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BRINDLE_LOG", "info")
        .env("BRINDLE_MACHINE_ID_FILE", &machine_file)
        .env("BRINDLE_BOOT_ID_FILE", &boot_file)
        .args(["--node", NODE, "--node-ip", ip])
        .args(["--etcd-endpoints", &etcd.endpoint])
        .args(["--firewall", "false"])
        .arg("--docker-plugin-dir")
        .arg(own.join("plugins"))
        .arg("--api-socket")
        .arg(own.join("brindled.sock"));
    Proc::spawn(&format!("brindled {tag}"), cmd, &own.join("brindled.log"))
}

/// Waits until brindled serves its API socket (it does so only once the node name
/// is its own), and checks it is still running a moment later.
fn serving(p: &mut Proc, dir: &Path, tag: &str) {
    let sock = dir.join(tag).join("brindled.sock");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !sock.exists() {
        assert!(
            p.running() && Instant::now() < deadline,
            "{} did not start:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(p.running(), "{} stopped:\n{}", p.name, p.log_text());
}

/// Waits until brindled exits by itself; returns its log.
fn refused(p: &mut Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    while p.running() {
        assert!(
            Instant::now() < deadline,
            "{} should have refused to start:\n{}",
            p.name,
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p.log_text()
}

fn node_ip(etcd: &Etcd) -> Option<String> {
    let out = brindle(&etcd.endpoint, "cli")
        .args(["node", "list", "-o", "json"])
        .output()
        .expect("brindle node list");
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == NODE)
        .map(|n| n["ip"].as_str().unwrap().to_string())
}

#[test]
fn a_second_host_with_the_same_node_name_refuses_to_start() {
    // brindled turns on forwarding in the namespace it runs in.
    let _forwarding = is_root().then(RootIpForward::hold);
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let vm_a = "0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a0a";
    let vm_b = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

    let mut a = brindled(&etcd, dir.path(), "a", vm_a, "boot-a1", "192.0.2.10");
    serving(&mut a, dir.path(), "a");

    // The clone: same name, another machine. It stops, naming the node, the other
    // host and the way out; the record keeps the first host's address.
    let mut b = brindled(&etcd, dir.path(), "b", vm_b, "boot-b1", "192.0.2.11");
    let log = refused(&mut b);
    for needle in [
        "node name \"clone\" is already used by another machine",
        vm_a,
        "192.0.2.10",
        "brindle node rm clone",
    ] {
        assert!(log.contains(needle), "log lacks {needle:?}:\n{log}");
    }
    assert_eq!(node_ip(&etcd).as_deref(), Some("192.0.2.10"));
    assert!(a.running(), "{}", a.log_text());

    // The first machine reboots: same machine-id, a new boot id.
    a.stop();
    let mut a2 = brindled(&etcd, dir.path(), "a2", vm_a, "boot-a2", "192.0.2.10");
    serving(&mut a2, dir.path(), "a2");

    // It is retired for good: an operator removes its node, and the other host's
    // brindled may use the name.
    a2.stop();
    let mut b = brindled(&etcd, dir.path(), "b", vm_b, "boot-b1", "192.0.2.11");
    refused(&mut b);
    let out = brindle(&etcd.endpoint, "cli")
        .args(["node", "rm", NODE])
        .output()
        .expect("brindle node rm");
    assert!(out.status.success(), "{out:?}");
    let mut b = brindled(&etcd, dir.path(), "b", vm_b, "boot-b1", "192.0.2.11");
    serving(&mut b, dir.path(), "b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_ip(&etcd).as_deref() != Some("192.0.2.11") {
        assert!(Instant::now() < deadline, "{}", b.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}
