//! The downgrade's second path: a logical copy, for when the older etcdctl cannot restore the newer
//! version's snapshot (or the operator asks for it). Every key is dumped from the current version with
//! what remains of its lease, then written into a fresh member of the older version: one new lease per
//! source lease (its remaining TTL, rounded down), the keys in batched transactions, several in flight.
//! The copy is verified by count and digest of the whole keyspace, and by how keys share leases. A lease
//! can run out before the copy is verified (its etcd expires leases as it runs): keys whose lease has less
//! than [`EXPIRY_MARGIN`](super::leases::EXPIRY_MARGIN) left are not copied, or are deleted from the copy
//! just before it is read, and the proof counts them as the source had them.
//!
//! Revisions cannot be copied, and a watcher (a Kubernetes API server's cache) resumes at the revision it
//! last saw, + 1: a copy at a lower revision would leave it waiting silently for revisions that come much
//! later, its lists stale. So the copy ends above the source's revision with everything below compacted,
//! as `etcdutl snapshot restore --bump-revision --mark-compacted` leaves a restored member (etcd issue
//! 16028): a resumed watch is answered "compacted" and its client relists, seeing every key. The bundled
//! etcdutl nearest to the target that can ([`restore_bumps_revision`](crate::release::Capabilities): the
//! newest patch of the oldest such minor, 3.5 where it is bundled) restores a snapshot of the copy, which
//! the older target opens (3.4.23 and 3.3.25 with etcdutl 3.5.30, measured); its cost does not grow with
//! the revision. Without such an etcdutl, or for a target not measured to open what it
//! writes (3.0–3.2), the copy's revision is raised through the API, one transaction per revision, and
//! compacted there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{info, warn};

use super::downgrade::{ETCDCTL_TIMEOUT, this_member};
use super::dump::Dump;
use super::in_flight::InFlight;
use super::{Context, Proof, StepError};
use crate::client::v3::{LATEST, Op, V3Client, max_txn_ops};
use crate::etcd_process::EtcdProcess;
use crate::etcdctl::Etcdctl;
use crate::faults;
use crate::progress::{Progress, Unit};
use crate::release::{self, Tool};
use crate::verify::{self, ContentsDigest};
use crate::version::{EtcdState, Storage, Version};

/// Bytes of keys and values per transaction, well under etcd's default request limit (1.5 MiB).
const TXN_BYTES: usize = 512 * 1024;

/// The key raised through the API is written to, then deleted and compacted away. Were a source key
/// named so, the proof would find it missing.
const SCRATCH_KEY: &[u8] = b"\0etcd-migrate/raising-the-revision";

/// Rebuilds the member with etcd `to` from the data dir's member run by `source`, in `work/copied` (then
/// `work/bumped` where etcdutl raises its revision); returns the directory to swap in.
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
    // Watchers resume at the newest revision they saw, + 1; the copy must be compacted above that.
    let resumed_at = dump.revision + 1;
    let etcdutl = release::capabilities(to.version)
        .opens_newer_restore
        .then(|| ctx.config.bundle.nearest_that(|can| can.restore_bumps_revision))
        .flatten();
    let (etcd, copied) = match etcdutl {
        Some(etcdutl) => restore_above(ctx, etcd, &client, to.version, etcdutl, resumed_at, work).await?,
        None => {
            raise_revision(&client, resumed_at).await?;
            (etcd, copied)
        }
    };
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    let (mut after, read_at) = verify::contents_digest(&client, LATEST, Some(before.keys.count)).await?;
    ctx.stop(etcd).await?;
    if read_at <= resumed_at {
        return Err(StepError::RevisionNotAbove { source_revision: dump.revision, copy: read_at });
    }
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
        source_revision = dump.revision,
        revision = read_at,
        "etcd {} serves the same keys and leases above the source's revision, compacted there (path: logical copy)",
        to.version
    );
    warn!(
        "a logical copy keeps no history: a watcher resuming from before is told its revision is compacted, and relists"
    );
    dump.remove()?;
    Ok(copied)
}

/// Moves the copy that `etcd` serves above revision `resumed_at`, everything below compacted: a snapshot of
/// it restored by `etcdutl` of release `etcdutl` with `--bump-revision --mark-compacted` into
/// `work/bumped`, where etcd `to` is started; returns it and that directory. The copy is removed (room).
async fn restore_above(
    ctx: &Context<'_>,
    etcd: EtcdProcess,
    client: &V3Client,
    to: Version,
    etcdutl: Version,
    resumed_at: i64,
    work: &Path,
) -> Result<(EtcdProcess, PathBuf), StepError> {
    let config = ctx.config;
    let snapshot = work.join("copy.db");
    let bump = (resumed_at + 1 - client.revision().await?).max(1) as u64;
    Etcdctl::new(config.bundle.etcdctl(to), to)
        .snapshot_save(etcd.endpoint(), &snapshot, ETCDCTL_TIMEOUT)
        .await?;
    ctx.stop(etcd).await?;
    let bumped = work.join("bumped");
    Etcdctl::new(config.bundle.binary(Tool::Etcdutl, etcdutl), etcdutl)
        .snapshot_restore_bumped(&snapshot, &bumped, &this_member(config), bump, ETCDCTL_TIMEOUT)
        .await?;
    info!(bump, "the copy restored above the source's revision by etcdutl {etcdutl}");
    let copied = work.join("copied");
    std::fs::remove_file(&snapshot).map_err(|source| StepError::Io {
        action: "removing",
        path: snapshot.clone(),
        source,
    })?;
    std::fs::remove_dir_all(&copied).map_err(|source| StepError::Io {
        action: "removing",
        path: copied.clone(),
        source,
    })?;
    let etcd = ctx.start_healthy(to, Storage::Etcd3, &bumped).await?;
    Ok((etcd, bumped))
}

/// Raises the revision of `client`'s etcd above `resumed_at` through the API, when no bundled etcdutl can:
/// one put of a scratch key per revision (its cost grows with the gap: see ARCHITECTURE.md), the key
/// deleted, then the store compacted at its newest revision.
async fn raise_revision(client: &V3Client, resumed_at: i64) -> Result<(), StepError> {
    let mut revision = client.revision().await?;
    let gap = (resumed_at + 1 - revision).max(0) as u64;
    let progress = Progress::start("raising the revision", Unit::Revisions, Some(gap));
    let mut txns = InFlight::new(client);
    while revision <= resumed_at {
        txns.send(Vec::new(), vec![Op::Put { key: SCRATCH_KEY.to_vec(), value: Vec::new(), lease: 0 }])
            .await?;
        progress.add(1);
        revision += 1;
    }
    txns.finish().await?;
    client.txn(Vec::new(), vec![Op::Delete { key: SCRATCH_KEY.to_vec() }]).await?;
    let revision = client.revision().await?;
    client.compact(revision).await?;
    info!(revision, "the copy's revision raised through the API and compacted there");
    Ok(())
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
