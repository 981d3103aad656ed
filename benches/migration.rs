//! The benchmark: how close a migration comes to the floor etcd itself sets, and the costs around it.
//! Run with `cargo bench` (needs the etcd releases: `image/fetch-etcd.sh`). Prints a table and writes it,
//! with the machine's CPU and the date, to bench/results.md. Medians of several runs; nothing here is
//! asserted: the numbers are for reading.
//!
//! 1. overhead ratio: a full 3.3.25 → 3.5.16 migration (two in-place steps) through the entrypoint,
//!    divided by bare etcd-3.4.23 + etcd-3.5.16 start → healthy → stop on copies of the same data;
//! 2. no-op latency: data already at target, process start to the exec of a stand-in "etcd";
//! 3. TTL reattachment rate and the entrypoint's peak RSS (VmHWM) for 100k TTL keys (BENCH_TTL_KEYS);
//! 4. verified-backup throughput of a 1 GiB data dir against `cp -a` of the same dir;
//! 5. the size of the static release binary.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use etcd_migrate::backup::{self, BackupPolicy};
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
    let measurements: [(&str, Measurement); 5] = [
        ("overhead", &|b| vec![b.overhead_ratio()]),
        ("noop", &|b| vec![b.noop_latency()]),
        ("ttl", &|b| b.ttl_reattachment()),
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
        "# etcd-migrate benchmark\n\n{} on {cpu} ({} cores), medians of {RUNS} runs unless noted.\n\n{table}\nRerun: `image/fetch-etcd.sh && cargo bench`.\n",
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

/// Starts etcd as single member `m` on `data`, serving on loopback `client` and `peer_port`.
fn spawn_etcd(binary: &Path, data: &Path, client: u16, peer_port: u16) -> std::process::Child {
    Command::new(binary)
        .args(["--name", "m", "--data-dir"])
        .arg(data)
        .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
        .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
        .arg(format!("--initial-advertise-peer-urls=http://localhost:{peer_port}"))
        .arg(format!("--initial-cluster=m=http://localhost:{peer_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Polls /health every 2 ms until etcd on `client` says it is healthy; false if etcd exits first.
fn await_health(child: &mut std::process::Child, client: u16) -> bool {
    loop {
        let healthy = TcpStream::connect(("127.0.0.1", client)).is_ok_and(|mut s| {
            let _ = s.write_all(b"GET /health HTTP/1.0\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            body.contains("\"health\":\"true\"")
        });
        if healthy {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
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
        let mut child = spawn_etcd(binary, data, client, peer_port);
        if !await_health(&mut child, client) {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap();
        return started.elapsed();
    }
    panic!("{} never became healthy on {}", binary.display(), data.display());
}

impl Bench {
    fn new() -> Bench {
        let bin = std::env::var_os("ETCD_BIN_DIR").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/etcd-migrate/etcd")
        });
        assert!(bin.join("etcd-3.3.25").exists(), "run image/fetch-etcd.sh first");
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

    /// A 3.3.25/etcd3 data dir with `keys` keys, made with the real etcd.
    fn etcd3_fixture(&self, keys: usize, peer_port: u16) -> PathBuf {
        let data = self.work.join("fixture-etcd3");
        let client = free_port();
        let mut etcd = spawn_etcd(&self.bin.join("etcd-3.3.25"), &data, client, peer_port);
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
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            copy_tree(&fixture, &data);
            let started = Instant::now();
            let output = self.migrate(&data, peer, "3.5.16", &[]).wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            ours.push(started.elapsed().as_secs_f64());
            copy_tree(&fixture, &data);
            let bare = bare_etcd(&self.bin.join("etcd-3.4.23"), &data, peer)
                + bare_etcd(&self.bin.join("etcd-3.5.16"), &data, peer);
            floor.push(bare.as_secs_f64());
        }
        let (ours, floor) = (median(ours), median(floor));
        (
            "overhead ratio, 3.3.25 → 3.5.16 (2 steps, backup included)".into(),
            format!("{:.2} ({ours:.2} s vs {floor:.2} s of bare etcd)", ours / floor),
            "≤ 1.10".into(),
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

    fn ttl_reattachment(&self) -> Vec<Row> {
        let count: usize =
            std::env::var("BENCH_TTL_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000);
        let data = self.work.join("ttl");
        let peer = free_port();
        let client = free_port();
        let mut etcd = spawn_etcd(&self.bin.join("etcd-3.3.25"), &data, client, peer);
        assert!(await_health(&mut etcd, client), "the fixture etcd starts");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let client = V2Client::new(
                Endpoint::new(&format!("http://127.0.0.1:{client}"), &TlsFiles::default()).unwrap(),
            );
            let mut writers = tokio::task::JoinSet::new();
            for w in 0..32 {
                let client = client.clone();
                writers.spawn(async move {
                    for i in (w..count).step_by(32) {
                        client.set(&format!("/registry/events/ns/e{i:07}"), "{}", Some(3600)).await.unwrap();
                    }
                });
            }
            while let Some(done) = writers.join_next().await {
                done.unwrap();
            }
        });
        etcd.kill().unwrap();
        etcd.wait().unwrap();
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
        let attached: serde_json::Value = log
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["message"] == "leases attached")
            .unwrap_or_else(|| {
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                panic!("the conversion attached no leases; its last lines, newest first: {tail:#?}")
            });
        vec![
            (
                format!("TTL reattachment rate, {count} keys (one run)"),
                format!(
                    "{} keys/s into {} lease(s)",
                    attached["rate"].as_str().unwrap_or("?").trim_end_matches("/s"),
                    attached["leases"]
                ),
                "≥ 50k keys/s".into(),
            ),
            (
                format!("peak RSS of the entrypoint, {count} TTL keys"),
                format!("{:.1} MiB", peak_kib as f64 / 1024.0),
                "≤ 20 MiB".into(),
            ),
        ]
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
        vec![(
            format!(
                "backup of a {:.2} GiB data dir (copy + fsync + read-back verify), median of 3",
                bytes / (1u64 << 30) as f64
            ),
            format!("{:.0} MB/s vs {:.0} MB/s for cp -a + sync", median(ours), median(cp)),
            "close to cp -a".into(),
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
