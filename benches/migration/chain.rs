//! The whole lineage, 2.2.1/etcd2 → 3.7.1/etcd3, against one bare start of each release.

use super::*;

impl Bench {
    /// Data written by etcd 2.2.1 through its v2 API: 200 objects and 100 events with a 1 h TTL.
    pub fn etcd2_lineage_fixture(&self, peer_port: u16) -> PathBuf {
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

    pub fn lineage_chain(&self) -> Row {
        const RELEASES: [&str; 9] =
            ["2.3.7", "3.0.17", "3.1.20", "3.2.32", "3.3.25", "3.4.23", "3.5.33", "3.6.14", "3.7.1"];
        const CHAIN_RUNS: usize = 3;
        let what = format!(
            "the lineage, 2.2.1/etcd2 → 3.7.1/etcd3 (11 steps, 300 keys, backups included; median of {CHAIN_RUNS})"
        );
        let needed: Vec<&str> = ["2.2.1"].iter().chain(&RELEASES).copied().collect();
        if let Some(not_run) = self.not_run(&needed) {
            return (what, not_run, "≤ 1.3".into());
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
            "≤ 1.3".into(),
        )
    }
}
