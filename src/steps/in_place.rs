//! In place: start the next etcd on the data dir until healthy, then stop it. etcd itself upgrades the
//! data (and the cluster version) when it starts; health proves it could.

use tracing::info;

use super::{Context, StepError};
use crate::version::EtcdState;

pub async fn run(ctx: &Context<'_>, to: EtcdState) -> Result<(), StepError> {
    let etcd = ctx.start_healthy(to.version, to.storage, ctx.data_dir.path()).await?;
    info!(to = %to, "data opened by etcd {}", to.version);
    ctx.stop(etcd).await
}
