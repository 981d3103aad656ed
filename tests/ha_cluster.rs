//! HA control planes (issue 23): three etcd members, one pod per node, each pod the migrator in exec mode
//! with the cluster's `--initial-cluster`, rolled one node at a time while a writer keeps writing. Every
//! acknowledged put and every seeded key (some on one long lease) is on every member afterwards. Up the
//! lineage and back down it from 3.6 on by etcd's online downgrade (one migrator killed mid-step); below
//! 3.6 a member-by-member downgrade is refused with nothing changed; a member without quorum waits for
//! its peers, naming them; a member left behind catches up with its peers.

mod support;

use std::io::BufRead as _;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Instant;

use etcd_migrate::client::v3::versions;
use support::cluster::{Cluster, Running, SETTLE, Seeded, Writer};
use support::*;

/// A cluster in `dir` started at `version` (outside any pod), seeded, each version.txt saying so.
fn seeded_cluster(dir: &TempDir, version: &str) -> (Cluster, Vec<Running>, Seeded) {
    let cluster = Cluster::new(dir, None);
    let running = cluster.start(version);
    let seeded = cluster.seed();
    cluster.write_version_files(version);
    (cluster, running, seeded)
}

/// Stops the writer; every put it had acknowledged and every seeded key is on every member.
fn check_nothing_lost(cluster: &Cluster, writer: Writer, seeded: &Seeded) {
    let acked = writer.stop();
    cluster.check_acked(&acked);
    cluster.check_seeded(seeded);
}

/// Rolls the cluster to each of `targets` in turn under the writer, which keeps having puts acknowledged.
fn roll_through(cluster: &Cluster, running: &mut [Running], targets: &[&str], writer: &Writer) {
    for target in targets {
        let before = writer.acked();
        cluster.roll(running, target);
        assert!(writer.acked() > before, "puts were acknowledged while the cluster rolled to {target}");
        eprintln!("rolled to {target}: {} puts acknowledged", writer.acked());
    }
}

#[test]
fn a_cluster_rolls_from_3_3_to_3_5_member_by_member_and_refuses_the_way_back() {
    let dir = TempDir::new("ha-registry");
    let (cluster, mut running, seeded) = seeded_cluster(&dir, "3.3.25");
    let writer = Writer::start(cluster.client_endpoints());

    roll_through(&cluster, &mut running, &["3.4.23", "3.5.30"], &writer);
    cluster.check_seeded(&seeded);

    // Back to 3.4 one member at a time cannot be done: refused with the member's data untouched.
    running[0].stop();
    let member = &cluster.members[0];
    let before = tree_fingerprint(&member.data);
    let output = cluster.migrator(member, "3.4.23").args(&["--migrate-only"]).run();
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    let refusals: Vec<&str> =
        said.lines().filter(|l| l.contains("cannot be done member by member")).collect();
    assert_eq!(refusals.len(), 1, "one line says why: {said}");
    assert!(refusals[0].contains("snapshot"), "it names the procedure: {said}");
    assert_eq!(tree_fingerprint(&member.data), before, "nothing changed");
    assert_eq!(version_txt(&member.data), "3.5.30/etcd3");

    running[0] = cluster.pod_ready(0, "3.5.30");
    cluster.wait_all_healthy();
    cluster.wait_cluster_version("3.5.0");
    check_nothing_lost(&cluster, writer, &seeded);
}

#[test]
fn a_member_without_quorum_waits_for_its_peers_and_names_those_not_answering() {
    let dir = TempDir::new("ha-quorum");
    let (cluster, mut running, seeded) = seeded_cluster(&dir, "3.4.23");
    for member in running.iter_mut() {
        member.stop();
    }

    let mut migrator = cluster.migrator(&cluster.members[0], "3.5.30").args(&["--migrate-only"]);
    migrator.command.stderr(Stdio::piped());
    let mut child = KillOnDrop(migrator.command.spawn().unwrap());
    let pipe = child.0.stderr.take().unwrap();
    let (lines, next_line) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut said = Vec::new();
        for line in std::io::BufReader::new(pipe).lines() {
            let line = line.unwrap();
            let _ = lines.send(line.clone());
            said.push(line);
        }
        said.join("\n")
    });

    let deadline = Instant::now() + SETTLE;
    let mut seen = Vec::new();
    let waiting = loop {
        match next_line.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("waiting for quorum") => break line,
            Ok(line) => seen.push(line),
            Err(end) => panic!("no line says it waits for quorum ({end:?}); it said:\n{}", seen.join("\n")),
        }
    };
    assert!(waiting.contains("m1") && waiting.contains("m2"), "it names both absent peers: {waiting}");

    // One peer back is a quorum: the hidden etcd becomes healthy and the migration completes.
    running[1] = cluster.start_bare(&cluster.members[1], "3.4.23");
    let deadline = Instant::now() + SETTLE + SETTLE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the migrator never completed once m1 was back");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let said = reader.join().unwrap();
    eprintln!("--- etcd-migrate stderr:\n{said}");
    assert!(status.success(), "{status}: {said}");
    assert_eq!(version_txt(&cluster.members[0].data), "3.5.30/etcd3");

    running[0] = cluster.pod_ready(0, "3.5.30");
    running[2] = cluster.start_bare(&cluster.members[2], "3.4.23");
    cluster.wait_all_healthy();
    cluster.check_seeded(&seeded);
}

/// m2's node is down while m0 and m1 move to 3.4 (the cluster stays at 3.3: etcd raises the cluster
/// version only once every member runs the newer minor). m2 comes back with the manifest already at 3.5:
/// its data is two minors behind the target and one behind its peers. Its pod takes the step it can
/// (3.4, joining its peers, which lets the cluster move to 3.4), then the next, and runs 3.5, instead of
/// refusing on every restart while the cluster waits for it.
#[test]
fn a_member_left_behind_catches_up_with_its_peers() {
    let dir = TempDir::new("ha-catch-up");
    let (cluster, mut running, seeded) = seeded_cluster(&dir, "3.3.25");
    let writer = Writer::start(cluster.client_endpoints());

    running[2].stop();
    for (i, member) in running.iter_mut().enumerate().take(2) {
        cluster.replace(member, i, "3.4.23");
    }
    for member in &cluster.members[..2] {
        let cluster_version = block_on(versions(&cluster.endpoint(&member.client))).unwrap().cluster;
        assert_eq!(cluster_version, "3.3.0", "{}: no newer cluster version while m2 is away", member.name);
    }

    running[2] = cluster.pod_ready(2, "3.5.30");
    cluster.wait_cluster_version("3.4.0");
    for (i, member) in running.iter_mut().enumerate().take(2) {
        cluster.replace(member, i, "3.5.30");
    }
    cluster.wait_cluster_version("3.5.0");

    check_nothing_lost(&cluster, writer, &seeded);
}

/// Member `i`'s pod with `target`, its migrator killed at fault point `point` (its old etcd stopped
/// first, as a node's roll does), then the pod restarted, as the kubelet would: the step it was killed in
/// was under way (`version.txt` still says `was`), and the restarted pod says it recovered it.
fn kill_at_then_restart(
    cluster: &Cluster,
    running: &mut [Running],
    i: usize,
    target: &str,
    point: &str,
    was: &str,
) {
    running[i].stop();
    let killed = cluster.migrator(&cluster.members[i], target).args(&["--migrate-only"]);
    assert!(Pause::at(point).kill_there(killed), "m{i}'s migrator reached {point}");
    assert_eq!(version_txt(&cluster.members[i].data), format!("{was}/etcd3"), "the step was under way");
    let mut pod = cluster.run_pod(i, target);
    cluster.wait_ready(i, &mut pod, target);
    assert!(pod.log().contains("recovering"), "the restarted pod finished the killed step:\n{}", pod.log());
    running[i] = Running::Pod(pod);
}

/// 3.4 up every minor to 3.7 and back down to 3.5, member by member under the writer: up through the
/// seal of 3.5's v2 records (and 3.6's before 3.7), down by etcd's online downgrade. A migrator is killed
/// at each point new to a cluster, and its pod restarted: m0 sealing 3.6 before 3.7; then, down to 3.6,
/// m0 with the downgrade just enabled, m1 and m2 (the last) once their hidden 3.6.14 joined; down to
/// 3.5, m0 once 3.6.14 lowered its storage. m2's node is down while m0 and m1 move to 3.7: it comes back
/// at 3.6 data among 3.7 peers and seals and moves up all the same.
#[test]
fn a_cluster_goes_up_to_3_7_and_back_to_3_5_member_by_member_under_writes() {
    if !releases_present(&["3.5.33", "3.6.14", "3.7.1"]) {
        return;
    }
    let dir = TempDir::new("ha-lineage");
    let (cluster, mut running, seeded) = seeded_cluster(&dir, "3.4.23");
    let writer = Writer::start(cluster.client_endpoints());

    roll_through(&cluster, &mut running, &["3.5.33", "3.6.14"], &writer);
    cluster.check_seeded(&seeded);

    running[2].stop();
    kill_at_then_restart(&cluster, &mut running, 0, "3.7.1", "v2-snapshot-forced", "3.6.14");
    cluster.replace(&mut running[1], 1, "3.7.1");
    for member in &cluster.members[..2] {
        let cluster_version = block_on(versions(&cluster.endpoint(&member.client))).unwrap().cluster;
        assert_eq!(cluster_version, "3.6.0", "{}: no newer cluster version while m2 is away", member.name);
    }
    running[2] = cluster.pod_ready(2, "3.7.1");
    cluster.wait_cluster_version("3.7.0");
    cluster.check_seeded(&seeded);

    kill_at_then_restart(&cluster, &mut running, 0, "3.6.14", "online-downgrade-enabled", "3.7.1");
    kill_at_then_restart(&cluster, &mut running, 1, "3.6.14", "etcd-3.6.14-healthy", "3.7.1");
    kill_at_then_restart(&cluster, &mut running, 2, "3.6.14", "etcd-3.6.14-healthy", "3.7.1");
    cluster.wait_cluster_version("3.6.0");
    cluster.check_seeded(&seeded);

    kill_at_then_restart(&cluster, &mut running, 0, "3.5.33", "online-downgrade-lowered", "3.6.14");
    cluster.replace(&mut running[1], 1, "3.5.33");
    cluster.replace(&mut running[2], 2, "3.5.33");
    cluster.wait_cluster_version("3.5.0");
    check_nothing_lost(&cluster, writer, &seeded);
}
