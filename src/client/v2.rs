//! etcd's v2 keys API (`/v2/keys`), for data in the v2 store: reading it before a conversion, writing it
//! in a rollback, and deleting the stale v2 copy afterwards.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{ClientError, Endpoint, STREAM_TIMEOUT};

/// A leaf key of the v2 store with what is left of its TTL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Key {
    pub key: String,
    /// Always text. The v2 store keeps Go strings and its JSON answers replace every byte that is not
    /// UTF-8 with U+FFFD (measured on 3.3.25, 3.4.23, 3.5.16), so a binary value never comes back intact
    /// through this API: a copy made from it would differ, which the migrator's digests catch, and a value
    /// that is not UTF-8 must not be written here at all. Kubernetes keeps no binary data in etcd2 (it
    /// stores JSON there, kubernetes#43122).
    pub value: String,
    /// Remaining seconds, for a key that expires.
    pub ttl: Option<i64>,
    /// The store index of the key's last write: `etcdctl migrate` makes it the v3 mod revision.
    pub modified_index: i64,
}

/// Walks a v2 JSON response (`{"node": {..., "nodes": [...]}}`) calling back for each leaf as it is
/// parsed, so a large tree is never held as a tree: only the response bytes and one leaf at a time.
struct ResponseSeed<'a>(&'a mut dyn FnMut(V2Key));

struct NodeSeed<'a>(&'a mut dyn FnMut(V2Key));

struct NodesSeed<'a>(&'a mut dyn FnMut(V2Key));

impl<'de> DeserializeSeed<'de> for ResponseSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ResponseSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a v2 keys response")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(field) = map.next_key::<Cow<'de, str>>()? {
            if field == "node" {
                map.next_value_seed(NodeSeed(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a v2 node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (mut key, mut value, mut ttl, mut dir, mut modified_index) = (None, None, None, false, 0);
        while let Some(field) = map.next_key::<Cow<'de, str>>()? {
            match field.as_ref() {
                "key" => key = Some(map.next_value::<String>()?),
                "value" => value = map.next_value::<Option<String>>()?,
                "ttl" => ttl = map.next_value::<Option<i64>>()?,
                "dir" => dir = map.next_value::<bool>()?,
                "modifiedIndex" => modified_index = map.next_value::<i64>()?,
                "nodes" => map.next_value_seed(NodesSeed(&mut *self.0))?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if let (false, Some(key)) = (dir, key) {
            (self.0)(V2Key { key, value: value.unwrap_or_default(), ttl, modified_index });
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for NodesSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for NodesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of v2 nodes")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(NodeSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct V2Client {
    endpoint: Endpoint,
}

/// A key path as a URL path: each segment percent-encoded, slashes kept.
fn key_path(key: &str) -> String {
    let mut out = String::from("/v2/keys");
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        for byte in segment.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(byte as char),
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    out
}

impl V2Client {
    pub fn new(endpoint: Endpoint) -> V2Client {
        V2Client { endpoint }
    }

    /// Every leaf key under `prefix` (a directory), with values and remaining TTLs. Keys hidden by the v2
    /// API (a segment starting with `_`) are not listed by it.
    pub async fn leaves(&self, prefix: &str) -> Result<Vec<V2Key>, ClientError> {
        let mut leaves = Vec::new();
        self.for_each_leaf(prefix, &mut |leaf| leaves.push(leaf)).await?;
        Ok(leaves)
    }

    /// Calls `each` with every leaf key under `prefix`, without building the tree in memory.
    pub async fn for_each_leaf(&self, prefix: &str, each: &mut dyn FnMut(V2Key)) -> Result<(), ClientError> {
        let path = format!("{}?recursive=true&sorted=true&quorum=true", key_path(prefix));
        let response = self
            .endpoint
            .http()
            .get(self.endpoint.url(&path))
            .timeout(STREAM_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.endpoint.http_error(&path, e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Protocol {
                url: self.endpoint.url(&path),
                message: format!("HTTP {status}: {body}"),
            });
        }
        self.stream_leaves(&path, response, each).await
    }

    /// Parses the body as it arrives, on a blocking thread, handing leaves back over a bounded channel:
    /// memory stays flat however large the tree (a v2 listing cannot be paginated).
    async fn stream_leaves(
        &self,
        path: &str,
        mut response: reqwest::Response,
        each: &mut dyn FnMut(V2Key),
    ) -> Result<(), ClientError> {
        let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        let (leaf_tx, mut leaf_rx) = tokio::sync::mpsc::channel::<V2Key>(1024);
        let parser = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader { chunks: chunk_rx, current: Vec::new(), offset: 0 };
            let mut deserializer = serde_json::Deserializer::from_reader(std::io::BufReader::new(reader));
            ResponseSeed(&mut |leaf| {
                let _ = leaf_tx.blocking_send(leaf);
            })
            .deserialize(&mut deserializer)
            .map_err(|e| e.to_string())
        });
        let mut chunk_tx = Some(chunk_tx);
        let mut pending: Option<Vec<u8>> = None;
        loop {
            let sender = chunk_tx.clone();
            tokio::select! {
                permit = async move { sender.expect("open while a chunk waits").reserve_owned().await }, if pending.is_some() => {
                    if let Ok(permit) = permit {
                        permit.send(pending.take().expect("a chunk waits"));
                    } else {
                        pending = None; // the parser stopped early; its result says why
                    }
                }
                chunk = response.chunk(), if pending.is_none() && chunk_tx.is_some() => {
                    match chunk.map_err(|e| self.endpoint.http_error(path, e))? {
                        Some(chunk) => pending = Some(chunk.to_vec()),
                        None => chunk_tx = None,
                    }
                }
                leaf = leaf_rx.recv() => match leaf {
                    Some(leaf) => each(leaf),
                    None => break,
                },
            }
        }
        parser
            .await
            .map_err(|e| e.to_string())
            .and_then(|parsed| parsed)
            .map_err(|message| ClientError::Protocol { url: self.endpoint.url(path), message })
    }

    /// Sets a key, with a TTL in seconds if given.
    pub async fn set(&self, key: &str, value: &str, ttl: Option<i64>) -> Result<(), ClientError> {
        let path = key_path(key);
        let mut form = vec![("value", value.to_string())];
        if let Some(ttl) = ttl {
            form.push(("ttl", ttl.to_string()));
        }
        let body: String =
            form.iter().map(|(k, v)| format!("{k}={}", form_encode(v))).collect::<Vec<_>>().join("&");
        let response = self
            .endpoint
            .http()
            .put(self.endpoint.url(&path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| self.endpoint.http_error(&path, e))?;
        expect_success(&self.endpoint, &path, response).await
    }

    /// Deletes a directory and everything under it; a missing one is fine.
    pub async fn delete_tree(&self, prefix: &str) -> Result<(), ClientError> {
        self.delete_path(&format!("{}?recursive=true&dir=true", key_path(prefix))).await
    }

    /// Deletes a key; a missing one is fine.
    pub async fn delete(&self, key: &str) -> Result<(), ClientError> {
        self.delete_path(&key_path(key)).await
    }

    async fn delete_path(&self, path: &str) -> Result<(), ClientError> {
        let response = self
            .endpoint
            .http()
            .delete(self.endpoint.url(path))
            .send()
            .await
            .map_err(|e| self.endpoint.http_error(path, e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(());
        }
        expect_success(&self.endpoint, path, response).await
    }
}

/// The response body as `Read`, fed chunk by chunk from the async side.
struct ChunkReader {
    chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    offset: usize,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.offset == self.current.len() {
            match self.chunks.blocking_recv() {
                Some(chunk) => (self.current, self.offset) = (chunk, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

async fn expect_success(
    endpoint: &Endpoint,
    path: &str,
    response: reqwest::Response,
) -> Result<(), ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(ClientError::Protocol { url: endpoint.url(path), message: format!("HTTP {status}: {body}") })
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_key_paths_segment_by_segment() {
        assert_eq!(key_path("/registry/pods/a b"), "/v2/keys/registry/pods/a%20b");
        assert_eq!(key_path("/registry/名"), "/v2/keys/registry/%E5%90%8D");
        assert_eq!(key_path("/"), "/v2/keys");
    }

    #[test]
    fn walks_a_tree_to_its_leaves() {
        let json = r#"{"action":"get","node":{"key":"/r","dir":true,"nodes":[
            {"key":"/r/a","value":"1","modifiedIndex":4},
            {"key":"/r/d","dir":true,"nodes":[{"key":"/r/d/e","value":"2","ttl":30,"expiration":"x","modifiedIndex":9}]},
            {"key":"/r/empty","dir":true}]}}"#;
        let mut leaves = Vec::new();
        let mut deserializer = serde_json::Deserializer::from_str(json);
        ResponseSeed(&mut |leaf| leaves.push((leaf.key, leaf.value, leaf.ttl, leaf.modified_index)))
            .deserialize(&mut deserializer)
            .unwrap();
        assert_eq!(
            leaves,
            [
                ("/r/a".to_string(), "1".to_string(), None, 4),
                ("/r/d/e".to_string(), "2".to_string(), Some(30), 9)
            ]
        );
    }
}
