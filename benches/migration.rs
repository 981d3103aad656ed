//! The benchmark: how close a migration comes to the floor etcd itself sets, and the costs around it.
//! Run with `cargo bench` (needs the etcd releases: `image/fetch-etcd.sh --available`; the lineage row says
//! NOT RUN without a release mirror). Prints a table and writes it,
//! with the machine's CPU and the date, to bench/results.md. Medians of several runs; nothing here is
//! asserted: the numbers are for reading.
//!
//! 1. overhead ratio: a full 3.3.25 → 3.5.16 migration (two in-place steps) through the entrypoint,
//!    divided by bare etcd-3.4.23 + etcd-3.5.16 start → healthy → stop on copies of the same data;
//! 2. the whole lineage: 2.2.1/etcd2 data with TTL keys migrated to 3.7.1/etcd3 (every minor, the
//!    conversion, the v2 seal), against the sum of each release's own bare start → healthy → stop;
//! 3. rolling steps of a three-member cluster, 3.4.23 → 3.5.30 and 3.6.14 → 3.7.1: the time each member
//!    is out of the cluster while its pod (the migrator in exec mode) takes it to the next release,
//!    against a bare restart of the same etcd on a second, identically seeded cluster;
//! 4. no-op latency: data already at target, process start to the exec of a stand-in "etcd";
//! 5. an etcd2 → etcd3 conversion of 100k TTL keys (`BENCH_TTL_KEYS`) with 3.3.25: each phase against
//!    what etcd itself takes for that work, the TTL reattachment against a bare gRPC attach loop (its
//!    ceiling), and the entrypoint's peak RSS (VmHWM);
//! 6. backup throughput of a 1 GiB data dir against `cp -a` + `sync` of the same dir, in the same run;
//! 7. the size of the static release binary.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use etcd_migrate::backup::{self, BackupPolicy};
use etcd_migrate::bundle::Bundle;
use etcd_migrate::client::v2::V2Client;
use etcd_migrate::client::{Endpoint, TlsFiles};

const RUNS: usize = 5;
const STANDIN_ENV: &str = "ETCD_MIGRATE_BENCH_STANDIN";

fn main() {
    // When exec'd as the stand-in etcd of the no-op measurement: record the time and leave.
    if let Ok(record) = std::env::var(STANDIN_ENV) {
        fs::write(record, now_nanos().to_string()).unwrap();
        return;
    }
    // `cargo bench -- ttl backup` runs only those measurements (and leaves bench/results.md alone).
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let bench = Bench::new();
    let measurements: [(&str, Measurement); 7] = [
        ("overhead", &|b| vec![b.overhead_ratio()]),
        ("chain", &|b| vec![b.lineage_chain()]),
        ("rolling", &|b| b.rolling()),
        ("noop", &|b| vec![b.noop_latency()]),
        ("ttl", &|b| b.conversion()),
        ("backup", &|b| b.backup_throughput()),
        ("size", &|b| vec![b.binary_size()]),
    ];
    let mut rows = Vec::new();
    for (name, measure) in measurements {
        if only.is_empty() || only.iter().any(|o| o == name) {
            for (what, result, aim) in measure(&bench) {
                println!("{what}: {result} (aim {aim})");
                rows.push((what, result, aim));
            }
        }
    }
    if !only.is_empty() {
        return;
    }

    let mut table = String::from("| measurement | result | aim |\n|---|---|---|\n");
    for (what, result, aim) in &rows {
        table += &format!("| {what} | {result} | {aim} |\n");
    }
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap().trim().to_string())
        })
        .unwrap_or_default();
    let date =
        String::from_utf8(Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().unwrap().stdout)
            .unwrap();
    let report = format!(
        "# etcd-migrate benchmark\n\n{} on {cpu} ({} cores), medians of {RUNS} runs unless noted.\n\n{table}\nRerun: `image/fetch-etcd.sh --available && cargo bench`.\n",
        date.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    println!("{report}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/results.md");
    fs::write(&out, &report).unwrap();
    println!("written to {}", out.display());
}

type Row = (String, String, String);
type Measurement = &'static dyn Fn(&Bench) -> Vec<Row>;

/// One member of a [`LoopbackCluster`]: its data dir and its loopback ports.
struct ClusterMember {
    name: String,
    data: PathBuf,
    client: u16,
    peer: u16,
}

/// A three-member etcd cluster on loopback, and what runs as each member now. Dropping it stops every
/// etcd it runs.
struct LoopbackCluster {
    members: Vec<ClusterMember>,
    initial_cluster: String,
    running: Vec<Option<std::process::Child>>,
}

impl LoopbackCluster {
    /// Starts three members of etcd `release` from `bin` in `dir`, waits until each is healthy, writes
    /// `keys` keys through the first and notes `release`/etcd3 in each data dir's version.txt.
    fn start(bin: &Path, release: &str, dir: &Path, keys: usize) -> LoopbackCluster {
        let members: Vec<ClusterMember> = (0..3)
            .map(|i| ClusterMember {
                name: format!("m{i}"),
                data: dir.join(format!("m{i}/data")),
                client: free_port(),
                peer: free_port(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LoopbackCluster { members, initial_cluster, running: Vec::new() };
        let binary = bin.join(format!("etcd-{release}"));
        for i in 0..cluster.members.len() {
            let etcd = spawn_etcd_with(&binary, &cluster.members[i].data, &cluster.flags(i));
            cluster.running.push(Some(etcd));
        }
        cluster.await_all_healthy();
        let url = format!("http://127.0.0.1:{}", cluster.members[0].client);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let seed = async {
                let mut client = etcd_client::Client::connect([url], None).await.unwrap();
                for i in 0..keys {
                    let value = format!("{{\"kind\":\"Pod\",\"n\":{i}}}");
                    client.put(format!("/registry/pods/default/pod-{i}"), value, None).await.unwrap();
                }
            };
            tokio::time::timeout(HEALTH_DEADLINE, seed).await.expect("the seed keys are written in time");
        });
        for member in &cluster.members {
            fs::write(member.data.join("version.txt"), format!("{release}/etcd3")).unwrap();
        }
        cluster
    }

    /// Member `i`'s etcd flags, the final etcd's in its pod.
    fn flags(&self, i: usize) -> Vec<String> {
        let member = &self.members[i];
        member_flags(&member.name, member.client, member.peer, "127.0.0.1", &self.initial_cluster)
    }

    /// Polls every member's /health until all say healthy; panics past [`HEALTH_DEADLINE`].
    fn await_all_healthy(&self) {
        let deadline = Instant::now() + HEALTH_DEADLINE;
        while let Some(sick) = self.members.iter().find(|m| !healthy(m.client)) {
            assert!(Instant::now() < deadline, "{} was not healthy within {HEALTH_DEADLINE:?}", sick.name);
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Replaces what runs as member `i` with what `start` spawns for it, as a node's roll does: the
    /// old etcd stopped (SIGTERM, waited for), the new one started. Returns the time the member was out
    /// of the cluster: from the old etcd's exit until the member's client URL answers healthy, served
    /// by etcd `release`. Then waits until every member is healthy.
    fn replace(
        &mut self,
        i: usize,
        release: &str,
        start: impl FnOnce(&LoopbackCluster) -> std::process::Child,
    ) -> Duration {
        stop(self.running[i].take().unwrap());
        let out = Instant::now();
        let mut etcd = start(self);
        let client = self.members[i].client;
        let up = await_health(&mut etcd, client);
        let took = out.elapsed();
        self.running[i] = Some(etcd);
        let name = &self.members[i].name;
        assert!(
            up,
            "{name} ended before it was healthy (its log: {})",
            self.members[i].data.parent().unwrap().display()
        );
        let version = http_get(client, "/version").unwrap_or_default();
        assert!(
            version.contains(&format!("\"etcdserver\":\"{release}\"")),
            "{name} is not served by {release}: {version}"
        );
        self.await_all_healthy();
        took
    }
}

impl Drop for LoopbackCluster {
    fn drop(&mut self) {
        for etcd in self.running.iter_mut().filter_map(Option::take) {
            stop(etcd);
        }
    }
}

struct Bench {
    bin: PathBuf,
    work: PathBuf,
    migrator: PathBuf,
}

fn now_nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn copy_tree(from: &Path, to: &Path) {
    let _ = fs::remove_dir_all(to);
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

/// etcd's flags for member `name` of `initial_cluster`: clients on loopback port `client`, peers on
/// 127.0.0.1:`peer_port`, advertised as `peer_host`:`peer_port`.
fn member_flags(
    name: &str,
    client: u16,
    peer_port: u16,
    peer_host: &str,
    initial_cluster: &str,
) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-advertise-peer-urls=http://{peer_host}:{peer_port}"),
        format!("--initial-cluster={initial_cluster}"),
    ]
}

/// Starts etcd `binary` on `data` with `flags`, its output dropped.
fn spawn_etcd_with(binary: &Path, data: &Path, flags: &[String]) -> std::process::Child {
    Command::new(binary)
        .arg("--data-dir")
        .arg(data)
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts etcd as single member `m` on `data`, serving on loopback `client` and `peer_port`.
fn spawn_etcd(
    binary: &Path,
    data: &Path,
    client: u16,
    peer_port: u16,
    extra: &[&str],
) -> std::process::Child {
    let mut flags =
        member_flags("m", client, peer_port, "localhost", &format!("m=http://localhost:{peer_port}"));
    flags.extend(extra.iter().map(|flag| flag.to_string()));
    spawn_etcd_with(binary, data, &flags)
}

/// How long an etcd may take to become healthy, on a busy 2-core machine at a million keys. Only a
/// deadline: every wait polls.
const HEALTH_DEADLINE: Duration = Duration::from_secs(300);

/// How long a stopped etcd may take to exit after SIGTERM (a leader hands over first) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// GETs `path` from loopback `port` over HTTP/1.1 with `Connection: close` (etcd 3.0–3.3 keep an
/// HTTP/1.0 connection open); the whole answer, or None if nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    Some(answer)
}

/// Whether etcd on loopback `client` says it is healthy.
fn healthy(client: u16) -> bool {
    http_get(client, "/health").is_some_and(|answer| answer.replace(' ', "").contains("\"health\":\"true\""))
}

/// Polls /health every 2 ms until etcd on `client` says it is healthy; false if etcd exits first. Past
/// [`HEALTH_DEADLINE`] it kills etcd and panics.
fn await_health(child: &mut std::process::Child, client: u16) -> bool {
    let deadline = Instant::now() + HEALTH_DEADLINE;
    loop {
        if healthy(client) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcd on port {client} was not healthy within {HEALTH_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A bare etcd: start, wait for health, stop with SIGTERM. Returns start → stopped. A start that fails
/// (a port just released by the previous etcd) is retried.
fn bare_etcd(binary: &Path, data: &Path, peer_port: u16) -> Duration {
    for _ in 0..5 {
        let client = free_port();
        let started = Instant::now();
        let mut child = spawn_etcd(binary, data, client, peer_port, &[]);
        if !await_health(&mut child, client) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        stop(child);
        return started.elapsed();
    }
    panic!("{} never became healthy on {}", binary.display(), data.display());
}

/// Stops etcd with SIGTERM and waits for it; SIGKILL if it has not exited after [`STOP_GRACE`]. An etcd
/// that has already exited is only reaped.
fn stop(mut child: std::process::Child) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    if child.try_wait().unwrap().is_some() {
        return;
    }
    let deadline = Instant::now() + STOP_GRACE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            eprintln!("etcd (pid {}) ignored SIGTERM for {STOP_GRACE:?}: killed", child.id());
            let _ = child.kill();
            child.wait().unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// GETs `path` from loopback `port` and returns the length of the answer, read to its end.
fn http_get_len(port: u16, path: &str) -> usize {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).unwrap();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match stream.read(&mut buffer).unwrap() {
            0 => return total,
            n => total += n,
        }
    }
}

/// What etcd itself takes, over plain gRPC, on the converted data: seconds to read every key with its
/// value in pages of 10k, and keys per second attached to one lease by guarded `ignore_value` puts in
/// transactions of 1024, 4 in flight (the keys and revisions read beforehand, untimed).
async fn bare_grpc(url: &str) -> (f64, f64) {
    let client = etcd_client::Client::connect([url], None).await.unwrap();
    let kv = client.kv_client().max_decoding_message_size(1 << 30);
    let (start, end) = (b"/registry/events/".to_vec(), b"/registry/events0".to_vec());
    let read_all = async |keys_only: bool| {
        let mut kv = kv.clone();
        let (mut key, mut revision, mut all) = (start.clone(), 0, Vec::new());
        loop {
            let mut options =
                GetOptions::new().with_range(end.clone()).with_limit(10_000).with_revision(revision);
            if keys_only {
                options = options.with_keys_only();
            }
            let mut page = kv.get(key.clone(), Some(options)).await.unwrap();
            revision = page.header().unwrap().revision();
            let more = page.more();
            let kvs = page.take_kvs();
            key = [kvs.last().unwrap().key(), b"\0"].concat();
            if keys_only {
                all.extend(kvs.into_iter().map(|kv| (kv.key().to_vec(), kv.mod_revision())));
            }
            if !more {
                return all;
            }
        }
    };
    let started = Instant::now();
    read_all(false).await;
    let read = started.elapsed().as_secs_f64();
    let keys = read_all(true).await;
    let lease = client.lease_client().grant(3600, None).await.unwrap().id();
    let started = Instant::now();
    let mut in_flight = tokio::task::JoinSet::new();
    for batch in keys.chunks(1024) {
        if in_flight.len() == 4 {
            in_flight.join_next().await.unwrap().unwrap();
        }
        let compares: Vec<Compare> = batch
            .iter()
            .map(|(key, rev)| Compare::mod_revision(key.clone(), CompareOp::Equal, *rev))
            .collect();
        let puts: Vec<TxnOp> = batch
            .iter()
            .map(|(key, _)| {
                TxnOp::put(key.clone(), "", Some(PutOptions::new().with_lease(lease).with_ignore_value()))
            })
            .collect();
        let mut kv = kv.clone();
        in_flight.spawn(async move {
            assert!(kv.txn(Txn::new().when(compares).and_then(puts)).await.unwrap().succeeded());
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.unwrap();
    }
    (read, keys.len() as f64 / started.elapsed().as_secs_f64())
}

/// A JSON log line's time, in seconds since midnight.
fn log_time(line: &serde_json::Value) -> f64 {
    let stamp = line["timestamp"].as_str().unwrap();
    let clock = stamp.split('T').nth(1).unwrap().trim_end_matches('Z');
    clock.split(':').fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap())
}

/// From the migrator's JSON log: the seconds from each step's start to the stop of its hidden etcd, in
/// all (the rest of a run is the migrator's own time).
fn seconds_in_etcd(log: &str) -> f64 {
    let (mut started, mut total) = (None, 0.0);
    for line in log.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()) {
        let message = line["message"].as_str().unwrap_or_default();
        if message.ends_with(" starting") && line["step"].is_u64() {
            started = Some(log_time(&line));
        } else if message == "hidden etcd stopped"
            && let Some(start) = started.take()
        {
            total += (log_time(&line) - start).rem_euclid(86_400.0);
        }
    }
    total
}

/// From a pod's JSON log: the seconds from the migrator's first line until its backup is verified, and
/// until it execs etcd.
fn pod_times(log: &str) -> (f64, f64) {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|line| line["message"].is_string())
        .collect();
    let since_first = |message: &str| {
        let line = lines.iter().find(|line| line["message"] == message).expect(message);
        (log_time(line) - log_time(&lines[0])).rem_euclid(86_400.0)
    };
    (since_first("backup verified"), since_first("starting etcd"))
}

/// How long each phase of a conversion took, from the migrator's JSON log: the time between one
/// milestone line and the one before it goes to the phase that milestone ends.
struct Phases {
    seconds: std::collections::HashMap<&'static str, f64>,
    total: f64,
    attached_keys: u64,
}

impl Phases {
    fn from_log(log: &str) -> Phases {
        let lines: Vec<serde_json::Value> =
            log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let mut seconds = std::collections::HashMap::new();
        let mut last: Option<f64> = None;
        let mut attached_keys = 0;
        let (mut first, mut end) = (0.0, 0.0);
        for line in &lines {
            let message = line["message"].as_str().unwrap_or_default();
            let phase = match message {
                "migrating" => None,
                "backup verified" => Some("backup"),
                "hidden etcd is healthy" | "hidden etcd stopped" => Some("etcd starts and stops (2 each)"),
                "read the v2 data" => Some("v2 read"),
                "etcdctl migrate done" => Some("etcdctl migrate"),
                "leases attached" => {
                    attached_keys = line["keys"].as_u64().unwrap();
                    Some("attach")
                }
                "read the v3 data" => Some("verification"),
                m if m.starts_with("removed the stale v2 copy") => Some("removing the v2 copy"),
                m if m.starts_with("convert-to-etcd3") || m.starts_with("migrated") => Some("other"),
                _ => continue,
            };
            let mut now = log_time(line);
            match last {
                None => first = now,
                Some(before) => {
                    if now < before {
                        now += 86_400.0; // past midnight
                    }
                    *seconds.entry(phase.unwrap()).or_insert(0.0) += now - before;
                }
            }
            end = now;
            last = Some(now);
        }
        assert!(attached_keys > 0, "the conversion attached no leases: {log}");
        Phases { seconds, total: end - first, attached_keys }
    }

    fn get(&self, phase: &str) -> f64 {
        self.seconds.get(phase).copied().unwrap_or(0.0)
    }
}

impl Bench {
    fn new() -> Bench {
        let bin = std::env::var_os("ETCD_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/etcd-migrate/etcd")
        });
        let present = Bundle::in_dir(&bin);
        assert!(present.is_present("3.3.25".parse().unwrap()), "run image/fetch-etcd.sh --available first");
        let work = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/work");
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work).unwrap();
        Bench { bin, work, migrator: PathBuf::from(env!("CARGO_BIN_EXE_etcd-migrate")) }
    }

    fn migrate(&self, data: &Path, peer_port: u16, target: &str, extra: &[&str]) -> std::process::Child {
        Command::new(&self.migrator)
            .arg("--data-dir")
            .arg(data)
            .arg("--bin-dir")
            .arg(&self.bin)
            .args(["--target-version", target, "--name", "m", "--migrate-only"])
            .args(["--port", &free_port().to_string(), "--peer-port", &peer_port.to_string()])
            .args(["--initial-cluster", &format!("m=http://localhost:{peer_port}")])
            .args(["--backup-dir", self.work.join("backups").to_str().unwrap(), "--backup-retention", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// "NOT RUN: needs etcd …" naming those of `releases` the bin dir lacks, if it lacks any.
    fn not_run(&self, releases: &[&str]) -> Option<String> {
        let bundle = Bundle::in_dir(&self.bin);
        let absent: Vec<&str> =
            releases.iter().copied().filter(|release| !bundle.is_present(release.parse().unwrap())).collect();
        (!absent.is_empty())
            .then(|| format!("NOT RUN: needs etcd {} (set ETCD_RELEASE_MIRROR)", absent.join(" ")))
    }

    /// A 3.3.25/etcd3 data dir with `keys` keys, made with the real etcd.
    fn etcd3_fixture(&self, keys: usize, peer_port: u16) -> PathBuf {
        let data = self.work.join("fixture-etcd3");
        let client = free_port();
        let mut etcd = spawn_etcd(&self.bin.join("etcd-3.3.25"), &data, client, peer_port, &[]);
        assert!(await_health(&mut etcd, client), "the fixture etcd starts");
        for i in 0..keys {
            let status = Command::new(self.bin.join("etcdctl-3.3.25"))
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &format!("http://127.0.0.1:{client}"),
                    "put",
                    &format!("/registry/k{i}"),
                    "v",
                ])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
        }
        etcd.kill().unwrap();
        etcd.wait().unwrap();
        fs::write(data.join("version.txt"), "3.3.25/etcd3").unwrap();
        data
    }

    fn overhead_ratio(&self) -> Row {
        let peer = free_port();
        let fixture = self.etcd3_fixture(100, peer);
        let data = self.work.join("overhead");
        let (mut ours, mut own, mut floor) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            copy_tree(&fixture, &data);
            let started = Instant::now();
            let output =
                self.migrate(&data, peer, "3.5.16", &["--log-format", "json"]).wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{log}");
            let took = started.elapsed().as_secs_f64();
            ours.push(took);
            own.push(took - seconds_in_etcd(&log));
            copy_tree(&fixture, &data);
            let bare = bare_etcd(&self.bin.join("etcd-3.4.23"), &data, peer)
                + bare_etcd(&self.bin.join("etcd-3.5.16"), &data, peer);
            floor.push(bare.as_secs_f64());
        }
        let (ours, own, floor) = (median(ours), median(own), median(floor));
        (
            "overhead ratio, 3.3.25 → 3.5.16 (2 steps, backup included)".into(),
            format!(
                "{:.2} ({ours:.2} s vs {floor:.2} s of bare etcd; outside its etcds' starts and stops the migrator took {:.0} ms)",
                ours / floor,
                own * 1000.0
            ),
            "≤ 1.10".into(),
        )
    }

    /// Data written by etcd 2.2.1 through its v2 API: 200 objects and 100 events with a 1 h TTL.
    fn etcd2_lineage_fixture(&self, peer_port: u16) -> PathBuf {
        let data = self.work.join("fixture-etcd2");
        let client = free_port();
        let mut etcd = spawn_etcd(&self.bin.join("etcd-2.2.1"), &data, client, peer_port, &[]);
        assert!(await_health(&mut etcd, client), "the fixture etcd starts");
        let endpoint = Endpoint::new(&format!("http://127.0.0.1:{client}"), &TlsFiles::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let v2 = V2Client::new(endpoint);
            for i in 0..200 {
                v2.set(&format!("/registry/pods/default/pod-{i}"), "{\"kind\":\"Pod\"}", None).await.unwrap();
            }
            for i in 0..100 {
                v2.set(&format!("/registry/events/default/e-{i}"), "{\"kind\":\"Event\"}", Some(3600))
                    .await
                    .unwrap();
            }
        });
        etcd.kill().unwrap();
        etcd.wait().unwrap();
        fs::write(data.join("version.txt"), "2.2.1/etcd2").unwrap();
        data
    }

    fn lineage_chain(&self) -> Row {
        const RELEASES: [&str; 9] =
            ["2.3.7", "3.0.17", "3.1.20", "3.2.32", "3.3.25", "3.4.23", "3.5.33", "3.6.14", "3.7.1"];
        const CHAIN_RUNS: usize = 3;
        let what = format!(
            "the lineage, 2.2.1/etcd2 → 3.7.1/etcd3 (11 steps, 300 keys, backups included; median of {CHAIN_RUNS})"
        );
        let needed: Vec<&str> = ["2.2.1"].iter().chain(&RELEASES).copied().collect();
        if let Some(not_run) = self.not_run(&needed) {
            return (what, not_run, "≤ 1.5".into());
        }
        let peer = free_port();
        let fixture = self.etcd2_lineage_fixture(peer);
        let data = self.work.join("chain");
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..CHAIN_RUNS {
            copy_tree(&fixture, &data);
            let started = Instant::now();
            let output = self.migrate(&data, peer, "3.7.1", &[]).wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            ours.push(started.elapsed().as_secs_f64());
            let bare: Duration = RELEASES
                .iter()
                .map(|release| {
                    let _ = fs::remove_dir_all(&data);
                    bare_etcd(&self.bin.join(format!("etcd-{release}")), &data, peer)
                })
                .sum();
            floor.push(bare.as_secs_f64());
        }
        let (ours, floor) = (median(ours), median(floor));
        (
            what,
            format!(
                "{:.2} ({ours:.2} s vs {floor:.2} s of bare etcd, one start of each of its {} releases)",
                ours / floor,
                RELEASES.len()
            ),
            "≤ 1.5".into(),
        )
    }

    /// Member `i`'s pod at `target`, as a control plane runs it: the migrator in exec mode with the
    /// member's identity and a hidden client URL, then `--` and the final etcd's flags. Its output (and
    /// the exec'd etcd's) goes to `pod-<target>.log` beside the data dir; its backups go there too.
    fn pod(&self, cluster: &LoopbackCluster, i: usize, target: &str) -> std::process::Child {
        let member = &cluster.members[i];
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let log = member.data.with_file_name(format!("pod-{target}.log"));
        Command::new(&self.migrator)
            .arg("--data-dir")
            .arg(&member.data)
            .arg("--bin-dir")
            .arg(&self.bin)
            .args(["--target-version", target, "--name", &member.name, "--log-format", "json"])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster.initial_cluster])
            .arg("--")
            .args(cluster.flags(i))
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }

    /// The rolling steps a control plane takes: 3.4.23 → 3.5.30, and 3.6.14 → 3.7.1, whose step seals
    /// the data on 3.6 first.
    fn rolling(&self) -> Vec<Row> {
        vec![
            self.rolling_step("3.4.23", "3.5.30", ""),
            self.rolling_step("3.6.14", "3.7.1", " (with its seal on 3.6: a forced snapshot)"),
        ]
    }

    /// One rolling step `from` → `to` of a three-member cluster: each member in turn stopped and started
    /// again as its pod at `to`, timed from its old etcd's exit until its own client URL answers healthy,
    /// served by etcd `to`; every member healthy again before the next. The floor, in the same run and
    /// member by member alternately: the same on a second, identically seeded cluster, each member's
    /// etcd `from` replaced by a bare etcd `to` on its data with the same flags. Medians over the
    /// members.
    fn rolling_step(&self, from: &str, to: &str, note: &str) -> Row {
        const KEYS: usize = 300;
        let what = format!(
            "rolling step {from} → {to}{note}, time a member is out of the cluster (median of 3 members)"
        );
        let aim = "≤ 2× the bare restart + the backup".to_string();
        if let Some(not_run) = self.not_run(&[from, to]) {
            return (what, not_run, aim);
        }
        let dir = self.work.join(format!("rolling-{to}"));
        let mut pods = LoopbackCluster::start(&self.bin, from, &dir.join("pods"), KEYS);
        let mut bare = LoopbackCluster::start(&self.bin, from, &dir.join("bare"), KEYS);
        let target = self.bin.join(format!("etcd-{to}"));
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for i in 0..pods.members.len() {
            ours.push(pods.replace(i, to, |cluster| self.pod(cluster, i, to)).as_secs_f64());
            floor.push(
                bare.replace(i, to, |cluster| {
                    spawn_etcd_with(&target, &cluster.members[i].data, &cluster.flags(i))
                })
                .as_secs_f64(),
            );
        }
        let (backups, before_exec): (Vec<f64>, Vec<f64>) = pods
            .members
            .iter()
            .map(|member| {
                pod_times(&fs::read_to_string(member.data.with_file_name(format!("pod-{to}.log"))).unwrap())
            })
            .unzip();
        drop((pods, bare));
        let each = |samples: &[f64]| samples.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
        let members = format!(
            "m0, m1, m2: {} s vs {} s; the migrator from its first log line to its exec of etcd: {} s, its backup {} s",
            each(&ours),
            each(&floor),
            each(&before_exec),
            each(&backups)
        );
        let (ours, floor) = (median(ours), median(floor));
        (
            what,
            format!(
                "{ours:.2} s vs {floor:.2} s for a bare restart of the same etcd: {:.1}× ({members})",
                ours / floor
            ),
            aim,
        )
    }

    fn noop_latency(&self) -> Row {
        let bin = self.work.join("noop-bin");
        fs::create_dir_all(&bin).unwrap();
        let standin = bin.join("etcd-3.5.16");
        let _ = fs::remove_file(&standin);
        fs::copy(std::env::current_exe().unwrap(), &standin).unwrap();
        let data = self.work.join("noop-data");
        fs::create_dir_all(data.join("member")).unwrap();
        fs::write(data.join("version.txt"), "3.5.16/etcd3\n").unwrap();
        let record = self.work.join("noop-record");
        let mut samples = Vec::new();
        for _ in 0..25 {
            let started = now_nanos();
            let status = Command::new(&self.migrator)
                .arg("--data-dir")
                .arg(&data)
                .arg("--bin-dir")
                .arg(&bin)
                .args(["--target-version", "3.5.16"])
                .env(STANDIN_ENV, &record)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success());
            let execed: u128 = fs::read_to_string(&record).unwrap().parse().unwrap();
            samples.push((execed - started) as f64 / 1e6);
        }
        (
            "no-op latency, start → exec of etcd (median of 25)".into(),
            format!("{:.2} ms", median(samples)),
            "≤ 5 ms".into(),
        )
    }

    /// An etcd2 → etcd3 conversion of `BENCH_TTL_KEYS` TTL keys (100k by default) with 3.3.25, phase by
    /// phase from the migrator's JSON log, each against what etcd itself takes for that work on the same
    /// data: a bare start → healthy → stop on the v2 data and one on the converted data, a bare v2
    /// listing, a bare gRPC read of every key, and a bare gRPC attach loop (the ceiling of the
    /// reattachment).
    fn conversion(&self) -> Vec<Row> {
        let count: usize =
            std::env::var("BENCH_TTL_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        let data = self.work.join("ttl");
        let peer = free_port();
        let etcd33 = self.bin.join("etcd-3.3.25");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let client = free_port();
        let mut etcd = spawn_etcd(&etcd33, &data, client, peer, &[]);
        assert!(await_health(&mut etcd, client), "the fixture etcd starts");
        let url = format!("http://127.0.0.1:{client}");
        runtime.block_on(async {
            let client = V2Client::new(Endpoint::new(&url, &TlsFiles::default()).unwrap());
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..32 {
                let client = client.clone();
                writers.spawn(async move {
                    for i in (w..count).step_by(32) {
                        let value = format!("{{\"kind\":\"Event\",\"n\":{i},\"pad\":\"{:0>160}\"}}", i);
                        client
                            .set(&format!("/registry/events/ns/e{i:07}"), &value, Some(3600))
                            .await
                            .unwrap();
                    }
                });
            }
            while let Some(done) = writers.join_next().await {
                done.unwrap();
            }
        });
        // etcd's own v2 listing of the tree: the floor of the v2 read.
        let started = Instant::now();
        let listing = http_get_len(client, "/v2/keys/registry?recursive=true&sorted=true");
        let v2_floor = started.elapsed().as_secs_f64();
        assert!(listing > count, "the v2 listing holds every key");
        stop(etcd);
        let v2_start_stop = bare_etcd(&etcd33, &data, peer).as_secs_f64();
        fs::write(data.join("version.txt"), "3.3.25/etcd2").unwrap();

        let mut child = self.migrate(&data, peer, "3.3.25", &["--log-format", "json"]);
        let pid = child.id();
        let mut peak_kib = 0u64;
        let stderr = child.stderr.take().unwrap();
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let mut stderr = stderr;
            stderr.read_to_string(&mut text).unwrap();
            text
        });
        while child.try_wait().unwrap().is_none() {
            if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
            {
                peak_kib = peak_kib.max(line.split_whitespace().nth(1).unwrap().parse().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = log.join().unwrap();
        let phases = Phases::from_log(&log);

        // What etcd takes for the same start, reads and writes on the converted data.
        let converted_start_stop = bare_etcd(&etcd33, &data, peer).as_secs_f64();
        let client = free_port();
        let mut etcd = spawn_etcd(&etcd33, &data, client, peer, &["--max-txn-ops=1024"]);
        assert!(await_health(&mut etcd, client), "the converted etcd starts");
        let (read_floor, ceiling) = runtime.block_on(bare_grpc(&format!("http://127.0.0.1:{client}")));
        stop(etcd);

        let attached = phases.attached_keys as f64;
        let ours = attached / phases.get("attach");
        let share = |took: f64, floor: f64| format!("etcd's own {floor:.1} s: share {:.2}", floor / took);
        let mut rows = vec![
            (
                format!("TTL reattachment, {count} keys, end to end (noted keys, guarded attach)"),
                format!(
                    "{ours:.0} keys/s vs {:.0} keys/s for a bare gRPC attach loop: {:.2} of the ceiling",
                    ceiling,
                    ours / ceiling
                ),
                "≥ 0.7 of the ceiling".into(),
            ),
            (
                format!("peak RSS of the entrypoint, {count} TTL keys"),
                format!("{:.1} MiB", peak_kib as f64 / 1024.0),
                "≤ 20 MiB (at 1M keys)".into(),
            ),
            (
                format!("etcd2 → etcd3 conversion of {count} keys, in all"),
                format!("{:.1} s", phases.total),
                "≤ 150 s at 1M keys".into(),
            ),
        ];
        let per_key = |floor_rate: f64| attached / floor_rate;
        for (phase, floor) in [
            ("backup", None),
            ("etcd starts and stops (2 each)", Some(v2_start_stop + converted_start_stop)),
            ("v2 read", Some(v2_floor)),
            ("etcdctl migrate", None),
            ("attach", Some(per_key(ceiling))),
            ("verification", Some(read_floor)),
            ("removing the v2 copy", None),
        ] {
            let took = phases.get(phase);
            let against = floor.map_or_else(|| "no bare equivalent".to_string(), |floor| share(took, floor));
            rows.push((format!("  phase: {phase}"), format!("{took:.1} s ({against})"), "".into()));
        }
        rows
    }

    fn backup_throughput(&self) -> Vec<Row> {
        let data = self.work.join("gib/data");
        fs::create_dir_all(data.join("member/snap")).unwrap();
        fs::create_dir_all(data.join("member/wal")).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut db = fs::File::create(data.join("member/snap/db")).unwrap();
        for i in 0..896u32 {
            chunk.iter_mut().enumerate().for_each(|(j, b)| *b = (i as usize * 31 + j * 7) as u8);
            db.write_all(&chunk).unwrap();
        }
        for w in 0..2 {
            fs::write(data.join(format!("member/wal/{w}.wal")), vec![w as u8; 64 << 20]).unwrap();
        }
        let bytes = backup::size_of(&data).unwrap() as f64;
        let policy = BackupPolicy { backup_dir: self.work.join("gib/backups"), retention: 1 };
        let (mut ours, mut cp) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let started = Instant::now();
            backup::create(&data, "bench", &policy).unwrap();
            ours.push(bytes / started.elapsed().as_secs_f64() / 1e6);
            let target = self.work.join("gib/cp");
            let _ = fs::remove_dir_all(&target);
            let started = Instant::now();
            assert!(Command::new("cp").arg("-a").arg(&data).arg(&target).status().unwrap().success());
            assert!(Command::new("sync").status().unwrap().success());
            cp.push(bytes / started.elapsed().as_secs_f64() / 1e6);
        }
        let _ = fs::remove_dir_all(self.work.join("gib"));
        let (ours, cp) = (median(ours), median(cp));
        vec![(
            format!(
                "backup of a {:.2} GiB data dir (hashed as copied, fsynced), median of 3",
                bytes / (1u64 << 30) as f64
            ),
            format!("{ours:.0} MB/s vs {cp:.0} MB/s for cp -a + sync: {:.2}×", ours / cp),
            "≥ 0.8× cp -a + sync".into(),
        )]
    }

    fn binary_size(&self) -> Row {
        let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("image/build-binary.sh"))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let path = String::from_utf8(output.stdout).unwrap();
        let size = fs::metadata(Path::new(env!("CARGO_MANIFEST_DIR")).join(path.trim())).unwrap().len();
        (
            "static release binary (+crt-static, LTO, stripped)".into(),
            format!("{:.2} MiB", size as f64 / (1u64 << 20) as f64),
            "≤ 8 MiB".into(),
        )
    }
}
