//! The read-only commands: `plan` (the steps a migration would take), `status` (what is known of the
//! data dir) and `releases` (what the bin dir holds). None takes the lock or writes anything.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use crate::backup;
use crate::bbolt;
use crate::bundle::Bundle;
use crate::cluster;
use crate::config::{Config, Format};
use crate::data_dir::journal;
use crate::data_dir::{self, Current, Facts};
use crate::migrate::{self, MigrateError};
use crate::plan::Plan;
use crate::release;
use crate::version::Version;

/// Renders the plan from where the data stands to the target.
pub fn plan(config: &Config) -> Result<String, MigrateError> {
    let facts = data_dir::inspect(&config.data_dir)?;
    let unfinished = journal::read(&config.data_dir)?;
    let target = config.target();
    let current = match data_dir::current(
        &config.data_dir,
        &facts,
        config.assume_current,
        unfinished.as_ref().map(|j| j.step.after()),
    )? {
        Current::Fresh => None,
        Current::At(state) => Some(state),
    };
    let plan = current.map(|c| migrate::plan_for(config, c, facts.db_minor)).transpose()?;
    let unfinished = unfinished.map(|j| j.step.to_string());
    Ok(match config.output {
        Format::Json => {
            let steps: Vec<_> = plan.as_ref().map_or(Vec::new(), |p| {
                p.steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| json!({"step": s, "backup_first": p.backup_before(i)}))
                    .collect()
            });
            let value = json!({
                "data_dir": config.data_dir,
                "current": current.map(|c| c.to_string()),
                "target": target.to_string(),
                "unfinished_step": unfinished,
                "steps": steps,
            });
            format!("{value:#}\n")
        }
        Format::Text => render_plan_text(&config.data_dir, plan.as_ref(), unfinished.as_deref(), target),
    })
}

fn render_plan_text(
    dir: &Path,
    plan: Option<&Plan>,
    unfinished: Option<&str>,
    target: crate::version::EtcdState,
) -> String {
    let mut out = format!("data dir: {}\n", dir.display());
    if let Some(step) = unfinished {
        out += &format!("unfinished step from a previous run: {step} (finished or undone first)\n");
    }
    let Some(plan) = plan else {
        return out + &format!("no etcd data: version.txt will say {target}, no steps\n");
    };
    out += &format!("current: {}  target: {}\n", plan.current, plan.target);
    if plan.steps.is_empty() {
        return out + "already at target: no steps, etcd starts directly\n";
    }
    // States are as wide as their versions (`3.4.13-rc.0/etcd3`): the columns are as wide as the widest.
    let states = plan.steps.iter().flat_map(|step| [step.before().to_string(), step.after().to_string()]);
    let width = states.map(|state| state.len()).max().unwrap_or(0).max(14);
    out += &format!("{:>3}  {:<18} {:<width$} {:<width$} {}\n", "#", "step", "from", "to", "backup first");
    for (i, step) in plan.steps.iter().enumerate() {
        let backup = if plan.backup_before(i) { "yes" } else { "" };
        out += &format!(
            "{:>3}  {:<18} {:<width$} {:<width$} {}\n",
            i + 1,
            step.name(),
            step.before().to_string(),
            step.after().to_string(),
            backup
        );
    }
    out
}

#[derive(Serialize)]
struct Status {
    data_dir: String,
    version_file: Option<String>,
    has_member: bool,
    db_cluster_version: Option<String>,
    v3_revisions: u64,
    unfinished_step: Option<String>,
    backup_dir: String,
    backups: Vec<String>,
    /// The downgrade job the data records (etcd's online downgrade, 3.6 on), if one is on.
    downgrade_job: Option<String>,
    /// A member of a cluster: what each peer says of itself now (where a roll stands).
    peers: Vec<PeerStatus>,
}

#[derive(Serialize)]
struct PeerStatus {
    name: String,
    url: String,
    /// `None`: it did not answer.
    server_version: Option<String>,
    cluster_version: Option<String>,
}

/// What each peer says of itself, for a member of a cluster (none for a single member).
fn peer_statuses(config: &Config) -> Vec<PeerStatus> {
    if !config.is_cluster_member() {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return Vec::new();
    };
    let answers = runtime.block_on(cluster::ask(&config.peers, &config.peer_tls));
    answers
        .0
        .into_iter()
        .map(|(peer, answer)| PeerStatus {
            name: peer.name,
            url: peer.url,
            server_version: answer.as_ref().map(|a| a.server.clone()),
            cluster_version: answer.map(|a| a.cluster),
        })
        .collect()
}

/// Renders what is known of the data dir.
pub fn status(config: &Config) -> Result<String, MigrateError> {
    let facts: Facts = data_dir::inspect(&config.data_dir)?;
    let unfinished = journal::read(&config.data_dir)?.map(|j| j.step.to_string());
    let backups = backup::list(&config.data_dir, &config.backup)?;
    let status = Status {
        data_dir: config.data_dir.display().to_string(),
        version_file: facts.version_file.map(|v| v.to_string()),
        has_member: facts.has_member,
        db_cluster_version: facts.db_minor.map(|m| m.to_string()),
        v3_revisions: facts.v3_revisions,
        unfinished_step: unfinished,
        backup_dir: config.backup.backup_dir.display().to_string(),
        backups: backups.iter().map(|b| b.display().to_string()).collect(),
        downgrade_job: if facts.has_db {
            bbolt::downgrade_target(&data_dir::db_path(&config.data_dir))
                .ok()
                .flatten()
                .map(|v| v.to_string())
        } else {
            None
        },
        peers: peer_statuses(config),
    };
    Ok(match config.output {
        Format::Json => format!("{:#}\n", serde_json::to_value(&status).expect("status serializes")),
        Format::Text => {
            let or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
            let mut out = format!("data dir:        {}\n", status.data_dir);
            out += &format!("version.txt:     {}\n", or_none(&status.version_file));
            out += &format!("member/:         {}\n", if status.has_member { "present" } else { "absent" });
            out += &format!(
                "db says:         etcd {} ({} v3 revisions)\n",
                or_none(&status.db_cluster_version),
                status.v3_revisions
            );
            out += &format!("unfinished step: {}\n", or_none(&status.unfinished_step));
            out += &format!("downgrade job:   {}\n", or_none(&status.downgrade_job));
            for peer in &status.peers {
                let said = match (&peer.server_version, &peer.cluster_version) {
                    (Some(server), Some(cluster)) => format!("etcd {server}, cluster {cluster}"),
                    _ => "does not answer".to_string(),
                };
                out += &format!("peer {} ({}): {said}\n", peer.name, peer.url);
            }
            out += &format!("backups:         {} in {}\n", status.backups.len(), status.backup_dir);
            for backup in &status.backups {
                out += &format!("  {backup}\n");
            }
            out
        }
    })
}

/// One bundled release, as `releases` reports it.
#[derive(Debug, Serialize)]
struct BundledRelease {
    version: String,
    present: bool,
    tools: Vec<&'static str>,
    missing: Vec<&'static str>,
}

/// Lists `versions` (else every bundled release) with the tools each ships and which of them the bin
/// dir lacks; `true` when every release listed is present. The one answer to "is this release here"
/// for the scripts (`image/fetch-etcd.sh`, `tests/run.sh`) as for an operator.
pub fn releases(bundle: &Bundle, versions: &[Version], output: Format) -> (String, bool) {
    let versions = if versions.is_empty() { bundle.versions() } else { versions };
    let listed: Vec<BundledRelease> = versions
        .iter()
        .map(|&version| {
            let missing: Vec<&str> = bundle.missing_tools(version).iter().map(|tool| tool.name()).collect();
            BundledRelease {
                version: version.to_string(),
                present: missing.is_empty(),
                tools: release::tools(version).iter().map(|tool| tool.name()).collect(),
                missing,
            }
        })
        .collect();
    let all_present = listed.iter().all(|release| release.present);
    let text = match output {
        Format::Json => format!("{:#}\n", serde_json::to_value(&listed).expect("releases serialize")),
        Format::Text => listed
            .iter()
            .map(|release| match release.present {
                true => format!("{} present: {}\n", release.version, release.tools.join(" ")),
                false => format!("{} missing: {}\n", release.version, release.missing.join(" ")),
            })
            .collect(),
    };
    (text, all_present)
}
