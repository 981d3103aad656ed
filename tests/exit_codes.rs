//! The exit-code contract against real etcd: a run that fails before changing anything exits 2 with the
//! data dir byte for byte as it was; a run that fails after a change exits 1, with `version.txt` (and the
//! journal) telling the truth and the backup named. The phase decides, not the module that failed.

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use etcd_migrate::data_dir::{db_path, journal, journal_path};
use etcd_migrate::version::Version;
use etcd_migrate::{backup, bbolt};
use support::scenarios::copy_tree;
use support::*;

fn peer_url() -> String {
    format!("http://localhost:{}", free_port())
}

/// Runs `migrator` on `dir/data` to `target` and checks the side of the contract where nothing was
/// changed: exit 2, a message containing `says`, the data dir byte for byte as it was, and nothing new
/// (no backup, not even a partial one) beside it. Returns the message.
fn assert_exits_2_and_nothing_changed(dir: &TempDir, migrator: Migrator, target: &str, says: &str) -> String {
    let entries =
        || -> Vec<_> { fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect() };
    let (before, beside_before) = (tree_fingerprint(&dir.join("data")), entries());
    let output = migrator.args(&["--target-version", target, "--migrate-only"]).run();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains(says), "{message}");
    assert_eq!(tree_fingerprint(&dir.join("data")), before, "the data dir changed: {message}");
    assert_eq!(entries(), beside_before, "nothing was left beside the data dir: {message}");
    message
}

#[test]
fn a_failed_first_backup_exits_2_with_the_data_dir_byte_identical() {
    let dir = TempDir::new("exit-backup");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    let migrator = Migrator::new(&data, &peer).env("ETCD_MIGRATE_TEST_FAIL", "backup-copy");
    assert_exits_2_and_nothing_changed(&dir, migrator, "3.5.16", "backup failed");
}

#[test]
fn a_damaged_journal_exits_2_with_the_data_dir_byte_identical() {
    let dir = TempDir::new("exit-journal");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &data, &peer, &sample_keys());
    fs::create_dir_all(journal_path(&data).parent().unwrap()).unwrap();
    fs::write(journal_path(&data), "{").unwrap();
    assert_exits_2_and_nothing_changed(
        &dir,
        Migrator::new(&data, &peer),
        "3.5.16",
        "journal.json is damaged",
    );
}

/// A refusal of the walk below: its name, the target asked, what its one line says, and what sets it up
/// on a copy of the sample data (it may hold something, a port or a lock, until the run is over).
type Setup = Box<dyn FnOnce(&TempDir, &Path, Migrator) -> (Migrator, Box<dyn std::any::Any>)>;

fn nothing() -> Box<dyn std::any::Any> {
    Box::new(())
}

/// The data dir's state dir (`.etcd-migrate`, the work area) on a tmpfs of its own, mounted with
/// `options`, unmounted when dropped; `None` where this cannot mount (not root).
struct StateDirMount(PathBuf);

impl StateDirMount {
    fn mount(data: &Path, options: &str) -> Option<StateDirMount> {
        let state = data.join(".etcd-migrate");
        fs::create_dir_all(&state).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("mode=0700,{options}"), "tmpfs"])
            .arg(&state)
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(StateDirMount(state))
    }
}

impl Drop for StateDirMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Every way a run on real data refuses before changing anything (the input, the bundle, the machine,
/// the plan): exit 2, one line naming what is wrong, the data dir byte for byte as it was, folders
/// included, and nothing beside it.
#[test]
fn every_refusal_exits_2_with_the_data_dir_byte_identical_folders_included() {
    let source = TempDir::new("exit-walk-source");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &source.join("data"), &peer, &sample_keys());
    let version_txt_says = |content: &'static str| -> Setup {
        Box::new(move |_, data, migrator| {
            fs::write(data.join("version.txt"), content).unwrap();
            (migrator, Box::new(()))
        })
    };
    let mut refusals: Vec<(&str, &str, &str, Setup)> = vec![
        ("a damaged version.txt", "3.5.16", "expected X.Y.Z/etcdN", version_txt_says("3.4/etcd3")),
        ("an unknown etcd", "3.5.16", "an etcd this migrator does not know", version_txt_says("9.9.9/etcd3")),
        (
            "two claims of the current version",
            "3.5.16",
            "remove one of them",
            Box::new(|_, _, m| (m.args(&["--assume-current-version", "3.3.25/etcd3"]), nothing())),
        ),
        // With --migrate-only nothing is exec'd: the planner refuses the target it cannot reach.
        (
            "a target not bundled",
            "3.9.0",
            "target etcd 3.9.0 is not bundled",
            Box::new(|_, _, m| (m, nothing())),
        ),
        (
            "a bundle whose etcd reports another version",
            "3.5.16",
            "does not report 3.5.16",
            Box::new(|dir, _, m| {
                let bin = dir.join("bin");
                fs::create_dir(&bin).unwrap();
                for entry in fs::read_dir(etcd_bin_dir()).unwrap().flatten() {
                    std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).unwrap();
                }
                fs::remove_file(bin.join("etcd-3.5.16")).unwrap();
                std::os::unix::fs::symlink(etcd_bin_dir().join("etcd-3.4.23"), bin.join("etcd-3.5.16"))
                    .unwrap();
                (m.args(&["--bin-dir", bin.to_str().unwrap()]), nothing())
            }),
        ),
        (
            "a hidden port in use",
            "3.5.16",
            "is in use",
            Box::new(|_, _, m| {
                let port = m.hidden_client_url.rsplit(':').next().unwrap().to_string();
                let held = std::net::TcpListener::bind(format!("127.0.0.1:{port}")).unwrap();
                (m, Box::new(held))
            }),
        ),
        (
            "another migrator on the data dir",
            "3.5.16",
            "another etcd-migrate holds",
            Box::new(|_, data, m| {
                let lock = fs::File::open(data).unwrap();
                lock.try_lock().unwrap();
                (m, Box::new(lock))
            }),
        ),
        (
            "a rollback to etcd2 of data not stored as JSON",
            "3.3.25",
            "application/json",
            Box::new(|_, _, m| (m.args(&["--target-storage", "etcd2"]), nothing())),
        ),
        (
            "a backup dir that cannot be written",
            "3.5.16",
            "is not writable",
            Box::new(|_, _, m| (m.args(&["--backup-dir", "/proc/etcd-migrate-backups"]), nothing())),
        ),
        (
            "a damaged journal",
            "3.5.16",
            "journal.json is damaged",
            Box::new(|_, data, m| {
                fs::create_dir_all(journal_path(data).parent().unwrap()).unwrap();
                fs::write(journal_path(data), "{").unwrap();
                (m, nothing())
            }),
        ),
    ];
    if std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap()) == 0 {
        refusals.extend(work_area_refusals());
    } else {
        cannot_run("mounting a read-only or a full work area needs root");
    }
    for (what, target, says, setup) in refusals {
        let dir = TempDir::new("exit-walk");
        let data = dir.join("data");
        copy_tree(&source.join("data"), &data);
        let (migrator, _held) = setup(&dir, &data, Migrator::new(&data, &peer));
        let message = assert_exits_2_and_nothing_changed(&dir, migrator, target, says);
        assert_eq!(message.trim().lines().count(), 1, "{what}: one line: {message}");
    }
}

/// A work area (the data dir's `.etcd-migrate`) that cannot hold the run's certificate authority:
/// read-only, or full.
fn work_area_refusals() -> Vec<(&'static str, &'static str, &'static str, Setup)> {
    vec![
        (
            "a read-only work area",
            "3.5.16",
            ".etcd-migrate/authority is not writable",
            Box::new(|_, data, m| (m, Box::new(StateDirMount::mount(data, "ro,size=256k").unwrap()))),
        ),
        (
            "a full work area",
            "3.5.16",
            "too few for the run's certificate authority",
            Box::new(|_, data, m| {
                let mounted = StateDirMount::mount(data, "size=256k").unwrap();
                let mut filler = fs::File::create(data.join(".etcd-migrate/filler")).unwrap();
                while std::io::Write::write_all(&mut filler, &[0; 4096]).is_ok() {}
                drop(filler);
                (m, Box::new(mounted))
            }),
        ),
    ]
}

/// A data dir mounted by itself (as kubeadm's pod mounts it) keeps its backups inside its own volume
/// (`.etcd-migrate/backups`): when that volume has no room for one, the run is refused before that
/// folder is made, so the data dir is as it was, folders included.
#[test]
fn no_room_for_a_backup_inside_the_data_dirs_volume_exits_2_making_no_folder() {
    let source = TempDir::new("exit-in-volume-source");
    let peer = peer_url();
    make_etcd3_data("3.4.23", &source.join("data"), &peer, &sample_keys());
    let bytes = etcd_migrate::copier::size_of(&source.join("data"), &[]).unwrap();
    // Room for the data and half again: not for a backup of it.
    let Some(volume) = Tmpfs::mount(&format!("{}k", bytes * 3 / 2 / 1024)) else { return };
    let data = volume.path();
    let copied = std::process::Command::new("cp")
        .args(["-a", "--sparse=never"])
        .arg(source.join("data/."))
        .arg(data)
        .status()
        .unwrap();
    assert!(copied.success());
    let before = tree_fingerprint(data);
    let output = Migrator::new(data, &peer).args(&["--target-version", "3.5.16", "--migrate-only"]).run();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(
        message.contains(".etcd-migrate/backups has") && message.contains("free but the plan's backups need"),
        "{message}"
    );
    assert_eq!(tree_fingerprint(data), before, "the data dir changed");
    assert_eq!(version_txt(data), "3.4.23/etcd3");
}

/// etcd's 3.6 upgrade guide asks for every 3.5 member at 3.5.32 or later, and the newest 3.5 Debian
/// serves is 3.5.30: a plan to 3.6 from an image whose newest 3.5 is 3.5.30 is refused, naming the
/// floor, with nothing changed, whether the data is at 3.4 or already at 3.5.30.
const BELOW_THE_3_6_FLOOR: &str = "etcd documents 3.6.x as safe only from 3.5.32 or later, and the newest bundled 3.5.x is 3.5.30: bundle etcd 3.5.32 or later";

#[test]
fn a_plan_to_3_6_with_3_5_30_the_newest_3_5_bundled_exits_2_naming_the_floor() {
    for written_by in ["3.4.23", "3.5.30"] {
        let dir = TempDir::new("exit-floor-plan");
        let data = dir.join("data");
        let peer = peer_url();
        make_etcd3_data(written_by, &data, &peer, &sample_keys());
        let before = tree_fingerprint(&data);
        let plan = Migrator::new(&data, &peer)
            .env("BUNDLED_VERSIONS", "3.3.25,3.4.23,3.5.16,3.5.30,3.6.0")
            .args(&["plan", "--target-version", "3.6.0"])
            .run();
        assert_eq!(plan.status.code(), Some(2), "{}", stderr(&plan));
        assert!(stderr(&plan).contains(BELOW_THE_3_6_FLOOR), "{}", stderr(&plan));
        assert_eq!(tree_fingerprint(&data), before);
        assert_eq!(version_txt(&data), format!("{written_by}/etcd3"));
    }
}

/// The same refusal from a migration run, where the image really holds a 3.6 (and its newest 3.5 is
/// 3.5.30 all the same).
#[test]
fn a_run_to_3_6_with_3_5_30_the_newest_3_5_bundled_exits_2_naming_the_floor() {
    if !releases_present(&["3.6.14"]) {
        return;
    }
    let dir = TempDir::new("exit-floor-run");
    let data = dir.join("data");
    let peer = peer_url();
    make_etcd3_data("3.5.30", &data, &peer, &sample_keys());
    let migrator = Migrator::new(&data, &peer).env("BUNDLED_VERSIONS", "3.3.25,3.4.23,3.5.16,3.5.30,3.6.14");
    assert_exits_2_and_nothing_changed(&dir, migrator, "3.6.14", BELOW_THE_3_6_FLOOR);
    assert_eq!(version_txt(&data), "3.5.30/etcd3");
}

#[test]
fn a_failure_after_a_completed_step_exits_1_with_the_truth_and_the_backup_named() {
    let dir = TempDir::new("exit-after-step");
    let data = dir.join("data");
    let peer = peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.3.25", &data, &peer, &keys);
    let args = ["--target-version", "3.5.16", "--migrate-only"];
    let output =
        Migrator::new(&data, &peer).args(&args).env("ETCD_MIGRATE_TEST_FAIL", "version-file-write").run();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");

    // Step 1 ran: etcd 3.4 moved the data, but version.txt could not say so, and the journal records
    // the step as under way (the invariant: version.txt is the truth except while a journal says so).
    let cluster = bbolt::cluster_version(&db_path(&data)).unwrap();
    assert_eq!(cluster, Some(Version::new(3, 4, 0)), "step 1 ran");
    assert_eq!(version_txt(&data), "3.3.25/etcd3");
    let unfinished = journal::read(&data).unwrap().expect("the journal records the step under way");
    assert_eq!(unfinished.step.after().to_string(), "3.4.23/etcd3");
    assert!(message.contains("version.txt says 3.3.25/etcd3"), "{message}");
    assert!(
        message.contains("the next run finishes or undoes in-place 3.3.25/etcd3 -> 3.4.23/etcd3"),
        "{message}"
    );

    let named: PathBuf = message
        .split("backup at ")
        .nth(1)
        .and_then(|rest| rest.split([';', '\n', ' ']).next())
        .expect("the error names the backup")
        .into();
    assert_eq!(Some(named.clone()), unfinished.backup, "the named backup is the journal's");
    backup::verify(&named).expect("the named backup is complete");
    assert_eq!(fs::read_to_string(named.join("version.txt")).unwrap(), "3.3.25/etcd3");

    // The next run finishes the step and the migration, losing nothing.
    let output = Migrator::new(&data, &peer).args(&args).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
    assert!(!journal_path(&data).exists());
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
}
