use super::*;

fn env(vars: &[(&str, &str)]) -> CniEnv {
    CniEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn the_direct_paths_node_lock_defaults_per_node_and_can_be_moved_or_turned_off() {
    let e = env(&[("BRINDLE_NODE", "n7")]);
    let conf =
        |extra: &str| format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"brindle"{extra}}}"#);
    let lock = |extra: &str| {
        NetConf::parse(conf(extra).as_bytes(), &e)
            .unwrap()
            .settings
            .ipam_lock
    };
    assert_eq!(lock(""), Some("/run/brindle/ipam-n7.lock".into()));
    assert_eq!(
        lock(r#","ipam_lock_file":"/var/lock/b.lock""#),
        Some("/var/lock/b.lock".into())
    );
    assert_eq!(lock(r#","ipam_lock_file":"none""#), None);
    let relative = conf(r#","ipam_lock_file":"run/b.lock""#);
    let err = NetConf::parse(relative.as_bytes(), &e).unwrap_err();
    assert_eq!(err.code, 7);
    assert!(
        err.msg.contains("\"run/b.lock\"") && err.msg.contains("absolute"),
        "{err}"
    );
    let from_env = env(&[("BRINDLE_NODE", "n7"), ("BRINDLE_IPAM_LOCK_FILE", "none")]);
    let c = NetConf::parse(conf("").as_bytes(), &from_env).unwrap();
    assert_eq!(c.settings.ipam_lock, None);
}

#[test]
fn cni_args_rules() {
    assert_eq!(CniArgs::parse(None).unwrap(), CniArgs::default());
    let a = CniArgs::parse(Some("IgnoreUnknown=1;IP=10.0.0.5;FOO=bar")).unwrap();
    assert_eq!(a.ips, vec!["10.0.0.5"]);
    let e = CniArgs::parse(Some("IP=10.0.0.5;FOO=bar")).unwrap_err();
    assert_eq!(e.code, code::INVALID_ENV);
    assert!(e.msg.contains("FOO=bar"), "{e}");
    let k8s = CniArgs::parse(Some("K8S_POD_NAME=x;IP=10.0.0.6/24")).unwrap();
    assert_eq!(k8s.ips, vec!["10.0.0.6/24"]);
    assert_eq!(CniArgs::parse(Some("junk")).unwrap_err().code, 4);
}

#[test]
fn env_attachment_checks() {
    let e = env(&[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")]);
    let err = e.attachment(Command::Add).unwrap_err();
    assert_eq!(err.code, 4);
    assert_eq!(
        err.msg,
        "required env variables [CNI_CONTAINERID CNI_NETNS] missing"
    );
    let del = env(&[("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0")]);
    let (a, ns) = del.attachment(Command::Del).unwrap();
    assert_eq!(a.container_id, "c1");
    assert_eq!(ns, None);
    let bad = env(&[("CNI_CONTAINERID", "-x"), ("CNI_IFNAME", "eth0")]);
    assert_eq!(bad.attachment(Command::Del).unwrap_err().code, 4);
    let long = env(&[("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0123456789abc")]);
    assert_eq!(long.attachment(Command::Del).unwrap_err().code, 4);
}

#[test]
fn non_utf8_env_values_are_errors_naming_the_variable() {
    use std::os::unix::ffi::OsStringExt;
    let raw = |k: &[u8], v: &[u8]| {
        (
            OsString::from_vec(k.to_vec()),
            OsString::from_vec(v.to_vec()),
        )
    };
    let e = CniEnv::from_vars_os([
        raw(b"CNI_COMMAND", b"DEL"),
        raw(b"CNI_CONTAINERID", b"c\xff1"),
        raw(b"CNI_IFNAME", b"eth0"),
        raw(b"CNI_\xfe", b"ignored"),
    ]);
    assert_eq!(e.command.as_deref(), Some("DEL"));
    let err = e.attachment(Command::Del).unwrap_err();
    assert_eq!(err.code, 4);
    assert!(err.msg.contains("invalid CNI_CONTAINERID"), "{err}");
}

#[test]
fn modes_and_settings() {
    let e = env(&[("BRINDLE_NODE", "envnode"), ("BRINDLE_ETCD_PREFIX", "/x")]);
    let main = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","etcd_endpoints":"http://a:1,http://b:2","ipam":{"type":"brindle-ipam","pool":"p"}}"#;
    let c = NetConf::parse(main, &e).unwrap();
    assert_eq!(c.mode, Mode::Main);
    assert_eq!(c.settings.etcd.endpoints, vec!["http://a:1", "http://b:2"]);
    assert_eq!(c.settings.node, "envnode");
    assert_eq!(c.settings.prefix, "/x");
    assert_eq!(c.pool.as_deref(), Some("p"));
    let ipam = br#"{"cniVersion":"1.1.0","name":"n","type":"ptp","node":"ignored","ipam":{"type":"brindle-ipam","node":"n2","etcd_endpoints":["http://c:3"],"etcd_ca_cert_file":"/ca"}}"#;
    let c = NetConf::parse(ipam, &e).unwrap();
    assert_eq!(c.mode, Mode::Ipam);
    assert_eq!(c.settings.node, "n2");
    assert_eq!(c.settings.etcd.ca_file.as_deref(), Some("/ca"));
    assert_eq!(c.ipam_gateway, Ipv4Addr::new(169, 254, 1, 1));
    let other =
        br#"{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"host-local"}}"#;
    assert_eq!(NetConf::parse(other, &e).unwrap_err().code, 7);
    let bad_ipam =
        br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","ipam":{"type":"host-local"}}"#;
    assert_eq!(NetConf::parse(bad_ipam, &e).unwrap_err().code, 2);
    assert_eq!(NetConf::parse(b"{nope", &e).unwrap_err().code, 6);
    let badver = br#"{"cniVersion":"9.9.9","name":"n","type":"brindle"}"#;
    assert_eq!(NetConf::parse(badver, &e).unwrap_err().code, 1);
    let badtype = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","mtu":"x"}"#;
    assert_eq!(NetConf::parse(badtype, &e).unwrap_err().code, 7);
    let badep =
        br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","etcd_endpoints":"127.0.0.1:2379"}"#;
    assert_eq!(NetConf::parse(badep, &e).unwrap_err().code, 7);
}

#[test]
fn static_ips_from_all_channels() {
    let e = CniEnv::default();
    let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","runtimeConfig":{"ips":["10.0.0.7/24"]},"args":{"cni":{"ips":["10.0.0.7"]}}}"#;
    let c = NetConf::parse(conf, &e).unwrap();
    let none = CniArgs::default();
    assert_eq!(
        c.static_ip(&none).unwrap(),
        Some(Ipv4Addr::new(10, 0, 0, 7))
    );
    let other = CniArgs {
        ips: vec!["10.0.0.8".into()],
    };
    let err = c.static_ip(&other).unwrap_err();
    assert!(err.msg.contains("10.0.0.8 from CNI_ARGS IP"), "{err}");
    let v6 = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","runtimeConfig":{"ips":["fd00::5/64"]}}"#;
    let c = NetConf::parse(v6, &e).unwrap();
    assert_eq!(c.static_ip(&none).unwrap_err().code, 2);
    let dynamic = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle"}"#;
    let c = NetConf::parse(dynamic, &e).unwrap();
    assert_eq!(c.static_ip(&none).unwrap(), None);
}

#[test]
fn allow_from_list_or_string_and_errors_name_the_value() {
    let e = CniEnv::default();
    let nets =
        |v: Vec<&str>| -> Vec<Ipv4Network> { v.into_iter().map(|n| n.parse().unwrap()).collect() };
    let list = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","brindle.allow-from":["192.0.2.0/24","198.51.100.7/32"]}"#;
    assert_eq!(
        NetConf::parse(list, &e).unwrap().allow_from,
        nets(vec!["192.0.2.0/24", "198.51.100.7/32"])
    );
    let one = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","brindle.allow-from":"192.0.2.0/24, 198.51.100.7/32"}"#;
    assert_eq!(
        NetConf::parse(one, &e).unwrap().allow_from,
        nets(vec!["192.0.2.0/24", "198.51.100.7/32"])
    );
    let in_ipam = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle","ipam":{"type":"brindle-ipam","brindle.allow-from":"10.0.0.0/8"}}"#;
    assert_eq!(
        NetConf::parse(in_ipam, &e).unwrap().allow_from,
        nets(vec!["10.0.0.0/8"])
    );
    let absent = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle"}"#;
    assert!(NetConf::parse(absent, &e).unwrap().allow_from.is_empty());
    for (conf, needle) in [
        (
            r#""brindle.allow-from":["192.0.2.0/24","office"]"#,
            r#"invalid brindle.allow-from entry "office": expected an IPv4 CIDR"#,
        ),
        (
            r#""brindle.allow-from":"192.0.2.1/24""#,
            r#"invalid brindle.allow-from entry "192.0.2.1/24": host bits are set"#,
        ),
        (
            r#""brindle.allow-from":[24]"#,
            "invalid brindle.allow-from entry 24: expected a string",
        ),
        (
            r#""brindle.allow-from":true"#,
            "invalid brindle.allow-from value true: expected a list of CIDR strings",
        ),
    ] {
        let doc = format!(r#"{{"cniVersion":"1.0.0","name":"n","type":"brindle",{conf}}}"#);
        let err = NetConf::parse(doc.as_bytes(), &e).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG, "{conf}: {err}");
        assert!(err.msg.starts_with(needle), "{conf}: {err}");
    }
    // Under another main plugin brindle keeps no endpoint record to enforce it by.
    let ipam_mode = br#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"brindle-ipam","brindle.allow-from":"10.0.0.0/8"}}"#;
    let err = NetConf::parse(ipam_mode, &e).unwrap_err();
    assert_eq!(err.code, code::UNSUPPORTED_FIELD, "{err}");
    // ... while the main plugin's own key is that plugin's business.
    let theirs = br#"{"cniVersion":"1.0.0","name":"n","type":"ptp","brindle.allow-from":"x","ipam":{"type":"brindle-ipam"}}"#;
    assert!(NetConf::parse(theirs, &e).unwrap().allow_from.is_empty());
}

#[test]
fn gc_attachments_under_both_keys() {
    let e = CniEnv::default();
    let new = br#"{"cniVersion":"1.1.0","name":"n","type":"brindle","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
    let old = br#"{"cniVersion":"1.1.0","name":"n","type":"brindle","cni.dev/attachments":[{"containerID":"b","ifname":"eth1"}]}"#;
    let a = NetConf::parse(new, &e).unwrap().valid_attachments.unwrap();
    assert_eq!(a[0].container_id, "a");
    let b = NetConf::parse(old, &e).unwrap().valid_attachments.unwrap();
    assert_eq!(b[0].ifname, "eth1");
}

#[test]
fn etcd_password_from_a_file_key_or_env() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "fr0m-file\n").unwrap();
    let pw = pw.display().to_string();
    let conf = |keys: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{{"type":"brindle-ipam"{keys}}}}}"#
        )
    };
    let parse = |keys: &str, e: &CniEnv| NetConf::parse(conf(keys).as_bytes(), e);
    let none = CniEnv::default();

    let c = parse(
        &format!(r#","etcd_username":"root","etcd_password_file":"{pw}""#),
        &none,
    )
    .unwrap();
    assert_eq!(c.settings.etcd.password.as_deref(), Some("fr0m-file"));
    assert_eq!(c.settings.etcd.username.as_deref(), Some("root"));
    // Debug of the whole request never shows it.
    let shown = format!("{c:?}");
    assert!(
        !shown.contains("fr0m-file") && shown.contains("<redacted>"),
        "{shown}"
    );

    // From the environment; a key in the netconf wins over it.
    let e = env(&[("BRINDLE_ETCD_PASSWORD_FILE", &pw)]);
    assert_eq!(
        parse("", &e).unwrap().settings.etcd.password.as_deref(),
        Some("fr0m-file")
    );
    let c = parse(r#","etcd_password":"fr0m-key""#, &e).unwrap();
    assert_eq!(c.settings.etcd.password.as_deref(), Some("fr0m-key"));
    let e = env(&[("BRINDLE_ETCD_PASSWORD", "fr0m-env")]);
    assert_eq!(
        parse("", &e).unwrap().settings.etcd.password.as_deref(),
        Some("fr0m-env")
    );
    assert!(!format!("{e:?}").contains("fr0m-env"), "{e:?}");

    // Missing, empty: invalid configuration naming the path.
    let missing = dir.path().join("missing").display().to_string();
    let err = parse(&format!(r#","etcd_password_file":"{missing}""#), &none).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
    assert!(
        err.msg
            .starts_with("etcd_password_file: cannot read password file")
            && err.msg.contains(&missing),
        "{err}"
    );
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let empty = empty.display().to_string();
    let err = parse("", &env(&[("BRINDLE_ETCD_PASSWORD_FILE", &empty)])).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
    assert_eq!(
        err.msg,
        format!("BRINDLE_ETCD_PASSWORD_FILE: password file {empty} is empty")
    );
    // Both in one place.
    let err = parse(
        &format!(r#","etcd_password":"x","etcd_password_file":"{pw}""#),
        &none,
    )
    .unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert_eq!(
        err.msg,
        "etcd_password and etcd_password_file are both set: give one"
    );
    let err = parse(r#","etcd_password_file":7"#, &none).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG, "{err}");
}
