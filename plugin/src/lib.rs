//! brindle's node-side code: the operator CLI, the Docker driver, the CNI plugin and the
//! routed dataplane they share.

pub mod agent;
pub mod allow_from;
pub mod api;
pub mod bgpstore;
pub mod cli;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod docker;
pub mod endpoints;
pub mod logging;
