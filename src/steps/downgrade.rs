//! One-minor downgrade within 3.x. etcd refuses data last run by a newer minor ("cluster cannot be
//! downgraded"), so the member is rebuilt from a snapshot by the older version, verified, and swapped in:
//!
//! 1. start the current minor on the data; count + digest every key, count the leases; snapshot it;
//! 2. `snapshot restore` with the OLDER etcdctl into a work dir, as this member (name, peer URLs);
//! 3. start the older etcd on the restored dir; the same keys, digest and leases, or the step fails;
//! 4. swap the restored member in (atomic exchange); the backup taken before this step keeps the old one.
//!
//! A snapshot keeps revisions and leases, so clients see the same resource versions.

use std::time::Duration;

use tracing::info;

use super::{Context, StepError, swap_in};
use crate::client::TlsFiles;
use crate::client::v3::V3Client;
use crate::etcdctl::{Etcdctl, RestoreMember};
use crate::journal::Journal;
use crate::verify::{self, Summary};
use crate::version::{EtcdState, Storage, Version};

const ETCDCTL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub async fn run(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
    journal: &mut Journal,
) -> Result<(), StepError> {
    let config = ctx.config;
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let snapshot = work.join("snapshot.db");

    let etcd = ctx.start_healthy(source, Storage::Etcd3, ctx.data_dir.path()).await?;
    let (before, leases_before) = keyspace(&etcd).await?;
    let tls = TlsFiles::from_etcd_args(&config.extra_args);
    Etcdctl::new(config.etcdctl_binary(source))
        .snapshot_save(etcd.endpoint().base_url(), &tls, &snapshot, ETCDCTL_TIMEOUT)
        .await?;
    ctx.stop(etcd).await?;
    info!(from = %from, keys = before.count, leases = leases_before, "snapshot taken with etcd {source}");

    let restored = work.join("restored");
    let member = RestoreMember {
        name: &config.name,
        initial_cluster: &config.initial_cluster,
        initial_advertise_peer_urls: &config.initial_advertise_peer_urls,
        skip_hash_check: false,
    };
    Etcdctl::new(config.etcdctl_binary(to.version))
        .snapshot_restore(&snapshot, &restored, &member, ETCDCTL_TIMEOUT)
        .await?;
    info!(to = %to, "snapshot restored with etcdctl {} (path: snapshot restore)", to.version);

    let etcd = ctx.start_healthy(to.version, Storage::Etcd3, &restored).await?;
    let (after, leases_after) = keyspace(&etcd).await?;
    ctx.stop(etcd).await?;
    if after != before || leases_after != leases_before {
        return Err(StepError::Failed(format!(
            "the restored data differs: before {before} with {leases_before} leases, after {after} with {leases_after} leases"
        )));
    }
    info!(keys = after.count, leases = leases_after, "etcd {} serves the same keys and leases", to.version);
    std::fs::remove_file(&snapshot)
        .map_err(|source| StepError::Io { context: snapshot.display().to_string(), source })?;
    swap_in(ctx, journal, &restored)
}

/// Count and digest of the whole keyspace, and the number of leases.
async fn keyspace(etcd: &crate::etcd_process::EtcdProcess) -> Result<(Summary, usize), StepError> {
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    let summary = verify::v3_summary(&client, "", false).await?;
    let leases = client.lease_ids().await?.len();
    Ok((summary, leases))
}
