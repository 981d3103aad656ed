//! Durable writes, the one way the migrator writes a file it must be able to trust after a crash:
//! `version.txt`, the journal, a backup's manifest. The new content goes to a temporary file beside the
//! target (`.<name>.tmp`), is fsynced, renamed over the target, and the directory is fsynced, so a crash or
//! a full disk leaves the old content or the new, never a torn or empty file.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes`, atomically and durably.
pub fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    stage(path, bytes)?.commit()
}

/// New content for `path`, written and fsynced beside it but not yet in place. Dropped uncommitted, it
/// removes its temporary file.
#[derive(Debug)]
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Writes `bytes` to the temporary file beside `path` and fsyncs it.
pub fn stage(path: &Path, bytes: &[u8]) -> io::Result<Staged> {
    let staged = Staged { temp: temp_path(path)?, target: path.to_path_buf(), committed: false };
    let mut file = create_private(&staged.temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(staged)
}

/// Creates `path` (emptied if it exists) readable and writable by its owner alone (0600 whatever the
/// umask; a file made before keeps its mode): every file the migrator writes in the data dir, its work
/// dirs and its backups holds what etcd holds, and etcd's own files are 0600.
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Makes what `command` (a hidden etcd, etcdctl, etcdutl) creates its user's alone: umask 077, set
/// between fork and exec. etcd makes its own files 0600, but a `snapshot restore` writes its `.snap`
/// file with whatever the umask leaves (0644 under the usual 022), and a restored member holds every
/// value. The migrator's own umask, which the exec'd etcd inherits, is left as the operator set it.
pub fn owner_only_files(command: &mut tokio::process::Command) {
    // SAFETY: umask is async-signal-safe and touches no memory of ours.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
}

/// `.<name>.tmp` beside `path`: in the same directory, so the rename is atomic.
fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name =
        path.file_name().ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(".tmp");
    Ok(path.with_file_name(temp))
}

impl Staged {
    /// Renames the staged content over the target and makes the rename durable.
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.temp, &self.target)?;
        self.committed = true;
        sync_dir(parent(&self.target))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Makes a rename, a removal or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a whole tree durable: every file's data and every directory's entries, each directory after
/// what it holds. For a tree another program wrote (a member etcd or etcdctl built), before the migrator
/// records it as done: etcd syncs what it acknowledges, but not every file's entry in its directory.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// Makes `dir` and its missing ancestors (mode 0700), each entry durable in its parent; returns the
/// ones it made, outermost first, so a caller that fails can take them away again.
pub fn create_dirs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    let mut made = Vec::new();
    for dir in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            Err(_) => continue,
            Ok(()) => made.push(dir.to_path_buf()),
        }
        sync_dir(parent(dir))?;
    }
    Ok(made)
}

/// Takes away directories [`create_dirs`] made, innermost first, as far as they are empty.
pub fn remove_made_dirs(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        if fs::remove_dir(dir).is_ok() {
            let _ = sync_dir(parent(dir));
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_and_leaves_no_temporary_file() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let path = dir.join("note");
        replace(&path, b"old").unwrap();
        replace(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let staged = stage(&path, b"abandoned").unwrap();
        assert!(dir.join(".note.tmp").exists());
        drop(staged);
        assert!(!dir.join(".note.tmp").exists(), "an uncommitted write removes its temporary file");
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }

    #[test]
    fn syncs_a_tree() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        fs::create_dir_all(dir.join("member/wal")).unwrap();
        fs::write(dir.join("member/wal/0.wal"), b"wal").unwrap();
        std::os::unix::fs::symlink("wal", dir.join("member/link")).unwrap();
        sync_tree(&dir.join("member")).unwrap();
        assert!(sync_tree(&dir.join("missing")).is_err());
    }

    #[test]
    fn makes_missing_dirs_and_takes_them_away_again() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        fs::create_dir(dir.join("a")).unwrap();
        let made = create_dirs(&dir.join("a/b/c")).unwrap();
        assert_eq!(made, [dir.join("a/b"), dir.join("a/b/c")]);
        assert_eq!(create_dirs(&dir.join("a/b/c")).unwrap(), Vec::<PathBuf>::new());
        remove_made_dirs(&made);
        assert!(dir.join("a").is_dir() && !dir.join("a/b").exists());
    }
}
