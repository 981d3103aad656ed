//! The remaining TTL of every v2 key that had one, read before `etcdctl migrate` drops them and looked up
//! key by key while leases are attached. It lives on disk, not in memory: a million expiring events would
//! otherwise cost tens of megabytes of a migrator that should stay small whatever the data.
//!
//! Keys are appended to a log as the v2 store is read (its depth-first order is not the v3 ranges' byte
//! order), then moved into an open-addressing hash table file, half full, that `get` probes with
//! positioned reads. Both files are in the step's work dir; the page cache, not our heap, holds them.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

/// A slot: the key's 128-bit hash (0: empty) and its TTL, little-endian.
const SLOT: u64 = 24;

/// Collects TTLs into `<dir>/ttls.log` while the v2 store is read.
pub struct Collector {
    log: BufWriter<File>,
    log_path: PathBuf,
    len: u64,
}

/// The finished table.
pub struct RemainingTtls {
    table: File,
    slots: u64,
    len: u64,
}

fn hash(key: &str) -> u128 {
    // 0 marks an empty slot; a key hashing to 0 is stored as 1 (a collision as unlikely as any other).
    xxh3_128(key.as_bytes()).max(1)
}

impl Collector {
    pub fn create(dir: &Path) -> io::Result<Collector> {
        let log_path = dir.join("ttls.log");
        Ok(Collector { log: BufWriter::new(File::create(&log_path)?), log_path, len: 0 })
    }

    pub fn insert(&mut self, key: &str, ttl: i64) -> io::Result<()> {
        self.log.write_all(&hash(key).to_le_bytes())?;
        self.log.write_all(&ttl.to_le_bytes())?;
        self.len += 1;
        Ok(())
    }

    /// Moves the log into the table `<dir>/ttls.table` and removes the log.
    pub fn finish(self) -> io::Result<RemainingTtls> {
        let Collector { log, log_path, len } = self;
        drop(log.into_inner().map_err(|e| e.into_error())?);
        let slots = (len * 2).max(16).next_power_of_two();
        let table_path = log_path.with_extension("table");
        let table =
            OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&table_path)?;
        table.set_len(slots * SLOT)?;
        let mut ttls = RemainingTtls { table, slots, len: 0 };
        let mut log = BufReader::new(File::open(&log_path)?);
        let mut record = [0u8; SLOT as usize];
        for _ in 0..len {
            log.read_exact(&mut record)?;
            let hash = u128::from_le_bytes(record[..16].try_into().expect("16 bytes"));
            let (slot, found) = ttls.probe(hash)?;
            ttls.table.write_all_at(&record, slot * SLOT)?;
            if !found {
                ttls.len += 1;
            }
        }
        std::fs::remove_file(&log_path)?;
        Ok(ttls)
    }
}

impl RemainingTtls {
    /// The TTL `key` had, if it had one.
    pub fn get(&self, key: &str) -> io::Result<Option<i64>> {
        let hash = hash(key);
        let (slot, found) = self.probe(hash)?;
        if !found {
            return Ok(None);
        }
        let mut ttl = [0u8; 8];
        self.table.read_exact_at(&mut ttl, slot * SLOT + 16)?;
        Ok(Some(i64::from_le_bytes(ttl)))
    }

    /// Keys with a TTL (a key listed twice counts once).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The slot holding `hash`, or the empty slot where it would go, and whether it was found. The table
    /// is at most half full, so an empty slot is always near.
    fn probe(&self, hash: u128) -> io::Result<(u64, bool)> {
        let mut slot = (hash as u64) & (self.slots - 1);
        let mut stored = [0u8; 16];
        loop {
            self.table.read_exact_at(&mut stored, slot * SLOT)?;
            match u128::from_le_bytes(stored) {
                0 => return Ok((slot, false)),
                h if h == hash => return Ok((slot, true)),
                _ => slot = (slot + 1) & (self.slots - 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_found_with_its_ttl_and_others_are_not() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let mut collector = Collector::create(dir).unwrap();
        for i in 0..20_000 {
            collector.insert(&format!("/registry/events/ns/e{i}"), i % 3600 + 1).unwrap();
        }
        collector.insert("/registry/events/ns/e7", 99).unwrap();
        let ttls = collector.finish().unwrap();
        assert_eq!(ttls.len(), 20_000, "a key read twice is one key, with its last TTL");
        assert!(!dir.join("ttls.log").exists(), "the log is gone once the table is built");
        for i in (0..20_000).filter(|&i| i != 7) {
            assert_eq!(ttls.get(&format!("/registry/events/ns/e{i}")).unwrap(), Some(i % 3600 + 1));
        }
        assert_eq!(ttls.get("/registry/events/ns/e7").unwrap(), Some(99));
        for missing in ["/registry/events/ns/e20000", "/registry/pods/p", ""] {
            assert_eq!(ttls.get(missing).unwrap(), None, "{missing}");
        }
    }

    #[test]
    fn an_empty_table_answers_none() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        let ttls = Collector::create(dir).unwrap().finish().unwrap();
        assert_eq!(ttls.len(), 0);
        assert_eq!(ttls.get("/registry/events/x").unwrap(), None);
    }
}
