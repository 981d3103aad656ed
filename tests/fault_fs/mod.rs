//! A FUSE filesystem for tests (on `fuser`, no libfuse) that forgets what was not made durable, the way
//! a node that loses power does, as LazyFS does for Jepsen.
//!
//! Its backing folder is its disk: `data/<inode>` holds what each file's last fsync made durable, and
//! `meta.json` each directory's entries as its last fsync left them. Everything else lives in memory
//! as a page cache would: a file's writes and truncations until `fsync`/`fdatasync` of that file, a
//! directory's creates, renames and unlinks until `fsync` of that directory. Mounting reads the disk
//! back, so what a mount shows after a power cut is exactly what was durable: a file renamed into place
//! before its data was synced comes back empty, a rename whose directory was not synced comes back
//! undone, a file whose directory was never synced is missing.
//!
//! Faults: [`Control::cut_at`] cuts the power right after the N-th durable point (an fsync of a file or
//! a directory, by any process): from then on every operation fails with EIO and nothing more reaches
//! the disk, until the test has killed every process and mounts the disk again. [`Control::fail`] makes
//! the N-th write, fsync, rename or mkdir of the processes whose executable a rule names fail with
//! ENOSPC or EIO. Every durable point and every counted operation is logged, so a clean run tells a
//! test how many points there are to cut at.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use serde::{Deserialize, Serialize};

const PAGE: u64 = 4096;
const ROOT: u64 = 1;
/// The kernel may cache names and attributes this long: every change goes through it, and a power
/// cut is followed by a new mount, so its caches never hold what the disk has forgotten.
const TTL: Duration = Duration::from_secs(1);

/// The operations a rule can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Write,
    Fsync,
    Rename,
    Mkdir,
}

/// `path` as rules name it, the same in every run: what differs from run to run is written `*` (the
/// PID in the migrator's preflight write probe, `.etcd-migrate-write-probe-<pid>`, and the UTC time in a
/// backup's name, `…-backup-<label>-<YYYYMMDD>T<HHMMSS>Z`).
pub fn stable_path(path: String) -> String {
    const PROBE: &str = ".etcd-migrate-write-probe-";
    if let Some(at) = path.find(PROBE) {
        return format!("{}*", &path[..at + PROBE.len()]);
    }
    let bytes = path.as_bytes();
    let digits =
        |range: std::ops::Range<usize>| bytes.get(range).is_some_and(|b| b.iter().all(u8::is_ascii_digit));
    let stamp = (8..bytes.len()).find(|&t| {
        bytes[t] == b'T' && digits(t - 8..t) && digits(t + 1..t + 7) && bytes.get(t + 7) == Some(&b'Z')
    });
    match stamp {
        Some(t) => format!("{}*{}", &path[..t - 8], &path[t + 8..]),
        None => path,
    }
}

/// Fail the `nth` (1-based) operation `op` on `path` made by a process whose executable's name starts
/// with `exe_prefix`, with `errno`. Counted per path: how many operations of a kind a run makes on other
/// paths varies (etcd's WAL files, which the migrator syncs, come and go with timing).
#[derive(Debug, Clone)]
pub struct FailRule {
    pub op: Op,
    pub path: String,
    pub nth: u64,
    pub errno: i32,
    pub exe_prefix: String,
}

/// One operation a rule could have failed, as the log lists it: its kind, the path it touched (as the
/// filesystem knew it then), and whether it was failed.
#[derive(Debug, Clone)]
pub struct Counted {
    pub op: Op,
    pub path: String,
    pub failed: bool,
}

#[derive(Default)]
struct Faults {
    /// Cut the power right after this durable point (1-based).
    cut_at: Option<u64>,
    durable_points: u64,
    /// Where each durable point was: the process's executable and the path synced.
    points: Vec<String>,
    powered_off: bool,
    rule: Option<FailRule>,
    /// Per op and path, how many the rule's processes made.
    counts: BTreeMap<(Op, String), u64>,
    counted: Vec<Counted>,
}

/// What the test holds: the faults to inject, and what the filesystem saw.
#[derive(Clone, Default)]
pub struct Control(Arc<(Mutex<Faults>, Condvar)>);

impl Control {
    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.0.0.lock().unwrap()
    }

    /// Cuts the power right after durable point `point` (1-based) of this mount.
    pub fn cut_at(&self, point: u64) {
        self.lock().cut_at = Some(point);
    }

    /// Fails operations as `rule` says.
    pub fn fail(&self, rule: FailRule) {
        self.lock().rule = Some(rule);
    }

    /// Counts the operations of processes whose executable starts with `exe_prefix` (no failure).
    pub fn count(&self, exe_prefix: &str) {
        self.fail(FailRule {
            op: Op::Write,
            path: String::new(),
            nth: 0,
            errno: 0,
            exe_prefix: exe_prefix.into(),
        });
    }

    pub fn durable_points(&self) -> u64 {
        self.lock().durable_points
    }

    /// Where each durable point was, in order.
    pub fn points(&self) -> Vec<String> {
        self.lock().points.clone()
    }

    pub fn counted(&self) -> Vec<Counted> {
        self.lock().counted.clone()
    }

    pub fn powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Waits until the power is cut (true) or `done()` says the run ended first (false).
    pub fn wait_for_cut(&self, mut done: impl FnMut() -> bool) -> bool {
        let (lock, changed) = &*self.0;
        let mut faults = lock.lock().unwrap();
        loop {
            if faults.powered_off {
                return true;
            }
            if done() {
                return faults.powered_off;
            }
            faults = changed.wait_timeout(faults, Duration::from_millis(20)).unwrap().0;
        }
    }
}

/// How a node's durable state is written down in `meta.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DurableNode {
    kind: Kind,
    mode: u32,
    #[serde(default)]
    entries: BTreeMap<String, u64>,
    #[serde(default)]
    target: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Meta {
    next_id: u64,
    nodes: BTreeMap<u64, DurableNode>,
}

/// A node as the running system sees it.
struct Node {
    kind: Kind,
    mode: u32,
    parent: u64,
    mtime: SystemTime,
    /// Directory entries, names as bytes.
    entries: BTreeMap<OsString, u64>,
    target: PathBuf,
    /// File length as seen now.
    len: u64,
    /// Bytes of the durable copy past this offset are gone (truncated) until the next fsync.
    floor: u64,
    /// Pages written since the last fsync (bytes past `len` are zero).
    dirty: BTreeMap<u64, Box<[u8]>>,
}

impl Node {
    fn new(kind: Kind, mode: u32, parent: u64) -> Node {
        Node {
            kind,
            mode,
            parent,
            mtime: SystemTime::now(),
            entries: BTreeMap::new(),
            target: PathBuf::new(),
            len: 0,
            floor: 0,
            dirty: BTreeMap::new(),
        }
    }
}

struct State {
    backing: PathBuf,
    nodes: BTreeMap<u64, Node>,
    meta: Meta,
}

/// The filesystem. Mount it with [`FaultFs::mount`].
pub struct FaultFs {
    state: Mutex<State>,
    control: Control,
}

/// A mounted fault filesystem; unmounted when dropped.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    pub mountpoint: PathBuf,
    pub control: Control,
}

impl Mounted {
    /// Unmounts (the "node" is down; what is on the backing folder is what survived).
    pub fn unmount(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(session) = self.session.take() {
            // A lazy unmount first, so that no late request keeps it busy; then the session ends.
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
            drop(session);
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop();
    }
}

fn data_path(backing: &Path, id: u64) -> PathBuf {
    backing.join("data").join(id.to_string())
}

impl FaultFs {
    /// Makes `backing` a disk holding a durable copy of the tree at `source` (or an empty one).
    pub fn format(backing: &Path, source: Option<&Path>) {
        fs::create_dir_all(backing.join("data")).unwrap();
        let mut meta = Meta { next_id: ROOT + 1, nodes: BTreeMap::new() };
        meta.nodes.insert(
            ROOT,
            DurableNode { kind: Kind::Dir, mode: 0o755, entries: BTreeMap::new(), target: None },
        );
        fn import(backing: &Path, meta: &mut Meta, dir: &Path, id: u64) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let child = meta.next_id;
                meta.next_id += 1;
                let name = entry.file_name().to_string_lossy().into_owned();
                let file_meta = fs::symlink_metadata(entry.path()).unwrap();
                let mode = file_meta.permissions().mode() & 0o7777;
                let node = if file_meta.file_type().is_symlink() {
                    let target = fs::read_link(entry.path()).unwrap().to_string_lossy().into_owned();
                    DurableNode { kind: Kind::Symlink, mode, entries: BTreeMap::new(), target: Some(target) }
                } else if file_meta.is_dir() {
                    meta.nodes.insert(
                        child,
                        DurableNode { kind: Kind::Dir, mode, entries: BTreeMap::new(), target: None },
                    );
                    import(backing, meta, &entry.path(), child);
                    meta.nodes.get_mut(&id).unwrap().entries.insert(name, child);
                    continue;
                } else {
                    fs::copy(entry.path(), data_path(backing, child)).unwrap();
                    DurableNode { kind: Kind::File, mode, entries: BTreeMap::new(), target: None }
                };
                meta.nodes.insert(child, node);
                meta.nodes.get_mut(&id).unwrap().entries.insert(name, child);
            }
        }
        if let Some(source) = source {
            import(backing, &mut meta, source, ROOT);
        }
        write_meta(backing, &meta).unwrap();
    }

    /// Mounts the disk at `backing` on `mountpoint`: what was durable, nothing else.
    pub fn mount(backing: &Path, mountpoint: &Path) -> std::io::Result<Mounted> {
        let state = load(backing)?;
        let control = Control::default();
        let fs = FaultFs { state: Mutex::new(state), control: control.clone() };
        let mut config = Config::default();
        config.mount_options =
            vec![MountOption::FSName("faultfs".into()), MountOption::RW, MountOption::DefaultPermissions];
        let session = fuser::spawn_mount(fs, mountpoint, &config)?;
        Ok(Mounted { session: Some(session), mountpoint: mountpoint.to_path_buf(), control })
    }
}

fn write_meta(backing: &Path, meta: &Meta) -> std::io::Result<()> {
    let temp = backing.join("meta.json.tmp");
    fs::write(&temp, serde_json::to_vec(meta).unwrap())?;
    fs::rename(temp, backing.join("meta.json"))
}

/// Reads the disk: every node reachable from the root through durable entries; forgets the rest.
fn load(backing: &Path) -> std::io::Result<State> {
    let mut meta: Meta = serde_json::from_slice(&fs::read(backing.join("meta.json"))?)?;
    let mut nodes = BTreeMap::new();
    let mut stack = vec![(ROOT, ROOT)];
    while let Some((id, parent)) = stack.pop() {
        let durable = meta.nodes[&id].clone();
        let mut node = Node::new(durable.kind, durable.mode, parent);
        match durable.kind {
            Kind::Dir => {
                for (name, &child) in &durable.entries {
                    node.entries.insert(OsString::from(name), child);
                    stack.push((child, id));
                }
            }
            Kind::Symlink => node.target = PathBuf::from(durable.target.clone().unwrap_or_default()),
            Kind::File => {
                let len = fs::metadata(data_path(backing, id)).map(|m| m.len()).unwrap_or(0);
                node.len = len;
                node.floor = len;
            }
        }
        nodes.insert(id, node);
    }
    meta.nodes.retain(|id, _| nodes.contains_key(id));
    for entry in fs::read_dir(backing.join("data"))?.flatten() {
        let id: u64 = entry.file_name().to_string_lossy().parse().unwrap_or(0);
        if !nodes.contains_key(&id) {
            fs::remove_file(entry.path())?;
        }
    }
    meta.next_id = meta.next_id.max(nodes.keys().max().copied().unwrap_or(ROOT) + 1);
    write_meta(backing, &meta)?;
    Ok(State { backing: backing.to_path_buf(), nodes, meta })
}

fn name_of(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

impl State {
    fn node(&self, id: u64) -> Result<&Node, Errno> {
        self.nodes.get(&id).ok_or(Errno::ENOENT)
    }

    fn node_mut(&mut self, id: u64) -> Result<&mut Node, Errno> {
        self.nodes.get_mut(&id).ok_or(Errno::ENOENT)
    }

    fn attr(&self, id: u64) -> Result<FileAttr, Errno> {
        let node = self.node(id)?;
        let (kind, size) = match node.kind {
            Kind::File => (FileType::RegularFile, node.len),
            Kind::Dir => (FileType::Directory, 4096),
            Kind::Symlink => (FileType::Symlink, node.target.as_os_str().len() as u64),
        };
        Ok(FileAttr {
            ino: INodeNo(id),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: (node.mode & 0o7777) as u16,
            nlink: if node.kind == Kind::Dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    /// The path of `id` as the running system sees it (for logs).
    fn path(&self, id: u64) -> String {
        let mut parts = Vec::new();
        let mut at = id;
        while at != ROOT {
            let Some(node) = self.nodes.get(&at) else { break };
            let parent = node.parent;
            match self.nodes.get(&parent).and_then(|p| p.entries.iter().find(|(_, c)| **c == at)) {
                Some((name, _)) => parts.push(name_of(name)),
                None => parts.push(format!("<unlinked {at}>")),
            }
            if parent == at {
                break;
            }
            at = parent;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// Reads what `id` holds at [offset, offset + buf.len()) now: dirty pages over the durable copy.
    fn read_into(&self, id: u64, offset: u64, buf: &mut [u8]) -> Result<(), Errno> {
        let node = self.node(id)?;
        buf.fill(0);
        let end = offset + buf.len() as u64;
        let durable_end = end.min(node.floor);
        if offset < durable_end
            && let Ok(file) = File::open(data_path(&self.backing, id))
        {
            let want = (durable_end - offset) as usize;
            let mut done = 0;
            while done < want {
                match file.read_at(&mut buf[done..want], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        for (&page, bytes) in node.dirty.range(offset / PAGE..end.div_ceil(PAGE)) {
            let page_start = page * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            buf[(from - offset) as usize..(to - offset) as usize]
                .copy_from_slice(&bytes[(from - page_start) as usize..(to - page_start) as usize]);
        }
        Ok(())
    }

    fn write(&mut self, id: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset + data.len() as u64;
        let mut page = offset / PAGE;
        while page * PAGE < end {
            let page_start = page * PAGE;
            let from = offset.max(page_start);
            let to = end.min(page_start + PAGE);
            if !self.node(id)?.dirty.contains_key(&page) {
                let mut bytes = vec![0u8; PAGE as usize].into_boxed_slice();
                if to - from < PAGE {
                    self.read_into(id, page_start, &mut bytes)?;
                    let len = self.node(id)?.len;
                    if len < page_start + PAGE {
                        bytes[len.saturating_sub(page_start) as usize..].fill(0);
                    }
                }
                self.node_mut(id)?.dirty.insert(page, bytes);
            }
            let node = self.node_mut(id)?;
            node.dirty.get_mut(&page).unwrap()[(from - page_start) as usize..(to - page_start) as usize]
                .copy_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
            page += 1;
        }
        let node = self.node_mut(id)?;
        node.len = node.len.max(end);
        node.mtime = SystemTime::now();
        Ok(())
    }

    fn truncate(&mut self, id: u64, len: u64) -> Result<(), Errno> {
        let node = self.node_mut(id)?;
        if node.kind != Kind::File {
            return Err(Errno::EISDIR);
        }
        if len < node.len {
            let first_gone = len.div_ceil(PAGE);
            node.dirty.retain(|&page, _| page < first_gone);
            if !len.is_multiple_of(PAGE)
                && let Some(bytes) = node.dirty.get_mut(&(len / PAGE))
            {
                bytes[(len % PAGE) as usize..].fill(0);
            }
            node.floor = node.floor.min(len);
        }
        node.len = len;
        node.mtime = SystemTime::now();
        Ok(())
    }

    /// Makes a file's data and length durable, or a directory's entries.
    fn sync(&mut self, id: u64) -> Result<(), Errno> {
        let kind = self.node(id)?.kind;
        match kind {
            Kind::File => {
                let path = data_path(&self.backing, id);
                let file = OpenOptions::new().write(true).create(true).truncate(false).open(&path)?;
                let node = self.nodes.get_mut(&id).unwrap();
                if file.metadata()?.len() > node.floor {
                    file.set_len(node.floor)?;
                }
                for (&page, bytes) in &node.dirty {
                    let start = page * PAGE;
                    let n = (node.len - start).min(PAGE) as usize;
                    file.write_all_at(&bytes[..n], start)?;
                }
                file.set_len(node.len)?;
                node.dirty.clear();
                node.floor = node.len;
                let mode = node.mode;
                self.meta.nodes.entry(id).and_modify(|durable| durable.mode = mode).or_insert(DurableNode {
                    kind,
                    mode,
                    entries: BTreeMap::new(),
                    target: None,
                });
            }
            Kind::Dir => {
                let node = &self.nodes[&id];
                let entries: BTreeMap<String, u64> =
                    node.entries.iter().map(|(name, &child)| (name_of(name), child)).collect();
                for &child in entries.values() {
                    let child_node = &self.nodes[&child];
                    let target = (child_node.kind == Kind::Symlink)
                        .then(|| child_node.target.to_string_lossy().into_owned());
                    let durable = self.meta.nodes.entry(child).or_insert(DurableNode {
                        kind: child_node.kind,
                        mode: child_node.mode,
                        entries: BTreeMap::new(),
                        target: None,
                    });
                    durable.mode = child_node.mode;
                    durable.target = target;
                }
                let mode = node.mode;
                let durable = self.meta.nodes.entry(id).or_insert(DurableNode {
                    kind,
                    mode,
                    entries: BTreeMap::new(),
                    target: None,
                });
                durable.entries = entries;
                durable.mode = mode;
            }
            Kind::Symlink => {}
        }
        write_meta(&self.backing, &self.meta)?;
        Ok(())
    }

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let dir = self.node(parent)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        dir.entries.get(name).copied().ok_or(Errno::ENOENT)
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        if self.lookup(parent, name).is_ok() {
            return Err(Errno::EEXIST);
        }
        self.node(parent)?;
        let id = self.meta.next_id;
        self.meta.next_id += 1;
        self.nodes.insert(id, node);
        let dir = self.node_mut(parent)?;
        dir.entries.insert(name.to_os_string(), id);
        dir.mtime = SystemTime::now();
        Ok(id)
    }

    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let id = self.lookup(parent, name)?;
        let node = self.node(id)?;
        match (dir, node.kind == Kind::Dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
        let parent_node = self.node_mut(parent)?;
        parent_node.entries.remove(name);
        parent_node.mtime = SystemTime::now();
        // The node lives on (open files, the kernel's references); it is no longer reachable.
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        let id = self.lookup(parent, name)?;
        if self.node(new_parent)?.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let existing = self.lookup(new_parent, new_name).ok();
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            let other = existing.ok_or(Errno::ENOENT)?;
            self.node_mut(parent)?.entries.insert(name.to_os_string(), other);
            self.node_mut(new_parent)?.entries.insert(new_name.to_os_string(), id);
            self.node_mut(other)?.parent = parent;
            self.node_mut(id)?.parent = new_parent;
            return Ok(());
        }
        if let Some(other) = existing {
            if other == id {
                return Ok(());
            }
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(Errno::EEXIST);
            }
            let (moving_dir, other_node) = (self.node(id)?.kind == Kind::Dir, self.node(other)?);
            match (moving_dir, other_node.kind == Kind::Dir) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !other_node.entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
        }
        self.node_mut(parent)?.entries.remove(name);
        self.node_mut(new_parent)?.entries.insert(new_name.to_os_string(), id);
        self.node_mut(id)?.parent = new_parent;
        for dir in [parent, new_parent] {
            self.node_mut(dir)?.mtime = SystemTime::now();
        }
        Ok(())
    }
}

/// The executable of the process (or thread) `pid`.
fn executable(pid: u32) -> String {
    fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

impl FaultFs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Whether the power is off (every operation fails).
    fn off(&self) -> bool {
        self.control.lock().powered_off
    }

    /// Counts `op` on `id` if the rule's processes made it; the error to fail it with, if the rule says so.
    fn inject(&self, req: &Request, op: Op, id: u64) -> Result<(), Errno> {
        let mut faults = self.control.lock();
        if faults.powered_off {
            return Err(Errno::EIO);
        }
        let Some(rule) = faults.rule.clone() else { return Ok(()) };
        if !executable(req.pid()).starts_with(&rule.exe_prefix) {
            return Ok(());
        }
        let path = stable_path(self.state().path(id));
        let count = faults.counts.entry((op, path.clone())).or_default();
        *count += 1;
        let failed = op == rule.op && path == rule.path && *count == rule.nth;
        faults.counted.push(Counted { op, path, failed });
        if failed { Err(Errno::from_i32(rule.errno)) } else { Ok(()) }
    }

    /// A durable point: after `sync`, the power goes if the test said so.
    fn durable_point(&self, req: &Request, id: u64) -> Result<(), Errno> {
        self.inject(req, Op::Fsync, id)?;
        let mut state = self.state();
        state.sync(id)?;
        let path = state.path(id);
        drop(state);
        let (lock, changed) = &*self.control.0;
        let mut faults = lock.lock().unwrap();
        faults.durable_points += 1;
        faults.points.push(format!("{} {path}", executable(req.pid())));
        if faults.cut_at == Some(faults.durable_points) {
            faults.powered_off = true;
            changed.notify_all();
        }
        Ok(())
    }

    fn entry(&self, id: Result<u64, Errno>, reply: ReplyEntry) {
        match id.and_then(|id| self.state().attr(id)) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

macro_rules! powered {
    ($self:ident, $reply:ident) => {
        if $self.off() {
            return $reply.error(Errno::EIO);
        }
    };
}

fn empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        powered!(self, reply);
        let id = self.state().lookup(parent.0, name);
        self.entry(id, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        powered!(self, reply);
        match self.state().attr(ino.0) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        powered!(self, reply);
        let mut state = self.state();
        let result = (|| {
            if let Some(size) = size {
                state.truncate(ino.0, size)?;
            }
            let node = state.node_mut(ino.0)?;
            if let Some(mode) = mode {
                node.mode = mode & 0o7777;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(time)) => node.mtime = time,
                Some(TimeOrNow::Now) => node.mtime = SystemTime::now(),
                None => {}
            }
            state.attr(ino.0)
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        powered!(self, reply);
        match self.state().node(ino.0) {
            Ok(node) => reply.data(node.target.as_os_str().as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        powered!(self, reply);
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        let id = self.state().add(parent.0, name, Node::new(Kind::File, mode & !umask & 0o7777, parent.0));
        self.entry(id, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        powered!(self, reply);
        if let Err(e) = self.inject(req, Op::Mkdir, parent.0) {
            return reply.error(e);
        }
        let id = self.state().add(parent.0, name, Node::new(Kind::Dir, mode & !umask & 0o7777, parent.0));
        self.entry(id, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        powered!(self, reply);
        empty(self.state().remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        powered!(self, reply);
        empty(self.state().remove(parent.0, name, true), reply);
    }

    fn symlink(&self, _req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        powered!(self, reply);
        let mut node = Node::new(Kind::Symlink, 0o777, parent.0);
        node.target = target.to_path_buf();
        let id = self.state().add(parent.0, link_name, node);
        self.entry(id, reply);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        powered!(self, reply);
        let moved = self.state().lookup(parent.0, name).unwrap_or(parent.0);
        if let Err(e) = self.inject(req, Op::Rename, moved) {
            return reply.error(e);
        }
        empty(self.state().rename(parent.0, name, newparent.0, newname, flags), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        powered!(self, reply);
        match self.state().node(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        powered!(self, reply);
        let state = self.state();
        let len = match state.node(ino.0) {
            Ok(node) => node.len,
            Err(e) => return reply.error(e),
        };
        let n = len.saturating_sub(offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; n];
        match state.read_into(ino.0, offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        powered!(self, reply);
        if let Err(e) = self.inject(req, Op::Write, ino.0) {
            return reply.error(e);
        }
        match self.state().write(ino.0, offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        powered!(self, reply);
        empty(self.durable_point(req, ino.0), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        powered!(self, reply);
        match self.state().node(ino.0) {
            Ok(node) if node.kind == Kind::Dir => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        powered!(self, reply);
        let state = self.state();
        let node = match state.node(ino.0) {
            Ok(node) => node,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (node.parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, &child) in &node.entries {
            let kind = match state.nodes.get(&child).map(|n| n.kind) {
                Some(Kind::Dir) => FileType::Directory,
                Some(Kind::Symlink) => FileType::Symlink,
                _ => FileType::RegularFile,
            };
            all.push((child, kind, name.clone()));
        }
        for (i, (id, kind, name)) in all.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(id), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(&self, req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        powered!(self, reply);
        empty(self.durable_point(req, ino.0), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        powered!(self, reply);
        // 64 GiB, nearly all free: the migrator's preflight asks.
        let blocks = 16 << 20;
        reply.statfs(blocks, blocks - 1024, blocks - 1024, 1 << 20, 1 << 20, PAGE as u32, 255, PAGE as u32);
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        powered!(self, reply);
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        powered!(self, reply);
        let mut state = self.state();
        let result = state
            .add(parent.0, name, Node::new(Kind::File, mode & !umask & 0o7777, parent.0))
            .and_then(|id| state.attr(id));
        match result {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }
}
