//! The journal: a record, beside the data, of the step under way.
//!
//! It is written (atomically) before a step touches anything and removed after `version.txt` names the
//! step's result. A run that finds it knows the previous one died mid-step, and which step, so it can
//! finish or undo that step instead of guessing from the data.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Changing, journal_path, state_dir};
use crate::durable;
use crate::plan::Step;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub step: Step,
    /// The verified backup taken before this step, if one was.
    #[serde(with = "crate::path_serde::option")]
    pub backup: Option<PathBuf>,
    /// For rebuilding steps: the inode of the rebuilt member, recorded just before it is swapped in, so a
    /// later run can tell whether the swap happened.
    #[serde(default)]
    pub rebuilt_inode: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot {action} {path}: {source}")]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "{path} is damaged ({message}): the last run died mid-step; restore the data dir from the newest backup"
    )]
    Damaged { path: PathBuf, message: String },
}

pub fn read(data_dir: &Path) -> Result<Option<Journal>, JournalError> {
    let path = journal_path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Damaged { path, message: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Io { action: "read", path, source }),
    }
}

pub fn write(data_dir: Changing<'_>, journal: &Journal) -> Result<(), JournalError> {
    let data_dir = data_dir.path();
    let path = journal_path(data_dir);
    let bytes = serde_json::to_vec_pretty(journal).expect("a journal serializes");
    // The state dir may be new: its entry in the data dir must survive a power cut, or the journal goes
    // with it and the next run finds data a step moved on with version.txt still naming the step's start.
    fs::create_dir_all(state_dir(data_dir))
        .and_then(|()| durable::sync_dir(data_dir))
        .and_then(|()| durable::replace(&path, &bytes))
        .map_err(|source| JournalError::Io { action: "write", path, source })
}

pub fn clear(data_dir: Changing<'_>) -> Result<(), JournalError> {
    let data_dir = data_dir.path();
    let path = journal_path(data_dir);
    match fs::remove_file(&path) {
        Ok(()) => durable::sync_dir(&state_dir(data_dir)).map_err(|source| JournalError::Io {
            action: "sync",
            path,
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(JournalError::Io { action: "remove", path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::DataDir;
    use super::*;

    #[test]
    fn round_trips() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let locked = DataDir::open_locked(dir).unwrap();
        assert_eq!(read(dir).unwrap(), None);
        let journal = Journal {
            step: Step::InPlace {
                from: "3.3.25/etcd3".parse().unwrap(),
                to: "3.4.23/etcd3".parse().unwrap(),
            },
            backup: Some("/b".into()),
            rebuilt_inode: None,
        };
        write(locked.changing(), &journal).unwrap();
        assert_eq!(read(dir).unwrap(), Some(journal));
        let text = fs::read_to_string(journal_path(dir)).unwrap();
        assert!(text.contains("\"kind\": \"in_place\"") && text.contains("3.4.23/etcd3"), "{text}");
        clear(locked.changing()).unwrap();
        assert_eq!(read(dir).unwrap(), None);
        fs::write(journal_path(dir), "{").unwrap();
        assert!(matches!(read(dir).unwrap_err(), JournalError::Damaged { .. }));
    }
}
