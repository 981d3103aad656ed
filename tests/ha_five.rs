//! Five members (issue 31), each pod the migrator with the cluster's `--initial-cluster`, rolled one
//! member at a time under a writer, while a watcher opened before the first roll follows the writer's
//! keys, resuming on the next member from its last revision + 1 whenever its stream breaks. In the last
//! roll two members' migrators are killed at once mid-step (their hidden etcds joined the cluster) and
//! their pods restarted: every acknowledged write is on every member and was watched exactly once, in
//! strictly increasing revisions; the seeded keys and their lease are intact; each version.txt right.

mod support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::cluster::{
    Cluster, Running, Seeded, Watcher, Writer, check_watched, cluster_version, last_acked_revision,
};
use support::*;

/// Five members started at `version` (outside any pod), seeded; a watcher from the revision after the
/// seed, then a writer.
fn five_members_under_writes(
    dir: &TempDir,
    version: &str,
) -> (Cluster, Vec<Running>, Seeded, Watcher, Writer) {
    let cluster = Cluster::of_size(dir, 5, None);
    let running = cluster.start(version);
    let seeded = cluster.seed();
    cluster.write_version_files(version);
    let seeded_at = block_on(current_revision(&cluster.endpoint(&cluster.members[0].client)));
    let watcher = Watcher::start(cluster.client_endpoints(), seeded_at + 1);
    let writer = Writer::start(cluster.client_endpoints());
    (cluster, running, seeded, watcher, writer)
}

/// Rolls the cluster to `target`, one member at a time, except the last two: their old etcds stop, both
/// their migrators pause at `point` (mid-step, each hidden etcd a member of the cluster again) and are
/// SIGKILLed at once, then both pods restart and finish the step they were killed in (`was` → `target`).
fn roll_with_two_killed_at_once(
    cluster: &Cluster,
    running: &mut [Running],
    target: &str,
    point: &str,
    was: &str,
) {
    let (first_killed, count) = (running.len() - 2, running.len());
    for (i, member) in running.iter_mut().enumerate().take(first_killed) {
        cluster.replace(member, i, target);
    }
    for member in &mut running[first_killed..] {
        member.stop();
    }
    let paused: Vec<(Pause, PausedRun)> = (first_killed..count)
        .map(|i| {
            let pause = Pause::at(point);
            let mut migrator = cluster.migrator(&cluster.members[i], target).args(&["--migrate-only"]);
            migrator.command.stderr(std::process::Stdio::piped());
            let run = pause.spawn_paused(migrator);
            (pause, run)
        })
        .collect();
    for (_, run) in &paused {
        kill(Pid::from_raw(run.id() as i32), Signal::SIGKILL).unwrap();
    }
    for (i, (_, run)) in (first_killed..).zip(paused) {
        eprintln!("--- m{i}'s migrator, killed at {point}:\n{}", run.kill());
        assert_eq!(
            version_txt(&cluster.members[i].data),
            format!("{was}/etcd3"),
            "m{i}: the step was under way"
        );
    }
    let mut pods: Vec<_> = (first_killed..count).map(|i| cluster.run_pod(i, target)).collect();
    for (i, pod) in (first_killed..).zip(&mut pods) {
        cluster.wait_ready(i, pod, target);
        assert!(
            pod.log().contains("recovering"),
            "m{i}'s restarted pod finished the killed step:\n{}",
            pod.log()
        );
    }
    for (member, pod) in running[first_killed..].iter_mut().zip(pods) {
        *member = Running::Pod(pod);
    }
    cluster.wait_cluster_version(&cluster_version(target));
}

/// Stops the writer and the watcher; every acknowledged put and seeded key is on every member, the
/// watcher received every acknowledged put once, in order, resuming at least once, and every
/// version.txt says `target`.
fn check_the_end(cluster: &Cluster, writer: Writer, watcher: Watcher, seeded: &Seeded, target: &str) {
    let acked = writer.stop();
    let watched = watcher.stop_at(last_acked_revision(&cluster.endpoint(&cluster.members[0].client)));
    eprintln!(
        "{} puts acknowledged, {} watched, the watch resumed {} times",
        acked.len(),
        watched.puts.len(),
        watched.resumed
    );
    check_watched(&watched, &acked);
    assert!(watched.resumed > 0, "the watch was broken by the roll and resumed");
    cluster.check_acked(&acked);
    cluster.check_seeded(seeded);
    for member in &cluster.members {
        assert_eq!(version_txt(&member.data), format!("{target}/etcd3"), "{}", member.name);
    }
}

#[test]
fn five_members_roll_from_3_3_to_3_5_with_two_killed_at_once_and_a_watch_misses_nothing() {
    let dir = TempDir::new("ha-five");
    let (cluster, mut running, seeded, watcher, writer) = five_members_under_writes(&dir, "3.3.25");
    cluster.roll(&mut running, "3.4.23");
    roll_with_two_killed_at_once(&cluster, &mut running, "3.5.30", "etcd-3.5.30-healthy", "3.4.23");
    check_the_end(&cluster, writer, watcher, &seeded, "3.5.30");
}

/// The mirror's releases: up through both seals to 3.7 (two killed at once mid-step there), then down
/// by etcd's online downgrade to 3.6 and 3.5, the watch resumed throughout.
#[test]
fn five_members_go_up_to_3_7_and_back_to_3_5_with_two_killed_at_once_and_a_watch_misses_nothing() {
    if !releases_present(&["3.5.33", "3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("ha-five-lineage");
    let (cluster, mut running, seeded, watcher, writer) = five_members_under_writes(&dir, "3.5.33");
    cluster.roll(&mut running, "3.6.14");
    roll_with_two_killed_at_once(&cluster, &mut running, "3.7.1", "etcd-3.7.1-healthy", "3.6.14");
    cluster.roll(&mut running, "3.6.14");
    cluster.roll(&mut running, "3.5.33");
    check_the_end(&cluster, writer, watcher, &seeded, "3.5.33");
}
