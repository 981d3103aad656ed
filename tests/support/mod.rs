//! Shared by the integration tests: real etcd releases (from `image/fetch-etcd.sh`'s cache), free
//! loopback ports, temp dirs, a real etcd to write fixtures with, and the migrator binary.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod cluster;
pub mod netns;
pub mod scenarios;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use etcd_migrate::bundle::Bundle;
use etcd_migrate::client::v2::V2Client;
use etcd_migrate::client::v3::{KeyValue, LATEST, V3Client, connect_options};
use etcd_migrate::client::{ClientError, Endpoint, TlsFiles, health};
use etcd_migrate::data_dir::authority_dir;
use etcd_migrate::etcd_process::{EtcdError, EtcdProcess, EtcdSpec};
use etcd_migrate::{release, run_ca};
use sha2::{Digest, Sha256};

/// The releases the package registries serve (Debian's and PyPI's), which `image/fetch-etcd.sh` fetches
/// on every machine: a test may use them without saying so. Every other release comes only from
/// `ETCD_RELEASE_MIRROR`, and a test that uses one starts with [`releases_present`].
pub const REGISTRY_RELEASES: [&str; 5] = ["3.3.25", "3.4.23", "3.5.1", "3.5.16", "3.5.30"];

/// The variable naming the architecture of the releases in `ETCD_BIN_DIR` when it is not amd64
/// (`tests/architectures.rs` runs its emulated migrations with another's).
pub const BIN_DIR_ARCH: &str = "ETCD_BIN_DIR_ARCH";

/// The registry releases there are for architecture `arch`, as `image/fetch-etcd.sh --arch` knows them:
/// Debian built 3.3.25 for amd64, arm64 and arm only, and PyPI's (3.5.1) are for amd64 and arm64.
pub fn registry_releases(arch: &str) -> Vec<&'static str> {
    REGISTRY_RELEASES
        .into_iter()
        .filter(|version| match arch {
            "amd64" | "arm64" => true,
            "arm" => *version != "3.5.1",
            _ => !["3.3.25", "3.5.1"].contains(version),
        })
        .collect()
}

/// The directory holding etcd-X.Y.Z and etcdctl-X.Y.Z (`ETCD_BIN_DIR`, else `image/fetch-etcd.sh`'s
/// cache), with every registry release of its architecture in it.
pub fn etcd_bin_dir() -> PathBuf {
    let dir = std::env::var_os("ETCD_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/etcd-migrate/etcd")
    });
    let arch = std::env::var(BIN_DIR_ARCH).unwrap_or_else(|_| "amd64".into());
    let missing = missing_releases(&dir, &registry_releases(&arch));
    assert!(missing.is_empty(), "no etcd {missing:?} in {}: run image/fetch-etcd.sh", dir.display());
    dir
}

/// Whether the bin dir holds every release in `versions`. Where it lacks some, the test is not run: this
/// says `NOT RUN: <test> needs etcd <the missing ones> (set ETCD_RELEASE_MIRROR)` on stderr, past the
/// test harness's capture (tests/run.sh counts these lines apart from the passes), and the test returns.
pub fn releases_present(versions: &[&str]) -> bool {
    let missing = missing_releases(&etcd_bin_dir(), versions);
    if missing.is_empty() {
        return true;
    }
    let line =
        format!("NOT RUN: {} needs etcd {} (set ETCD_RELEASE_MIRROR)\n", test_name(), missing.join(" "));
    // One write, so that the line is not interleaved with the harness's own output.
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// The releases of `versions` that are not present in `dir` (`Bundle::is_present`: every tool the
/// release ships).
pub fn missing_releases<'a>(dir: &Path, versions: &[&'a str]) -> Vec<&'a str> {
    let bundle = Bundle::in_dir(dir);
    versions.iter().copied().filter(|version| !bundle.is_present(version.parse().unwrap())).collect()
}

/// The newest patch of `minor` (`"3.5"`) in the bin dir: the release the migrator leaves that minor from
/// (and reads a downgrade's data with), whichever releases this machine has.
pub fn newest_bundled_patch(minor: &str) -> String {
    let of_minor: etcd_migrate::version::Version = format!("{minor}.0").parse().unwrap();
    let newest = Bundle::scan(&etcd_bin_dir()).unwrap().newest_patch(of_minor.minor());
    newest.unwrap_or_else(|| panic!("no etcd {minor}.x in the bin dir")).to_string()
}

/// `<test binary>::<test>`, as the harness names the running test's thread.
pub fn test_name() -> String {
    let test = std::thread::current().name().unwrap_or("a test").to_string();
    format!("{}::{test}", env!("CARGO_CRATE_NAME"))
}

pub fn etcd(version: &str) -> PathBuf {
    etcd_bin_dir().join(format!("etcd-{version}"))
}

pub fn etcdctl_binary(version: &str) -> PathBuf {
    etcd_bin_dir().join(format!("etcdctl-{version}"))
}

/// A loopback port nobody listens on now, below Linux's ephemeral range (32768 and up) so that no
/// client connection's source port can take it between now and its use. Each port is claimed with a
/// lock file held until this process exits, so parallel tests, and the other test processes running
/// meanwhile (a test may rerun itself in a child), never pick the same one.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    static CLAIMS: std::sync::Mutex<Vec<fs::File>> = std::sync::Mutex::new(Vec::new());
    let claims_dir = std::env::temp_dir().join("etcd-migrate-test-ports");
    fs::create_dir_all(&claims_dir).unwrap();
    let mut next = NEXT.lock().unwrap();
    if *next == 0 {
        *next = 20_000 + (std::process::id() % 60) as u16 * 200;
    }
    loop {
        let port = *next;
        *next = if port >= 32_000 { 20_000 } else { port + 1 };
        let claim = fs::File::create(claims_dir.join(port.to_string())).unwrap();
        if claim.try_lock().is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            CLAIMS.lock().unwrap().push(claim);
            return port;
        }
    }
}

/// A directory removed when dropped, named after the test that made it.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir(tempfile::Builder::new().prefix(&format!("etcd-migrate-test-{name}-")).tempdir().unwrap())
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn join(&self, part: &str) -> PathBuf {
        self.0.path().join(part)
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    })
}

/// A real etcd on free loopback ports, for writing fixtures and reading results. Stopped on drop.
pub struct TestEtcd {
    process: Option<EtcdProcess>,
    pub version: String,
    pub client_url: String,
    pub peer_url: String,
    pub name: String,
}

impl TestEtcd {
    pub fn start(version: &str, data_dir: &Path) -> TestEtcd {
        Self::start_with(version, data_dir, "m", &format!("http://127.0.0.1:{}", free_port()), &[])
    }

    /// Starts etcd as member `name` whose peer URL is `peer_url` (it must match what a data dir recorded).
    pub fn start_with(
        version: &str,
        data_dir: &Path,
        name: &str,
        peer_url: &str,
        extra: &[&str],
    ) -> TestEtcd {
        let spec = etcd_spec(version, data_dir, name, peer_url, extra);
        let client_url = spec.listen_client_urls.clone();
        let process = runtime().block_on(async {
            let mut process = start_etcd(spec).await;
            process.wait_healthy(Duration::from_secs(60)).await.expect("etcd becomes healthy");
            process
        });
        TestEtcd {
            process: Some(process),
            version: version.into(),
            client_url,
            peer_url: peer_url.into(),
            name: name.into(),
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> String {
        etcdctl(&self.version, &self.client_url, args)
    }

    pub fn put(&self, key: &str, value: &str) {
        self.etcdctl(&["put", key, value]);
    }

    /// Sets a key through the v2 API (etcd2 storage), optionally with a TTL.
    pub fn v2_set(&self, key: &str, value: &str, ttl: Option<u64>) {
        let mut args = vec!["set".to_string()];
        if let Some(ttl) = ttl {
            args.extend(["--ttl".into(), ttl.to_string()]);
        }
        args.extend(["--".into(), key.into(), value.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_etcdctl(&self.version, "2", &self.client_url, &TlsFiles::default(), &args);
    }

    /// Every v3 key and value.
    pub fn all_keys(&self) -> BTreeMap<String, Vec<u8>> {
        all_keys(&self.version, &self.client_url)
    }

    /// Each leased key with its lease's granted TTL and remaining TTL, in seconds.
    pub fn leased_keys(&self) -> BTreeMap<String, (i64, i64)> {
        let mut leased = BTreeMap::new();
        for line in self.etcdctl(&["lease", "list"]).lines().skip(1) {
            let id = line.trim();
            let json: serde_json::Value =
                serde_json::from_str(&self.etcdctl(&["lease", "timetolive", id, "--keys", "-w", "json"]))
                    .unwrap();
            for key in json["keys"].as_array().into_iter().flatten() {
                let key = String::from_utf8(BASE64.decode(key.as_str().unwrap()).unwrap()).unwrap();
                leased.insert(key, (json["granted-ttl"].as_i64().unwrap(), json["ttl"].as_i64().unwrap()));
            }
        }
        leased
    }

    pub fn stop(mut self) {
        let process = self.process.take().unwrap();
        runtime().block_on(process.stop(Duration::from_secs(10))).unwrap();
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let _ = runtime().block_on(process.stop(Duration::from_secs(10)));
        }
    }
}

/// How the fixtures run etcd `version`: member `name` at `peer_url`, a free client port, the v2 API on
/// wherever it has one.
pub fn etcd_spec(version: &str, data_dir: &Path, name: &str, peer_url: &str, extra: &[&str]) -> EtcdSpec {
    let release_version = version.parse().unwrap();
    EtcdSpec {
        binary: etcd(version),
        version: release_version,
        data_dir: data_dir.to_path_buf(),
        name: name.into(),
        listen_client_urls: format!("http://127.0.0.1:{}", free_port()),
        listen_peer_urls: peer_url.replace("localhost", "127.0.0.1"),
        initial_advertise_peer_urls: peer_url.into(),
        initial_cluster: format!("{name}={peer_url}"),
        initial_cluster_state: None,
        enable_v2: release::capabilities(release_version).enable_v2_flag,
        extra_args: extra.iter().map(Into::into).collect(),
        lone_member: true,
        client_tls: TlsFiles::default(),
    }
}

/// A peer URL on a free loopback port.
pub fn free_peer_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Starts etcd, retrying while one of its ports is busy: under load a port that was free when picked can
/// be briefly held (a just-stopped etcd's socket). Panics, listing what listens, if it stays busy.
pub async fn start_etcd(spec: EtcdSpec) -> EtcdProcess {
    let mut attempts = 0;
    loop {
        match EtcdProcess::start(spec.clone()).await {
            Err(EtcdError::PortInUse { .. }) if attempts < 20 => attempts += 1,
            started => {
                return started.unwrap_or_else(|e| panic!("etcd starts: {e}\n{}", listening_sockets()));
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What listens on this machine now, for failure messages about busy ports.
pub fn listening_sockets() -> String {
    Command::new("ss")
        .arg("-ltnp")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Runs etcdctl (v3 API) against `url`, failing the test if it fails; always with a timeout.
pub fn etcdctl(version: &str, url: &str, args: &[&str]) -> String {
    run_etcdctl(version, "3", url, &TlsFiles::default(), args)
}

/// What a migrator running on `data_dir` presents to its hidden etcds and trusts them by: its run's
/// authority, there while it runs.
pub fn run_authority(data_dir: &Path) -> TlsFiles {
    run_ca::client_files(&authority_dir(data_dir))
}

/// The hidden etcd at `url` of a migrator running (paused) on `data_dir`, reached with its run's authority.
pub fn hidden_endpoint(url: &str, data_dir: &Path) -> Endpoint {
    Endpoint::new(url, &run_authority(data_dir)).unwrap()
}

/// [`etcdctl`] against the hidden etcd at `url` of a migrator running on `data_dir`.
pub fn hidden_etcdctl(version: &str, url: &str, data_dir: &Path, args: &[&str]) -> String {
    run_etcdctl(version, "3", url, &run_authority(data_dir), args)
}

fn run_etcdctl(version: &str, api: &str, url: &str, tls: &TlsFiles, args: &[&str]) -> String {
    let mut command = Command::new("timeout");
    command.arg("20").arg(etcdctl_binary(version)).env("ETCDCTL_API", api).arg("--endpoints").arg(url);
    for (flag, path) in [("--cacert", &tls.ca), ("--cert", &tls.cert), ("--key", &tls.key)] {
        if let Some(path) = path {
            command.arg(flag).arg(path);
        }
    }
    command.args(args);
    let output = command.output().unwrap();
    assert!(output.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

pub fn all_keys(version: &str, url: &str) -> BTreeMap<String, Vec<u8>> {
    let out = etcdctl(version, url, &["get", "", "--from-key", "-w", "json"]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    json["kvs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|kv| {
            let key = String::from_utf8(BASE64.decode(kv["key"].as_str().unwrap()).unwrap()).unwrap();
            let value = kv["value"].as_str().map(|v| BASE64.decode(v).unwrap()).unwrap_or_default();
            (key, value)
        })
        .collect()
}

/// Sample keys: plain, nested, unicode, empty and large values, as Kubernetes might hold.
pub fn sample_keys() -> BTreeMap<String, Vec<u8>> {
    let mut keys = BTreeMap::new();
    for i in 0..40 {
        keys.insert(
            format!("/registry/pods/default/pod-{i:02}"),
            format!("{{\"kind\":\"Pod\",\"i\":{i}}}").into_bytes(),
        );
    }
    keys.insert("/registry/configmaps/kube-system/ünïcødé-名前".into(), "värde ✓".as_bytes().to_vec());
    keys.insert("/registry/secrets/default/empty".into(), Vec::new());
    keys.insert("/registry/big/blob".into(), "x".repeat(1 << 20).into_bytes());
    keys.insert("/other/outside-prefix".into(), b"kept too".to_vec());
    keys
}

/// Writes `keys` through the v3 API, values through stdin (a 1 MiB value is too long for an argument).
pub fn put_all(etcd: &TestEtcd, keys: &BTreeMap<String, Vec<u8>>) {
    for (key, value) in keys {
        if value.is_empty() {
            etcd.etcdctl(&["put", "--", key, ""]);
            continue;
        }
        let mut child = Command::new("timeout")
            .arg("20")
            .arg(etcdctl_binary(&etcd.version))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.client_url, "put", "--", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(value).unwrap();
        assert!(child.wait().unwrap().success(), "put {key}");
    }
}

/// A data dir written by etcd `version` (etcd3 storage) holding `keys`, with version.txt saying so.
/// The member's peer URL is `peer_url`.
pub fn make_etcd3_data(version: &str, data_dir: &Path, peer_url: &str, keys: &BTreeMap<String, Vec<u8>>) {
    make_etcd3_data_without_version_file(version, data_dir, "m", peer_url, keys);
    fs::write(data_dir.join("version.txt"), format!("{version}/etcd3")).unwrap();
}

/// A data dir written by etcd `version` as member `name` at `peer_url`, holding `keys`, with no
/// version.txt (as etcd itself leaves it).
pub fn make_etcd3_data_without_version_file(
    version: &str,
    data_dir: &Path,
    name: &str,
    peer_url: &str,
    keys: &BTreeMap<String, Vec<u8>>,
) {
    let etcd = TestEtcd::start_with(version, data_dir, name, peer_url, &[]);
    put_all(&etcd, keys);
    etcd.stop();
}

/// Every file under `dir` with a hash of its content (and symlinks/dirs by kind), for "nothing changed".
pub fn tree_fingerprint(dir: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                out.insert(rel, format!("dir {:o}", meta.permissions().mode()));
                walk(root, &path, out);
            } else {
                let hash = Sha256::digest(fs::read(&path).unwrap());
                out.insert(rel, format!("{hash:x}"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The migrator binary with the options every test shares: the real etcd bin dir, hidden ports of its
/// own, and the member identity `m` at `peer_url`.
pub struct Migrator {
    pub command: Command,
    /// Where its hidden etcd serves clients (TLS: [`hidden_endpoint`]).
    pub hidden_client_url: String,
}

impl Migrator {
    pub fn new(data_dir: &Path, peer_url: &str) -> Migrator {
        let mut command = Command::new(env!("CARGO_BIN_EXE_etcd-migrate"));
        let peer_port = peer_url.rsplit(':').next().unwrap();
        let hidden_port = free_port();
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--bin-dir")
            .arg(etcd_bin_dir())
            .args(["--name", "m", "--port", &hidden_port.to_string(), "--peer-port", peer_port])
            .args(["--listen-peer-urls", &peer_url.replace("localhost", "127.0.0.1")])
            .args(["--initial-advertise-peer-urls", peer_url, "--initial-cluster", &format!("m={peer_url}")])
            .args(["--health-timeout", "60s"])
            .stdin(Stdio::null());
        Migrator { command, hidden_client_url: format!("https://127.0.0.1:{hidden_port}") }
    }

    /// The same run inside network namespace `ns` (`ip netns exec` execs it: the same process), with the
    /// same arguments and environment; arguments and variables added later go to the migrator too.
    pub fn in_netns(self, ns: &str) -> Migrator {
        let inner = self.command;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", ns]).arg(inner.get_program()).args(inner.get_args()).env_clear();
        for (key, value) in inner.get_envs() {
            if let Some(value) = value {
                command.env(key, value);
            }
        }
        command.stdin(Stdio::null());
        Migrator { command, hidden_client_url: self.hidden_client_url }
    }

    pub fn args(mut self, args: &[&str]) -> Migrator {
        self.command.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Migrator {
        self.command.env(key, value);
        self
    }

    pub fn run(mut self) -> Output {
        let output = self.command.output().unwrap();
        eprintln!("--- etcd-migrate stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        output
    }
}

impl Migrator {
    /// Runs the migrator and SIGKILLs it as soon as it logs a line containing `marker`; returns whether
    /// it did (false: the run ended without logging it). Returns once the hidden etcds it logged have
    /// died of their parent-death signal too, as a pod's processes are gone before it restarts.
    pub fn kill_when_logged(mut self, marker: &str) -> bool {
        self.command.stderr(Stdio::piped());
        let mut child = self.command.spawn().unwrap();
        let mut killed = false;
        let mut lines = Vec::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap())) {
            let line = line.unwrap();
            if line.contains(marker) {
                child.kill().unwrap();
                killed = true;
            }
            lines.push(line);
            if killed {
                break;
            }
        }
        child.wait().unwrap();
        eprintln!("--- etcd-migrate stderr, until {marker:?}:\n{}", lines.join("\n"));
        wait_hidden_etcds_dead(&lines.join("\n"));
        killed
    }

    /// Runs the migrator as the pod would: it migrates, then execs etcd as member `m` serving `client`.
    /// The child is killed (with the etcd it became) when the returned guard drops.
    pub fn exec_etcd(self, client: &str, peer_url: &str) -> KillOnDrop {
        let mut migrator = self.args(&["--"]).args(&[
            "--name",
            "m",
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            &peer_url.replace("localhost", "127.0.0.1"),
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            &format!("m={peer_url}"),
        ]);
        migrator.command.stderr(Stdio::null());
        KillOnDrop(migrator.command.spawn().unwrap())
    }
}

/// Waits until every hidden etcd a killed migrator said it started (`said`: its log) has died of its
/// parent-death signal too, as a pod's processes are gone before it restarts.
pub fn wait_hidden_etcds_dead(said: &str) {
    let hidden_etcds: Vec<u32> = said
        .lines()
        .filter(|line| line.contains("hidden etcd is healthy"))
        .filter_map(|line| line.split(" pid=").nth(1)?.parse().ok())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hidden_etcds.iter().all(|&pid| process_dead(pid)) {
        assert!(Instant::now() < deadline, "hidden etcds {hidden_etcds:?} outlived the killed migrator");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed when the test ends, however it ends.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn version_txt(data_dir: &Path) -> String {
    fs::read_to_string(data_dir.join("version.txt")).unwrap().trim_end().to_string()
}

/// Waits until `url`/health answers healthy (for an etcd the migrator exec'd).
pub fn wait_healthy(url: &str, timeout: Duration) -> bool {
    let endpoint = Endpoint::new(url, &TlsFiles::default()).unwrap();
    let deadline = Instant::now() + timeout;
    runtime().block_on(async {
        while Instant::now() < deadline {
            if let Ok(true) = health::check(&endpoint).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    })
}

/// Runs `f` on the shared test runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

impl TestEtcd {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.client_url, &TlsFiles::default()).unwrap()
    }

    /// Every v3 key with its value, lease, revisions and version, read through the v3 client.
    pub fn v3_key_values(&self) -> Vec<KeyValue> {
        block_on(async {
            let client = V3Client::connect(self.endpoint()).await.unwrap();
            let mut all = Vec::new();
            client
                .for_each_page(b"\0", &[0], LATEST, async |kvs| {
                    all.extend(kvs);
                    Ok::<(), ClientError>(())
                })
                .await
                .unwrap();
            all
        })
    }
}

/// A fault point the migrator (a debug build: `src/faults.rs`) blocks at until the test releases it, so
/// the test, not timing, decides what happens there.
pub struct Pause {
    dir: TempDir,
    point: String,
}

impl Pause {
    pub fn at(point: &str) -> Pause {
        Pause { dir: TempDir::new("handshake"), point: point.into() }
    }

    /// `migrator`, told to pause here.
    fn apply(&self, migrator: Migrator) -> Migrator {
        migrator
            .env("ETCD_MIGRATE_TEST_PAUSE", &self.point)
            .env("ETCD_MIGRATE_TEST_HANDSHAKE", self.dir.path().to_str().unwrap())
    }

    /// Runs `migrator` until it pauses here and SIGKILLs it there, as [`Migrator::kill_when_logged`] does;
    /// false if the run ended without pausing.
    pub fn kill_there(&self, migrator: Migrator) -> bool {
        self.apply(migrator).kill_when_logged("paused for a fault-injection test")
    }

    /// Starts `migrator`, told to pause here, and waits until it is paused; fails if it ends first.
    pub fn spawn_paused(&self, migrator: Migrator) -> PausedRun {
        let mut child = self.apply(migrator).command.spawn().unwrap();
        let reached = self.dir.join(&format!("{}.reached", self.point));
        let deadline = Instant::now() + Duration::from_secs(180);
        while !reached.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut said = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut pipe, &mut said).unwrap();
                }
                panic!("the migrator ended ({status}) without reaching {}: {said}", self.point);
            }
            assert!(Instant::now() < deadline, "the migrator never reached {}", self.point);
            std::thread::sleep(Duration::from_millis(10));
        }
        PausedRun(Some(child))
    }

    pub fn release(&self) {
        fs::write(self.dir.join(&format!("{}.release", self.point)), b"").unwrap();
    }
}

/// A key like a Kubernetes API server's master lease (15 s): on a lease this short, it can run out while
/// a step runs.
pub const SHORT_LIVED: &str = "/registry/masterleases/10.0.0.1";

/// Puts [`SHORT_LIVED`] on a 10 s lease into the data dir etcd `version` wrote as member `m` at `peer`.
pub fn add_short_lived_key(version: &str, data: &Path, peer: &str) {
    let etcd = TestEtcd::start_with(version, data, "m", peer, &[]);
    let grant = etcd.etcdctl(&["lease", "grant", "10"]);
    let lease = grant.split_whitespace().nth(1).unwrap().to_string();
    etcd.etcdctl(&["put", "--lease", &lease, SHORT_LIVED, "10.0.0.1"]);
    etcd.stop();
}

/// Runs `migrator` paused at `point` until `gone()` says [`SHORT_LIVED`] has run out where the test looks
/// (at most 60 s), then lets it finish. Checks that it succeeded and that its source was read with
/// `keys_read` keys, the short-lived one among them.
pub fn run_paused_until_gone(mut migrator: Migrator, point: &str, gone: impl Fn() -> bool, keys_read: usize) {
    migrator.command.stderr(Stdio::piped());
    let pause = Pause::at(point);
    let child = pause.spawn_paused(migrator);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gone() {
        assert!(Instant::now() < deadline, "{SHORT_LIVED} outlived its lease (paused at {point})");
        std::thread::sleep(Duration::from_millis(100));
    }
    pause.release();
    let output = child.wait_with_output();
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    assert!(said.contains(&format!("keys={keys_read}")), "the source was read with {SHORT_LIVED}: {said}");
}

/// A migrator run paused at a fault point. A test that ends before waiting for it (an assertion failed)
/// kills it, and its hidden etcd with it, rather than leave it paused for good.
pub struct PausedRun(Option<Child>);

impl PausedRun {
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("not waited for yet").id()
    }

    /// SIGKILLs the paused run, as a node's crash would, and returns its log once it and the hidden
    /// etcds it started are gone.
    pub fn kill(mut self) -> String {
        let mut child = self.0.take().expect("not waited for yet");
        child.kill().unwrap();
        let said = stderr(&child.wait_with_output().unwrap());
        wait_hidden_etcds_dead(&said);
        said
    }

    pub fn wait_with_output(mut self) -> Output {
        self.0.take().expect("not waited for yet").wait_with_output().unwrap()
    }
}

impl Drop for PausedRun {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// For a test that cannot reach its subject (`why`): under CI (`CI` set) it fails, since there everything
/// must run; elsewhere it says so on stderr, past the test harness's capture, and the caller returns.
/// A tmpfs of `size` (mount's `size=`) the test mounts itself (root only), unmounted when dropped;
/// `None` where it cannot (see [`cannot_run`]). etcd preallocates 64 MiB for its WAL and, in the
/// background, another 64 MiB for the next segment: one etcd data dir needs twice that (with less, the
/// two race, and where the second allocation wins, etcd's first commit to its db fails).
pub struct Tmpfs(TempDir);

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new("tmpfs");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match output {
            Ok(output) if output.status.success() => Some(Tmpfs(dir)),
            failed => {
                let why = failed.map_or_else(|e| e.to_string(), |o| stderr(&o));
                cannot_run(&format!("cannot mount a tmpfs (needs root and mount rights): {}", why.trim()));
                None
            }
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// An XFS filesystem with reflinks (`FICLONE`) on a loop device over an image in a temp dir, unmounted
/// on drop: where a backup is a clone.
pub struct Xfs {
    mount_point: TempDir,
    _image: TempDir,
}

impl Xfs {
    pub fn mount() -> Option<Xfs> {
        let image_dir = TempDir::new("xfs-image");
        let image = image_dir.join("xfs.img");
        fs::File::create(&image).unwrap().set_len(512 << 20).unwrap();
        let mount_point = TempDir::new("xfs");
        let made = Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&image).output();
        let mounted = made.and_then(|made| {
            if !made.status.success() {
                return Ok(made);
            }
            Command::new("mount").args(["-o", "loop"]).arg(&image).arg(mount_point.path()).output()
        });
        match mounted {
            Ok(output) if output.status.success() => Some(Xfs { mount_point, _image: image_dir }),
            failed => {
                let why = failed.map_or_else(|e| e.to_string(), |o| stderr(&o));
                cannot_run(&format!(
                    "cannot make and mount an XFS image (needs xfsprogs, root, a loop device): {}",
                    why.trim()
                ));
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.mount_point.path()
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.mount_point.path()).status();
    }
}

pub fn cannot_run(why: &str) {
    let test = test_name();
    assert!(std::env::var_os("CI").is_none_or(|ci| ci.is_empty()), "{test} cannot run under CI: {why}");
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether process `pid` is gone, reaped and all (a zombie still has its `/proc` entry).
pub fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether process `pid` has exited, so its files and sockets are closed: gone, or every one of its
/// threads a zombie (a killed process's main thread can be one while others still close its files).
pub fn process_dead(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|task| match fs::read_to_string(task.path().join("stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with(['Z', 'X'])),
        Err(_) => true,
    })
}

/// Data written by `version` with the sample keys (under `/registry`) and keys on two leases, with
/// version.txt saying so; returns every key → value and each leased key → its lease's TTL.
pub fn leased_fixture(
    version: &str,
    data: &Path,
    peer: &str,
) -> (BTreeMap<String, Vec<u8>>, BTreeMap<String, i64>) {
    let etcd = TestEtcd::start_with(version, data, "m", peer, &[]);
    let mut keys = sample_keys();
    keys.remove("/other/outside-prefix");
    put_all(&etcd, &keys);
    let mut ttls = BTreeMap::new();
    for (ttl, count) in [(3600, 5), (600, 3)] {
        let grant = etcd.etcdctl(&["lease", "grant", &ttl.to_string()]);
        let id = grant.split_whitespace().nth(1).unwrap().to_string();
        for i in 0..count {
            let key = format!("/registry/events/e-{ttl}-{i}");
            etcd.etcdctl(&["put", "--lease", &id, &key, "{\"kind\":\"Event\"}"]);
            keys.insert(key.clone(), b"{\"kind\":\"Event\"}".to_vec());
            ttls.insert(key, ttl);
        }
    }
    etcd.stop();
    std::fs::write(data.join("version.txt"), format!("{version}/etcd3")).unwrap();
    (keys, ttls)
}

/// The keys of `ttls` are exactly those on leases, each lease granted as before with no more time left.
pub fn check_leases(etcd: &TestEtcd, ttls: &BTreeMap<String, i64>) {
    let leased = etcd.leased_keys();
    assert_eq!(
        leased.keys().collect::<Vec<_>>(),
        ttls.keys().collect::<Vec<_>>(),
        "the same keys are on leases"
    );
    for (key, &(granted, remaining)) in &leased {
        assert_eq!(granted, ttls[key], "{key}: lease granted TTL kept");
        assert!(remaining > 0 && remaining <= ttls[key], "{key}: {remaining}s left, no longer than before");
    }
}

pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA and one certificate for 127.0.0.1/localhost usable as server, client and peer identity.
pub fn make_certs(dir: &Path) -> Certs {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=etcd-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[&["req"][..], &ec, &["-keyout", "member.key", "-out", "member.csr", "-subj", "/CN=etcd-member"]]
            .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "member.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "member.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    Certs { ca: dir.join("ca.crt"), cert: dir.join("member.crt"), key: dir.join("member.key") }
}

/// Every key of `keys` (key → (value, v2 TTL)) that had a TTL, or lies under `/registry/events/` (which
/// expire as Kubernetes' attachlease made them), is on a lease no longer than what it had left (and the
/// 1 h cap); every other key is on none.
pub fn assert_leases_match_ttls(etcd: &TestEtcd, keys: &BTreeMap<String, (String, Option<i64>)>) {
    let leased = etcd.leased_keys();
    for (key, (_, ttl)) in keys {
        let expected_ttl = match ttl {
            Some(ttl) => Some(*ttl),
            None if key.starts_with("/registry/events/") => Some(3600),
            None => None,
        };
        match (expected_ttl, leased.get(key)) {
            (None, None) => {}
            (Some(ttl), Some(&(granted, remaining))) => {
                assert!(granted <= 3600, "{key}: lease of {granted}s exceeds --ttl-lease-duration");
                assert!(granted <= ttl, "{key}: lease {granted}s outlives the TTL of {ttl}s it had");
                assert!(granted >= ttl - 90, "{key}: lease {granted}s for a TTL of {ttl}s");
                assert!(remaining > 0 && remaining <= granted, "{key}: {remaining}s left of {granted}s");
            }
            (expected, actual) => panic!("{key}: expected lease {expected:?}, found {actual:?}"),
        }
    }
}

/// A plain gRPC client for the calls only tests make (puts, status, members, snapshots, a lease's keys),
/// connected the way the migrator's v3 client is.
pub async fn grpc(endpoint: &Endpoint) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint.base_url()], Some(connect_options(endpoint).unwrap()))
        .await
        .unwrap()
}

/// The store's current revision.
pub async fn current_revision(endpoint: &Endpoint) -> i64 {
    let response = grpc(endpoint).await.get("/", None).await.unwrap();
    response.header().unwrap().revision()
}

/// Lease `id`'s granted and remaining TTL and its keys.
pub async fn lease_info(endpoint: &Endpoint, id: i64) -> etcd_client::LeaseTimeToLiveResponse {
    let options = etcd_client::LeaseTimeToLiveOptions::new().with_keys();
    grpc(endpoint).await.lease_time_to_live(id, Some(options)).await.unwrap()
}

/// Streams a snapshot of the member's backend into `path` and checks the SHA-256 etcd appends to it, as
/// `etcdctl snapshot save` does. Returns the bytes written: the database and its trailer.
pub async fn save_snapshot(endpoint: &Endpoint, path: &Path) -> u64 {
    const SHA256_LEN: usize = 32;
    let mut stream = grpc(endpoint).await.snapshot().await.unwrap();
    let mut all = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        all.extend_from_slice(chunk.blob());
    }
    let (db, trailer) = all.split_at(all.len().checked_sub(SHA256_LEN).expect("a SHA-256 trailer"));
    assert_eq!(Sha256::digest(db).as_slice(), trailer, "the snapshot matches its SHA-256 trailer");
    fs::write(path, &all).unwrap();
    all.len() as u64
}

/// The v2 store under `/registry` holds exactly `keys`, each key of `ttls` with a TTL no longer than its
/// lease had, every other key with none.
pub fn check_v2_keys(etcd: &TestEtcd, keys: &BTreeMap<String, Vec<u8>>, ttls: &BTreeMap<String, i64>) {
    let leaves = block_on(V2Client::new(etcd.endpoint()).leaves("/registry")).unwrap();
    let found: BTreeMap<String, (String, Option<i64>)> =
        leaves.into_iter().map(|leaf| (leaf.key, (leaf.value, leaf.ttl))).collect();
    assert_eq!(found.len(), keys.len());
    for (key, value) in keys {
        let (found_value, ttl) = &found[key];
        assert_eq!(found_value.as_bytes(), value.as_slice(), "{key}");
        match (ttls.get(key), ttl) {
            (None, None) => {}
            (Some(&before), Some(after)) => {
                assert!(*after > 0 && *after <= before, "{key}: TTL {after}s, was {before}s")
            }
            (before, after) => panic!("{key}: TTL {before:?} became {after:?}"),
        }
    }
}

/// Puts each of `keys` (keys without a lease) `times` more times with its own value, so the store's
/// revision ends well above its key count, as a long-lived cluster's does. Returns that revision.
pub fn rewrite_keys(etcd: &TestEtcd, keys: &BTreeMap<String, Vec<u8>>, times: usize) -> i64 {
    block_on(async {
        let mut client = grpc(&etcd.endpoint()).await;
        for _ in 0..times {
            for (key, value) in keys {
                client.put(key.as_bytes(), value.clone(), None).await.unwrap();
            }
        }
        current_revision(&etcd.endpoint()).await
    })
}

/// The revision etcd says it compacted when a watch on the whole keyspace resumes at `revision`: its
/// client must relist. From 3.3 on etcd also cancels the watch (`v3rpc/watch.go`: `canceled :=
/// wresp.CompactRevision != 0`); 3.0-3.2 only say so, so `cancelled` says which to expect. Fails if the
/// watch gets events instead, or no answer in a minute.
pub fn resumed_watch_compacted_at(endpoint: &Endpoint, revision: i64, cancelled: bool) -> i64 {
    block_on(async {
        let options = etcd_client::WatchOptions::new().with_from_key().with_start_revision(revision);
        let mut stream = grpc(endpoint).await.watch(vec![0], Some(options)).await.unwrap();
        let answer = async {
            loop {
                let response = stream.message().await.unwrap().expect("the watch stream stays open");
                assert!(
                    response.events().is_empty(),
                    "a watch resumed at {revision} got events: {response:?}"
                );
                if response.compact_revision() != 0 {
                    assert_eq!(response.canceled(), cancelled, "a compacted watch is cancelled from 3.3 on");
                    return response.compact_revision();
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .unwrap_or_else(|_| panic!("a watch resumed at {revision} was not told it is compacted"))
    })
}
