//! The downgrade's second path: a logical copy, for when the older etcdctl cannot restore the newer
//! version's snapshot (or the operator asks for it). Every key is dumped from the current version with
//! what remains of its lease, then written into a fresh member of the older version: one new lease per
//! source lease (its remaining TTL, rounded down), the keys in batched transactions, several in flight.
//! The copy is verified by count and digest of the whole keyspace, and by how keys share leases. A lease
//! can run out before the copy is verified (its etcd expires leases as it runs): keys whose lease has less
//! than [`EXPIRY_MARGIN`](super::leases::EXPIRY_MARGIN) left are not copied, or are deleted from the copy
//! just before it is read, and the proof counts them as the source had them.
//!
//! Revisions start over in the copy, so watchers must relist, as after a rollback.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use super::dump::Dump;
use super::in_flight::InFlight;
use super::{Context, Proof, StepError};
use crate::client::v3::{LATEST, Op, V3Client, max_txn_ops};
use crate::faults;
use crate::progress::{Progress, Unit};
use crate::verify::{self, ContentsDigest};
use crate::version::{EtcdState, Storage, Version};

/// Bytes of keys and values per transaction, well under etcd's default request limit (1.5 MiB).
const TXN_BYTES: usize = 512 * 1024;

/// Rebuilds the member in `work/copied` with etcd `to` from the data dir's member run by `source`;
/// returns the directory to swap in.
pub async fn rebuild(
    ctx: &Context<'_>,
    source: Version,
    to: EtcdState,
    work: &Path,
) -> Result<PathBuf, StepError> {
    let etcd = ctx.start_healthy(source, Storage::Etcd3, ctx.data_dir.path()).await?;
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    let mut digest = ContentsDigest::default();
    let dump = Dump::write(&client, &[0], &[0], &work.join("keys.jsonl"), |kv| {
        digest.add(kv);
        Ok(())
    })
    .await?;
    let before = digest.finish();
    ctx.stop(etcd).await?;
    info!(keys = before.keys.count, "read every key with etcd {source} for a logical copy");
    faults::pause_async("logical-copy-read").await;

    let copied = work.join("copied");
    let etcd = ctx.start_healthy(to.version, Storage::Etcd3, &copied).await?;
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    import(&client, &dump, before.keys.count).await?;
    faults::pause_async("logical-copy-imported").await;
    let expired = remove_expired(&client, &dump).await?;
    let (mut after, _) = verify::contents_digest(&client, LATEST, Some(before.keys.count)).await?;
    ctx.stop(etcd).await?;
    after.add_all(&expired);
    let after = after.finish();
    if after != before {
        return Err(StepError::Differs {
            proof: Proof::LogicalCopy,
            before: before.into(),
            after: after.into(),
        });
    }
    info!(
        keys = after.keys.count,
        expired = expired.count(),
        "etcd {} serves the same keys and leases (path: logical copy)",
        to.version
    );
    warn!(
        "revisions start over in a logical copy: restart the API servers and other watchers so they relist"
    );
    dump.remove()?;
    Ok(copied)
}

/// Writes the dump into `client`'s etcd: each source lease granted anew with what is left of its TTL,
/// the keys in transactions of at most `max_txn_ops` puts and `TXN_BYTES` bytes. A key whose lease has
/// (nearly) run out is left out (see [`Dump::expired`]).
async fn import(client: &V3Client, dump: &Dump, total: u64) -> Result<(), StepError> {
    let max_txn_ops = max_txn_ops(client.capabilities());
    let progress = Progress::start("copying keys", Unit::Keys, Some(total));
    let mut leases: HashMap<i64, i64> = HashMap::new();
    let mut txns = InFlight::new(client);
    let mut batch = Vec::new();
    let mut batch_bytes = 0;
    for record in dump.records()? {
        let record = record?;
        progress.add(1);
        let lease = match (record.lease, record.ttl) {
            (0, _) | (_, None) => 0,
            (_, Some(ttl)) if dump.expired(ttl, Instant::now()) => continue,
            (old, Some(ttl)) => match leases.get(&old) {
                Some(&new) => new,
                None => {
                    let new = client.lease_grant(dump.ttl_left(ttl)).await?;
                    leases.insert(old, new);
                    new
                }
            },
        };
        let size = record.key.len() + record.value.len();
        if !batch.is_empty() && (batch.len() == max_txn_ops || batch_bytes + size > TXN_BYTES) {
            txns.send(Vec::new(), std::mem::take(&mut batch)).await?;
            batch_bytes = 0;
        }
        batch.push(Op::Put { key: record.key, value: record.value, lease });
        batch_bytes += size;
    }
    if !batch.is_empty() {
        txns.send(Vec::new(), batch).await?;
    }
    txns.finish().await?;
    Ok(())
}

/// Deletes from the copy every key whose lease has (nearly) run out by now, which etcd may or may not
/// have expired yet, so that each lease's keys are all there or all gone when the copy is read; returns
/// those keys as the source had them, for the proof.
async fn remove_expired(client: &V3Client, dump: &Dump) -> Result<ContentsDigest, StepError> {
    let now = Instant::now();
    let max_txn_ops = max_txn_ops(client.capabilities());
    let mut expired = ContentsDigest::default();
    let mut txns = InFlight::new(client);
    let mut batch = Vec::new();
    for record in dump.records()? {
        let record = record?;
        if record.lease == 0 || !record.ttl.is_some_and(|ttl| dump.expired(ttl, now)) {
            continue;
        }
        expired.add_key(&record.key, &record.value, record.lease);
        if batch.len() == max_txn_ops {
            txns.send(Vec::new(), std::mem::take(&mut batch)).await?;
        }
        batch.push(Op::Delete { key: record.key });
    }
    if !batch.is_empty() {
        txns.send(Vec::new(), batch).await?;
    }
    txns.finish().await?;
    Ok(expired)
}
