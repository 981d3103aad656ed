//! The no-op latency: data already at the target, start → exec of a stand-in etcd.

use super::*;

impl Bench {
    pub fn noop_latency(&self) -> Row {
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
}
