//! One-minor downgrade within 3.x. etcd refuses data last run by a newer minor ("cluster cannot be
//! downgraded"), so the member is rebuilt by the older version, verified, and swapped in. The first path
//! keeps revisions and leases as they are:
//!
//! 1. start the current minor on the data; count + digest every key, count the leases; snapshot it;
//! 2. `snapshot restore` with the OLDER etcdctl into a work dir, as this member (name, peer URLs);
//! 3. start the older etcd on the restored dir; the same keys, digest and leases at the revision the
//!    source was read at (a lease can run out in between), or the path fails.
//!
//! If that path fails (an etcdctl that cannot read the newer snapshot), the member is rebuilt by a
//! [logical copy](super::logical_copy) instead; `--downgrade-method` can also pick one path outright.
//! Either way the rebuilt member is swapped in last (atomic exchange), and the backup taken before this
//! step keeps the old one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use super::{Context, Proof, StepError, keyspace, logical_copy, swap_in};
use crate::client::v3::LATEST;
use crate::config::{Config, DowngradeMethod};
use crate::data_dir::journal::Journal;
use crate::etcdctl::{Etcdctl, RestoreMember};
use crate::faults;
use crate::version::{EtcdState, Storage, Version};

pub(super) const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
    journal: &mut Journal,
) -> Result<(), StepError> {
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let rebuilt = match ctx.config.downgrade_method {
        DowngradeMethod::Snapshot => by_snapshot(ctx, from, source, to, &work).await?,
        DowngradeMethod::Logical => logical_copy::rebuild(ctx, source, to, &work).await?,
        DowngradeMethod::Auto => match by_snapshot(ctx, from, source, to, &work).await {
            Ok(restored) => restored,
            Err(error) => {
                warn!(%error, "the snapshot path failed: rebuilding the member by a logical copy instead");
                // Room for the copy: what the failed path left is of no use.
                let _ = std::fs::remove_file(work.join("snapshot.db"));
                let _ = std::fs::remove_dir_all(work.join("restored"));
                logical_copy::rebuild(ctx, source, to, &work).await?
            }
        },
    };
    swap_in(ctx, journal, &rebuilt)
}

/// Rebuilds the member in `work/restored` from a snapshot; returns that directory.
async fn by_snapshot(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
    work: &Path,
) -> Result<PathBuf, StepError> {
    let config = ctx.config;
    let snapshot = work.join("snapshot.db");
    let etcd = ctx.start_healthy(source, Storage::Etcd3, ctx.data_dir.path()).await?;
    let (before, read_at) = keyspace(&etcd, LATEST).await?;
    faults::pause_async("downgrade-source-read").await;
    Etcdctl::new(config.bundle.etcdctl(source), source)
        .snapshot_save(etcd.endpoint(), &snapshot, ETCDCTL_TIMEOUT)
        .await?;
    ctx.stop(etcd).await?;
    info!(from = %from, keys = before.keys.count, "snapshot taken with etcd {source}");

    let restored = work.join("restored");
    if faults::fail("snapshot-restore") {
        return Err(StepError::FaultInjected { point: "snapshot-restore" });
    }
    Etcdctl::new(config.bundle.etcdctl(to.version), to.version)
        .snapshot_restore(&snapshot, &restored, &this_member(config), ETCDCTL_TIMEOUT)
        .await?;
    info!(to = %to, "snapshot restored with etcdctl {} (path: snapshot restore)", to.version);
    faults::pause_async("snapshot-restored").await;

    let etcd = ctx.start_healthy(to.version, Storage::Etcd3, &restored).await?;
    let (after, _) = keyspace(&etcd, read_at).await?;
    ctx.stop(etcd).await?;
    if after != before {
        return Err(StepError::Differs {
            proof: Proof::SnapshotRestore,
            before: before.into(),
            after: after.into(),
        });
    }
    info!(keys = after.keys.count, "etcd {} serves the same keys and leases", to.version);
    std::fs::remove_file(&snapshot).map_err(|source| StepError::Io {
        action: "removing",
        path: snapshot.clone(),
        source,
    })?;
    Ok(restored)
}

/// This member, as a snapshot restored for it must name it.
pub(super) fn this_member(config: &Config) -> RestoreMember<'_> {
    RestoreMember {
        name: &config.name,
        initial_cluster: &config.initial_cluster,
        initial_advertise_peer_urls: &config.initial_advertise_peer_urls,
        skip_hash_check: false,
    }
}
