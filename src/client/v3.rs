//! etcd's v3 API through its JSON gateway (its prefix per release: `release::Capabilities::v3_gateway`).
//!
//! Keys and values travel base64-encoded and 64-bit integers as strings (numbers are accepted too).
//! Ranges are paginated at a fixed revision so that reading a million keys holds one page in memory, and
//! writes go in transactions of up to 128 operations (etcd's default `--max-txn-ops`). Server-streaming
//! calls (the snapshot) arrive as one JSON object per line, `{"result": {...}}` or `{"error": {...}}`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::{ClientError, Endpoint, STREAM_TIMEOUT};
use crate::release;
use crate::version::Version;

/// etcd's default limit on operations in one transaction.
pub const MAX_TXN_OPS: usize = 128;

/// Keys per page of the keys-only pass that finds page bounds (see [`V3Client::for_each_page`]).
const BOUNDS_SCAN_PAGE: i64 = 8192;

#[derive(Debug, Clone)]
pub struct V3Client {
    endpoint: Endpoint,
    prefix: &'static str,
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

#[derive(Debug, Clone)]
pub struct RangePage {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    /// The store's revision when it answered, not necessarily the one the page was read at.
    pub revision: i64,
}

/// One write in a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    /// Puts `key` on `lease`, keeping its value (`ignore_value`; only where
    /// `release::Capabilities::put_ignore_value`): the value need not travel to etcd and back.
    AttachLease {
        key: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
}

/// How a paginated range reads: how many keys a page holds, and whether their values come too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Keys per page; 0 for no limit.
    pub size: i64,
    pub keys_only: bool,
}

impl Page {
    pub const fn with_values(size: i64) -> Page {
        Page { size, keys_only: false }
    }

    /// Everything but the values (`keys_only`): for steps that need only keys and revisions.
    pub const fn keys_only(size: i64) -> Page {
        Page { size, keys_only: true }
    }
}

/// A transaction condition: the key's mod revision equals `mod_revision`.
#[derive(Debug, Clone)]
pub struct ModRevisionIs {
    pub key: Vec<u8>,
    pub mod_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub granted_ttl: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

/// int64 fields arrive as JSON strings from the gateway. uint64 ones (member ids) may not fit an i64:
/// they are kept as the same 64 bits.
fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let from_text = |s: &str| s.parse::<i64>().or_else(|_| s.parse::<u64>().map(|u| u as i64));
    match Value::deserialize(d)? {
        Value::String(s) => from_text(&s).map_err(serde::de::Error::custom),
        Value::Number(n) => from_text(&n.to_string()).map_err(serde::de::Error::custom),
        Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("{other} is not an int64"))),
    }
}

fn b64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = Option::<String>::deserialize(d)?.unwrap_or_default();
    BASE64.decode(text).map_err(serde::de::Error::custom)
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct RawKeyValue {
    #[serde(default, deserialize_with = "b64")]
    key: Vec<u8>,
    #[serde(default, deserialize_with = "b64")]
    value: Vec<u8>,
    #[serde(default, deserialize_with = "int")]
    lease: i64,
    #[serde(default, deserialize_with = "int")]
    create_revision: i64,
    #[serde(default, deserialize_with = "int")]
    mod_revision: i64,
    #[serde(default, deserialize_with = "int")]
    version: i64,
}

#[derive(Deserialize)]
struct RawRange {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<RawKeyValue>,
    #[serde(default)]
    more: bool,
}

#[derive(Deserialize)]
struct RawTxn {
    #[serde(default)]
    succeeded: bool,
}

#[derive(Deserialize)]
struct RawLeaseGrant {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
}

#[derive(Deserialize)]
struct RawTimeToLive {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", deserialize_with = "int")]
    ttl: i64,
    #[serde(rename = "grantedTTL", default, deserialize_with = "int")]
    granted_ttl: i64,
    #[serde(default)]
    keys: Vec<String>,
}

#[derive(Deserialize)]
struct RawLeaseId {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
}

#[derive(Deserialize)]
struct RawLeases {
    #[serde(default)]
    leases: Vec<RawLeaseId>,
}

/// What `/maintenance/status` says about the member that answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Status {
    /// The server's version, `3.4.23`.
    pub version: String,
    #[serde(rename = "dbSize", default, deserialize_with = "int")]
    pub db_size: i64,
    /// The leader's member id; 0 when there is none.
    #[serde(default, deserialize_with = "int")]
    pub leader: i64,
    #[serde(rename = "raftIndex", default, deserialize_with = "int")]
    pub raft_index: i64,
}

/// A cluster member as `/cluster/member/list` lists it. Member ids are uint64: read as the same bits.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Member {
    #[serde(rename = "ID", default, deserialize_with = "int")]
    pub id: i64,
    /// Empty for a member added but not started yet.
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
}

#[derive(Deserialize)]
struct RawMembers {
    #[serde(default)]
    members: Vec<Member>,
}

/// One line of a server-streaming answer.
#[derive(Deserialize)]
struct StreamLine<T> {
    result: Option<T>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct SnapshotChunk {
    #[serde(default, deserialize_with = "b64")]
    blob: Vec<u8>,
}

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

pub fn encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
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

impl V3Client {
    /// A client for the server at `endpoint`, using the gateway prefix that server's version serves.
    pub async fn connect(endpoint: Endpoint) -> Result<V3Client, ClientError> {
        let server = versions(&endpoint).await?.server;
        // A pre-release (`3.6.0-rc.1`) serves what its release will.
        let release = server.split(['-', '+']).next().unwrap_or_default();
        let version: Version = release.parse().map_err(|e: crate::version::ParseError| {
            ClientError::Protocol { url: endpoint.url("/version"), message: e.to_string() }
        })?;
        let prefix = release::capabilities(version).v3_gateway.ok_or_else(|| ClientError::Protocol {
            url: endpoint.url("/version"),
            message: format!("etcd {version} has no v3 API"),
        })?;
        Ok(V3Client { endpoint, prefix, server: version })
    }

    /// The release of the server this client talks to.
    pub fn server_version(&self) -> Version {
        self.server
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ClientError> {
        let (path, response) = self.send(path, body, None).await?;
        let bytes = response.bytes().await.map_err(|e| self.endpoint.http_error(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| self.protocol_error(&path, e.to_string()))
    }

    /// Posts `body` to the gateway's `path`, with `deadline` instead of the usual one if given; a non-2xx
    /// answer is an error carrying its body.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        deadline: Option<std::time::Duration>,
    ) -> Result<(String, reqwest::Response), ClientError> {
        let path = format!("{}{path}", self.prefix);
        let mut request = self.endpoint.http().post(self.endpoint.url(&path)).json(body);
        if let Some(deadline) = deadline {
            request = request.timeout(deadline);
        }
        let response = request.send().await.map_err(|e| self.endpoint.http_error(&path, e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(self.protocol_error(&path, format!("HTTP {status}: {body}")));
        }
        Ok((path, response))
    }

    fn protocol_error(&self, path: &str, message: String) -> ClientError {
        ClientError::Protocol { url: self.endpoint.url(path), message }
    }

    /// One page of `[key, range_end)` at `revision` (0 = latest).
    pub async fn range_page(
        &self,
        key: &[u8],
        range_end: &[u8],
        page: Page,
        revision: i64,
    ) -> Result<RangePage, ClientError> {
        let body = json!({
            "key": encode(key), "range_end": encode(range_end), "limit": page.size.to_string(),
            "revision": revision.to_string(), "keys_only": page.keys_only,
        });
        let raw: RawRange = self.post("/kv/range", &body).await?;
        let kvs = raw
            .kvs
            .into_iter()
            .map(|kv| KeyValue {
                key: kv.key,
                value: kv.value,
                lease: kv.lease,
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            })
            .collect();
        Ok(RangePage { kvs, more: raw.more, revision: raw.header.revision })
    }

    /// Calls `each` with every page of `[start, range_end)`, all read at one revision, in key order.
    /// Returns that revision.
    ///
    /// etcd before 3.5 applies a range's limit only after walking its index over the whole rest of the
    /// range, so paging through a million keys a thousand at a time would walk half a billion index
    /// entries. Pages are bounded ranges instead: a keys-only pass with large pages finds every
    /// `page.size`-th key, then each page is read as `[bound, next bound)`, which walks only what it
    /// returns.
    pub async fn for_each_page<E>(
        &self,
        start: &[u8],
        range_end: &[u8],
        page: Page,
        mut each: impl AsyncFnMut(Vec<KeyValue>) -> Result<(), E>,
    ) -> Result<i64, E>
    where
        E: From<ClientError>,
    {
        let (revision, bounds) = self.page_bounds(start, range_end, page.size).await?;
        for (from, to) in bounds.iter().zip(&bounds[1..]) {
            let kvs = self.range_page(from, to, Page { size: 0, ..page }, revision).await?.kvs;
            if !kvs.is_empty() {
                each(kvs).await?;
            }
        }
        Ok(revision)
    }

    /// The revision `[start, range_end)` is read at (the first answer's: every header carries the store's
    /// revision when it answered, not the one read at), and the page bounds: `start`, every `every`-th
    /// key after it, and `range_end`.
    async fn page_bounds(
        &self,
        start: &[u8],
        range_end: &[u8],
        every: i64,
    ) -> Result<(i64, Vec<Vec<u8>>), ClientError> {
        let mut bounds = vec![start.to_vec()];
        let mut key = start.to_vec();
        let mut revision = 0;
        let mut seen = 0i64;
        loop {
            let scan = self.range_page(&key, range_end, Page::keys_only(BOUNDS_SCAN_PAGE), revision).await?;
            if revision == 0 {
                revision = scan.revision;
            }
            for kv in &scan.kvs {
                if seen > 0 && seen % every == 0 {
                    bounds.push(kv.key.clone());
                }
                seen += 1;
            }
            match scan.kvs.last() {
                Some(last) if scan.more => {
                    key = last.key.clone();
                    key.push(0);
                }
                _ => break,
            }
        }
        bounds.push(range_end.to_vec());
        Ok((revision, bounds))
    }

    pub async fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), ClientError> {
        let body = json!({"key": encode(key), "value": encode(value), "lease": lease.to_string()});
        self.post::<Value>("/kv/put", &body).await.map(drop)
    }

    /// Runs `ops` if every condition holds; returns whether it did.
    pub async fn txn(&self, conditions: &[ModRevisionIs], ops: &[Op]) -> Result<bool, ClientError> {
        let compare: Vec<Value> = conditions
            .iter()
            .map(|c| {
                json!({"key": encode(&c.key), "target": "MOD", "result": "EQUAL",
                       "mod_revision": c.mod_revision.to_string()})
            })
            .collect();
        let success: Vec<Value> = ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => {
                    json!({"request_put": {"key": encode(key), "value": encode(value), "lease": lease.to_string()}})
                }
                Op::AttachLease { key, lease } => {
                    json!({"request_put": {"key": encode(key), "lease": lease.to_string(), "ignore_value": true}})
                }
                Op::Delete { key } => json!({"request_delete_range": {"key": encode(key)}}),
            })
            .collect();
        let raw: RawTxn = self.post("/kv/txn", &json!({"compare": compare, "success": success})).await?;
        Ok(raw.succeeded)
    }

    pub async fn lease_grant(&self, ttl: i64) -> Result<i64, ClientError> {
        let raw: RawLeaseGrant = self.post("/lease/grant", &json!({"TTL": ttl.to_string()})).await?;
        Ok(raw.id)
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), ClientError> {
        let _: Value = self.post("/kv/lease/revoke", &json!({"ID": id.to_string()})).await?;
        Ok(())
    }

    pub async fn lease_time_to_live(&self, id: i64) -> Result<LeaseInfo, ClientError> {
        let raw: RawTimeToLive =
            self.post("/kv/lease/timetolive", &json!({"ID": id.to_string(), "keys": true})).await?;
        let keys = raw.keys.iter().filter_map(|k| BASE64.decode(k).ok()).collect();
        Ok(LeaseInfo { id: raw.id, granted_ttl: raw.granted_ttl, ttl: raw.ttl, keys })
    }

    /// Every live lease's id.
    pub async fn lease_ids(&self) -> Result<Vec<i64>, ClientError> {
        let raw: RawLeases = self.post("/kv/lease/leases", &json!({})).await?;
        Ok(raw.leases.into_iter().map(|l| l.id).collect())
    }

    /// The answering member's version, database size, leader and raft index.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.post("/maintenance/status", &json!({})).await
    }

    pub async fn member_list(&self) -> Result<Vec<Member>, ClientError> {
        let raw: RawMembers = self.post("/cluster/member/list", &json!({})).await?;
        Ok(raw.members)
    }

    /// Streams a snapshot of the member's backend into `out` as it arrives, so a large database is never
    /// held in memory. What is written is exactly what `etcdctl snapshot save` writes: the bbolt file
    /// followed by its SHA-256, which is checked here and again by `etcdctl snapshot restore`. Returns the
    /// number of bytes written.
    pub async fn snapshot(&self, out: &mut (impl AsyncWrite + Unpin)) -> Result<u64, ClientError> {
        let (path, mut response) =
            self.send("/maintenance/snapshot", &json!({}), Some(STREAM_TIMEOUT)).await?;
        let write_error =
            |e: std::io::Error| self.protocol_error(&path, format!("writing the snapshot: {e}"));
        let mut trailer = SnapshotTrailer::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut written = 0u64;
        loop {
            let chunk = response.chunk().await.map_err(|e| self.endpoint.http_error(&path, e))?;
            let finished = chunk.is_none();
            pending.extend_from_slice(chunk.as_deref().unwrap_or_default());
            let mut lines: Vec<&[u8]> = pending.split(|&b| b == b'\n').collect();
            let partial = if finished { &[][..] } else { lines.pop().unwrap_or_default() };
            for line in lines.into_iter().filter(|line| !line.iter().all(u8::is_ascii_whitespace)) {
                let line: StreamLine<SnapshotChunk> =
                    serde_json::from_slice(line).map_err(|e| self.protocol_error(&path, e.to_string()))?;
                if let Some(error) = line.error {
                    return Err(self.protocol_error(&path, format!("the snapshot failed: {error}")));
                }
                let blob = line.result.map(|chunk| chunk.blob).unwrap_or_default();
                trailer.update(&blob);
                out.write_all(&blob).await.map_err(write_error)?;
                written += blob.len() as u64;
            }
            pending = partial.to_vec();
            if finished {
                break;
            }
        }
        out.flush().await.map_err(write_error)?;
        trailer.verify().map_err(|message| self.protocol_error(&path, message))?;
        Ok(written)
    }
}

/// Hashes a snapshot stream as it passes, holding back its last 32 bytes: etcd appends the SHA-256 of
/// the database to the stream, so the held-back bytes at the end must equal the hash of everything else.
#[derive(Default)]
struct SnapshotTrailer {
    hasher: Sha256,
    held: Vec<u8>,
}

const SHA256_LEN: usize = 32;

impl SnapshotTrailer {
    fn update(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        let hashable = self.held.len().saturating_sub(SHA256_LEN);
        self.hasher.update(&self.held[..hashable]);
        self.held.drain(..hashable);
    }

    fn verify(self) -> Result<(), String> {
        if self.held.len() < SHA256_LEN {
            return Err("the snapshot stream ended before its SHA-256 trailer".into());
        }
        if self.hasher.finalize().as_slice() != self.held.as_slice() {
            return Err("the snapshot does not match its SHA-256 trailer".into());
        }
        Ok(())
    }
}

/// `/version`: the server version and the cluster version it runs at.
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
    fn a_snapshot_is_checked_against_its_sha256_trailer() {
        let db = vec![7u8; 100_000];
        let mut stream = db.clone();
        stream.extend_from_slice(&Sha256::digest(&db));
        let mut trailer = SnapshotTrailer::default();
        for piece in stream.chunks(32 * 1024 + 5) {
            trailer.update(piece);
        }
        trailer.verify().unwrap();

        let mut corrupt = SnapshotTrailer::default();
        corrupt.update(&stream[1..]);
        assert!(corrupt.verify().unwrap_err().contains("does not match"));
        let mut short = SnapshotTrailer::default();
        short.update(&[1, 2, 3]);
        assert!(short.verify().unwrap_err().contains("ended before"));
    }

    #[test]
    fn reads_member_ids_beyond_i64_as_the_same_bits() {
        let raw: RawMembers = serde_json::from_str(
            r#"{"members":[{"ID":"18446744073709551615","name":"m","peerURLs":["http://p"]}]}"#,
        )
        .unwrap();
        assert_eq!(raw.members[0].id, -1);
        assert_eq!(raw.members[0].client_urls, Vec::<String>::new());
    }

    #[test]
    fn reads_the_gateways_string_integers() {
        let raw: RawRange = serde_json::from_str(
            r#"{"header":{"revision":"42"},"kvs":[{"key":"L2E=","value":"MQ==","mod_revision":"7","lease":"123"}],"more":true}"#,
        )
        .unwrap();
        assert_eq!(raw.header.revision, 42);
        assert_eq!(raw.kvs[0].key, b"/a");
        assert_eq!(raw.kvs[0].value, b"1");
        assert_eq!(raw.kvs[0].lease, 123);
        assert_eq!(raw.kvs[0].create_revision, 0);
        assert!(raw.more);
    }
}
