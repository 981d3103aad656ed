//! etcd2 → etcd3: the one step that rewrites the data dir in place, so the most careful one.
//!
//! 1. Start etcd on the v2 data; read every key and value under the data prefix through the v2 API
//!    (count + digest), noting each key that expires, with its deadline, in a work file.
//! 2. Stop it; `etcdctl migrate` copies the v2 store into the v3 store (dropping TTLs).
//! 3. Start etcd again; put the noted keys on leases; read every key through v3 and compare count and
//!    digest with step 1, where a noted key whose time is up may be gone (etcd expires v2 keys while it
//!    runs): any other difference fails the step, and the next run restores the backup.
//! 4. Delete the stale v2 copy under the prefix (etcd keeps it in its WAL and serves it; etcd 3.6 refuses
//!    data with v2 content). The backup taken before this step keeps it.
//!
//! A crash anywhere leaves the journal; the next run restores the verified backup and converts again,
//! never continuing on top of a half-done conversion.

use std::time::{Duration, Instant};

use tracing::info;

use super::expiring::{self, ExpiringKeys};
use super::leases::{self, LeasePolicy};
use super::{Context, StepError};
use crate::backup;
use crate::client::v2::V2Client;
use crate::client::v3::V3Client;
use crate::data_dir::journal::Journal;
use crate::etcdctl::Etcdctl;
use crate::faults;
use crate::progress::{Progress, Unit};
use crate::release;
use crate::verify::{self, KeyDigest};
use crate::version::{Storage, Version};

/// One v2 key in this many is noted as a place to cut the v3 read of the verification, so that etcd
/// before 3.5 walks its index over a few thousand keys per page, not over the rest of the store.
const SPLIT_EVERY: u64 = 4096;

/// Expired keys asked about at once: memory stays flat even when every key's time is up.
const EXISTENCE_BATCH: usize = 4096;

/// `etcdctl migrate` reads the whole WAL; give it long enough for a large store.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(ctx: &Context<'_>, at: Version, journal: &mut Journal) -> Result<(), StepError> {
    let data_dir = ctx.data_dir.path();
    let prefix = ctx.config.data_prefix.trim_end_matches('/').to_string();
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let work_path = work.as_path();
    let io =
        |action: &'static str| move |source| StepError::Io { action, path: work_path.to_path_buf(), source };

    let etcd = ctx.start_healthy(at, Storage::Etcd2, data_dir).await?;
    let with_values = !release::capabilities(at).put_ignore_value;
    let mut expiring = expiring::Writer::create(&work, with_values).map_err(io("noting expiring keys in"))?;
    let mut source = KeyDigest::new();
    let mut splits = Vec::new();
    let mut written = Ok(());
    let progress = Progress::start("reading the v2 data", Unit::Keys, None);
    let policy = LeasePolicy {
        ttl_directory: &ctx.config.ttl_keys_directory,
        read_sent: Instant::now(),
        cap: ctx.config.ttl_lease_duration,
    };
    V2Client::new(etcd.endpoint().clone())
        .for_each_leaf(&prefix, &mut |leaf| {
            progress.add(1);
            let (key, value) = (leaf.key.as_bytes(), leaf.value.as_bytes());
            let pair_hash = verify::pair_hash(key, value);
            source.add_hash(&pair_hash);
            if source.count().is_multiple_of(SPLIT_EVERY) {
                splits.push(key.to_vec());
            }
            if let Some(deadline) = policy.deadline(&leaf.key, leaf.ttl)
                && written.is_ok()
            {
                written = expiring.push(key, value, leaf.modified_index, deadline, &pair_hash);
            }
        })
        .await?;
    drop(progress);
    written.map_err(io("noting expiring keys in"))?;
    let expiring = expiring.finish().map_err(io("noting expiring keys in"))?;
    let source = source.finish();
    info!(keys = source.count, digest = %source.digest, expiring = expiring.len(), "read the v2 data");
    faults::pause_async("v2-data-read").await;
    ctx.stop(etcd).await?;

    let progress = Progress::start("etcdctl migrate (bytes read and written)", Unit::Bytes, None);
    let output =
        Etcdctl::new(ctx.config.bundle.etcdctl(at), at).migrate(data_dir, MIGRATE_TIMEOUT, &progress).await?;
    drop(progress);
    info!(etcdctl = output.lines().last().unwrap_or_default(), "etcdctl migrate done");
    faults::pause_async("etcdctl-migrate-done").await;

    let etcd = ctx.start_healthy(at, Storage::Etcd2, data_dir).await?;
    let v3 = V3Client::connect(etcd.endpoint().clone()).await?;
    leases::attach(&v3, &expiring, &policy).await?;
    let directory = format!("{prefix}/");
    let (mut converted, revision) =
        verify::v3_digest(&v3, &directory, true, &splits, Some(source.count)).await?;
    let expired = expired_keys_gone(&v3, &expiring, &policy, revision).await?;
    info!(keys = converted.count(), expired = expired.count(), "read the v3 data");
    converted.add_all(&expired);
    let converted = converted.finish();
    if converted != source {
        return Err(StepError::Lost { before: source, after: converted });
    }
    V2Client::new(etcd.endpoint().clone()).delete_tree(&prefix).await?;
    info!(prefix = %prefix, "removed the stale v2 copy (the backup keeps it)");
    ctx.stop(etcd).await
}

/// The expiring keys that are gone at `revision` (each one whose time was up, or nearly: deleted by
/// [`leases::attach`], or expired by etcd since the v2 read), so that the proof counts them as they were
/// read from v2; a key gone before its time is not among them, and the proof fails.
async fn expired_keys_gone(
    v3: &V3Client,
    expiring: &ExpiringKeys,
    policy: &LeasePolicy<'_>,
    revision: i64,
) -> Result<KeyDigest, StepError> {
    let mut gone = KeyDigest::new();
    let (mut keys, mut hashes) = (Vec::new(), Vec::new());
    let mut entries = expiring.read()?;
    loop {
        let entry = entries.next().transpose()?;
        let done = entry.is_none();
        if let Some(entry) = entry.filter(|entry| policy.expired(entry.deadline)) {
            keys.push(entry.key);
            hashes.push(entry.pair_hash);
        }
        if keys.len() == EXISTENCE_BATCH || (done && !keys.is_empty()) {
            let exist = v3.exist_at(&keys, revision).await?;
            for (hash, exists) in hashes.drain(..).zip(exist) {
                if !exists {
                    gone.add_hash(&hash);
                }
            }
            keys.clear();
        }
        if done {
            return Ok(gone);
        }
    }
}

/// A conversion that died: restore the backup taken just before it, so the step starts over on the
/// untouched v2 data.
pub async fn recover(ctx: &Context<'_>, journal: &mut Journal) -> Result<bool, StepError> {
    let backup = journal.backup.as_ref().ok_or(StepError::ConversionWithoutBackup)?;
    backup::restore(backup, ctx.data_dir)?;
    info!(backup = %backup.display(), "restored the data from before the unfinished conversion");
    Ok(false)
}
