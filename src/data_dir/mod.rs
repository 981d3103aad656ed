//! The data directory: its lock, its layout, and what it holds.
//!
//! Besides etcd's own `member/`, the data dir holds `version.txt` and the migrator's state dir
//! `.etcd-migrate/`: `journal.json` (the step under way), `work/<step>/` (where rebuilding steps
//! assemble a member) and `authority/` (the run's certificate authority, while it runs). This module is the one place that names these paths. Keeping them inside the data
//! dir keeps them on the same file system as `member/`, so swapping a rebuilt member in is one atomic
//! rename, and a crash can never leave a data dir that looks fresh while a step is unfinished.

pub mod journal;
pub mod version_file;

use std::cell::Cell;
use std::fs::{self, File, TryLockError};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::bbolt;
use crate::version::{EtcdState, Minor, Storage, Version};
use version_file::VersionFileError;

pub const STATE_DIR: &str = ".etcd-migrate";
const MEMBER_DIR: &str = "member";
const JOURNAL: &str = "journal.json";
const WORK_DIR: &str = "work";
const AUTHORITY_DIR: &str = "authority";

/// etcd 2.x data (a WAL and no v3 backend) was always written by the 2.2 line, as the original assumed.
pub const ETCD2_ERA: EtcdState = EtcdState::new(Version::new(2, 2, 1), Storage::Etcd2);

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("another etcd-migrate holds {path}: wait for it to finish (only one may run on a data dir)")]
    Locked { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    VersionFile(#[from] VersionFileError),
    #[error(
        "{dir} has no version.txt and {reason}: check the data and set --assume-current-version X.Y.Z/etcdN"
    )]
    Undecidable { dir: PathBuf, reason: String },
    #[error(
        "{file} says {said} but member/snap/db was last run by etcd {db}: the data was opened by a newer etcd; check it and fix version.txt"
    )]
    OpenedByNewer { file: PathBuf, said: EtcdState, db: Minor },
    #[error(
        "{file} says {said}, an etcd this migrator does not know (2.x or 3.x): fix the file (expected X.Y.Z/etcdN)"
    )]
    UnknownVersion { file: PathBuf, said: EtcdState },
    #[error("{file} says {said} but --assume-current-version says {assumed}: remove one of them")]
    Conflict { file: PathBuf, said: EtcdState, assumed: EtcdState },
    #[error(
        "{dir} holds {entries} but no member/ directory: this is not an etcd data dir; move them away or pick another --data-dir"
    )]
    NotEtcd { dir: PathBuf, entries: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// A data dir locked for this run. The lock is a `flock` on the directory itself, so taking it writes
/// nothing (a refused run leaves the data dir byte for byte as it was). It is released when this is
/// dropped, or at exec: the directory is opened close-on-exec, so the final etcd does not inherit it.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    /// Whether [`DataDir::changing`] was called: what a failed run's exit code says (2 if not, 1 if so).
    changed: Cell<bool>,
}

impl DataDir {
    /// Creates the data dir if missing (mode 0700, as etcd wants it) and takes its lock, failing at once
    /// if another migrator holds it.
    pub fn open_locked(path: &Path) -> Result<DataDir, DataDirError> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(io_error(path))?;
        let lock = File::open(path).map_err(io_error(path))?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir { path: path.to_path_buf(), _lock: lock, changed: Cell::new(false) }),
            Err(TryLockError::WouldBlock) => Err(DataDirError::Locked { path: path.to_path_buf() }),
            Err(TryLockError::Error(source)) => Err(DataDirError::Io { path: path.to_path_buf(), source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data dir, open for changes. From the first call on this run has changed something (a failure
    /// exits 1, not 2), whether or not the change it is called for then happens: every write to the data
    /// dir (`version.txt`, the journal, work dirs, a step) takes what this returns.
    pub fn changing(&self) -> Changing<'_> {
        self.changed.set(true);
        Changing { data_dir: self }
    }

    /// Whether [`DataDir::changing`] was called.
    pub fn has_changed(&self) -> bool {
        self.changed.get()
    }

    /// The work dir named `name` (a step's name, or `restore`), which may not exist.
    pub fn work_dir(&self, name: &str) -> PathBuf {
        state_dir(&self.path).join(WORK_DIR).join(name)
    }
}

/// The locked data dir, open for changes: made only by [`DataDir::changing`], which records that the
/// run has begun to change it, so that no write can happen on a run that would still exit 2.
#[derive(Debug, Clone, Copy)]
pub struct Changing<'a> {
    data_dir: &'a DataDir,
}

impl Deref for Changing<'_> {
    type Target = DataDir;

    fn deref(&self) -> &DataDir {
        self.data_dir
    }
}

impl Changing<'_> {
    /// A fresh, empty work dir for a rebuilding step, inside the state dir.
    pub fn fresh_work_dir(&self, name: &str) -> Result<PathBuf, DataDirError> {
        let dir = self.work_dir(name);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        }
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_error(&dir))?;
        Ok(dir)
    }

    /// Removes every work dir (after a step completed or was abandoned).
    pub fn clear_work_dirs(&self) -> Result<(), DataDirError> {
        let work = state_dir(&self.path).join(WORK_DIR);
        match fs::remove_dir_all(&work) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(&work)(e)),
            _ => Ok(()),
        }
    }
}

pub fn member_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(MEMBER_DIR)
}

pub fn db_path(data_dir: &Path) -> PathBuf {
    member_dir(data_dir).join("snap").join("db")
}

/// The migrator's own dir inside the data dir; backups leave it out.
pub fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR)
}

/// Where backups go when the data dir's parent is not on the data dir's own volume: inside the state
/// dir, which backups leave out, so a backup never holds the ones before it.
pub fn in_volume_backup_dir(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join("backups")
}

/// Where the run's certificate authority keeps its files (`run_ca`) while the run lasts: beside the work
/// dirs, not among them, since those are cleared after every step.
pub fn authority_dir(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join(AUTHORITY_DIR)
}

/// The journal of the step under way (read by the read-only commands too, so it takes a plain path).
pub fn journal_path(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join(JOURNAL)
}

/// What a data dir holds, read without etcd and without changing anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub version_file: Option<EtcdState>,
    pub has_member: bool,
    pub has_wal: bool,
    pub has_db: bool,
    /// The minor etcd last ran the data at, from `member/snap/db` (bucket `cluster`, `clusterVersion`).
    pub db_minor: Option<Minor>,
    /// Revisions in the v3 key bucket: zero means the v3 keyspace never held anything.
    pub v3_revisions: u64,
    /// Entries that are neither etcd's nor ours.
    pub foreign_entries: Vec<String>,
}

/// Reads the facts of a data dir. A bad version file is an error here, before anything else happens.
pub fn inspect(data_dir: &Path) -> Result<Facts, DataDirError> {
    let mut facts = Facts { version_file: version_file::read(data_dir)?, ..Facts::default() };
    let entries = match fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(facts),
        Err(e) => return Err(io_error(data_dir)(e)),
    };
    for entry in entries {
        let name = entry.map_err(io_error(data_dir))?.file_name().to_string_lossy().into_owned();
        let ours = [MEMBER_DIR, version_file::FILE_NAME, STATE_DIR].contains(&name.as_str())
            || name.starts_with(".version.txt");
        if !ours {
            facts.foreign_entries.push(name);
        }
    }
    facts.foreign_entries.sort();
    let member = member_dir(data_dir);
    facts.has_member = member.is_dir();
    facts.has_wal = member.join("wal").is_dir();
    let db = db_path(data_dir);
    facts.has_db = db.is_file();
    if facts.has_db {
        let unreadable =
            |e: bbolt::BboltError| DataDirError::Io { path: db.clone(), source: io::Error::other(e) };
        facts.db_minor = bbolt::cluster_version(&db).map_err(unreadable)?.map(Version::minor);
        facts.v3_revisions = bbolt::count_keys(&db, b"key").map_err(unreadable)?;
    }
    Ok(facts)
}

/// Where the data stands before planning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// No etcd data at all (and no unfinished step): start at the target.
    Fresh,
    At(EtcdState),
}

/// Decides the current state from the facts. Never guesses: when the version file is missing and the
/// data does not say, or when the two disagree in a way no crash explains, it is an error.
///
/// `unfinished` is the target of a step a previous run began and did not finish: etcd may have moved
/// the data to that minor already, so the db saying so is expected.
pub fn current(
    data_dir: &Path,
    facts: &Facts,
    assumed: Option<EtcdState>,
    unfinished: Option<EtcdState>,
) -> Result<Current, DataDirError> {
    if !facts.has_member {
        if facts.foreign_entries.is_empty() {
            return Ok(Current::Fresh);
        }
        let entries = facts.foreign_entries.join(", ");
        return Err(DataDirError::NotEtcd { dir: data_dir.to_path_buf(), entries });
    }
    let file = version_file::path(data_dir);
    let state = match (facts.version_file, assumed) {
        (Some(said), Some(assumed)) if said != assumed => {
            return Err(DataDirError::Conflict { file, said, assumed });
        }
        (Some(state), _) | (None, Some(state)) => state,
        (None, None) => return decide_without_version_file(data_dir, facts),
    };
    if !(2..=3).contains(&state.version.major) {
        return Err(DataDirError::UnknownVersion { file, said: state });
    }
    let allowed = unfinished.map_or(state.version.minor(), |u| u.version.minor().max(state.version.minor()));
    match facts.db_minor {
        Some(db) if db > allowed => Err(DataDirError::OpenedByNewer { file, said: state, db }),
        _ => Ok(Current::At(state)),
    }
}

fn decide_without_version_file(data_dir: &Path, facts: &Facts) -> Result<Current, DataDirError> {
    let undecidable =
        |reason: &str| DataDirError::Undecidable { dir: data_dir.to_path_buf(), reason: reason.into() };
    match (facts.has_db, facts.db_minor) {
        (false, _) if facts.has_wal => Ok(Current::At(ETCD2_ERA)),
        (false, _) => Err(undecidable("member/ holds neither a WAL nor a v3 backend")),
        (true, None) => Err(undecidable("member/snap/db records no cluster version")),
        (true, Some(_)) if facts.v3_revisions == 0 => Err(undecidable(
            "the v3 keyspace is empty, so the data may be in the v2 store (etcd2) or there is none",
        )),
        (true, Some(minor)) => {
            Ok(Current::At(EtcdState::new(Version::new(minor.major, minor.minor, 0), Storage::Etcd3)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: &str) -> EtcdState {
        s.parse().unwrap()
    }

    fn with_member() -> Facts {
        Facts { has_member: true, has_wal: true, has_db: true, ..Facts::default() }
    }

    fn decide(
        facts: &Facts,
        assumed: Option<&str>,
        unfinished: Option<&str>,
    ) -> Result<Current, DataDirError> {
        current(Path::new("/d"), facts, assumed.map(state), unfinished.map(state))
    }

    #[test]
    fn no_member_is_fresh_even_with_a_version_file() {
        assert_eq!(decide(&Facts::default(), None, None).unwrap(), Current::Fresh);
        let facts = Facts { version_file: Some(state("3.4.23/etcd3")), ..Facts::default() };
        assert_eq!(decide(&facts, None, None).unwrap(), Current::Fresh);
    }

    #[test]
    fn foreign_files_without_member_are_refused() {
        let facts = Facts { foreign_entries: vec!["notes.txt".into()], ..Facts::default() };
        let err = decide(&facts, None, None).unwrap_err();
        assert!(err.to_string().contains("notes.txt"), "{err}");
    }

    #[test]
    fn version_file_is_cross_checked_against_the_db() {
        let mut facts = Facts {
            version_file: Some(state("3.4.23/etcd3")),
            db_minor: Some(Minor::new(3, 4)),
            ..with_member()
        };
        assert_eq!(decide(&facts, None, None).unwrap(), Current::At(state("3.4.23/etcd3")));
        // A member ahead of its cluster (rolling upgrade) has a db that says less: fine.
        facts.db_minor = Some(Minor::new(3, 3));
        assert_eq!(decide(&facts, None, None).unwrap(), Current::At(state("3.4.23/etcd3")));
        facts.db_minor = Some(Minor::new(3, 5));
        assert!(matches!(decide(&facts, None, None).unwrap_err(), DataDirError::OpenedByNewer { .. }));
        // Unless a step to 3.5 was under way when the last run died.
        assert_eq!(decide(&facts, None, Some("3.5.16/etcd3")).unwrap(), Current::At(state("3.4.23/etcd3")));
    }

    #[test]
    fn missing_version_file_is_decided_from_the_data_or_refused() {
        let facts = Facts { db_minor: Some(Minor::new(3, 4)), v3_revisions: 12, ..with_member() };
        assert_eq!(decide(&facts, None, None).unwrap(), Current::At(state("3.4.0/etcd3")));
        let empty_v3 = Facts { v3_revisions: 0, ..facts.clone() };
        assert!(matches!(decide(&empty_v3, None, None).unwrap_err(), DataDirError::Undecidable { .. }));
        assert_eq!(
            decide(&empty_v3, Some("3.4.23/etcd2"), None).unwrap(),
            Current::At(state("3.4.23/etcd2"))
        );
        let no_cluster_version = Facts { db_minor: None, ..facts.clone() };
        assert!(
            decide(&no_cluster_version, None, None)
                .unwrap_err()
                .to_string()
                .contains("--assume-current-version")
        );
        let etcd2_era =
            Facts { has_db: false, ..Facts { has_member: true, has_wal: true, ..Facts::default() } };
        assert_eq!(decide(&etcd2_era, None, None).unwrap(), Current::At(ETCD2_ERA));
        let bare_member = Facts { has_member: true, ..Facts::default() };
        assert!(matches!(decide(&bare_member, None, None).unwrap_err(), DataDirError::Undecidable { .. }));
    }

    #[test]
    fn unknown_versions_are_refused() {
        let facts = Facts { version_file: Some(state("9.9.9/etcd3")), ..with_member() };
        assert!(matches!(decide(&facts, None, None).unwrap_err(), DataDirError::UnknownVersion { .. }));
    }

    #[test]
    fn assumed_version_must_agree_with_the_file() {
        let facts = Facts { version_file: Some(state("3.4.23/etcd3")), ..with_member() };
        assert!(matches!(
            decide(&facts, Some("3.3.25/etcd3"), None).unwrap_err(),
            DataDirError::Conflict { .. }
        ));
        assert_eq!(decide(&facts, Some("3.4.23/etcd3"), None).unwrap(), Current::At(state("3.4.23/etcd3")));
    }

    #[test]
    fn a_second_lock_is_refused() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let first = DataDir::open_locked(dir).unwrap();
        assert!(matches!(DataDir::open_locked(dir).unwrap_err(), DataDirError::Locked { .. }));
        drop(first);
        DataDir::open_locked(dir).unwrap();
    }
}
