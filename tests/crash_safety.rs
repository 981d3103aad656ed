//! Crash safety against real etcd: the migrator SIGKILLed at many points of real multi-step migrations
//! (etcd2 conversion and upgrades; downgrades), then rerun: every key, value and lease must come through
//! and version.txt must tell the truth. Plus signals, bad version files, full and read-only disks,
//! a corrupt WAL and a leftover etcd on the hidden ports.

mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::scenarios::*;
use support::*;

const KILLS: u32 = 20;
/// Kills that must land mid-run. They are spread over the clean run's time, up to 20/21 of it, and a
/// rerun can be a quarter faster (15 of 20 landed in a downgrade on a busy machine), so the last may
/// find it finished; a scenario whose kills mostly miss tests nothing.
const KILLED_AT_LEAST: u32 = KILLS / 2;

/// Kills `scenario`'s run `after` its start, reruns it to completion, checks the result. Where the kill
/// lands is chance (fault injection by time), so the outcome is checked for both: a run killed anywhere,
/// and a run that had already finished. Returns the keys checked and whether the run was killed.
fn kill_and_recover(scenario: &Scenario, after: Duration, index: u32) -> (usize, bool) {
    let work = TempDir::new(&format!("{}-kill-{index}", scenario.name));
    let data = work.join("data");
    copy_tree(&scenario.template.join("data"), &data);
    let mut migrator = scenario.migrator(&data);
    migrator.command.stderr(Stdio::null());
    let mut child = migrator.command.spawn().unwrap();
    std::thread::sleep(after);
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    // A run may end between the look and the kill: only a death by SIGKILL counts as a kill.
    let status = child.wait().unwrap();
    let killed = status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32);
    if !killed {
        assert!(status.success(), "{} run {index} ended on its own, failing: {status}", scenario.name);
        assert_eq!(version_txt(&data), scenario.final_state());
    }
    assert_stopped(&data, &scenario.peer);
    let said = version_txt(&data);
    assert!(
        said.parse::<etcd_migrate::version::EtcdState>().is_ok(),
        "version.txt says {said:?} after the kill"
    );
    let output = scenario.migrator(&data).run();
    assert!(
        output.status.success(),
        "{} kill {index} at {after:?}: rerun failed: {}\nsockets now:\n{}",
        scenario.name,
        stderr(&output),
        listening_sockets()
    );
    (scenario.check(&data).0, killed)
}

fn run_fault_injection(scenario: Scenario) {
    // A clean run first: how long the whole migration takes, and that it is right.
    let clean = TempDir::new(&format!("{}-clean", scenario.name));
    let data = clean.join("data");
    copy_tree(&scenario.template.join("data"), &data);
    let started = Instant::now();
    let output = scenario.migrator(&data).run();
    let duration = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    scenario.check(&data);

    let (mut keys_checked, mut killed) = (0, 0);
    for i in 1..=KILLS {
        let after = duration * i / (KILLS + 1);
        let (keys, was_killed) = kill_and_recover(&scenario, after, i);
        keys_checked += keys;
        killed += u32::from(was_killed);
    }
    println!(
        "fault injection {}: run {:.1}s, runs {KILLS}, killed mid-run {killed}, finished first {}, \
         recoveries {KILLS}, keys checked {keys_checked}, keys lost 0",
        scenario.name,
        duration.as_secs_f64(),
        KILLS - killed
    );
    assert!(
        killed >= KILLED_AT_LEAST,
        "{}: only {killed} of {KILLS} kills landed mid-run (at least {KILLED_AT_LEAST} must)",
        scenario.name
    );
}

#[test]
fn sigkill_anywhere_in_an_etcd2_conversion_and_upgrade_loses_nothing() {
    run_fault_injection(etcd2_scenario("etcd2-to-3.5", "3.5.16"));
}

#[test]
fn sigkill_anywhere_in_a_two_step_downgrade_loses_nothing() {
    run_fault_injection(downgrade_scenario());
}

/// Kills the run while it is paused at a fault-injection point.
fn kill_at_pause(point: &str) -> (Scenario, TempDir) {
    let scenario = etcd2_scenario("etcd2-to-3.5", "3.5.16");
    let work = TempDir::new(&format!("pause-{point}"));
    let data = work.join("data");
    copy_tree(&scenario.template.join("data"), &data);
    assert!(Pause::at(point).kill_there(scenario.migrator(&data)), "the run reached {point}");
    assert_stopped(&data, &scenario.peer);
    (scenario, work)
}

#[test]
fn a_kill_mid_version_file_write_leaves_the_old_truth() {
    let (scenario, work) = kill_at_pause("version-file");
    let data = work.join("data");
    assert!(data.join(".version.txt.tmp").exists(), "killed between writing the temp file and the rename");
    let said = version_txt(&data);
    assert!(["3.3.25/etcd2", "3.3.25/etcd3", "3.4.23/etcd3"].contains(&said.as_str()), "{said}");
    let output = scenario.migrator(&data).run();
    assert!(output.status.success(), "{}", stderr(&output));
    scenario.check(&data);
}

#[test]
fn a_kill_mid_backup_leaves_no_backup_that_looks_complete() {
    let (scenario, work) = kill_at_pause("backup");
    let data = work.join("data");
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
    };
    let partials: Vec<String> = names(work.path()).into_iter().filter(|n| n.contains("-backup-")).collect();
    assert!(
        partials.len() == 1 && partials[0].ends_with(".partial"),
        "killed mid-backup: its partial copy and nothing else: {partials:?}"
    );
    assert_eq!(version_txt(&data), "3.3.25/etcd2");
    let output = scenario.migrator(&data).run();
    assert!(output.status.success(), "{}", stderr(&output));
    scenario.check(&data);
    let backups: Vec<String> = names(work.path()).into_iter().filter(|n| n.contains("-backup-")).collect();
    assert_eq!(backups.len(), 1, "the partial copy was swept and one verified backup made: {backups:?}");
    assert!(!backups[0].ends_with(".partial"));
}

#[test]
fn sigterm_mid_step_stops_the_hidden_etcd_and_exits_non_zero() {
    let dir = TempDir::new("sigterm");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    let keys = sample_keys();
    make_etcd3_data("3.3.25", &data, &peer, &keys);
    let mut migrator = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]);
    migrator.command.stderr(Stdio::piped());
    // Paused in step 2 (3.4 to 3.5) with its hidden etcd up and healthy on the data.
    let pause = Pause::at("etcd-3.5.16-healthy");
    let child = pause.spawn_paused(migrator);
    assert!(!processes_using(&data).is_empty(), "the hidden etcd runs on the data");
    let authority = etcd_migrate::data_dir::authority_dir(&data);
    assert!(authority.join("client.key").exists(), "the run's authority secures it");
    let sent = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let output = child.wait_with_output();
    assert!(sent.elapsed() < Duration::from_secs(30), "exits within kubelet's grace period");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("interrupted by SIGTERM"), "{}", stderr(&output));
    assert!(processes_using(&data).is_empty(), "the hidden etcd was stopped before exiting");
    assert!(!authority.exists(), "the run's authority was taken away before exiting");
    assert_eq!(version_txt(&data), "3.4.23/etcd3", "the last completed step");
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
}

#[test]
fn bad_version_files_exit_2_naming_the_file_and_are_never_overwritten() {
    let dir = TempDir::new("badversion");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    for content in [
        "",
        "garbage",
        "3.4/etcd3",
        "9.9.9/etcd3",
        "3.4.23/etcd4",
        "3.4.23/etcd3 trailing junk",
        "\u{0}\u{1}",
    ] {
        fs::write(data.join("version.txt"), content).unwrap();
        let before = tree_fingerprint(&data);
        let output =
            Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
        assert_eq!(output.status.code(), Some(2), "{content:?}: {}", stderr(&output));
        let message = stderr(&output);
        assert!(message.contains("version.txt"), "{content:?}: {message}");
        assert!(message.contains("X.Y.Z") || message.contains("9.9"), "{content:?}: {message}");
        assert_eq!(tree_fingerprint(&data), before, "{content:?}: the data dir changed");
    }
    fs::remove_file(data.join("version.txt")).unwrap();
    fs::create_dir(data.join("version.txt")).unwrap();
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("not a regular file"), "{}", stderr(&output));
    assert!(data.join("version.txt").is_dir());
}

#[test]
fn a_leftover_etcd_on_the_hidden_port_is_reported_before_anything_changes() {
    let dir = TempDir::new("leftover");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let before = tree_fingerprint(&data);
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port().to_string();
    let output = Migrator::new(&data, &peer)
        .args(&["--target-version", "3.5.16", "--migrate-only", "--port", &port])
        .run();
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains(&format!("port {port}")) && stderr(&output).contains("leftover etcd"));
    assert_eq!(tree_fingerprint(&data), before);
}

#[test]
fn a_corrupt_wal_fails_the_step_with_etcds_last_lines() {
    let dir = TempDir::new("corruptwal");
    let data = dir.join("data");
    let peer = format!("http://localhost:{}", free_port());
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let wal: PathBuf = fs::read_dir(data.join("member/wal"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wal"))
        .unwrap();
    let mut bytes = fs::read(&wal).unwrap();
    for byte in bytes.iter_mut().take(4096).skip(64) {
        *byte = 0xA5;
    }
    fs::write(&wal, bytes).unwrap();
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("exited with") && message.contains("last lines"), "{message}");
    assert_eq!(version_txt(&data), "3.4.23/etcd3");
    assert!(message.contains("backup at"), "the error names the backup: {message}");
    assert_stopped(&data, &peer);
}

#[test]
fn a_full_disk_fails_the_step_and_keeps_the_truth_and_the_backup() {
    let Some(tmpfs) = Tmpfs::mount("300m") else { return };
    let data = tmpfs.path().join("data");
    let backups = TempDir::new("full-backups");
    let peer = format!("http://localhost:{}", free_port());
    let keys = sample_keys();
    make_etcd3_data("3.5.16", &data, &peer, &keys);
    let migrator = || {
        Migrator::new(&data, &peer).args(&[
            "--target-version",
            "3.4.23",
            "--downgrade-method",
            "snapshot",
            "--migrate-only",
            "--backup-dir",
            backups.path().to_str().unwrap(),
        ])
    };
    let mut paused = migrator();
    paused.command.stderr(Stdio::piped());
    let pause = Pause::at(&format!("etcd-{}-healthy", newest_bundled_patch("3.5")));
    let child = pause.spawn_paused(paused);
    // The data dir's file system fills up mid-step: the backup is made and the downgrade's source etcd, the newest 3.5, is up on the data, but
    // the snapshot the step takes into the data dir's work area is not.
    let filler = tmpfs.path().join("filler");
    let fill =
        Command::new("dd").arg("if=/dev/zero").arg(format!("of={}", filler.display())).arg("bs=1M").output();
    assert!(stderr(&fill.unwrap()).contains("No space left"), "the disk is full");
    pause.release();
    let output = child.wait_with_output();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(message.to_lowercase().contains("no space left"), "{message}");
    assert_stopped(&data, &peer);
    assert_eq!(version_txt(&data), "3.5.16/etcd3", "version.txt unchanged");
    let made: Vec<PathBuf> = fs::read_dir(backups.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(made.len(), 1, "one backup, before the step: {made:?}");
    etcd_migrate::backup::verify(&made[0]).expect("the backup is intact");

    fs::remove_file(&filler).unwrap();
    let output = migrator().run();
    assert!(output.status.success(), "once there is space the rerun completes: {}", stderr(&output));
    assert_eq!(version_txt(&data), "3.4.23/etcd3");
    let etcd = TestEtcd::start_with("3.4.23", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
}

#[test]
fn a_read_only_data_dir_is_refused_before_anything_changes() {
    let Some(tmpfs) = Tmpfs::mount("300m") else { return };
    let data = tmpfs.path().join("data");
    let peer = format!("http://localhost:{}", free_port());
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let before = tree_fingerprint(&data);
    let remount = Command::new("mount").args(["-o", "remount,ro"]).arg(tmpfs.path()).status().unwrap();
    assert!(remount.success());
    let output = Migrator::new(&data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    let _ = Command::new("mount").args(["-o", "remount,rw"]).arg(tmpfs.path()).status();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("not writable"), "{}", stderr(&output));
    assert_eq!(tree_fingerprint(&data), before);
}
