//! The journal: a record, beside the data, of the step under way.
//!
//! It is written (atomically) before a step touches anything and removed after `version.txt` names the
//! step's result. A run that finds it knows the previous one died mid-step, and which step, so it can
//! finish or undo that step instead of guessing from the data.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data_dir::STATE_DIR;
use crate::plan::Step;
use crate::version_file::sync_dir;

const FILE_NAME: &str = "journal.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub step: Step,
    /// The verified backup taken before this step, if one was.
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

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR).join(FILE_NAME)
}

pub fn read(data_dir: &Path) -> Result<Option<Journal>, JournalError> {
    let path = path(data_dir);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| JournalError::Damaged { path, message: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JournalError::Io { action: "read", path, source }),
    }
}

pub fn write(data_dir: &Path, journal: &Journal) -> Result<(), JournalError> {
    let path = path(data_dir);
    let dir = data_dir.join(STATE_DIR);
    let temp = dir.join(".journal.json.tmp");
    let result = (|| {
        fs::create_dir_all(&dir)?;
        let mut file = fs::File::create(&temp)?;
        file.write_all(&serde_json::to_vec_pretty(journal).expect("a journal serializes"))?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(&dir)
    })();
    result.map_err(|source| JournalError::Io { action: "write", path, source })
}

pub fn clear(data_dir: &Path) -> Result<(), JournalError> {
    let path = path(data_dir);
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(&data_dir.join(STATE_DIR)).map_err(|source| JournalError::Io {
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
    use super::*;

    #[test]
    fn round_trips() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        assert_eq!(read(dir).unwrap(), None);
        let journal = Journal {
            step: Step::InPlace {
                from: "3.3.25/etcd3".parse().unwrap(),
                to: "3.4.23/etcd3".parse().unwrap(),
            },
            backup: Some("/b".into()),
            rebuilt_inode: None,
        };
        write(dir, &journal).unwrap();
        assert_eq!(read(dir).unwrap(), Some(journal));
        let text = fs::read_to_string(path(dir)).unwrap();
        assert!(text.contains("\"kind\": \"in_place\"") && text.contains("3.4.23/etcd3"), "{text}");
        clear(dir).unwrap();
        assert_eq!(read(dir).unwrap(), None);
        fs::write(path(dir), "{").unwrap();
        assert!(matches!(read(dir).unwrap_err(), JournalError::Damaged { .. }));
    }
}
