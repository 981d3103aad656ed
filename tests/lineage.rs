//! The whole etcd lineage upwards on the real releases: etcd2 data written by 2.2.1 climbs every minor
//! to 3.7.1, and 3.4 data crosses into 3.6 (where the v2 store is gone) through a sealed 3.5.33 (3.6
//! asks for 3.5.32 or later). Every release here but 3.4.23 comes from `ETCD_RELEASE_MIRROR`.

mod support;

use std::collections::BTreeMap;

use etcd_migrate::client::v2::V2Client;
use support::*;

/// key → (value, v2 TTL): what a Kubernetes of the etcd2 era might have written, and awkward names.
fn etcd2_fixture() -> BTreeMap<String, (String, Option<i64>)> {
    let mut keys = BTreeMap::new();
    for i in 0..20 {
        keys.insert(format!("/registry/pods/ns{}/pod-{i}", i % 2), (format!("{{\"pod\":{i}}}"), None));
    }
    for i in 0..10 {
        keys.insert(format!("/registry/events/ns/event-{i}"), (format!("{{\"event\":{i}}}"), Some(3600)));
    }
    keys.insert("/registry/masterleases/10.0.0.1".into(), ("lease".into(), Some(300)));
    keys.insert("/registry/configmaps/default/with space".into(), ("a b".into(), None));
    keys.insert("/registry/configmaps/default/a+b=c".into(), ("x+y=z&w".into(), None));
    keys.insert("/registry/configmaps/kube-system/ünïcødé-名前".into(), ("värde ✓".into(), None));
    keys.insert("/registry/secrets/default/empty".into(), (String::new(), None));
    keys.insert("/registry/big/half-mebibyte".into(), ("z".repeat(512 << 10), None));
    keys
}

#[test]
fn etcd2_data_from_2_2_1_climbs_every_minor_to_3_7_1() {
    if !releases_present(&["2.2.1", "2.3.7", "3.0.17", "3.1.20", "3.2.32", "3.5.33", "3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("lineage-up");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let keys = etcd2_fixture();
    let etcd = TestEtcd::start_with("2.2.1", &data, "m", &peer, &[]);
    let client = V2Client::new(etcd.endpoint());
    block_on(async {
        for (key, (value, ttl)) in &keys {
            client.set(key, value, *ttl).await.unwrap();
        }
    });
    etcd.stop();
    std::fs::write(data.join("version.txt"), "2.2.1/etcd2\n").unwrap();

    let plan = Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.7.1"]).run();
    assert!(plan.status.success(), "{}", stderr(&plan));
    let shown = String::from_utf8_lossy(&plan.stdout);
    let rows: Vec<Vec<&str>> =
        shown.lines().map(|line| line.split_whitespace().skip(1).take(3).collect()).collect();
    for step in [
        "in-place 2.2.1/etcd2 2.3.7/etcd2",
        "in-place 2.3.7/etcd2 3.0.17/etcd2",
        "convert-to-etcd3 3.0.17/etcd2 3.0.17/etcd3",
        "in-place 3.0.17/etcd3 3.1.20/etcd3",
        "in-place 3.1.20/etcd3 3.2.32/etcd3",
        "in-place 3.2.32/etcd3 3.3.25/etcd3",
        "in-place 3.3.25/etcd3 3.4.23/etcd3",
        "in-place 3.4.23/etcd3 3.5.33/etcd3",
        "seal-v2 3.5.33/etcd3 3.5.33/etcd3",
        "in-place 3.5.33/etcd3 3.6.14/etcd3",
        "in-place 3.6.14/etcd3 3.7.1/etcd3",
    ] {
        let step: Vec<&str> = step.split(' ').collect();
        assert!(rows.contains(&step), "plan lacks {step:?}:\n{shown}");
    }
    assert_eq!(version_txt(&data), "2.2.1/etcd2", "plan changes nothing");

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.7.1", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.7.1/etcd3");
    let etcd = TestEtcd::start_with("3.7.1", &data, "m", &peer, &[]);
    let found = etcd.all_keys();
    let expected: BTreeMap<String, Vec<u8>> =
        keys.iter().map(|(key, (value, _))| (key.clone(), value.clone().into_bytes())).collect();
    assert_eq!(found, expected, "every key and value, and nothing else");
    assert_leases_match_ttls(&etcd, &keys);
}

#[test]
fn data_of_3_4_reaches_3_6_through_a_sealed_3_5_even_when_killed_while_sealing() {
    if !releases_present(&["3.5.33", "3.6.14"]) {
        return;
    }
    let dir = TempDir::new("lineage-seal");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let (keys, ttls) = leased_fixture("3.4.23", &data, &peer);

    let migrate = || Migrator::new(&data, &peer).args(&["--target-version", "3.6.14", "--migrate-only"]);
    assert!(Pause::at("v2-snapshot-forced").kill_there(migrate()), "the run reached the seal");
    assert_eq!(version_txt(&data), "3.5.33/etcd3", "3.5.33 opened the data; the seal had not completed");
    assert!(data.join(".etcd-migrate/journal.json").exists(), "the unfinished seal is recorded");

    let output = migrate().run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("v2 store sealed"), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.6.14/etcd3");
    let etcd = TestEtcd::start_with("3.6.14", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
    check_leases(&etcd, &ttls);
}

#[test]
fn keys_never_converted_from_the_v2_store_stop_the_seal_and_stay() {
    if !releases_present(&["3.5.33", "3.6.14"]) {
        return;
    }
    let dir = TempDir::new("lineage-v2-keys");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let etcd = TestEtcd::start_with("3.4.23", &data, "m", &peer, &[]);
    etcd.put("/registry/pods/p", "pod");
    block_on(V2Client::new(etcd.endpoint()).set(
        "/legacy/flannel/config",
        "{\"Network\":\"10.1.0.0/16\"}",
        None,
    ))
    .unwrap();
    etcd.stop();
    std::fs::write(data.join("version.txt"), "3.4.23/etcd3\n").unwrap();

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.6.14", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("keys written through the v2 API"), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.5.33/etcd3", "3.6 never opened the data");
    let etcd = TestEtcd::start_with("3.5.33", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), BTreeMap::from([("/registry/pods/p".to_string(), b"pod".to_vec())]));
    let v2 = block_on(V2Client::new(etcd.endpoint()).leaves("/legacy")).unwrap();
    assert_eq!(v2.len(), 1, "the v2 key is still there: {v2:?}");
}
