//! CNI spec versions: which we speak, and comparing them.

use super::error::{code, CniError};

/// Every version whose results brindle can emit (0.3.x/0.4.0 results carry
/// `ips[].version`; 1.0.0 and 1.1.0 share one format, 1.1.0 adds optional fields).
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version we speak; used for errors when the request has none we know.
pub const LATEST: &str = "1.1.0";

/// `major.minor.patch` as numbers, for ordering.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let out = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(out)
}

/// Whether `v` is at least `min` (both well-formed).
pub fn at_least(v: &str, min: &str) -> bool {
    matches!((parse(v), parse(min)), (Some(a), Some(b)) if a >= b)
}

/// Fails with code 1, listing what we support, unless `v` is one of [`SUPPORTED`].
pub fn ensure_supported(v: &str) -> Result<(), CniError> {
    if SUPPORTED.contains(&v) {
        return Ok(());
    }
    Err(
        CniError::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions").with_details(
            format!(
                "config is {v:?}, plugin supports [{}]",
                SUPPORTED
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
    )
}

/// Results of versions before 1.0.0 carry `"version": "4"` on each IP.
pub fn needs_ip_version_field(v: &str) -> bool {
    !at_least(v, "1.0.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_and_support() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("1.0.0", "1.0.0"));
        assert!(!at_least("0.4.0", "1.0.0"));
        assert!(!at_least("junk", "1.0.0"));
        assert_eq!(parse("1.2.3.4"), None);
        ensure_supported("1.0.0").unwrap();
        let e = ensure_supported("9.9.9").unwrap_err();
        assert_eq!(e.code, 1);
        assert!(e.details.unwrap().contains("\"1.1.0\""));
        assert!(needs_ip_version_field("0.4.0"));
        assert!(!needs_ip_version_field("1.1.0"));
    }
}
