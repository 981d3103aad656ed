//! The steps of a plan, each in its own module, and what they share: how to run a bundled etcd on the
//! hidden ports for the member this data dir belongs to.

mod convert;
mod downgrade;
mod dump;
mod expiring;
mod in_flight;
mod in_place;
mod leases;
mod logical_copy;
mod online_downgrade;
mod rollback;
mod seal_v2;
mod v2_snapshot;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::backup::BackupError;
use crate::bbolt::BboltError;
use crate::client::v3::{self, V3Client};
use crate::client::{ClientError, TlsFiles};
use crate::cluster::{self, PeerVersions};
use crate::config::Config;
use crate::data_dir::journal::{self, Journal, JournalError};
use crate::data_dir::{Changing, DataDirError};
use crate::durable;
use crate::etcd_process::{EtcdError, EtcdProcess, EtcdSpec};
use crate::etcdctl::{DowngradeInfo, EtcdctlError};
use crate::faults;
use crate::plan::Step;
use crate::release;
use crate::run_ca::{self, RunAuthority};
use crate::swap;
use crate::verify::{self, Contents, Summary};
use crate::version::{Minor, Storage, Version};
use crate::wal::WalError;

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Etcdctl(#[from] EtcdctlError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("keys were lost or changed: before {before}, after {after}")]
    Lost { before: Summary, after: Summary },
    #[error("{proof} differs: before {before}, after {after}")]
    Differs { proof: Proof, before: Box<Contents>, after: Box<Contents> },
    #[error(
        "the logical copy ended at revision {copy}, not above the source's {source_revision} + 1: a watcher resuming there would wait for revisions that come later"
    )]
    RevisionNotAbove { source_revision: i64, copy: i64 },
    #[error("{action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: std::io::Error },
    #[error("reading a record of {path}: {source}")]
    DumpRecord { path: PathBuf, source: serde_json::Error },
    #[error("{what} {key:?} is not UTF-8 text (protobuf?): the v2 API stores text only; nothing was changed")]
    NotText { what: &'static str, key: String },
    #[error("a v2 write did not finish: {0}")]
    V2Write(#[source] tokio::task::JoinError),
    #[error(
        "etcd wrote no v2 snapshot at raft index {index} or later within {timeout:?} (newest: {newest:?})"
    )]
    NoFreshSnapshot { index: i64, timeout: Duration, newest: Option<i64> },
    #[error("checking the WAL for v2 requests: {0}")]
    Wal(#[from] WalError),
    #[error(
        "the WAL still holds {count} v2 requests past the snapshot at raft index {snapshot} (the first at {first}), \
         which etcd 3.7 cannot replay: rerun to seal again; the data stays at {version}"
    )]
    V2RequestsInWal { count: usize, snapshot: u64, first: u64, version: Version },
    #[error(
        "the v2 store holds keys written through the v2 API ({stderr}), which etcd 3.6 refuses: convert them to v3 \
         or delete them with etcd {version} --enable-v2, then rerun; the data stays at {version}"
    )]
    V2KeysInStore { stderr: String, version: Version },
    #[error(
        "the WAL holds v2 requests past the v2 snapshot this step forced ({stderr}), which etcd 3.6 would refuse \
         to replay: rerun to seal again; the data stays at {version}"
    )]
    V2RequestsPastSnapshot { stderr: String, version: Version },
    #[error("the cluster version stayed at {stayed_at}")]
    ClusterVersionUnsettled { stayed_at: String },
    #[error("etcd {etcd} dropped the downgrade to {target} (its downgrade job: {job:?})")]
    DowngradeDropped { etcd: Version, target: Minor, job: DowngradeInfo },
    #[error(
        "etcd {etcd} did not lower its cluster and storage versions to {lowered} within {timeout:?} \
         (still {cluster} and {storage})"
    )]
    VersionsNotLowered { etcd: Version, lowered: String, timeout: Duration, cluster: String, storage: String },
    #[error("etcd {etcd} did not end the downgrade job within {timeout:?}")]
    DowngradeJobNotEnded { etcd: Version, timeout: Duration },
    #[error("the downgrade job to {job} is still enabled after etcd stopped")]
    DowngradeJobLeftEnabled { job: Version },
    #[error("reading the downgrade job: {0}")]
    DowngradeJobUnreadable(#[source] BboltError),
    #[error("an unfinished etcd2 conversion has no backup recorded: restore the data dir by hand")]
    ConversionWithoutBackup,
    #[error("{point} failed (fault injected)")]
    FaultInjected { point: &'static str },
}

/// Which copy of the keyspace a [`StepError::Differs`] proof compared with its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    SnapshotRestore,
    LogicalCopy,
    OnlineDowngrade,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proof::SnapshotRestore => "the restored data",
            Proof::LogicalCopy => "the logical copy",
            Proof::OnlineDowngrade => "the downgraded data",
        })
    }
}

/// How often a member without quorum says which peers it waits for.
const QUORUM_REPORT_EVERY: Duration = Duration::from_secs(5);
/// etcd's version monitor acts every 4 s; a cluster version that every member allows moves within two.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_POLL: Duration = Duration::from_millis(500);

/// What every step needs: the configuration, the locked data dir, open for changes (so a step
/// cannot run on a data dir whose run would still exit 2, "nothing changed"), and the run's certificate
/// authority, which secures every hidden etcd.
pub struct Context<'a> {
    pub config: &'a Config,
    pub data_dir: Changing<'a>,
    pub authority: &'a RunAuthority,
}

impl Context<'_> {
    /// How to start etcd `version` on `data_dir` as this member, on the hidden ports. The v2 API is turned
    /// on for etcd2 data where a flag is needed for it (3.3–3.5; older releases always serve it). Its
    /// client listener, and a single member's peer listener, serve over TLS to holders of the run's
    /// client certificate alone; a member of a cluster keeps the operator's peer URLs and TLS, which its
    /// peers know it by. The URLs the data records (a new member's advertised peer URL) stay the
    /// operator's: only the listener changes.
    pub fn etcd_spec(&self, version: Version, storage: Storage, data_dir: &Path) -> EtcdSpec {
        let config = self.config;
        let single_member = !config.is_cluster_member();
        let listen_peer_urls = match single_member {
            true => run_ca::https_urls(&config.listen_peer_urls),
            false => config.listen_peer_urls.clone(),
        };
        let can = release::capabilities(version);
        let client_tls = can.client_tls;
        let (listen_client_urls, client_files) = match client_tls {
            true => (run_ca::https_urls(&config.listen_client_urls), self.authority.client().clone()),
            false => {
                warn!(
                    "etcd {version} cannot serve gRPC over TLS: its hidden client listener is plain loopback"
                );
                (config.listen_client_urls.clone(), TlsFiles::default())
            }
        };
        EtcdSpec {
            binary: config.bundle.etcd(version),
            version,
            data_dir: data_dir.to_path_buf(),
            name: config.name.clone(),
            listen_client_urls,
            listen_peer_urls,
            initial_advertise_peer_urls: config.initial_advertise_peer_urls.clone(),
            initial_cluster: config.initial_cluster.clone(),
            initial_cluster_state: None,
            enable_v2: storage == Storage::Etcd2 && can.enable_v2_flag,
            extra_args: self.authority.hidden_etcd_args(&config.extra_args, single_member, client_tls),
            client_tls: client_files,
            lone_member: single_member,
        }
    }

    /// Starts etcd `version` on `data_dir` and waits until it is healthy.
    pub async fn start_healthy(
        &self,
        version: Version,
        storage: Storage,
        data_dir: &Path,
    ) -> Result<EtcdProcess, StepError> {
        self.start_spec_healthy(self.etcd_spec(version, storage, data_dir)).await
    }

    /// Starts etcd as `spec` says and waits until it is healthy. A member of a cluster is healthy only
    /// with quorum: while it has none, it says every few seconds which peers do not answer.
    pub async fn start_spec_healthy(&self, spec: EtcdSpec) -> Result<EtcdProcess, StepError> {
        let mut etcd = EtcdProcess::start(spec).await?;
        let timeout = self.config.health_timeout;
        if self.config.is_cluster_member() {
            let deadline = Instant::now() + timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match etcd.wait_healthy(QUORUM_REPORT_EVERY.min(left)).await {
                    Ok(()) => break,
                    Err(EtcdError::Unhealthy { binary, last_lines, .. }) if left <= QUORUM_REPORT_EVERY => {
                        return Err(EtcdError::Unhealthy { binary, timeout, last_lines }.into());
                    }
                    Err(EtcdError::Unhealthy { .. }) => self.report_quorum(etcd.spec().version).await,
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            etcd.wait_healthy(timeout).await?;
        }
        info!(binary = %etcd.spec().binary.display(), pid = etcd.pid(), "hidden etcd is healthy");
        let binary = etcd.spec().binary.file_name().unwrap_or_default().to_string_lossy();
        faults::pause_async(&format!("{binary}-healthy")).await;
        Ok(etcd)
    }

    /// What every peer says of itself now, asked with this member's peer TLS files.
    pub async fn ask_peers(&self) -> PeerVersions {
        cluster::ask(&self.config.peers, &self.config.peer_tls).await
    }

    async fn report_quorum(&self, version: Version) {
        let answers = self.ask_peers().await;
        let silent = answers.silent();
        if silent.is_empty() {
            warn!("etcd {version} is not healthy yet; every peer answers: waiting for it to join them");
        } else {
            warn!(
                "etcd {version} is not healthy yet, waiting for quorum: peers not answering: {}",
                cluster::list(&silent)
            );
        }
    }

    /// In a cluster, after a member has moved to a new minor: waits until the cluster version its etcd
    /// serves reaches the lowest minor any member now runs (etcd's version monitor moves it a few seconds
    /// after the last member arrives), so that the data records it before the next step is checked
    /// against it. A peer that does not answer, or runs an older minor, ends the wait at once: the
    /// cluster stays where it is, and the next step's check says so.
    pub async fn settle_cluster_version(&self, etcd: &EtcdProcess) {
        if !self.config.is_cluster_member() {
            return;
        }
        let own = etcd.spec().version.minor();
        let mut said = false;
        let check = async || {
            let Some(lowest) = self.ask_peers().await.lowest_server_minor() else { return Ok(Ok(())) };
            let expected = lowest.min(own);
            let cluster = v3::versions(etcd.endpoint()).await?.cluster;
            if cluster.parse::<Version>().is_ok_and(|cluster| cluster.minor() >= expected) {
                return Ok(Ok(()));
            }
            if !said {
                info!(
                    "every member runs {expected} or later: waiting for etcd to move the cluster version from {cluster}"
                );
                said = true;
            }
            Ok(Err(cluster))
        };
        let timed_out = |stayed_at| StepError::ClusterVersionUnsettled { stayed_at };
        match wait_until(SETTLE_TIMEOUT, SETTLE_POLL, check, timed_out).await {
            Ok(()) => {}
            Err(e) => warn!("the cluster version did not settle within {SETTLE_TIMEOUT:?}: {e}"),
        }
    }

    pub async fn stop(&self, etcd: EtcdProcess) -> Result<(), StepError> {
        let pid = etcd.pid();
        etcd.stop(self.config.stop_grace).await?;
        info!(pid, "hidden etcd stopped");
        Ok(())
    }
}

/// What the whole keyspace of a running hidden etcd holds at `revision`
/// ([`LATEST`](crate::client::v3::LATEST): the newest): keys, values, and how keys share leases; and
/// the revision it was read at.
///
/// A step that keeps revisions reads its result at the revision it read its source at: etcd expires
/// leases while it runs, so the newest revision of either can lack keys whose time ran out in between,
/// while the two must agree at that one.
async fn keyspace(etcd: &EtcdProcess, revision: i64) -> Result<(Contents, i64), StepError> {
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    Ok(verify::contents(&client, revision, None).await?)
}

/// Swaps a rebuilt and verified member (`<work>/member`) in for the live one. The rebuilt member's inode
/// goes into the journal first, so a run that dies mid-swap can tell which member is live.
pub fn swap_in(ctx: &Context<'_>, journal: &mut Journal, work: &Path) -> Result<(), StepError> {
    let rebuilt = work.join("member");
    let rebuilt_path = rebuilt.as_path();
    let io = |action: &'static str| {
        move |source| StepError::Io { action, path: rebuilt_path.to_path_buf(), source }
    };
    // Durable before it is recorded and swapped in: a power cut must not leave a live member missing
    // files its etcd wrote (etcd syncs what it acknowledges, not always a new file's directory entry).
    durable::sync_tree(&rebuilt).map_err(io("syncing"))?;
    journal.rebuilt_inode = Some(swap::inode(&rebuilt).map_err(io("reading"))?);
    journal::write(ctx.data_dir, journal)?;
    swap::swap_member(ctx.data_dir.path(), work).map_err(io("swapping in"))?;
    info!(data_dir = %ctx.data_dir.path().display(), "rebuilt member swapped in");
    faults::pause("member-swapped-in");
    Ok(())
}

/// Asks `check` every `poll` until it answers `Ok(Ok(_))`, for the steps that wait on etcd: `Ok(Err(seen))`
/// is "not yet" (what was seen, for the message), `Err` fails at once. Past `timeout`, fails with what
/// `timed_out` makes of the last thing seen.
async fn wait_until<T, Seen>(
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> Result<Result<T, Seen>, StepError>,
    timed_out: impl FnOnce(Seen) -> StepError,
) -> Result<T, StepError> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().await? {
            Ok(done) => return Ok(done),
            Err(seen) if Instant::now() >= deadline => return Err(timed_out(seen)),
            Err(_) => tokio::time::sleep(poll).await,
        }
    }
}

/// Whether the cluster version must settle before a step ends: only when another step follows, which
/// is checked against it (a member's last step need not hold its etcd back from its clients for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    MoreSteps,
    Done,
}

/// Runs one step to completion. `journal` is the record written for it, which rebuilding steps update.
pub async fn run(ctx: &Context<'_>, step: Step, journal: &mut Journal, then: Then) -> Result<(), StepError> {
    match step {
        Step::InPlace { from, to } => in_place::run(ctx, from, to, then).await,
        Step::SealV2 { to, .. } => seal_v2::run(ctx, to).await,
        Step::ConvertToEtcd3 { at } => convert::run(ctx, at, journal).await,
        Step::Downgrade { from, source, to } => downgrade::run(ctx, from, source, to, journal).await,
        Step::OnlineDowngrade { from, source, to } => online_downgrade::run(ctx, from, source, to).await,
        Step::RollbackToEtcd2 { from, source, to } => rollback::run(ctx, from, source, to, journal).await,
    }
}

/// Brings the data dir back to a state that `version.txt` tells the truth about, after a run died in
/// the middle of `journal.step`. Returns whether the step turned out to be complete.
pub async fn recover(ctx: &Context<'_>, journal: &mut Journal) -> Result<bool, StepError> {
    match journal.step {
        // Starting etcd on the data may already have moved it to the new minor: finish the step.
        // What follows is planned afresh after recovery: settle as if more steps came.
        Step::InPlace { from, to } => in_place::run(ctx, from, to, Then::MoreSteps).await.map(|()| true),
        Step::SealV2 { to, .. } => seal_v2::run(ctx, to).await.map(|()| true),
        // The current minor opens the data in every state the step leaves: redo it.
        Step::OnlineDowngrade { from, source, to } => {
            online_downgrade::run(ctx, from, source, to).await.map(|()| true)
        }
        Step::ConvertToEtcd3 { .. } => convert::recover(ctx, journal).await,
        Step::Downgrade { .. } | Step::RollbackToEtcd2 { .. } => recover_swap(ctx, journal),
    }
}

/// A rebuilding step that died: if its rebuilt member was swapped in, the step is complete; otherwise the
/// old member stands (the caller discards the work dir either way).
fn recover_swap(ctx: &Context<'_>, journal: &Journal) -> Result<bool, StepError> {
    let work = ctx.data_dir.work_dir(journal.step.name());
    let swapped = match journal.rebuilt_inode {
        Some(inode) => swap::swapped_in(ctx.data_dir.path(), &work, inode)
            .map_err(|source| StepError::Io { action: "checking the swap in", path: work.clone(), source })?,
        None => false,
    };
    Ok(swapped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::KeyDigest;

    #[test]
    fn a_failed_proof_says_which_copy_differs_and_an_io_error_which_path() {
        let summary = |keys: &[&[u8]]| {
            let mut digest = KeyDigest::new();
            keys.iter().for_each(|key| digest.add(key, b"v"));
            digest.finish()
        };
        let contents =
            |keys: &[&[u8]]| Box::new(Contents { keys: summary(keys), lease_groups: summary(&[]) });
        let differs = StepError::Differs {
            proof: Proof::LogicalCopy,
            before: contents(&[b"a", b"b"]),
            after: contents(&[b"a"]),
        };
        let message = differs.to_string();
        assert!(message.starts_with("the logical copy differs: before 2 keys, digest "), "{message}");
        assert!(message.contains(", after 1 keys, digest "), "{message}");

        let source = std::io::Error::from(std::io::ErrorKind::NotFound);
        let io = StepError::Io { action: "removing", path: "/data/work/keys.jsonl".into(), source };
        assert!(io.to_string().starts_with("removing /data/work/keys.jsonl: "), "{io}");
    }
}
