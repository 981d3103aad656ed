//! A three-member cluster with peer and client TLS (certificates made here with openssl), upgraded
//! member by member from 3.4.23 to 3.5.16 through the entrypoint without losing quorum or turning
//! security off; and a member told to jump two minors while its peers lag, refused with nothing changed.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_migrate::client::v3::V3Client;
use etcd_migrate::client::{Endpoint, TlsFiles};
use etcd_migrate::etcd_process::{EtcdProcess, EtcdSpec};
use etcd_migrate::verify;
use support::*;

struct Member {
    name: String,
    data: PathBuf,
    client: String,
    peer: String,
}

struct Cluster {
    members: Vec<Member>,
    initial_cluster: String,
    tls: Vec<String>,
    scheme: &'static str,
}

impl Cluster {
    fn new(dir: &TempDir, certs: Option<&Certs>) -> Cluster {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                data: dir.join(&format!("m{i}/data")),
                client: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer: format!("{scheme}://127.0.0.1:{}", free_port()),
            })
            .collect();
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let tls = certs.map_or(Vec::new(), |c| {
            let (ca, cert, key) = (c.ca.display(), c.cert.display(), c.key.display());
            vec![
                format!("--cert-file={cert}"),
                format!("--key-file={key}"),
                format!("--trusted-ca-file={ca}"),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={cert}"),
                format!("--peer-key-file={key}"),
                format!("--peer-trusted-ca-file={ca}"),
                "--peer-client-cert-auth".into(),
            ]
        });
        Cluster { members, initial_cluster, tls, scheme }
    }

    fn spec(&self, member: &Member, version: &str) -> EtcdSpec {
        EtcdSpec {
            binary: etcd(version),
            version: version.parse().unwrap(),
            data_dir: member.data.clone(),
            name: member.name.clone(),
            listen_client_urls: member.client.clone(),
            listen_peer_urls: member.peer.clone(),
            initial_advertise_peer_urls: member.peer.clone(),
            initial_cluster: self.initial_cluster.clone(),
            initial_cluster_state: None,
            enable_v2: false,
            extra_args: self.tls.clone(),
        }
    }

    /// Starts every member with `version` and waits until each is healthy.
    fn start(&self, version: &str) -> Vec<Option<EtcdProcess>> {
        block_on(async {
            let mut running = Vec::new();
            for member in &self.members {
                running.push(start_etcd(self.spec(member, version)).await);
            }
            for etcd in &mut running {
                etcd.wait_healthy(Duration::from_secs(60)).await.unwrap();
            }
            running.into_iter().map(Some).collect()
        })
    }

    /// etcdctl against `endpoint` with this cluster's client certificate.
    fn etcdctl(&self, version: &str, endpoint: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("timeout");
        command
            .arg("20")
            .arg(etcdctl_binary(version))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint]);
        for arg in &self.tls {
            for (server_flag, client_flag) in
                [("--cert-file=", "--cert="), ("--key-file=", "--key="), ("--trusted-ca-file=", "--cacert=")]
            {
                if let Some(path) = arg.strip_prefix(server_flag) {
                    command.arg(format!("{client_flag}{path}"));
                }
            }
        }
        let output = command.args(args).output().unwrap();
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.clone()).collect::<Vec<_>>().join(",")
    }

    /// Waits until every member answers healthy.
    fn wait_all_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self.etcdctl("3.5.16", &self.endpoints(), &["endpoint", "health"]) {
                Ok(out) if out.matches("is healthy").count() == 3 => return,
                other => assert!(Instant::now() < deadline, "cluster never became healthy: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The migrator for `member`, with the member's real identity, TLS and a hidden https client URL.
    fn migrator(&self, member: &Member, target: &str) -> Migrator {
        let hidden = format!("{}://127.0.0.1:{}", self.scheme, free_port());
        Migrator::new(&member.data, &member.peer).args(&[
            "--target-version",
            target,
            "--name",
            &member.name,
            "--listen-client-urls",
            &hidden,
            "--listen-peer-urls",
            &member.peer,
            "--initial-advertise-peer-urls",
            &member.peer,
            "--initial-cluster",
            &self.initial_cluster,
            "--etcd-server-extra-args",
            &self.tls.join(" "),
        ])
    }

    fn final_etcd_args(&self, member: &Member) -> Vec<String> {
        let mut args = vec![
            "--".to_string(),
            format!("--name={}", member.name),
            format!("--listen-client-urls={}", member.client),
            format!("--advertise-client-urls={}", member.client),
            format!("--listen-peer-urls={}", member.peer),
            format!("--initial-advertise-peer-urls={}", member.peer),
            format!("--initial-cluster={}", self.initial_cluster),
        ];
        args.extend(self.tls.iter().cloned());
        args
    }
}

fn write_version_files(cluster: &Cluster, version: &str) {
    for member in &cluster.members {
        std::fs::write(member.data.join("version.txt"), format!("{version}/etcd3")).unwrap();
    }
}

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
    write_version_files(&cluster, "3.4.23");
    let without_cert = Command::new("timeout")
        .arg("20")
        .arg(etcdctl_binary("3.4.23"))
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &first, &format!("--cacert={}", certs.ca.display()), "get", "/registry/k0"])
        .output()
        .unwrap();
    assert!(!without_cert.status.success(), "a client without a certificate is refused");

    let mut upgraded = Vec::new();
    for (i, member) in cluster.members.iter().enumerate() {
        let etcd = running[i].take().unwrap();
        block_on(etcd.stop(Duration::from_secs(10))).unwrap();
        let mut migrator = cluster.migrator(member, "3.5.16");
        migrator.command.args(cluster.final_etcd_args(member)).stderr(Stdio::null());
        upgraded.push(KillOnDrop(migrator.command.spawn().unwrap()));
        cluster.wait_all_healthy();
        assert_eq!(std::fs::read_to_string(member.data.join("version.txt")).unwrap().trim(), "3.5.16/etcd3");
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
            .etcdctl("3.5.16", &member.client, &["get", "/registry/", "--prefix", "--keys-only"])
            .unwrap();
        assert_eq!(count.lines().filter(|l| !l.is_empty()).count(), 20);
    }

    let status =
        cluster.etcdctl("3.5.16", &cluster.endpoints(), &["endpoint", "status", "-w", "json"]).unwrap();
    assert_eq!(status.matches("\"version\":\"3.5.16\"").count(), 3, "{status}");
    let tls =
        TlsFiles { ca: Some(certs.ca.clone()), cert: Some(certs.cert.clone()), key: Some(certs.key.clone()) };
    let endpoint = Endpoint::new(&first, &tls).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let versions = block_on(etcd_migrate::client::v3::versions(&endpoint)).unwrap();
        if versions.cluster == "3.5.0" {
            break;
        }
        assert!(Instant::now() < deadline, "the cluster never moved to 3.5: {versions:?}");
        std::thread::sleep(Duration::from_millis(500));
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
    write_version_files(&cluster, "3.3.25");
    let member = &cluster.members[2];
    block_on(running[2].take().unwrap().stop(Duration::from_secs(10))).unwrap();
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
