//! `brindle-cni`: the CNI plugin (`type: brindle`) and CNI IPAM plugin
//! (`ipam.type: brindle-ipam`), one binary, CNI spec 1.0.0 and 1.1.0 (plus the 0.3/0.4
//! result format).
//!
//! One invocation is one operation on one attachment `(CNI_CONTAINERID, CNI_IFNAME)`.
//! When brindled runs on the node the work is one request on its local API socket
//! (warm etcd connection, cached blocks); otherwise the plugin connects to etcd itself
//! and runs the same [`ops`] in-process, entering the container netns only from a
//! dedicated thread (see `dataplane`). stdout carries exactly one JSON document (the
//! result or the error) or nothing; logs go to stderr (`BRINDLE_LOG=debug` for more).

pub mod client;
pub mod conf;
pub mod error;
pub mod node_lock;
pub mod ops;
pub mod result;
pub mod version;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Instant;

use brindle_dataplane::{Dataplane, LinuxDataplane, Reaper};
use brindle_ipam::{EtcdStore, Ipam};
use serde_json::{json, Value};
use tracing::debug;

use client::{paths, CallError};
use conf::{CniArgs, CniEnv, Command, NetConf, Settings};
use error::{code, CniError};
use ops::{
    AddReply, AddRequest, CheckRequest, Ctx, DelRequest, Done, GcReply, GcRequest, Mode,
    StatusRequest, Target,
};

/// Set to `1` to print where an invocation's time went on stderr (one line).
pub const TIMINGS_ENV: &str = "BRINDLE_TIMINGS";

/// `api_socket` value that turns the fast path off.
pub const NO_API_SOCKET: &str = "none";

/// Set (to the host veth, `NAME:INDEX`) in the detached copy of this binary that
/// finishes a direct-path DEL's veth deletion; see [`Reaper::detached`].
pub const REAP_ENV: &str = "BRINDLE_CNI_REAP";

/// What one invocation prints and how it exits.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The one JSON document for stdout, if any.
    pub stdout: Option<Value>,
    pub success: bool,
}

/// The binary's entry point.
pub fn main() -> ExitCode {
    crate::logging::init_stderr("warn");
    let env = CniEnv::from_process();
    if env.command.is_none() {
        if let Ok(job) = std::env::var(REAP_ENV) {
            return match Reaper::run_job(&job) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::warn!(link = %job, %e, "deleting veth failed");
                    ExitCode::FAILURE
                }
            };
        }
    }
    if env.command.is_none() {
        eprintln!(
            "CNI brindle plugin version {}\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            version::SUPPORTED.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    let outcome = match read_config(std::io::stdin().lock()) {
        Ok(stdin) => run(&env, &stdin),
        Err(e) => Outcome {
            stdout: Some(e.to_json(version::LATEST)),
            success: false,
        },
    };
    if let Some(doc) = &outcome.stdout {
        let mut out = std::io::stdout().lock();
        let text = serde_json::to_string(doc).expect("JSON values serialise");
        // Nothing else can be reported if stdout itself is gone.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
    if outcome.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Largest configuration read from stdin: a netconf with its `prevResult` is a few
/// KiB; more is not a configuration, and is refused before it is all in memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// The configuration on stdin, at most [`MAX_CONFIG_BYTES`].
pub fn read_config(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut config = Vec::new();
    input
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut config)
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("cannot read the configuration from stdin: {e}"),
            )
        })?;
    if config.len() as u64 > MAX_CONFIG_BYTES {
        return Err(CniError::new(
            code::DECODE,
            format!("the configuration on stdin is larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(config)
}

/// Run one invocation: `env` holds `CNI_COMMAND` and friends, `stdin` the configuration.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Outcome {
    outcome(stdin, invoke(env, stdin))
}

/// [`run`] on an IPAM and dataplane the caller provides instead of brindled or etcd:
/// the same parsing, checks, dispatch and result document (the fuzz targets in
/// `fuzz/` drive it on the in-process store and the fake dataplane).
#[cfg(feature = "fuzzing")]
pub async fn run_on<S: brindle_ipam::Store>(
    env: &CniEnv,
    stdin: &[u8],
    ctx: &Ctx<'_, S>,
) -> Outcome {
    let result = async {
        let (conf, request) = match prepare(env, stdin)? {
            Prepared::Answer(doc) => return Ok(doc),
            Prepared::Run(conf, request) => (conf, request),
        };
        let reply = execute(ctx, &request).await?;
        Ok(answer(env, &conf, reply))
    };
    outcome(stdin, result.await)
}

/// The exit status and stdout document of an invocation's result.
fn outcome(stdin: &[u8], result: Result<Option<Value>, CniError>) -> Outcome {
    match result {
        Ok(stdout) => Outcome {
            stdout,
            success: true,
        },
        Err(e) => {
            debug!(code = e.code, msg = %e.msg, "cni error");
            let reply_version = conf::peek_version(stdin)
                .filter(|v| version::SUPPORTED.contains(&v.as_str()))
                .unwrap_or_else(|| version::LATEST.to_string());
            Outcome {
                stdout: Some(e.to_json(&reply_version)),
                success: false,
            }
        }
    }
}

/// A checked invocation: answered already (VERSION), or an operation to run.
enum Prepared {
    Answer(Option<Value>),
    Run(Box<NetConf>, Request),
}

fn invoke(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let started = Instant::now();
    let timings = std::env::var_os(TIMINGS_ENV).is_some_and(|v| v == "1");
    let (conf, request) = match prepare(env, stdin)? {
        Prepared::Answer(doc) => return Ok(doc),
        Prepared::Run(conf, request) => (conf, request),
    };
    let parsed = started.elapsed();
    let command = request.name();
    let (reply, path) = perform(&conf.settings, request)?;
    if timings {
        // `BRINDLE_TIMINGS=1`: where this invocation's time went (`make bench-cni`).
        eprintln!(
            "brindle-cni timings: command={command} path={path} parse_us={} operation_us={} total_us={}",
            parsed.as_micros(),
            (started.elapsed() - parsed).as_micros(),
            started.elapsed().as_micros()
        );
    }
    debug!("operation done");
    Ok(answer(env, &conf, reply))
}

/// Parse and check the command, the configuration and the environment.
fn prepare(env: &CniEnv, stdin: &[u8]) -> Result<Prepared, CniError> {
    let command = Command::parse(env.command.as_deref().unwrap_or(""))?;
    debug!(?command, "cni invocation");
    if command == Command::Version {
        let asked = conf::peek_version(stdin)
            .filter(|v| version::SUPPORTED.contains(&v.as_str()))
            .unwrap_or_else(|| version::LATEST.to_string());
        return Ok(Prepared::Answer(Some(json!({
            "cniVersion": asked,
            "supportedVersions": version::SUPPORTED,
        }))));
    }
    let conf = NetConf::parse(stdin, env)?;
    let v = conf.cni_version.as_str();
    let min = match command {
        Command::Check => Some("0.4.0"),
        Command::Status | Command::Gc => Some("1.1.0"),
        _ => None,
    };
    if let Some(min) = min.filter(|m| !version::at_least(v, m)) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "config version {v} does not allow {command:?}; it needs cniVersion {min} or later"
            ),
        ));
    }
    let request = build(command, env, &conf)?;
    Ok(Prepared::Run(Box::new(conf), request))
}

/// The stdout document of a successful operation.
fn answer(env: &CniEnv, conf: &NetConf, reply: Reply) -> Option<Value> {
    match reply {
        Reply::Add(r) => {
            let ifname = env.ifname.as_deref().unwrap_or_default();
            Some(result::add_result(conf, &r, ifname, env.netns.as_deref()))
        }
        Reply::Done | Reply::Gc(_) => None,
    }
}

/// One operation, as sent to brindled or run directly.
#[derive(Debug, Clone)]
pub enum Request {
    Add(AddRequest),
    Del(DelRequest),
    Check(CheckRequest),
    Gc(GcRequest),
    Status(StatusRequest),
}

impl Request {
    /// The CNI command, for logs.
    fn name(&self) -> &'static str {
        match self {
            Request::Add(_) => "ADD",
            Request::Del(_) => "DEL",
            Request::Check(_) => "CHECK",
            Request::Gc(_) => "GC",
            Request::Status(_) => "STATUS",
        }
    }

    fn needs_dataplane(&self) -> bool {
        match self {
            Request::Add(r) => r.mode == Mode::Main,
            Request::Del(r) => r.mode == Mode::Main,
            Request::Check(r) => r.mode == Mode::Main,
            Request::Gc(r) => r.mode == Mode::Main,
            Request::Status(_) => false,
        }
    }
}

/// What an operation returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Add(AddReply),
    Gc(GcReply),
    Done,
}

fn build(command: Command, env: &CniEnv, conf: &NetConf) -> Result<Request, CniError> {
    let target = Target {
        node: conf.settings.node.clone(),
        prefix: conf.settings.prefix.clone(),
    };
    Ok(match command {
        Command::Add => {
            let (attachment, netns) = env.attachment(command)?;
            let args = CniArgs::parse(env.args.as_deref())?;
            Request::Add(AddRequest {
                target,
                mode: conf.mode,
                network: conf.network()?.to_string(),
                attachment,
                netns,
                ip: conf.static_ip(&args)?,
                pool: conf.pool.clone(),
                mtu: conf.mtu,
                allow_from: conf.allow_from.clone(),
            })
        }
        Command::Del => {
            let (attachment, _) = env.attachment(command)?;
            CniArgs::parse(env.args.as_deref())?;
            conf.network()?;
            Request::Del(DelRequest {
                target,
                mode: conf.mode,
                attachment,
            })
        }
        Command::Check => {
            let (attachment, netns) = env.attachment(command)?;
            CniArgs::parse(env.args.as_deref())?;
            conf.network()?;
            Request::Check(CheckRequest {
                target,
                mode: conf.mode,
                attachment,
                netns,
                ip: result::prev_ipv4(conf.prev_result.as_ref()),
                mtu: conf.mtu,
            })
        }
        Command::Gc => Request::Gc(GcRequest {
            target,
            mode: conf.mode,
            network: conf.network()?.to_string(),
            // Without the list GC would release every attachment of the network.
            valid: conf.valid_attachments.clone().ok_or_else(|| {
                CniError::config(
                    "GC needs cni.dev/valid-attachments (or cni.dev/attachments) in the configuration",
                )
            })?,
        }),
        Command::Status => Request::Status(StatusRequest {
            target,
            pool: conf.pool.clone(),
        }),
        Command::Version => unreachable!("VERSION is answered before the config is read"),
    })
}

/// brindled's socket when it answers (no async runtime needed), else etcd directly;
/// with the path taken (`brindled` or `direct`).
pub fn perform(settings: &Settings, request: Request) -> Result<(Reply, &'static str), CniError> {
    if settings.api_socket.as_os_str() != NO_API_SOCKET {
        debug!(socket = %settings.api_socket.display(), "trying brindled");
        match fast(settings, &request) {
            Ok(reply) => return Ok((reply, "brindled")),
            Err(CallError::Failed(e)) => return Err(e),
            Err(CallError::Unavailable(why)) => {
                debug!(%why, "brindled not available, going direct")
            }
            Err(CallError::Declined(e)) => debug!(%e, "brindled declined, going direct"),
        }
    }
    // Processes of this node that write its IPAM take turns (see `node_lock`).
    let turn = match (&request, &settings.ipam_lock) {
        (Request::Add(_) | Request::Del(_) | Request::Gc(_), Some(path)) => {
            Some(node_lock::take(path, node_lock::WAIT))
        }
        _ => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            CniError::new(
                code::INTERNAL,
                format!("cannot start the async runtime: {e}"),
            )
        })?;
    let reply = runtime.block_on(direct(settings, &request, turn.as_ref()))?;
    Ok((reply, "direct"))
}

fn fast(settings: &Settings, request: &Request) -> Result<Reply, CallError> {
    let s = settings.api_socket.as_path();
    Ok(match request {
        Request::Add(r) => Reply::Add(client::call(s, paths::ADD, r)?),
        Request::Del(r) => client::call::<_, Done>(s, paths::DEL, r).map(|_| Reply::Done)?,
        Request::Check(r) => client::call::<_, Done>(s, paths::CHECK, r).map(|_| Reply::Done)?,
        Request::Gc(r) => Reply::Gc(client::call(s, paths::GC, r)?),
        Request::Status(r) => client::call::<_, Done>(s, paths::STATUS, r).map(|_| Reply::Done)?,
    })
}

/// Run the operation in this process: one etcd connection, and a netlink socket only
/// when the operation touches the dataplane. With a turn on the node's lock, the node's
/// blocks kept in its file are read beside the first round trip, and kept again for the
/// next process.
pub async fn direct(
    settings: &Settings,
    request: &Request,
    turn: Option<&node_lock::Turn>,
) -> Result<Reply, CniError> {
    let store = match EtcdStore::connect(&settings.etcd).await {
        Ok(s) => s,
        Err(e) if matches!(request, Request::Status(_)) => {
            return Err(
                CniError::new(code::NOT_AVAILABLE, "brindle cannot serve ADD now")
                    .with_details(e.to_string()),
            )
        }
        Err(e) => return Err(e.into()),
    };
    let ipam = Ipam::new(store, &settings.prefix);
    let remembered = turn.map(|t| t.remembered_blocks()).unwrap_or_default();
    ipam.expect_blocks(remembered.iter().copied());
    let dataplane = if request.needs_dataplane() {
        Some(LinuxDataplane::connect()?)
    } else {
        None
    };
    // A detached copy of this binary deletes the veth while DEL has already answered.
    let reaper = Reaper::detached(REAP_ENV);
    let ctx = Ctx {
        ipam: &ipam,
        dataplane: dataplane.as_ref().map(|d| d as &dyn Dataplane),
        node: &settings.node,
        reaper: Some(&reaper),
    };
    let reply = execute(&ctx, request).await;
    if let (Some(turn), Some(blocks)) = (turn, ipam.cached_node_blocks(&settings.node)) {
        if blocks != remembered {
            turn.remember_blocks(&blocks);
        }
    }
    reply
}

/// Run the operation on `ctx`'s IPAM and dataplane.
pub async fn execute<S: brindle_ipam::Store>(
    ctx: &Ctx<'_, S>,
    request: &Request,
) -> Result<Reply, CniError> {
    Ok(match request {
        Request::Add(r) => Reply::Add(ops::add(ctx, r).await?),
        Request::Del(r) => ops::del(ctx, r).await.map(|_| Reply::Done)?,
        Request::Check(r) => ops::check(ctx, r).await.map(|_| Reply::Done)?,
        Request::Gc(r) => Reply::Gc(ops::gc(ctx, r).await?),
        Request::Status(r) => ops::status(ctx, r).await.map(|_| Reply::Done)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> CniEnv {
        CniEnv::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn version_echoes_supported_request_version() {
        let out = run(
            &env(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"1.0.0"}"#,
        );
        assert!(out.success);
        let doc = out.stdout.unwrap();
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert!(doc["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("1.1.0")));
        let out = run(&env(&[("CNI_COMMAND", "VERSION")]), b"");
        assert_eq!(out.stdout.unwrap()["cniVersion"], "1.1.0");
    }

    #[test]
    fn add_request_carries_allow_from_and_bad_values_are_code_7() {
        let vars = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let conf = br#"{"cniVersion":"1.0.0","name":"web","type":"brindle","brindle.allow-from":["192.0.2.0/24"]}"#;
        let conf = NetConf::parse(conf, &vars).unwrap();
        let Request::Add(req) = build(Command::Add, &vars, &conf).unwrap() else {
            panic!("ADD builds an AddRequest");
        };
        assert_eq!(req.allow_from, vec!["192.0.2.0/24".parse().unwrap()]);
        assert_eq!(req.network, "web");
        let bad = br#"{"cniVersion":"1.0.0","name":"web","type":"brindle","brindle.allow-from":"192.0.2.0/33"}"#;
        let out = run(&vars, bad);
        assert!(!out.success);
        let doc = out.stdout.unwrap();
        assert_eq!(doc["code"], 7);
        assert!(
            doc["msg"].as_str().unwrap().contains("\"192.0.2.0/33\""),
            "{doc}"
        );
    }

    #[test]
    fn errors_are_json_with_request_version() {
        let conf = br#"{"cniVersion":"1.0.0","name":"n","type":"brindle"}"#;
        let out = run(&env(&[("CNI_COMMAND", "ADD")]), conf);
        assert!(!out.success);
        let doc = out.stdout.unwrap();
        assert_eq!(doc["code"], 4);
        assert_eq!(doc["cniVersion"], "1.0.0");
        let out = run(&env(&[("CNI_COMMAND", "STATUS")]), conf);
        assert_eq!(out.stdout.unwrap()["code"], 1);
        let gc = br#"{"cniVersion":"1.1.0","name":"n","type":"brindle"}"#;
        let out = run(&env(&[("CNI_COMMAND", "GC")]), gc);
        assert_eq!(out.stdout.unwrap()["code"], 7);
        let out = run(&env(&[("CNI_COMMAND", "FROB")]), conf);
        assert_eq!(out.stdout.unwrap()["code"], 4);
        let out = run(&env(&[("CNI_COMMAND", "ADD")]), b"not json");
        let doc = out.stdout.unwrap();
        assert_eq!(doc["code"], 6);
        assert_eq!(doc["cniVersion"], "1.1.0");
    }
    #[test]
    fn an_oversized_configuration_is_refused_without_reading_it_all() {
        let endless = std::io::repeat(b' ');
        let err = read_config(endless).unwrap_err();
        assert_eq!(err.code, code::DECODE);
        assert!(err.msg.contains("larger than 1048576 bytes"), "{err}");
        let conf = br#"{"cniVersion":"1.0.0"}"#;
        assert_eq!(read_config(&conf[..]).unwrap(), conf);
    }
}
