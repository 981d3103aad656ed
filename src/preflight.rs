//! Preflight: everything a plan needs is checked before anything changes, so a bad bundle, a read-only
//! or full disk, or a busy port is a one-line error with the data untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backup;
use crate::bundle::Bundle;
use crate::config::Config;
use crate::data_dir;
use crate::etcd_process::{self, EtcdError};
use crate::plan::{Plan, Step};
use crate::release::{self, Tool, VersionQuery};
use crate::run_ca;
use crate::version::Version;

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{path} is missing or not executable: bundle etcd {version} in the bin dir")]
    MissingBinary { path: PathBuf, version: Version },
    #[error("{path} {command} does not report {version}: the bin dir holds the wrong binary")]
    WrongBinary { path: PathBuf, command: String, version: Version },
    #[error("{path} is not writable: {message}")]
    NotWritable { path: PathBuf, message: String },
    #[error(
        "{path} has {free} bytes free but the plan's backups need {needed}: free space or set --backup-dir"
    )]
    NoSpace { path: PathBuf, free: u64, needed: u64 },
    #[error(
        "{path} has {free} bytes free, too few for the run's certificate authority ({needed} bytes): free space on the data dir's volume"
    )]
    NoRoomForAuthority { path: PathBuf, free: u64, needed: u64 },
    #[error(transparent)]
    Port(#[from] EtcdError),
    #[error("cannot size {path}: {message}")]
    Size { path: PathBuf, message: String },
}

pub fn check(config: &Config, plan: &Plan) -> Result<(), PreflightError> {
    let mut tools: Vec<(Tool, Version)> = plan.steps.iter().flat_map(Step::tools).collect();
    tools.extend([(Tool::Etcd, plan.target.version), (Tool::Etcdctl, plan.target.version)]);
    tools.sort_by_key(|&(tool, version)| (version, tool.name()));
    tools.dedup();
    // Each check starts a Go binary (tens of milliseconds); run them all at once.
    std::thread::scope(|scope| {
        let checks: Vec<_> = tools
            .iter()
            .map(|&(tool, version)| {
                let path = config.bundle.binary(tool, version);
                scope.spawn(move || check_binary(&path, &release::version_query(tool, version)))
            })
            .collect();
        checks.into_iter().try_for_each(|check| check.join().expect("a binary check does not panic"))
    })?;
    check_writable(&config.data_dir)?;
    let urls = config.listen_client_urls.split(',').chain(config.listen_peer_urls.split(','));
    for url in urls {
        etcd_process::ensure_port_free(url.trim())?;
    }
    let backup_dir = &config.backup.backup_dir;
    check_writable(backup_dir)?;
    let backups = (0..plan.steps.len()).filter(|&i| plan.backup_before(i)).count() as u64;
    let size = backup::size_of(&config.data_dir)
        .map_err(|e| PreflightError::Size { path: config.data_dir.clone(), message: e.to_string() })?;
    check_space(backup_dir, size * backups)?;
    // A rebuilding step holds a second copy of the data in the data dir's work area.
    let rebuilds = plan.steps.iter().filter(|s| s.rebuilds()).count().min(1) as u64;
    check_space(&config.data_dir, size * rebuilds)?;
    // Every hidden etcd is secured by the run's authority, kept in the data dir's state dir.
    let authority = data_dir::authority_dir(&config.data_dir);
    let free = free_bytes(&authority)?;
    if free < run_ca::BYTES {
        return Err(PreflightError::NoRoomForAuthority { path: authority, free, needed: run_ca::BYTES });
    }
    check_writable(&authority)
}

/// The one check every run makes, even one with nothing to do: the etcd it will exec is there. A stat,
/// not a run, to keep the no-op path fast.
pub fn check_target_binary(config: &Config) -> Result<(), PreflightError> {
    let version = config.target().version;
    let path = config.bundle.etcd(version);
    if Bundle::is_executable(&path) { Ok(()) } else { Err(PreflightError::MissingBinary { path, version }) }
}

/// Runs the binary's version query (which needs no server) and looks for the line naming its version.
fn check_binary(path: &Path, query: &VersionQuery) -> Result<(), PreflightError> {
    let missing = || PreflightError::MissingBinary { path: path.to_path_buf(), version: query.version };
    let output = Command::new(path)
        .args(query.args)
        .envs(query.env.iter().copied())
        .output()
        .map_err(|_| missing())?;
    if query.reported_by(&String::from_utf8_lossy(&output.stdout)) {
        Ok(())
    } else {
        Err(PreflightError::WrongBinary {
            path: path.to_path_buf(),
            command: query.args.join(" "),
            version: query.version,
        })
    }
}

/// Preflight leaves nothing behind (a refusal exits 2, the data dir as it was): a dir not made yet (a
/// backup dir, which `backup::create` makes) is checked at its nearest existing ancestor, where it will
/// be made, and named as itself.
fn check_writable(dir: &Path) -> Result<(), PreflightError> {
    let probe = existing_ancestor(dir).join(format!(".etcd-migrate-write-probe-{}", std::process::id()));
    // Removed even when the write failed: a full disk can take the new file but not its bytes, and a run
    // that stops here exits 2, promising the data dir is as it was.
    let written = std::fs::write(&probe, b"probe");
    let removed = std::fs::remove_file(&probe);
    written
        .and(removed)
        .map_err(|e| PreflightError::NotWritable { path: dir.to_path_buf(), message: e.to_string() })
}

/// The bytes free where `dir` is (or will be made).
fn free_bytes(dir: &Path) -> Result<u64, PreflightError> {
    let stat = nix::sys::statvfs::statvfs(existing_ancestor(dir))
        .map_err(|e| PreflightError::NotWritable { path: dir.to_path_buf(), message: e.to_string() })?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// `path`, or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("."))
}

fn check_space(dir: &Path, needed: u64) -> Result<(), PreflightError> {
    let free = free_bytes(dir)?;
    if free < needed {
        Err(PreflightError::NoSpace { path: dir.to_path_buf(), free, needed })
    } else {
        Ok(())
    }
}
