//! An etcd2 → etcd3 conversion of TTL keys, phase by phase against etcd's own time.

use super::*;

/// What etcd itself takes, over plain gRPC, on the converted data: seconds to read every key with its
/// value in pages of 10k, and keys per second attached to one lease by guarded `ignore_value` puts in
/// transactions of 1024, 4 in flight (the keys and revisions read beforehand, untimed).
pub async fn bare_grpc(url: &str) -> (f64, f64) {
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

impl Bench {
    /// An etcd2 → etcd3 conversion of `BENCH_TTL_KEYS` TTL keys (100k by default) with 3.3.25, phase by
    /// phase from the migrator's JSON log, each against what etcd itself takes for that work on the same
    /// data: a bare start → healthy → stop on the v2 data and one on the converted data, a bare v2
    /// listing, a bare gRPC read of every key, and a bare gRPC attach loop (the ceiling of the
    /// reattachment).
    pub fn conversion(&self) -> Vec<Row> {
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
}
