//! The binary under the names Kubernetes' etcd manifests call, in a bin dir laid out as the image lays it
//! out (the binary under each name, beside real etcd releases): `migrate-if-needed.sh` migrates and
//! returns, `etcd` migrates data that has no version.txt and becomes etcd with exactly its arguments,
//! `etcdctl` is the newest bundled etcdctl. etcd's flags, in every form etcd reads, reach both the
//! migration's hidden etcd and the etcd exec'd in our place byte for byte.

mod support;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_migrate::client::TlsFiles;
use etcd_migrate::cluster::{self, Peer};
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

/// `-flag v`, `--flag=v`, `--flag v`, `-flag=v` and a boolean alone, with the data dir and the peer
/// certificates at paths holding a space and a byte that is not UTF-8 (etcd logs them, so the hidden
/// etcd's output is read as bytes; the journal and the backup's manifest record them exactly): the migration's hidden etcd
/// serves its peer TLS with those files (it would not start on a path cut at the space), and the etcd
/// exec'd in our place got exactly these arguments, without the `ETCD_NAME` that `-name` shadows.
#[test]
fn etcd_passes_its_flags_on_byte_for_byte_in_every_form() {
    let dir = TempDir::new("multicall-flags");
    let bin = image_bin_dir(&dir);
    let pki = dir.path().join(OsStr::from_bytes(b"pki dir \xff"));
    std::fs::create_dir_all(&pki).unwrap();
    let certs = make_certs(&pki);
    let data = dir.path().join(OsStr::from_bytes(b"data dir \xfe"));
    let plain_peer = free_peer_url();
    let keys = sample_keys();
    make_etcd3_data_without_version_file("3.4.23", &data, "node1", &plain_peer, &keys);

    let peer = plain_peer.replace("http://", "https://");
    let client = format!("http://127.0.0.1:{}", free_port());
    let joined = |flag: &str, value: &OsStr| {
        let mut arg = OsString::from(flag);
        arg.push(value);
        arg
    };
    let args: Vec<OsString> = vec![
        "-name".into(),
        "node1".into(),
        joined("--data-dir=", data.as_os_str()),
        "--listen-client-urls".into(),
        client.clone().into(),
        format!("-advertise-client-urls={client}").into(),
        format!("--listen-peer-urls={peer}").into(),
        "--initial-advertise-peer-urls".into(),
        peer.clone().into(),
        format!("--initial-cluster=node1={peer}").into(),
        "-peer-cert-file".into(),
        certs.cert.clone().into(),
        joined("--peer-key-file=", certs.key.as_os_str()),
        "--peer-trusted-ca-file".into(),
        certs.ca.clone().into(),
        "-peer-client-cert-auth".into(),
        "--snapshot-count=10000".into(),
    ];
    let mut etcd = run_as(&bin, "etcd");
    etcd.env("LISTEN_CLIENT_URLS", format!("http://127.0.0.1:{}", free_port()))
        .env("ETCD_NAME", "node1")
        .env("ETCD_QUOTA_BACKEND_BYTES", "8589934592")
        .args(&args);
    let etcd = KillOnDrop(etcd.stderr(Stdio::null()).spawn().unwrap());
    assert!(wait_healthy(&client, Duration::from_secs(120)), "etcd serves after the migration");
    assert_eq!(version_txt(&data), "3.5.16/etcd3", "the hidden etcd migrated the data at that path");
    assert_eq!(all_keys("3.5.16", &client), keys);

    let proc = Path::new("/proc").join(etcd.0.id().to_string());
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap();
    let argv: Vec<OsString> = cmdline
        .strip_suffix(b"\0")
        .unwrap()
        .split(|&b| b == 0)
        .map(|a| OsStr::from_bytes(a).into())
        .collect();
    assert_eq!(argv[0], bin.join("etcd-3.5.16").into_os_string(), "the target release, same PID");
    assert_eq!(&argv[1..], &args[..], "etcd got exactly its arguments");
    let environ = std::fs::read(proc.join("environ")).unwrap();
    let environ: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(!environ.iter().any(|var| var.starts_with(b"ETCD_NAME=")), "-name shadows ETCD_NAME");
    assert!(environ.contains(&&b"ETCD_QUOTA_BACKEND_BYTES=8589934592"[..]), "no flag shadows this one");

    let peers = [Peer { name: "node1".into(), url: peer.clone() }];
    let asked = block_on(cluster::ask(&peers, &TlsFiles::peer_from_etcd_args(&args)));
    let answer = asked.0[0].1.as_ref().expect("the peer listener answers with the member's own certificate");
    assert_eq!(answer.server, "3.5.16");
}
