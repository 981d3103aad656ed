//! One-minor downgrade from etcd 3.6 on, by etcd's own downgrade API. From 3.6 the backend records a
//! storage version, and an older minor refuses data whose storage (or WAL cluster version) is newer;
//! only the running newer minor can lower it (an offline `etcdutl migrate --target-version` exits 0, but
//! the older minor still refuses the dir). So, in place, after the backup the plan takes before it:
//!
//! 1. start the current minor on the data; count + digest every key and how keys share leases;
//! 2. `etcdctl downgrade validate X.Y`, `downgrade enable X.Y` (skipped when a killed run already
//!    enabled it), and wait until the member reports cluster and storage version X.Y.0; stop it;
//! 3. start the older minor on the data until healthy, and until it has finished etcd's downgrade job
//!    (the job stays enabled until a member of the target minor runs, and while it is enabled a newer
//!    member is refused); the same keys, digest and lease grouping at the revision step 1 read at (a
//!    lease can run out in between), or the step fails.
//!
//! In a cluster, rolled one member at a time (each member's pod with the lower target in turn): the
//! first member validates and enables the downgrade and waits until etcd has lowered the cluster
//! version; later members find it enabled (or the cluster already lowered) and skip step 2's enabling;
//! each member's older etcd then rejoins its peers. Only the last member, the one whose every peer
//! answers at the target minor, waits for etcd to end the job; the others do not wait for peers at all.
//!
//! Revisions, lease ids and remaining TTLs are kept: it is the same data, with a lower storage version.
//! A run killed anywhere in between is redone from the start: the current minor opens the data in every
//! state the step leaves (before the storage version is lowered, the older minor cannot).

use std::time::Duration;

use tracing::info;

use super::{Context, Proof, StepError, keyspace, wait_until};
use crate::bbolt;
use crate::client::v3::{self, LATEST};
use crate::cluster;
use crate::data_dir;
use crate::etcd_process::EtcdProcess;
use crate::etcdctl::{Etcdctl, StorageStatus};
use crate::faults;
use crate::version::{EtcdState, Minor, Storage, Version};

/// etcd's downgrade monitor acts every few seconds (~4 s measured on 3.6.14 and 3.7.1).
const DOWNGRADE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn run(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
) -> Result<(), StepError> {
    let data = ctx.data_dir.path();
    let target = to.version.minor();
    let etcd = ctx.start_healthy(source, Storage::Etcd3, data).await?;
    let (before, read_at) = keyspace(&etcd, LATEST).await?;
    faults::pause_async("online-downgrade-source-read").await;
    lower_storage_version(ctx, &etcd, source, target).await?;
    ctx.stop(etcd).await?;
    info!(from = %from, keys = before.keys.count, "etcd {source} lowered the storage version to {target}.0");
    faults::pause_async("online-downgrade-lowered").await;

    let etcd = ctx.start_healthy(to.version, Storage::Etcd3, data).await?;
    let peers_newer = ctx.ask_peers().await.not_at(target).into_iter().cloned().collect::<Vec<_>>();
    if peers_newer.is_empty() {
        wait_for_downgrade_job_end(&etcd, to.version).await?;
    } else {
        info!(
            "etcd {} rejoined the cluster; etcd ends the downgrade job once every member runs {target}, and these do not yet: {}",
            to.version,
            cluster::list(&peers_newer.iter().collect::<Vec<_>>())
        );
    }
    let (after, _) = keyspace(&etcd, read_at).await?;
    ctx.stop(etcd).await?;
    let job = bbolt::downgrade_target(&data_dir::db_path(data)).map_err(StepError::DowngradeJobUnreadable)?;
    if let Some(job) = job.filter(|_| peers_newer.is_empty()) {
        return Err(StepError::DowngradeJobLeftEnabled { job });
    }
    if after != before {
        return Err(StepError::Differs {
            proof: Proof::OnlineDowngrade,
            before: before.into(),
            after: after.into(),
        });
    }
    info!(keys = after.keys.count, "etcd {} opens the data with the same keys and leases", to.version);
    Ok(())
}

/// Has the running `source` member downgrade the cluster and its storage to `target`, and waits until
/// it reports both.
async fn lower_storage_version(
    ctx: &Context<'_>,
    etcd: &EtcdProcess,
    source: Version,
    target: Minor,
) -> Result<(), StepError> {
    let etcdctl = Etcdctl::new(ctx.config.bundle.etcdctl(source), source);
    let endpoint = etcd.endpoint();
    let lowered = Version::new(target.major, target.minor, 0).to_string();
    let status = etcdctl.storage_status(endpoint, ETCDCTL_TIMEOUT).await?;
    // A later member of a rolling downgrade finds the job on, or already ended by etcd once every other
    // member ran the target (this one is then rerunning a step a kill cut short): nothing to enable.
    let cluster_lowered =
        ctx.config.is_cluster_member() && v3::versions(etcd.endpoint()).await?.cluster == lowered;
    if !downgrading_to(&status, &lowered) && !cluster_lowered {
        for action in ["validate", "enable"] {
            etcdctl.downgrade(endpoint, action, target, ETCDCTL_TIMEOUT).await?;
        }
        info!(target = %target, "downgrade enabled on etcd {source}");
        faults::pause_async("online-downgrade-enabled").await;
    }
    let check = async || {
        let status = etcdctl.storage_status(endpoint, ETCDCTL_TIMEOUT).await?;
        // Both: a newer member stopped before it raised the storage version leaves it at the target
        // already, while the cluster version its WAL records would still make the older minor refuse.
        let cluster = v3::versions(etcd.endpoint()).await?.cluster;
        if status.storage_version == lowered && cluster == lowered {
            return Ok(Ok(()));
        }
        if !downgrading_to(&status, &lowered) && !cluster_lowered {
            return Err(StepError::DowngradeDropped { etcd: source, target, job: status.downgrade });
        }
        Ok(Err((cluster, status.storage_version)))
    };
    let timed_out = |(cluster, storage)| StepError::VersionsNotLowered {
        etcd: source,
        lowered: lowered.clone(),
        timeout: DOWNGRADE_TIMEOUT,
        cluster,
        storage,
    };
    wait_until(DOWNGRADE_TIMEOUT, POLL, check, timed_out).await
}

fn downgrading_to(status: &StorageStatus, lowered: &str) -> bool {
    status.downgrade.enabled && status.downgrade.target_version == lowered
}

/// Waits until the older member has ended the downgrade job, as etcd does once every member runs the
/// target minor. Read from the backend file while etcd runs (3.5 does not report the job), retrying a
/// read that raced a commit; the caller confirms it on the stopped file.
async fn wait_for_downgrade_job_end(etcd: &EtcdProcess, version: Version) -> Result<(), StepError> {
    let db = data_dir::db_path(&etcd.spec().data_dir);
    let check = async || Ok(if let Ok(None) = bbolt::downgrade_target(&db) { Ok(()) } else { Err(()) });
    let timed_out = |()| StepError::DowngradeJobNotEnded { etcd: version, timeout: DOWNGRADE_TIMEOUT };
    wait_until(DOWNGRADE_TIMEOUT, POLL, check, timed_out).await
}
