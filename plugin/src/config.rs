//! Settings every brindle binary shares: how to reach etcd and which node this is.
//! Every flag has a `BRINDLE_*` environment variable, so containers and Marathon or
//! compose files can configure by ENV.

use brindle_ipam::{EtcdConfig, EtcdStore, Ipam, StoreError};
use clap::Args;

/// Flags for reaching etcd.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        env = "BRINDLE_ETCD_ENDPOINTS",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        global = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of all brindle records.
    #[arg(
        long,
        env = "BRINDLE_ETCD_PREFIX",
        default_value = brindle_ipam::keys::DEFAULT_PREFIX,
        global = true
    )]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd.
    #[arg(long, env = "BRINDLE_ETCD_CA_FILE", global = true)]
    pub etcd_ca_file: Option<String>,
    /// Client certificate (PEM).
    #[arg(long, env = "BRINDLE_ETCD_CERT_FILE", global = true)]
    pub etcd_cert_file: Option<String>,
    /// Client key (PEM).
    #[arg(long, env = "BRINDLE_ETCD_KEY_FILE", global = true)]
    pub etcd_key_file: Option<String>,
    #[arg(long, env = "BRINDLE_ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,
    #[arg(
        long,
        env = "BRINDLE_ETCD_PASSWORD",
        global = true,
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    pub fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
        }
    }

    /// Connect and build the IPAM service.
    pub async fn ipam(&self) -> Result<Ipam<EtcdStore>, StoreError> {
        let store = EtcdStore::connect(&self.etcd_config()).await?;
        Ok(Ipam::new(store, &self.etcd_prefix))
    }
}

/// This machine's hostname, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
