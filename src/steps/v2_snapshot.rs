//! Opening the data with a v2 snapshot forced past every record earlier runs wrote to the WAL.
//!
//! Two places need one. Leaving 3.5 for 3.6 (see `seal_v2`): 3.6 panics on v2 requests in the WAL past
//! the newest v2 snapshot. And entering 3.0 from 2.3: etcd 3.5 restores the cluster version from the
//! newest v2 snapshot and then replays the WAL's version changes, but ignores a change across majors
//! (2.3 → 3.0) and every one after it, so data whose newest snapshot predates 3.0 leaves 3.5 with its
//! v3 API disabled ("etcdserver: not capable"). A snapshot taken once the cluster runs at 3.0 fixes both.
//!
//! 1. Start etcd with `--snapshot-count=1`, wait until healthy and until it serves v3 (the cluster
//!    version settles just after start), and note the raft index `R`: every record any earlier run
//!    wrote is at or below it.
//! 2. Grant and revoke a lease: two raft entries that touch no key, so that a snapshot must follow `R`.
//! 3. Wait until a v2 snapshot at `R` or later is on disk, then stop.

use std::path::Path;
use std::time::Duration;

use tracing::info;

use super::{Context, StepError, wait_until};
use crate::client::v3::V3Client;
use crate::faults;
use crate::version::EtcdState;

const POLL: Duration = Duration::from_millis(20);
/// etcd settles the cluster version within a few seconds of starting (its version monitor ticks every
/// few seconds); "not capable" for longer means it never will.
const CAPABLE_WITHIN: Duration = Duration::from_secs(30);

/// Opens the data dir with etcd `to` until a v2 snapshot covers every earlier record, then stops it.
pub async fn open_with_fresh_snapshot(ctx: &Context<'_>, to: EtcdState) -> Result<(), StepError> {
    let data_dir = ctx.data_dir.path();
    let mut spec = ctx.etcd_spec(to.version, to.storage, data_dir);
    spec.extra_args.push("--snapshot-count=1".into());
    let etcd = ctx.start_spec_healthy(spec).await?;
    let v3 = V3Client::connect(etcd.endpoint().clone()).await?;
    let timeout = ctx.config.health_timeout;
    let earlier_records = raft_index_once_capable(&v3, timeout.min(CAPABLE_WITHIN)).await?;
    let lease = v3.lease_grant(60).await?;
    v3.lease_revoke(lease).await?;
    faults::pause_async("v2-snapshot-forced").await;
    let snapshot = wait_for_snapshot(&data_dir.join("member/snap"), earlier_records, timeout).await?;
    ctx.stop(etcd).await?;
    info!(raft_index = earlier_records, snapshot, "v2 snapshot taken past every earlier record");
    Ok(())
}

/// The raft index, once etcd serves v3 requests: until the cluster version settles after start, etcd
/// answers "not capable".
async fn raft_index_once_capable(v3: &V3Client, timeout: Duration) -> Result<i64, StepError> {
    let check = async || match v3.raft_index().await {
        Ok(index) => Ok(Ok(index as i64)),
        Err(e) if e.to_string().contains("not capable") => Ok(Err(e)),
        Err(e) => Err(e.into()),
    };
    wait_until(timeout, POLL, check, StepError::from).await
}

/// Waits until `snap_dir` holds a v2 snapshot (`<term>-<index>.snap`, hex) at `index` or later.
async fn wait_for_snapshot(snap_dir: &Path, index: i64, timeout: Duration) -> Result<i64, StepError> {
    let check = async || {
        let newest = newest_snapshot(snap_dir).map_err(|source| StepError::Io {
            action: "listing",
            path: snap_dir.to_path_buf(),
            source,
        })?;
        Ok(newest.filter(|&newest| newest >= index).ok_or(newest))
    };
    let timed_out = |newest| StepError::NoFreshSnapshot { index, timeout, newest };
    wait_until(timeout, POLL, check, timed_out).await
}

/// The raft index of the newest v2 snapshot file in `snap_dir`.
fn newest_snapshot(snap_dir: &Path) -> std::io::Result<Option<i64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(snap_dir)? {
        let name = entry?.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.strip_suffix(".snap"))
            .and_then(|stem| stem.split_once('-'))
            .and_then(|(_, index)| i64::from_str_radix(index, 16).ok());
        newest = newest.max(index);
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_snapshot_by_its_index() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        assert_eq!(newest_snapshot(dir).unwrap(), None);
        for name in ["0000000000000003-000000000000000a.snap", "0000000000000004-000000000000000c.snap", "db"]
        {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(newest_snapshot(dir).unwrap(), Some(12));
    }
}
