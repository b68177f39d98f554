//! The etcd v3 store (etcd-client), with TLS, username/password and a hard per-request
//! deadline so an unreachable cluster gives a clear error instead of a hang.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, GetOptions, Identity,
    KeyValue, TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse,
};

use super::{Compare, Kv, Op, Store, StoreError, Txn, TxnOutcome, REQUEST_TIMEOUT};

/// How to reach etcd.
#[derive(Debug, Clone, Default)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, one or more.
    pub endpoints: Vec<String>,
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A store on an etcd v3 cluster. Cloning shares the underlying connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: String,
}

impl EtcdStore {
    /// Connect (lazily: the first request opens the connection, within [`REQUEST_TIMEOUT`]).
    pub async fn connect(config: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = config.endpoints.join(",");
        for e in &config.endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(StoreError::BadEndpoint(e.clone()));
            }
        }
        if config.endpoints.is_empty() {
            return Err(StoreError::BadEndpoint(String::new()));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), REQUEST_TIMEOUT);
        if let Some(tls) = tls_options(config)? {
            options = options.with_tls(tls);
        }
        if let (Some(user), Some(pass)) = (&config.username, &config.password) {
            options = options.with_user(user.clone(), pass.clone());
        }
        // With a username, connect authenticates at once, so it needs the same deadline.
        let client = deadline(
            &endpoints,
            Client::connect(config.endpoints.clone(), Some(options)),
        )
        .await?;
        Ok(Self { client, endpoints })
    }

    /// The raw client, for watches (the agent) and the raw benchmark baseline.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoints, as given, comma-separated (for messages).
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    async fn call<T>(
        &self,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        deadline(&self.endpoints, fut).await
    }
}

fn tls_options(config: &EtcdConfig) -> Result<Option<TlsOptions>, StoreError> {
    let read = |what: &'static str, path: &String| {
        std::fs::read(path).map_err(|source| StoreError::TlsFile {
            what,
            path: path.clone(),
            source,
        })
    };
    let uses_tls = config.endpoints.iter().any(|e| e.starts_with("https://"));
    if !uses_tls && config.ca_file.is_none() && config.cert_file.is_none() {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read("CA", ca)?));
    }
    if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
        tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
    }
    Ok(Some(tls))
}

/// Run one etcd request with the hard deadline, mapping transport trouble to `Unreachable`.
async fn deadline<T>(
    endpoints: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    let unreachable = |detail: String| StoreError::Unreachable {
        endpoints: endpoints.to_string(),
        timeout: REQUEST_TIMEOUT,
        detail,
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Err(_) => Err(unreachable("no answer".into())),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                unreachable(error_chain(&e))
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) =>
            {
                unreachable(s.message().to_string())
            }
            // tonic cancels a request whose per-request timeout expired.
            etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Cancelled => {
                unreachable("no answer".into())
            }
            _ => StoreError::Etcd {
                endpoints: endpoints.to_string(),
                source: Box::new(e),
            },
        }),
    }
}

/// "tcp connect error: Connection refused (os error 111)" rather than the outer layer only.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn to_kv(kv: &KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.get(key, None)).await?;
        Ok(resp.kvs().first().map(to_kv))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Kv>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = self
            .call(kv.get(prefix, Some(GetOptions::new().with_prefix())))
            .await?;
        Ok(resp.kvs().iter().map(to_kv).collect())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut kv = self.client.kv_client();
        let opts = GetOptions::new().with_prefix().with_keys_only();
        let resp = self.call(kv.get(prefix, Some(opts))).await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|c| match c {
                // A missing key has mod_revision 0, so `== 0` is "still absent".
                Compare::ModRevision { key, revision } => {
                    EtcdCompare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(key, value, None),
                Op::Delete { key } => TxnOp::delete(key, None),
            })
            .collect();
        let reads: Vec<TxnOp> = txn
            .read_on_conflict
            .iter()
            .map(|k| TxnOp::get(k.as_str(), None))
            .collect();
        let request = EtcdTxn::new().when(compares).and_then(ops).or_else(reads);
        let mut kv = self.client.kv_client();
        let resp = self.call(kv.txn(request)).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(TxnOutcome::Committed { revision });
        }
        let current = txn
            .read_on_conflict
            .into_iter()
            .zip(resp.op_responses())
            .map(|(key, r)| {
                let kv = match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(to_kv),
                    _ => None,
                };
                (key, kv)
            })
            .collect();
        Ok(TxnOutcome::Conflict { current })
    }
}
