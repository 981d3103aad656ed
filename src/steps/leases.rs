//! Turning v2 TTLs into v3 leases after `etcdctl migrate`, which drops them.
//!
//! Better than Kubernetes' old attachlease (one flat lease for everything under the TTL directory): each
//! key keeps what remained of its own TTL, capped by `--ttl-lease-duration`, and never more: a key must
//! not outlive the deadline its v2 TTL set. Keys whose deadlines fall in the same granule (1/120 of the
//! cap, 30 s for 1 h) share a lease that ends at the granule's start, so a million events need at most
//! 120 leases (plus one per second for keys with less than a granule left). Keys under the TTL
//! directory that had no TTL get the cap, as attachlease gave them. Keys are read a page at a time without their values, and attached in transactions of up
//! to `max_txn_ops` puts that keep the value (`ignore_value`), each guarded by the key's mod revision;
//! etcd 3.0 and 3.1 have no `ignore_value` (over gRPC they would blank the value): there the pages carry
//! the values and each put writes the value back unchanged. The remaining TTLs are looked up on disk
//! ([`RemainingTtls`]). Memory does not grow with the keyspace.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::info;

use super::StepError;
use super::in_flight::InFlight;
use super::remaining_ttls::RemainingTtls;
use crate::client::v3::{KeyValue, ModRevisionIs, Op, Read, V3Client, max_txn_ops, prefix_end};
use crate::progress::{Progress, Unit};

/// What reattachment did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub keys: u64,
    pub leases: u64,
}

/// Which TTLs the keys get.
pub struct LeasePolicy<'a> {
    /// Keys under this directory expire even if they had no TTL (Kubernetes events).
    pub ttl_directory: &'a str,
    /// Remaining TTL (seconds) of every key that had one, as read from the v2 store.
    pub remaining: &'a RemainingTtls,
    /// When the v2 read that reported `remaining` was sent: every remaining TTL counts from here.
    pub read_sent: Instant,
    /// The longest lease.
    pub cap: Duration,
}

impl LeasePolicy<'_> {
    fn granule(&self) -> u64 {
        (self.cap.as_secs() / 120).max(1)
    }

    /// When `key` must be gone, in whole seconds after `read_sent`, rounded down to a granule so that
    /// keys with close deadlines share a lease; `None` for a key that never expires.
    pub fn deadline(&self, key: &str) -> std::io::Result<Option<u64>> {
        let cap = self.cap.as_secs();
        let deadline = match self.remaining.get(key)? {
            // v2 reports what is left rounded up to a whole second: a second less never outlives the key.
            Some(ttl) => (ttl.max(1) as u64 - 1).min(cap),
            None if key.starts_with(&format!("{}/", self.ttl_directory.trim_end_matches('/'))) => cap,
            None => return Ok(None),
        };
        let granule = self.granule();
        Ok(Some(if deadline < granule { deadline } else { deadline / granule * granule }))
    }

    /// The TTL of a lease granted now that must end by `deadline`: what is left until then, rounded
    /// down, and at least etcd's shortest (1 s) for a key whose time ran out during the conversion.
    pub fn lease_ttl(&self, deadline: u64) -> i64 {
        let left = Duration::from_secs(deadline).saturating_sub(self.read_sent.elapsed());
        left.as_secs().max(1) as i64
    }
}

/// Attaches every key under `prefix` that should expire to a lease; `total` is about how many keys
/// there are, for the progress log.
pub async fn attach(
    client: &V3Client,
    prefix: &str,
    policy: &LeasePolicy<'_>,
    total: u64,
) -> Result<Attached, StepError> {
    let caps = client.capabilities();
    let read = if caps.put_ignore_value { Read::KeysOnly } else { Read::WithValues };
    let max_txn_ops = max_txn_ops(caps);
    let mut leases: HashMap<u64, i64> = HashMap::new();
    let mut in_flight = InFlight::new(client);
    let started = Instant::now();
    let progress = Progress::start("attaching leases", Unit::Keys, Some(total));
    let start = prefix.as_bytes();
    client
        .for_each_page(start, &prefix_end(start), read, async |kvs: Vec<KeyValue>| {
            progress.add(kvs.len() as u64);
            let (mut guards, mut ops) = (Vec::new(), Vec::new());
            for kv in kvs {
                let key = String::from_utf8_lossy(&kv.key);
                let deadline = policy.deadline(&key).map_err(|source| StepError::Io {
                    context: format!("looking up the TTL of {key}"),
                    source,
                })?;
                let Some(deadline) = deadline else { continue };
                let lease = match leases.get(&deadline) {
                    Some(&id) => id,
                    None => {
                        let id = client.lease_grant(policy.lease_ttl(deadline)).await?;
                        leases.insert(deadline, id);
                        id
                    }
                };
                guards.push(ModRevisionIs { key: kv.key.clone(), mod_revision: kv.mod_revision });
                ops.push(match read {
                    Read::KeysOnly => Op::AttachLease { key: kv.key, lease },
                    Read::WithValues => Op::Put { key: kv.key, value: kv.value, lease },
                });
                if ops.len() == max_txn_ops {
                    in_flight.send(std::mem::take(&mut guards), std::mem::take(&mut ops)).await?;
                }
            }
            if !ops.is_empty() {
                in_flight.send(guards, ops).await?;
            }
            Ok::<(), StepError>(())
        })
        .await?;
    let attached = Attached { keys: in_flight.finish().await?, leases: leases.len() as u64 };
    drop(progress);
    let rate = attached.keys as f64 / started.elapsed().as_secs_f64().max(1e-9);
    info!(
        keys = attached.keys,
        leases = attached.leases,
        rate = format_args!("{rate:.0}/s"),
        "leases attached"
    );
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_never_outlives_the_v2_deadline_and_close_deadlines_share_one() {
        let temp = tempfile::tempdir().unwrap();
        let mut remaining = super::super::remaining_ttls::Collector::create(temp.path()).unwrap();
        for (key, ttl) in [
            ("/registry/events/a", 100),
            ("/registry/events/a2", 119),
            ("/registry/events/b", 7200),
            ("/registry/masterleases/x", 15),
            ("/registry/events/c", 3),
        ] {
            remaining.insert(key, ttl).unwrap();
        }
        let remaining = remaining.finish().unwrap();
        let policy = LeasePolicy {
            ttl_directory: "/registry/events",
            remaining: &remaining,
            read_sent: Instant::now() - Duration::from_millis(5500),
            cap: Duration::from_secs(3600),
        };
        let deadline = |key| policy.deadline(key).unwrap();
        assert_eq!(deadline("/registry/events/a"), Some(90), "99 s for sure, rounded down to 30 s granules");
        assert_eq!(deadline("/registry/events/a2"), Some(90), "a close deadline shares the granule");
        assert_eq!(deadline("/registry/events/b"), Some(3600), "capped");
        assert_eq!(deadline("/registry/masterleases/x"), Some(14), "less than a granule: to the second");
        assert_eq!(deadline("/registry/events/c"), Some(2));
        assert_eq!(deadline("/registry/events/no-ttl"), Some(3600), "the directory's keys expire");
        assert_eq!(deadline("/registry/eventsx/y"), None);
        assert_eq!(deadline("/registry/pods/p"), None);
        assert_eq!(policy.lease_ttl(90), 84, "granted 5.5 s after the read: 84.5 s left, rounded down");
        assert_eq!(policy.lease_ttl(2), 1, "ran out while converting: the shortest lease");
    }
}
