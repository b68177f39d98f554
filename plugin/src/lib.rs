//! brindle's node-side code: the operator CLI, the Docker driver, the CNI plugin and the
//! agent, on the routed dataplane of the `brindle_dataplane` crate.

pub mod agent;
pub mod allow_from;
pub mod api;
pub mod bgpstore;
pub mod cli;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod endpoints;
pub mod logging;
pub mod socket;
pub mod write_behind;
