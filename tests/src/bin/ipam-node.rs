//! One OS process acting as one node of the concurrency tests: it allocates (or
//! releases) `--count` addresses with handles `<node>-<i>` and prints one address a line.
//!
//! usage: ipam-node ENDPOINT[,ENDPOINT...] NODE alloc|release COUNT [POOL]

use std::process::ExitCode;

use brindle_ipam::{AllocRequest, EtcdConfig, EtcdStore, Ipam};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: ipam-node ENDPOINT NODE alloc|release COUNT [POOL]");
        return ExitCode::from(2);
    }
    let (endpoint, node, mode) = (&args[1], &args[2], &args[3]);
    let Ok(count) = args[4].parse::<usize>() else {
        eprintln!("ipam-node: COUNT must be a number, got {:?}", args[4]);
        return ExitCode::from(2);
    };
    let pool = args.get(5).cloned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result: Result<(), String> = rt.block_on(async {
        let store = EtcdStore::connect(&EtcdConfig {
            // ENDPOINT may list several members, comma-separated.
            endpoints: endpoint.split(',').map(str::to_string).collect(),
            ..EtcdConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let ipam = Ipam::new(store, "/brindle");
        for i in 0..count {
            let handle = format!("{node}-{i}");
            match mode.as_str() {
                "alloc" => {
                    let req = AllocRequest {
                        handle,
                        node: node.clone(),
                        pool: pool.clone(),
                        ..AllocRequest::default()
                    };
                    let a = ipam.allocate(&req).await.map_err(|e| e.to_string())?;
                    println!("{}", a.ip);
                }
                "release" => {
                    for ip in ipam
                        .release_handle(&handle)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        println!("{ip}");
                    }
                }
                other => return Err(format!("unknown mode {other:?}: use alloc or release")),
            }
        }
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ipam-node {node}: {e}");
            ExitCode::FAILURE
        }
    }
}
