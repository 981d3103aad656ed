//! A read-only reader of etcd's write-ahead log (`member/wal/*.wal`), as far as the seal before 3.7
//! needs it: which raft entries etcd will replay past the snapshot it loads, and whether any of them
//! still carries a v2 request.
//!
//! etcd 3.5 proposes member attributes and the cluster version as v2 `PUT` requests; 3.6 still applies
//! those, while 3.7 parses every normal entry as a v3 `InternalRaftRequest`, whose field 2 (`v2`) it
//! reserves, and panics on them ("unmarshal should never fail"). A member of a cluster keeps such
//! entries past its last snapshot long after its own seal before 3.6 (its peers proposed them while
//! they still ran 3.5), so the seal before 3.7 forces a snapshot and then proves, here, that none is
//! left to replay.
//!
//! The format (etcd's `server/storage/wal`): files named `<seq>-<index>.wal` (hex), read in name order;
//! each record is a little-endian u64 length (the top bit set when padding follows, the padding's size in
//! the low 3 bits of the top byte) and a `walpb.Record` { type, crc, data }. Entry records hold a
//! `raftpb.Entry`, snapshot records a `walpb.Snapshot`. A later entry at an index replaces an earlier one
//! (a new leader's log wins). A zero length ends a file (preallocated space), and so does a record cut
//! short by the file's end. Record CRCs are not checked: the seal reads a WAL its own etcd wrote and
//! stopped cleanly, and a record torn by a crash can only fail the check (the seal is then redone), as
//! etcd drops such a record when it repairs the WAL.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use prost::Message;

const ENTRY_RECORD: i64 = 2;
const SNAPSHOT_RECORD: i64 = 5;
const ENTRY_NORMAL: i32 = 0;
const LENGTH_MASK: u64 = !(0xff << 56);

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("reading {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: record at byte {offset} is not a WAL record: {source}")]
    Corrupt { path: PathBuf, offset: usize, source: prost::DecodeError },
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(int64, tag = "1")]
    kind: i64,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct Snapshot {
    #[prost(uint64, tag = "1")]
    index: u64,
}

#[derive(Clone, PartialEq, Message)]
struct Entry {
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

/// The one field of etcd's `InternalRaftRequest` this reader looks at: `v2` (field 2), reserved from 3.7.
/// A raw v2 `Request` (what 3.5 proposes for membership) decodes with its method in that field, or not
/// at all.
#[derive(Clone, PartialEq, Message)]
struct RaftRequest {
    #[prost(bytes = "vec", optional, tag = "2")]
    v2: Option<Vec<u8>>,
}

/// What etcd would replay from a data dir's WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// The index of the newest snapshot recorded in the WAL that has its `.snap` file: where etcd starts.
    pub snapshot: u64,
    /// How many entries lie past it.
    pub entries: usize,
    /// The indexes of those that carry a v2 request (or are not a v3 request at all).
    pub v2_requests: Vec<u64>,
}

/// Reads `member/wal` and `member/snap` of the member dir `member`.
pub fn replay(member: &Path) -> Result<Replay, WalError> {
    let snap_files = snapshot_files(&member.join("snap"))?;
    let mut snapshot = 0;
    let mut entries = BTreeMap::new();
    for path in wal_files(&member.join("wal"))? {
        let bytes = fs::read(&path).map_err(|source| WalError::Io { path: path.clone(), source })?;
        for (offset, record) in records(&bytes) {
            let record = Record::decode(record).map_err(|source| WalError::Corrupt {
                path: path.clone(),
                offset,
                source,
            })?;
            let corrupt = |source| WalError::Corrupt { path: path.clone(), offset, source };
            match record.kind {
                SNAPSHOT_RECORD => {
                    let index = Snapshot::decode(&record.data[..]).map_err(corrupt)?.index;
                    if snap_files.contains(&index) {
                        snapshot = snapshot.max(index);
                    }
                }
                ENTRY_RECORD => {
                    let entry = Entry::decode(&record.data[..]).map_err(corrupt)?;
                    entries.split_off(&entry.index);
                    entries.insert(entry.index, entry);
                }
                _ => {}
            }
        }
    }
    let past: Vec<&Entry> = entries.range(snapshot + 1..).map(|(_, entry)| entry).collect();
    let v2_requests =
        past.iter().filter(|entry| carries_v2_request(entry)).map(|entry| entry.index).collect();
    Ok(Replay { snapshot, entries: past.len(), v2_requests })
}

fn carries_v2_request(entry: &Entry) -> bool {
    entry.kind == ENTRY_NORMAL
        && !entry.data.is_empty()
        && RaftRequest::decode(&entry.data[..]).map_or(true, |request| request.v2.is_some())
}

/// The records of one WAL file with their byte offsets, up to its end, its zeroed tail, or a torn record.
fn records(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let frame: [u8; 8] = bytes.get(offset..offset + 8)?.try_into().ok()?;
        let frame = u64::from_le_bytes(frame);
        let length = usize::try_from(frame & LENGTH_MASK).ok().filter(|&length| length > 0)?;
        let padding = if frame >> 63 == 1 { ((frame >> 56) & 0x7) as usize } else { 0 };
        let start = offset + 8;
        let record = bytes.get(start..start.checked_add(length)?)?;
        let at = offset;
        offset = start + length + padding;
        Some((at, record))
    })
}

fn wal_files(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let mut files = list(dir)?;
    files.retain(|path| path.extension().is_some_and(|ext| ext == "wal"));
    files.sort();
    Ok(files)
}

/// The indexes of the `<term>-<index>.snap` files in `dir` (none if there is no such dir).
fn snapshot_files(dir: &Path) -> Result<Vec<u64>, WalError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(list(dir)?
        .iter()
        .filter_map(|path| path.file_name()?.to_str()?.strip_suffix(".snap")?.split_once('-'))
        .filter_map(|(_, index)| u64::from_str_radix(index, 16).ok())
        .collect())
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, WalError> {
    let io = |source| WalError::Io { path: dir.to_path_buf(), source };
    fs::read_dir(dir).map_err(io)?.map(|entry| entry.map(|e| e.path()).map_err(io)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(kind: i64, data: Vec<u8>, padding: usize) -> Vec<u8> {
        let record = Record { kind, data }.encode_to_vec();
        let mut frame = record.len() as u64;
        if padding > 0 {
            frame |= (0x80 | padding as u64) << 56;
        }
        let mut bytes = frame.to_le_bytes().to_vec();
        bytes.extend(record);
        bytes.extend(vec![0; padding]);
        bytes
    }

    fn entry(index: u64, data: Vec<u8>) -> Vec<u8> {
        framed(ENTRY_RECORD, Entry { kind: ENTRY_NORMAL, index, data }.encode_to_vec(), 3)
    }

    /// etcd 3.5's raw v2 request: ID (1), Method (2), Path (3).
    fn v2_put(id: u64) -> Vec<u8> {
        let mut bytes = vec![0x08, id as u8, 0x12, 3];
        bytes.extend(b"PUT");
        bytes.extend([0x1a, 13]);
        bytes.extend(b"/0/version/x/");
        bytes
    }

    /// A v3 request: ID (1) and a header (100) holding its own ID.
    fn v3_request() -> Vec<u8> {
        vec![0x08, 7, 0xa2, 0x06, 2, 0x08, 7]
    }

    fn member_with(wal: &[u8], snaps: &[u64]) -> tempfile::TempDir {
        let member = tempfile::tempdir().unwrap();
        fs::create_dir_all(member.path().join("wal")).unwrap();
        fs::create_dir_all(member.path().join("snap")).unwrap();
        fs::write(member.path().join("wal/0000000000000000-0000000000000000.wal"), wal).unwrap();
        for index in snaps {
            fs::write(member.path().join(format!("snap/0000000000000002-{index:016x}.snap")), b"").unwrap();
        }
        member
    }

    #[test]
    fn finds_v2_requests_past_the_newest_snapshot_with_its_file() {
        let mut wal = Vec::new();
        for index in 1..=3 {
            wal.extend(entry(index, v2_put(index as u8 as u64)));
        }
        wal.extend(entry(4, v3_request()));
        wal.extend(entry(5, Vec::new()));
        wal.extend(framed(SNAPSHOT_RECORD, Snapshot { index: 2 }.encode_to_vec(), 0));
        wal.extend(entry(6, v2_put(6)));
        wal.extend(framed(SNAPSHOT_RECORD, Snapshot { index: 6 }.encode_to_vec(), 0));
        wal.extend([0; 64]);
        let member = member_with(&wal, &[2]);
        assert_eq!(
            replay(member.path()).unwrap(),
            Replay { snapshot: 2, entries: 4, v2_requests: vec![3, 6] }
        );

        // With the snapshot at 6 on disk too, nothing is left to replay.
        let member = member_with(&wal, &[2, 6]);
        assert_eq!(replay(member.path()).unwrap(), Replay { snapshot: 6, entries: 0, v2_requests: vec![] });
    }

    #[test]
    fn a_later_entry_replaces_the_log_from_its_index_and_a_torn_tail_ends_it() {
        let mut wal = Vec::new();
        wal.extend(entry(1, v3_request()));
        wal.extend(entry(2, v2_put(2)));
        wal.extend(entry(3, v2_put(3)));
        wal.extend(entry(2, v3_request()));
        let torn = entry(3, v2_put(3));
        wal.extend(&torn[..torn.len() - 4]);
        let member = member_with(&wal, &[]);
        assert_eq!(replay(member.path()).unwrap(), Replay { snapshot: 0, entries: 2, v2_requests: vec![] });
    }
}
