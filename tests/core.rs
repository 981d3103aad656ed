//! The core entrypoint against real etcd: upgrades one minor at a time, the no-op and fresh paths, the
//! exec hand-off, and every refusal leaving the data dir untouched.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use support::*;

fn peer_url() -> String {
    format!("http://localhost:{}", free_port())
}

#[test]
fn upgrades_3_3_to_3_5_through_3_4_and_execs_the_target_with_every_key() {
    let dir = TempDir::new("upgrade");
    let data = dir.join("data");
    let peer = peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.3.25", &data, &peer, &keys);

    let client = format!("http://127.0.0.1:{}", free_port());
    let child = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16"]).exec_etcd(&client, &peer);
    let pid = child.0.id();

    assert!(wait_healthy(&client, Duration::from_secs(120)), "the exec'd etcd never served {client}");
    assert_eq!(all_keys("3.5.16", &client), keys, "every key and value survives both steps");
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
    let status = etcdctl("3.5.16", &client, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.5.16\""), "the exec'd etcd is 3.5.16: {status}");
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe.ends_with("etcd-3.5.16"), "the migrator's own PID became etcd: {}", exe.display());
    drop(child);
    let backups: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("data-backup-3.3.25-etcd3"))
        .collect();
    assert_eq!(backups.len(), 1, "one backup, before the first step");
}

/// On a filesystem that clones (XFS with reflinks), each file of the backup is a clone of the data's
/// (`filefrag` shows its extents shared), verified by its digest, and etcd serves every key from it.
#[test]
fn a_backup_on_xfs_is_a_clone_that_etcd_serves_every_key_from() {
    let Some(xfs) = Xfs::mount() else { return };
    let data = xfs.path().join("data");
    let peer = peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.4.23", &data, &peer, &keys);
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let backup = fs::read_dir(xfs.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("data-backup-3.4.23-etcd3"))
        .expect("a backup beside the data dir")
        .path();
    etcd_migrate::backup::verify(&backup).expect("the backup verifies against its manifest");
    let db = backup.join("member/snap/db");
    let extents = Command::new("filefrag").arg("-v").arg(&db).output().expect("filefrag (e2fsprogs) runs");
    assert!(String::from_utf8_lossy(&extents.stdout).contains("shared"), "{}", stderr(&extents));

    let served = xfs.path().join("served");
    fs::create_dir(&served).unwrap();
    fs::rename(backup.join("member"), served.join("member")).unwrap();
    let etcd = TestEtcd::start_with("3.4.23", &served, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys, "etcd serves every key from the cloned backup");
}

#[test]
fn logs_each_step_with_from_to_and_duration() {
    let dir = TempDir::new("logs");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.5.16", "--migrate-only", "--log-format", "json"])
        .run();
    assert!(output.status.success());
    let done: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("every log line is JSON"))
        .filter(|line| line["message"] == "in-place done")
        .collect();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["from"], "3.4.23/etcd3");
    assert_eq!(done[0]["to"], "3.5.16/etcd3");
    assert!(done[0]["seconds"].is_string());
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
}

/// A bin dir whose target "etcd" is a stand-in script recording its argv and environment, so the no-op
/// and fresh paths can be checked without a server.
fn stand_in_bin_dir(dir: &TempDir, version: &str) -> std::path::PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    let record = dir.join("exec-record");
    let script =
        format!("#!/bin/sh\n{{ echo \"$@\"; env | grep '^ETCD_' | sort; }} > {}\n", record.display());
    let path = bin.join(format!("etcd-{version}"));
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn at_target_starts_no_etcd_and_execs_straight_away() {
    let dir = TempDir::new("noop");
    let data = dir.join("data");
    fs::create_dir_all(data.join("member/wal")).unwrap();
    fs::write(data.join("member/wal/0.wal"), b"not read").unwrap();
    fs::write(data.join("version.txt"), "3.5.16/etcd3\n").unwrap();
    let before = tree_fingerprint(&data);
    let bin = stand_in_bin_dir(&dir, "3.5.16");
    let output = Migrator::new(&data, &peer_url())
        .args(&[
            "--target-version",
            "3.5.16",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--",
            "--name",
            "m",
            "--foo=bar",
        ])
        .env("ETCD_NAME", "shadowed")
        .env("ETCD_QUOTA_BACKEND_BYTES", "8589934592")
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    let record = fs::read_to_string(dir.join("exec-record")).unwrap();
    let mut lines = record.lines();
    assert_eq!(lines.next().unwrap(), format!("--data-dir {} --name m --foo=bar", data.display()));
    let env: Vec<&str> = lines.collect();
    assert_eq!(
        env,
        ["ETCD_QUOTA_BACKEND_BYTES=8589934592"],
        "ETCD_NAME is shadowed by --name, the rest is kept"
    );
    assert_eq!(tree_fingerprint(&data), before, "nothing in the data dir changed");
}

#[test]
fn a_missing_or_empty_data_dir_starts_at_the_target() {
    for precreate in [false, true] {
        let dir = TempDir::new("fresh");
        let data = dir.join("var/data");
        if precreate {
            fs::create_dir_all(&data).unwrap();
        }
        let bin = stand_in_bin_dir(&dir, "3.5.16");
        let output = Migrator::new(&data, &peer_url())
            .args(&["--target-version", "3.5.16", "--bin-dir", bin.to_str().unwrap()])
            .run();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(version_txt(&data), "3.5.16/etcd3");
        let entries: Vec<String> = fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["version.txt"]);
        assert!(fs::read_to_string(dir.join("exec-record")).unwrap().starts_with("--data-dir"));
    }
}

#[test]
fn missing_version_file_is_read_from_the_db_or_refused() {
    let dir = TempDir::new("noversion");
    let data = dir.join("data");
    let peer = peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.4.23", &data, &peer, &keys);
    fs::remove_file(data.join("version.txt")).unwrap();

    let output = Migrator::new(&data, &peer).args(&["status"]).run();
    assert!(String::from_utf8_lossy(&output.stdout).contains("etcd 3.4"), "status shows what the db says");

    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("no version.txt"));
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
}

/// Values larger than a page live in overflow pages, which counting the revisions does not read: the
/// count is still every revision.
#[test]
fn status_counts_the_revisions_of_a_db_of_values_larger_than_a_page() {
    let dir = TempDir::new("large-values");
    let data = dir.join("data");
    let etcd = TestEtcd::start("3.5.16", &data);
    for i in 0..8 {
        etcd.put(&format!("/registry/large-{i}"), &format!("{i}").repeat(100 << 10));
    }
    drop(etcd);
    fs::write(data.join("version.txt"), "3.5.16/etcd3").unwrap();
    let output = Migrator::new(&data, &peer_url()).args(&["status"]).run();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("etcd 3.5 (8 v3 revisions)"), "{said}");
}

#[test]
fn undecidable_data_without_version_file_asks_for_assume_current_version() {
    let dir = TempDir::new("undecidable");
    let data = dir.join("data");
    fs::create_dir_all(data.join("member")).unwrap();
    fs::write(data.join("member/mystery"), b"?").unwrap();
    let before = tree_fingerprint(&data);
    let output =
        Migrator::new(&data, &peer_url()).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("--assume-current-version"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&data), before);
}

#[test]
fn assume_current_version_names_data_that_has_no_version_file() {
    let dir = TempDir::new("assume");
    let data = dir.join("data");
    let peer = peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.4.23", &data, &peer, &keys);
    fs::remove_file(data.join("version.txt")).unwrap();
    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.5.16", "--migrate-only", "--assume-current-version", "3.4.23/etcd3"])
        .run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
}

/// Each bad configuration or input exits 2 with a line naming the problem, and changes nothing.
#[test]
fn bad_configuration_exits_2_and_leaves_the_data_dir_byte_for_byte() {
    let dir = TempDir::new("badconfig");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let before = tree_fingerprint(&data);
    let parent_before: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();

    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&[], &[], "--target-version"),
        (&["--target-version", "3.5"], &[], "X.Y.Z"),
        (&["--target-version", "3.9.0"], &[], "etcd-3.9.0"),
        (&["--target-version", "3.3.25", "--target-storage", "etcd4"], &[], "etcd4"),
        (&["--target-version", "3.3.25", "--target-storage", "etcd2"], &[], "application/json"),
        (&["--target-version", "3.5.16", "--port", "none"], &[], "--port"),
        (&["--target-version", "3.5.16", "--frobnicate"], &[], "--frobnicate"),
        (
            &["--target-version", "3.5.16", "--assume-current-version", "3.3.25/etcd3"],
            &[],
            "--assume-current-version",
        ),
        (&["--target-version", "3.5.16"], &[("TARGET_STORAGE", "etcd5")], "etcd5"),
    ];
    for (args, env, names) in cases {
        let mut migrator = Migrator::new(&data, &peer).args(args).args(&["--migrate-only"]);
        for (key, value) in *env {
            migrator = migrator.env(key, value);
        }
        let output = migrator.run();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", stderr(&output));
        assert!(stderr(&output).contains(names), "{args:?} should name {names}: {}", stderr(&output));
        assert_eq!(stderr(&output).trim().lines().count(), 1, "one line: {}", stderr(&output));
        assert_eq!(tree_fingerprint(&data), before, "{args:?} changed the data dir");
    }

    // A missing intermediate minor: 3.3 data to 3.5 without 3.4.
    let old = dir.join("old");
    make_etcd3_data("3.3.25", &old, &peer, &sample_keys());
    let old_before = tree_fingerprint(&old);
    let output = Migrator::new(&old, &peer)
        .args(&["--target-version", "3.5.16", "--bundled-versions", "3.3.25,3.5.16", "--migrate-only"])
        .run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("no bundled etcd 3.4.x"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&old), old_before);

    // A version file older than the data: version.txt says 3.3 but etcd 3.4 ran it.
    fs::write(data.join("version.txt"), "3.3.25/etcd3").unwrap();
    let before = tree_fingerprint(&data);
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("opened by a newer etcd"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&data), before);
    let parent_after: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(parent_after.len(), parent_before.len() + 1, "no backups were made, only the old fixture");
}

#[test]
fn a_second_migrator_on_the_same_data_dir_is_refused() {
    let dir = TempDir::new("locked");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let before = tree_fingerprint(&data);
    let holder = fs::File::open(&data).unwrap();
    holder.try_lock().unwrap();
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("another etcd-migrate holds"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&data), before);
    assert_eq!(version_txt(&data), "3.4.23/etcd3");
}

#[test]
fn plan_prints_the_steps_and_changes_nothing() {
    let dir = TempDir::new("plan");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.3.25", &data, &peer, &sample_keys());
    let before = tree_fingerprint(&data);
    let output =
        Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.5.16", "--output", "json"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let plan: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let steps: Vec<(String, String, bool)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["step"]["from"].as_str().unwrap().into(),
                s["step"]["to"].as_str().unwrap().into(),
                s["backup_first"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("3.3.25/etcd3".into(), "3.4.23/etcd3".into(), true),
            ("3.4.23/etcd3".into(), "3.5.16/etcd3".into(), false)
        ]
    );
    assert_eq!(tree_fingerprint(&data), before);
    let beside: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(beside, ["data"], "no backup beside the data dir");
    let text = Migrator::new(&data, &peer).args(&["plan", "--target-version", "3.5.16"]).run();
    assert!(String::from_utf8_lossy(&text.stdout).contains("in-place"));
}

#[test]
fn tolerates_what_kubernetes_tolerated_crlf_pre_releases_and_an_unbundled_target_patch() {
    let dir = TempDir::new("tolerance");
    let peer = peer_url();
    let keys = sample_keys();
    for (written, name) in [(" 3.4.23/etcd3\r\n", "crlf"), ("3.4.13-rc.0/etcd3\n", "rc")] {
        let data = dir.join(name);
        make_etcd3_data("3.4.23", &data, &peer, &keys);
        fs::write(data.join("version.txt"), written).unwrap();
        let said = written.trim();
        // A pre-release is shown back as written, and is of its minor: 3.4 is left from 3.4.23.
        let status = Migrator::new(&data, &peer).args(&["status"]).run();
        assert!(String::from_utf8_lossy(&status.stdout).contains(said), "{}", stderr(&status));
        let plan = Migrator::new(&data, &peer)
            .args(&["plan", "--target-version", "3.5.16", "--bundled-versions", "3.4.23,3.5.16"])
            .run();
        let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
        let first = plan.lines().find(|line| line.trim_start().starts_with("1 ")).unwrap_or_default();
        let first: Vec<&str> = first.split_whitespace().collect();
        assert_eq!(first[..3], ["1", "in-place", said], "{plan}");
        assert_eq!(first[3], if name == "rc" { "3.4.23/etcd3" } else { "3.5.16/etcd3" }, "{plan}");
        // 3.5.9 is not bundled, 3.5.16 is: what Kubernetes' manifests, templating the version apart from
        // the image, may ask.
        let output = Migrator::new(&data, &peer)
            .args(&["--target-version", "3.5.9", "--bundled-versions", "3.4.23,3.5.16", "--migrate-only"])
            .run();
        assert!(output.status.success(), "{written:?}: {}", stderr(&output));
        assert!(stderr(&output).contains("target patch not bundled"), "{}", stderr(&output));
        assert_eq!(version_txt(&data), "3.5.16/etcd3", "what really ran is recorded");
        let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
        assert_eq!(etcd.all_keys(), keys);
    }
}

/// With --migrate-only there is nothing to exec: data already at the version asked needs nothing, bundled
/// or not (a pre-release, or a patch the image does not carry), and says so in one line. Without it, the
/// target must be bundled to be exec'd.
#[test]
fn migrate_only_at_an_unbundled_target_has_nothing_to_do() {
    let dir = TempDir::new("at-unbundled-target");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    // No etcd-3.4.13 anywhere; the data is 3.4 data.
    for (state, bundled) in [("3.4.13/etcd3", "3.5.16"), ("3.4.13-rc.0/etcd3", "3.4.23,3.5.16")] {
        let (version, _) = state.split_once('/').unwrap();
        fs::write(data.join("version.txt"), format!("{state}\n")).unwrap();
        let before = tree_fingerprint(&data);
        let run = |extra: &[&str]| {
            Migrator::new(&data, &peer)
                .args(&["--target-version", version, "--bundled-versions", bundled])
                .args(extra)
                .run()
        };
        let output = run(&["--migrate-only"]);
        let log = stderr(&output);
        assert_eq!(output.status.code(), Some(0), "{state}: {log}");
        assert_eq!(log.lines().count(), 1, "{state}: one line: {log}");
        assert!(log.contains("nothing to do, nothing to exec"), "{state}: {log}");
        assert_eq!(tree_fingerprint(&data), before, "{state}: nothing written");

        if bundled == "3.5.16" {
            let output = run(&[]);
            assert_eq!(output.status.code(), Some(2), "{state}: without --migrate-only it must exec etcd");
            assert!(stderr(&output).contains(&format!("etcd-{version}")), "{}", stderr(&output));
            assert_eq!(tree_fingerprint(&data), before);
        }
    }
}
