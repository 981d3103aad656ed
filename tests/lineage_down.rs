//! Down the etcd lineage on the real releases: 3.7 → 3.6 → 3.5 by etcd's online downgrade (revisions
//! and leases kept), and a run killed in the middle of it completing on the next run.

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

fn backups(dir: &TempDir) -> usize {
    std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-backup-"))
        .count()
}

#[test]
fn downgrades_3_7_to_3_5_online_keeping_revisions_and_leases() {
    let dir = TempDir::new("online-downgrade");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.7.1", &data, &peer);
    let etcd = TestEtcd::start_with("3.7.1", &data, "m", &peer, &[]);
    let before = revisions_and_leases(&etcd);
    drop(etcd);

    let plan = Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.5.30"]).run();
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    assert_eq!(plan.lines().filter(|line| line.contains(" online-downgrade ")).count(), 2, "{plan}");

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.30", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.5.30/etcd3");
    assert_eq!(backups(&dir), 2, "a backup before each downgrade in place");

    let etcd = TestEtcd::start_with("3.5.30", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    assert_eq!(revisions_and_leases(&etcd), before, "the same revisions and lease ids");
    check_leases(&etcd, &ttls);
}

/// SIGKILL while 3.7.1 lowers its storage version, then again after it stopped and before 3.6.14 has
/// opened the data: the third run completes the downgrade with nothing lost.
#[test]
fn an_online_downgrade_killed_twice_completes_on_the_next_run() {
    let dir = TempDir::new("online-downgrade-kill");
    let data = dir.join("data");
    let peer = free_peer_url();
    let (keys, ttls) = leased_fixture("3.7.1", &data, &peer);
    let args = ["--target-version", "3.6.14", "--migrate-only"];

    for marker in ["downgrade enabled on etcd", "lowered the storage version"] {
        assert!(
            Migrator::new(&data, &peer).args(&args).kill_when_logged(marker),
            "the run reached {marker:?}"
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
