//! IPAM and the `brindle` CLI against a real etcd.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use brindle_ipam::Keys;
use brindle_tests::bins::{bin, brindle};
use brindle_tests::etcd::Etcd;
use serde_json::Value;

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run brindle")
}

/// Run and expect success; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run and expect failure with one sentence on stderr containing every needle.
fn fails(cmd: &mut Command, needles: &[&str]) -> String {
    let out = run(cmd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{cmd:?} should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "expected one line on stderr: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    assert!(
        out.stdout.is_empty(),
        "an error must print nothing on stdout"
    );
    stderr
}

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&ok(cmd.arg("-o").arg("json"))).expect("valid JSON")
}

fn cli(etcd: &Etcd, node: &str, args: &[&str]) -> Command {
    let mut c = brindle(&etcd.endpoint, node);
    c.args(args);
    c
}

#[test]
fn pools_fixed_and_dynamic_addresses_for_two_nodes() {
    let etcd = Etcd::start();
    ok(&mut cli(
        &etcd,
        "n1",
        &[
            "pool",
            "add",
            "office",
            "--cidr",
            "10.90.0.0/16",
            "--block-size",
            "24",
        ],
    ));
    let fixed = ok(&mut cli(
        &etcd,
        "n1",
        &[
            "ipam",
            "alloc",
            "--handle",
            "db",
            "--ip",
            "10.90.7.7",
            "--attr",
            "container=db1",
        ],
    ));
    assert_eq!(fixed, "10.90.7.7\n", "alloc prints the bare address");
    let dyn1: Ipv4Addr = ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "alloc", "--handle", "web1"],
    ))
    .trim()
    .parse()
    .unwrap();
    let dyn2: Ipv4Addr = ok(&mut cli(
        &etcd,
        "n2",
        &["ipam", "alloc", "--handle", "web2"],
    ))
    .trim()
    .parse()
    .unwrap();
    assert_ne!(dyn1, dyn2);
    // n1 fills the block its fixed address claimed; n2 claims a block of its own.
    assert_eq!(dyn1.octets()[2], 7);
    assert_ne!(dyn2.octets()[2], 7);
    // Same handle, another process: same address.
    let again = ok(&mut cli(
        &etcd,
        "n2",
        &["ipam", "alloc", "--handle", "web2"],
    ));
    assert_eq!(again.trim(), dyn2.to_string());

    let show = json(&mut cli(&etcd, "n1", &["ipam", "show"]));
    let pool = &show["pools"][0];
    assert_eq!(pool["name"], "office");
    assert_eq!(pool["cidr"], "10.90.0.0/16");
    assert_eq!(pool["block_size"], 24);
    assert_eq!(pool["size"], 65534);
    assert_eq!(pool["allocated"], 3);
    assert_eq!(pool["blocks"].as_array().unwrap().len(), 2);

    let one = json(&mut cli(
        &etcd,
        "n1",
        &["ipam", "show", "--ip", "10.90.7.7"],
    ));
    assert_eq!(one["ip"], "10.90.7.7");
    assert_eq!(one["allocated"], true);
    assert_eq!(one["handle"], "db");
    assert_eq!(one["attributes"]["container"], "db1");
    assert_eq!(one["block"], "10.90.7.0/24");
    assert_eq!(one["node"], "n1");
    let free = json(&mut cli(
        &etcd,
        "n1",
        &["ipam", "show", "--ip", "10.90.200.1"],
    ));
    assert_eq!(free["allocated"], false);
    assert_eq!(free["handle"], Value::Null);

    let table = ok(&mut cli(&etcd, "n1", &["ipam", "show", "--blocks"]));
    assert!(
        table.contains("10.90.7.0/24") && table.contains("n2"),
        "{table}"
    );
    assert!(json(&mut cli(&etcd, "n1", &["ipam", "check"]))["clean"]
        .as_bool()
        .unwrap());

    ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "release", "--handle", "db"],
    ));
    ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "release", "--handle", "db"],
    ));
    let released = json(&mut cli(
        &etcd,
        "n1",
        &["ipam", "release", "--ip", &dyn1.to_string()],
    ));
    assert_eq!(released["handle"], "web1");
    ok(&mut cli(
        &etcd,
        "n2",
        &["ipam", "release", "--handle", "web2"],
    ));
    assert!(
        etcd.keys(&Keys::default_prefix().ipam()).is_empty(),
        "left: {:?}",
        etcd.keys(&Keys::default_prefix().ipam())
    );
    ok(&mut cli(&etcd, "n1", &["pool", "rm", "office"]));
    assert!(etcd.keys(&Keys::default_prefix().pools()).is_empty());
}

#[test]
fn bad_input_gets_one_clear_sentence_and_writes_nothing() {
    let etcd = Etcd::start();
    ok(&mut cli(
        &etcd,
        "n1",
        &[
            "pool",
            "add",
            "p1",
            "--cidr",
            "10.91.0.0/28",
            "--block-size",
            "29",
        ],
    ));
    ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "alloc", "--handle", "holder", "--ip", "10.91.0.5"],
    ));
    let before = etcd.etcdctl(&["get", "--prefix", "/brindle"]);

    type Case<'a> = (&'a [&'a str], &'a [&'a str]);
    let cases: &[Case] = &[
        (
            &["pool", "add", "x", "--cidr", "10.92.0.0"],
            &["\"10.92.0.0\"", "CIDR"],
        ),
        (
            &["pool", "add", "x", "--cidr", "10.92.0.0/40"],
            &["10.92.0.0/40", "0 to 32"],
        ),
        (
            &["pool", "add", "x", "--cidr", "10.92.0.9/24"],
            &["10.92.0.9/24", "10.92.0.0/24"],
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.92.0.0/24",
                "--block-size",
                "22",
            ],
            &["/22", "/24 to /32"],
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.92.0.0/16",
                "--block-size",
                "19",
            ],
            &["/19", "/20 to /32"],
        ),
        (
            &[
                "pool",
                "add",
                "x",
                "--cidr",
                "10.91.0.8/29",
                "--block-size",
                "29",
            ],
            &["10.91.0.8/29", "overlaps", "p1"],
        ),
        (
            &["pool", "add", "p1", "--cidr", "10.93.0.0/24"],
            &["p1", "already exists"],
        ),
        (
            &["ipam", "alloc", "--handle", "h", "--ip", "10.99.1.1"],
            &["10.99.1.1", "not inside any pool", "p1"],
        ),
        (
            &["ipam", "alloc", "--handle", "h", "--ip", "10.91.0.5"],
            &["10.91.0.5", "holder"],
        ),
        (
            &["ipam", "alloc", "--handle", "h", "--pool", "nope"],
            &["\"nope\"", "p1"],
        ),
        (
            &["ipam", "alloc", "--handle", "bad handle"],
            &["\"bad handle\""],
        ),
        (
            &["ipam", "alloc", "--handle", "h", "--attr", "novalue"],
            &["\"novalue\"", "KEY=VALUE"],
        ),
        (&["pool", "rm", "p1"], &["p1", "1 allocated", "--force"]),
        (&["pool", "rm", "ghost"], &["\"ghost\"", "p1"]),
    ];
    for (args, needles) in cases {
        fails(&mut cli(&etcd, "n1", args), needles);
        assert_eq!(
            etcd.etcdctl(&["get", "--prefix", "/brindle"]),
            before,
            "{args:?} changed etcd"
        );
    }

    // Exhaustion names the pool and its size; the failed request leaves no handle.
    for i in 0..13 {
        ok(&mut cli(
            &etcd,
            "n1",
            &["ipam", "alloc", "--handle", &format!("f{i}")],
        ));
    }
    fails(
        &mut cli(&etcd, "n1", &["ipam", "alloc", "--handle", "one-too-many"]),
        &["p1", "exhausted", "14 usable"],
    );
    assert!(etcd
        .keys(&Keys::default_prefix().handle("one-too-many"))
        .is_empty());
    assert!(json(&mut cli(&etcd, "n1", &["ipam", "check"]))["clean"]
        .as_bool()
        .unwrap());
}

#[test]
fn unreachable_etcd_fails_within_five_seconds_naming_the_endpoint() {
    // A closed port: refused at once.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let endpoint = format!("http://127.0.0.1:{closed}");
    let mut c = brindle(&endpoint, "n1");
    fails(c.args(["pool", "list"]), &[&endpoint, "cannot reach etcd"]);

    // A listener that accepts and never answers: only the deadline ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    let start = Instant::now();
    let mut c = brindle(&endpoint, "n1");
    fails(
        c.args(["ipam", "alloc", "--handle", "x"]),
        &[&endpoint, "within 5s"],
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(7), "took {took:?}");
    drop(silent);
}

#[test]
fn tls_client_certificates_and_password_auth() {
    let etcd = Etcd::start_tls();
    let tls = etcd.tls.clone().unwrap();
    let with_tls = |args: &[&str]| {
        let mut c = cli(&etcd, "n1", args);
        c.arg("--etcd-ca-file")
            .arg(&tls.ca)
            .arg("--etcd-cert-file")
            .arg(&tls.client_cert)
            .arg("--etcd-key-file")
            .arg(&tls.client_key);
        c
    };
    ok(&mut with_tls(&[
        "pool",
        "add",
        "secure",
        "--cidr",
        "10.94.0.0/24",
    ]));
    assert_eq!(
        ok(&mut with_tls(&[
            "ipam",
            "alloc",
            "--handle",
            "t",
            "--ip",
            "10.94.0.9"
        ]))
        .trim(),
        "10.94.0.9"
    );
    // Without the client certificate the server refuses us: a clear error, not a hang.
    let mut bare = cli(&etcd, "n1", &["pool", "list"]);
    bare.arg("--etcd-ca-file").arg(&tls.ca);
    fails(&mut bare, &[&etcd.endpoint]);
    // A CA file that does not exist is named.
    let mut missing = cli(&etcd, "n1", &["pool", "list"]);
    missing.arg("--etcd-ca-file").arg("/nonexistent/ca.pem");
    fails(&mut missing, &["/nonexistent/ca.pem"]);

    // Username/password (on a plain etcd).
    let plain = Etcd::start();
    plain.etcdctl(&["user", "add", "root:s3cret"]);
    plain.etcdctl(&["auth", "enable"]);
    let mut good = cli(
        &plain,
        "n1",
        &["pool", "add", "authd", "--cidr", "10.95.0.0/24"],
    );
    good.args(["--etcd-username", "root", "--etcd-password", "s3cret"]);
    ok(&mut good);
    let mut env_auth = cli(&plain, "n1", &["pool", "list", "-o", "json"]);
    env_auth
        .env("BRINDLE_ETCD_USERNAME", "root")
        .env("BRINDLE_ETCD_PASSWORD", "s3cret");
    assert!(ok(&mut env_auth).contains("10.95.0.0/24"));
    let mut wrong = cli(&plain, "n1", &["pool", "list"]);
    wrong.args(["--etcd-username", "root", "--etcd-password", "nope"]);
    fails(&mut wrong, &["authentication failed"]);
}

/// `--etcd-password-file` (flag and `BRINDLE_ETCD_PASSWORD_FILE`) against etcd with
/// auth; bad files are one sentence naming the path; and a running brindled given the
/// file has the password nowhere `ps` looks (`/proc/PID/cmdline`, `/proc/PID/environ`)
/// nor in its log.
#[test]
fn password_file_honoured_and_absent_from_ps() {
    const PW: &str = "pf-S3cret-q7";
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
    let with_file = |args: &[&str], path: &str| {
        let mut c = cli(&etcd, "n1", args);
        c.args(["--etcd-username", "root", "--etcd-password-file", path]);
        c
    };
    ok(&mut with_file(
        &["pool", "add", "pwfile", "--cidr", "10.97.0.0/24"],
        &file,
    ));
    let mut from_env = cli(&etcd, "n1", &["pool", "list", "-o", "json"]);
    from_env
        .env("BRINDLE_ETCD_USERNAME", "root")
        .env("BRINDLE_ETCD_PASSWORD_FILE", &file);
    assert!(ok(&mut from_env).contains("10.97.0.0/24"));
    // The file's content is what counts: another one is refused by etcd.
    let wrong = write("wrong", "nope\n");
    fails(
        &mut with_file(&["pool", "list"], &wrong),
        &["authentication failed"],
    );
    let missing = dir.path().join("missing").display().to_string();
    fails(
        &mut with_file(&["pool", "list"], &missing),
        &["cannot read password file", &missing],
    );
    let empty = write("empty", "\n");
    fails(
        &mut with_file(&["pool", "list"], &empty),
        &["password file", &empty, "is empty"],
    );
    let mut both = with_file(&["pool", "list"], &file);
    both.args(["--etcd-password", PW]);
    let out = run(&mut both);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");

    if !brindle_tests::netns::is_root() {
        eprintln!("skipping the brindled part: needs root");
        return;
    }
    // brindled on the root namespace (as the CNI fast-path tests run it): firewall
    // left alone, ip_forward held and restored by the guard.
    let _forward = brindle_tests::netns::RootIpForward::hold();
    let log_path = dir.path().join("brindled.log");
    let mut daemon = Command::new(bin("brindled"))
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BRINDLE_LOG", "debug")
        .env("BRINDLE_ETCD_USERNAME", "root")
        .arg("--etcd-password-file")
        .arg(&file)
        .arg("--etcd-endpoints")
        .arg(&etcd.endpoint)
        .args(["--node", "pwnode", "--node-ip", "192.0.2.77"])
        .arg("--api-socket")
        .arg(dir.path().join("brindled.sock"))
        .arg("--docker-plugin-dir")
        .arg(dir.path().join("plugins"))
        .args(["--firewall", "false"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("start brindled");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // Up and logged in: its node record appears.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("brindled exited with {status}:\n{}", log());
        }
        let nodes = run(&mut with_file(&["node", "list", "-o", "json"], &file));
        if String::from_utf8_lossy(&nodes.stdout).contains("pwnode") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "brindled did not register:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = daemon.id();
    let proc_file = |name: &str| {
        let raw = std::fs::read(format!("/proc/{pid}/{name}")).expect("read /proc");
        String::from_utf8_lossy(&raw).replace('\0', " ")
    };
    let cmdline = proc_file("cmdline");
    let environ = proc_file("environ");
    let ps = Command::new("ps")
        .args(["-ww", "-o", "args=", "-p", &pid.to_string()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(ps.contains("brindled"), "ps: {ps}");
    assert!(
        cmdline.contains(&format!("--etcd-password-file {file}")),
        "{cmdline}"
    );
    assert!(environ.contains("BRINDLE_ETCD_USERNAME=root"), "{environ}");
    for (what, text) in [
        ("cmdline", &cmdline),
        ("environ", &environ),
        ("ps", &ps),
        ("log", &log()),
    ] {
        assert!(
            !text.contains(PW),
            "the password is in brindled's {what}: {text}"
        );
    }
}

fn spawn_nodes(etcd: &Etcd, mode: &str, nodes: usize, count: usize) -> Vec<(String, Child)> {
    (0..nodes)
        .map(|n| {
            let node = format!("node-{n}");
            let child = Command::new(bin("ipam-node"))
                .args([&etcd.endpoint, &node, mode, &count.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ipam-node");
            (node, child)
        })
        .collect()
}

fn collect(children: Vec<(String, Child)>) -> Vec<(String, Vec<Ipv4Addr>)> {
    children
        .into_iter()
        .map(|(node, child)| {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{node}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ips = String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            (node, ips)
        })
        .collect()
}

#[test]
fn eight_processes_as_eight_nodes_never_share_an_address() {
    let etcd = Etcd::start();
    // 16 blocks of 16 for 8 nodes allocating 30 each: claims race, blocks fill, and
    // nodes end up borrowing from each other.
    ok(&mut cli(
        &etcd,
        "admin",
        &[
            "pool",
            "add",
            "small",
            "--cidr",
            "10.96.0.0/24",
            "--block-size",
            "28",
        ],
    ));
    let results = collect(spawn_nodes(&etcd, "alloc", 8, 30));
    let pool: ipnetwork::Ipv4Network = "10.96.0.0/24".parse().unwrap();
    let mut seen = HashSet::new();
    for (node, ips) in &results {
        assert_eq!(ips.len(), 30, "{node}");
        for ip in ips {
            assert!(pool.contains(*ip), "{ip} outside the pool");
            assert!(
                *ip != pool.network() && *ip != pool.broadcast(),
                "{ip} is a pool edge"
            );
            assert!(seen.insert(*ip), "{ip} handed out twice");
        }
    }
    assert_eq!(seen.len(), 240);
    let check = json(&mut cli(&etcd, "admin", &["ipam", "check"]));
    assert_eq!(check["clean"], true, "{check}");
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    assert_eq!(check["checked"]["allocations"], 240);
    // Every holder is recorded against its own node.
    for (node, ips) in &results {
        let one = json(&mut cli(
            &etcd,
            "admin",
            &["ipam", "show", "--ip", &ips[0].to_string()],
        ));
        assert_eq!(one["node"], node.as_str());
    }

    let released = collect(spawn_nodes(&etcd, "release", 8, 30));
    let mut freed: Vec<Ipv4Addr> = released.into_iter().flat_map(|(_, ips)| ips).collect();
    freed.sort();
    let mut all: Vec<Ipv4Addr> = seen.into_iter().collect();
    all.sort();
    assert_eq!(freed, all, "each address released exactly once");
    let left = etcd.keys(&Keys::default_prefix().ipam());
    assert!(left.is_empty(), "left behind: {left:?}");
    assert_eq!(
        json(&mut cli(&etcd, "admin", &["ipam", "show"]))["pools"][0]["allocated"],
        0
    );
}

/// A `pool rm` that died half-way (etcd failing, the CLI killed) left its pool marked
/// for removal: `pool list` says so, allocating names the way out, and `pool rm` run
/// again gives the pool back (it still has addresses) or, with --force, finishes.
#[test]
fn a_pool_left_marked_by_an_interrupted_rm_is_explained_and_recovered() {
    let etcd = Etcd::start();
    ok(&mut cli(
        &etcd,
        "n1",
        &["pool", "add", "p", "--cidr", "10.94.0.0/24"],
    ));
    ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "alloc", "--handle", "h1", "--pool", "p"],
    ));
    // What the dead `pool rm` had written first, ten minutes ago.
    let key = Keys::default_prefix().pool("p");
    let mark = || {
        let raw = etcd.etcdctl(&["get", &key, "--print-value-only"]);
        let mut pool: Value = serde_json::from_str(raw.trim()).expect("pool JSON");
        let ten_minutes_ago = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 600;
        pool["deleting"] = true.into();
        pool["deleting_since"] = ten_minutes_ago.into();
        etcd.etcdctl(&["put", &key, &pool.to_string()]);
    };
    mark();

    let out = run(&mut cli(&etcd, "n1", &["pool", "list"]));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("deleting (10m"), "{stdout}");
    assert!(
        stderr.contains("pool p was marked for removal 10m")
            && stderr.contains("brindle pool rm p"),
        "{stderr}"
    );
    let listed = json(&mut cli(&etcd, "n1", &["pool", "list"]));
    assert_eq!(listed["pools"][0]["deleting"], true);
    fails(
        &mut cli(
            &etcd,
            "n1",
            &["ipam", "alloc", "--handle", "h2", "--pool", "p"],
        ),
        &["pool p is being removed", "run `brindle pool rm p` again"],
    );

    // Without --force: the pool still has an address, so it is given back.
    fails(
        &mut cli(&etcd, "n1", &["pool", "rm", "p"]),
        &["pool p still has 1 allocated addresses"],
    );
    ok(&mut cli(
        &etcd,
        "n1",
        &["ipam", "alloc", "--handle", "h2", "--pool", "p"],
    ));
    let listed = json(&mut cli(&etcd, "n1", &["pool", "list"]));
    assert!(listed["pools"][0].get("deleting").is_none(), "{listed}");

    // With --force the interrupted removal is run to its end.
    mark();
    let removed = json(&mut cli(&etcd, "n1", &["pool", "rm", "p", "--force"]));
    assert_eq!(removed["released"], 2);
    assert!(etcd.keys(&Keys::default_prefix().ipam()).is_empty());
    assert!(etcd.keys(&Keys::default_prefix().pools()).is_empty());
}

/// Records another tool (or an older version) wrote: one that is not JSON, one that
/// breaks a rule of its type, one larger than any record brindle writes. Every CLI
/// command reading them fails with one line naming the key, never a panic.
#[test]
fn corrupted_and_oversized_records_give_errors_naming_the_key() {
    // Room for a value above brindle's limit (etcd's own default is that limit).
    let etcd = Etcd::start_with_flags(&["--max-request-bytes", "4194304"]);
    ok(&mut cli(
        &etcd,
        "n1",
        &["pool", "add", "p", "--cidr", "10.95.0.0/24"],
    ));
    let keys = Keys::default_prefix();
    let pool_key = keys.pool("p");
    let pool = etcd.etcdctl(&["get", &pool_key, "--print-value-only"]);

    etcd.etcdctl(&["put", &pool_key, "{\"name\":\"p\",\"cidr\":"]);
    fails(
        &mut cli(&etcd, "n1", &["pool", "list"]),
        &[&format!("stored record {pool_key} is not a valid record")],
    );

    // Valid JSON, but blocks of /40: allocating used to panic on it.
    let bad = r#"{"name":"p","cidr":"10.95.0.0/24","block_size":40}"#;
    etcd.etcdctl(&["put", &pool_key, bad]);
    fails(
        &mut cli(
            &etcd,
            "n1",
            &["ipam", "alloc", "--handle", "h1", "--ip", "10.95.0.5"],
        ),
        &[&pool_key, "block size /40"],
    );
    etcd.etcdctl(&["put", &pool_key, pool.trim()]);

    // 2 MiB at a block key: refused before parsing, naming the key and the size.
    let block_key = keys.block("10.95.0.0/26".parse().unwrap());
    let huge = format!(
        "{{\"cidr\":\"10.95.0.0/26\",\"pool\":\"p\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    write_raw(&etcd, &block_key, huge.as_bytes());
    let size = huge.len().to_string();
    for args in [&["ipam", "show", "--blocks"][..], &["ipam", "check"]] {
        fails(
            &mut cli(&etcd, "n1", args),
            &[&block_key, &format!("is {size} bytes long"), "1572864"],
        );
    }
    fails(
        &mut cli(
            &etcd,
            "n1",
            &["ipam", "alloc", "--handle", "h1", "--ip", "10.95.0.5"],
        ),
        &[&block_key, &size],
    );
}

/// Endpoint and BGP records another tool (or a hand with etcdctl) wrote: each command
/// reading one fails with one line naming its key. Before the checks, a record at the
/// key of another node or name was taken as it came (listed under the wrong node, a
/// node rendered under another's name), and bad addresses went on to the kernel or BIRD.
#[test]
fn corrupted_endpoint_and_bgp_records_give_errors_naming_the_key() {
    let etcd = Etcd::start();
    let keys = Keys::default_prefix();
    let brindle = |args: &[&str]| cli(&etcd, "n1", args);
    ok(&mut brindle(&["node", "set", "n1", "--ip", "10.96.0.1"]));
    ok(&mut brindle(&[
        "bgp",
        "peer",
        "add",
        "tor",
        "--peer-ip",
        "10.96.0.254",
        "--as",
        "65000",
    ]));
    ok(&mut brindle(&["bgp", "set", "--as", "65010"]));

    // Endpoints: one at the key of another node's endpoint, one with a host veth name
    // the kernel cannot have.
    let ep_key = keys.endpoint("n1", "c1+eth0");
    let endpoint = |node: &str, ifname: &str| {
        serde_json::json!({
            "id": "c1+eth0", "node": node, "orchestrator": "cni", "container_id": "c1",
            "network": "net", "ip": "10.96.1.5", "mac": null, "host_ifname": ifname,
            "handle": "c1+eth0"
        })
        .to_string()
    };
    etcd.etcdctl(&["put", &ep_key, &endpoint("n1", "brlc1")]);
    ok(&mut brindle(&["endpoints"]));
    for (value, why) in [
        (
            endpoint("n2", "brlc1"),
            "is not stored at the key of its node and id",
        ),
        (
            endpoint("n1", "brl-much-too-long-a-name"),
            "is no interface name",
        ),
    ] {
        etcd.etcdctl(&["put", &ep_key, &value]);
        for args in [&["endpoints"][..], &["endpoints", "--node", "n1"]] {
            fails(&mut brindle(args), &[&ep_key, why]);
        }
    }
    etcd.etcdctl(&["del", &ep_key]);

    // A node record naming another node: listed, routed and rendered under that name.
    let node_key = keys.node("n1");
    let node = etcd.etcdctl(&["get", &node_key, "--print-value-only"]);
    etcd.etcdctl(&["put", &node_key, r#"{"name":"n9","ip":"10.96.0.1"}"#]);
    for args in [&["node", "list"][..], &["bgp", "render"], &["routes"]] {
        fails(
            &mut brindle(args),
            &[
                &node_key,
                "node \"n9\" is not stored at the key of its name",
            ],
        );
    }
    etcd.etcdctl(&["put", &node_key, r#"{"name":"n1","ip":"0.0.0.0"}"#]);
    fails(&mut brindle(&["node", "list"]), &[&node_key, "0.0.0.0"]);
    etcd.etcdctl(&["put", &node_key, node.trim()]);

    // A peer without a unicast address, then the global settings out of range.
    let peer_key = keys.bgp_peer("tor");
    etcd.etcdctl(&[
        "put",
        &peer_key,
        r#"{"name":"tor","peer_ip":"255.255.255.255","as_num":65000}"#,
    ]);
    for args in [&["bgp", "peer", "list"][..], &["bgp", "render"]] {
        fails(&mut brindle(args), &[&peer_key, "broadcast"]);
    }
    etcd.etcdctl(&["del", &peer_key]);
    let global_key = keys.bgp_global();
    etcd.etcdctl(&["put", &global_key, r#"{"as_num":65010,"restart_time":0}"#]);
    for args in [&["bgp", "show"][..], &["bgp", "render"]] {
        fails(&mut brindle(args), &[&global_key, "restart_time"]);
    }
    etcd.etcdctl(&["put", &global_key, r#"{"as_num":65010}"#]);
    ok(&mut brindle(&["bgp", "render"]));
    ok(&mut brindle(&["node", "list"]));
}

/// Store `value` at `key` as it is, through the raw client: brindle's store refuses
/// to write a value larger than a record may be (etcdctl takes a value up to 128 KiB
/// as argument).
fn write_raw(etcd: &Etcd, key: &str, value: &[u8]) {
    use brindle_ipam::{EtcdConfig, EtcdStore};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = EtcdStore::connect(&EtcdConfig {
            endpoints: vec![etcd.endpoint.clone()],
            ..EtcdConfig::default()
        })
        .await
        .expect("connect");
        let mut client = store.client().await.expect("an etcd member");
        client
            .put(key, value.to_vec(), None)
            .await
            .expect("write the raw value");
    });
}
