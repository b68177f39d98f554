//! The ADD Success result in the request's CNI version, and reading addresses back from
//! a `prevResult`.

use std::net::Ipv4Addr;

use brindle_dataplane::{GATEWAY_IP, HOST_MAC};
use serde_json::{json, Value};

use super::conf::NetConf;
use super::ops::{AddReply, Mode};
use super::version;

/// The result printed for an ADD.
pub fn add_result(conf: &NetConf, reply: &AddReply, ifname: &str, netns: Option<&str>) -> Value {
    let v = conf.cni_version.as_str();
    let with_ip_version = version::needs_ip_version_field(v);
    let ip_entry = |address: String, gateway: Ipv4Addr, interface: Option<usize>| {
        let mut e = json!({ "address": address, "gateway": gateway.to_string() });
        if let Some(i) = interface {
            e["interface"] = json!(i);
        }
        if with_ip_version {
            e["version"] = json!("4");
        }
        e
    };
    let mut out = match conf.mode {
        Mode::Ipam => {
            // Host-local style: the address with its pool's prefix, so main plugins such
            // as ptp derive the on-link range; the gateway is what ptp puts on its host
            // veth (169.254.1.1 by default, as brindle's own routed dataplane).
            let address = format!("{}/{}", reply.ip, reply.pool_cidr.prefix());
            let mut r = json!({
                "cniVersion": v,
                "ips": [ip_entry(address, conf.ipam_gateway, None)],
            });
            if !conf.ipam_routes.is_empty() {
                r["routes"] = Value::Array(conf.ipam_routes.clone());
            }
            r
        }
        Mode::Main => {
            let base = conf
                .prev_result
                .as_ref()
                .and_then(|p| p.get("interfaces"))
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let host = json!({
                "name": reply.host_ifname.clone().unwrap_or_default(),
                "mac": HOST_MAC.to_string(),
            });
            let mut container = json!({
                "name": ifname,
                "mac": reply.mac.clone().unwrap_or_default(),
                "sandbox": netns.unwrap_or_default(),
            });
            if let (Some(mtu), true) = (conf.mtu, version::at_least(v, "1.1.0")) {
                container["mtu"] = json!(mtu);
            }
            let mut r = json!({
                "cniVersion": v,
                "interfaces": [host, container],
                "ips": [ip_entry(format!("{}/32", reply.ip), GATEWAY_IP, Some(base + 1))],
                "routes": [{ "dst": "0.0.0.0/0", "gw": GATEWAY_IP.to_string() }],
            });
            if let Some(prev) = &conf.prev_result {
                merge_prev(&mut r, prev);
            }
            r
        }
    };
    if let Some(dns) = conf
        .dns
        .as_ref()
        .filter(|d| d.as_object().is_some_and(|o| !o.is_empty()))
    {
        if out.get("dns").is_none() {
            out["dns"] = dns.clone();
        }
    }
    out
}

/// Chained after another plugin: keep what it reported, ours after it.
fn merge_prev(ours: &mut Value, prev: &Value) {
    for key in ["interfaces", "ips", "routes"] {
        let mut list: Vec<Value> = prev
            .get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(mine) = ours.get(key).and_then(Value::as_array) {
            list.extend(mine.iter().cloned());
        }
        ours[key] = Value::Array(list);
    }
    if let Some(dns) = prev.get("dns") {
        ours["dns"] = dns.clone();
    }
}

/// The first IPv4 address of a `prevResult` (`ips[].address`, prefix dropped).
pub fn prev_ipv4(prev: Option<&Value>) -> Option<Ipv4Addr> {
    prev?
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|e| e.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse::<Ipv4Addr>().ok())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::conf::CniEnv;

    fn conf(json: &str) -> NetConf {
        NetConf::parse(json.as_bytes(), &CniEnv::default()).unwrap()
    }

    fn reply() -> AddReply {
        AddReply {
            ip: "10.5.0.7".parse().unwrap(),
            pool: "p".into(),
            pool_cidr: "10.5.0.0/16".parse().unwrap(),
            host_ifname: Some("brl0123".into()),
            mac: Some("02:00:00:00:00:01".into()),
        }
    }

    #[test]
    fn main_result_1_1_0_with_mtu_and_dns() {
        let c = conf(
            r#"{"cniVersion":"1.1.0","name":"n","type":"brindle","mtu":1400,"dns":{"nameservers":["10.5.0.53"]}}"#,
        );
        let r = add_result(&c, &reply(), "eth0", Some("/run/netns/c"));
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.1.0",
                "interfaces": [
                    {"name": "brl0123", "mac": "ee:ee:ee:ee:ee:ee"},
                    {"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "/run/netns/c", "mtu": 1400}
                ],
                "ips": [{"address": "10.5.0.7/32", "gateway": "169.254.1.1", "interface": 1}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}],
                "dns": {"nameservers": ["10.5.0.53"]}
            })
        );
    }

    #[test]
    fn old_versions_tag_ips_and_omit_mtu() {
        let c = conf(r#"{"cniVersion":"0.4.0","name":"n","type":"brindle","mtu":1400}"#);
        let r = add_result(&c, &reply(), "eth0", Some("/x"));
        assert_eq!(r["ips"][0]["version"], "4");
        assert!(r["interfaces"][1].get("mtu").is_none());
    }

    #[test]
    fn ipam_result_uses_pool_prefix() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"ptp","ipam":{"type":"brindle-ipam","routes":[{"dst":"10.5.0.0/16"}]}}"#,
        );
        let r = add_result(&c, &reply(), "eth0", None);
        assert_eq!(
            r,
            json!({
                "cniVersion": "1.0.0",
                "ips": [{"address": "10.5.0.7/16", "gateway": "169.254.1.1"}],
                "routes": [{"dst": "10.5.0.0/16"}]
            })
        );
    }

    #[test]
    fn chained_after_a_previous_result() {
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"n","type":"brindle","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"x"}],"ips":[{"address":"192.0.2.1/24","interface":0}]}}"#,
        );
        let r = add_result(&c, &reply(), "eth1", Some("/x"));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(
            prev_ipv4(c.prev_result.as_ref()),
            Some("192.0.2.1".parse().unwrap())
        );
    }
}
