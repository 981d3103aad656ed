//! Down the etcd lineage on the real releases: 3.7 → 3.6 → 3.5 by etcd's online downgrade, 3.5 → … → 3.0
//! by snapshot restore (both keep revisions and leases) or by logical copy, etcd3 → etcd2 down to 2.2.1
//! for JSON data, a run killed in the middle of an online downgrade completing on the next run, and a
//! lease that runs out mid-downgrade taking only its own keys.

mod support;

use std::collections::BTreeMap;

use support::*;

/// Every key's (create, mod) revision and lease id.
fn revisions_and_leases(etcd: &TestEtcd) -> BTreeMap<Vec<u8>, (i64, i64, i64)> {
    etcd.v3_key_values()
        .into_iter()
        .map(|kv| (kv.key, (kv.create_revision, kv.mod_revision, kv.lease)))
        .collect()
}

/// SIGKILL while 3.7.1 runs with the downgrade enabled (storage not lowered yet: only 3.7.1 opens the
/// data), then again once it has lowered it and stopped, before 3.6.14 has opened the data: the third
/// run completes the downgrade with nothing lost.
#[test]
fn an_online_downgrade_killed_twice_completes_on_the_next_run() {
    if !releases_present(&["3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("online-downgrade-kill");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.7.1", &data, &peer);
    let args = ["--target-version", "3.6.14", "--migrate-only"];

    for point in ["online-downgrade-enabled", "online-downgrade-lowered"] {
        assert!(
            Pause::at(point).kill_there(Migrator::new(&data, &peer).args(&args)),
            "the run reached {point}"
        );
        assert_eq!(version_txt(&data), "3.7.1/etcd3", "version.txt names the last completed step");
        assert!(data.join(".etcd-migrate/journal.json").exists(), "the journal records the step under way");
    }

    let output = Migrator::new(&data, &peer).args(&args).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("recovering"), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.6.14/etcd3");
    assert!(!data.join(".etcd-migrate/journal.json").exists());
    let etcd = TestEtcd::start_with("3.6.14", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_leases(&etcd, &ttls);
}

/// The whole chain down for JSON data, the way Kubernetes once rolled back (3.0.17/etcd3 → 2.2.1/etcd2):
/// from 3.7.1 through every etcd3 minor to 3.0.17 with the same revisions and lease ids, then into a
/// fresh 2.2.1 v2 store (3.0 moves up to 3.1 first to read what the leases have left) with every key,
/// value and TTL.
#[test]
fn the_whole_chain_down_from_3_7_to_2_2_etcd2_for_json_data() {
    if !releases_present(&["2.2.1", "3.0.17", "3.1.20", "3.2.32", "3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("chain-down");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.7.1", &data, &peer);
    let etcd = TestEtcd::start_with("3.7.1", &data, "m", &peer, &[]);
    let before = revisions_and_leases(&etcd);
    let revision_before = block_on(current_revision(&etcd.endpoint()));
    drop(etcd);

    let plan = Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.0.17"]).run();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    for (kind, count) in [(" online-downgrade ", 2), (" downgrade ", 5)] {
        assert_eq!(plan.lines().filter(|line| line.contains(kind)).count(), count, "{plan}");
    }
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.0.17", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.0.17/etcd3");
    assert_eq!(stderr(&output).matches("backup verified").count(), 7, "a backup before each downgrade");
    let etcd = TestEtcd::start_with("3.0.17", &data, "m", &peer, &[]);
    let values: BTreeMap<String, Vec<u8>> =
        etcd.v3_key_values().into_iter().map(|kv| (String::from_utf8(kv.key).unwrap(), kv.value)).collect();
    assert_eq!(values, keys);
    assert_eq!(revisions_and_leases(&etcd), before, "the same revisions and lease ids on 3.0.17");
    // Revisions kept: a watch resumed at the old revision + 1 misses nothing.
    assert!(block_on(current_revision(&etcd.endpoint())) >= revision_before, "the revision never goes back");
    drop(etcd);

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "2.2.1", "--target-storage", "etcd2", "--migrate-only"])
        .env("STORAGE_MEDIA_TYPE", "application/json")
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "2.2.1/etcd2");
    let etcd = TestEtcd::start_with("2.2.1", &data, "m", &peer, &[]);
    check_v2_keys(&etcd, &keys, &ttls);
}

/// 3.4.23 data up to the newest etcd, 3.7.1, and back down to 3.6.14: every key, value, revision and
/// lease at each end.
#[test]
fn data_from_3_4_goes_up_to_3_7_and_back_to_3_6_with_keys_and_leases() {
    if !releases_present(&["3.5.33", "3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("up-and-back");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.4.23", &data, &peer);

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.7.1", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.7.1/etcd3");
    let etcd = TestEtcd::start_with("3.7.1", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_leases(&etcd, &ttls);
    let at_3_7 = revisions_and_leases(&etcd);
    drop(etcd);

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.6.14", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("online-downgrade"), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.6.14/etcd3");
    let etcd = TestEtcd::start_with("3.6.14", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_leases(&etcd, &ttls);
    assert_eq!(revisions_and_leases(&etcd), at_3_7, "the same revisions and lease ids");
}

/// The logical copy, the fallback when the older etcdctl cannot restore a snapshot, down to 3.0 (over
/// gRPC, which 3.0 serves): every key and value, the leases regrouped as they were, and the revision
/// above the source's with everything below compacted (raised through the API for 3.1 and 3.0).
#[test]
fn a_logical_copy_rebuilds_3_2_data_on_3_0() {
    if !releases_present(&["3.0.17", "3.1.20", "3.2.32"]) {
        return;
    }
    let dir = TempDir::new("logical-copy-3-0");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.2.32", &data, &peer);
    let etcd = TestEtcd::start_with("3.2.32", &data, "m", &peer, &[]);
    let before = block_on(current_revision(&etcd.endpoint()));
    drop(etcd);

    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.0.17", "--migrate-only", "--downgrade-method", "logical"])
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stderr(&output).matches("path: logical copy").count(), 2, "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.0.17/etcd3");
    let etcd = TestEtcd::start_with("3.0.17", &data, "m", &peer, &[]);
    // Above the source's revision, compacted below: a resumed watch is told so and relists (3.0 says so
    // without cancelling the watch).
    assert!(block_on(current_revision(&etcd.endpoint())) > before + 1);
    assert!(resumed_watch_compacted_at(&etcd.endpoint(), before + 1, false) > before + 1);
    let kvs = etcd.v3_key_values();
    let values: BTreeMap<String, Vec<u8>> =
        kvs.iter().map(|kv| (String::from_utf8(kv.key.clone()).unwrap(), kv.value.clone())).collect();
    assert_eq!(values, keys);
    let leased: BTreeMap<&str, i64> = kvs
        .iter()
        .filter(|kv| kv.lease != 0)
        .map(|kv| (std::str::from_utf8(&kv.key).unwrap(), kv.lease))
        .collect();
    assert_eq!(
        leased.keys().copied().collect::<Vec<_>>(),
        ttls.keys().map(String::as_str).collect::<Vec<_>>()
    );
    let groups: std::collections::BTreeSet<i64> = leased.values().copied().collect();
    assert_eq!(groups.len(), 2, "keys that shared a lease share one again");
}

#[test]
fn a_lease_that_runs_out_mid_snapshot_restore_takes_only_its_own_keys() {
    lease_runs_out_mid_downgrade("3.5.16", "3.4.23", "downgrade-source-read");
}

#[test]
fn a_lease_that_runs_out_mid_online_downgrade_takes_only_its_own_keys() {
    if !releases_present(&["3.6.14", "3.7.1"]) {
        return;
    }
    lease_runs_out_mid_downgrade("3.7.1", "3.6.14", "online-downgrade-source-read");
}

/// etcd expires leases while it runs, so a lease can run out between a downgrade's reading the source
/// and the target's serving the result (a Kubernetes API server's master leases last 15 s). Each path
/// that keeps revisions, paused once the source's keys are read until a short lease has run out there:
/// the downgrade completes, the key on that lease is gone, and every other key and lease is kept.
///
/// Data of `from` with a short lease among its keys, downgraded to `to` while paused at `point` (once the
/// source is read) until the lease has run out there.
fn lease_runs_out_mid_downgrade(from: &str, to: &str, point: &str) {
    let dir = TempDir::new("lease-runs-out");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture(from, &data, &peer);
    add_short_lived_key(from, &data, &peer);

    let migrator = Migrator::new(&data, &peer).args(&[
        "--target-version",
        to,
        "--downgrade-method",
        "snapshot",
        "--migrate-only",
    ]);
    let source = migrator.hidden_client_url.clone();
    let gone = || hidden_etcdctl(from, &source, &data, &["get", SHORT_LIVED]).is_empty();
    run_paused_until_gone(migrator, point, gone, keys.len() + 1);
    assert_eq!(version_txt(&data), format!("{to}/etcd3"));
    let etcd = TestEtcd::start_with(to, &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys, "{from} → {to}: all but the expired key");
    check_leases(&etcd, &ttls);
}
