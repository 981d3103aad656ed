//! etcd3 → etcd2: the storage rollback, for clusters whose API server wrote JSON.
//!
//! The v3 keys under the data prefix are read page by page (with what remains of their leases) into a
//! file in the work dir, then written through the v2 API into a fresh member of the target version built
//! in the work dir, verified (count + digest through the v2 API), and swapped in. Memory stays flat: the
//! keys pass through the file, not through a map. Revisions cannot survive this, so clients must relist.
//! Each key gets what its lease had left as its TTL; as in the logical copy, a key with less than
//! [`EXPIRY_MARGIN`](super::leases::EXPIRY_MARGIN) left is not copied, or is deleted from the copy just
//! before it is read, and counted as the source had it.

use std::time::Instant;

use tokio::task::JoinSet;
use tracing::{info, warn};

use super::dump::Dump;
use super::{Context, StepError, swap_in};
use crate::client::ClientError;
use crate::client::v2::V2Client;
use crate::client::v3::{V3Client, prefix_end};
use crate::data_dir::journal::Journal;
use crate::faults;
use crate::verify::{KeyDigest, hidden_from_v2};
use crate::version::{EtcdState, Storage, Version};

/// v2 writes in flight at once.
const CONCURRENT_WRITES: usize = 32;

pub async fn run(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
    journal: &mut Journal,
) -> Result<(), StepError> {
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let prefix = format!("{}/", ctx.config.data_prefix.trim_end_matches('/'));

    let etcd = ctx.start_healthy(source, Storage::Etcd3, ctx.data_dir.path()).await?;
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    let mut before = KeyDigest::new();
    let start = prefix.as_bytes();
    let dump = Dump::write(&client, start, &prefix_end(start), &work.join("keys.jsonl"), |kv| {
        for (bytes, what) in [(&kv.key, "key"), (&kv.value, "the value of")] {
            if std::str::from_utf8(bytes).is_err() {
                return Err(not_text(what, &kv.key));
            }
        }
        if !hidden_from_v2(&kv.key[prefix.len()..]) {
            before.add(&kv.key, &kv.value);
        }
        Ok(())
    })
    .await?;
    let before = before.finish();
    ctx.stop(etcd).await?;
    info!(from = %from, keys = before.count, digest = %before.digest, "read the v3 data");

    let rebuilt = work.join("rebuilt");
    let etcd = ctx.start_healthy(to.version, Storage::Etcd2, &rebuilt).await?;
    let v2 = V2Client::new(etcd.endpoint().clone());
    import(&v2, &dump).await?;
    faults::pause_async("rollback-imported").await;
    let expired = remove_expired(&v2, &dump, &prefix).await?;
    let mut after = KeyDigest::new();
    for leaf in v2.leaves(&prefix).await? {
        after.add(leaf.key.as_bytes(), leaf.value.as_bytes());
    }
    after.add_all(&expired);
    let after = after.finish();
    ctx.stop(etcd).await?;
    if after != before {
        return Err(StepError::Lost { before, after });
    }
    info!(
        to = %to, keys = after.count, expired = expired.count(),
        "etcd {} serves the same keys through the v2 API", to.version
    );
    warn!(
        "revisions do not survive a rollback to etcd2: restart the API servers and other watchers so they relist"
    );
    dump.remove()?;
    swap_in(ctx, journal, &rebuilt)
}

/// Writes the dump through the v2 API, a bounded number of keys at a time, each with what is left of
/// its TTL; a key whose time has (nearly) run out is left out (see [`Dump::expired`]).
async fn import(v2: &V2Client, dump: &Dump) -> Result<(), StepError> {
    let mut writes = Writes::default();
    for record in dump.records()? {
        let record = record?;
        let ttl = match record.ttl {
            Some(ttl) if dump.expired(ttl, Instant::now()) => continue,
            ttl => ttl.map(|ttl| dump.ttl_left(ttl)),
        };
        let key = String::from_utf8(record.key).map_err(|e| not_text("key", e.as_bytes()))?;
        let value = String::from_utf8(record.value).map_err(|_| not_text("the value of", key.as_bytes()))?;
        let v2 = v2.clone();
        writes.add(async move { v2.set(&key, &value, ttl).await }).await?;
    }
    writes.finish().await
}

/// Deletes from the copy every key whose time has (nearly) run out by now, which etcd may or may not
/// have expired yet; returns those the proof counts (under `prefix`, not hidden from v2) as the source
/// had them.
async fn remove_expired(v2: &V2Client, dump: &Dump, prefix: &str) -> Result<KeyDigest, StepError> {
    let now = Instant::now();
    let mut expired = KeyDigest::new();
    let mut writes = Writes::default();
    for record in dump.records()? {
        let record = record?;
        if !record.ttl.is_some_and(|ttl| dump.expired(ttl, now)) {
            continue;
        }
        if !hidden_from_v2(&record.key[prefix.len()..]) {
            expired.add(&record.key, &record.value);
        }
        let key = String::from_utf8(record.key).map_err(|e| not_text("key", e.as_bytes()))?;
        let v2 = v2.clone();
        writes.add(async move { v2.delete(&key).await }).await?;
    }
    writes.finish().await?;
    Ok(expired)
}

/// `what` (the key, or its value) of `key` is not text.
fn not_text(what: &'static str, key: &[u8]) -> StepError {
    StepError::NotText { what, key: String::from_utf8_lossy(key).into_owned() }
}

/// v2 requests on their way, at most [`CONCURRENT_WRITES`] at once.
#[derive(Default)]
struct Writes(JoinSet<Result<(), ClientError>>);

impl Writes {
    async fn add(
        &mut self,
        write: impl Future<Output = Result<(), ClientError>> + Send + 'static,
    ) -> Result<(), StepError> {
        self.0.spawn(write);
        if self.0.len() >= CONCURRENT_WRITES {
            self.complete_one().await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), StepError> {
        while !self.0.is_empty() {
            self.complete_one().await?;
        }
        Ok(())
    }

    async fn complete_one(&mut self) -> Result<(), StepError> {
        match self.0.join_next().await {
            Some(done) => Ok(done.map_err(StepError::V2Write)??),
            None => Ok(()),
        }
    }
}
