//! Full, verified backups of the data directory, taken before anything that cannot be undone.
//!
//! A backup is a directory `<data-dir-name>-backup-<version>-<storage>-<UTC time>` (mode 0700), beside
//! the data dir or inside its volume (`policy`), holding a copy of the data dir (but the migrator's own
//! state dir) and a manifest with the copy's digest, the digest of the very bytes copied (`copier`).
//! The copy is written to `<name>.partial`, fsynced, and only then renamed into place, so a backup that
//! exists is a complete one. A restore re-reads the backup and checks it against that digest first. The
//! newest `--backup-retention` backups are kept; the old image's defect of deleting the backup it had
//! just made cannot happen, because retention never touches the newest.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::copier::{self, CopyError, TreeSummary};
use crate::data_dir::{self, Changing, DataDirError, STATE_DIR, member_dir};
use crate::durable::{self, sync_dir};
use crate::mounts;
use crate::swap;

const MANIFEST: &str = "BACKUP-MANIFEST.json";
const PARTIAL: &str = ".partial";

#[derive(Debug, Clone)]
pub struct BackupPolicy {
    /// The directory that holds the backups.
    pub backup_dir: PathBuf,
    /// How many backups of this data dir to keep, at least 1.
    pub retention: usize,
}

/// Where backups go: `--backup-dir` when given; else beside the data dir, where a pod that mounts the
/// data dir's parent keeps them; else, when that parent is not on the data dir's own mount (a pod that
/// mounts the data dir itself, as kubeadm's does), inside the data dir's volume, since anything outside
/// it dies with the container.
pub fn policy(data_dir: &Path, backup_dir: Option<PathBuf>, retention: usize) -> BackupPolicy {
    let backup_dir = backup_dir.unwrap_or_else(|| {
        let beside = match data_dir.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if mounts::same_mount(&beside, data_dir) { beside } else { data_dir::in_volume_backup_dir(data_dir) }
    });
    BackupPolicy { backup_dir, retention }
}

/// A complete, verified backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    #[serde(with = "crate::path_serde")]
    pub path: PathBuf,
    pub label: String,
    #[serde(with = "crate::path_serde")]
    pub source: PathBuf,
    pub created_unix: u64,
    pub files: u64,
    pub bytes: u64,
    /// XXH3-128 over every file's relative path, size and content hash, in path order.
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("backup {path} does not match its source ({what}): the copy is not trustworthy")]
    Mismatch { path: PathBuf, what: String },
    #[error("{path} is not a complete backup: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

impl From<CopyError> for BackupError {
    fn from(error: CopyError) -> BackupError {
        match error {
            CopyError::Io { path, source } => BackupError::Io { path, source },
            CopyError::ChangedSize { ref copy, .. } => {
                BackupError::Mismatch { path: copy.clone(), what: error.to_string() }
            }
        }
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

fn data_dir_name(data_dir: &Path) -> String {
    data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into())
}

/// Copies the data dir into a new verified backup, then applies retention.
pub fn create(data_dir: &Path, label: &str, policy: &BackupPolicy) -> Result<Backup, BackupError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = format!("{}-backup-{label}-{}", data_dir_name(data_dir), utc_stamp(now.as_secs()));
    let mut path = policy.backup_dir.join(&base);
    for n in 1.. {
        if !path.exists() && !partial(&path).exists() {
            break;
        }
        path = policy.backup_dir.join(format!("{base}-{n}"));
    }
    // The backup dir may be new: its entries must survive a power cut too, or the journal would name a
    // backup that is gone. A failed backup takes away what it made (a first one exits 2, "nothing
    // changed", and the in-volume backup dir is inside the data dir).
    let made = durable::create_dirs(&policy.backup_dir).map_err(io_error(&policy.backup_dir))?;
    let staging = partial(&path);
    let copied = copier::copy_tree(data_dir, &staging, &[STATE_DIR], "backing up").map_err(BackupError::from);
    let result = copied.and_then(|TreeSummary { files, bytes, digest }| {
        if crate::faults::fail("backup-copy") {
            return Err(io_error(&staging)(io::Error::other("fault injected")));
        }
        let backup = Backup {
            path: path.clone(),
            label: label.to_string(),
            source: data_dir.to_path_buf(),
            created_unix: now.as_secs(),
            files,
            bytes,
            digest,
        };
        let manifest = staging.join(MANIFEST);
        durable::replace(&manifest, &serde_json::to_vec_pretty(&backup).expect("a manifest serializes"))
            .map_err(io_error(&manifest))?;
        crate::faults::pause("backup");
        fs::rename(&staging, &path).map_err(io_error(&path))?;
        sync_dir(&policy.backup_dir).map_err(io_error(&policy.backup_dir))?;
        Ok(backup)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
        durable::remove_made_dirs(&made);
    }
    let backup = result?;
    prune(data_dir, policy, &backup.path)?;
    Ok(backup)
}

fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(PARTIAL);
    PathBuf::from(name)
}

/// Complete backups of this data dir, newest first.
pub fn list(data_dir: &Path, policy: &BackupPolicy) -> Result<Vec<PathBuf>, BackupError> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    let entries = match fs::read_dir(&policy.backup_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(&policy.backup_dir)(e)),
    };
    let prefix = format!("{}-backup-", data_dir_name(data_dir));
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix)
            && !name.ends_with(PARTIAL)
            && let Ok(backup) = read_manifest(&entry.path())
        {
            found.push((backup.created_unix, entry.path()));
        }
    }
    found.sort_by(|a, b| b.cmp(a));
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Removes backups beyond retention (never `keep`, the one just made) and partial copies a crash left.
fn prune(data_dir: &Path, policy: &BackupPolicy, keep: &Path) -> Result<(), BackupError> {
    let prefix = format!("{}-backup-", data_dir_name(data_dir));
    for entry in fs::read_dir(&policy.backup_dir).map_err(io_error(&policy.backup_dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(PARTIAL) {
            fs::remove_dir_all(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    for old in
        list(data_dir, policy)?.into_iter().filter(|p| p != keep).skip(policy.retention.saturating_sub(1))
    {
        fs::remove_dir_all(&old).map_err(io_error(&old))?;
    }
    Ok(())
}

fn read_manifest(path: &Path) -> Result<Backup, BackupError> {
    let manifest = path.join(MANIFEST);
    let bytes = fs::read(&manifest).map_err(io_error(&manifest))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Invalid { path: path.to_path_buf(), reason: e.to_string() })
}

/// Re-reads a backup and checks it against its manifest.
pub fn verify(path: &Path) -> Result<Backup, BackupError> {
    let backup = read_manifest(path)?;
    let TreeSummary { files, bytes, digest } = copier::digest_tree(path, &[STATE_DIR, MANIFEST])?;
    if (files, bytes, digest.as_str()) != (backup.files, backup.bytes, backup.digest.as_str()) {
        return Err(BackupError::Mismatch {
            path: path.to_path_buf(),
            what: format!("{files} files, {bytes} bytes, digest {digest}"),
        });
    }
    Ok(backup)
}

/// Bytes one backup of the data dir takes.
pub fn size_of(data_dir: &Path) -> Result<u64, BackupError> {
    Ok(copier::size_of(data_dir, &[STATE_DIR])?)
}

/// Replaces `member/` in the data dir with the backup's, atomically: the backup's member is verified,
/// copied beside the live one, and swapped in; the old member is removed only after that.
pub fn restore(backup: &Path, data_dir: Changing<'_>) -> Result<(), BackupError> {
    verify(backup)?;
    let work = data_dir.fresh_work_dir("restore")?;
    copier::copy_tree(&backup.join("member"), &work.join("member"), &[], "restoring the backup")?;
    let (data_dir, live) = (data_dir.path(), member_dir(data_dir.path()));
    if live.exists() {
        swap::swap_member(data_dir, &work).map_err(io_error(data_dir))?;
    } else {
        fs::rename(work.join("member"), &live).map_err(io_error(data_dir))?;
        sync_dir(data_dir).map_err(io_error(data_dir))?;
    }
    fs::remove_dir_all(&work).map_err(io_error(&work))
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (civil-from-days, proleptic Gregorian).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn backups_go_beside_the_data_dir_on_its_mount_else_inside_its_volume() {
        let temp = tempfile::tempdir().unwrap();
        let data = temp.path().join("data");
        assert_eq!(policy(&data, None, 3).backup_dir, temp.path());
        assert_eq!(policy(&data, Some(PathBuf::from("/b")), 3).backup_dir, Path::new("/b"));
        // /dev/shm is a tmpfs of its own, its parent /dev another mount: a data dir mounted by itself.
        let mounted_alone = Path::new("/dev/shm");
        assert_eq!(policy(mounted_alone, None, 3).backup_dir, Path::new("/dev/shm/.etcd-migrate/backups"));
    }

    fn sample_data_dir(root: &Path) -> PathBuf {
        let data = root.join("data");
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::create_dir_all(data.join("member/wal")).unwrap();
        fs::create_dir_all(data.join(".etcd-migrate/work")).unwrap();
        fs::write(data.join("member/snap/db"), vec![7u8; 3 << 20]).unwrap();
        fs::write(data.join("member/wal/0.wal"), b"wal").unwrap();
        fs::write(data.join("member/empty"), b"").unwrap();
        fs::write(data.join("version.txt"), b"3.4.23/etcd3\n").unwrap();
        fs::write(data.join(".etcd-migrate/journal.json"), b"{}").unwrap();
        std::os::unix::fs::symlink("snap/db", data.join("member/link")).unwrap();
        data
    }

    #[test]
    fn stamps_utc_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_795_999_999), "20261130T005319Z");
    }

    #[test]
    fn copies_verifies_and_excludes_the_migrators_state() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let data = sample_data_dir(root);
        let policy = BackupPolicy { backup_dir: root.to_path_buf(), retention: 3 };
        let backup = create(&data, "3.4.23-etcd3", &policy).unwrap();
        assert!(backup.path.file_name().unwrap().to_string_lossy().starts_with("data-backup-3.4.23-etcd3-"));
        assert_eq!(fs::read(backup.path.join("member/snap/db")).unwrap(), vec![7u8; 3 << 20]);
        assert_eq!(fs::read_link(backup.path.join("member/link")).unwrap(), PathBuf::from("snap/db"));
        assert!(!backup.path.join(".etcd-migrate").exists());
        assert_eq!(fs::metadata(&backup.path).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!((backup.files, backup.bytes), (4, (3 << 20) + 3 + 13));
        assert_eq!(verify(&backup.path).unwrap(), backup);
    }

    #[test]
    fn a_file_that_changed_size_mid_copy_makes_the_backup_a_mismatch() {
        let changed = CopyError::ChangedSize {
            file: "/data/member/snap/db".into(),
            copy: "/b/member/snap/db".into(),
            expected: 5,
            actual: 11,
        };
        assert_eq!(
            BackupError::from(changed).to_string(),
            "backup /b/member/snap/db does not match its source (/data/member/snap/db changed size while it \
             was copied (5 bytes, then 11)): the copy is not trustworthy"
        );
    }

    #[test]
    fn verify_catches_a_flipped_byte() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let data = sample_data_dir(root);
        let backup =
            create(&data, "x", &BackupPolicy { backup_dir: root.to_path_buf(), retention: 1 }).unwrap();
        let db = backup.path.join("member/snap/db");
        let mut bytes = fs::read(&db).unwrap();
        bytes[12345] ^= 1;
        fs::write(&db, bytes).unwrap();
        assert!(matches!(verify(&backup.path).unwrap_err(), BackupError::Mismatch { .. }));
    }

    #[test]
    fn keeps_the_newest_and_sweeps_partial_copies() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let data = sample_data_dir(root);
        let policy = BackupPolicy { backup_dir: root.to_path_buf(), retention: 2 };
        fs::create_dir_all(root.join("data-backup-old-19700101T000000Z.partial")).unwrap();
        let made: Vec<PathBuf> =
            (0..4).map(|i| create(&data, &format!("v{i}"), &policy).unwrap().path).collect();
        let kept = list(&data, &policy).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&made[3]) && kept.contains(&made[2]), "{kept:?}");
        assert!(!root.join("data-backup-old-19700101T000000Z.partial").exists());
    }

    #[test]
    fn restore_brings_back_the_member_exactly() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let data = sample_data_dir(root);
        let backup =
            create(&data, "x", &BackupPolicy { backup_dir: root.to_path_buf(), retention: 1 }).unwrap();
        fs::write(data.join("member/snap/db"), b"converted").unwrap();
        fs::write(data.join("member/extra"), b"new").unwrap();
        restore(&backup.path, data_dir::DataDir::open_locked(&data).unwrap().changing()).unwrap();
        assert_eq!(fs::read(data.join("member/snap/db")).unwrap(), vec![7u8; 3 << 20]);
        assert!(!data.join("member/extra").exists());
        assert!(!data.join(".etcd-migrate/work/restore").exists());
    }
}
