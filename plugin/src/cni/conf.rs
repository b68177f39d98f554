//! What a CNI invocation hands us: the `CNI_*` environment, `CNI_ARGS`, and the request
//! configuration on stdin, turned into checked values.
//!
//! Unknown top-level keys are ignored (runtimes add `capabilities`, `runtimeConfig`,
//! `args`, `cni.dev/*`, `prevResult`); known keys with the wrong type are an error.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use brindle_dataplane::validate_ifname;
use brindle_ipam::EtcdConfig;
use ipnetwork::Ipv4Network;
use serde::Deserialize;
use serde_json::Value;

use super::error::{code, CniError};
use super::ops::{Attachment, Mode};
use super::version;
use crate::allow_from::{self, KEY as ALLOW_FROM};
use crate::config::{read_password_file, Secret};

/// The main plugin's `type`.
pub const MAIN_TYPE: &str = "brindle";
/// The IPAM plugin's `type`.
pub const IPAM_TYPE: &str = "brindle-ipam";
/// Default local API socket of brindled.
pub const DEFAULT_API_SOCKET: &str = "/run/brindle/brindled.sock";
/// `ipam_lock_file` value that turns the direct path's per-node lock off.
pub const NO_IPAM_LOCK: &str = "none";

/// The CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            "VERSION" => Self::Version,
            other => {
                return Err(CniError::env(format!(
                    "unknown CNI_COMMAND: {other}; expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                )))
            }
        })
    }
}

/// The `CNI_*` variables; empty strings count as absent (libcni sets all six). Its
/// `Debug` hides the value of every `BRINDLE_*PASSWORD*` variable.
#[derive(Clone, Default)]
pub struct CniEnv {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: Option<String>,
    pub path: Option<String>,
    /// `BRINDLE_*` fallbacks for the settings.
    pub brindle: BTreeMap<String, String>,
}

impl std::fmt::Debug for CniEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            brindle,
        } = self;
        let brindle: BTreeMap<&str, &str> = brindle
            .iter()
            .map(|(k, v)| {
                let secret = k.contains("PASSWORD") && !k.ends_with("_FILE");
                (k.as_str(), if secret { "<redacted>" } else { v.as_str() })
            })
            .collect();
        f.debug_struct("CniEnv")
            .field("command", command)
            .field("container_id", container_id)
            .field("netns", netns)
            .field("ifname", ifname)
            .field("args", args)
            .field("path", path)
            .field("brindle", &brindle)
            .finish()
    }
}

impl CniEnv {
    /// From the process environment.
    pub fn from_process() -> Self {
        Self::from_vars_os(std::env::vars_os())
    }

    /// From raw variables, which need not be UTF-8 (`std::env::vars` would panic on
    /// such a one): names that are not UTF-8 are not ours, and a value that is not
    /// UTF-8 is read lossily, so its U+FFFD characters make the value's own check fail
    /// with a message naming it (a container id, an interface name, a netns path that
    /// does not exist).
    pub fn from_vars_os(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Self {
        Self::from_vars(vars.into_iter().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// From any list of variables (tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut env = CniEnv::default();
        for (k, v) in vars {
            if v.is_empty() {
                continue;
            }
            match k.as_str() {
                "CNI_COMMAND" => env.command = Some(v),
                "CNI_CONTAINERID" => env.container_id = Some(v),
                "CNI_NETNS" => env.netns = Some(v),
                "CNI_IFNAME" => env.ifname = Some(v),
                "CNI_ARGS" => env.args = Some(v),
                "CNI_PATH" => env.path = Some(v),
                k if k.starts_with("BRINDLE_") => {
                    env.brindle.insert(k.to_string(), v);
                }
                _ => {}
            }
        }
        env
    }

    /// The attachment (container id, ifname) and netns, checking what `command` needs.
    pub fn attachment(&self, command: Command) -> Result<(Attachment, Option<String>), CniError> {
        let mut missing = Vec::new();
        if self.container_id.is_none() {
            missing.push("CNI_CONTAINERID");
        }
        if matches!(command, Command::Add | Command::Check) && self.netns.is_none() {
            missing.push("CNI_NETNS");
        }
        if self.ifname.is_none() {
            missing.push("CNI_IFNAME");
        }
        if !missing.is_empty() {
            return Err(CniError::env(format!(
                "required env variables [{}] missing",
                missing.join(" ")
            )));
        }
        let container_id = self.container_id.clone().unwrap_or_default();
        validate_container_id(&container_id)?;
        let ifname = self.ifname.clone().unwrap_or_default();
        validate_ifname(&ifname).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))?;
        Ok((
            Attachment {
                container_id,
                ifname,
            },
            self.netns.clone(),
        ))
    }
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`, the spec's container id rule.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok && id.len() <= 200 {
        Ok(())
    } else {
        Err(CniError::env(format!(
            "invalid CNI_CONTAINERID {id:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$ (at most 200 characters)"
        )))
    }
}

/// `CNI_ARGS` keys brindle reads or knowingly ignores.
const KNOWN_ARGS: &[&str] = &[
    "IP",
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Parsed `CNI_ARGS`: `K1=V1;K2=V2`. Unknown keys are an error unless `IgnoreUnknown`
/// is `1` or `true` (the reference plugins' rule).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=` (one address, or a comma list), as given.
    pub ips: Vec<String>,
}

impl CniArgs {
    pub fn parse(s: Option<&str>) -> Result<Self, CniError> {
        let Some(s) = s else {
            return Ok(Self::default());
        };
        let mut pairs = Vec::new();
        for part in s.split(';').filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err(CniError::env(format!(
                    "CNI_ARGS: invalid pair {part:?}: expected KEY=VALUE pairs separated by ';'"
                )));
            };
            pairs.push((k, v));
        }
        let ignore_unknown = pairs
            .iter()
            .any(|(k, v)| *k == "IgnoreUnknown" && (*v == "1" || v.eq_ignore_ascii_case("true")));
        let unknown: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| !KNOWN_ARGS.contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !unknown.is_empty() && !ignore_unknown {
            return Err(CniError::env(format!(
                "CNI_ARGS: unknown args {unknown:?}; add IgnoreUnknown=1 to ignore them"
            )));
        }
        let ips = pairs
            .iter()
            .filter(|(k, _)| *k == "IP")
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Self { ips })
    }
}

/// etcd endpoints may be one comma-separated string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Endpoints {
    One(String),
    Many(Vec<String>),
}

impl Endpoints {
    fn list(&self) -> Vec<String> {
        match self {
            Endpoints::One(s) => s
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
            Endpoints::Many(v) => v.clone(),
        }
    }
}

/// The brindle keys, read from the plugin object (main plugin) or its `ipam` section.
#[derive(Debug, Clone, Default, Deserialize)]
struct RawSettings {
    etcd_endpoints: Option<Endpoints>,
    etcd_prefix: Option<String>,
    node: Option<String>,
    #[serde(alias = "etcd_ca_cert_file")]
    etcd_ca_file: Option<String>,
    etcd_cert_file: Option<String>,
    etcd_key_file: Option<String>,
    etcd_username: Option<String>,
    /// Shown as `<redacted>` by `Debug`.
    etcd_password: Option<Secret>,
    /// A file holding the password (so the conflist need not).
    etcd_password_file: Option<PathBuf>,
    /// brindled's local API socket (the fast path).
    api_socket: Option<String>,
    /// The direct path's per-node lock file, or `none`.
    ipam_lock_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawIpam {
    #[serde(rename = "type")]
    ipam_type: Option<String>,
    pool: Option<String>,
    gateway: Option<Ipv4Addr>,
    routes: Option<Vec<Value>>,
    #[serde(rename = "brindle.allow-from")]
    allow_from: Option<Value>,
    #[serde(flatten)]
    settings: RawSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawRuntimeConfig {
    ips: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawConf {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    plugin_type: Option<String>,
    mtu: Option<u32>,
    ipam: Option<RawIpam>,
    dns: Option<Value>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: Option<RawRuntimeConfig>,
    args: Option<Value>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
    #[serde(rename = "brindle.allow-from")]
    allow_from: Option<Value>,
    #[serde(flatten)]
    settings: RawSettings,
}

/// Where brindle's state is and which node this is.
#[derive(Debug, Clone)]
pub struct Settings {
    pub etcd: EtcdConfig,
    pub prefix: String,
    pub node: String,
    pub api_socket: PathBuf,
    /// The lock the direct path's IPAM writers of this node take turns on (`None`:
    /// `ipam_lock_file` is `none`).
    pub ipam_lock: Option<PathBuf>,
}

/// A checked request configuration.
#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    /// The network name (checked for ADD/DEL/CHECK/GC).
    pub name: Option<String>,
    pub mode: Mode,
    pub settings: Settings,
    pub pool: Option<String>,
    pub mtu: Option<u32>,
    /// IPAM mode: gateway returned with the address (default 169.254.1.1).
    pub ipam_gateway: Ipv4Addr,
    /// IPAM mode: routes returned as given (default none).
    pub ipam_routes: Vec<Value>,
    pub dns: Option<Value>,
    pub prev_result: Option<Value>,
    /// Static addresses from `runtimeConfig.ips` and `args.cni.ips`, as given.
    pub static_ips: Vec<(String, &'static str)>,
    /// GC: attachments still valid (`None` if the key was absent).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// `brindle.allow-from` (main mode): the only sources outside every pool that may
    /// connect; empty allows any.
    pub allow_from: Vec<Ipv4Network>,
}

/// The `cniVersion` of a stdin document, if it has a string one (for error replies
/// before the whole config is checked).
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    v.get("cniVersion")?.as_str().map(str::to_string)
}

impl NetConf {
    /// Decode and check the configuration; `env` supplies the `BRINDLE_*` fallbacks.
    pub fn parse(stdin: &[u8], env: &CniEnv) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "failed to decode the network configuration on stdin",
            )
            .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "the network configuration on stdin is not a JSON object",
            ));
        }
        let raw: RawConf = serde_json::from_value(value)
            .map_err(|e| CniError::config(format!("invalid network configuration: {e}")))?;
        let cni_version = raw
            .cni_version
            .clone()
            .ok_or_else(|| CniError::config("network configuration has no cniVersion"))?;
        version::ensure_supported(&cni_version)?;
        let ipam = raw.ipam.clone().unwrap_or_default();
        let plugin_type = raw
            .plugin_type
            .as_deref()
            .ok_or_else(|| CniError::config("network configuration has no type"))?;
        let ipam_type = ipam.ipam_type.as_deref();
        let mode = if plugin_type == MAIN_TYPE {
            match ipam_type {
                None | Some(IPAM_TYPE) => Mode::Main,
                Some(other) => {
                    return Err(CniError::unsupported(format!(
                        "ipam type {other:?} is not supported by the brindle main plugin: use {IPAM_TYPE:?} or leave out the ipam section"
                    )))
                }
            }
        } else if ipam_type == Some(IPAM_TYPE) {
            Mode::Ipam
        } else {
            return Err(CniError::config(format!(
                "plugin type {plugin_type:?} with ipam type {:?}: brindle-cni serves type {MAIN_TYPE:?}, or ipam type {IPAM_TYPE:?} under another main plugin",
                ipam_type.unwrap_or("")
            )));
        };
        if let Some(name) = &raw.name {
            validate_network_name(name)?;
        }
        if raw.mtu == Some(0) || raw.mtu.is_some_and(|m| m < 68) {
            return Err(CniError::config(format!(
                "invalid mtu {}: must be at least 68",
                raw.mtu.unwrap_or(0)
            )));
        }
        // The main plugin reads its own keys first, then its ipam section's; the IPAM
        // plugin reads only its section (the main plugin's keys belong to that plugin).
        let layers: Vec<&RawSettings> = match mode {
            Mode::Main => vec![&raw.settings, &ipam.settings],
            Mode::Ipam => vec![&ipam.settings],
        };
        let settings = resolve_settings(&layers, env)?;
        let pool = ipam
            .pool
            .clone()
            .or_else(|| env.brindle.get("BRINDLE_POOL").cloned())
            .filter(|p| !p.is_empty());
        let mut static_ips = Vec::new();
        if let Some(rc) = &raw.runtime_config {
            for ip in rc.ips.iter().flatten() {
                static_ips.push((ip.clone(), "runtimeConfig.ips"));
            }
        }
        if let Some(ips) = raw
            .args
            .as_ref()
            .and_then(|a| a.get("cni"))
            .and_then(|c| c.get("ips"))
        {
            let list = ips.as_array().ok_or_else(|| {
                CniError::config(format!(
                    "args.cni.ips must be a list of addresses, not {ips}"
                ))
            })?;
            for ip in list {
                let s = ip.as_str().ok_or_else(|| {
                    CniError::config(format!("args.cni.ips entry {ip} is not a string"))
                })?;
                static_ips.push((s.to_string(), "args.cni.ips"));
            }
        }
        let allow_from = match mode {
            // Like the settings: the plugin's own key first, then its ipam section's.
            Mode::Main => raw
                .allow_from
                .as_ref()
                .or(ipam.allow_from.as_ref())
                .map(parse_allow_from)
                .transpose()?
                .unwrap_or_default(),
            // No endpoint record in IPAM mode, so nothing would enforce it.
            Mode::Ipam if ipam.allow_from.is_some() => {
                return Err(CniError::unsupported(format!(
                    "{ALLOW_FROM} in the ipam section needs the brindle main plugin (type {MAIN_TYPE:?}): under another main plugin brindle does not wire the interface and cannot enforce it"
                )))
            }
            Mode::Ipam => Vec::new(),
        };
        let valid = raw.valid_attachments.or(raw.attachments).map(|list| {
            list.into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect()
        });
        Ok(NetConf {
            cni_version,
            name: raw.name,
            mode,
            settings,
            pool,
            mtu: raw.mtu,
            ipam_gateway: ipam.gateway.unwrap_or(brindle_dataplane::GATEWAY_IP),
            ipam_routes: ipam.routes.unwrap_or_default(),
            dns: raw.dns,
            prev_result: raw.prev_result,
            static_ips,
            valid_attachments: valid,
            allow_from,
        })
    }

    /// The network name, required by ADD, DEL, CHECK and GC (code 7 when absent).
    pub fn network(&self) -> Result<&str, CniError> {
        self.name
            .as_deref()
            .ok_or_else(|| CniError::config("network configuration has no name"))
    }

    /// The one static address requested through any channel, or `None` for a dynamic one.
    pub fn static_ip(&self, args: &CniArgs) -> Result<Option<Ipv4Addr>, CniError> {
        let mut wanted: Vec<(Ipv4Addr, &str)> = Vec::new();
        let from_args = args.ips.iter().map(|s| (s.clone(), "CNI_ARGS IP"));
        for (given, source) in self.static_ips.iter().cloned().chain(from_args) {
            let ip = parse_static_ip(&given, source)?;
            if !wanted.iter().any(|(w, _)| *w == ip) {
                wanted.push((ip, source));
            }
        }
        match wanted.as_slice() {
            [] => Ok(None),
            [(ip, _)] => Ok(Some(*ip)),
            many => Err(CniError::config(format!(
                "several static addresses requested ({}); brindle assigns one IPv4 address per attachment",
                many.iter()
                    .map(|(ip, s)| format!("{ip} from {s}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }
}

/// `brindle.allow-from`: a list of CIDR strings or one comma-separated string.
fn parse_allow_from(value: &Value) -> Result<Vec<Ipv4Network>, CniError> {
    let parsed = match value {
        Value::String(s) => allow_from::parse_list(s),
        Value::Array(items) => {
            let mut entries = Vec::with_capacity(items.len());
            for item in items {
                entries.push(item.as_str().ok_or_else(|| {
                    CniError::config(format!(
                        "invalid {ALLOW_FROM} entry {item}: expected a string such as \"192.0.2.0/24\""
                    ))
                })?);
            }
            allow_from::parse_entries(entries)
        }
        other => {
            return Err(CniError::config(format!(
                "invalid {ALLOW_FROM} value {other}: expected a list of CIDR strings such as [\"192.0.2.0/24\"] or one comma-separated string"
            )))
        }
    };
    parsed.map_err(|e| CniError::config(e.to_string()))
}

/// An address with an optional prefix (`10.0.0.5` or `10.0.0.5/24`); IPv4 only.
fn parse_static_ip(given: &str, source: &str) -> Result<Ipv4Addr, CniError> {
    let addr = given.split_once('/').map_or(given, |(a, _)| a);
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(CniError::unsupported(format!(
            "{source}: IPv6 address {given} requested, but brindle pools are IPv4 only"
        ))),
        Err(_) => Err(CniError::config(format!(
            "{source}: invalid address {given:?}: expected an IPv4 address like 10.0.0.5 or 10.0.0.5/24"
        ))),
    }
}

fn validate_network_name(name: &str) -> Result<(), CniError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::config(format!(
            "invalid network name {name:?}: must match ^[a-zA-Z0-9][a-zA-Z0-9_.-]*$"
        )))
    }
}

fn resolve_settings(layers: &[&RawSettings], env: &CniEnv) -> Result<Settings, CniError> {
    let pick = |get: &dyn Fn(&RawSettings) -> Option<String>, var: &str| {
        layers
            .iter()
            .find_map(|l| get(l))
            .or_else(|| env.brindle.get(var).cloned())
            .filter(|s| !s.is_empty())
    };
    let endpoints = layers
        .iter()
        .find_map(|l| l.etcd_endpoints.as_ref().map(Endpoints::list))
        .or_else(|| {
            env.brindle
                .get("BRINDLE_ETCD_ENDPOINTS")
                .map(|s| Endpoints::One(s.clone()).list())
        })
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| vec!["http://127.0.0.1:2379".to_string()]);
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(CniError::config(format!(
                "invalid etcd_endpoints entry {e:?}: expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
    }
    let node = pick(&|l| l.node.clone(), "BRINDLE_NODE").unwrap_or_else(crate::config::hostname);
    brindle_ipam::error::validate_node_name(&node)
        .map_err(|e| CniError::config(format!("node: {e}")))?;
    Ok(Settings {
        etcd: EtcdConfig {
            endpoints,
            ca_file: pick(&|l| l.etcd_ca_file.clone(), "BRINDLE_ETCD_CA_FILE"),
            cert_file: pick(&|l| l.etcd_cert_file.clone(), "BRINDLE_ETCD_CERT_FILE"),
            key_file: pick(&|l| l.etcd_key_file.clone(), "BRINDLE_ETCD_KEY_FILE"),
            username: pick(&|l| l.etcd_username.clone(), "BRINDLE_ETCD_USERNAME"),
            password: resolve_password(layers, env)?,
        },
        prefix: pick(&|l| l.etcd_prefix.clone(), "BRINDLE_ETCD_PREFIX")
            .unwrap_or_else(|| brindle_ipam::keys::DEFAULT_PREFIX.to_string()),
        api_socket: pick(&|l| l.api_socket.clone(), "BRINDLE_API_SOCKET")
            .unwrap_or_else(|| DEFAULT_API_SOCKET.to_string())
            .into(),
        ipam_lock: match pick(&|l| l.ipam_lock_file.clone(), "BRINDLE_IPAM_LOCK_FILE") {
            Some(off) if off == NO_IPAM_LOCK => None,
            Some(path) if path.starts_with('/') => Some(path.into()),
            Some(path) => {
                return Err(CniError::config(format!(
                    "invalid ipam_lock_file {path:?}: expected an absolute path, or \"none\""
                )))
            }
            None => Some(super::node_lock::default_path(&node)),
        },
        node,
    })
}

/// The etcd password: `etcd_password` or `etcd_password_file` of the first layer that
/// has either, else `BRINDLE_ETCD_PASSWORD` or `BRINDLE_ETCD_PASSWORD_FILE`. Both in
/// one place, or a file that gives no password, is an invalid configuration (code 7)
/// naming the key and the path.
fn resolve_password(layers: &[&RawSettings], env: &CniEnv) -> Result<Option<String>, CniError> {
    let from_env = RawSettings {
        etcd_password: env
            .brindle
            .get("BRINDLE_ETCD_PASSWORD")
            .cloned()
            .map(Secret::from),
        etcd_password_file: env
            .brindle
            .get("BRINDLE_ETCD_PASSWORD_FILE")
            .map(PathBuf::from),
        ..RawSettings::default()
    };
    let sources = layers
        .iter()
        .map(|l| (*l, ("etcd_password", "etcd_password_file")))
        .chain(std::iter::once((
            &from_env,
            ("BRINDLE_ETCD_PASSWORD", "BRINDLE_ETCD_PASSWORD_FILE"),
        )));
    for (layer, (key, file_key)) in sources {
        let password = layer.etcd_password.as_ref().filter(|p| !p.is_empty());
        let file = layer
            .etcd_password_file
            .as_ref()
            .filter(|f| !f.as_os_str().is_empty());
        match (password, file) {
            (Some(_), Some(_)) => {
                return Err(CniError::config(format!(
                    "{key} and {file_key} are both set: give one"
                )))
            }
            (Some(p), None) => return Ok(Some(p.expose().to_string())),
            (None, Some(path)) => {
                return read_password_file(path)
                    .map(|p| Some(p.expose().to_string()))
                    .map_err(|e| CniError::config(format!("{file_key}: {e}")))
            }
            (None, None) => {}
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
