//! Free loopback ports for servers the tests start (etcd, brindled's metrics).
//!
//! A port from `bind(:0)` comes from the kernel's ephemeral range, the same range that
//! outgoing connections draw their local ports from: between our check and the
//! server's own bind, any client connection on the machine (etcd's own peers, a test's
//! etcd client) may take it, and the server dies with "address already in use". So
//! ports are handed out below that range, where only listeners bind, from a per-process
//! sequence that starts at a PID-derived offset so parallel test binaries rarely meet;
//! each one is still checked free before it is returned.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: above the well-known and most registered service ports.
const FLOOR: u32 = 20_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A TCP port on 127.0.0.1 that was free a moment ago and that no outgoing
/// connection will take in the meantime.
pub fn free_port() -> u16 {
    let ceiling = ephemeral_low().max(FLOOR + 1_000);
    let span = ceiling - FLOOR;
    let start = (std::process::id().wrapping_mul(7_919)) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FLOOR + (start + step) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port on 127.0.0.1 between {FLOOR} and {ceiling}");
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "{ports:?}");
        let low = ephemeral_low().max(FLOOR + 1_000);
        assert!(ports
            .iter()
            .all(|&p| u32::from(p) >= FLOOR && u32::from(p) < low));
    }
}
