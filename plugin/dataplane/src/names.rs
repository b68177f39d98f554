//! Interface naming: host veth names derived from endpoint/container ids.

use super::{DataplaneError, IFNAME_MAX};

/// Prefix of every host-side veth brindle creates.
pub const HOST_PREFIX: &str = "brl";
/// Prefix of the Docker peer's temporary name (until Docker moves and renames it).
pub const TEMP_PREFIX: &str = "tmp";
/// Characters of the id kept after the 3-byte prefix: 3 + 11 = 14 ≤ [`IFNAME_MAX`].
const ID_CHARS: usize = 11;

/// Host veth name for a Docker endpoint id: `brl` + the id's first 11 characters.
pub fn host_ifname_for(id: &str) -> String {
    format!("{HOST_PREFIX}{}", id_prefix(id))
}

/// Temporary host-side name of a Docker endpoint's peer: `tmp` + the id's first 11
/// characters (Docker renames it to its `DstPrefix` when moving it into the container).
pub fn temp_ifname_for(id: &str) -> String {
    format!("{TEMP_PREFIX}{}", id_prefix(id))
}

/// Host veth name for a CNI attachment: `brl` + 11 lowercase hex digits of a stable hash
/// of the container id and interface name.
///
/// The hash is 64-bit FNV-1a over `container_id`, a NUL byte, then `ifname`, printed as
/// 16 hex digits of which the first 11 are kept. It must never change: CNI DEL of a
/// container added by an older brindle derives the same name.
pub fn host_ifname_for_cni(container_id: &str, ifname: &str) -> String {
    let mut bytes = Vec::with_capacity(container_id.len() + 1 + ifname.len());
    bytes.extend_from_slice(container_id.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(ifname.as_bytes());
    let hex = format!("{:016x}", fnv1a64(&bytes));
    host_ifname_for(&hex)
}

/// Checks a name the kernel would accept for a new link (`dev_valid_name`): 1 to 15
/// bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), DataplaneError> {
    let problem = if name.is_empty() {
        Some("empty")
    } else if name.len() > IFNAME_MAX {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match problem {
        Some(why) => Err(DataplaneError::Invalid {
            what: format!("interface name {name:?}: {why}"),
        }),
        None => Ok(()),
    }
}

/// The first [`ID_CHARS`] characters of `id`, stopping early rather than exceed 11 bytes.
fn id_prefix(id: &str) -> &str {
    let mut end = 0;
    for (count, (i, c)) in id.char_indices().enumerate() {
        if count == ID_CHARS || i + c.len_utf8() > ID_CHARS {
            break;
        }
        end = i + c.len_utf8();
    }
    &id[..end]
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_take_eleven_chars() {
        let id = "3f2a6b1c9d8e7f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";
        assert_eq!(host_ifname_for(id), "brl3f2a6b1c9d8");
        assert_eq!(temp_ifname_for(id), "tmp3f2a6b1c9d8");
        assert_eq!(host_ifname_for("abc"), "brlabc");
        assert!(host_ifname_for(id).len() <= IFNAME_MAX);
    }

    #[test]
    fn docker_names_never_exceed_ifnamsiz_with_multibyte_ids() {
        let name = host_ifname_for("ééééééééééééé");
        assert!(name.len() <= IFNAME_MAX, "{name}");
        assert_eq!(name, "brlééééé");
    }

    #[test]
    fn cni_names_are_stable_hex_and_distinct() {
        let a = host_ifname_for_cni("c0ffee", "eth0");
        // Pinned: changing the hash would orphan veths of running containers.
        assert_eq!(a, "brl2ba21fd802e");
        assert_eq!(a, host_ifname_for_cni("c0ffee", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(a[3..]
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, host_ifname_for_cni("c0ffee", "eth1"));
        assert_ne!(a, host_ifname_for_cni("c0ffef", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            host_ifname_for_cni("ab", "c"),
            host_ifname_for_cni("a", "bc")
        );
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn validate_ifname_table() {
        struct Case {
            name: &'static str,
            ok: bool,
        }
        let cases = [
            Case {
                name: "eth0",
                ok: true,
            },
            Case {
                name: "brl0123456789ab",
                ok: true,
            },
            Case {
                name: "brl0123456789abc",
                ok: false,
            },
            Case {
                name: "",
                ok: false,
            },
            Case {
                name: ".",
                ok: false,
            },
            Case {
                name: "..",
                ok: false,
            },
            Case {
                name: "a/b",
                ok: false,
            },
            Case {
                name: "a:b",
                ok: false,
            },
            Case {
                name: "a b",
                ok: false,
            },
        ];
        for c in cases {
            let res = validate_ifname(c.name);
            assert_eq!(res.is_ok(), c.ok, "{:?}: {res:?}", c.name);
            if let Err(e) = res {
                assert!(e.to_string().starts_with("invalid interface name"), "{e}");
            }
        }
    }
}
