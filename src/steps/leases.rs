//! Turning v2 TTLs into v3 leases after `etcdctl migrate`, which drops them.
//!
//! Better than Kubernetes' old attachlease (one flat lease for everything under the TTL directory): each
//! key keeps what remained of its own TTL, capped by `--ttl-lease-duration`, and never more: a key must
//! not outlive the deadline its v2 TTL set. Keys whose deadlines fall in the same granule (1/120 of the
//! cap, 30 s for 1 h) share a lease that ends at the granule's start, so a million events need at most
//! 120 leases (plus one per second for keys with less than a granule left). Keys under the TTL
//! directory that had no TTL get the cap, as attachlease gave them. A key with less than
//! [`EXPIRY_MARGIN`] left is deleted instead, as etcd would within seconds: a lease that short could
//! expire before its transaction lands.
//!
//! The keys come from the [`ExpiringKeys`] noted during the v2 read, not from a read of the v3 store,
//! and are attached in transactions of up to `max_txn_ops` puts that keep the value (`ignore_value`),
//! each guarded by the key's mod revision as `etcdctl migrate` wrote it; etcd 3.0 and 3.1 have no
//! `ignore_value` (over gRPC they would blank the value): there each put writes the noted value back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tracing::info;

use super::StepError;
use super::expiring::ExpiringKeys;
use super::in_flight::InFlight;
use crate::client::v3::{ModRevisionIs, Op, V3Client, max_txn_ops};
use crate::progress::{Progress, Unit};

/// A key with less than this left is deleted rather than put on a lease.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What reattachment did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Attached {
    pub keys: u64,
    pub leases: u64,
    /// Keys deleted because their time was (nearly) up.
    pub expired: u64,
}

/// Which TTLs the keys get.
pub struct LeasePolicy<'a> {
    /// Keys under this directory expire even if they had no TTL (Kubernetes events).
    pub ttl_directory: &'a str,
    /// When the v2 read that reported the TTLs was sent: every deadline counts from here.
    pub read_sent: Instant,
    /// The longest lease.
    pub cap: Duration,
}

impl LeasePolicy<'_> {
    fn granule(&self) -> u64 {
        (self.cap.as_secs() / 120).max(1)
    }

    /// When `key`, which v2 reported with `ttl` seconds left, must be gone, in whole seconds after
    /// `read_sent`, rounded down to a granule so that keys with close deadlines share a lease; `None`
    /// for a key that never expires.
    pub fn deadline(&self, key: &str, ttl: Option<i64>) -> Option<u64> {
        let cap = self.cap.as_secs();
        let deadline = match ttl {
            // v2 reports what is left rounded up to a whole second: a second less never outlives the key.
            Some(ttl) => (ttl.max(1) as u64 - 1).min(cap),
            None if self.in_ttl_directory(key) => cap,
            None => return None,
        };
        let granule = self.granule();
        Some(if deadline < granule { deadline } else { deadline / granule * granule })
    }

    /// Whether `key` is under the TTL directory (checked for every key read, so without allocating).
    fn in_ttl_directory(&self, key: &str) -> bool {
        key.strip_prefix(self.ttl_directory.trim_end_matches('/')).is_some_and(|rest| rest.starts_with('/'))
    }

    /// What is left until `deadline`.
    fn left(&self, deadline: u64) -> Duration {
        Duration::from_secs(deadline).saturating_sub(self.read_sent.elapsed())
    }

    /// Whether a key with this deadline has less than [`EXPIRY_MARGIN`] left: it is deleted rather
    /// than attached, and may be missing afterwards.
    pub fn expired(&self, deadline: u64) -> bool {
        self.left(deadline) < EXPIRY_MARGIN
    }

    /// The TTL of a lease granted now that must end by `deadline`: what is left until then, rounded
    /// down.
    pub fn lease_ttl(&self, deadline: u64) -> i64 {
        self.left(deadline).as_secs().max(1) as i64
    }
}

/// Attaches every key in `expiring` to a lease ending by its deadline, or deletes it if its time is
/// (nearly) up.
pub async fn attach(
    client: &V3Client,
    expiring: &ExpiringKeys,
    policy: &LeasePolicy<'_>,
) -> Result<Attached, StepError> {
    let max_txn_ops = max_txn_ops(client.capabilities());
    let mut leases: HashMap<u64, i64> = HashMap::new();
    let mut in_flight = InFlight::new(client);
    let mut expired = 0;
    let started = Instant::now();
    let progress = Progress::start("attaching leases", Unit::Keys, Some(expiring.len()));
    let (mut guards, mut ops) = (Vec::new(), Vec::new());
    for entry in expiring.read()? {
        let entry = entry?;
        progress.add(1);
        if policy.expired(entry.deadline) {
            expired += 1;
            ops.push(Op::Delete { key: entry.key });
        } else {
            let lease = match leases.get(&entry.deadline) {
                Some(&id) => id,
                None => {
                    let id = client.lease_grant(policy.lease_ttl(entry.deadline)).await?;
                    leases.insert(entry.deadline, id);
                    id
                }
            };
            guards.push(ModRevisionIs { key: entry.key.clone(), mod_revision: entry.mod_revision });
            ops.push(match entry.value {
                None => Op::AttachLease { key: entry.key, lease },
                Some(value) => Op::Put { key: entry.key, value, lease },
            });
        }
        if ops.len() == max_txn_ops {
            in_flight.send(std::mem::take(&mut guards), std::mem::take(&mut ops)).await?;
        }
    }
    if !ops.is_empty() {
        in_flight.send(guards, ops).await?;
    }
    let written = in_flight.finish().await?;
    let attached = Attached { keys: written - expired, leases: leases.len() as u64, expired };
    drop(progress);
    let rate = written as f64 / started.elapsed().as_secs_f64().max(1e-9);
    info!(
        keys = attached.keys,
        leases = attached.leases,
        expired = attached.expired,
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
        let policy = LeasePolicy {
            ttl_directory: "/registry/events",
            read_sent: Instant::now() - Duration::from_millis(5500),
            cap: Duration::from_secs(3600),
        };
        let deadline = |key, ttl| policy.deadline(key, ttl);
        assert_eq!(
            deadline("/registry/events/a", Some(100)),
            Some(90),
            "99 s for sure, rounded down to 30 s"
        );
        assert_eq!(
            deadline("/registry/events/a2", Some(119)),
            Some(90),
            "a close deadline shares the granule"
        );
        assert_eq!(deadline("/registry/events/b", Some(7200)), Some(3600), "capped");
        assert_eq!(
            deadline("/registry/masterleases/x", Some(15)),
            Some(14),
            "under a granule: to the second"
        );
        assert_eq!(deadline("/registry/events/c", Some(3)), Some(2));
        assert_eq!(deadline("/registry/events/no-ttl", None), Some(3600), "the directory's keys expire");
        assert_eq!(deadline("/registry/eventsx/y", None), None);
        assert_eq!(deadline("/registry/pods/p", None), None);
        assert_eq!(policy.lease_ttl(90), 84, "granted 5.5 s after the read: 84.5 s left, rounded down");
        assert!(!policy.expired(14), "8.5 s left");
        assert!(policy.expired(10), "4.5 s left: deleted, not put on a lease that could end first");
        assert!(policy.expired(2), "ran out while converting");
    }
}
