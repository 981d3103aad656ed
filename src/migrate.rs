//! The run: lock the data dir, finish or undo what a dead run left, decide where the data stands, plan,
//! check everything the plan needs, then take each step with a backup first where the plan says and
//! `version.txt` rewritten after each, so a crash at any point resumes from the last completed step.

use std::path::PathBuf;
use std::time::Instant;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::backup::{self, BackupError};
use crate::cluster;
use crate::config::Config;
use crate::data_dir::journal::{self, Journal, JournalError};
use crate::data_dir::version_file::{self, VersionFileError};
use crate::data_dir::{self, Changing, Current, DataDir, DataDirError};
use crate::durable;
use crate::plan::{self, Plan, PlanError};
use crate::preflight::{self, PreflightError};
use crate::run_ca::{self, AuthorityError, RunAuthority};
use crate::steps::{self, Context, StepError, Then};
use crate::version::{EtcdState, Minor};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    VersionFile(#[from] VersionFileError),
    #[error("backup failed: {0}")]
    Backup(#[from] BackupError),
    #[error("step {step} failed: {source}")]
    Step { step: plan::Step, source: Box<StepError> },
    #[error("recovering the unfinished step {step} failed: {source}")]
    Recovery { step: plan::Step, source: Box<StepError> },
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error("interrupted by {signal} during {step}: the next run resumes it")]
    Interrupted { signal: &'static str, step: plan::Step },
}

/// How far a run got, which alone decides a failure's exit code (README): whatever failed, and in
/// whichever module, a run that had changed nothing exits 2 and one that had exits 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Nothing in the data dir was written yet: reading, planning, preflight, and the first backup
    /// (beside the data dir or in its state dir; when it fails it takes away its partial copy and the
    /// dirs it made).
    BeforeAnyChange,
    /// A recovery, a step, `version.txt` or the journal was written (or was being written).
    AfterChange,
}

impl Phase {
    pub fn exit_code(self) -> u8 {
        match self {
            Phase::BeforeAnyChange => 2,
            Phase::AfterChange => 1,
        }
    }

    /// Where a run on `data_dir` stands: changed once anything took it open for changes
    /// ([`DataDir::changing`], which every write to it needs).
    fn of(data_dir: &DataDir) -> Phase {
        if data_dir.has_changed() { Phase::AfterChange } else { Phase::BeforeAnyChange }
    }
}

/// A failed run. There is no conversion from `MigrateError`: a failure is made where its phase is known.
#[derive(Debug, thiserror::Error)]
#[error("{error}{aftermath}")]
pub struct Failure {
    phase: Phase,
    error: MigrateError,
    /// After a change, what the data dir says now, so the operator knows where it stands.
    aftermath: String,
}

impl Failure {
    /// A failure before the data dir was locked, or of the read-only commands: nothing changed.
    pub fn read_only(error: MigrateError) -> Failure {
        Failure { phase: Phase::BeforeAnyChange, error, aftermath: String::new() }
    }

    /// The failure `error` ends a run on `data_dir` with. After a change it says what `version.txt` says
    /// now (read back, not remembered), whether a step is left under way, and where the newest backup is.
    fn of_run(data_dir: &DataDir, backup: Option<PathBuf>, error: MigrateError) -> Failure {
        let phase = Phase::of(data_dir);
        let aftermath = match phase {
            Phase::BeforeAnyChange => String::new(),
            Phase::AfterChange => {
                let said = match version_file::read(data_dir.path()) {
                    Ok(Some(state)) => format!("version.txt says {state}"),
                    Ok(None) => "there is no version.txt".to_string(),
                    Err(e) => e.to_string(),
                };
                let unfinished = match journal::read(data_dir.path()) {
                    Ok(Some(journal)) => format!("; the next run finishes or undoes {}", journal.step),
                    Ok(None) | Err(_) => String::new(),
                };
                let backup = backup.map(|b| format!("; backup at {}", b.display())).unwrap_or_default();
                format!("; {said}{unfinished}{backup}")
            }
        };
        Failure { phase, error, aftermath }
    }

    pub fn exit_code(&self) -> u8 {
        self.phase.exit_code()
    }
}

/// Where a run left the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    /// Whether anything had to change (the exit code if exec'ing etcd then fails).
    pub phase: Phase,
    /// What `version.txt` names: the target, or with `--migrate-only` the version asked for when the
    /// data is at it already (a patch not bundled: nothing to do, nothing to exec).
    pub at: EtcdState,
}

/// Migrates the data dir to the configured target; see [`Reached`].
pub async fn migrate(config: &Config) -> Result<Reached, Failure> {
    // With --migrate-only nothing is exec'd; the steps' own tools are checked with the plan.
    if !config.migrate_only {
        preflight::check_target_binary(config).map_err(|e| Failure::read_only(e.into()))?;
    }
    let data_dir = DataDir::open_locked(&config.data_dir).map_err(|e| Failure::read_only(e.into()))?;
    let mut backup = None;
    match run(config, &data_dir, &mut backup).await {
        Ok(at) => Ok(Reached { phase: Phase::of(&data_dir), at }),
        Err(error) => Err(Failure::of_run(&data_dir, backup, error)),
    }
}

/// The run on the locked `data_dir`; `backup` is the newest backup it made. Returns the state reached.
async fn run(
    config: &Config,
    data_dir: &DataDir,
    backup: &mut Option<PathBuf>,
) -> Result<EtcdState, MigrateError> {
    let target = config.target();
    // Made when a hidden etcd is first needed (a run with nothing to do makes none), dropped (its files
    // taken away) when the run returns, however it ends.
    let mut authority = None;
    if let Some(mut unfinished) = journal::read(data_dir.path())? {
        let authority = authority.insert(make_authority(config, data_dir)?);
        resume(&Context { config, data_dir: data_dir.changing(), authority }, &mut unfinished).await?;
    }
    let facts = data_dir::inspect(data_dir.path())?;
    let current = match data_dir::current(data_dir.path(), &facts, config.assume_current, None)? {
        Current::Fresh => {
            info!(target = %target, "no etcd data yet: starting at the target");
            version_file::write(data_dir.changing(), target)?;
            return Ok(target);
        }
        Current::At(current) => current,
    };
    let asked = config.target.map_or(target, |t| t.asked);
    if facts.version_file.is_none() {
        warn!(current = %current, "no version.txt: taking the data to be {current}");
    }
    // With --migrate-only, data at the version asked needs nothing, bundled or not: nothing is exec'd.
    let plan = if config.migrate_only && current == asked {
        None
    } else {
        if asked != target {
            warn!(asked = %asked, using = %target, "target patch not bundled: using the newest bundled patch of its minor");
        }
        Some(match plan_for(config, current, facts.db_minor) {
            // Ahead of the cluster its data last saw: its peers may have moved on since (it was stopped).
            Err(PlanError::AheadOfCluster { .. }) => {
                plan_for(config, current, facts.db_minor.max(peers_lowest_minor(config).await))?
            }
            planned => planned?,
        })
    };
    let Some(plan) = plan.filter(|plan| !plan.steps.is_empty()) else {
        if facts.version_file.is_none() {
            version_file::write(data_dir.changing(), current)?;
        }
        return Ok(current);
    };
    let checking = Instant::now();
    preflight::check(config, &plan)?;
    let preflight_ms = checking.elapsed().as_millis() as u64;
    info!(from = %current, to = %target, steps = plan.steps.len(), preflight_ms, "migrating");
    run_steps(config, data_dir, &plan, backup, authority).await?;
    Ok(target)
}

/// The run's certificate authority, in the data dir's state dir. Not a change to the data dir: it is
/// taken away when the run ends, and a failure to make it takes away what it made.
fn make_authority(config: &Config, data_dir: &DataDir) -> Result<RunAuthority, AuthorityError> {
    let hosts = run_ca::url_hosts(&format!("{},{}", config.listen_client_urls, config.listen_peer_urls));
    let path = data_dir.path();
    RunAuthority::create(&data_dir::state_dir(path), &data_dir::authority_dir(path), &hosts)
}

/// The plan from `current` to the target, with the extra rules for a member of a cluster running at
/// `cluster` (see [`plan::check_member_of_cluster`]). The one way both `migrate` and the read-only
/// `plan` command plan.
pub fn plan_for(config: &Config, current: EtcdState, cluster: Option<Minor>) -> Result<Plan, PlanError> {
    let plan = plan::plan(current, config.target(), config.bundle.versions(), &config.storage_media_type)?;
    if config.is_cluster_member() {
        plan::check_member_of_cluster(&plan, cluster)?;
    }
    Ok(plan)
}

/// The lowest minor the peers run, when every one of them answers: a member whose data last saw an
/// older cluster (it was stopped while its peers moved on) may catch up to them. Asked only then, so a
/// member's ordinary start waits for no peer. Says what each peer answered.
async fn peers_lowest_minor(config: &Config) -> Option<Minor> {
    let answers = cluster::ask(&config.peers, &config.peer_tls).await;
    let said: Vec<String> = answers
        .0
        .iter()
        .map(|(peer, answer)| match answer {
            Some(versions) => format!("{peer} runs {} (cluster {})", versions.server, versions.cluster),
            None => format!("{peer} does not answer"),
        })
        .collect();
    info!("peers: {}", said.join("; "));
    answers.lowest_server_minor()
}

async fn resume(ctx: &Context<'_>, unfinished: &mut Journal) -> Result<(), MigrateError> {
    let step = unfinished.step;
    let said = version_file::read(ctx.data_dir.path())?;
    warn!(step = %step, "the last run died during {step}; recovering");
    // A step whose version.txt was already written only lost its journal clean-up.
    let complete = said == Some(step.after())
        || steps::recover(ctx, unfinished)
            .await
            .map_err(|source| MigrateError::Recovery { step, source: Box::new(source) })?;
    if complete && said != Some(step.after()) {
        record_done(ctx.data_dir, step.after())?;
    }
    ctx.data_dir.clear_work_dirs()?;
    journal::clear(ctx.data_dir)?;
    info!(step = %step, complete, "recovered");
    Ok(())
}

async fn run_steps(
    config: &Config,
    data_dir: &DataDir,
    plan: &Plan,
    backup: &mut Option<PathBuf>,
    mut authority: Option<RunAuthority>,
) -> Result<(), MigrateError> {
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    for (index, &step) in plan.steps.iter().enumerate() {
        let at = step.before();
        if index > 0 && config.is_cluster_member() {
            // The previous step may have moved the cluster (or not): its data says where it stands now.
            plan::check_step_in_cluster(&step, data_dir::inspect(data_dir.path())?.db_minor)?;
        }
        if plan.backup_before(index) {
            let label = at.to_string().replace('/', "-");
            let made = backup::create(data_dir.path(), &label, &config.backup)?;
            info!(path = %made.path.display(), bytes = made.bytes, files = made.files, "backup verified");
            *backup = Some(made.path);
        }
        if authority.is_none() {
            authority = Some(make_authority(config, data_dir)?);
        }
        let authority = authority.as_ref().expect("made above");
        let mut journal = Journal { step, backup: backup.clone(), rebuilt_inode: None };
        let ctx = Context { config, data_dir: data_dir.changing(), authority };
        journal::write(ctx.data_dir, &journal)?;
        info!(step = index + 1, of = plan.steps.len(), from = %at, to = %step.after(), "{} starting", step.name());
        let started = Instant::now();
        let then = if index + 1 < plan.steps.len() { Then::MoreSteps } else { Then::Done };
        let outcome = tokio::select! {
            outcome = steps::run(&ctx, step, &mut journal, then) => outcome,
            _ = terminate.recv() => return Err(MigrateError::Interrupted { signal: "SIGTERM", step }),
            _ = interrupt.recv() => return Err(MigrateError::Interrupted { signal: "SIGINT", step }),
        };
        outcome.map_err(|source| MigrateError::Step { step, source: Box::new(source) })?;
        record_done(ctx.data_dir, step.after())?;
        journal::clear(ctx.data_dir)?;
        ctx.data_dir.clear_work_dirs()?;
        info!(
            step = index + 1,
            from = %at,
            to = %step.after(),
            seconds = format_args!("{:.2}", started.elapsed().as_secs_f64()),
            "{} done",
            step.name()
        );
    }
    Ok(())
}

/// Records a step done: `version.txt` names `state`, once everything the step's etcd wrote in `member/`
/// is durable. etcd syncs what it acknowledges but not the directory entries of the files and
/// directories it creates (a fresh 3.3.25, 3.4.23 or 3.5.16 member loses them all at a power cut), so a
/// power cut could otherwise leave version.txt naming a state the data is not in.
fn record_done(data_dir: Changing<'_>, state: EtcdState) -> Result<(), MigrateError> {
    let member = data_dir::member_dir(data_dir.path());
    durable::sync_tree(&member).map_err(|source| DataDirError::Io { path: member, source })?;
    Ok(version_file::write(data_dir, state)?)
}
