//! A member cut off, not stopped (issue 31). Each member is a host of its own (a network namespace the
//! test makes, joined to a bridge where the test and its clients run; `support::netns`), so cutting a
//! member's link drops its packets: connections to and from it hang rather than being refused, as on a
//! real network partition. Its peers roll to the next minor without it; a member whose data is left
//! behind asks its peers while one of them is cut off (the ask ends, and the silent peer does not count);
//! the cut-off member's pod restarts with the roll's target while still cut off: its hidden etcd has no
//! quorum, it says every few seconds which peers it waits for, and it completes once its link is back.
//! Every write the cluster acknowledged meanwhile is on every member at the end.

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Running, SETTLE, Writer, cluster_version};
use support::netns::Network;
use support::*;

#[test]
fn a_member_cut_off_mid_roll_waits_for_its_peers_by_name_and_completes_once_its_link_is_back() {
    cut_off_while_its_peers_roll("3.3.25", "3.4.23", "3.5.30");
}

/// The same where the cut-off member's first step is the seal before 3.6: its hidden 3.5.33 is the one
/// without quorum.
#[test]
fn a_member_cut_off_mid_roll_to_3_6_waits_in_its_seal_and_completes_once_its_link_is_back() {
    if !releases_present(&["3.5.33", "3.6.14", "3.7.1"]) {
        return;
    }
    cut_off_while_its_peers_roll("3.5.33", "3.6.14", "3.7.1");
}

/// Three members on hosts of their own at `from`; m2 is cut off while m0 and m1 roll to `next`; m2, left
/// behind with its manifest at `beyond`, asks its peers while m0 is cut off and is refused; m2's pod,
/// restarted with `next` while cut off, waits for quorum naming its peers, and completes once back.
fn cut_off_while_its_peers_roll(from: &str, next: &str, beyond: &str) {
    let Some(network) = Network::enter(3) else { return };
    let dir = TempDir::new("ha-partition");
    let cluster = Cluster::on_hosts(&dir, &network);
    let mut pods: Vec<_> = (0..3).map(|i| cluster.run_pod(i, from)).collect();
    for (i, pod) in pods.iter_mut().enumerate() {
        cluster.wait_ready(i, pod, from);
    }
    let mut running: Vec<Running> = pods.into_iter().map(Running::Pod).collect();
    let seeded = cluster.seed();
    let writer = Writer::start(cluster.client_endpoints());
    let peer = |i: usize| format!("{} ({})", cluster.members[i].name, cluster.members[i].peer);

    // m2 is cut off, its etcd still running; m0 and m1 move to `next` without it, still taking writes.
    network.cut(2);
    for (i, member) in running.iter_mut().enumerate().take(2) {
        cluster.replace(member, i, next);
    }
    let acked_before = writer.acked();
    wait_for(|| writer.acked() > acked_before, "puts acknowledged by m0 and m1 while m2 is cut off");

    // m2's node goes down; back on the network, its manifest already at `beyond`, it would catch up with
    // its peers, but m0 is cut off now: asking its peers ends all the same, and a silent peer does not
    // count, so it is refused with nothing changed rather than let through on m1's word alone.
    running[2].stop();
    network.mend(2);
    network.cut(0);
    let m2 = &cluster.members[2];
    let before = tree_fingerprint(&m2.data);
    let output = cluster.migrator(m2, beyond).args(&["--migrate-only"]).run();
    let said = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains(&format!("{} does not answer", peer(0))), "the cut-off peer is silent: {said}");
    assert!(said.contains(&format!("{} runs {next}", peer(1))), "the other peer answers: {said}");
    let next_minor = next.rsplit_once('.').unwrap().0;
    assert!(said.contains(&format!("upgrade every member to {next_minor} first")), "{said}");
    assert_eq!(tree_fingerprint(&m2.data), before, "nothing changed");
    network.mend(0);

    // m2's pod restarts with the roll's target while cut off again: its hidden etcd has no quorum.
    network.cut(2);
    let mut pod = cluster.run_pod(2, next);
    let waiting = format!("waiting for quorum: peers not answering: {}, {}", peer(0), peer(1));
    wait_for(|| pod.log().matches(&waiting).count() >= 2, "m2 says twice which peers it waits for");
    assert_eq!(version_txt(&m2.data), format!("{from}/etcd3"), "no step completes without quorum");
    network.mend(2);
    cluster.wait_ready(2, &mut pod, next);
    eprintln!("--- m2's pod, cut off, then back:\n{}", pod.log());
    running[2] = Running::Pod(pod);
    cluster.wait_cluster_version(&cluster_version(next));

    let acked = writer.stop();
    cluster.check_acked(&acked);
    cluster.check_seeded(&seeded);
}

/// Waits until `condition` holds, failing with `what` if it does not within [`SETTLE`].
fn wait_for(condition: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + SETTLE;
    while !condition() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
