//! A three-member cluster with peer and client TLS (certificates made here with openssl), upgraded
//! member by member from 3.4.23 to 3.5.16 through the entrypoint without losing quorum or turning
//! security off; and a member told to jump two minors while its peers lag, refused with nothing changed.

mod support;

use std::process::Command;

use etcd_migrate::client::v3::V3Client;
use etcd_migrate::client::{Endpoint, TlsFiles};
use etcd_migrate::verify;
use support::cluster::Cluster;
use support::*;

#[test]
fn a_tls_cluster_is_upgraded_member_by_member_keeping_quorum_and_security() {
    let dir = TempDir::new("cluster-tls");
    let certs = make_certs(dir.path());
    let cluster = Cluster::new(&dir, Some(&certs));
    let mut running = cluster.start("3.4.23");
    let first = cluster.members[0].client.clone();
    for i in 0..20 {
        cluster.etcdctl("3.4.23", &first, &["put", &format!("/registry/k{i}"), &format!("v{i}")]).unwrap();
    }
    cluster.write_version_files("3.4.23");
    let without_cert = Command::new("timeout")
        .arg("20")
        .arg(etcdctl_binary("3.4.23"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &first, &format!("--cacert={}", certs.ca.display()), "get", "/registry/k0"])
        .output()
        .unwrap();
    assert!(!without_cert.status.success(), "a client without a certificate is refused");

    for (i, running) in running.iter_mut().enumerate() {
        cluster.replace(running, i, "3.5.16");
        cluster.wait_all_healthy();
        for other in &cluster.members {
            let value = cluster
                .etcdctl("3.5.16", &other.client, &["get", "/registry/k7", "--print-value-only"])
                .unwrap();
            assert_eq!(
                value.trim(),
                "v7",
                "after {} of 3 members, {} serves the keys over TLS",
                i + 1,
                other.name
            );
        }
        let count = cluster
            .etcdctl("3.5.16", &cluster.members[i].client, &["get", "/registry/", "--prefix", "--keys-only"])
            .unwrap();
        assert_eq!(count.lines().filter(|l| !l.is_empty()).count(), 20);
    }

    let status =
        cluster.etcdctl("3.5.16", &cluster.endpoints(), &["endpoint", "status", "-w", "json"]).unwrap();
    assert_eq!(status.matches("\"version\":\"3.5.16\"").count(), 3, "{status}");
    cluster.wait_cluster_version("3.5.0");
    let endpoint = cluster.endpoint(&first);

    // Where the roll stands, as an operator asks a node: each peer answers on its peer URL, over the
    // member's peer TLS files.
    let output = cluster.migrator(&cluster.members[0], "3.5.16").args(&["status"]).run();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    for peer in &cluster.members[1..] {
        let line = format!("peer {} ({}): etcd 3.5.16, cluster 3.5.0", peer.name, peer.peer);
        assert!(said.contains(&line), "status names {line:?}:\n{said}");
    }

    // The migrator's v3 client speaks gRPC over the same TLS files, and is refused without them.
    let summary = block_on(async {
        let client = V3Client::connect(endpoint.clone()).await.unwrap();
        verify::v3_summary(&client, "/registry/", false, None).await.unwrap()
    });
    assert_eq!(summary.count, 20, "every key read over gRPC with TLS");
    let no_identity = TlsFiles { ca: Some(certs.ca.clone()), ..TlsFiles::default() };
    let refused = block_on(async {
        let client = V3Client::connect(Endpoint::new(&first, &no_identity).unwrap()).await?;
        verify::v3_summary(&client, "/registry/", false, None).await
    });
    assert!(refused.is_err(), "a v3 client without a certificate is refused");
}

#[test]
fn a_member_told_to_jump_two_minors_while_its_peers_lag_is_refused() {
    let dir = TempDir::new("cluster-jump");
    let cluster = Cluster::new(&dir, None);
    let mut running = cluster.start("3.3.25");
    cluster.etcdctl("3.3.25", &cluster.members[0].client, &["put", "/registry/k", "v"]).unwrap();
    cluster.write_version_files("3.3.25");
    let member = &cluster.members[2];
    running[2].stop();
    let before = tree_fingerprint(&member.data);
    let output = cluster.migrator(member, "3.5.16").args(&["--migrate-only"]).run();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("peers run the cluster at 3.3")
            && message.contains("upgrade every member to 3.4 first"),
        "{message}"
    );
    assert_eq!(tree_fingerprint(&member.data), before, "nothing changed");

    // One minor is allowed: the member rejoins its 3.3 peers as 3.4.
    let output = cluster.migrator(member, "3.4.23").args(&["--migrate-only"]).run();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&member.data), "3.4.23/etcd3");
}
