//! The v2 and v3 clients, etcdctl and the bbolt reader against real etcd releases.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use etcd_migrate::bbolt;
use etcd_migrate::client::v2::V2Client;
use etcd_migrate::client::v3::{LATEST, ModRevisionIs, Op, V3Client, max_txn_ops, prefix_end};
use etcd_migrate::client::{ClientError, Endpoint, TlsFiles};
use etcd_migrate::data_dir::db_path;
use etcd_migrate::etcdctl::{Etcdctl, EtcdctlError, RestoreMember};
use etcd_migrate::version::Version;
use support::*;

const KEYS: usize = 2500;

#[test]
fn v3_client_pages_batches_and_leases_and_bbolt_reads_what_etcd_wrote() {
    for (version, minor) in [("3.3.25", 3), ("3.4.23", 4), ("3.5.16", 5)] {
        pages_batches_leases_and_bbolt(version, minor);
    }
}

#[test]
fn v3_client_pages_batches_and_leases_and_bbolt_reads_what_etcd_3_6_wrote() {
    if !releases_present(&["3.6.14"]) {
        return;
    }
    pages_batches_leases_and_bbolt("3.6.14", 6);
}

/// The v3 client against etcd `version` (minor 3.`minor`): paged reads at one revision, batched
/// transactions up to the limit, leases; then bbolt reads the db that etcd wrote.
fn pages_batches_leases_and_bbolt(version: &str, minor: u32) {
    let dir = TempDir::new("clients");
    let data = dir.join("data");
    let etcd = TestEtcd::start(version, &data);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let expected: BTreeSet<Vec<u8>> = (0..KEYS).map(|i| format!("/registry/k/{i:05}").into_bytes()).collect();
    let (seen, lease_keys) = rt.block_on(async {
        let endpoint = Endpoint::new(&etcd.client_url, &TlsFiles::default()).unwrap();
        let client = V3Client::connect(endpoint.clone()).await.unwrap();
        let mut grpc = grpc(&endpoint).await;
        let max_txn_ops = max_txn_ops(client.capabilities());
        assert_eq!(max_txn_ops, 1024, "{version}: the hidden etcd's --max-txn-ops");
        let ops: Vec<Op> =
            expected.iter().map(|k| Op::Put { key: k.clone(), value: k.clone(), lease: 0 }).collect();
        for batch in ops.chunks(max_txn_ops) {
            assert!(client.txn(Vec::new(), batch.to_vec()).await.unwrap());
        }
        let one_too_many: Vec<Op> =
            (0..=max_txn_ops).map(|i| Op::Delete { key: format!("/x/{i}").into_bytes() }).collect();
        let refused = client.txn(Vec::new(), one_too_many).await.unwrap_err();
        assert!(refused.to_string().contains("too many operations"), "{version}: {refused}");
        let lease = client.lease_grant(600).await.unwrap();
        grpc.put("/registry/events/e1", "event", Some(etcd_client::PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
        let ttl = client.lease_ttl(lease).await.unwrap();
        assert_eq!(client.lease_ids().await.unwrap(), vec![lease]);
        assert!(ttl > 0 && ttl <= 600, "{ttl}");

        grpc.put("/registry/k/00007", "rewritten", None).await.unwrap();
        let before_read = current_revision(&endpoint).await;
        let mut seen = Vec::new();
        let mut pages = Vec::new();
        let read_at = client
            .for_each_page(b"/registry/k/", &prefix_end(b"/registry/k/"), LATEST, async |kvs| {
                if pages.is_empty() {
                    // Written after the first page: later pages are read at the first page's revision.
                    grpc.clone().put("/registry/k/99999", "too late", None).await.unwrap();
                }
                pages.push(kvs.len());
                for kv in kvs {
                    let rewritten = kv.key == b"/registry/k/00007";
                    assert_eq!(kv.value, if rewritten { b"rewritten".to_vec() } else { kv.key.clone() });
                    assert_eq!(kv.version, if rewritten { 2 } else { 1 });
                    assert!(kv.create_revision <= kv.mod_revision && kv.mod_revision <= before_read);
                    seen.push(kv.key);
                }
                Ok::<(), ClientError>(())
            })
            .await
            .unwrap();
        assert!(pages.len() > 1, "{version}: {KEYS} keys come in more than one page: {pages:?}");
        assert_eq!(read_at, before_read, "{version}: one revision for every page");
        (seen, lease_info(&endpoint, lease).await.keys().to_vec())
    });
    assert_eq!(
        seen.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "{version}: every key once, in order"
    );
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(lease_keys, vec![b"/registry/events/e1".to_vec()]);

    // bbolt: readable while etcd runs (no lock; what etcd has committed so far), then exactly after a
    // clean stop.
    bbolt::cluster_version(&db_path(&data)).unwrap();
    etcd.stop();
    assert_eq!(bbolt::cluster_version(&db_path(&data)).unwrap(), Some(Version::new(3, minor, 0)));
    assert_eq!(
        bbolt::count_keys(&db_path(&data), b"key").unwrap(),
        KEYS as u64 + 3,
        "{version}: one revision per put"
    );
    assert_eq!(bbolt::count_keys(&db_path(&data), b"no-such-bucket").unwrap(), 0);
    assert_eq!(bbolt::read_value(&db_path(&data), b"cluster", b"nothing").unwrap(), None);
}

/// gRPC drops a request field the server does not know: a put with `ignore_value` would blank the value
/// on 3.0 and 3.1. The client sends it only to releases that know it, and refuses otherwise.
#[test]
fn attaching_a_lease_keeps_the_value_on_releases_that_know_ignore_value() {
    attach_a_lease("3.3.25", true, 1024);
}

#[test]
fn attaching_a_lease_is_refused_where_ignore_value_would_blank_the_value() {
    if !releases_present(&["3.0.17", "3.1.20", "3.2.32"]) {
        return;
    }
    for (version, ignores_value, txn_ops) in
        [("3.0.17", false, 128), ("3.1.20", false, 128), ("3.2.32", true, 128)]
    {
        attach_a_lease(version, ignores_value, txn_ops);
    }
}

/// Puts a key on etcd `version` and attaches a lease to it: kept value and lease where the release
/// `ignores_value`, refused otherwise; transactions take `txn_ops` operations there.
fn attach_a_lease(version: &str, ignores_value: bool, txn_ops: usize) {
    let dir = TempDir::new("ignore-value");
    let etcd = TestEtcd::start(version, &dir.join("data"));
    block_on(async {
        let client = V3Client::connect(etcd.endpoint()).await.unwrap();
        let caps = client.capabilities();
        assert_eq!((caps.put_ignore_value, max_txn_ops(caps)), (ignores_value, txn_ops));
        let put = Op::Put { key: b"/registry/events/e".to_vec(), value: b"event".to_vec(), lease: 0 };
        assert!(client.txn(Vec::new(), vec![put]).await.unwrap());
        let lease = client.lease_grant(600).await.unwrap();
        let mut key = None;
        client
            .for_each_page(b"/", &[0], LATEST, async |kvs| {
                assert_eq!(kvs[0].value, b"event", "{version}");
                key = Some(kvs[0].clone());
                Ok::<(), ClientError>(())
            })
            .await
            .unwrap();
        let key = key.unwrap();
        let guard = vec![ModRevisionIs { key: key.key.clone(), mod_revision: key.mod_revision }];
        let attached = client.txn(guard, vec![Op::AttachLease { key: key.key.clone(), lease }]).await;
        if ignores_value {
            assert!(attached.unwrap(), "{version}");
        } else {
            assert!(attached.unwrap_err().to_string().contains("ignore_value"), "{version}");
        }
    });
    let values = etcd.v3_key_values();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].value, b"event", "{version}: the value is kept");
    assert_eq!(values[0].lease != 0, ignores_value, "{version}");
}

#[test]
fn v2_client_sets_lists_with_ttls_and_deletes_trees() {
    for version in ["3.3.25", "3.4.23", "3.5.16"] {
        let dir = TempDir::new("v2");
        let etcd = TestEtcd::start(version, &dir.join("data"));
        let v2 = V2Client::new(etcd.endpoint());
        let leaves = block_on(async {
            v2.set("/registry/pods/default/a b", "plain ✓", None).await.unwrap();
            v2.set("/registry/events/e1", "expiring", Some(600)).await.unwrap();
            v2.set("/registry/deep/x/y/z", "&=%+?#", None).await.unwrap();
            v2.set("/elsewhere/k", "outside", None).await.unwrap();
            v2.leaves("/registry").await.unwrap()
        });
        let summary: Vec<(&str, &str, bool)> =
            leaves.iter().map(|l| (l.key.as_str(), l.value.as_str(), l.ttl.is_some())).collect();
        assert_eq!(
            summary,
            [
                ("/registry/deep/x/y/z", "&=%+?#", false),
                ("/registry/events/e1", "expiring", true),
                ("/registry/pods/default/a b", "plain ✓", false),
            ],
            "{version}: leaves only, sorted, values exact"
        );
        let ttl = leaves[1].ttl.unwrap();
        assert!(ttl > 0 && ttl <= 600, "{version}: {ttl}");

        // Bytes that are not UTF-8 come back replaced: the reason the v2 side deals in text only.
        let mangled = block_on(async {
            let url = format!("{}/v2/keys/registry/binary", etcd.client_url);
            let form = "value=k8s%00%FF%FEok";
            let put =
                etcd.endpoint().http().put(url).header("content-type", "application/x-www-form-urlencoded");
            assert!(put.body(form).send().await.unwrap().status().is_success());
            v2.leaves("/registry").await.unwrap().into_iter().find(|l| l.key == "/registry/binary").unwrap()
        });
        assert_eq!(mangled.value, "k8s\0\u{fffd}\u{fffd}ok", "{version}");

        block_on(async {
            v2.delete_tree("/registry").await.unwrap();
            v2.delete_tree("/registry").await.unwrap();
            assert_eq!(v2.leaves("/registry").await.unwrap(), []);
            assert_eq!(v2.leaves("/elsewhere").await.unwrap().len(), 1, "{version}: other trees kept");
        });
    }
}

#[test]
fn a_grpc_snapshot_restores_with_etcdctl_to_the_same_keys_and_leases() {
    for version in ["3.3.25", "3.4.23", "3.5.16"] {
        let dir = TempDir::new("snapshot");
        let etcd = TestEtcd::start(version, &dir.join("data"));
        let snapshot = dir.join("snapshot.db");
        let (written, lease) = block_on(async {
            let endpoint = etcd.endpoint();
            let mut grpc = grpc(&endpoint).await;
            let status = grpc.status().await.unwrap();
            assert_eq!((status.version(), status.leader() != 0), (version, true), "{version}");
            let members = grpc.member_list().await.unwrap();
            let [member] = members.members() else { panic!("{version}: one member") };
            assert_eq!(member.name(), "m");
            assert_eq!(
                (member.peer_urls(), member.client_urls()),
                (std::slice::from_ref(&etcd.peer_url), std::slice::from_ref(&etcd.client_url))
            );

            let client = V3Client::connect(endpoint.clone()).await.unwrap();
            let lease = client.lease_grant(3600).await.unwrap();
            let mut puts: Vec<Op> = (0..300u32)
                .map(|i| Op::Put {
                    // Binary values, as Kubernetes' protobuf encoding writes them, and a database of several chunks.
                    key: format!("/registry/pods/p{i:03}").into_bytes(),
                    value: [b"k8s\0".as_slice(), &i.to_le_bytes(), &[0xff; 2000]].concat(),
                    lease: 0,
                })
                .collect();
            puts.push(Op::Put { key: b"/registry/events/e".to_vec(), value: b"leased".to_vec(), lease });
            for batch in puts.chunks(100) {
                assert!(client.txn(Vec::new(), batch.to_vec()).await.unwrap());
            }
            (save_snapshot(&endpoint, &snapshot).await, lease)
        });
        assert_eq!(written, std::fs::metadata(&snapshot).unwrap().len());
        assert!(written > 600_000, "{version}: {written} bytes");
        let before = etcd.v3_key_values();
        etcd.stop();

        let restored = dir.join("restored");
        let peer_url = free_peer_url();
        let initial_cluster = format!("m={peer_url}");
        let member = RestoreMember {
            name: "m",
            initial_cluster: &initial_cluster,
            initial_advertise_peer_urls: &peer_url,
            skip_hash_check: false, // the stream's SHA-256 trailer made it into the file
        };
        block_on(Etcdctl::new(etcdctl_binary(version), version.parse().unwrap()).snapshot_restore(
            &snapshot,
            &restored,
            &member,
            Duration::from_secs(60),
        ))
        .unwrap();
        let etcd = TestEtcd::start_with(version, &restored, "m", &peer_url, &[]);
        assert_eq!(etcd.v3_key_values(), before, "{version}: keys, values, revisions, leases");
        assert_eq!(before.len(), 301);
        let leases = block_on(async { V3Client::connect(etcd.endpoint()).await.unwrap().lease_ids().await });
        assert_eq!(leases.unwrap(), [lease], "{version}");
    }
}

#[test]
fn etcdctl_is_killed_at_its_timeout_when_it_would_wait_forever() {
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let args: Vec<String> = ["--endpoints", &nobody, "lease", "list"].map(String::from).to_vec();
    for version in ["3.3.25", "3.4.23", "3.5.16"] {
        let err = block_on(
            Etcdctl::new(etcdctl_binary(version), version.parse().unwrap())
                .run(&args, Duration::from_secs(8)),
        )
        .expect_err("etcdctl lease list never ends without a server");
        assert!(matches!(err, EtcdctlError::TimedOut { .. }), "{version}: {err}");
        assert_eq!(processes_mentioning(&nobody), 0, "{version}: killed and reaped");
    }
}

/// How many processes have `text` in their command line.
fn processes_mentioning(text: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(text))
        .count()
}
