//! Harness for brindle's integration and end-to-end suites: real etcd (and later dockerd,
//! BIRD, podman, network namespaces), started on free loopback ports in temp dirs and
//! stopped by PID when the test ends.

pub mod benchfmt;
pub mod bins;
pub mod bird;
pub mod cni;
pub mod docker;
pub mod etcd;
pub mod netns;
pub mod nftbench;
pub mod podman;
pub mod ports;
pub mod scale;
pub mod topology;
