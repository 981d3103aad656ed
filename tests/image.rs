//! The image, built for real with the Docker engine from a staged root file system (no base image, no
//! registry), run on data written by real etcd 3.3.25: first as a rehearsal (`--migrate-only`), then as
//! the pod would run it, exec'ing etcd and serving the data on a published port. Skips, saying why,
//! where no engine answers.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use support::*;

const IMAGE: &str = "etcd-migrate:test";

fn docker<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new("docker").args(args).output().expect("docker runs")
}

fn engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes the container however the test ends.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

fn stage_and_build(dir: &Path) {
    let stage = Command::new(format!("{}/image/stage.sh", env!("CARGO_MANIFEST_DIR")))
        .args(["--source", "packages", "--binary", env!("CARGO_BIN_EXE_etcd-migrate")])
        .arg(dir)
        .env("BUNDLED_ETCD_VERSIONS", "3.3.25 3.4.23 3.5.16")
        .output()
        .unwrap();
    assert!(stage.status.success(), "stage.sh: {}", String::from_utf8_lossy(&stage.stderr));
    for binary in ["etcd-migrate", "etcd-3.3.25", "etcdctl-3.4.23", "etcd-3.5.16"] {
        assert!(dir.join("rootfs/usr/local/bin").join(binary).exists(), "{binary} staged");
    }
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    assert!(sums.contains("usr/local/bin/etcd-3.5.16"), "sums recorded");
    let build = Command::new("docker")
        .args([
            "build",
            "-q",
            "-t",
            IMAGE,
            "-f",
            &format!("{}/image/Dockerfile.staged", env!("CARGO_MANIFEST_DIR")),
        ])
        .arg(dir)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(build.status.success(), "docker build: {}", String::from_utf8_lossy(&build.stderr));
}

/// What the pod manifest gives the container: the data mount, the settings, the image.
fn pod_settings(mount: &str, peer: &str) -> Vec<String> {
    let cluster = format!("INITIAL_CLUSTER=m={peer}");
    [
        "-v",
        mount,
        "-e",
        "DATA_DIRECTORY=/var/etcd/data",
        "-e",
        "TARGET_VERSION=3.5.16",
        "-e",
        "ETCD_NAME=m",
        "-e",
        &cluster,
        IMAGE,
    ]
    .map(String::from)
    .to_vec()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

#[test]
fn the_image_rehearses_a_migration_then_runs_etcd_on_the_result() {
    if !engine_answers() {
        println!("SKIPPED: no Docker engine answers here");
        return;
    }
    let dir = TempDir::new("image");
    stage_and_build(&dir.join("stage"));

    // The scratch image runs a dynamically linked Debian etcd: the staged libraries suffice.
    let version = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--entrypoint",
        "/usr/local/bin/etcd-3.4.23",
        IMAGE,
        "--version",
    ]);
    assert!(String::from_utf8_lossy(&version.stdout).contains("etcd Version: 3.4.23"), "{version:?}");

    let var = dir.join("var");
    let peer = "http://localhost:2380";
    let keys = sample_keys();
    make_etcd3_data("3.3.25", &var.join("data"), peer, &keys);
    let mount = format!("{}:/var/etcd", var.display());

    let name = format!("etcd-migrate-test-{}", std::process::id());
    let _rehearsal = Container(name.clone());
    let pod = pod_settings(&mount, peer);
    let run = docker(
        &[strings(&["run", "--name", &name, "--network", "none"]), pod.clone(), strings(&["--migrate-only"])]
            .concat(),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("in-place done"));
    assert_eq!(version_txt(&var.join("data")), "3.5.16/etcd3");
    let etcd = TestEtcd::start_with("3.5.16", &var.join("data"), "m", peer, &[]);
    assert_eq!(etcd.all_keys(), keys, "the host's etcd reads every key the container migrated");
    etcd.stop();

    let port = free_port();
    let serving = format!("etcd-migrate-serve-{}", std::process::id());
    let _server = Container(serving.clone());
    let published = format!("127.0.0.1:{port}:2379");
    let run = docker(
        &[
            strings(&["run", "-d", "--name", &serving, "-p", &published]),
            pod,
            strings(&[
                "--",
                "--listen-client-urls=http://0.0.0.0:2379",
                "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380",
                &format!("--initial-cluster=m={peer}"),
                &format!("--initial-advertise-peer-urls={peer}"),
            ]),
        ]
        .concat(),
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let url = format!("http://127.0.0.1:{port}");
    let healthy = wait_healthy(&url, Duration::from_secs(60));
    let logs = docker(&["logs", &serving]);
    assert!(healthy, "the container's etcd never served: {}", String::from_utf8_lossy(&logs.stderr));
    assert_eq!(all_keys("3.5.16", &url), keys, "read over the published client port");
}
