//! `/proc/sys` writes (no `sysctl` binary, no shelling out).
//!
//! `/proc/sys/net` shows the namespace of the *thread* that opens the file, so writes
//! are done directly only when the calling thread is in the target namespace, and from a
//! thread that joined it otherwise.

use std::path::PathBuf;

use super::netns::Netns;
use super::DataplaneError;

/// One `/proc/sys` file and the value to write.
pub(crate) type Setting = (PathBuf, &'static str);

/// `net.ipv4.ip_forward`.
pub(crate) fn ip_forward() -> Setting {
    (PathBuf::from("/proc/sys/net/ipv4/ip_forward"), "1")
}

/// The host veth settings: answer ARP for any address we route elsewhere (the
/// container's 169.254.1.1), and do it at once rather than after the default random
/// 0–800 ms `proxy_delay`, which would stall the container's first packet.
pub(crate) fn host_veth(ifname: &str) -> Vec<Setting> {
    vec![
        (
            PathBuf::from(format!("/proc/sys/net/ipv4/conf/{ifname}/proxy_arp")),
            "1",
        ),
        (
            PathBuf::from(format!("/proc/sys/net/ipv4/neigh/{ifname}/proxy_delay")),
            "0",
        ),
    ]
}

/// Writes `settings` in namespace `ns`, in order, stopping at the first failure.
pub(crate) async fn write(ns: &Netns, settings: Vec<Setting>) -> Result<(), DataplaneError> {
    if ns.is_current() {
        write_here(&settings)
    } else {
        ns.run(move || write_here(&settings)).await
    }
}

fn write_here(settings: &[Setting]) -> Result<(), DataplaneError> {
    for (path, value) in settings {
        std::fs::write(path, value).map_err(|cause| DataplaneError::Sysctl {
            path: path.clone(),
            value: (*value).to_string(),
            cause,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_paths() {
        let s = host_veth("brl0123");
        assert_eq!(
            s[0].0,
            PathBuf::from("/proc/sys/net/ipv4/conf/brl0123/proxy_arp")
        );
        assert_eq!(s[0].1, "1");
        assert_eq!(
            s[1].0,
            PathBuf::from("/proc/sys/net/ipv4/neigh/brl0123/proxy_delay")
        );
        assert_eq!(s[1].1, "0");
    }

    #[test]
    fn write_failure_names_file() {
        let err = write_here(&[(
            PathBuf::from("/proc/sys/net/ipv4/conf/brl-nope/proxy_arp"),
            "1",
        )])
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("write 1 to /proc/sys/net/ipv4/conf/brl-nope/proxy_arp: "),
            "{err}"
        );
    }
}
