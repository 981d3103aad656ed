//! Full, verified backups of the data directory, taken before anything that cannot be undone.
//!
//! A backup is a directory `<data-dir-name>-backup-<version>-<storage>-<UTC time>` (mode 0700), beside
//! the data dir or inside its volume (`policy`), holding a copy of the data dir and a manifest with a
//! digest of every file. The copy is written to `<name>.partial` from buffers that are hashed as they
//! are filled, so the manifest's digest is that of the very bytes copied; the writes go past the page
//! cache (direct I/O where the filesystem has it), it is fsynced, and only then renamed into place, so a
//! backup that exists is a complete one. A restore re-reads the backup and checks it against that
//! digest first. The newest
//! `--backup-retention` backups are kept; the old image's defect of deleting the backup it had just made
//! cannot happen, because retention never touches the newest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::data_dir::{self, Changing, DataDirError, STATE_DIR, member_dir};
use crate::durable::{self, sync_dir};
use crate::mounts;
use crate::progress::{Progress, Unit};
use crate::swap;

const MANIFEST: &str = "BACKUP-MANIFEST.json";
const PARTIAL: &str = ".partial";
const BUFFER: usize = 1 << 20;
/// Buffers on their way from a file's reader to its writer.
const BUFFERS: usize = 4;
/// The alignment direct I/O needs of a buffer's address, a write's length and its offset.
const DIRECT_ALIGN: usize = 4096;
/// Files copied at once: one file's fsync overlaps another's copy.
const COPIERS: usize = 2;

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
    pub path: PathBuf,
    pub label: String,
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
    let result = copy_tree(data_dir, &staging, "backing up").and_then(|(files, bytes, digest)| {
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
    let mut entries = Vec::new();
    walk(path, path, &mut entries)?;
    let mut tree = TreeDigest::default();
    for entry in entries.iter().filter(|e| e.relative != Path::new(MANIFEST)) {
        match entry.kind {
            Kind::File => {
                let (size, hash) = hash_file(&path.join(&entry.relative))?;
                tree.add_file(&entry.relative, size, &hash);
            }
            Kind::Dir => tree.add_dir(&entry.relative),
            Kind::Symlink => {
                let target = fs::read_link(path.join(&entry.relative)).map_err(io_error(&entry.relative))?;
                tree.add_symlink(&entry.relative, &target);
            }
        }
    }
    let (files, bytes, digest) = tree.finish();
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
    let mut entries = Vec::new();
    walk(data_dir, data_dir, &mut entries)?;
    Ok(entries.iter().map(|e| e.size).sum())
}

/// Replaces `member/` in the data dir with the backup's, atomically: the backup's member is verified,
/// copied beside the live one, and swapped in; the old member is removed only after that.
pub fn restore(backup: &Path, data_dir: Changing<'_>) -> Result<(), BackupError> {
    verify(backup)?;
    let work = data_dir.fresh_work_dir("restore")?;
    copy_tree(&backup.join("member"), &work.join("member"), "restoring the backup")?;
    let (data_dir, live) = (data_dir.path(), member_dir(data_dir.path()));
    if live.exists() {
        swap::swap_member(data_dir, &work).map_err(io_error(data_dir))?;
    } else {
        fs::rename(work.join("member"), &live).map_err(io_error(data_dir))?;
        sync_dir(data_dir).map_err(io_error(data_dir))?;
    }
    fs::remove_dir_all(&work).map_err(io_error(&work))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

struct Entry {
    relative: PathBuf,
    kind: Kind,
    size: u64,
    mode: u32,
}

/// Every entry under `dir`, in path order, skipping the migrator's own state dir at the top.
fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), BackupError> {
    let mut entries: Vec<_> =
        fs::read_dir(dir).map_err(io_error(dir))?.collect::<Result<_, _>>().map_err(io_error(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let relative = path.strip_prefix(root).expect("under root").to_path_buf();
        if relative == Path::new(STATE_DIR) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
        let mode = meta.permissions().mode();
        if meta.file_type().is_symlink() {
            out.push(Entry { relative, kind: Kind::Symlink, size: 0, mode });
        } else if meta.is_dir() {
            out.push(Entry { relative, kind: Kind::Dir, size: 0, mode });
            walk(root, &path, out)?;
        } else {
            out.push(Entry { relative, kind: Kind::File, size: meta.len(), mode });
        }
    }
    Ok(())
}

/// The digest of a tree: each entry's relative path, kind, and for files size and content hash.
#[derive(Default)]
struct TreeDigest {
    hasher: Xxh3,
    files: u64,
    bytes: u64,
}

impl TreeDigest {
    fn add_file(&mut self, relative: &Path, size: u64, content: &[u8]) {
        self.files += 1;
        self.bytes += size;
        self.hasher.update(format!("f {} {size} ", relative.display()).as_bytes());
        self.hasher.update(content);
        self.hasher.update(b"\n");
    }

    fn add_dir(&mut self, relative: &Path) {
        self.hasher.update(format!("d {}\n", relative.display()).as_bytes());
    }

    fn add_symlink(&mut self, relative: &Path, target: &Path) {
        self.hasher.update(format!("l {} {}\n", relative.display(), target.display()).as_bytes());
    }

    fn finish(self) -> (u64, u64, String) {
        (self.files, self.bytes, format!("{:032x}", self.hasher.digest128()))
    }
}

/// Copies `source` to `target` (which must not exist) and fsyncs it, files `COPIERS` at a time, logging
/// progress as `what`. Returns (files, bytes, digest) of what was copied.
fn copy_tree(source: &Path, target: &Path, what: &'static str) -> Result<(u64, u64, String), BackupError> {
    let mut entries = Vec::new();
    walk(source, source, &mut entries)?;
    fs::DirBuilder::new().mode(0o700).create(target).map_err(io_error(target))?;
    let mut dirs = vec![target.to_path_buf()];
    for entry in entries.iter().filter(|e| e.kind == Kind::Dir) {
        let to = target.join(&entry.relative);
        fs::DirBuilder::new().mode(entry.mode & 0o7777).create(&to).map_err(io_error(&to))?;
        dirs.push(to);
    }
    let progress = Progress::start(what, Unit::Bytes, Some(entries.iter().map(|e| e.size).sum()));
    let next = AtomicUsize::new(0);
    let hashes: Vec<Mutex<Option<Vec<u8>>>> = entries.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        let copiers: Vec<_> = (0..COPIERS)
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(entry) = entries.get(i) else { return Ok::<(), BackupError>(()) };
                        if entry.kind == Kind::File {
                            let (from, to) = (source.join(&entry.relative), target.join(&entry.relative));
                            let hash = copy_file(&from, &to, entry, &progress)?;
                            *hashes[i].lock().expect("no copier panics") = Some(hash);
                        }
                    }
                })
            })
            .collect();
        copiers.into_iter().try_for_each(|copier| copier.join().expect("no copier panics"))
    })?;
    let mut tree = TreeDigest::default();
    for (entry, hash) in entries.iter().zip(hashes) {
        match entry.kind {
            Kind::Dir => tree.add_dir(&entry.relative),
            Kind::Symlink => {
                let (from, to) = (source.join(&entry.relative), target.join(&entry.relative));
                let link = fs::read_link(&from).map_err(io_error(&from))?;
                std::os::unix::fs::symlink(&link, &to).map_err(io_error(&to))?;
                tree.add_symlink(&entry.relative, &link);
            }
            Kind::File => {
                let hash = hash.into_inner().expect("no copier panics").expect("every file copied");
                tree.add_file(&entry.relative, entry.size, &hash);
            }
        }
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir).map_err(io_error(dir))?;
    }
    Ok(tree.finish())
}

/// Copies one file, hashing each block from the buffer it is then written from, and fsyncs the copy;
/// returns the hash. This thread reads and hashes while another writes. The writes are direct: the
/// page cache would only hold a copy nobody reads, and copying into its fresh pages was most of a
/// backup's time (a gigabyte: 0.8 s of CPU through the page cache, 0.35 s direct). Nothing writes the
/// data dir meanwhile: we hold its lock and no etcd runs on it, so a file whose size changed is an
/// error, not a race to paper over.
fn copy_file(from: &Path, to: &Path, entry: &Entry, progress: &Progress) -> Result<Vec<u8>, BackupError> {
    let output = create_for_direct_writes(to, entry.mode & 0o7777).map_err(io_error(to))?;
    let (spare, buffers) = mpsc::sync_channel::<Block>(BUFFERS);
    for _ in 0..BUFFERS {
        spare.send(Block::new()).expect("room for every buffer");
    }
    let (filled, blocks) = mpsc::sync_channel::<(Block, usize)>(BUFFERS);
    let (read, written) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || write_blocks(output, to, blocks, spare, progress));
        let read = hash_blocks(from, &buffers, |buffer, n| {
            // A writer that stopped has its error to tell, which `written` carries.
            filled.send((buffer, n)).map_err(|_| io_error(to)(io::Error::other("the writer stopped")))
        });
        drop(filled);
        (read, writer.join().expect("the writer does not panic"))
    });
    written?;
    let (size, hash) = read?;
    if size != entry.size {
        return Err(BackupError::Mismatch {
            path: to.to_path_buf(),
            what: format!(
                "{} changed size while it was copied ({} bytes, then {size})",
                from.display(),
                entry.size
            ),
        });
    }
    Ok(hash)
}

/// `BUFFER` bytes at an address direct I/O accepts.
struct Block {
    bytes: Vec<u8>,
    start: usize,
}

impl Block {
    fn new() -> Block {
        let bytes = vec![0u8; BUFFER + DIRECT_ALIGN];
        let start = bytes.as_ptr().align_offset(DIRECT_ALIGN);
        Block { bytes, start }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[self.start..self.start + BUFFER]
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + BUFFER]
    }
}

/// Creates `path` for writing with direct I/O, or with ordinary writes on a filesystem that has no
/// direct I/O (tmpfs before Linux 6.6 refuses the flag).
fn create_for_direct_writes(path: &Path, mode: u32) -> io::Result<File> {
    let open =
        |flags| OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(flags).open(path);
    match open(libc::O_DIRECT) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => open(0),
        opened => opened,
    }
}

/// Writes `blocks` to `output` in order, handing each buffer back to `spare`, then fsyncs it. Every
/// block is full but the last, whose length direct I/O may not take: that one is written through the
/// page cache.
fn write_blocks(
    output: File,
    path: &Path,
    blocks: mpsc::Receiver<(Block, usize)>,
    spare: mpsc::SyncSender<Block>,
    progress: &Progress,
) -> Result<(), BackupError> {
    let mut offset = 0u64;
    for (block, n) in blocks {
        if n % DIRECT_ALIGN != 0 {
            end_direct_writes(&output).map_err(io_error(path))?;
        }
        let bytes = &block.as_slice()[..n];
        match output.write_all_at(bytes, offset) {
            // A filesystem that takes the flag but not the write (a block size over `DIRECT_ALIGN`): the
            // rest of the file goes through the page cache. Positioned, so the retry rewrites the same bytes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                end_direct_writes(&output).map_err(io_error(path))?;
                output.write_all_at(bytes, offset)
            }
            written => written,
        }
        .map_err(io_error(path))?;
        offset += n as u64;
        progress.add(n as u64);
        let _ = spare.send(block);
    }
    output.sync_all().map_err(io_error(path))
}

fn end_direct_writes(file: &File) -> io::Result<()> {
    // SAFETY: fcntl reads no memory of ours; the descriptor is open for both calls.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn hash_file(path: &Path) -> Result<(u64, Vec<u8>), BackupError> {
    let (spare, buffers) = mpsc::sync_channel(1);
    spare.send(Block::new()).expect("room for one buffer");
    hash_blocks(path, &buffers, |block, _| {
        spare.send(block).expect("room for the buffer taken");
        Ok(())
    })
}

/// Reads `path` into buffers taken from `buffers`, each filled but the last, hashing each block before
/// handing it to `each`; returns the size and hash.
fn hash_blocks(
    path: &Path,
    buffers: &mpsc::Receiver<Block>,
    mut each: impl FnMut(Block, usize) -> Result<(), BackupError>,
) -> Result<(u64, Vec<u8>), BackupError> {
    let mut input = File::open(path).map_err(io_error(path))?;
    let mut hasher = Xxh3::new();
    let mut size = 0u64;
    loop {
        let Ok(mut block) = buffers.recv() else {
            return Err(io_error(path)(io::Error::other("no buffer to read into")));
        };
        let n = fill(&mut input, block.as_mut_slice()).map_err(io_error(path))?;
        if n == 0 {
            return Ok((size, hasher.digest128().to_le_bytes().to_vec()));
        }
        hasher.update(&block.as_slice()[..n]);
        size += n as u64;
        each(block, n)?;
    }
}

/// Reads into `buffer` until it is full or the input ends; returns how much was read.
fn fill(input: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
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
    fn copies_a_file_whose_end_direct_io_cannot_write() {
        let temp = tempfile::tempdir().unwrap();
        let root = temp.path();
        let data = sample_data_dir(root);
        let odd: Vec<u8> = (0..BUFFER + DIRECT_ALIGN + 5).map(|i| (i % 251) as u8).collect();
        fs::write(data.join("member/snap/odd"), &odd).unwrap();
        let backup =
            create(&data, "x", &BackupPolicy { backup_dir: root.to_path_buf(), retention: 1 }).unwrap();
        assert_eq!(fs::read(backup.path.join("member/snap/odd")).unwrap(), odd);
        assert_eq!(verify(&backup.path).unwrap(), backup);
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
