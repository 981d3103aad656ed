//! `version.txt`: the one-line record of what the data directory holds, `X.Y.Z/etcdN`.
//!
//! It is the migrator's only claim about the data, so it is read strictly (a file that does not say
//! exactly that is an error naming the file, never overwritten) and written atomically and durably
//! (`durable`). The old script wrote it with a plain redirect, so a full disk could leave it empty.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::Changing;
use crate::durable;
use crate::version::EtcdState;

pub const FILE_NAME: &str = "version.txt";

#[derive(Debug, thiserror::Error)]
pub enum VersionFileError {
    #[error(
        "{path} is not a regular file: remove it or restore the data dir's version.txt (expected X.Y.Z/etcdN)"
    )]
    NotAFile { path: PathBuf },
    #[error(
        "{path} says {content:?}, expected X.Y.Z/etcdN (e.g. 3.4.23/etcd3): fix the file or set --assume-current-version"
    )]
    Invalid { path: PathBuf, content: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Reads the version file; `None` when there is none.
pub fn read(data_dir: &Path) -> Result<Option<EtcdState>, VersionFileError> {
    let path = path(data_dir);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(VersionFileError::Read { path, source }),
    };
    if !meta.is_file() {
        return Err(VersionFileError::NotAFile { path });
    }
    let bytes = fs::read(&path).map_err(|source| VersionFileError::Read { path: path.clone(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    parse_line(&text)
        .map(Some)
        .ok_or_else(|| VersionFileError::Invalid { path, content: text.chars().take(64).collect() })
}

/// `X.Y.Z/etcdN` as Kubernetes' tools accepted it: surrounding whitespace (the script's `echo` newline, a
/// CRLF from an editor) is ignored, and a pre-release or build part (`3.4.0-rc.1`, semver's, as the Go
/// `migrate` parsed it) is kept as `Version` keeps it.
fn parse_line(text: &str) -> Option<EtcdState> {
    text.trim().parse().ok()
}

/// Replaces the version file atomically and durably.
pub fn write(data_dir: Changing<'_>, state: EtcdState) -> Result<(), VersionFileError> {
    let target = path(data_dir.path());
    let result = durable::stage(&target, format!("{state}\n").as_bytes()).and_then(|staged| {
        crate::faults::pause("version-file");
        if crate::faults::fail("version-file-write") {
            return Err(io::Error::other("fault injected"));
        }
        staged.commit()
    });
    result.map_err(|source| VersionFileError::Write { path: target, source })
}

#[cfg(test)]
mod tests {
    use super::super::DataDir;
    use super::*;

    #[test]
    fn writes_and_reads_back() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        assert_eq!(read(dir).unwrap(), None);
        let state: EtcdState = "3.4.23/etcd3".parse().unwrap();
        write(DataDir::open_locked(dir).unwrap().changing(), state).unwrap();
        assert_eq!(read(dir).unwrap(), Some(state));
        assert_eq!(fs::read_to_string(path(dir)).unwrap(), "3.4.23/etcd3\n");
        assert!(!dir.join(".version.txt.tmp").exists());
        fs::write(path(dir), "3.5.16/etcd3").unwrap();
        assert_eq!(read(dir).unwrap(), Some("3.5.16/etcd3".parse().unwrap()));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rejects_bad_files_naming_them() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        for content in ["", "garbage", "3.4/etcd3", "3.4.23/etcd4", "3.4.23/etcd3 junk", "3.4.23/etcd3\n\n3"]
        {
            fs::write(path(dir), content).unwrap();
            let err = read(dir).unwrap_err();
            assert!(matches!(err, VersionFileError::Invalid { .. }), "{content:?}");
            assert!(err.to_string().contains("version.txt"), "{err}");
            assert!(err.to_string().contains("X.Y.Z/etcdN"), "{err}");
        }
        fs::remove_file(path(dir)).unwrap();
        fs::create_dir(path(dir)).unwrap();
        assert!(matches!(read(dir).unwrap_err(), VersionFileError::NotAFile { .. }));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_what_kubernetes_tools_accepted() {
        for (text, state) in [
            ("3.4.23/etcd3\n", "3.4.23/etcd3"),
            ("  3.4.23/etcd3 \r\n", "3.4.23/etcd3"),
            ("3.4.0-rc.1/etcd3", "3.4.0-rc.1/etcd3"),
            ("3.4.13-rc.0/etcd3\n", "3.4.13-rc.0/etcd3"),
            ("1.1.1-rc.0/etcd3", "1.1.1-rc.0/etcd3"),
            ("3.5.0+build.7/etcd3\r\n", "3.5.0+build.7/etcd3"),
            ("2.2.1/etcd2", "2.2.1/etcd2"),
        ] {
            let read = parse_line(text).unwrap();
            assert_eq!(read.to_string(), state, "{text:?}: the file's own words are kept");
        }
        assert!(parse_line("3.4.0-rc.1/etcd3").unwrap().version < "3.4.0".parse().unwrap());
        for bad in
            ["", "3.4.23", "3.4/etcd3", "3.4.23/etcd4", "3.4.23/etcd3 extra", "v3.4.23/etcd3", "3.4.0-/etcd3"]
        {
            assert_eq!(parse_line(bad), None, "{bad:?}");
        }
    }
}
