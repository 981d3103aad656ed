//! What a migration leaves readable, and what it says: every dir it makes or leaves (backups, which
//! hold every Secret, work dirs, the journal's dir, the run's authority) is 0700 and no file is wider
//! than etcd's own 0600, during the run and after it; and no log line, text or JSON, carries a value.
//! On a conversion, an upgrade, a downgrade by logical copy and a rollback to etcd2.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use etcd_migrate::client::v2::V2Client;
use support::scenarios::{
    Scenario, copy_tree, downgrade_scenario, etcd2_scenario, rollback_scenario, upgrade_scenario,
};
use support::*;

/// In every value written for these tests, so a log line carrying one is found.
const MARKER: &str = "VALUE-MARKER-5e1f0c";

/// Every dir and file under `root` (symlinks aside) readable by others than its owner.
fn too_wide(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir(root).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            continue;
        }
        if mode & 0o077 != 0 {
            found.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            found.extend(too_wide(&path));
        }
    }
    found
}

/// Adds a key whose value holds [`MARKER`] to the scenario's template, written by `version` (etcd2:
/// through the v2 API), and to the keys its check expects.
fn mark(scenario: &mut Scenario, version: &str, etcd2: bool) {
    let key = "/registry/secrets/kube-system/marked";
    let value = format!("{{\"data\":\"{MARKER}\"}}");
    let etcd = TestEtcd::start_with(version, &scenario.template.join("data"), "m", &scenario.peer, &[]);
    match etcd2 {
        true => block_on(V2Client::new(etcd.endpoint()).set(key, &value, None)).unwrap(),
        false => etcd.put(key, &value),
    }
    etcd.stop();
    scenario.keys.insert(key.into(), value.into_bytes());
}

/// Runs `scenario` with `--log-format format`, paused once at `point` (a hidden etcd up) to check the
/// modes of what the run made so far, the run's authority among them; then checks every mode after it, that no line of its
/// output holds a value, and every key.
fn private_and_quiet(mut scenario: Scenario, written_by: &str, format: &str, extra: &[&str], point: &str) {
    let etcd2 = scenario.name.starts_with("etcd2");
    mark(&mut scenario, written_by, etcd2);
    let dir = TempDir::new("privacy");
    let data = dir.join("data");
    copy_tree(&scenario.template.join("data"), &data);
    let mut migrator = scenario.migrator(&data).args(&["--log-format", format]).args(extra);
    migrator.command.stderr(std::process::Stdio::piped());
    let pause = Pause::at(point);
    let run = pause.spawn_paused(migrator);
    assert!(data.join(".etcd-migrate/authority/client.key").exists(), "{}: paused mid-run", scenario.name);
    // Mid-run, what the migrator made: its state dir and its backups (the rest is the operator's still:
    // a version.txt written with the usual umask is replaced when the first step is recorded).
    let made: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| *path != data)
        .chain([data.join(".etcd-migrate")])
        .flat_map(|path| too_wide(&path))
        .collect();
    assert_eq!(made, Vec::<String>::new(), "{}: during the run", scenario.name);
    pause.release();
    let output = run.wait_with_output();
    let said = stderr(&output);
    assert!(output.status.success(), "{}: {said}", scenario.name);
    assert!(!data.join(".etcd-migrate/authority").exists(), "{}: the authority is gone", scenario.name);
    assert_eq!(too_wide(dir.path()), Vec::<String>::new(), "{}: after the run", scenario.name);
    let backups = fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.path() != data).count();
    assert!(backups > 0, "{}: a backup was made beside the data dir and checked", scenario.name);
    if format == "json" {
        for line in said.lines().filter(|line| !line.trim().is_empty()) {
            serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        }
    }
    let carrying: Vec<&str> = said.lines().filter(|line| line.contains(MARKER)).collect();
    assert!(carrying.is_empty(), "{}: log lines carry a value: {carrying:#?}", scenario.name);
    scenario.check(&data);
}

#[test]
fn a_conversion_keeps_everything_private_and_logs_no_value() {
    let scenario = etcd2_scenario("etcd2-to-3.4", "3.4.23");
    private_and_quiet(scenario, "3.3.25", "text", &[], "etcd-3.3.25-healthy");
}

#[test]
fn an_upgrade_keeps_everything_private_and_logs_no_value() {
    private_and_quiet(upgrade_scenario(), "3.3.25", "json", &[], "etcd-3.4.23-healthy");
}

#[test]
fn a_downgrade_by_logical_copy_keeps_everything_private_and_logs_no_value() {
    let logical = ["--downgrade-method", "logical"];
    private_and_quiet(downgrade_scenario(), "3.5.16", "json", &logical, "etcd-3.4.23-healthy");
}

#[test]
fn a_rollback_to_etcd2_keeps_everything_private_and_logs_no_value() {
    private_and_quiet(rollback_scenario(), "3.4.23", "text", &[], "etcd-3.3.25-healthy");
}
