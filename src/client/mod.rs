//! Clients for etcd over one `Endpoint`: HTTP (reqwest) for `/health`, `/version` and the v2 keys API,
//! which have no gRPC equivalent; gRPC (`etcd-client`) for the v3 API.
//!
//! TLS material: toward a hidden etcd, the run's authority (`run_ca`); toward a member's peers, the peer
//! TLS files in the operator's etcd flags, so a secured cluster is asked with its own certificate.

pub mod health;
pub mod v2;
pub mod v3;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::etcd_flags;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile { path: PathBuf, source: std::io::Error },
    #[error("bad TLS material: {0}")]
    Tls(String),
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    #[error("{url}: unexpected answer: {message}")]
    Protocol { url: String, message: String },
    #[error("{url}: {message}")]
    Rpc { url: String, message: String },
}

/// The TLS files named by etcd flags: the CA to trust and the client identity to present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads `--peer-trusted-ca-file`, `--peer-cert-file` and `--peer-key-file` out of etcd flags, in any
    /// form etcd reads: what a member presents to its peers (and what asking a peer's `/version` takes).
    /// (The hidden etcd's client side is the run's authority's: `run_ca`.)
    pub fn peer_from_etcd_args(args: &[OsString]) -> TlsFiles {
        let mut files = TlsFiles::default();
        for flag in etcd_flags::read(args) {
            let slot = match flag.name.as_str() {
                "peer-trusted-ca-file" => &mut files.ca,
                "peer-cert-file" => &mut files.cert,
                "peer-key-file" => &mut files.key,
                _ => continue,
            };
            *slot = flag.value.map(PathBuf::from);
        }
        files
    }
}

pub(crate) fn read_tls_file(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::TlsFile { path: path.clone(), source })
}

/// One etcd client URL, its TLS files, and an HTTP client configured for it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    base_url: String,
    tls: TlsFiles,
    http: reqwest::Client,
}

/// Every request has a deadline: an etcd without quorum may otherwise hold a request forever.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The deadline of a request whose answer is streamed (a whole v2 tree): such an answer may
/// take long in total, but it must keep moving, as every read is still bounded by `STALL_TIMEOUT`.
pub(crate) const STREAM_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The longest wait for the next bytes of an answer. Generous, because etcd's v2 API builds a whole tree
/// listing before it sends the first byte: a million keys took over 10 s on a 2-core machine.
const STALL_TIMEOUT: Duration = Duration::from_secs(300);

impl Endpoint {
    pub fn new(base_url: &str, tls: &TlsFiles) -> Result<Endpoint, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .read_timeout(STALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy();
        if base_url.starts_with("https://") {
            builder = builder.use_rustls_tls();
            if let Some(ca) = &tls.ca {
                let ca = reqwest::Certificate::from_pem(&read_tls_file(ca)?)
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                builder = builder.add_root_certificate(ca).tls_built_in_root_certs(false);
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                let mut pem = read_tls_file(cert)?;
                pem.push(b'\n');
                pem.extend(read_tls_file(key)?);
                let identity =
                    reqwest::Identity::from_pem(&pem).map_err(|e| ClientError::Tls(e.to_string()))?;
                builder = builder.identity(identity);
            }
        }
        let http = builder.build().map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Endpoint { base_url: base_url.trim_end_matches('/').to_string(), tls: tls.clone(), http })
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn tls(&self) -> &TlsFiles {
        &self.tls
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GETs `path` and parses its JSON body (any status: etcd answers `/health` with 503 and a body).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.http.get(self.url(path)).send().await.map_err(|e| self.http_error(path, e))?;
        let body = response.bytes().await.map_err(|e| self.http_error(path, e))?;
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Protocol { url: self.url(path), message: e.to_string() })
    }

    pub fn http_error(&self, path: &str, error: reqwest::Error) -> ClientError {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            message = format!("{message}: {inner}");
            source = inner.source();
        }
        ClientError::Http { url: self.url(path), message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_peer_tls_files_from_etcd_flags_in_both_forms() {
        let args: Vec<OsString> = [
            "--peer-cert-file=/c.pem",
            "-peer-key-file",
            "/k.pem",
            "--cert-file=/client.pem",
            "--peer-client-cert-auth",
            "-peer-trusted-ca-file=/ca.pem",
        ]
        .map(OsString::from)
        .to_vec();
        assert_eq!(
            TlsFiles::peer_from_etcd_args(&args),
            TlsFiles { ca: Some("/ca.pem".into()), cert: Some("/c.pem".into()), key: Some("/k.pem".into()) }
        );
        let client_only: Vec<OsString> = ["--cert-file=/p.pem"].map(OsString::from).to_vec();
        assert_eq!(TlsFiles::peer_from_etcd_args(&client_only), TlsFiles::default());
    }
}
