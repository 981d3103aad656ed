//! The binary under the names Kubernetes' etcd manifests call, in a bin dir laid out as the image lays it
//! out (the binary under each name, beside real etcd releases): `migrate-if-needed.sh` migrates and
//! returns, `etcd` migrates data that has no version.txt and becomes etcd with exactly its arguments,
//! `etcdctl` is the newest bundled etcdctl.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// A bin dir holding etcd/etcdctl 3.4.23 and 3.5.16 and this binary under every name it answers to.
/// The binary is linked (or copied), not symlinked: it finds the bin dir from its own resolved path.
fn image_bin_dir(dir: &TempDir) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for version in ["3.4.23", "3.5.16"] {
        for tool in ["etcd", "etcdctl"] {
            let name = format!("{tool}-{version}");
            std::os::unix::fs::symlink(etcd_bin_dir().join(&name), bin.join(&name)).unwrap();
        }
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_etcd-migrate"));
    let first = bin.join("etcd-migrate");
    if std::fs::hard_link(binary, &first).is_err() {
        std::fs::copy(binary, &first).unwrap();
    }
    for name in ["etcd", "etcdctl", "migrate", "migrate-if-needed.sh"] {
        std::fs::hard_link(&first, bin.join(name)).unwrap();
    }
    bin
}

fn run_as(bin: &Path, name: &str) -> Command {
    let mut command = Command::new(bin.join(name));
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).stdin(Stdio::null());
    command
}

#[test]
fn migrate_if_needed_migrates_from_the_environment_and_returns() {
    let dir = TempDir::new("multicall-migrate");
    let bin = image_bin_dir(&dir);
    let data = dir.join("data");
    let peer = free_peer_url();
    let keys = sample_keys();
    make_etcd3_data("3.4.23", &data, &peer, &keys);

    let output = run_as(&bin, "migrate-if-needed.sh")
        .args(["--port", &free_port().to_string()])
        .env("TARGET_STORAGE", "etcd3")
        .env("TARGET_VERSION", "3.5.16")
        .env("DATA_DIRECTORY", &data)
        .env("ETCD_NAME", "m")
        .env("INITIAL_CLUSTER", format!("m={peer}"))
        .env("LISTEN_PEER_URLS", &peer)
        .env("INITIAL_ADVERTISE_PEER_URLS", &peer)
        .env("DO_NOT_MOVE_BINARIES", "true")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("not starting etcd"), "it returned instead of exec'ing etcd");
    assert_eq!(version_txt(&data), "3.5.16/etcd3");
    let etcd = TestEtcd::start_with("3.5.16", &data, "m", &peer, &[]);
    assert_eq!(etcd.all_keys(), keys);
}

#[test]
fn etcd_migrates_unversioned_data_to_the_newest_bundled_release_and_runs_with_its_own_arguments() {
    let dir = TempDir::new("multicall-etcd");
    let bin = image_bin_dir(&dir);
    let data = dir.join("data");
    let peer = free_peer_url();
    let keys = sample_keys();
    make_etcd3_data_without_version_file("3.4.23", &data, "node1", &peer, &keys);

    let client = format!("http://127.0.0.1:{}", free_port());
    let mut etcd = run_as(&bin, "etcd");
    etcd.env("LISTEN_CLIENT_URLS", format!("http://127.0.0.1:{}", free_port())).args([
        "--name=node1",
        "--data-dir",
        data.to_str().unwrap(),
        &format!("--listen-client-urls={client}"),
        &format!("--advertise-client-urls={client}"),
        &format!("--listen-peer-urls={peer}"),
        &format!("--initial-advertise-peer-urls={peer}"),
        &format!("--initial-cluster=node1={peer}"),
        "--snapshot-count=10000",
    ]);
    let _etcd = KillOnDrop(etcd.stderr(Stdio::null()).spawn().unwrap());
    assert!(wait_healthy(&client, Duration::from_secs(120)), "etcd serves after the migration");
    assert_eq!(version_txt(&data), "3.5.16/etcd3", "the newest bundled release, storage etcd3");
    assert_eq!(all_keys("3.5.16", &client), keys);
    let status = etcdctl("3.5.16", &client, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.5.16\""), "etcd 3.5.16 serves: {status}");
}

#[test]
fn etcdctl_is_the_newest_bundled_one() {
    let dir = TempDir::new("multicall-etcdctl");
    let bin = image_bin_dir(&dir);
    let output = run_as(&bin, "etcdctl").arg("version").output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("etcdctl version: 3.5.16"));
    let output = run_as(&bin, "etcd").arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("etcd Version: 3.5.16"), "{output:?}");
}
