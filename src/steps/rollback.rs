//! etcd3 → etcd2: the storage rollback, for clusters whose API server wrote JSON.
//!
//! The v3 keys under the data prefix are read page by page (with what remains of their leases) into a
//! file in the work dir, then written through the v2 API into a fresh member of the target version built
//! in the work dir, verified (count + digest through the v2 API), and swapped in. Memory stays flat: the
//! keys pass through the file, not through a map. Revisions cannot survive this, so clients must relist.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::{Context, StepError, swap_in};
use crate::client::ClientError;
use crate::client::v2::V2Client;
use crate::client::v3::{V3Client, prefix_end};
use crate::journal::Journal;
use crate::verify::{KeyDigest, hidden_from_v2};
use crate::version::{EtcdState, Storage, Version};

/// v2 writes in flight at once.
const CONCURRENT_WRITES: usize = 32;

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    value: String,
    ttl: Option<i64>,
}

pub async fn run(
    ctx: &Context<'_>,
    from: EtcdState,
    source: Version,
    to: EtcdState,
    journal: &mut Journal,
) -> Result<(), StepError> {
    let work = ctx.data_dir.fresh_work_dir(journal.step.name())?;
    let records = work.join("keys.jsonl");
    let prefix = format!("{}/", ctx.config.data_prefix.trim_end_matches('/'));

    let etcd = ctx.start_healthy(source, Storage::Etcd3, ctx.data_dir.path()).await?;
    let client = V3Client::connect(etcd.endpoint().clone()).await?;
    let (before, read_at) = export(&client, &prefix, &records).await?;
    ctx.stop(etcd).await?;
    info!(from = %from, keys = before.count, digest = %before.digest, "read the v3 data");

    let rebuilt = work.join("rebuilt");
    let etcd = ctx.start_healthy(to.version, Storage::Etcd2, &rebuilt).await?;
    let v2 = V2Client::new(etcd.endpoint().clone());
    import(&v2, &records, read_at.elapsed()).await?;
    let mut after = KeyDigest::new();
    for leaf in v2.leaves(&prefix).await? {
        after.add(leaf.key.as_bytes(), leaf.value.as_bytes());
    }
    let after = after.finish();
    ctx.stop(etcd).await?;
    if after != before {
        return Err(StepError::Lost { before, after });
    }
    info!(to = %to, keys = after.count, "etcd {} serves the same keys through the v2 API", to.version);
    warn!(
        "revisions do not survive a rollback to etcd2: restart the API servers and other watchers so they relist"
    );
    std::fs::remove_file(&records).map_err(io_error(&records))?;
    swap_in(ctx, journal, &rebuilt)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StepError + '_ {
    move |source| StepError::Io { context: path.display().to_string(), source }
}

/// Writes every key under `prefix` with its lease's remaining TTL to `file`; returns the digest of what
/// the v2 API will list, and when the TTLs were read.
async fn export(
    client: &V3Client,
    prefix: &str,
    file: &Path,
) -> Result<(crate::verify::Summary, Instant), StepError> {
    let mut out = BufWriter::new(File::create(file).map_err(io_error(file))?);
    let mut digest = KeyDigest::new();
    let mut ttls: HashMap<i64, i64> = HashMap::new();
    let read_at = Instant::now();
    let start = prefix.as_bytes();
    client
        .for_each_page(start, &prefix_end(start), 1000, async |kvs| {
            for kv in kvs {
                let text = |bytes: Vec<u8>, what: &str| {
                    String::from_utf8(bytes).map_err(|e| {
                        StepError::Failed(format!(
                            "{what} {:?} is not UTF-8 text (protobuf?): the v2 API stores text only; nothing was changed",
                            String::from_utf8_lossy(e.as_bytes())
                        ))
                    })
                };
                let key = text(kv.key, "key")?;
                let value = text(kv.value, &format!("the value of {key}"))?;
                let ttl = match kv.lease {
                    0 => None,
                    lease => Some(match ttls.get(&lease) {
                        Some(&ttl) => ttl,
                        None => {
                            let ttl = client.lease_time_to_live(lease).await?.ttl.max(1);
                            ttls.insert(lease, ttl);
                            ttl
                        }
                    }),
                };
                if !hidden_from_v2(&key.as_bytes()[prefix.len()..]) {
                    digest.add(key.as_bytes(), value.as_bytes());
                }
                serde_json::to_writer(&mut out, &Record { key, value, ttl }).map_err(|e| StepError::Failed(e.to_string()))?;
                out.write_all(b"\n").map_err(io_error(file))?;
            }
            Ok::<(), StepError>(())
        })
        .await?;
    out.flush().map_err(io_error(file))?;
    Ok((digest.finish(), read_at))
}

/// Writes the records through the v2 API, a bounded number at a time, TTLs shortened by `elapsed`.
async fn import(v2: &V2Client, file: &Path, elapsed: Duration) -> Result<(), StepError> {
    let mut writes: JoinSet<Result<(), ClientError>> = JoinSet::new();
    for line in BufReader::new(File::open(file).map_err(io_error(file))?).lines() {
        let record: Record = serde_json::from_str(&line.map_err(io_error(file))?)
            .map_err(|e| StepError::Failed(e.to_string()))?;
        let ttl = record.ttl.map(|ttl| (ttl - elapsed.as_secs() as i64).max(1));
        let v2 = v2.clone();
        writes.spawn(async move { v2.set(&record.key, &record.value, ttl).await });
        if writes.len() >= CONCURRENT_WRITES
            && let Some(done) = writes.join_next().await
        {
            done.map_err(|e| StepError::Failed(e.to_string()))??;
        }
    }
    while let Some(done) = writes.join_next().await {
        done.map_err(|e| StepError::Failed(e.to_string()))??;
    }
    Ok(())
}
