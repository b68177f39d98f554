//! `brindle.allow-from`: the sources outside every pool that may connect to a network's
//! endpoints, from Docker's `-o brindle.allow-from=CIDR[,CIDR...]` and the CNI netconf
//! key of the same name. Parsed strictly: a typo must neither open nor close a network
//! silently, so every entry is an IPv4 CIDR without host bits.

use brindle_ipam::cidr::parse_cidr;
use brindle_ipam::IpamError;
use ipnetwork::Ipv4Network;

/// The option / netconf key.
pub const KEY: &str = "brindle.allow-from";

/// What a valid value looks like, for error messages.
pub const VALID_FORM: &str = "IPv4 CIDRs such as 192.0.2.0/24, separated by commas";

/// An invalid `brindle.allow-from` value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {KEY} entry {value:?}: {reason}; expected {VALID_FORM}")]
pub struct AllowFromError {
    /// The entry as given.
    pub value: String,
    pub reason: String,
}

/// Parse one comma-separated value (`192.0.2.0/24,198.51.100.7/32`).
pub fn parse_list(text: &str) -> Result<Vec<Ipv4Network>, AllowFromError> {
    parse_entries(text.split(','))
}

/// Parse entries given one by one (a JSON array); each may itself be a comma list.
pub fn parse_entries<'a>(
    entries: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<Ipv4Network>, AllowFromError> {
    let mut out: Vec<Ipv4Network> = Vec::new();
    for entry in entries.into_iter().flat_map(|e| e.split(',')) {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(AllowFromError {
                value: entry.to_string(),
                reason: "empty entry".into(),
            });
        }
        let net = parse_cidr(entry).map_err(|e| AllowFromError {
            value: entry.to_string(),
            reason: match e {
                IpamError::InvalidCidr { reason, .. } => reason,
                other => other.to_string(),
            },
        })?;
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_entries() {
        let nets = parse_list("192.0.2.0/24, 198.51.100.7/32,192.0.2.0/24").unwrap();
        assert_eq!(
            nets,
            vec![
                "192.0.2.0/24".parse::<Ipv4Network>().unwrap(),
                "198.51.100.7/32".parse().unwrap()
            ]
        );
        let nets = parse_entries(["10.0.0.0/8", "172.16.0.0/12,192.168.0.0/16"]).unwrap();
        assert_eq!(nets.len(), 3);
    }

    #[test]
    fn every_bad_entry_is_named() {
        for (text, value, reason) in [
            ("10.0.0.0/33", "10.0.0.0/33", "prefix length"),
            ("10.0.0.5/24", "10.0.0.5/24", "host bits are set"),
            ("10.0.0.0/8,office", "office", "expected an IPv4 CIDR"),
            ("10.0.0.300/32", "10.0.0.300/32", "is not an IPv4 address"),
            ("fd00::/64", "fd00::/64", "is not an IPv4 address"),
            ("10.0.0.0/8,", "", "empty entry"),
            ("", "", "empty entry"),
        ] {
            let e = parse_list(text).unwrap_err();
            assert_eq!(e.value, value, "{text}");
            assert!(e.reason.contains(reason), "{text}: {e}");
            assert!(e.to_string().contains(VALID_FORM), "{e}");
        }
    }
}
