//! The keys a conversion puts on leases, noted as the v2 store is read (`etcdctl migrate` drops TTLs)
//! and read back in the same order to attach them, so the attachment needs no read of the v3 store and no
//! lookups. Each record carries what the key needs afterwards: its mod revision in v3 (`etcdctl migrate`
//! makes it the v2 modified index), the guard of its attachment; its deadline; the hash of its key and
//! value, with which the verification accounts for a key that expired meanwhile; and, for a release
//! without `ignore_value`, its value. The records live in a file in the step's work dir, not in memory:
//! a million expiring events would otherwise cost a migrator that should stay small tens of megabytes.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::StepError;
use crate::durable;
use crate::verify::PairHash;

const BUFFER: usize = 256 << 10;

/// One key to put on a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiringKey {
    pub key: Vec<u8>,
    /// The key's mod revision in v3 right after `etcdctl migrate`.
    pub mod_revision: i64,
    /// When the key must be gone, in whole seconds after the v2 read was sent ([`LeasePolicy`]).
    ///
    /// [`LeasePolicy`]: super::leases::LeasePolicy
    pub deadline: u64,
    pub pair_hash: PairHash,
    /// The value, kept only where attaching a lease must write it back.
    pub value: Option<Vec<u8>>,
}

/// Writes `<dir>/expiring.keys` while the v2 store is read.
pub struct Writer {
    file: BufWriter<File>,
    path: PathBuf,
    with_values: bool,
    count: u64,
}

/// The finished file.
pub struct ExpiringKeys {
    path: PathBuf,
    with_values: bool,
    count: u64,
}

impl Writer {
    /// `with_values`: keep each key's value (for a release without `ignore_value`).
    pub fn create(dir: &Path, with_values: bool) -> io::Result<Writer> {
        let path = dir.join("expiring.keys");
        Ok(Writer {
            file: BufWriter::with_capacity(BUFFER, durable::create_private(&path)?),
            path,
            with_values,
            count: 0,
        })
    }

    /// Notes `key` with its `value` and that pair's hash.
    pub fn push(
        &mut self,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        deadline: u64,
        pair_hash: &PairHash,
    ) -> io::Result<()> {
        write_bytes(&mut self.file, key)?;
        self.file.write_all(&mod_revision.to_le_bytes())?;
        self.file.write_all(&deadline.to_le_bytes())?;
        self.file.write_all(pair_hash)?;
        if self.with_values {
            write_bytes(&mut self.file, value)?;
        }
        self.count += 1;
        Ok(())
    }

    pub fn finish(self) -> io::Result<ExpiringKeys> {
        let Writer { file, path, with_values, count } = self;
        drop(file.into_inner().map_err(|e| e.into_error())?);
        Ok(ExpiringKeys { path, with_values, count })
    }
}

fn write_bytes(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("a key or value over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

impl ExpiringKeys {
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Every key, in the order written.
    pub fn read(&self) -> Result<impl Iterator<Item = Result<ExpiringKey, StepError>> + use<>, StepError> {
        let mut file =
            BufReader::with_capacity(BUFFER, File::open(&self.path).map_err(read_error(&self.path))?);
        let (path, with_values) = (self.path.clone(), self.with_values);
        Ok((0..self.count).map(move |_| read_one(&mut file, with_values).map_err(read_error(&path))))
    }
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> StepError + '_ {
    move |source| StepError::Io { action: "reading", path: path.to_path_buf(), source }
}

fn read_one(file: &mut impl Read, with_values: bool) -> io::Result<ExpiringKey> {
    let key = read_bytes(file)?;
    let mut word = [0u8; 8];
    file.read_exact(&mut word)?;
    let mod_revision = i64::from_le_bytes(word);
    file.read_exact(&mut word)?;
    let deadline = u64::from_le_bytes(word);
    let mut pair_hash = PairHash::default();
    file.read_exact(&mut pair_hash)?;
    let value = if with_values { Some(read_bytes(file)?) } else { None };
    Ok(ExpiringKey { key, mod_revision, deadline, pair_hash, value })
}

fn read_bytes(file: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_le_bytes(len) as usize];
    file.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::pair_hash;

    fn written(with_values: bool) -> (tempfile::TempDir, ExpiringKeys) {
        let temp = tempfile::tempdir().unwrap();
        let mut writer = Writer::create(temp.path(), with_values).unwrap();
        for i in 0..10_000u64 {
            let key = format!("/registry/events/ns/e{i}");
            let value = format!("v{i}");
            let hash = pair_hash(key.as_bytes(), value.as_bytes());
            writer.push(key.as_bytes(), value.as_bytes(), i as i64 + 7, i % 3600, &hash).unwrap();
        }
        writer
            .push(b"/registry/events/empty", b"", 3, 0, &pair_hash(b"/registry/events/empty", b""))
            .unwrap();
        let keys = writer.finish().unwrap();
        (temp, keys)
    }

    #[test]
    fn every_key_comes_back_in_order_with_its_revision_deadline_and_hash() {
        for with_values in [false, true] {
            let (_temp, keys) = written(with_values);
            assert_eq!(keys.len(), 10_001);
            let read: Vec<ExpiringKey> = keys.read().unwrap().collect::<Result<_, _>>().unwrap();
            assert_eq!(read.len(), 10_001);
            for (i, entry) in read.iter().take(10_000).enumerate() {
                let (key, value) = (format!("/registry/events/ns/e{i}"), format!("v{i}"));
                assert_eq!(entry.key, key.as_bytes());
                assert_eq!((entry.mod_revision, entry.deadline), (i as i64 + 7, i as u64 % 3600));
                assert_eq!(entry.pair_hash, pair_hash(key.as_bytes(), value.as_bytes()));
                assert_eq!(entry.value, with_values.then(|| value.into_bytes()));
            }
            assert_eq!(read[10_000].value, with_values.then(Vec::new), "an empty value is kept as empty");
        }
    }

    #[test]
    fn a_truncated_file_is_an_error_not_a_short_list() {
        let (temp, keys) = written(false);
        let path = temp.path().join("expiring.keys");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
        let last = keys.read().unwrap().last().unwrap();
        let Err(StepError::Io { source, .. }) = last else { panic!("{last:?}") };
        assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
    }
}
