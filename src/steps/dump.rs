//! A dump of v3 keys for the steps that rebuild a member through the API (the logical downgrade copy,
//! the rollback to etcd2): the source etcd is read page by page into a file in the work dir, with what
//! remains of each key's lease, then stopped; the file is read back one record at a time into a fresh
//! member of the target version. Memory stays flat however many keys there are.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StepError;
use super::leases::EXPIRY_MARGIN;
use crate::client::v3::{KeyValue, LATEST, V3Client};
use crate::durable;
use crate::progress::{Progress, Unit};

/// One key as the file keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub key: Vec<u8>,
    #[serde(serialize_with = "to_base64", deserialize_with = "from_base64")]
    pub value: Vec<u8>,
    /// The source's lease id (0: none); keys that shared a lease share one again.
    pub lease: i64,
    /// Seconds the lease had left when it was read.
    pub ttl: Option<i64>,
}

fn to_base64<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&BASE64.encode(bytes))
}

fn from_base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    BASE64.decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A written dump: where it is and when its TTLs were read.
pub struct Dump {
    path: PathBuf,
    read_at: Instant,
    /// The source's revision when it was read: the newest any of its watchers can have seen.
    pub revision: i64,
}

impl Dump {
    /// Writes every key of `[start, end)`, read at one revision, to `path`. `visit` sees each key first:
    /// it digests what the step will verify, and may refuse a key (the step then fails, nothing changed).
    pub async fn write(
        client: &V3Client,
        start: &[u8],
        end: &[u8],
        path: &Path,
        mut visit: impl FnMut(&KeyValue) -> Result<(), StepError>,
    ) -> Result<Dump, StepError> {
        let mut out = BufWriter::new(durable::create_private(path).map_err(io_error("writing", path))?);
        let mut ttls: HashMap<i64, i64> = HashMap::new();
        let read_at = Instant::now();
        let progress = Progress::start("dumping keys", Unit::Keys, None);
        let revision = client
            .for_each_page(start, end, LATEST, async |kvs| {
                progress.add(kvs.len() as u64);
                for kv in kvs {
                    visit(&kv)?;
                    let ttl = match kv.lease {
                        0 => None,
                        lease => Some(match ttls.get(&lease) {
                            Some(&ttl) => ttl,
                            None => {
                                let ttl = client.lease_ttl(lease).await?.max(1);
                                ttls.insert(lease, ttl);
                                ttl
                            }
                        }),
                    };
                    let record = Record { key: kv.key, value: kv.value, lease: kv.lease, ttl };
                    // Serializing a record fails only on writing it.
                    serde_json::to_writer(&mut out, &record)
                        .map_err(std::io::Error::from)
                        .map_err(io_error("writing", path))?;
                    out.write_all(b"\n").map_err(io_error("writing", path))?;
                }
                Ok::<(), StepError>(())
            })
            .await?;
        out.flush().map_err(io_error("writing", path))?;
        Ok(Dump { path: path.to_path_buf(), read_at, revision })
    }

    /// The records, in key order.
    pub fn records(&self) -> Result<impl Iterator<Item = Result<Record, StepError>> + use<'_>, StepError> {
        let file = File::open(&self.path).map_err(io_error("reading", &self.path))?;
        Ok(BufReader::new(file).lines().map(|line| {
            let line = line.map_err(io_error("reading", &self.path))?;
            serde_json::from_str(&line)
                .map_err(|source| StepError::DumpRecord { path: self.path.clone(), source })
        }))
    }

    /// Whether a key whose lease (or TTL) had `ttl` seconds left when the dump was read has less than
    /// [`EXPIRY_MARGIN`] left at `now`: it is not copied, or is removed from the copy before the copy is
    /// verified, as etcd would have removed it within seconds. Later moments judge more keys gone,
    /// never fewer, so a key left out stays out.
    pub fn expired(&self, ttl: i64, now: Instant) -> bool {
        self.deadline(ttl) < now + EXPIRY_MARGIN
    }

    /// The TTL for a key copied now, whose lease (or TTL) had `ttl` seconds left when the dump was read:
    /// what is left of it, rounded down, so that it never outlives its source.
    pub fn ttl_left(&self, ttl: i64) -> i64 {
        self.deadline(ttl).saturating_duration_since(Instant::now()).as_secs() as i64
    }

    fn deadline(&self, ttl: i64) -> Instant {
        self.read_at + Duration::from_secs(ttl.max(0) as u64)
    }

    pub fn remove(self) -> Result<(), StepError> {
        std::fs::remove_file(&self.path).map_err(io_error("removing", &self.path))
    }
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StepError + 'a {
    move |source| StepError::Io { action, path: path.to_path_buf(), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_expired_with_less_than_the_margin_left_and_copied_with_what_is_left_rounded_down() {
        let now = Instant::now();
        let dump = Dump { path: PathBuf::new(), read_at: now - Duration::from_secs(10), revision: 0 };
        let margin = EXPIRY_MARGIN.as_secs() as i64;
        assert!(dump.expired(10 + margin - 1, now), "under the margin left");
        assert!(!dump.expired(10 + margin + 1, now), "over the margin left");
        assert!(dump.expired(10 + margin + 1, now + Duration::from_secs(2)), "later, more keys are expired");
        assert!(dump.expired(3, now), "already past its deadline");
        let left = dump.ttl_left(70);
        assert!((59..=60).contains(&left), "70 s read 10 s ago: {left} s left, never more than 60");
        assert_eq!(dump.ttl_left(3), 0, "nothing left");
    }
}
