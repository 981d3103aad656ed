//! The image, built for real with the Docker engine from a staged root file system (no base image, no
//! registry), once per run:
//! - on data written by real etcd 3.3.25: first as a rehearsal (`--migrate-only`), then as the pod would
//!   run it, exec'ing etcd and serving the data on a published port;
//! - as Kubernetes' own etcd pods run it, image swapped and nothing else: GCE's `etcd.manifest` (its
//!   `sh -c` command, env, volumes and exec liveness probe) and kubeadm's static pod (its `etcd` command
//!   and flags, its one data volume, no env), on host loopback ports.
//!
//! Where no engine answers, the tests skip saying so, and fail when `CI` is set.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

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

/// The image, staged and built on first use; `None` (see [`cannot_run`]) where no engine answers.
fn image() -> Option<&'static str> {
    static BUILT: OnceLock<bool> = OnceLock::new();
    let built = *BUILT.get_or_init(|| {
        if !engine_answers() {
            return false;
        }
        let dir = TempDir::new("image");
        stage_and_build(&dir.join("stage"));
        true
    });
    if !built {
        cannot_run("no Docker engine answers here");
    }
    built.then_some(IMAGE)
}

/// The tests on the host's network share its loopback: one at a time, as each migration's hidden etcd
/// takes the fixed port Kubernetes gave it (18629).
fn host_network() -> std::sync::MutexGuard<'static, ()> {
    static HOST: Mutex<()> = Mutex::new(());
    HOST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        .env("ETCD_CACHE", etcd_bin_dir())
        .env("ETCD_MIGRATE", env!("CARGO_BIN_EXE_etcd-migrate"))
        .output()
        .unwrap();
    assert!(stage.status.success(), "stage.sh: {}", String::from_utf8_lossy(&stage.stderr));
    for binary in [
        "usr/local/bin/etcd-migrate",
        "usr/local/bin/etcd-3.3.25",
        "usr/local/bin/etcdctl-3.4.23",
        "usr/local/bin/etcd-3.5.16",
        "usr/local/bin/etcd",
        "usr/local/bin/etcdctl",
        "usr/local/bin/migrate",
        "usr/local/bin/migrate-if-needed.sh",
        "bin/sh",
    ] {
        assert!(dir.join("rootfs").join(binary).exists(), "{binary} staged");
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
    let Some(_) = image() else { return };
    let dir = TempDir::new("image");

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

/// Replaces each `{{ key }}` of a Kubernetes template, and checks none is left.
fn template(text: &str, values: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (key, value) in values {
        out = out.replace(&format!("{{{{ {key} }}}}"), value);
    }
    assert!(!out.contains("{{"), "every placeholder is templated: {out}");
    out
}

/// Polls `url` until it answers 200 or `timeout` passes.
fn wait_for_200(url: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    block_on(async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        while Instant::now() < deadline {
            if client.get(url).send().await.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    })
}

/// `cluster/gce/manifests/etcd.manifest` (kubernetes/kubernetes), verbatim: the container's command...
const GCE_COMMAND: &str = "if [ -e /usr/local/bin/migrate-if-needed.sh ]; then /usr/local/bin/migrate-if-needed.sh 1>>/var/log/etcd{{ suffix }}.log 2>&1; fi; exec /usr/local/bin/etcd --name etcd-{{ hostname }} --listen-peer-urls {{ etcd_protocol }}://{{ host_ip }}:{{ server_port }} --initial-advertise-peer-urls {{ etcd_protocol }}://{{ hostname }}:{{ server_port }} --advertise-client-urls {{ etcd_apiserver_protocol }}://127.0.0.1:{{ port }} --listen-client-urls {{ etcd_apiserver_protocol }}://{{ listen_client_ip }}:{{ port }} {{ quota_bytes }} --data-dir /var/etcd/data{{ suffix }} --initial-cluster-state {{ cluster_state }} --initial-cluster {{ etcd_cluster }} {{ etcd_creds }} {{ etcd_apiserver_creds }} {{ etcd_extra_args }} 1>>/var/log/etcd{{ suffix }}.log 2>&1";

/// ... its env ...
const GCE_ENV: &[(&str, &str)] = &[
    ("TARGET_STORAGE", "{{ pillar.get('storage_backend', 'etcd3') }}"),
    ("TARGET_VERSION", "{{ pillar.get('etcd_version', '3.5.3') }}"),
    ("DO_NOT_MOVE_BINARIES", "true"),
    ("DATA_DIRECTORY", "/var/etcd/data{{ suffix }}"),
    ("INITIAL_CLUSTER", "{{ etcd_cluster }}"),
    ("LISTEN_PEER_URLS", "{{ etcd_protocol }}://{{ host_ip }}:{{ server_port }}"),
    ("INITIAL_ADVERTISE_PEER_URLS", "{{ etcd_protocol }}://{{ hostname }}:{{ server_port }}"),
    ("ETCD_CREDS", "{{ etcd_creds }}"),
    ("ETCD_APISERVER_CREDS", "{{ etcd_apiserver_creds }}"),
    ("ETCD_SNAPSHOT_COUNT", "10000"),
    ("ETCD_HOSTNAME", "{{ hostname }}"),
    ("ETCDCTL_API", "3"),
];

/// ... and its liveness probe's exec command.
const GCE_LIVENESS: &str = "set -x; exec /usr/local/bin/etcdctl --endpoints=127.0.0.1:{{ port }} {{ etcdctl_certs }} --command-timeout=15s endpoint health";

#[test]
fn gces_etcd_manifest_runs_the_image_unchanged_and_upgrades_3_4_data_to_3_5() {
    let Some(image) = image() else { return };
    let _host = host_network();
    let dir = TempDir::new("image-gce");
    let (port, server_port) = (free_port(), free_port());
    let values = [
        ("pillar.get('storage_backend', 'etcd3')", "etcd3".to_string()),
        ("pillar.get('etcd_version', '3.5.3')", "3.5.16".to_string()),
        ("suffix", String::new()),
        ("hostname", "127.0.0.1".to_string()),
        ("host_ip", "127.0.0.1".to_string()),
        ("listen_client_ip", "127.0.0.1".to_string()),
        ("etcd_protocol", "http".to_string()),
        ("etcd_apiserver_protocol", "http".to_string()),
        ("port", port.to_string()),
        ("server_port", server_port.to_string()),
        ("etcd_cluster", format!("etcd-127.0.0.1=http://127.0.0.1:{server_port}")),
        ("cluster_state", "new".to_string()),
        ("quota_bytes", String::new()),
        ("etcd_creds", String::new()),
        ("etcd_apiserver_creds", String::new()),
        ("etcd_extra_args", String::new()),
        ("etcdctl_certs", String::new()),
    ];

    // The volumes: the master PD's /var/etcd, the log file, /etc/srv/kubernetes.
    let (var, log, etc) = (dir.join("var-etcd"), dir.join("etcd.log"), dir.join("etc-srv-kubernetes"));
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(&log, "").unwrap();
    let keys = sample_keys();
    let peer = format!("http://127.0.0.1:{server_port}");
    make_etcd3_data_without_version_file("3.4.23", &var.join("data"), "etcd-127.0.0.1", &peer, &keys);
    std::fs::write(var.join("data/version.txt"), "3.4.23/etcd3").unwrap();

    let name = format!("etcd-migrate-gce-{}", std::process::id());
    let _container = Container(name.clone());
    let mut run = strings(&["run", "-d", "--name", &name, "--network", "host"]);
    for (host, container) in [(&var, "/var/etcd"), (&log, "/var/log/etcd.log"), (&etc, "/etc/srv/kubernetes")]
    {
        run.extend(["-v".to_string(), format!("{}:{container}", host.display())]);
    }
    for (key, value) in GCE_ENV {
        run.extend(["-e".to_string(), format!("{key}={}", template(value, &values))]);
    }
    run.extend(strings(&["--entrypoint", "/bin/sh", image, "-c"]));
    run.push(template(GCE_COMMAND, &values));
    let started = docker(&run);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    let url = format!("http://127.0.0.1:{port}");
    let healthy = wait_healthy(&url, Duration::from_secs(120));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(healthy, "etcd never served; /var/log/etcd.log:\n{logged}");
    assert_eq!(all_keys("3.5.16", &url), keys, "etcd serves the migrated data");
    assert_eq!(version_txt(&var.join("data")), "3.5.16/etcd3");
    let status = etcdctl("3.5.16", &url, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"version\":\"3.5.16\""), "etcd 3.5.16 serves: {status}");

    let logged = std::fs::read_to_string(&log).unwrap();
    for line in ["in-place done", "not starting etcd", "starting etcd", "serving client traffic"] {
        assert!(logged.contains(line), "/var/log/etcd.log has {line:?}:\n{logged}");
    }
    // The data dir's parent is the mounted volume: the backup of the 3.4 member is beside the data dir.
    let backups: Vec<String> = std::fs::read_dir(&var)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("data-backup-3.4.23-etcd3-"))
        .collect();
    assert_eq!(backups.len(), 1, "one backup on the /var/etcd volume: {backups:?}");
    let probe = docker(&["exec", &name, "/bin/sh", "-c", &template(GCE_LIVENESS, &values)]);
    let said = String::from_utf8_lossy(&probe.stdout).into_owned() + &String::from_utf8_lossy(&probe.stderr);
    assert!(probe.status.success() && said.contains("is healthy"), "the liveness probe passes: {said}");
}

/// The certificate files kubeadm names under `/etc/kubernetes/pki/etcd`, made for 127.0.0.1.
fn kubeadm_pki(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let certs = make_certs(dir);
    for (from, to) in [
        (&certs.cert, "server.crt"),
        (&certs.key, "server.key"),
        (&certs.cert, "peer.crt"),
        (&certs.key, "peer.key"),
    ] {
        std::fs::copy(from, dir.join(to)).unwrap();
    }
}

#[test]
fn kubeadms_static_pod_runs_the_image_unchanged_on_unversioned_3_4_data() {
    let Some(image) = image() else { return };
    let _host = host_network();
    let dir = TempDir::new("image-kubeadm");
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let (data, pki) = (dir.join("var-lib-etcd"), dir.join("pki-etcd"));
    kubeadm_pki(&pki);
    let keys = sample_keys();
    make_etcd3_data_without_version_file("3.4.23", &data, "node1", &free_peer_url(), &keys);
    assert!(!data.join("version.txt").exists(), "etcd itself writes no version.txt");

    // kubeadm v1.33's command for etcd 3.5 (cmd/kubeadm/app/phases/etcd/local.go, getEtcdCommand, its
    // arguments sorted as kubeadm writes them), node "node1" advertising 127.0.0.2. kubeadm's newer
    // releases pass 3.6 flags (--feature-gates, --watch-progress-notify-interval) that 3.5 rejects.
    let advertise = "127.0.0.2";
    let command = [
        format!("--advertise-client-urls=https://{advertise}:{client}"),
        "--cert-file=/etc/kubernetes/pki/etcd/server.crt".into(),
        "--client-cert-auth=true".into(),
        "--data-dir=/var/lib/etcd".into(),
        "--experimental-initial-corrupt-check=true".into(),
        "--experimental-watch-progress-notify-interval=5s".into(),
        format!("--initial-advertise-peer-urls=https://{advertise}:{peer}"),
        format!("--initial-cluster=node1=https://{advertise}:{peer}"),
        "--key-file=/etc/kubernetes/pki/etcd/server.key".into(),
        format!("--listen-client-urls=https://127.0.0.1:{client},https://{advertise}:{client}"),
        format!("--listen-metrics-urls=http://127.0.0.1:{metrics}"),
        format!("--listen-peer-urls=https://{advertise}:{peer}"),
        "--name=node1".into(),
        "--peer-cert-file=/etc/kubernetes/pki/etcd/peer.crt".into(),
        "--peer-client-cert-auth=true".into(),
        "--peer-key-file=/etc/kubernetes/pki/etcd/peer.key".into(),
        "--peer-trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt".into(),
        "--snapshot-count=10000".into(),
        "--trusted-ca-file=/etc/kubernetes/pki/etcd/ca.crt".into(),
    ];

    let name = format!("etcd-migrate-kubeadm-{}", std::process::id());
    let _container = Container(name.clone());
    let mut run = strings(&["run", "-d", "--name", &name, "--network", "host"]);
    for (host, container) in [(&data, "/var/lib/etcd"), (&pki, "/etc/kubernetes/pki/etcd")] {
        run.extend(["-v".to_string(), format!("{}:{container}", host.display())]);
    }
    run.extend(strings(&["--entrypoint", "etcd", image]));
    run.extend(command);
    let started = docker(&run);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    let ready = wait_for_200(&format!("http://127.0.0.1:{metrics}/readyz"), Duration::from_secs(120));
    let logs = docker(&["logs", &name]);
    let logs = String::from_utf8_lossy(&logs.stderr).into_owned();
    assert!(ready, "/readyz on the metrics port never answered 200:\n{logs}");
    assert_eq!(version_txt(&data), "3.5.16/etcd3", "the newest bundled 3.5, etcd3");
    let (ca, cert, key) = (pki.join("ca.crt"), pki.join("server.crt"), pki.join("server.key"));
    let tls =
        ["--cacert", ca.to_str().unwrap(), "--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let url = format!("https://127.0.0.1:{client}");
    let status = etcdctl("3.5.16", &url, &[&tls[..], &["endpoint", "status", "-w", "json"]].concat());
    assert!(status.contains("\"version\":\"3.5.16\""), "etcd 3.5.16 serves: {status}");
    let listed = etcdctl("3.5.16", &url, &[&tls[..], &["get", "", "--from-key", "--keys-only"]].concat());
    let served: std::collections::BTreeSet<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(served, keys.keys().map(String::as_str).collect(), "every key is served");

    // The backup of the 3.4 member is on the mounted volume, inside the data dir, not in the container.
    let backups: Vec<_> = std::fs::read_dir(data.join(".etcd-migrate/backups"))
        .unwrap_or_else(|e| panic!("no backups in the data dir's volume ({e}):\n{logs}"))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup = &backups[0];
    let backup_name = backup.file_name().unwrap().to_string_lossy().into_owned();
    assert!(backup_name.starts_with("etcd-backup-3.4.0-etcd3-"), "{backup_name}");
    assert!(backup.join("member/snap/db").is_file() && backup.join("BACKUP-MANIFEST.json").is_file());
    let layer = docker(&["diff", &name]);
    let layer = String::from_utf8_lossy(&layer.stdout);
    assert!(!layer.contains("backup"), "nothing of a backup in the container's writable layer: {layer}");
    let status = docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &format!("{}:/var/lib/etcd", data.display()),
        "--entrypoint",
        "/usr/local/bin/etcd-migrate",
        image,
        "status",
        "--data-dir",
        "/var/lib/etcd",
    ]);
    let said = String::from_utf8_lossy(&status.stdout);
    assert!(said.contains("backups:         1 in /var/lib/etcd/.etcd-migrate/backups"), "status: {said}");
}
