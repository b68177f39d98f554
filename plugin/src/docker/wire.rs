//! The JSON bodies of Docker's remote NetworkDriver and IpamDriver protocols (libnetwork
//! `drivers/remote/api`, `ipams/remote/api`), as Docker 20.10 sends them.
//!
//! Field names are PascalCase on the wire, with odd acronyms (`NetworkID`, `IPv4Data`,
//! `V6`) spelled out. Requests tolerate unknown keys (newer daemons add some), missing
//! keys and JSON `null` for maps and lists (`Options` is `null` in container
//! `RequestAddress` calls). Replies never carry fields Docker did not ask for: echoing
//! `Interface.Address` from `CreateEndpoint` makes Docker roll the endpoint back.

use std::collections::{BTreeMap, HashMap};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

/// A JSON object with values of any type (`CreateNetwork` and `CreateEndpoint` options).
pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// Longest `NetworkID` or `EndpointID` accepted (Docker's are 64 hex digits).
pub const MAX_ID_LEN: usize = 128;

/// A `NetworkID` or `EndpointID`. It becomes an etcd key segment and part of a veth
/// name, so a forged one is refused while decoding: at most [`MAX_ID_LEN`] letters,
/// digits, `-`, `_` or `.`. An empty one is left to the call to refuse.
fn docker_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let id = String::deserialize(deserializer)?;
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if id.len() <= MAX_ID_LEN && id.bytes().all(allowed) {
        return Ok(id);
    }
    let shown: String = id.chars().take(80).collect();
    Err(D::Error::custom(format!(
        "invalid id {shown:?} ({} bytes): Docker ids are at most {MAX_ID_LEN} letters, digits, '-', '_' or '.'",
        id.len()
    )))
}

/// `Plugin.Activate` reply.
#[derive(Debug, Serialize)]
pub struct ActivateResponse {
    #[serde(rename = "Implements")]
    pub implements: Vec<&'static str>,
}

/// `NetworkDriver.GetCapabilities` reply.
#[derive(Debug, Serialize)]
pub struct NetworkCapabilities {
    /// `local`: networks and their state are per node (`global` needs swarm).
    #[serde(rename = "Scope")]
    pub scope: &'static str,
    #[serde(rename = "ConnectivityScope")]
    pub connectivity_scope: &'static str,
}

/// `IpamDriver.GetCapabilities` reply.
#[derive(Debug, Serialize)]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    /// False: state lives in etcd, Docker need not replay pools and addresses at start.
    #[serde(rename = "RequiresRequestReplay")]
    pub requires_request_replay: bool,
}

/// `IpamDriver.GetDefaultAddressSpaces` reply.
#[derive(Debug, Serialize)]
pub struct AddressSpaces {
    #[serde(rename = "LocalDefaultAddressSpace")]
    pub local: &'static str,
    #[serde(rename = "GlobalDefaultAddressSpace")]
    pub global: &'static str,
}

/// `IpamDriver.RequestPool` request: one per `--subnet` (or one without).
#[derive(Debug, Default, Deserialize)]
pub struct RequestPoolRequest {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// `--subnet`, `""` when none was given.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// `--ip-range`, `""` when none was given.
    #[serde(rename = "SubPool", default)]
    pub sub_pool: String,
    /// `--ipam-opt k=v`.
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
    /// True for the IPv6 pools of `--ipv6` networks.
    #[serde(rename = "V6", default)]
    pub v6: bool,
}

/// `IpamDriver.RequestPool` reply.
#[derive(Debug, Serialize)]
pub struct RequestPoolResponse {
    /// Opaque to Docker, sent back in every later call (see `pool_id.rs`).
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// The network's subnet, CIDR.
    #[serde(rename = "Pool")]
    pub pool: String,
    /// `com.docker.network.gateway` here stops Docker asking for a gateway address.
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleasePool` request.
#[derive(Debug, Default, Deserialize)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
}

/// `IpamDriver.RequestAddress` request: a container, the gateway or an aux address.
#[derive(Debug, Default, Deserialize)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
    /// A plain IP (`--ip`, `--gateway`, `--aux-address`), or `""` for any.
    #[serde(rename = "Address", default)]
    pub address: String,
    /// `null` for containers and aux addresses; `RequestAddressType` for the gateway.
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
}

/// `IpamDriver.RequestAddress` reply.
#[derive(Debug, Serialize)]
pub struct RequestAddressResponse {
    /// CIDR: the prefix length becomes the container interface's.
    #[serde(rename = "Address")]
    pub address: String,
    #[serde(rename = "Data")]
    pub data: BTreeMap<String, String>,
}

/// `IpamDriver.ReleaseAddress` request.
#[derive(Debug, Default, Deserialize)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID", default)]
    pub pool_id: String,
    /// A plain IP.
    #[serde(rename = "Address", default)]
    pub address: String,
}

/// One entry of `IPv4Data` / `IPv6Data`: a pool Docker got from the IPAM driver.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct IpamData {
    #[serde(rename = "AddressSpace", default)]
    pub address_space: String,
    /// CIDR.
    #[serde(rename = "Pool", default)]
    pub pool: String,
    /// CIDR with the pool's prefix length; absent when no gateway was allocated.
    #[serde(rename = "Gateway", default)]
    pub gateway: Option<String>,
    /// `--aux-address name=A`: name → CIDR.
    #[serde(rename = "AuxAddresses", default)]
    pub aux_addresses: Option<HashMap<String, String>>,
}

/// `NetworkDriver.CreateNetwork` request.
#[derive(Debug, Default, Deserialize)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
    /// `com.docker.network.generic` (the `-o` options), `enable_ipv6`, `internal`, ...
    #[serde(rename = "Options", default)]
    pub options: Option<JsonMap>,
    #[serde(rename = "IPv4Data", default)]
    pub ipv4_data: Option<Vec<IpamData>>,
    #[serde(rename = "IPv6Data", default)]
    pub ipv6_data: Option<Vec<IpamData>>,
}

/// Requests naming only a network (`DeleteNetwork`, `FreeNetwork`).
#[derive(Debug, Default, Deserialize)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
}

/// `NetworkDriver.AllocateNetwork` request (swarm managers only; never for `local`).
#[derive(Debug, Default, Deserialize)]
pub struct AllocateNetworkRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
    #[serde(rename = "Options", default)]
    pub options: Option<HashMap<String, String>>,
}

/// `NetworkDriver.AllocateNetwork` reply: the options workers will receive.
#[derive(Debug, Serialize)]
pub struct AllocateNetworkResponse {
    #[serde(rename = "Options")]
    pub options: HashMap<String, String>,
}

/// The endpoint interface Docker describes in `CreateEndpoint` (and we may complete).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct EndpointInterface {
    /// CIDR, as the IPAM driver returned it; `""` when unknown.
    #[serde(rename = "Address", default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(
        rename = "AddressIPv6",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub address_ipv6: String,
    /// Set when the user gave `--mac-address`; we fill it only when empty.
    #[serde(
        rename = "MacAddress",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mac_address: String,
}

/// `NetworkDriver.CreateEndpoint` request.
#[derive(Debug, Default, Deserialize)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "docker_id")]
    pub endpoint_id: String,
    #[serde(rename = "Interface", default)]
    pub interface: Option<EndpointInterface>,
    /// Port maps, DNS servers, `--driver-opt`s: nothing brindle acts on.
    #[serde(rename = "Options", default)]
    pub options: Option<JsonMap>,
}

/// `NetworkDriver.CreateEndpoint` reply.
#[derive(Debug, Default, Serialize)]
pub struct CreateEndpointResponse {
    /// Only fields Docker left empty.
    #[serde(rename = "Interface", skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterface>,
}

/// Requests naming a network and an endpoint (`Leave`, `DeleteEndpoint`,
/// `EndpointOperInfo`, `Program`/`RevokeExternalConnectivity`).
#[derive(Debug, Default, Deserialize)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "docker_id")]
    pub endpoint_id: String,
}

/// `NetworkDriver.Join` request.
#[derive(Debug, Default, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID", default, deserialize_with = "docker_id")]
    pub network_id: String,
    #[serde(rename = "EndpointID", default, deserialize_with = "docker_id")]
    pub endpoint_id: String,
    /// The container's network namespace, `/var/run/docker/netns/<container id[:12]>`.
    #[serde(rename = "SandboxKey", default)]
    pub sandbox_key: String,
}

/// Which host link Docker moves into the container, and what it is called there.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InterfaceName {
    #[serde(rename = "SrcName")]
    pub src_name: String,
    #[serde(rename = "DstPrefix")]
    pub dst_prefix: String,
}

/// A route Docker installs in the container along with the interface.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StaticRoute {
    #[serde(rename = "Destination")]
    pub destination: String,
    /// 0: via `next_hop`; 1: connected (on this interface).
    #[serde(rename = "RouteType")]
    pub route_type: u8,
    #[serde(rename = "NextHop")]
    pub next_hop: String,
}

/// `NetworkDriver.Join` reply.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct JoinResponse {
    #[serde(rename = "InterfaceName")]
    pub interface_name: InterfaceName,
    /// Plain IPv4 address; on-link through the connected route in `static_routes`.
    #[serde(rename = "Gateway")]
    pub gateway: String,
    #[serde(rename = "StaticRoutes")]
    pub static_routes: Vec<StaticRoute>,
    /// No `docker_gwbridge` for this endpoint, whatever else happens in the sandbox.
    #[serde(rename = "DisableGatewayService")]
    pub disable_gateway_service: bool,
}

/// `NetworkDriver.EndpointOperInfo` reply.
#[derive(Debug, Default, Serialize)]
pub struct OperInfoResponse {
    #[serde(rename = "Value")]
    pub value: BTreeMap<String, String>,
}

/// `{}`: the reply of calls with nothing to say.
#[derive(Debug, Default, Serialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_trace_bodies() {
        // Bodies exactly as Docker 20.10 sent them (protocols.md §F, T3, T4, T2).
        let pool: RequestPoolRequest = serde_json::from_str(
            r#"{"AddressSpace":"probe-local","Pool":"10.252.0.0/24","SubPool":"10.252.0.128/25","Options":{"ipamk":"ipamv"},"V6":false}"#,
        )
        .unwrap();
        assert_eq!(pool.sub_pool, "10.252.0.128/25");
        assert_eq!(pool.options.unwrap()["ipamk"], "ipamv");

        let addr: RequestAddressRequest = serde_json::from_str(
            r#"{"PoolID":"probe-local/10.250.0.0/24","Address":"10.250.0.7","Options":null}"#,
        )
        .unwrap();
        assert_eq!(addr.address, "10.250.0.7");
        assert!(addr.options.is_none());

        let net: CreateNetworkRequest = serde_json::from_str(
            r#"{"NetworkID":"433b","Options":{"com.docker.network.enable_ipv6":true,"com.docker.network.generic":{"drvk":"drvv"}},"IPv4Data":[{"AddressSpace":"probe-local","AuxAddresses":{"host1":"10.252.0.10/24"},"Gateway":"10.252.0.254/24","Pool":"10.252.0.0/24"}],"IPv6Data":[]}"#,
        )
        .unwrap();
        let v4 = net.ipv4_data.unwrap();
        assert_eq!(v4[0].gateway.as_deref(), Some("10.252.0.254/24"));
        assert_eq!(
            v4[0].aux_addresses.as_ref().unwrap()["host1"],
            "10.252.0.10/24"
        );

        let ep: CreateEndpointRequest = serde_json::from_str(
            r#"{"NetworkID":"433b","EndpointID":"d2c0","Interface":{"Address":"10.252.0.130/24","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.dnsservers":["10.252.0.53"],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"127.0.0.1","HostPort":18080,"HostPortEnd":18080}]}}"#,
        )
        .unwrap();
        assert_eq!(ep.interface.unwrap().address, "10.252.0.130/24");

        let join: JoinRequest = serde_json::from_str(
            r#"{"NetworkID":"b0f9","EndpointID":"d7f5","SandboxKey":"/var/run/docker/netns/3fc0f555de1e","Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}"#,
        )
        .unwrap();
        assert_eq!(join.sandbox_key, "/var/run/docker/netns/3fc0f555de1e");
    }

    #[test]
    fn replies_never_echo_empty_fields() {
        let r = CreateEndpointResponse {
            interface: Some(EndpointInterface {
                mac_address: "02:42:0a:00:00:01".into(),
                ..Default::default()
            }),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"Interface":{"MacAddress":"02:42:0a:00:00:01"}}"#
        );
        assert_eq!(
            serde_json::to_string(&CreateEndpointResponse::default()).unwrap(),
            "{}"
        );
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
    }
    #[test]
    fn forged_ids_are_refused_while_decoding() {
        for body in [
            r#"{"NetworkID":"../../pools/default"}"#,
            r#"{"NetworkID":"a b"}"#,
            r#"{"NetworkID":"net\u0000"}"#,
        ] {
            let e = serde_json::from_str::<NetworkRequest>(body).unwrap_err();
            assert!(e.to_string().starts_with("invalid id"), "{body}: {e}");
        }
        let long = format!(r#"{{"NetworkID":"n","EndpointID":"{}"}}"#, "e".repeat(129));
        let e = serde_json::from_str::<EndpointRequest>(&long).unwrap_err();
        assert!(e.to_string().contains("(129 bytes)"), "{e}");
        let ok: EndpointRequest = serde_json::from_str(r#"{"NetworkID":"n-1.x_y"}"#).unwrap();
        assert_eq!(
            (ok.network_id.as_str(), ok.endpoint_id.as_str()),
            ("n-1.x_y", "")
        );
    }
}
