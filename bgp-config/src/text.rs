//! Small text helpers shared by the renderers.

use std::net::Ipv4Addr;

/// A name made safe for a BIRD string literal or a comment: printable ASCII without
/// `"` or `\`, at most 64 characters (node names come from hostnames and etcd).
pub(crate) fn safe(name: &str) -> String {
    let mut out: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// A note safe to put after `#`: one line of printable text.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `10.0.0.2` → `10_0_0_2`, for BIRD symbol names.
pub(crate) fn ip_symbol(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "_")
}
