//! Docker's remote NetworkDriver and IpamDriver calls with arbitrary bodies, through
//! the router brindled serves (body extractor, handlers, driver) on the in-process
//! store and the fake dataplane.
//!
//! One input is up to [`MAX_CALLS`] calls separated by 0xFF; the first byte of each
//! picks the call, the rest is its body. Every reply must be JSON: 200, or 500 with an
//! `Err` message (what Docker understands), never a panic.

#![no_main]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use brindle_dataplane::{FakeDataplane, Reaper};
use brindle_fuzz::{ipam_with, parts, runtime, SeedPool, NODE};
use brindle_plugin::docker::{router, LocalBackend};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const MAX_CALLS: usize = 12;

/// Every route of `brindle_plugin::docker::driver_router`, plus one it does not serve.
const CALLS: [&str; 22] = [
    "/Plugin.Activate",
    "/NetworkDriver.GetCapabilities",
    "/NetworkDriver.CreateNetwork",
    "/NetworkDriver.DeleteNetwork",
    "/NetworkDriver.AllocateNetwork",
    "/NetworkDriver.FreeNetwork",
    "/NetworkDriver.CreateEndpoint",
    "/NetworkDriver.EndpointOperInfo",
    "/NetworkDriver.DeleteEndpoint",
    "/NetworkDriver.Join",
    "/NetworkDriver.Leave",
    "/NetworkDriver.DiscoverNew",
    "/NetworkDriver.DiscoverDelete",
    "/NetworkDriver.ProgramExternalConnectivity",
    "/NetworkDriver.RevokeExternalConnectivity",
    "/IpamDriver.GetCapabilities",
    "/IpamDriver.GetDefaultAddressSpaces",
    "/IpamDriver.RequestPool",
    "/IpamDriver.ReleasePool",
    "/IpamDriver.RequestAddress",
    "/IpamDriver.ReleaseAddress",
    "/NetworkDriver.GwAllocCheck",
];

/// The pool a network without `--subnet` uses, and one an admin made.
const POOLS: [SeedPool; 2] = [
    SeedPool {
        name: "default",
        cidr: "10.10.0.0/16",
        block_size: 26,
    },
    SeedPool {
        name: "office",
        cidr: "10.50.0.0/24",
        block_size: 28,
    },
];

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let dataplane = Arc::new(FakeDataplane::new());
        let backend = Arc::new(LocalBackend {
            node: NODE.into(),
            ipam: ipam_with(&POOLS).await,
            dataplane: dataplane.clone(),
            reaper: Reaper::tasks(dataplane),
            write_behind: Default::default(),
            address_locks: Default::default(),
            docker_api_socket: None,
        });
        let app = router(backend.clone());
        for call in parts(data, MAX_CALLS) {
            let Some((&which, body)) = call.split_first() else {
                continue;
            };
            let path = CALLS[usize::from(which) % CALLS.len()];
            let request = Request::post(path)
                .body(Body::from(body.to_vec()))
                .expect("a valid request line");
            let Ok(reply) = app.clone().oneshot(request).await;
            let status = reply.status();
            let bytes = reply
                .into_body()
                .collect()
                .await
                .expect("an in-memory body")
                .to_bytes();
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{path}: {status} reply is not JSON ({e}): {bytes:?}"));
            let understood = match status {
                StatusCode::OK => doc.is_object(),
                StatusCode::INTERNAL_SERVER_ERROR | StatusCode::NOT_FOUND => doc["Err"].is_string(),
                _ => false,
            };
            assert!(understood, "{path}: {status} {doc}");
        }
        backend.write_behind.settle_all().await;
        backend.reaper.settle_all().await;
    });
});
