//! Power loss: the migrator's data dir and backups on a filesystem that forgets every write not made
//! durable (`fault_fs`), power cut at each durable point of real migrations.

mod fault_fs;
mod support;

use std::fs;
use std::path::Path;

use fault_fs::{FailRule, FaultFs, Op};
use support::scenarios::*;
use support::*;

/// A disk with `source` (or nothing) on it, mounted; `None` where FUSE cannot be mounted (see [`cannot_run`]).
fn mount(dir: &TempDir) -> Option<fault_fs::Mounted> {
    let (backing, mountpoint) = (dir.join("disk"), dir.join("mnt"));
    fs::create_dir_all(&mountpoint).unwrap();
    if !backing.exists() {
        FaultFs::format(&backing, None);
    }
    match FaultFs::mount(&backing, &mountpoint) {
        Ok(mounted) => Some(mounted),
        Err(e) => {
            cannot_run(&format!("cannot mount the fault filesystem (needs /dev/fuse and fusermount3): {e}"));
            None
        }
    }
}

fn sync(path: &Path) {
    fs::File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn the_fault_filesystem_forgets_what_was_not_made_durable() {
    let dir = TempDir::new("faultfs");
    let Some(mounted) = mount(&dir) else { return };
    let root = mounted.mountpoint.clone();
    // Durable: a file synced, in a directory synced into the root, the root synced.
    fs::create_dir(root.join("d")).unwrap();
    fs::write(root.join("d/kept"), b"kept").unwrap();
    sync(&root.join("d/kept"));
    sync(&root.join("d"));
    sync(&root);
    // Written over without fsync: comes back as it was.
    fs::write(root.join("d/kept"), b"changed, never synced").unwrap();
    // Renamed into place before its data was synced, directory synced: empty.
    fs::write(root.join("d/.empty.tmp"), b"new").unwrap();
    fs::rename(root.join("d/.empty.tmp"), root.join("d/empty")).unwrap();
    // A rename whose directory was never synced: undone. A truncation never synced: undone.
    fs::write(root.join("old"), b"old").unwrap();
    sync(&root.join("old"));
    fs::write(root.join("grown"), vec![7u8; 10_000]).unwrap();
    sync(&root.join("grown"));
    sync(&root);
    fs::rename(root.join("old"), root.join("renamed")).unwrap();
    fs::OpenOptions::new().write(true).open(root.join("grown")).unwrap().set_len(10).unwrap();
    let control = mounted.control.clone();
    sync(&root.join("d"));
    // Synced data in a synced directory whose own entry was never synced: missing.
    fs::create_dir(root.join("late")).unwrap();
    fs::write(root.join("late/file"), b"data").unwrap();
    sync(&root.join("late/file"));
    sync(&root.join("late"));
    let points = control.durable_points();
    assert_eq!(points, 9, "{:?}", control.points());
    mounted.unmount();

    let Some(mounted) = mount(&dir) else { return };
    let root = mounted.mountpoint.clone();
    assert_eq!(fs::read(root.join("d/kept")).unwrap(), b"kept");
    assert!(!root.join("late").exists());
    assert_eq!(fs::read(root.join("d/empty")).unwrap(), b"");
    assert_eq!(fs::read(root.join("old")).unwrap(), b"old");
    assert!(!root.join("renamed").exists());
    assert_eq!(fs::read(root.join("grown")).unwrap(), vec![7u8; 10_000]);

    // Cut at a point: nothing after it reaches the disk, and everything fails meanwhile.
    mounted.control.cut_at(2);
    fs::write(root.join("a"), b"a").unwrap();
    sync(&root.join("a"));
    sync(&root);
    assert!(mounted.control.powered_off());
    assert!(fs::write(root.join("b"), b"b").is_err());
    mounted.unmount();
    let Some(mounted) = mount(&dir) else { return };
    assert_eq!(fs::read(mounted.mountpoint.join("a")).unwrap(), b"a");
    assert!(!mounted.mountpoint.join("b").exists());
}

/// A fault targets an operation by its path, so what differs from run to run in a path is masked.
#[test]
fn paths_that_differ_from_run_to_run_are_named_alike() {
    let stable = |path: &str| fault_fs::stable_path(path.into());
    assert_eq!(stable("/data/.etcd-migrate-write-probe-4711"), "/data/.etcd-migrate-write-probe-*");
    assert_eq!(
        stable("/b/data-backup-3.3.25-etcd3-20261203T195417Z.partial/member/snap/db"),
        "/b/data-backup-3.3.25-etcd3-*.partial/member/snap/db"
    );
    assert_eq!(stable("/data/member/wal/0.tmp"), "/data/member/wal/0.tmp");
}

/// A fault disk holding a copy of `scenario`'s template, mounted in `dir`.
fn disk_with(dir: &TempDir, scenario: &Scenario) -> Option<fault_fs::Mounted> {
    FaultFs::format(&dir.join("disk"), Some(scenario.template.path()));
    mount(dir)
}

/// How a run cut at one point ended.
#[derive(Debug, Default)]
struct Sweep {
    cut: u64,
    finished_first: u64,
    refused: Vec<String>,
    keys_checked: usize,
}

/// The durable points to cut at of `total`: all with `POWER_CUT_ALL=1`, else `POWER_CUT_POINTS` (default
/// [`CI_POINTS`]) spread evenly, the first and last among them.
fn points_to_cut(total: u64) -> Vec<u64> {
    if std::env::var("POWER_CUT_ALL").is_ok_and(|v| v == "1") {
        return (1..=total).collect();
    }
    if let Ok(list) = std::env::var("POWER_CUT_AT") {
        return list
            .split(',')
            .map(|p| p.trim().parse().expect("POWER_CUT_AT: points, comma-separated"))
            .collect();
    }
    let wanted: u64 =
        std::env::var("POWER_CUT_POINTS").ok().and_then(|v| v.parse().ok()).unwrap_or(CI_POINTS).max(2);
    let mut points: Vec<u64> = (0..wanted).map(|i| 1 + i * (total - 1) / (wanted - 1)).collect();
    points.dedup();
    points
}

const CI_POINTS: u64 = 6;

/// After a cut and a reboot: version.txt names a state on the way (never empty, torn or missing), and
/// unless a journal says a step is under way, the data is in that state as far as the data dir can tell
/// without etcd (the rerun and the final check prove the rest).
fn check_after_cut(scenario: &Scenario, data: &Path, states: &[String], point: u64) {
    let said = etcd_migrate::data_dir::version_file::read(data)
        .unwrap_or_else(|e| panic!("{} cut at {point}: {e}", scenario.name))
        .unwrap_or_else(|| panic!("{} cut at {point}: version.txt is gone", scenario.name));
    assert!(states.contains(&said.to_string()), "{} cut at {point}: version.txt says {said}", scenario.name);
    let journal = etcd_migrate::data_dir::journal::read(data)
        .unwrap_or_else(|e| panic!("{} cut at {point}: {e}", scenario.name));
    let facts = etcd_migrate::data_dir::inspect(data).unwrap();
    let unfinished = journal.as_ref().map(|j| j.step.after());
    let current = etcd_migrate::data_dir::current(data, &facts, None, unfinished)
        .unwrap_or_else(|e| panic!("{} cut at {point}: {e}", scenario.name));
    assert_eq!(current, etcd_migrate::data_dir::Current::At(said), "{} cut at {point}", scenario.name);
    if journal.is_none() && said.storage == etcd_migrate::version::Storage::Etcd3 {
        assert!(
            facts.has_db,
            "{} cut at {point}: version.txt says {said} and there is no member/snap/db",
            scenario.name
        );
    }
}

/// Runs `scenario` once on a fault disk to count its durable points, then, for each point to cut at, runs
/// it again on a fresh disk, cuts the power there, kills every process, mounts what the disk kept and
/// reruns the migrator: it must end at the target with every key, value and lease, or refuse with exit 2
/// naming what it found; and version.txt must never name a state the data is not in.
///
/// With `backup_dir`, the backups go to that folder on the fault disk, which the run creates.
fn power_cut_sweep(scenario: Scenario, states: &[&str], backup_dir: Option<&str>) -> Option<Sweep> {
    let migrator = |data: &Path| {
        let migrator = scenario.migrator(data);
        match backup_dir {
            Some(name) => {
                let dir = data.parent().unwrap().join(name);
                migrator.args(&["--backup-dir", dir.to_str().unwrap()])
            }
            None => migrator,
        }
    };
    let states: Vec<String> = states.iter().map(|s| s.to_string()).collect();
    let started = std::time::Instant::now();
    let clean = TempDir::new(&format!("{}-clean", scenario.name));
    let mounted = disk_with(&clean, &scenario)?;
    let data = mounted.mountpoint.join("data");
    let output = migrator(&data).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let total = mounted.control.durable_points();
    let by_migrator = mounted.control.points().iter().filter(|p| p.starts_with("etcd-migrate ")).count();
    let (keys, digest) = scenario.check(&data);
    drop(mounted);
    let mut sweep = Sweep::default();
    for point in points_to_cut(total) {
        let dir = TempDir::new(&format!("{}-cut-{point}", scenario.name));
        let mounted = disk_with(&dir, &scenario)?;
        let data = mounted.mountpoint.join("data");
        mounted.control.cut_at(point);
        let mut run = migrator(&data);
        run.command.stderr(std::process::Stdio::null());
        let mut child = KillOnDrop(run.command.spawn().unwrap());
        let cut = mounted.control.wait_for_cut(|| child.0.try_wait().unwrap().is_some());
        if cut {
            let _ = child.0.kill();
            sweep.cut += 1;
        } else {
            sweep.finished_first += 1;
        }
        let status = child.0.wait().unwrap();
        assert!(
            cut || status.success(),
            "{} run for point {point} failed without a cut: {status}",
            scenario.name
        );
        assert_stopped(&data, &scenario.peer);
        drop(child);
        mounted.unmount();
        // The node comes back: what the disk kept, nothing else.
        let mounted = mount(&dir)?;
        check_after_cut(&scenario, &data, &states, point);
        let output = migrator(&data).run();
        match output.status.code() {
            Some(0) => {
                let (found, found_digest) = scenario.check(&data);
                assert_eq!((found, &found_digest), (keys, &digest), "{} cut at {point}", scenario.name);
                sweep.keys_checked += found;
            }
            Some(2) => {
                let said = stderr(&output);
                let line = said.lines().last().unwrap_or_default().to_string();
                assert!(!line.is_empty(), "{} cut at {point}: exit 2 without a message", scenario.name);
                sweep.refused.push(format!("point {point}: {line}"));
            }
            other => panic!("{} cut at {point}: rerun exited {other:?}: {}", scenario.name, stderr(&output)),
        }
        drop(mounted);
    }
    println!(
        "power cut {}: durable points {total} ({by_migrator} by the migrator), runs {} ({} cut, {} finished \
         first), keys checked {}, digest {digest}, refused {:?}, {:.0}s",
        scenario.name,
        sweep.cut + sweep.finished_first,
        sweep.cut,
        sweep.finished_first,
        sweep.keys_checked,
        sweep.refused,
        started.elapsed().as_secs_f64()
    );
    Some(sweep)
}

#[test]
fn power_cut_at_each_durable_point_of_a_two_step_upgrade_loses_nothing() {
    let scenario = upgrade_scenario();
    let Some(sweep) = power_cut_sweep(scenario, &["3.3.25/etcd3", "3.4.23/etcd3", "3.5.16/etcd3"], None)
    else {
        return;
    };
    assert!(sweep.refused.is_empty(), "{:?}", sweep.refused);
}

#[test]
fn power_cut_at_each_durable_point_of_an_etcd2_to_etcd3_conversion_loses_nothing() {
    let scenario = etcd2_scenario("etcd2-to-etcd3-on-3.3", "3.3.25");
    let Some(sweep) = power_cut_sweep(scenario, &["3.3.25/etcd2", "3.3.25/etcd3"], Some("backups")) else {
        return;
    };
    assert!(sweep.refused.is_empty(), "{:?}", sweep.refused);
}

#[test]
fn power_cut_at_each_durable_point_of_a_rollback_to_etcd2_loses_nothing() {
    let scenario = rollback_scenario();
    let Some(sweep) = power_cut_sweep(scenario, &["3.4.23/etcd3", "3.3.25/etcd2"], None) else { return };
    assert!(sweep.refused.is_empty(), "{:?}", sweep.refused);
}

/// The migrator's own operations of a clean run, as the fault disk counted them: each one a fault can
/// target, as (op, its number among the ops of its kind on its path, the path).
fn own_operations(counted: &[fault_fs::Counted]) -> Vec<(Op, u64, String)> {
    let mut seen: std::collections::BTreeMap<(Op, &str), u64> = Default::default();
    counted
        .iter()
        .map(|c| {
            let n = seen.entry((c.op, c.path.as_str())).or_default();
            *n += 1;
            (c.op, *n, c.path.clone())
        })
        .collect()
}

/// The operations to fail: every fsync, rename and mkdir of the migrator, and the first write to each
/// file it writes (a backup's copy is written in 1 MiB blocks: its first block stands for the rest). The
/// files of a backup's copy (`<backup>.partial/...`) are copied alike, by one code path: of each kind of
/// operation on them, the first and the last stand for the rest. Each is failed with ENOSPC and with EIO
/// under `POWER_CUT_ALL=1`; else the two alternate, over a spread of [`CI_FAULTS`] of them.
fn faults_to_inject(ops: &[(Op, u64, String)]) -> Vec<(Op, u64, String, i32)> {
    let in_copy = |path: &str| path.contains(".partial/");
    // The position in `ops` of the last operation of each kind on the copy.
    let last_in_copy: std::collections::BTreeMap<Op, usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, (_, _, path))| in_copy(path))
        .map(|(at, (op, ..))| (*op, at))
        .collect();
    let mut first_in_copy = std::collections::BTreeSet::new();
    let mut written = std::collections::BTreeSet::new();
    let targets: Vec<&(Op, u64, String)> = ops
        .iter()
        .enumerate()
        .filter(|(at, (op, _, path))| {
            let copy_site = !in_copy(path) || first_in_copy.insert(*op) || last_in_copy.get(op) == Some(at);
            copy_site && (*op != Op::Write || written.insert(path.clone()))
        })
        .map(|(_, target)| target)
        .collect();
    let all = std::env::var("POWER_CUT_ALL").is_ok_and(|v| v == "1");
    let mut faults = Vec::new();
    for (i, (op, nth, path)) in targets.iter().enumerate() {
        for errno in [libc::ENOSPC, libc::EIO] {
            if all || (errno == libc::ENOSPC) == (i % 2 == 0) {
                faults.push((*op, *nth, path.clone(), errno));
            }
        }
    }
    if all || faults.len() <= CI_FAULTS {
        return faults;
    }
    (0..CI_FAULTS).map(|i| faults[i * (faults.len() - 1) / (CI_FAULTS - 1)].clone()).collect()
}

const CI_FAULTS: usize = 10;

/// Fails each of the migrator's own writes, fsyncs, renames and mkdirs in turn (version.txt, the journal,
/// the backup, the swap), with ENOSPC and EIO: the run stops with one line naming the error, exit 2 with
/// the data dir untouched or exit 1 with version.txt telling the truth, and the next run, with the disk
/// healthy again, completes with every key.
fn io_error_sweep(scenario: Scenario, states: &[&str]) -> Option<usize> {
    let started = std::time::Instant::now();
    let clean = TempDir::new(&format!("{}-count", scenario.name));
    let mounted = disk_with(&clean, &scenario)?;
    mounted.control.count("etcd-migrate");
    let output = scenario.migrator(&mounted.mountpoint.join("data")).run();
    assert!(output.status.success(), "{}", stderr(&output));
    let ops = own_operations(&mounted.control.counted());
    drop(mounted);
    let faults = faults_to_inject(&ops);
    let (mut exit1, mut exit2) = (0, 0);
    for (op, nth, path, errno) in &faults {
        let what = format!("{} {op:?} #{nth} ({path}) failing with errno {errno}", scenario.name);
        let dir = TempDir::new(&format!("{}-fault", scenario.name));
        let mounted = disk_with(&dir, &scenario)?;
        let data = mounted.mountpoint.join("data");
        let before = tree_fingerprint(&data);
        mounted.control.fail(FailRule {
            op: *op,
            path: path.clone(),
            nth: *nth,
            errno: *errno,
            exe_prefix: "etcd-migrate".into(),
        });
        let output = scenario.migrator(&data).run();
        assert!(mounted.control.counted().iter().any(|c| c.failed), "{what}: the fault was never hit");
        let said = stderr(&output);
        let last = said.lines().last().unwrap_or_default();
        let errno_text = if *errno == libc::EIO { "Input/output error" } else { "No space left on device" };
        match output.status.code() {
            Some(2) => {
                exit2 += 1;
                assert_eq!(tree_fingerprint(&data), before, "{what}: exit 2, yet the data dir changed");
            }
            Some(1) => exit1 += 1,
            other => panic!("{what}: exit {other:?}: {said}"),
        }
        assert!(last.contains("ERROR") && last.contains(errno_text), "{what}: the last line says: {said}");
        assert_stopped(&data, &scenario.peer);
        let version = version_txt(&data);
        assert!(states.contains(&version.as_str()), "{what}: version.txt says {version}");
        mounted.control.count("etcd-migrate");
        let output = scenario.migrator(&data).run();
        assert!(output.status.success(), "{what}: the rerun failed: {}", stderr(&output));
        scenario.check(&data);
    }
    println!(
        "I/O errors {}: {} own operations, {} faults injected (exit 1: {exit1}, exit 2: {exit2}), all \
         recovered, {:.0}s",
        scenario.name,
        ops.len(),
        faults.len(),
        started.elapsed().as_secs_f64()
    );
    Some(faults.len())
}

#[test]
fn enospc_and_eio_in_the_migrators_own_writes_lose_nothing_in_an_upgrade() {
    io_error_sweep(upgrade_scenario(), &["3.3.25/etcd3", "3.4.23/etcd3", "3.5.16/etcd3"]);
}

#[test]
fn enospc_and_eio_in_the_migrators_own_writes_lose_nothing_in_a_rollback() {
    io_error_sweep(rollback_scenario(), &["3.4.23/etcd3", "3.3.25/etcd2"]);
}
