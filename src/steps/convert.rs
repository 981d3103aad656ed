//! etcd2 → etcd3: the one step that rewrites the data dir in place, so the most careful one.
//!
//! 1. Start etcd on the v2 data; read every key and value under the data prefix through the v2 API
//!    (count + digest) and every remaining TTL.
//! 2. Stop it; `etcdctl migrate` copies the v2 store into the v3 store (dropping TTLs).
//! 3. Start etcd again; reattach expiring keys to leases; read every key through v3 and compare count
//!    and digest with step 1: a difference fails the step, and the next run restores the backup.
//! 4. Delete the stale v2 copy under the prefix (etcd keeps it in its WAL and serves it; etcd 3.6 refuses
//!    data with v2 content). The backup taken before this step keeps it.
//!
//! A crash anywhere leaves the journal; the next run restores the verified backup and converts again,
//! never continuing on top of a half-done conversion.

use std::time::{Duration, Instant};

use tracing::info;

use super::leases::{self, LeasePolicy};
use super::remaining_ttls::Collector;
use super::{Context, StepError};
use crate::backup;
use crate::client::v2::V2Client;
use crate::client::v3::V3Client;
use crate::etcdctl::Etcdctl;
use crate::faults;
use crate::journal::Journal;
use crate::progress::{Progress, Unit};
use crate::verify::{self, KeyDigest};
use crate::version::{Storage, Version};

/// `etcdctl migrate` reads the whole WAL; give it long enough for a large store.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(ctx: &Context<'_>, at: Version, journal: &mut Journal) -> Result<(), StepError> {
    let data_dir = ctx.data_dir.path();
    let prefix = ctx.config.data_prefix.trim_end_matches('/').to_string();
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let io = |context: &str| {
        let context = format!("{context} in {}", work.display());
        move |source| StepError::Io { context, source }
    };

    let etcd = ctx.start_healthy(at, Storage::Etcd2, data_dir).await?;
    let mut source = KeyDigest::new();
    let mut remaining = Collector::create(&work).map_err(io("keeping TTLs"))?;
    let mut written = Ok(());
    let progress = Progress::start("reading the v2 data", Unit::Keys, None);
    let read_sent = Instant::now();
    V2Client::new(etcd.endpoint().clone())
        .for_each_leaf(&prefix, &mut |leaf| {
            progress.add(1);
            source.add(leaf.key.as_bytes(), leaf.value.as_bytes());
            if let Some(ttl) = leaf.ttl
                && written.is_ok()
            {
                written = remaining.insert(&leaf.key, ttl);
            }
        })
        .await?;
    drop(progress);
    written.map_err(io("keeping TTLs"))?;
    let source = source.finish();
    let remaining = remaining.finish().map_err(io("indexing TTLs"))?;
    info!(keys = source.count, digest = %source.digest, with_ttl = remaining.len(), "read the v2 data");
    ctx.stop(etcd).await?;

    let progress =
        Progress::start("etcdctl migrate (bytes read)", Unit::Bytes, Some(backup::size_of(data_dir)?));
    let output =
        Etcdctl::new(ctx.config.etcdctl_binary(at), at).migrate(data_dir, MIGRATE_TIMEOUT, &progress).await?;
    drop(progress);
    info!(etcdctl = output.lines().last().unwrap_or_default(), "etcdctl migrate done");
    faults::pause_async("etcdctl-migrate-done").await;

    let etcd = ctx.start_healthy(at, Storage::Etcd2, data_dir).await?;
    let v3 = V3Client::connect(etcd.endpoint().clone()).await?;
    let directory = format!("{prefix}/");
    let policy = LeasePolicy {
        ttl_directory: &ctx.config.ttl_keys_directory,
        remaining: &remaining,
        read_sent,
        cap: ctx.config.ttl_lease_duration,
    };
    leases::attach(&v3, &directory, &policy, source.count).await?;
    let converted = verify::v3_summary(&v3, &directory, true, Some(source.count)).await?;
    info!(keys = converted.count, digest = %converted.digest, "read the v3 data");
    if converted != source {
        return Err(StepError::Lost { before: source, after: converted });
    }
    V2Client::new(etcd.endpoint().clone()).delete_tree(&prefix).await?;
    info!(prefix = %prefix, "removed the stale v2 copy (the backup keeps it)");
    ctx.stop(etcd).await
}

/// A conversion that died: restore the backup taken just before it, so the step starts over on the
/// untouched v2 data.
pub async fn recover(ctx: &Context<'_>, journal: &mut Journal) -> Result<bool, StepError> {
    let backup = journal.backup.as_ref().ok_or_else(|| {
        StepError::Failed(
            "an unfinished etcd2 conversion has no backup recorded: restore the data dir by hand".into(),
        )
    })?;
    backup::restore(backup, ctx.data_dir)?;
    info!(backup = %backup.display(), "restored the data from before the unfinished conversion");
    Ok(false)
}
