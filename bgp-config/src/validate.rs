//! Validation of the model. Call these before storing a value (CLI) and before
//! rendering (agent); the renderers never emit text that could break or inject BIRD
//! syntax, but they skip what is invalid instead of failing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::error::BgpError;
use crate::model::{BgpGlobal, BgpNode, BgpPeer, BgpTimers};

/// Longest TCP-MD5 key Linux accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

/// Parses an AS number in asplain (`64512`) or asdot (`1.10` = 65546) notation.
pub fn parse_as(text: &str) -> Result<u32, BgpError> {
    let bad = || BgpError::InvalidAs {
        value: text.to_string(),
    };
    let t = text.trim();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let value = match t.split_once('.') {
        None if digits(t) => t.parse::<u32>().map_err(|_| bad())?,
        Some((hi, lo)) if digits(hi) && digits(lo) => {
            let hi: u16 = hi.parse().map_err(|_| bad())?;
            let lo: u16 = lo.parse().map_err(|_| bad())?;
            (u32::from(hi) << 16) | u32::from(lo)
        }
        _ => return Err(bad()),
    };
    validate_as(value).map_err(|_| bad())?;
    Ok(value)
}

/// AS numbers are 1..=4294967295 (0 is reserved).
pub fn validate_as(as_num: u32) -> Result<(), BgpError> {
    if as_num == 0 {
        return Err(BgpError::InvalidAs {
            value: as_num.to_string(),
        });
    }
    Ok(())
}

/// Peer names: `[A-Za-z0-9_-]{1,64}`.
pub fn validate_peer_name(name: &str) -> Result<(), BgpError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BgpError::InvalidPeerName {
            name: name.to_string(),
        })
    }
}

/// Node names: 1..=250 printable ASCII characters without `/` (they are etcd key
/// segments, the same rule as brindle-ipam's).
pub fn validate_node_name(name: &str) -> Result<(), BgpError> {
    let ok =
        (1..=250).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(BgpError::InvalidNodeName {
            name: name.to_string(),
        })
    }
}

/// Passwords go into a BIRD string literal, which has no escapes: no `"`, no line
/// break (nor other control characters), 1 to 80 bytes. `owner` names whose password
/// it is, for the message (`peer "tor1"`); the password itself is never echoed.
pub fn validate_password(owner: &str, password: &str) -> Result<(), BgpError> {
    let problem = if password.is_empty() {
        Some("is empty".to_string())
    } else if password.len() > MAX_PASSWORD_LEN {
        Some(format!("is {} bytes long", password.len()))
    } else if password.contains('"') {
        Some("contains '\"'".to_string())
    } else if password.contains(['\n', '\r']) {
        Some("contains a line break".to_string())
    } else if password.chars().any(char::is_control) {
        Some("contains a control character".to_string())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(BgpError::InvalidPassword {
            owner: owner.to_string(),
            problem,
        }),
    }
}

/// A node IP, peer IP or cluster id must be a unicast address other than 0.0.0.0.
pub fn validate_unicast(what: &str, addr: Ipv4Addr) -> Result<(), BgpError> {
    let reason = if addr.is_unspecified() {
        Some("0.0.0.0 is no address")
    } else if addr.is_broadcast() {
        Some("the broadcast address is no unicast address")
    } else if addr.is_multicast() {
        Some("a multicast address is no unicast address")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(r) => Err(BgpError::InvalidAddress {
            what: what.to_string(),
            addr,
            reason: format!("{r}; use the unicast IPv4 address of the host"),
        }),
    }
}

fn setting(name: &str, value: u32, ok: bool, valid: &str) -> Result<(), BgpError> {
    if ok {
        Ok(())
    } else {
        Err(BgpError::InvalidSetting {
            name: name.to_string(),
            value: u64::from(value),
            valid: valid.to_string(),
        })
    }
}

/// Timer ranges BIRD and RFC 4271 accept.
pub fn validate_timers(t: &BgpTimers) -> Result<(), BgpError> {
    setting(
        "timers.connect_delay",
        t.connect_delay,
        t.connect_delay <= 65535,
        "use 0 to 65535 seconds",
    )?;
    setting(
        "timers.connect_retry",
        t.connect_retry,
        (1..=65535).contains(&t.connect_retry),
        "use 1 to 65535 seconds",
    )?;
    setting(
        "timers.error_wait_min",
        t.error_wait_min,
        (1..=65535).contains(&t.error_wait_min),
        "use 1 to 65535 seconds",
    )?;
    setting(
        "timers.error_wait_max",
        t.error_wait_max,
        (t.error_wait_min..=65535).contains(&t.error_wait_max),
        &format!(
            "use {} (timers.error_wait_min) to 65535 seconds",
            t.error_wait_min
        ),
    )?;
    if let Some(hold) = t.hold {
        setting(
            "timers.hold",
            hold,
            hold == 0 || (3..=65535).contains(&hold),
            "use 0 (no keepalives) or 3 to 65535 seconds",
        )?;
    }
    if let Some(keepalive) = t.keepalive {
        let hold = t.hold.unwrap_or(240);
        // BIRD refuses any keepalive time with hold time 0 (no keepalives at all).
        let (ok, valid) = if hold == 0 {
            (
                false,
                "leave it unset with hold time 0 (no keepalives)".to_string(),
            )
        } else {
            (
                (1..=65535).contains(&keepalive) && keepalive < hold,
                format!("use 1 to 65535 seconds, below the hold time ({hold})"),
            )
        };
        setting("timers.keepalive", keepalive, ok, &valid)?;
    }
    Ok(())
}

/// Checks the global settings.
pub fn validate_global(g: &BgpGlobal) -> Result<(), BgpError> {
    validate_as(g.as_num)?;
    if let Some(pw) = &g.mesh_password {
        validate_password("the node mesh", pw)?;
    }
    if let Some(rt) = g.restart_time {
        setting(
            "restart_time",
            rt,
            (1..=4095).contains(&rt),
            "use 1 to 4095 seconds (RFC 4724)",
        )?;
    }
    validate_timers(&g.timers)
}

/// Checks one node.
pub fn validate_node(n: &BgpNode) -> Result<(), BgpError> {
    validate_node_name(&n.name)?;
    validate_unicast(&format!("IP of node {:?}", n.name), n.ip)?;
    if let Some(a) = n.as_num {
        validate_as(a)?;
    }
    if let Some(id) = n.rr_cluster_id {
        validate_unicast(
            &format!("route-reflector cluster id of node {:?}", n.name),
            id,
        )?;
    }
    Ok(())
}

/// Checks one peer.
pub fn validate_peer(p: &BgpPeer) -> Result<(), BgpError> {
    validate_peer_name(&p.name)?;
    validate_unicast(&format!("address of BGP peer {:?}", p.name), p.peer_ip)?;
    validate_as(p.as_num)?;
    if let Some(node) = &p.node {
        validate_node_name(node)?;
    }
    if let Some(pw) = &p.password {
        validate_password(&format!("BGP peer {:?}", p.name), pw)?;
    }
    if let Some(n) = p.allow_local_as {
        setting(
            &format!("allow_local_as of BGP peer {:?}", p.name),
            n,
            (1..=255).contains(&n),
            "use 1 to 255 (how often our AS may appear in a received AS path)",
        )?;
    }
    Ok(())
}

/// Checks a set of nodes: each valid, names and IPs unique.
pub fn validate_nodes(nodes: &[BgpNode]) -> Result<(), BgpError> {
    let mut names = BTreeMap::new();
    let mut ips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for n in nodes {
        validate_node(n)?;
        if names.insert(n.name.as_str(), ()).is_some() {
            return Err(BgpError::DuplicateName {
                what: "node".into(),
                name: n.name.clone(),
            });
        }
        if let Some(first) = ips.insert(n.ip, &n.name) {
            return Err(BgpError::DuplicateAddress {
                what: "node IP".into(),
                ip: n.ip,
                first: first.to_string(),
                second: n.name.clone(),
            });
        }
    }
    Ok(())
}

/// Checks a set of peers: each valid, names unique, and no two peers with one
/// address on the same node (two global peers, or two peers of one node).
pub fn validate_peers(peers: &[BgpPeer]) -> Result<(), BgpError> {
    let mut names = BTreeMap::new();
    let mut scoped: BTreeMap<(Option<&str>, Ipv4Addr), &str> = BTreeMap::new();
    for p in peers {
        validate_peer(p)?;
        if names.insert(p.name.as_str(), ()).is_some() {
            return Err(BgpError::DuplicateName {
                what: "BGP peer".into(),
                name: p.name.clone(),
            });
        }
        if let Some(first) = scoped.insert((p.node.as_deref(), p.peer_ip), &p.name) {
            let what = match &p.node {
                None => "global peer address".to_string(),
                Some(n) => format!("peer address on node {n:?}"),
            };
            return Err(BgpError::DuplicateAddress {
                what,
                ip: p.peer_ip,
                first: first.to_string(),
                second: p.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ip: &str) -> BgpNode {
        BgpNode {
            name: name.into(),
            ip: ip.parse().unwrap(),
            as_num: None,
            rr_cluster_id: None,
        }
    }

    fn peer(name: &str, ip: &str) -> BgpPeer {
        BgpPeer {
            name: name.into(),
            peer_ip: ip.parse().unwrap(),
            as_num: 65000,
            node: None,
            password: None,
            passive: false,
            allow_local_as: None,
        }
    }

    #[test]
    fn as_numbers_plain_and_dotted() {
        assert_eq!(parse_as("64512").unwrap(), 64512);
        assert_eq!(parse_as(" 1 ").unwrap(), 1);
        assert_eq!(parse_as("4294967295").unwrap(), u32::MAX);
        assert_eq!(parse_as("1.10").unwrap(), 65546);
        assert_eq!(parse_as("65535.65535").unwrap(), u32::MAX);
        for bad in [
            "0",
            "0.0",
            "4294967296",
            "-1",
            "",
            "as64512",
            "65536.1",
            "1.",
            ".1",
            "1.2.3",
        ] {
            let err = parse_as(bad).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, BgpError::InvalidAs { .. }), "{bad}");
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("1 to 4294967295"), "{msg}");
        }
        assert!(validate_as(0).is_err());
        assert!(validate_as(1).is_ok());
    }

    #[test]
    fn peer_names() {
        for ok in ["tor1", "TOR_1-a", &"x".repeat(64)] {
            validate_peer_name(ok).unwrap();
        }
        for bad in [
            "",
            "tor 1",
            "tor.1",
            "tor/1",
            "tör",
            &"x".repeat(65),
            "a\"b",
        ] {
            let msg = validate_peer_name(bad).unwrap_err().to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("1 to 64 characters"), "{msg}");
        }
    }

    #[test]
    fn passwords_never_echoed() {
        validate_password("peer \"x\"", "s3cret with spaces#!'").unwrap();
        validate_password("peer \"x\"", &"p".repeat(80)).unwrap();
        let cases = [
            ("se\"cret", "contains '\"'"),
            ("se\ncret", "line break"),
            ("se\rcret", "line break"),
            ("se\tcret", "control character"),
            ("", "is empty"),
        ];
        for (pw, problem) in cases {
            let msg = validate_password("peer \"tor1\"", pw)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(problem), "{msg}");
            assert!(msg.contains("peer \"tor1\""), "{msg}");
            if !pw.is_empty() {
                assert!(!msg.contains(pw), "password echoed: {msg}");
            }
        }
        let long = "q".repeat(81);
        let msg = validate_password("the node mesh", &long)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("81 bytes") && !msg.contains(&long), "{msg}");
    }

    #[test]
    fn nodes() {
        validate_node(&node("host-1.example", "10.0.0.1")).unwrap();
        for (n, want) in [
            (node("a", "0.0.0.0"), "0.0.0.0"),
            (node("a", "224.0.0.5"), "multicast"),
            (node("a", "255.255.255.255"), "broadcast"),
            (node("a/b", "10.0.0.1"), "\"a/b\""),
            (node("", "10.0.0.1"), "\"\""),
        ] {
            let msg = validate_node(&n).unwrap_err().to_string();
            assert!(msg.contains(want), "{msg}");
        }
        let mut rr = node("a", "10.0.0.1");
        rr.rr_cluster_id = Some(Ipv4Addr::UNSPECIFIED);
        assert!(validate_node(&rr)
            .unwrap_err()
            .to_string()
            .contains("cluster id"));
        rr.rr_cluster_id = None;
        rr.as_num = Some(0);
        assert!(matches!(
            validate_node(&rr),
            Err(BgpError::InvalidAs { .. })
        ));

        let err = validate_nodes(&[node("a", "10.0.0.1"), node("b", "10.0.0.1")]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.0.0.1") && msg.contains("\"a\"") && msg.contains("\"b\""),
            "{msg}"
        );
        let err = validate_nodes(&[node("a", "10.0.0.1"), node("a", "10.0.0.2")]).unwrap_err();
        assert!(matches!(err, BgpError::DuplicateName { .. }));
    }

    #[test]
    fn peers() {
        validate_peer(&peer("tor1", "10.0.0.1")).unwrap();
        let mut p = peer("tor1", "10.0.0.1");
        p.as_num = 0;
        assert!(validate_peer(&p).unwrap_err().to_string().contains("\"0\""));
        let mut p = peer("tor1", "0.0.0.0");
        p.password = Some("x".into());
        assert!(validate_peer(&p)
            .unwrap_err()
            .to_string()
            .contains("peer \"tor1\""));
        let mut p = peer("tor1", "10.0.0.1");
        p.password = Some("a\"b".into());
        assert!(matches!(
            validate_peer(&p),
            Err(BgpError::InvalidPassword { .. })
        ));
        let mut p = peer("tor1", "10.0.0.1");
        p.allow_local_as = Some(0);
        assert!(validate_peer(&p)
            .unwrap_err()
            .to_string()
            .contains("1 to 255"));

        // Same address: fine on different nodes, refused twice globally.
        let mut on_a = peer("p-a", "10.0.0.9");
        on_a.node = Some("a".into());
        let mut on_b = peer("p-b", "10.0.0.9");
        on_b.node = Some("b".into());
        validate_peers(&[on_a.clone(), on_b, peer("g", "10.0.0.9")]).unwrap();
        let msg = validate_peers(&[peer("g1", "10.0.0.9"), peer("g2", "10.0.0.9")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("global peer address 10.0.0.9"), "{msg}");
        let msg = validate_peers(&[peer("g", "10.0.0.1"), peer("g", "10.0.0.2")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"g\" is used twice"), "{msg}");
    }

    #[test]
    fn global_settings_and_timers() {
        validate_global(&BgpGlobal::default()).unwrap();
        let bad = |f: &dyn Fn(&mut BgpGlobal)| {
            let mut g = BgpGlobal::default();
            f(&mut g);
            validate_global(&g).unwrap_err().to_string()
        };
        assert!(bad(&|g| g.as_num = 0).contains("\"0\""));
        assert!(bad(&|g| g.restart_time = Some(0)).contains("restart_time 0: use 1 to 4095"));
        assert!(bad(&|g| g.restart_time = Some(4096)).contains("4096"));
        assert!(bad(&|g| g.mesh_password = Some("a\nb".into())).contains("the node mesh"));
        assert!(bad(&|g| g.timers.hold = Some(2)).contains("timers.hold 2"));
        assert!(bad(&|g| g.timers.connect_retry = 0).contains("timers.connect_retry 0"));
        assert!(bad(&|g| {
            g.timers.error_wait_min = 10;
            g.timers.error_wait_max = 5
        })
        .contains("use 10 (timers.error_wait_min) to 65535"));
        assert!(bad(&|g| {
            g.timers.hold = Some(9);
            g.timers.keepalive = Some(9)
        })
        .contains("below the hold time (9)"));
        // BIRD 2 refuses any keepalive time with hold time 0 ("Keepalive time must be
        // at most hold time"), so it is refused here rather than by bird -p later.
        assert!(bad(&|g| {
            g.timers.hold = Some(0);
            g.timers.keepalive = Some(30)
        })
        .contains("leave it unset with hold time 0"));
        let mut g = BgpGlobal::default();
        g.timers.hold = Some(0);
        validate_global(&g).unwrap();
    }
}
