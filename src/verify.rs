//! Proof that a step lost nothing: a count and a digest over every key and value, computed on the source
//! before a step and on the result after it.
//!
//! The digest is order-independent (a sum, modulo 2^256, of each pair's SHA-256), because the v2 API
//! lists a tree depth-first while v3 ranges come in byte order, and it streams: any number of keys in
//! constant memory.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::client::ClientError;
use crate::client::v3::{KeyValue, V3Client, prefix_end};
use crate::progress::{Progress, Unit};

/// The SHA-256 of one key and value, which the digest sums.
pub type PairHash = [u8; 32];

pub fn pair_hash(key: &[u8], value: &[u8]) -> PairHash {
    let mut hasher = Sha256::new();
    for part in [key, value] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[derive(Clone, Default)]
pub struct KeyDigest {
    count: u64,
    /// A 256-bit little-endian accumulator.
    sum: [u64; 4],
}

/// The finished digest of a keyspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub digest: String,
}

impl KeyDigest {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        self.add_hash(&pair_hash(key, value));
    }

    /// Adds a pair by its [`pair_hash`].
    pub fn add_hash(&mut self, hash: &PairHash) {
        let words =
            std::array::from_fn(|i| u64::from_le_bytes(hash[i * 8..i * 8 + 8].try_into().expect("8 bytes")));
        self.add_sum(&words, 1);
    }

    /// Adds every pair `other` holds.
    pub fn add_all(&mut self, other: &KeyDigest) {
        self.add_sum(&other.sum, other.count);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn add_sum(&mut self, sum: &[u64; 4], count: u64) {
        let mut carry = 0u64;
        for (limb, word) in self.sum.iter_mut().zip(sum) {
            let (partial, overflow_a) = limb.overflowing_add(*word);
            let (total, overflow_b) = partial.overflowing_add(carry);
            *limb = total;
            carry = u64::from(overflow_a) + u64::from(overflow_b);
        }
        self.count += count;
    }

    pub fn finish(&self) -> Summary {
        let digest = self.sum.iter().rev().map(|limb| format!("{limb:016x}")).collect();
        Summary { count: self.count, digest }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} keys, digest {}", self.count, &self.digest[..16])
    }
}

/// Count and digest of every v3 key under `prefix` (a directory, `/registry/`; empty for the whole
/// keyspace), read page by page at one revision. Keys hidden from the v2 API (a path segment starting
/// with `_`) are left out when `like_v2` is set, so the result compares with what the v2 API lists.
/// `expected` is how many keys there should be, for the progress log.
pub async fn v3_summary(
    client: &V3Client,
    prefix: &str,
    like_v2: bool,
    expected: Option<u64>,
) -> Result<Summary, ClientError> {
    Ok(v3_digest(client, prefix, like_v2, &[], expected).await?.0.finish())
}

/// [`v3_summary`]'s digest, still open, and the revision it was read at; the range is read in parts cut
/// at `splits` (see [`V3Client::for_each_page_split`]).
pub async fn v3_digest(
    client: &V3Client,
    prefix: &str,
    like_v2: bool,
    splits: &[Vec<u8>],
    expected: Option<u64>,
) -> Result<(KeyDigest, i64), ClientError> {
    let (start, end) = if prefix.is_empty() {
        (vec![0], vec![0])
    } else {
        (prefix.as_bytes().to_vec(), prefix_end(prefix.as_bytes()))
    };
    let mut digest = KeyDigest::new();
    let progress = Progress::start("verifying", Unit::Keys, expected);
    let revision = client
        .for_each_page_split(&start, &end, splits, async |kvs| {
            progress.add(kvs.len() as u64);
            for kv in kvs {
                if !(like_v2 && hidden_from_v2(&kv.key[prefix.len()..])) {
                    digest.add(&kv.key, &kv.value);
                }
            }
            Ok::<(), ClientError>(())
        })
        .await?;
    Ok((digest, revision))
}

/// What a keyspace holds: every key and value, and which keys share a lease.
#[derive(Debug, PartialEq, Eq)]
pub struct Contents {
    pub keys: Summary,
    /// Digest of (key, the first key of its lease) over keys with a lease: equal exactly when the same
    /// keys are grouped onto leases the same way, whatever the lease ids.
    pub lease_groups: Summary,
}

/// Builds [`Contents`] from keys given in key order (so the first key seen for a lease is its first).
#[derive(Default)]
pub struct ContentsDigest {
    keys: KeyDigest,
    first_keys: HashMap<i64, Vec<u8>>,
    lease_groups: KeyDigest,
}

impl ContentsDigest {
    pub fn add(&mut self, kv: &KeyValue) {
        self.add_key(&kv.key, &kv.value, kv.lease);
    }

    /// A key with its value and its lease's id (0: none).
    pub fn add_key(&mut self, key: &[u8], value: &[u8], lease: i64) {
        self.keys.add(key, value);
        if lease != 0 {
            let first = self.first_keys.entry(lease).or_insert_with(|| key.to_vec());
            self.lease_groups.add(key, first);
        }
    }

    /// Adds every key `other` holds, where no lease of `other` shares keys with one of this digest (its
    /// lease ids may be another etcd's).
    pub fn add_all(&mut self, other: &ContentsDigest) {
        self.keys.add_all(&other.keys);
        self.lease_groups.add_all(&other.lease_groups);
    }

    pub fn count(&self) -> u64 {
        self.keys.count()
    }

    pub fn finish(&self) -> Contents {
        Contents { keys: self.keys.finish(), lease_groups: self.lease_groups.finish() }
    }
}

/// What the whole keyspace of `client`'s etcd holds at `revision` ([`LATEST`](crate::client::v3::LATEST):
/// the newest), read page by page, and the revision it was read at; `expected` is how many keys there
/// should be, for the progress log.
pub async fn contents(
    client: &V3Client,
    revision: i64,
    expected: Option<u64>,
) -> Result<(Contents, i64), ClientError> {
    let (digest, read_at) = contents_digest(client, revision, expected).await?;
    Ok((digest.finish(), read_at))
}

/// [`contents`], still open.
pub async fn contents_digest(
    client: &V3Client,
    revision: i64,
    expected: Option<u64>,
) -> Result<(ContentsDigest, i64), ClientError> {
    let mut digest = ContentsDigest::default();
    let progress = Progress::start("verifying", Unit::Keys, expected);
    let read_at = client
        .for_each_page(&[0], &[0], revision, async |kvs| {
            progress.add(kvs.len() as u64);
            kvs.iter().for_each(|kv| digest.add(kv));
            Ok::<(), ClientError>(())
        })
        .await?;
    Ok((digest, read_at))
}

impl fmt::Display for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (leases {})", self.keys, self.lease_groups)
    }
}

/// The v2 API does not list keys with a path segment starting with `_`.
pub fn hidden_from_v2(key: &[u8]) -> bool {
    key.split(|&b| b == b'/').any(|segment| segment.first() == Some(&b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(pairs: &[(&str, &str)]) -> Summary {
        let mut digest = KeyDigest::new();
        for (key, value) in pairs {
            digest.add(key.as_bytes(), value.as_bytes());
        }
        digest.finish()
    }

    #[test]
    fn equal_keyspaces_digest_equal_in_any_order_and_any_change_shows() {
        let summary = digest(&[("/a", "1"), ("/b", "2"), ("/c", "")]);
        assert_eq!(digest(&[("/c", ""), ("/a", "1"), ("/b", "2")]), summary);
        assert_eq!(summary.count, 3);
        for changed in [
            vec![("/a", "1"), ("/b", "3"), ("/c", "")],
            vec![("/a", "1"), ("/b", "2")],
            vec![("/a", "1"), ("/b", "2"), ("/c", ""), ("/c", "")],
            vec![("/a", "1b"), ("/", "2"), ("/c", "")],
        ] {
            assert_ne!(digest(&changed), summary, "{changed:?}");
        }
        assert_ne!(digest(&[("/ab", "c")]), digest(&[("/a", "bc")]), "lengths keep key and value apart");
    }

    #[test]
    fn digests_of_parts_add_up_to_the_digest_of_the_whole() {
        let pairs: Vec<(String, String)> = (0..1000).map(|i| (format!("/k{i}"), "v".repeat(i % 7))).collect();
        let mut whole = KeyDigest::new();
        let (mut even, mut odd) = (KeyDigest::new(), KeyDigest::new());
        for (i, (key, value)) in pairs.iter().enumerate() {
            whole.add(key.as_bytes(), value.as_bytes());
            let part = if i % 2 == 0 { &mut even } else { &mut odd };
            part.add_hash(&pair_hash(key.as_bytes(), value.as_bytes()));
        }
        even.add_all(&odd);
        assert_eq!(even.finish(), whole.finish());
        assert_eq!(even.count(), 1000);
    }
}
