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
//!    against a bare restart of the same etcd on a second, identically seeded cluster; and 3.4.23 →
//!    3.5.30 with a member holding 256 MiB, against a bare restart plus its data (holes left out) at the
//!    rate `cp -a` + `sync` copies it on the same disk;
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

mod chain;
mod cluster;
mod etcd;
mod logs;
mod noop;
mod overhead;
mod rolling;
mod size;
mod throughput;
mod ttl;

use cluster::*;
use etcd::*;
use logs::*;

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
        // `BENCH_MIGRATOR`: another build of the migrator (an earlier commit's, for a before/after).
        let migrator = std::env::var_os("BENCH_MIGRATOR")
            .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_etcd-migrate")), PathBuf::from);
        Bench { bin, work, migrator }
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
}
