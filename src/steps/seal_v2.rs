//! Sealing the WAL: the last step on a minor before one that replays less of it. On etcd 3.5, so that
//! 3.6, which has no v2 store, opens the data; on 3.6, so that 3.7, which applies no v2 request at all,
//! does (below the 3.5 part; the 3.6 part is at the end).
//!
//! etcd 3.6 replays the WAL past the newest v2 snapshot and panics on any v2 request there but its own
//! membership records ("detected disallowed v2 WAL"); etcd <= 3.4 leaves such requests behind (its
//! `/health` is a v2 quorum read, and conversion deletes the stale v2 copy through the v2 API). And it
//! refuses a v2 snapshot holding keys ("custom content"). So the newest bundled 3.5 opens the data with
//! a v2 snapshot forced past every earlier record ([`v2_snapshot`]), and then its own `etcdutl check
//! v2store` must pass: it finds no keys in that snapshot and no v2 request 3.6 would refuse in the WAL
//! past it (the planner leaves 3.5 only from the 3.6 floor, 3.5.32, whose check reads the WAL too). Keys
//! written through the v2 API and never converted fail the step, named as the cause: they are the
//! user's, and are not deleted here.
//!
//! Before 3.7: 3.5 proposes member attributes and the cluster version as v2 `PUT`s, which 3.6 applies
//! and 3.7 panics on. A single member sealed before 3.6 has none left, but a member of a cluster keeps
//! those its peers proposed while they still ran 3.5, past its last snapshot. So the newest bundled 3.6
//! forces a snapshot the same way, and the WAL is then read (`wal`) to prove that no entry etcd would
//! replay past it carries a v2 request. 3.6 has no `etcdutl check v2store` to ask.
//!
//! Rerunning it is harmless, so a run that dies here simply seals again.

use std::path::Path;
use std::time::Duration;

use tracing::info;

use super::{Context, StepError, v2_snapshot};
use crate::data_dir;
use crate::etcdctl::{Etcdctl, EtcdctlError};
use crate::release::{self, Tool};
use crate::version::{EtcdState, Version};
use crate::wal;

const CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);

pub async fn run(ctx: &Context<'_>, to: EtcdState) -> Result<(), StepError> {
    let data_dir = ctx.data_dir.path();
    v2_snapshot::open_with_fresh_snapshot(ctx, to).await?;
    if release::capabilities(to.version).v2_store {
        check_v2store(ctx, to.version, data_dir).await
    } else {
        check_wal(to.version, data_dir)
    }
}

/// The seal before 3.7: no entry etcd would replay past the snapshot just forced carries a v2 request.
fn check_wal(version: Version, data_dir: &Path) -> Result<(), StepError> {
    let member = data_dir::member_dir(data_dir);
    let replay = wal::replay(&member)?;
    if let Some(&first) = replay.v2_requests.first() {
        return Err(StepError::V2RequestsInWal {
            count: replay.v2_requests.len(),
            snapshot: replay.snapshot,
            first,
            version,
        });
    }
    info!(
        snapshot = replay.snapshot,
        entries_past_it = replay.entries,
        "WAL sealed: no v2 request left to replay"
    );
    Ok(())
}

async fn check_v2store(ctx: &Context<'_>, version: Version, data_dir: &Path) -> Result<(), StepError> {
    let etcdutl = Etcdctl::new(ctx.config.bundle.binary(Tool::Etcdutl, version), version);
    let args = ["check".into(), "v2store".into(), "--data-dir".into(), data_dir.display().to_string()];
    match etcdutl.run(&args, CHECK_TIMEOUT).await {
        Ok(output) => {
            let checked = if release::capabilities(version).v2store_check_reads_wal {
                "the v2 snapshot and the WAL past it"
            } else {
                "the v2 snapshot"
            };
            info!(etcdutl = output.trim(), checked, "v2 store sealed");
            Ok(())
        }
        Err(EtcdctlError::Failed { stderr, .. }) if holds_v2_keys(&stderr) => {
            Err(StepError::V2KeysInStore { stderr, version })
        }
        Err(EtcdctlError::Failed { stderr, .. }) if stderr.contains("custom v2 content in WAL records") => {
            Err(StepError::V2RequestsPastSnapshot { stderr, version })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `etcdutl check v2store` failed on keys in the v2 snapshot: "detected custom content in
/// v2store", or from 3.5.32 on "detected custom v2 content in both v2store and WAL records".
fn holds_v2_keys(stderr: &str) -> bool {
    stderr.contains("custom content in v2store") || stderr.contains("in both v2store and WAL records")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_keys_in_the_snapshot_from_requests_in_the_wal() {
        assert!(holds_v2_keys("Error: detected custom content in v2store"));
        assert!(holds_v2_keys("Error: detected custom v2 content in both v2store and WAL records"));
        assert!(!holds_v2_keys("Error: detected custom v2 content in WAL records"));
        assert!(!holds_v2_keys("Error: failed to recover v2store from snapshot: unexpected EOF"));
    }
}
