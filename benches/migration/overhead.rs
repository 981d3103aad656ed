//! The overhead ratio: a full 3.3.25 → 3.5.16 migration against bare etcd on the same data.

use super::*;

impl Bench {
    /// A 3.3.25/etcd3 data dir with `keys` keys, made with the real etcd.
    pub fn etcd3_fixture(&self, keys: usize, peer_port: u16) -> PathBuf {
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

    pub fn overhead_ratio(&self) -> Row {
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
}
