//! In place: start the next etcd on the data dir until healthy, then stop it. etcd itself upgrades the
//! data (and the cluster version) when it starts; health proves it could. A member of a cluster that
//! moved to a new minor, with more steps to take, also waits for the cluster version to settle
//! (`Context::settle_cluster_version`), which the next step is checked against. Entering etcd 3 from etcd 2,
//! a v2 snapshot is forced too (see `v2_snapshot`: later releases need one taken at 3.0 or later).

use tracing::info;

use super::{Context, StepError, Then, v2_snapshot};
use crate::version::EtcdState;

pub async fn run(ctx: &Context<'_>, from: EtcdState, to: EtcdState, then: Then) -> Result<(), StepError> {
    if from.version.major < 3 && to.version.major >= 3 {
        v2_snapshot::open_with_fresh_snapshot(ctx, to).await?;
    } else {
        let etcd = ctx.start_healthy(to.version, to.storage, ctx.data_dir.path()).await?;
        if to.version.minor() != from.version.minor() && then == Then::MoreSteps {
            ctx.settle_cluster_version(&etcd).await;
        }
        ctx.stop(etcd).await?;
    }
    info!(to = %to, "data opened by etcd {}", to.version);
    Ok(())
}
