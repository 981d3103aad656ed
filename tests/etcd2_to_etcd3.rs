//! etcd2 → etcd3 against real etcd: data written through 3.3.25's v2 API is converted, its TTLs become
//! leases, nothing is lost, a backup is kept, and a run killed mid-conversion recovers.

mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_migrate::backup;
use etcd_migrate::client::v2::V2Client;
use etcd_migrate::client::v3::V3Client;
use etcd_migrate::verify;
use support::*;

/// The v2 fixture: key → (value, ttl).
fn etcd2_fixture() -> BTreeMap<String, (String, Option<i64>)> {
    let mut keys = BTreeMap::new();
    for i in 0..30 {
        keys.insert(format!("/registry/pods/ns{}/pod-{i}", i % 3), (format!("{{\"pod\":{i}}}"), None));
    }
    for i in 0..20 {
        keys.insert(
            format!("/registry/events/ns{}/event-{i}", i % 2),
            (format!("{{\"event\":{i}}}"), Some(3600)),
        );
    }
    keys.insert("/registry/events/short".into(), ("soon".into(), Some(600)));
    keys.insert("/registry/masterleases/10.0.0.1".into(), ("lease".into(), Some(300)));
    keys.insert("/registry/configmaps/kube-system/ünïcødé-名前".into(), ("värde ✓".into(), None));
    keys.insert("/registry/big/one-mebibyte".into(), ("y".repeat(1 << 20), None));
    keys.insert("/registry/empty".into(), (String::new(), None));
    keys
}

const HIDDEN: &str = "/registry/_hidden/secret";

fn write_etcd2_data(data: &std::path::Path, peer: &str, keys: &BTreeMap<String, (String, Option<i64>)>) {
    let etcd = TestEtcd::start_with("3.3.25", data, "m", peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    block_on(async {
        for (key, (value, ttl)) in keys {
            client.set(key, value, *ttl).await.unwrap();
        }
        client.set(HIDDEN, "hidden value", None).await.unwrap();
    });
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.3.25/etcd2\n").unwrap();
}

/// Checks the converted data dir: every key and value in v3, TTL keys on leases no longer than their TTL
/// (and the cap), other keys on none, and no v2 copy left under the prefix.
fn check_converted(data: &std::path::Path, peer: &str, keys: &BTreeMap<String, (String, Option<i64>)>) {
    assert_eq!(version_txt(data), "3.5.16/etcd3");
    let etcd = TestEtcd::start_with("3.5.16", data, "m", peer, &["--enable-v2=true"]);
    let found = etcd.all_keys();
    for (key, (value, _)) in keys {
        assert_eq!(found.get(key).map(|v| v.as_slice()), Some(value.as_bytes()), "{key}");
    }
    // Neither the v2 API nor `etcdctl migrate` sees keys under a `_` segment (Kubernetes never writes
    // them): they stay behind in the backup, and the README says so.
    assert_eq!(found.get(HIDDEN), None);
    assert_eq!(found.len(), keys.len(), "nothing else appeared");
    assert_leases_match_ttls(&etcd, keys);
    let v2_left = block_on(V2Client::new(etcd.endpoint()).leaves("/registry")).unwrap();
    assert!(v2_left.is_empty(), "the stale v2 copy is gone: {v2_left:?}");
}

#[test]
fn converts_etcd2_data_to_etcd3_with_leases_and_a_verified_backup() {
    let dir = TempDir::new("etcd2");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let keys = etcd2_fixture();
    write_etcd2_data(&data, &peer, &keys);

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    for line in ["convert-to-etcd3 starting", "leases attached", "removed the stale v2 copy", "in-place done"]
    {
        assert!(log.contains(line), "log lacks {line:?}");
    }
    check_converted(&data, &peer, &keys);

    let backups: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data-backup-3.3.25-etcd2-"))
        .collect();
    assert_eq!(backups.len(), 1, "one backup, before the conversion (the first step)");
    let backup = backup::verify(&backups[0].path()).expect("the backup verifies against its manifest");
    assert_eq!(std::fs::read_to_string(backup.path.join("version.txt")).unwrap(), "3.3.25/etcd2\n");
    // The backup is a faithful copy: etcd 3.3.25 serves the v2 data from it.
    let restored = dir.join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::rename(backup.path.join("member"), restored.join("member")).unwrap();
    let etcd = TestEtcd::start_with("3.3.25", &restored, "m", &peer, &[]);
    let v2 = block_on(V2Client::new(etcd.endpoint()).leaves("/registry")).unwrap();
    assert_eq!(v2.len(), keys.len());
    assert!(v2.iter().all(|leaf| keys[&leaf.key].0 == leaf.value));
}

#[test]
fn a_run_killed_right_after_etcdctl_migrate_recovers_from_the_backup() {
    let dir = TempDir::new("etcd2-kill");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let keys = etcd2_fixture();
    write_etcd2_data(&data, &peer, &keys);

    let migrator = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]);
    assert!(Pause::at("etcdctl-migrate-done").kill_there(migrator), "the run reached etcdctl migrate");
    assert_eq!(version_txt(&data), "3.3.25/etcd2", "version.txt still names the last completed step");
    assert!(data.join(".etcd-migrate/journal.json").exists(), "the unfinished conversion is recorded");
    let backup = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("data-backup-3.3.25-etcd2-"))
        .expect("the backup before the conversion")
        .path();
    assert_sparse_wal(&backup);

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("restored the data from before the unfinished conversion"));
    check_converted(&data, &peer, &keys);
    assert!(!data.join(".etcd-migrate/journal.json").exists());
}

/// The restore above is from a sparse backup: each WAL segment etcd preallocated (64 MB, a few kB of
/// records) has its unwritten part as a hole in the backup.
fn assert_sparse_wal(backup: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let segments: Vec<_> = std::fs::read_dir(backup.join("member/wal")).unwrap().flatten().collect();
    assert!(!segments.is_empty());
    for segment in segments {
        let meta = segment.metadata().unwrap();
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{}: {} of {} bytes allocated",
            segment.path().display(),
            meta.blocks() * 512,
            meta.len()
        );
    }
}

/// A Kubernetes cluster's events expire all the time, while it converts too: a key read from v2 whose
/// time is up before its lease is attached is deleted, and a key etcd expires meanwhile is not taken
/// for a lost one. Before, either failed the conversion's proof on every attempt.
#[test]
fn keys_whose_time_runs_out_during_the_conversion_are_gone_and_the_rest_is_kept() {
    const TTL: u64 = 20;
    let dir = TempDir::new("etcd2-expiring");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let keys = etcd2_fixture();
    let mut with_soon = keys.clone();
    for i in 0..5 {
        with_soon
            .insert(format!("/registry/events/soon-{i}"), (format!("{{\"soon\":{i}}}"), Some(TTL as i64)));
    }
    write_etcd2_data(&data, &peer, &with_soon);
    let written = Instant::now();

    let mut migrator = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]);
    migrator.command.stderr(Stdio::piped());
    // Held after the v2 read until the keys' time is up, so that etcd expires them from the v2 store
    // before `etcdctl migrate` copies it (or, if its next expiry sweep comes too late for that, the
    // conversion deletes them rather than put them on a lease).
    let pause = Pause::at("v2-data-read");
    let child = pause.spawn_paused(migrator);
    while written.elapsed() < Duration::from_secs(TTL + 2) {
        std::thread::sleep(Duration::from_millis(100));
    }
    pause.release();
    let output = child.wait_with_output();
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    let line = |marker: &str| log.lines().find(|line| line.contains(marker)).unwrap_or_default().to_string();
    assert!(
        line("read the v2 data").contains(&format!("keys={}", with_soon.len())),
        "the short-lived keys were read alive: {log}"
    );
    assert!(line("leases attached").contains("expired=5"), "{log}");
    check_converted(&data, &peer, &keys);
}

#[test]
fn converts_100k_ttl_keys() {
    const COUNT: usize = 100_000;
    let dir = TempDir::new("etcd2-100k");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    block_on(async {
        let writers: Vec<_> = (0..16)
            .map(|w| {
                let client = client.clone();
                tokio::spawn(async move {
                    for i in (w..COUNT).step_by(16) {
                        client.set(&format!("/registry/events/ns/e{i:06}"), "{}", Some(3600)).await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
    });
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.3.25/etcd2").unwrap();

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.4.23", "--migrate-only", "--health-timeout", "10m"])
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    let etcd = TestEtcd::start_with("3.4.23", &data, "m", &peer, &[]);
    let (summary, leases) = block_on(async {
        let client = V3Client::connect(etcd.endpoint()).await.unwrap();
        let summary = verify::v3_summary(&client, "/registry/events/", false, None).await.unwrap();
        let mut leases = Vec::new();
        for id in client.lease_ids().await.unwrap() {
            leases.push(lease_info(&etcd.endpoint(), id).await);
        }
        (summary, leases)
    });
    assert_eq!(summary.count, COUNT as u64);
    // The fixture takes a minute or two to write, so its TTLs span a few 30 s granules.
    assert!(!leases.is_empty() && leases.len() <= 6, "keys with close expiry share leases: {}", leases.len());
    assert!(leases.iter().all(|lease| lease.granted_ttl() <= 3600));
    assert_eq!(
        leases.iter().map(|lease| lease.keys().len()).sum::<usize>(),
        COUNT,
        "every key is on a lease"
    );
}
