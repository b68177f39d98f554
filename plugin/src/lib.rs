//! brindle's node-side code: the operator CLI, the Docker driver, the CNI plugin and the
//! routed dataplane they share.

pub mod cli;
pub mod config;
pub mod dataplane;
pub mod logging;
