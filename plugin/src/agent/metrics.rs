//! The agent's Prometheus metrics (text exposition format 0.0.4), served on
//! `--metrics-addr` at `/metrics`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use anyhow::Context;
use axum::routing::get;
use axum::Router;
use tracing::info;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric of the agent.
#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub watch_events: Counter,
    pub watch_restarts: Counter,
    pub snapshot_loads: Counter,
    pub snapshot_revision: Gauge,
    pub reconciles: Counter,
    pub route_errors: Counter,
    pub routes_added: Counter,
    pub routes_removed: Counter,
    pub blackhole_routes: Gauge,
    pub endpoint_routes: Gauge,
    pub bird_renders: Counter,
    pub bird_rejected: Counter,
    pub bird_reloads: Counter,
    pub bird_reload_failures: Counter,
    pub bird_config_pending: Gauge,
    pub node_registered: Gauge,
    pub firewall_replaces: Counter,
    pub firewall_updates: Counter,
    pub firewall_repairs: Counter,
    pub firewall_errors: Counter,
    pub firewall_in_force: Gauge,
    pub reconcile_passes: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_veths_deleted: Counter,
    pub reconcile_records_removed: Counter,
    pub reconcile_addresses_released: Counter,
    pub reconcile_waiting: Gauge,
}

/// The process-wide metrics.
pub static METRICS: AgentMetrics = AgentMetrics {
    watch_events: Counter(AtomicU64::new(0)),
    watch_restarts: Counter(AtomicU64::new(0)),
    snapshot_loads: Counter(AtomicU64::new(0)),
    snapshot_revision: Gauge(AtomicI64::new(0)),
    reconciles: Counter(AtomicU64::new(0)),
    route_errors: Counter(AtomicU64::new(0)),
    routes_added: Counter(AtomicU64::new(0)),
    routes_removed: Counter(AtomicU64::new(0)),
    blackhole_routes: Gauge(AtomicI64::new(0)),
    endpoint_routes: Gauge(AtomicI64::new(0)),
    bird_renders: Counter(AtomicU64::new(0)),
    bird_rejected: Counter(AtomicU64::new(0)),
    bird_reloads: Counter(AtomicU64::new(0)),
    bird_reload_failures: Counter(AtomicU64::new(0)),
    bird_config_pending: Gauge(AtomicI64::new(0)),
    node_registered: Gauge(AtomicI64::new(0)),
    firewall_replaces: Counter(AtomicU64::new(0)),
    firewall_updates: Counter(AtomicU64::new(0)),
    firewall_repairs: Counter(AtomicU64::new(0)),
    firewall_errors: Counter(AtomicU64::new(0)),
    firewall_in_force: Gauge(AtomicI64::new(0)),
    reconcile_passes: Counter(AtomicU64::new(0)),
    reconcile_errors: Counter(AtomicU64::new(0)),
    reconcile_veths_deleted: Counter(AtomicU64::new(0)),
    reconcile_records_removed: Counter(AtomicU64::new(0)),
    reconcile_addresses_released: Counter(AtomicU64::new(0)),
    reconcile_waiting: Gauge(AtomicI64::new(0)),
};

impl AgentMetrics {
    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "brindle_agent_watch_events_total",
            "etcd watch batches that changed this node's view.",
            self.watch_events.get(),
        );
        counter(
            "brindle_agent_watch_restarts_total",
            "Times the etcd watch broke and the view was reloaded.",
            self.watch_restarts.get(),
        );
        counter(
            "brindle_agent_snapshot_loads_total",
            "Full loads of this node's view from etcd.",
            self.snapshot_loads.get(),
        );
        counter(
            "brindle_agent_reconciles_total",
            "Reconcile passes (kernel routes and BIRD).",
            self.reconciles.get(),
        );
        counter(
            "brindle_agent_route_errors_total",
            "Kernel route changes that failed.",
            self.route_errors.get(),
        );
        counter(
            "brindle_agent_routes_added_total",
            "Kernel routes added or replaced (blackholes and endpoint /32s).",
            self.routes_added.get(),
        );
        counter(
            "brindle_agent_routes_removed_total",
            "Kernel routes removed.",
            self.routes_removed.get(),
        );
        counter(
            "brindle_bird_renders_total",
            "BIRD configurations rendered that differed from the installed one.",
            self.bird_renders.get(),
        );
        counter(
            "brindle_bird_rejected_total",
            "Rendered configurations `bird -p` refused (not installed).",
            self.bird_rejected.get(),
        );
        counter(
            "brindle_bird_reloads_total",
            "Successful `birdc configure` runs.",
            self.bird_reloads.get(),
        );
        counter(
            "brindle_bird_reload_failures_total",
            "Failed `birdc configure` attempts (BIRD not running, socket missing...).",
            self.bird_reload_failures.get(),
        );
        counter(
            "brindle_firewall_replaces_total",
            "Atomic replacements of brindle's nftables table (its sets or chains changed shape).",
            self.firewall_replaces.get(),
        );
        counter(
            "brindle_firewall_updates_total",
            "Set element updates (an endpoint came or went).",
            self.firewall_updates.get(),
        );
        counter(
            "brindle_firewall_repairs_total",
            "Times FORWARD's jump to BRINDLE-FORWARD or its rules were missing and restored.",
            self.firewall_repairs.get(),
        );
        counter(
            "brindle_firewall_errors_total",
            "Firewall changes that failed (retried).",
            self.firewall_errors.get(),
        );
        counter(
            "brindle_reconcile_passes_total",
            "Crash-repair passes over this node's veths, endpoint records and allocations.",
            self.reconcile_passes.get(),
        );
        counter(
            "brindle_reconcile_errors_total",
            "Crash-repair passes that failed or left a repair for the next pass.",
            self.reconcile_errors.get(),
        );
        counter(
            "brindle_reconcile_veths_deleted_total",
            "Host veths deleted because no endpoint record named them.",
            self.reconcile_veths_deleted.get(),
        );
        counter(
            "brindle_reconcile_records_removed_total",
            "Endpoint records removed because their container was gone.",
            self.reconcile_records_removed.get(),
        );
        counter(
            "brindle_reconcile_addresses_released_total",
            "Addresses released because no endpoint, container or network held them.",
            self.reconcile_addresses_released.get(),
        );
        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            "brindle_agent_etcd_revision",
            "etcd revision of this node's current view.",
            self.snapshot_revision.get(),
        );
        gauge(
            "brindle_agent_blackhole_routes",
            "Blackhole routes for blocks affine to this node.",
            self.blackhole_routes.get(),
        );
        gauge(
            "brindle_agent_endpoint_routes",
            "Local endpoints whose /32 route is in place.",
            self.endpoint_routes.get(),
        );
        gauge(
            "brindle_bird_config_pending",
            "1 while a new BIRD configuration waits for BIRD to load it.",
            self.bird_config_pending.get(),
        );
        gauge(
            "brindle_node_registered",
            "1 once this node's record (IP, AS) is in etcd.",
            self.node_registered.get(),
        );
        gauge(
            "brindle_firewall_in_force",
            "1 while FORWARD accepts endpoint traffic and the isolation table is current.",
            self.firewall_in_force.get(),
        );
        gauge(
            "brindle_reconcile_waiting",
            "Crash-repair findings waiting for their grace period.",
            self.reconcile_waiting.get(),
        );
        out
    }
}

/// Serves `/metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4")],
                METRICS.render(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics address {addr}"))?;
    info!(%addr, "serving metrics");
    axum::serve(listener, app)
        .await
        .with_context(|| format!("serve metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_help_type_and_value() {
        let m = AgentMetrics::default();
        m.bird_reloads.inc();
        m.blackhole_routes.set(3);
        let text = m.render();
        assert!(text.contains(
            "# HELP brindle_bird_reloads_total Successful `birdc configure` runs.\n# TYPE brindle_bird_reloads_total counter\nbrindle_bird_reloads_total 1\n"
        ));
        assert!(text.contains("brindle_agent_blackhole_routes 3\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let mut parts = line.split(' ');
            let (name, value) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("brindle_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
