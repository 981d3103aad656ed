//! Rollback against real etcd: one-minor downgrades 3.5 → 3.4 → 3.3 by snapshot, etcd3 → etcd2 for JSON
//! data, refusal for protobuf data, a downgrade killed mid-step completing on the next run, and a lease
//! running out in a copy before it is verified.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_migrate::client::v2::V2Client;
use etcd_migrate::client::{Endpoint, TlsFiles};
use support::*;

/// When `snapshot restore` fails, each downgrade step falls back to a logical copy: every key and value,
/// and the leases regrouped as they were, with no more time left than before.
#[test]
fn a_failed_snapshot_restore_falls_back_to_a_logical_copy_of_keys_and_leases() {
    let dir = TempDir::new("logical-copy");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, ttls) = leased_fixture("3.5.16", &data, &peer);

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.3.25", "--migrate-only"])
        .env("ETCD_MIGRATE_TEST_FAIL", "snapshot-restore")
        .run();
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert_eq!(log.matches("path: logical copy").count(), 2, "both steps copied logically: {log}");
    assert_eq!(version_txt(&data), "3.3.25/etcd3");

    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_copied_leases(&etcd, &ttls);
}

/// A logical copy cannot keep revisions, so it ends above the source's, everything below compacted: a
/// watcher (an API server's cache) resuming where it stood is told "compacted" and relists, and the list
/// has every key, value and lease. By etcd's own restore (`etcdutl --bump-revision --mark-compacted`,
/// here 3.5.30's for a 3.4.23 copy), and through the API where no bundled etcdutl can (3.3.25 and 3.4.23
/// only).
#[test]
fn a_logical_copy_ends_above_the_source_revision_with_everything_below_compacted() {
    for (from, to, bundled, how) in [
        ("3.5.30", "3.4.23", "3.4.23 3.5.30", "by etcdutl 3.5.30"),
        ("3.4.23", "3.3.25", "3.3.25 3.4.23", "through the API"),
    ] {
        let dir = TempDir::new("logical-copy-revision");
        let data = dir.join("data");
        let peer = free_peer_url();
        let (keys, ttls) = leased_fixture(from, &data, &peer);
        let etcd = TestEtcd::start_with(from, &data, "m", &peer, &[]);
        let unleased =
            keys.iter().filter(|(key, _)| !ttls.contains_key(*key)).map(|(k, v)| (k.clone(), v.clone()));
        let before = rewrite_keys(&etcd, &unleased.collect(), 40);
        assert!(
            before > 20 * keys.len() as i64,
            "the source's revision {before} is well above its key count"
        );
        drop(etcd);

        let migrator = Migrator::new(&data, &peer).args(&[
            "--target-version",
            to,
            "--migrate-only",
            "--downgrade-method",
            "logical",
        ]);
        let output = migrator.env("BUNDLED_VERSIONS", bundled).run();
        let log = stderr(&output);
        assert!(output.status.success(), "{log}");
        assert!(log.contains("path: logical copy") && log.contains(how), "{from} -> {to} {how}: {log}");
        assert_eq!(version_txt(&data), format!("{to}/etcd3"));

        let etcd = TestEtcd::start_with(to, &data, "m", &peer, &[]);
        let after = block_on(current_revision(&etcd.endpoint()));
        assert!(after > before + 1, "{from} -> {to}: revision {after} after, {before} before");
        let compacted = resumed_watch_compacted_at(&etcd.endpoint(), before + 1, true);
        assert!(
            compacted > before + 1,
            "{from} -> {to}: compacted at {compacted}, resumed at {}",
            before + 1
        );
        assert_eq!(etcd.all_keys(), keys, "{from} -> {to}: a fresh list sees every key and value");
        check_copied_leases(&etcd, &ttls);
    }
}

/// The keys of `ttls` are exactly those on leases, grouped as in [`leased_fixture`] (one lease per TTL),
/// each lease granted what it had left when copied: no more than before, more than the shorter group's.
fn check_copied_leases(etcd: &TestEtcd, ttls: &BTreeMap<String, i64>) {
    let leased = etcd.leased_keys();
    assert_eq!(leased.keys().collect::<Vec<_>>(), ttls.keys().collect::<Vec<_>>(), "the same keys on leases");
    let leases = etcd.etcdctl(&["lease", "list"]).lines().skip(1).count();
    assert_eq!(leases, 2, "keys that shared a lease share one again");
    for (key, &(granted, remaining)) in &leased {
        let before = ttls[key];
        let shorter_group = ttls.values().filter(|&&ttl| ttl < before).max().copied().unwrap_or(0);
        assert!(granted <= before && granted > shorter_group, "{key}: granted {granted}s, was {before}s");
        assert!(remaining > 0 && remaining <= granted, "{key}: {remaining}s left of {granted}s");
    }
}

#[test]
fn downgrades_3_5_to_3_3_in_two_steps_then_execs_the_older_etcd() {
    let dir = TempDir::new("downgrade");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, ttls) = leased_fixture("3.5.16", &data, &peer);
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    let before = block_on(current_revision(&etcd.endpoint()));
    drop(etcd);

    let plan = Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.3.25"]).run();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(plan.lines().filter(|line| line.contains(" downgrade ")).count(), 2, "{plan}");

    let client = format!("http://127.0.0.1:{}", free_port());
    let child = Migrator::new(&data, &peer).args(&["--target-version", "3.3.25"]).exec_etcd(&client, &peer);
    assert!(wait_healthy(&client, Duration::from_secs(180)), "the exec'd etcd 3.3.25 never served {client}");
    assert_eq!(all_keys("3.3.25", &client), keys);
    let status = etcdctl("3.3.25", &client, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.3.25\""), "{status}");
    let endpoint = Endpoint::new(&client, &TlsFiles::default()).unwrap();
    assert!(block_on(current_revision(&endpoint)) >= before, "snapshot restore keeps the revision");
    assert_eq!(version_txt(&data), "3.3.25/etcd3");
    drop(child);

    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    check_leases(&etcd, &ttls);
    drop(etcd);
    let backups = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-backup-"))
        .count();
    assert_eq!(backups, 2, "a backup before each downgrade");
}

#[test]
fn rolls_back_etcd3_to_etcd2_for_json_data_and_refuses_protobuf() {
    let dir = TempDir::new("rollback");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, ttls) = leased_fixture("3.4.23", &data, &peer);
    let before = tree_fingerprint(&data);

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.3.25", "--target-storage", "etcd2", "--migrate-only"])
        .run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("application/json"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&data), before, "refused before touching anything");

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.3.25", "--target-storage", "etcd2", "--migrate-only"])
        .env("STORAGE_MEDIA_TYPE", "application/json")
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("relist"), "warns that watchers must relist");
    assert_eq!(version_txt(&data), "3.3.25/etcd2");

    let etcd = TestEtcd::start_with("3.3.25", &data, "m", &peer, &[]);
    check_v2_keys(&etcd, &keys, &ttls);
}

/// Kills the migrator (given `first_run` options) paused at fault point `point`, then checks the rerun
/// completes the downgrade.
fn downgrade_killed_at(point: &str, first_run: &[&str]) {
    let dir = TempDir::new("downgrade-kill");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, ttls) = leased_fixture("3.5.16", &data, &peer);

    let migrator =
        Migrator::new(&data, &peer).args(&["--target-version", "3.4.23", "--migrate-only"]).args(first_run);
    assert!(Pause::at(point).kill_there(migrator), "the run reached {point}");
    assert_eq!(version_txt(&data), "3.5.16/etcd3", "version.txt names the last completed step");

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.4.23", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.4.23/etcd3");
    assert!(!data.join(".etcd-migrate/journal.json").exists());
    assert!(!data.join(".etcd-migrate/work").exists(), "work dirs are cleaned up");
    let etcd = TestEtcd::start_with("3.4.23", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_leases(&etcd, &ttls);
}

#[test]
fn a_downgrade_killed_before_the_swap_is_redone() {
    downgrade_killed_at("snapshot-restored", &[]);
}

#[test]
fn a_downgrade_killed_in_the_middle_of_a_logical_copy_is_redone() {
    downgrade_killed_at("logical-copy-read", &["--downgrade-method", "logical"]);
}

#[test]
fn a_downgrade_killed_after_the_swap_is_completed() {
    downgrade_killed_at("member-swapped-in", &[]);
}

/// The steps that rebuild a member through the API (the logical copy, etcd3 → etcd2) give each key what
/// its lease or TTL had left, no more, so a short one can run out in the copy before the copy is
/// verified. Paused once the copy is written until a short lease has run out there: the step completes,
/// the key on that lease is gone, and every other key, value and lease (or TTL) is kept.
#[test]
fn a_lease_that_runs_out_in_a_copy_takes_only_its_own_keys() {
    for (from, to, storage, point) in [
        ("3.5.16", "3.4.23", "etcd3", "logical-copy-imported"),
        ("3.4.23", "3.3.25", "etcd2", "rollback-imported"),
    ] {
        let dir = TempDir::new("copy-lease-runs-out");
        let data = dir.join("data");
        let peer = free_peer_url();
        let (keys, ttls) = leased_fixture(from, &data, &peer);
        add_short_lived_key(from, &data, &peer);

        let migrator = Migrator::new(&data, &peer)
            .args(&["--target-version", to, "--target-storage", storage])
            .args(&["--downgrade-method", "logical", "--migrate-only"])
            .env("STORAGE_MEDIA_TYPE", "application/json");
        let copy = migrator.hidden_client_url.clone();
        let gone = || match storage {
            "etcd3" => hidden_etcdctl(to, &copy, &data, &["get", SHORT_LIVED]).is_empty(),
            _ => block_on(V2Client::new(hidden_endpoint(&copy, &data)).leaves("/registry"))
                .unwrap()
                .iter()
                .all(|leaf| leaf.key != SHORT_LIVED),
        };
        run_paused_until_gone(migrator, point, gone, keys.len() + 1);
        assert_eq!(version_txt(&data), format!("{to}/{storage}"));
        let etcd = TestEtcd::start_with(to, &data, "m", &peer, &[]);
        match storage {
            "etcd3" => {
                assert_eq!(etcd.all_keys(), keys, "all but the expired key");
                check_copied_leases(&etcd, &ttls);
            }
            _ => check_v2_keys(&etcd, &keys, &ttls),
        }
    }
}
