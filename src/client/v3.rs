//! etcd's v3 API over gRPC (`etcd-client`, on tonic): ranges, guarded transactions, leases.
//!
//! gRPC drops request fields a server does not know, silently: etcd 3.0 and 3.1 take a put with
//! `ignore_value` as a put of an empty value. So the server's release, asked through `/version` when
//! connecting, decides through `release::capabilities` which fields a request may carry.
//!
//! Ranges are read at one revision in pages sized to hold about `PAGE_BYTES`, the next page read while
//! the last one is handled. Writes go in transactions of up to [`max_txn_ops`] operations.

use std::time::Duration;

use etcd_client::{
    Certificate, CompactionOptions, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{ClientError, Endpoint, REQUEST_TIMEOUT, TlsFiles};
use crate::release::{self, Capabilities};
use crate::version::Version;

/// etcd's default limit on the operations of one kind (compares, puts) in a transaction.
const DEFAULT_MAX_TXN_OPS: usize = 128;

/// The limit the hidden etcd is given with `--max-txn-ops` where its release has the flag: etcd's apply
/// loop takes about twice as many keys per second in transactions of 512–1000 puts as in ones of 128.
pub const RAISED_MAX_TXN_OPS: usize = 1024;

/// The revision etcd reads at when asked for revision 0: the newest.
pub const LATEST: i64 = 0;

/// About how many bytes of keys and values one page of a range holds.
const PAGE_BYTES: usize = 2 << 20;
const FIRST_PAGE_KEYS: i64 = 512;
/// The most keys in one page. Large pages matter before etcd 3.5, which walks its index over the
/// whole rest of a range for every limited page.
const MAX_PAGE_KEYS: i64 = 16_384;

/// The most operations of one kind a transaction may hold on a hidden etcd of a release with `caps`.
pub fn max_txn_ops(caps: Capabilities) -> usize {
    if caps.max_txn_ops_flag { RAISED_MAX_TXN_OPS } else { DEFAULT_MAX_TXN_OPS }
}

#[derive(Clone)]
pub struct V3Client {
    kv: KvClient,
    grpc: etcd_client::Client,
    url: String,
    server: Version,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub lease: i64,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// How many times the key was written since it was (re)created.
    pub version: i64,
}

impl From<etcd_client::KeyValue> for KeyValue {
    fn from(kv: etcd_client::KeyValue) -> KeyValue {
        let (lease, create_revision, mod_revision, version) =
            (kv.lease(), kv.create_revision(), kv.mod_revision(), kv.version());
        let (key, value) = kv.into_key_value();
        KeyValue { key, value, lease, create_revision, mod_revision, version }
    }
}

/// One write in a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Puts `key` on `lease`, keeping its value (`ignore_value`): only for a release whose
    /// [`Capabilities::put_ignore_value`] is set, any other would blank the value.
    AttachLease {
        key: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// A transaction condition: the key's mod revision equals `mod_revision`.
#[derive(Debug, Clone)]
pub struct ModRevisionIs {
    pub key: Vec<u8>,
    pub mod_revision: i64,
}

/// A page of a range and the revision it was read at.
type Page = (i64, Vec<KeyValue>);

#[derive(Deserialize)]
struct ServerVersion {
    etcdserver: String,
    #[serde(default)]
    etcdcluster: String,
}

/// What `/version` reports: the server's version and the cluster version (`3.4.0`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub server: String,
    pub cluster: String,
}

/// The end of the range of keys starting with `prefix` (etcd's `--prefix`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `[start, range_end)` cut at the `splits` inside it, in key order.
fn ranges(start: &[u8], range_end: &[u8], splits: &[Vec<u8>]) -> Vec<(Vec<u8>, Vec<u8>)> {
    // A range end of `\0` means every key from the start on.
    let inside = |key: &Vec<u8>| key.as_slice() > start && (range_end == [0] || key.as_slice() < range_end);
    let mut cuts: Vec<&Vec<u8>> = splits.iter().filter(|key| inside(key)).collect();
    cuts.sort();
    cuts.dedup();
    let mut bounds = vec![start.to_vec()];
    bounds.extend(cuts.into_iter().cloned());
    bounds.push(range_end.to_vec());
    bounds.windows(2).map(|pair| (pair[0].clone(), pair[1].clone())).collect()
}

/// gRPC connection options for `endpoint`: TLS from the same files as its HTTP client.
pub fn connect_options(endpoint: &Endpoint) -> Result<ConnectOptions, ClientError> {
    let options =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(2)).with_timeout(REQUEST_TIMEOUT);
    if !endpoint.base_url().starts_with("https://") {
        return Ok(options);
    }
    let TlsFiles { ca, cert, key } = endpoint.tls();
    let mut tls = TlsOptions::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(super::read_tls_file(ca)?));
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        tls = tls.identity(Identity::from_pem(super::read_tls_file(cert)?, super::read_tls_file(key)?));
    }
    Ok(options.with_tls(tls))
}

impl V3Client {
    /// A client for the server at `endpoint`, sending what that server's release takes.
    pub async fn connect(endpoint: Endpoint) -> Result<V3Client, ClientError> {
        let server = versions(&endpoint).await?.server;
        // A pre-release (`3.6.0-rc.1`) serves what its release will.
        let release = server.split(['-', '+']).next().unwrap_or_default();
        let release: Version = release.parse().map_err(|e: crate::version::ParseError| {
            ClientError::Protocol { url: endpoint.url("/version"), message: e.to_string() }
        })?;
        let url = endpoint.base_url().to_string();
        let rpc_error = |e: etcd_client::Error| ClientError::Rpc { url: url.clone(), message: e.to_string() };
        let grpc = etcd_client::Client::connect([&url], Some(connect_options(&endpoint)?))
            .await
            .map_err(rpc_error)?;
        let kv = grpc.kv_client().max_decoding_message_size(i32::MAX as usize);
        Ok(V3Client { kv, grpc, url, server: release })
    }

    /// The server's release (a pre-release counts as its release).
    pub fn server_version(&self) -> Version {
        self.server
    }

    /// What the server's release can do.
    pub fn capabilities(&self) -> Capabilities {
        release::capabilities(self.server)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn rpc_error(&self, error: etcd_client::Error) -> ClientError {
        ClientError::Rpc { url: self.url.clone(), message: error.to_string() }
    }

    /// Calls `each` with every page of `[start, range_end)`, all read at `revision` ([`LATEST`]: the
    /// newest at the first page; an older one must not have been compacted), in key order. Returns the
    /// revision read at.
    pub async fn for_each_page<E>(
        &self,
        start: &[u8],
        range_end: &[u8],
        revision: i64,
        each: impl AsyncFnMut(Vec<KeyValue>) -> Result<(), E>,
    ) -> Result<i64, E>
    where
        E: From<ClientError>,
    {
        self.read(ranges(start, range_end, &[]), revision, each).await
    }

    /// [`for_each_page`](Self::for_each_page) at the newest revision, with the range read as consecutive
    /// parts cut at `splits`
    /// (keys in any order; those outside the range are ignored). etcd before 3.5 walks its index to the
    /// end of a range for every limited page, so a large range read whole costs it time quadratic in
    /// its size; cut at keys known to be about evenly spaced, each walk stays short.
    pub async fn for_each_page_split<E>(
        &self,
        start: &[u8],
        range_end: &[u8],
        splits: &[Vec<u8>],
        each: impl AsyncFnMut(Vec<KeyValue>) -> Result<(), E>,
    ) -> Result<i64, E>
    where
        E: From<ClientError>,
    {
        self.read(ranges(start, range_end, splits), LATEST, each).await
    }

    async fn read<E>(
        &self,
        ranges: Vec<(Vec<u8>, Vec<u8>)>,
        revision: i64,
        mut each: impl AsyncFnMut(Vec<KeyValue>) -> Result<(), E>,
    ) -> Result<i64, E>
    where
        E: From<ClientError>,
    {
        let (pages, mut next) = mpsc::channel(1);
        let mut reader = JoinSet::new();
        reader.spawn(self.clone().read_pages(ranges, revision, pages));
        let mut read_at = revision;
        while let Some(page) = next.recv().await {
            let kvs;
            (read_at, kvs) = page?;
            if !kvs.is_empty() {
                each(kvs).await?;
            }
        }
        Ok(read_at)
    }

    /// Sends every page of each of `ranges` to `pages`, all read at `revision`, or, if that is
    /// [`LATEST`], at the revision the first page was read at; a failure is the last thing sent.
    async fn read_pages(
        self,
        ranges: Vec<(Vec<u8>, Vec<u8>)>,
        mut revision: i64,
        pages: mpsc::Sender<Result<Page, ClientError>>,
    ) {
        let mut limit = FIRST_PAGE_KEYS;
        for (mut key, range_end) in ranges {
            loop {
                let options =
                    GetOptions::new().with_range(range_end.clone()).with_limit(limit).with_revision(revision);
                let mut response = match self.kv.clone().get(key.clone(), Some(options)).await {
                    Ok(response) => response,
                    Err(e) => {
                        let _ = pages.send(Err(self.rpc_error(e))).await;
                        return;
                    }
                };
                if revision == LATEST {
                    // Every header carries the store's revision when it answered, not the one read at.
                    revision = response.header().map_or(0, |h| h.revision());
                }
                let more = response.more();
                let kvs: Vec<KeyValue> = response.take_kvs().into_iter().map(KeyValue::from).collect();
                let bytes: usize = kvs.iter().map(|kv| kv.key.len() + kv.value.len() + 64).sum();
                if !kvs.is_empty() {
                    limit = ((PAGE_BYTES * kvs.len() / bytes).max(1) as i64)
                        .clamp(FIRST_PAGE_KEYS, MAX_PAGE_KEYS);
                }
                let last = match kvs.last() {
                    Some(last) if more => Some(last.key.clone()),
                    _ => None,
                };
                if pages.send(Ok((revision, kvs))).await.is_err() {
                    return;
                }
                let Some(mut last) = last else { break };
                last.push(0);
                key = last;
            }
        }
    }

    /// Whether each of `keys` existed at `revision`, asked in read-only transactions.
    pub async fn exist_at(&self, keys: &[Vec<u8>], revision: i64) -> Result<Vec<bool>, ClientError> {
        let mut exist = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(max_txn_ops(self.capabilities())) {
            let reads = chunk.iter().map(|key| {
                TxnOp::get(key.clone(), Some(GetOptions::new().with_count_only().with_revision(revision)))
            });
            let txn = Txn::new().and_then(reads.collect::<Vec<_>>());
            let response = self.kv.clone().txn(txn).await.map_err(|e| self.rpc_error(e))?;
            for answer in response.op_responses() {
                match answer {
                    TxnOpResponse::Get(range) => exist.push(range.count() > 0),
                    _ => {
                        return Err(ClientError::Protocol {
                            url: self.url.clone(),
                            message: "a read-only transaction answered with a write".into(),
                        });
                    }
                }
            }
        }
        Ok(exist)
    }

    /// Runs `ops` if every guard holds; returns whether it did. Keys and values move into the request.
    pub async fn txn(&self, guards: Vec<ModRevisionIs>, ops: Vec<Op>) -> Result<bool, ClientError> {
        let compares: Vec<Compare> = guards
            .into_iter()
            .map(|guard| Compare::mod_revision(guard.key, CompareOp::Equal, guard.mod_revision))
            .collect();
        let ops = ops.into_iter().map(|op| self.txn_op(op)).collect::<Result<Vec<TxnOp>, _>>()?;
        let txn = Txn::new().when(compares).and_then(ops);
        let response = self.kv.clone().txn(txn).await.map_err(|e| self.rpc_error(e))?;
        Ok(response.succeeded())
    }

    fn txn_op(&self, op: Op) -> Result<TxnOp, ClientError> {
        Ok(match op {
            Op::Put { key, value, lease } => {
                TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)))
            }
            Op::AttachLease { key, lease } => {
                if !self.capabilities().put_ignore_value {
                    return Err(ClientError::Protocol {
                        url: self.url.clone(),
                        message:
                            "this etcd release has no ignore_value: a lease must be attached with the value"
                                .into(),
                    });
                }
                TxnOp::put(key, Vec::new(), Some(PutOptions::new().with_lease(lease).with_ignore_value()))
            }
            Op::Delete { key } => TxnOp::delete(key, None),
        })
    }

    /// The store's newest revision.
    pub async fn revision(&self) -> Result<i64, ClientError> {
        let options = GetOptions::new().with_count_only();
        let response = self.kv.clone().get(vec![0], Some(options)).await.map_err(|e| self.rpc_error(e))?;
        Ok(response.header().map_or(0, |h| h.revision()))
    }

    /// Compacts the store at `revision`, its history removed before this returns.
    pub async fn compact(&self, revision: i64) -> Result<(), ClientError> {
        let options = CompactionOptions::new().with_physical();
        self.kv.clone().compact(revision, Some(options)).await.map_err(|e| self.rpc_error(e))?;
        Ok(())
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, ClientError> {
        let response = self.grpc.lease_client().grant(ttl, None).await.map_err(|e| self.rpc_error(e))?;
        Ok(response.id())
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), ClientError> {
        self.grpc.lease_client().revoke(id).await.map_err(|e| self.rpc_error(e))?;
        Ok(())
    }

    /// The seconds lease `id` has left.
    pub async fn lease_ttl(&self, id: i64) -> Result<i64, ClientError> {
        let response =
            self.grpc.lease_client().time_to_live(id, None).await.map_err(|e| self.rpc_error(e))?;
        Ok(response.ttl())
    }

    /// The answering member's raft index.
    pub async fn raft_index(&self) -> Result<u64, ClientError> {
        let status = self.grpc.maintenance_client().status().await.map_err(|e| self.rpc_error(e))?;
        Ok(status.raft_index())
    }

    /// Every live lease's id.
    pub async fn lease_ids(&self) -> Result<Vec<i64>, ClientError> {
        let response = self.grpc.lease_client().leases().await.map_err(|e| self.rpc_error(e))?;
        Ok(response.leases().iter().map(|lease| lease.id()).collect())
    }
}

/// `/version`: the server version and the cluster version it runs at (HTTP: gRPC has no such call).
pub async fn versions(endpoint: &Endpoint) -> Result<Versions, ClientError> {
    let raw: ServerVersion = endpoint.get_json("/version").await?;
    Ok(Versions { server: raw.etcdserver, cluster: raw.etcdcluster })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/registry/"), b"/registry0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn a_range_is_cut_at_the_splits_inside_it_in_key_order() {
        let splits = [b"/r/m".to_vec(), b"/r/c".to_vec(), b"/q".to_vec(), b"/r0".to_vec(), b"/r/c".to_vec()];
        let cut = |start: &[u8], end: &[u8]| ranges(start, end, &splits);
        let pair = |a: &[u8], b: &[u8]| (a.to_vec(), b.to_vec());
        assert_eq!(
            cut(b"/r/", b"/r0"),
            [pair(b"/r/", b"/r/c"), pair(b"/r/c", b"/r/m"), pair(b"/r/m", b"/r0")],
            "sorted, deduplicated, and only the cuts inside"
        );
        assert_eq!(cut(b"/r/", &[0]).last(), Some(&pair(b"/r0", &[0])), "an open end keeps every later cut");
        assert_eq!(ranges(b"/r/", b"/r0", &[]), [pair(b"/r/", b"/r0")]);
    }

    #[test]
    fn transactions_are_as_large_as_the_release_lets_the_hidden_etcd_take() {
        let ops = |version: &str| max_txn_ops(release::capabilities(version.parse().unwrap()));
        assert_eq!((ops("3.0.17"), ops("3.2.32")), (128, 128));
        assert_eq!((ops("3.3.25"), ops("3.6.14")), (RAISED_MAX_TXN_OPS, RAISED_MAX_TXN_OPS));
    }
}
