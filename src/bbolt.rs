//! A minimal read-only reader of bbolt files, for etcd's `member/snap/db`.
//!
//! etcd records the cluster version it last ran at in bucket `cluster`, key `clusterVersion`. Reading it
//! here, without etcd and without the file's lock (etcd may be running and holding it), lets the migrator
//! cross-check `version.txt` against the data itself. Only what that needs is implemented: the meta pages,
//! branch and leaf pages, overflow, and inline buckets; every offset is bounds-checked, so a damaged
//! file is an error, never a panic or an endless walk.
//!
//! bbolt writes its pages in the byte order of the machine that wrote them: a db from s390x is
//! big-endian. The order is read from the first meta page's magic, and every number is read in it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::version::Version;

const MAGIC: u32 = 0xED0C_DAED;
const FORMAT_VERSION: u32 = 2;
const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH_PAGE: u16 = 0x01;
const LEAF_PAGE: u16 = 0x02;
const META_PAGE: u16 = 0x04;
const BUCKET_LEAF: u32 = 0x01;
const BUCKET_HEADER: usize = 16;
/// Deeper than any real tree (bbolt's fill factor gives depth ~log_50 of the key count).
const MAX_DEPTH: usize = 64;
const MAX_PAGE_SIZE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BboltError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a bbolt database or is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

/// The byte order of the machine that wrote the file.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ByteOrder {
    Little,
    Big,
}

impl ByteOrder {
    /// The order in which `magic`'s four bytes spell bbolt's magic number, if either does.
    fn of_magic(magic: [u8; 4]) -> Option<ByteOrder> {
        if u32::from_le_bytes(magic) == MAGIC {
            Some(ByteOrder::Little)
        } else if u32::from_be_bytes(magic) == MAGIC {
            Some(ByteOrder::Big)
        } else {
            None
        }
    }

    /// The `N` bytes at `at` as a number in this order; 0 past the end (the callers bounds-check).
    fn number<const N: usize>(self, bytes: &[u8], at: usize) -> u64 {
        let Some(field) = at.checked_add(N).and_then(|end| bytes.get(at..end)) else { return 0 };
        let fold = |value: u64, &byte: &u8| value << 8 | byte as u64;
        match self {
            ByteOrder::Big => field.iter().fold(0, fold),
            ByteOrder::Little => field.iter().rev().fold(0, fold),
        }
    }

    fn u16_at(self, bytes: &[u8], at: usize) -> u16 {
        self.number::<2>(bytes, at) as u16
    }

    fn u32_at(self, bytes: &[u8], at: usize) -> u32 {
        self.number::<4>(bytes, at) as u32
    }

    fn u64_at(self, bytes: &[u8], at: usize) -> u64 {
        self.number::<8>(bytes, at)
    }
}

/// An open database: the file, its byte order and the root of its newest valid transaction.
struct Db {
    file: File,
    path: PathBuf,
    order: ByteOrder,
    page_size: usize,
    page_count: u64,
    root: u64,
}

/// A page's bytes (including overflow pages) or an inline bucket's page, and the file's byte order.
struct Page {
    bytes: Vec<u8>,
    order: ByteOrder,
}

/// Where a bucket's tree starts.
enum Root {
    Page(u64),
    Inline(Page),
}

impl Db {
    fn open(path: &Path) -> Result<Db, BboltError> {
        let file = File::open(path).map_err(|source| BboltError::Io { path: path.to_path_buf(), source })?;
        let len =
            file.metadata().map_err(|source| BboltError::Io { path: path.to_path_buf(), source })?.len();
        let mut db = Db {
            file,
            path: path.to_path_buf(),
            order: ByteOrder::Little,
            page_size: 4096,
            page_count: 0,
            root: 0,
        };
        let mut first = vec![0u8; PAGE_HEADER + 64];
        db.read_at(&mut first, 0)?;
        // The first meta page's magic gives the order; when it is damaged, the second's (at bbolt's
        // default page size, as bbolt itself looks for it).
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&first[PAGE_HEADER..PAGE_HEADER + 4]);
        let mut order = ByteOrder::of_magic(magic);
        if order.is_none() && db.read_at(&mut magic, 4096 + PAGE_HEADER as u64).is_ok() {
            order = ByteOrder::of_magic(magic);
        }
        db.order = order.ok_or_else(|| db.corrupt("neither meta page has bbolt's magic".into()))?;
        let page_size = db.order.u32_at(&first, PAGE_HEADER + 8) as usize;
        if !(512..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(db.corrupt(format!("page size {page_size}")));
        }
        db.page_size = page_size;
        db.page_count = len / page_size as u64;
        let metas = [db.meta(0), db.meta(1)];
        let best = metas.iter().filter_map(|m| m.as_ref().ok()).max_by_key(|(txid, _)| *txid);
        match best {
            Some(&(_, root)) => {
                db.root = root;
                Ok(db)
            }
            None => Err(metas.into_iter().find_map(Result::err).expect("no valid meta means an error")),
        }
    }

    /// The (txid, root pgid) of meta page `id`, if it is valid.
    fn meta(&self, id: u64) -> Result<(u64, u64), BboltError> {
        let mut page = vec![0u8; PAGE_HEADER + 64];
        self.read_at(&mut page, id * self.page_size as u64)?;
        let meta = &page[PAGE_HEADER..];
        let order = self.order;
        if order.u16_at(&page, 8) & META_PAGE == 0
            || order.u32_at(meta, 0) != MAGIC
            || order.u32_at(meta, 4) != FORMAT_VERSION
        {
            return Err(self.corrupt(format!("meta page {id} has no bbolt magic")));
        }
        if fnv64a(&meta[..56]) != order.u64_at(meta, 56) {
            return Err(self.corrupt(format!("meta page {id} fails its checksum")));
        }
        Ok((order.u64_at(meta, 48), order.u64_at(meta, 16)))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), BboltError> {
        self.file.read_exact_at(buf, offset).map_err(|source| match source.kind() {
            std::io::ErrorKind::UnexpectedEof => self.corrupt(format!("truncated at offset {offset}")),
            _ => BboltError::Io { path: self.path.clone(), source },
        })
    }

    fn corrupt(&self, reason: String) -> BboltError {
        BboltError::Corrupt { path: self.path.clone(), reason }
    }

    fn page(&self, id: u64) -> Result<Page, BboltError> {
        let (offset, _, span) = self.page_span(id)?;
        let mut bytes = vec![0u8; span];
        self.read_at(&mut bytes, offset)?;
        Ok(Page { bytes, order: self.order })
    }

    /// Page `id`'s header and element headers only: all [`Db::count`] reads, so counting a bucket does
    /// not read the keys and values (a db of large values is mostly overflow pages).
    fn element_headers(&self, id: u64) -> Result<Page, BboltError> {
        let (offset, header, span) = self.page_span(id)?;
        let count = self.order.u16_at(&header, 10) as usize;
        let len = PAGE_HEADER + count * ELEMENT;
        if len > span {
            return Err(self.corrupt(format!("page claims {count} elements")));
        }
        let mut bytes = vec![0u8; len];
        self.read_at(&mut bytes, offset)?;
        Ok(Page { bytes, order: self.order })
    }

    /// Where page `id` starts, its header, and its length with its overflow pages.
    fn page_span(&self, id: u64) -> Result<(u64, [u8; PAGE_HEADER], usize), BboltError> {
        if id < 2 || id >= self.page_count {
            return Err(self.corrupt(format!("page {id} out of range")));
        }
        let offset = id * self.page_size as u64;
        let mut header = [0u8; PAGE_HEADER];
        self.read_at(&mut header, offset)?;
        let pages = 1 + self.order.u32_at(&header, 12) as u64;
        if id + pages > self.page_count {
            return Err(self.corrupt(format!("page {id} overflows the file")));
        }
        Ok((offset, header, pages as usize * self.page_size))
    }

    fn root_page(&self, root: &Root) -> Result<Page, BboltError> {
        match root {
            Root::Page(id) => self.page(*id),
            Root::Inline(page) => Ok(Page { bytes: page.bytes.clone(), order: page.order }),
        }
    }

    /// The value of `key` in the tree at `root`, with its leaf flags.
    fn get(&self, root: &Root, key: &[u8]) -> Result<Option<(u32, Vec<u8>)>, BboltError> {
        let mut page = self.root_page(root)?;
        for _ in 0..MAX_DEPTH {
            let elements = page.elements(self)?;
            if page.flags() & LEAF_PAGE != 0 {
                for element in elements {
                    if page.key(self, element)? == key {
                        return Ok(Some((page.leaf_flags(element), page.value(self, element)?.to_vec())));
                    }
                }
                return Ok(None);
            }
            if page.flags() & BRANCH_PAGE == 0 {
                return Err(self.corrupt(format!("page of kind {:#x} in a tree", page.flags())));
            }
            // The child to descend into is the last whose first key is <= key.
            let mut child = None;
            for element in elements {
                if page.key(self, element)? <= key || child.is_none() {
                    child = Some(page.child(element));
                } else {
                    break;
                }
            }
            match child {
                Some(id) => page = self.page(id)?,
                None => return Ok(None),
            }
        }
        Err(self.corrupt("tree deeper than any real one".into()))
    }

    /// Counts the non-bucket entries in the tree at `root`.
    fn count(&self, root: &Root) -> Result<u64, BboltError> {
        let root = match root {
            Root::Page(id) => self.element_headers(*id)?,
            Root::Inline(page) => Page { bytes: page.bytes.clone(), order: page.order },
        };
        let mut stack = vec![(root, 0usize)];
        let mut count = 0u64;
        let mut visited = 0u64;
        while let Some((page, depth)) = stack.pop() {
            visited += 1;
            if depth > MAX_DEPTH || visited > self.page_count + 1 {
                return Err(self.corrupt("tree walk does not end".into()));
            }
            let elements = page.elements(self)?;
            if page.flags() & LEAF_PAGE != 0 {
                count += elements.filter(|&e| page.leaf_flags(e) & BUCKET_LEAF == 0).count() as u64;
            } else if page.flags() & BRANCH_PAGE != 0 {
                for element in elements {
                    stack.push((self.element_headers(page.child(element))?, depth + 1));
                }
            } else {
                return Err(self.corrupt(format!("page of kind {:#x} in a tree", page.flags())));
            }
        }
        Ok(count)
    }

    /// The root of top-level bucket `name`.
    fn bucket(&self, name: &[u8]) -> Result<Option<Root>, BboltError> {
        let Some((flags, value)) = self.get(&Root::Page(self.root), name)? else { return Ok(None) };
        if flags & BUCKET_LEAF == 0 || value.len() < BUCKET_HEADER {
            return Err(self.corrupt(format!("{} is not a bucket", String::from_utf8_lossy(name))));
        }
        match self.order.u64_at(&value, 0) {
            0 => Ok(Some(Root::Inline(Page { bytes: value[BUCKET_HEADER..].to_vec(), order: self.order }))),
            id => Ok(Some(Root::Page(id))),
        }
    }
}

impl Page {
    fn flags(&self) -> u16 {
        self.order.u16_at(&self.bytes, 8)
    }

    /// Offsets of this page's elements, checked to lie within it.
    fn elements(&self, db: &Db) -> Result<impl Iterator<Item = usize>, BboltError> {
        let count = self.order.u16_at(&self.bytes, 10) as usize;
        if PAGE_HEADER + count * ELEMENT > self.bytes.len() {
            return Err(db.corrupt(format!("page claims {count} elements")));
        }
        Ok((0..count).map(|i| PAGE_HEADER + i * ELEMENT))
    }

    fn slice(&self, db: &Db, start: usize, len: usize) -> Result<&[u8], BboltError> {
        start
            .checked_add(len)
            .and_then(|end| self.bytes.get(start..end))
            .ok_or_else(|| db.corrupt(format!("element data at {start}+{len} lies outside its page")))
    }

    /// Branch elements: pos, ksize, pgid. Leaf elements: flags, pos, ksize, vsize. `pos` counts from the
    /// element itself.
    fn key(&self, db: &Db, element: usize) -> Result<&[u8], BboltError> {
        let order = self.order;
        let (pos, ksize) = if self.flags() & LEAF_PAGE != 0 {
            (order.u32_at(&self.bytes, element + 4), order.u32_at(&self.bytes, element + 8))
        } else {
            (order.u32_at(&self.bytes, element), order.u32_at(&self.bytes, element + 4))
        };
        self.slice(db, element + pos as usize, ksize as usize)
    }

    fn value(&self, db: &Db, element: usize) -> Result<&[u8], BboltError> {
        let order = self.order;
        let pos = order.u32_at(&self.bytes, element + 4) as usize;
        let ksize = order.u32_at(&self.bytes, element + 8) as usize;
        let vsize = order.u32_at(&self.bytes, element + 12) as usize;
        self.slice(db, element + pos + ksize, vsize)
    }

    fn leaf_flags(&self, element: usize) -> u32 {
        self.order.u32_at(&self.bytes, element)
    }

    fn child(&self, element: usize) -> u64 {
        self.order.u64_at(&self.bytes, element + 8)
    }
}

fn fnv64a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The value of `key` in top-level bucket `bucket`; `None` if either is absent.
pub fn read_value(db: &Path, bucket: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>, BboltError> {
    let db = Db::open(db)?;
    let Some(root) = db.bucket(bucket)? else { return Ok(None) };
    Ok(db.get(&root, key)?.map(|(_, value)| value))
}

/// The number of keys in top-level bucket `bucket` (0 if it is absent).
pub fn count_keys(db: &Path, bucket: &[u8]) -> Result<u64, BboltError> {
    let db = Db::open(db)?;
    match db.bucket(bucket)? {
        Some(root) => db.count(&root),
        None => Ok(0),
    }
}

/// The cluster version etcd last ran the data at (`3.4.0`), from bucket `cluster`, key `clusterVersion`.
pub fn cluster_version(db: &Path) -> Result<Option<Version>, BboltError> {
    let Some(value) = read_value(db, b"cluster", b"clusterVersion")? else { return Ok(None) };
    let text = String::from_utf8_lossy(&value);
    text.parse().map(Some).map_err(|_| BboltError::Corrupt {
        path: db.to_path_buf(),
        reason: format!("clusterVersion is {text:?}, not X.Y.Z"),
    })
}

/// The target of the downgrade job recorded in bucket `cluster`, key `downgrade` (3.5 and later), if
/// one is enabled: a member newer than that target is refused while it is.
pub fn downgrade_target(db: &Path) -> Result<Option<Version>, BboltError> {
    #[derive(serde::Deserialize)]
    struct Downgrade {
        #[serde(rename = "target-version", default)]
        target_version: String,
        #[serde(default)]
        enabled: bool,
    }
    let Some(value) = read_value(db, b"cluster", b"downgrade")? else { return Ok(None) };
    let corrupt = |reason: String| BboltError::Corrupt { path: db.to_path_buf(), reason };
    let job: Downgrade = serde_json::from_slice(&value)
        .map_err(|e| corrupt(format!("the downgrade record is unreadable: {e}")))?;
    if !job.enabled {
        return Ok(None);
    }
    let target = job
        .target_version
        .parse()
        .map_err(|_| corrupt(format!("the downgrade target is {:?}, not X.Y.Z", job.target_version)))?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A real `member/snap/db` written by etcd 3.5.16; `tests/fixtures/README.md` says how it was made.
    const REAL_DB: &[u8] = include_bytes!("../tests/fixtures/etcd-3.5.16.db");
    /// The fixture's puts: one revision each in bucket `key`.
    const REAL_REVISIONS: u64 = 151;

    fn write_db(bytes: &[u8]) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), bytes).unwrap();
        file
    }

    /// Reads `db` as the migrator does; any error must be `Corrupt`, since the file itself is readable.
    fn read_as_the_migrator_does(bytes: &[u8]) {
        let db = write_db(bytes);
        for result in [cluster_version(db.path()).map(drop), count_keys(db.path(), b"key").map(drop)] {
            if let Err(err) = result {
                assert!(matches!(err, BboltError::Corrupt { .. }), "{err}");
            }
        }
    }

    #[test]
    fn reads_a_real_etcd_db() {
        let db = write_db(REAL_DB);
        assert_eq!(cluster_version(db.path()).unwrap(), Some("3.5.0".parse().unwrap()));
        assert_eq!(count_keys(db.path(), b"key").unwrap(), REAL_REVISIONS);
        assert_eq!(count_keys(db.path(), b"no-such-bucket").unwrap(), 0);
    }

    /// The same puts by etcd 3.5.30 on s390x (under qemu): bbolt wrote it big-endian.
    const REAL_BIG_ENDIAN_DB: &[u8] = include_bytes!("../tests/fixtures/etcd-3.5.30-s390x.db");

    #[test]
    fn reads_a_real_big_endian_db_written_on_s390x() {
        assert_eq!(REAL_BIG_ENDIAN_DB[PAGE_HEADER..PAGE_HEADER + 4], MAGIC.to_be_bytes());
        let db = write_db(REAL_BIG_ENDIAN_DB);
        assert_eq!(cluster_version(db.path()).unwrap(), Some("3.5.0".parse().unwrap()));
        assert_eq!(count_keys(db.path(), b"key").unwrap(), REAL_REVISIONS);
        assert_eq!(downgrade_target(db.path()).unwrap(), None);
    }

    #[test]
    fn rejects_files_that_are_not_bbolt_without_panicking() {
        for (name, bytes) in [
            ("empty", Vec::new()),
            ("text", b"hello, this is not a database".repeat(400)),
            ("zeros", vec![0u8; 16384]),
        ] {
            let db = write_db(&bytes);
            let err = cluster_version(db.path()).unwrap_err();
            assert!(matches!(err, BboltError::Corrupt { .. }), "{name}: {err}");
        }
    }

    /// Anywhere in the file, or, as often, in a page's header and element table: most of the file is
    /// key and value bytes, which the reader never interprets.
    fn flip_offset() -> impl Strategy<Value = usize> {
        let pages = REAL_DB.len() / 4096;
        prop_oneof![
            0..REAL_DB.len(),
            (0..pages, 0..PAGE_HEADER + 20 * ELEMENT).prop_map(|(p, at)| p * 4096 + at)
        ]
    }

    proptest! {
        #[test]
        fn a_truncated_real_db_is_an_error_never_a_panic(len in 0..REAL_DB.len()) {
            read_as_the_migrator_does(&REAL_DB[..len]);
        }

        #[test]
        fn a_bit_flipped_real_db_is_an_error_never_a_panic(
            flips in proptest::collection::vec((flip_offset(), 0..8u8), 1..16)
        ) {
            let mut bytes = REAL_DB.to_vec();
            for (at, bit) in flips {
                bytes[at] ^= 1 << bit;
            }
            read_as_the_migrator_does(&bytes);
        }
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv64a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv64a(b"a"), 0xaf63dc4c8601ec8c);
    }
}
