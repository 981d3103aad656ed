//! The migration window is closed: while real migrations run (paused with a hidden etcd up), an
//! intruder on the node with no certificate finds every TCP port any child of the migrator listens on
//! and tries each over plain HTTP and over TLS without a client certificate — the v2 keys API, the v3
//! JSON gateway (`/v3`, `/v3beta`, `/v3alpha`), `/health` — and over gRPC (without TLS, and with TLS but
//! no identity), reading and writing. It reads nothing and writes nothing, while the migrator, with the
//! run's certificate, is served; and each migration completes with exactly the keys it was given.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, TlsOptions};
use etcd_migrate::client::health;
use support::cluster::Cluster;
use support::scenarios::{
    Scenario, copy_tree, downgrade_scenario, etcd2_scenario, rollback_scenario, upgrade_scenario,
};
use support::*;

const INTRUDER_KEY: &str = "/registry/secrets/intruder/planted";

/// Every TCP port a process descended from `pid` listens on (its sockets' inodes matched against
/// `/proc/<pid>/net/tcp` and `tcp6`, the migrator's network namespace).
fn ports_children_listen_on(pid: u32) -> BTreeSet<u16> {
    let mut parents = BTreeMap::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        // `pid (comm) state ppid ...`: comm may hold spaces and parentheses, the last `)` ends it.
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
            parents.insert(child, ppid);
        }
    }
    let mut descendants = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (&child, &ppid) in &parents {
            if ppid == parent && descendants.insert(child) {
                frontier.push(child);
            }
        }
    }
    let mut inodes = BTreeSet::new();
    for child in &descendants {
        let Ok(fds) = fs::read_dir(format!("/proc/{child}/fd")) else { continue };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.insert(inode.to_string());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is fields[1] (`ADDR:PORT` in hex), st fields[3] (0A: LISTEN), inode fields[9].
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.insert(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

/// What an answer may not hold: any key of the seeded key space, as text or as the v3 gateway's base64.
fn leaks(body: &str) -> bool {
    body.contains("registry") || body.contains(&BASE64.encode("/registry")[..12])
}

/// The intruder's HTTP attempts on `port`, over plain HTTP and over TLS taking any certificate the
/// server shows and presenting none. Returns what it got that it must not have.
async fn http_attempts(port: u16) -> Vec<String> {
    let plain = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    let tls = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let all = format!(r#"{{"key":"{}","range_end":"{}"}}"#, BASE64.encode("\0"), BASE64.encode("\0"));
    let put = format!(r#"{{"key":"{}","value":"{}"}}"#, BASE64.encode(INTRUDER_KEY), BASE64.encode("x"));
    let mut got = Vec::new();
    for (scheme, client) in [("http", &plain), ("https", &tls)] {
        let base = format!("{scheme}://127.0.0.1:{port}");
        let mut requests = vec![
            client.get(format!("{base}/v2/keys/registry?recursive=true")),
            client.get(format!("{base}/v2/keys/registry/secrets/?recursive=true")),
            client.get(format!("{base}/health")),
            client.put(format!("{base}/v2/keys{INTRUDER_KEY}")).form(&[("value", "x")]),
        ];
        for prefix in ["/v3", "/v3beta", "/v3alpha"] {
            requests.push(client.post(format!("{base}{prefix}/kv/range")).body(all.clone()));
            requests.push(client.post(format!("{base}{prefix}/kv/put")).body(put.clone()));
        }
        for request in requests {
            let request = request.build().unwrap();
            let (method, url) = (request.method().clone(), request.url().clone());
            let Ok(response) = client.execute(request).await else { continue };
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if status.is_success() || leaks(&body) {
                got.push(format!("{method} {url}: {status} {body}"));
            }
        }
    }
    got
}

/// The intruder's gRPC attempts on `port`: without TLS, and with TLS trusting the run's CA (`ca`, read
/// as root could) but with no identity of its own. Returns what it got that it must not have.
async fn grpc_attempts(port: u16, ca: &[u8]) -> Vec<String> {
    let options = || {
        ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
    };
    let tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    let attempts = [
        (format!("http://127.0.0.1:{port}"), options()),
        (format!("https://127.0.0.1:{port}"), options().with_tls(tls)),
    ];
    let mut got = Vec::new();
    for (url, options) in attempts {
        let Ok(mut client) = Client::connect([&url], Some(options)).await else { continue };
        if let Ok(read) = client.get("", Some(GetOptions::new().with_all_keys())).await {
            got.push(format!("gRPC Range on {url}: {} keys", read.kvs().len()));
        }
        if client.put(INTRUDER_KEY, "x", None).await.is_ok() {
            got.push(format!("gRPC Put on {url} was accepted"));
        }
    }
    got
}

/// Everything the intruder tries on every port the paused run's children listen on; `hidden` is the
/// hidden etcd's client URL, which must be among them and serve the migrator (the run's certificate)
/// while it refuses the intruder.
fn intrude(run: &PausedRun, data: &std::path::Path, hidden: &str) -> BTreeSet<u16> {
    let ports = ports_children_listen_on(run.id());
    let hidden_port: u16 = hidden.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        ports.contains(&hidden_port),
        "the probe finds the hidden client port {hidden_port} in {ports:?}"
    );
    let ca = fs::read(run_authority(data).ca.unwrap()).unwrap();
    let served = block_on(health::check(&hidden_endpoint(hidden, data))).unwrap();
    assert!(served, "the migrator, with the run's certificate, is served at {hidden}");
    for &port in &ports {
        let got = block_on(async {
            let mut got = http_attempts(port).await;
            got.extend(grpc_attempts(port, &ca).await);
            got
        });
        assert!(got.is_empty(), "port {port} ({ports:?}) served the intruder: {got:#?}");
    }
    ports
}

/// Runs `scenario` on a copy of its template, paused at `point` while the intruder tries every port;
/// the run then completes with exactly the scenario's keys.
fn intrude_on(scenario: &Scenario, extra: &[&str], point: &str) {
    let dir = TempDir::new("intruder");
    let data = dir.join("data");
    copy_tree(&scenario.template.join("data"), &data);
    let migrator = scenario.migrator(&data).args(extra);
    let hidden = migrator.hidden_client_url.clone();
    let pause = Pause::at(point);
    let run = pause.spawn_paused(migrator);
    let ports = intrude(&run, &data, &hidden);
    assert!(ports.len() >= 2, "{}: a client and a peer port at least: {ports:?}", scenario.name);
    pause.release();
    let output = run.wait_with_output();
    assert!(output.status.success(), "{}: {}", scenario.name, stderr(&output));
    scenario.check(&data);
}

#[test]
fn an_intruder_gets_nothing_from_an_etcd2_conversion() {
    intrude_on(&etcd2_scenario("etcd2-to-3.4", "3.4.23"), &[], "etcd-3.3.25-healthy");
}

#[test]
fn an_intruder_gets_nothing_from_a_two_step_upgrade() {
    intrude_on(&upgrade_scenario(), &[], "etcd-3.4.23-healthy");
}

#[test]
fn an_intruder_gets_nothing_from_a_downgrade_by_snapshot_or_by_logical_copy() {
    let scenario = downgrade_scenario();
    // The source is read by the newest bundled 3.5.
    let source = format!("etcd-{}-healthy", newest_bundled_patch("3.5"));
    intrude_on(&scenario, &["--downgrade-method", "snapshot"], &source);
    // The copy's etcd is a new member made on an empty dir.
    intrude_on(&scenario, &["--downgrade-method", "logical"], "etcd-3.4.23-healthy");
}

#[test]
fn an_intruder_gets_nothing_from_a_rollback_to_etcd2() {
    intrude_on(&rollback_scenario(), &[], "etcd-3.3.25-healthy");
}

/// A member of a TLS cluster upgraded in place while its peers run: its hidden client port serves the
/// run's certificate alone, its peer port the cluster's (which the intruder has not either).
#[test]
fn an_intruder_gets_nothing_from_a_cluster_members_step() {
    let dir = TempDir::new("intruder-cluster");
    let certs = make_certs(dir.path());
    let cluster = Cluster::new(&dir, Some(&certs));
    let mut running = cluster.start("3.4.23");
    let seeded = cluster.seed();
    cluster.write_version_files("3.4.23");
    running[0].stop();
    let member = &cluster.members[0];
    let migrator = cluster.migrator(member, "3.5.16").args(&["--migrate-only"]);
    let hidden = migrator.hidden_client_url.clone();
    let pause = Pause::at("etcd-3.5.16-healthy");
    let run = pause.spawn_paused(migrator);
    let ports = intrude(&run, &member.data, &hidden);
    let peer_port: u16 = member.peer.rsplit(':').next().unwrap().parse().unwrap();
    assert!(ports.contains(&peer_port), "the member's peer port {peer_port} is probed too: {ports:?}");
    pause.release();
    let output = run.wait_with_output();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(version_txt(&member.data), "3.5.16/etcd3");
    running[0] = cluster.start_bare(member, "3.5.16");
    cluster.wait_all_healthy();
    cluster.check_seeded(&seeded);
}

/// The probe itself: an etcd without TLS, started by this test, is found among this process's
/// children and gives the intruder its keys and takes its writes, so an empty finding above is the
/// migrator's doing, not a blind probe's.
#[test]
fn the_probe_finds_and_reads_an_open_etcd() {
    let dir = TempDir::new("intruder-open");
    let etcd = TestEtcd::start("3.4.23", &dir.join("data"));
    etcd.put("/registry/secrets/ns/s1", "secret");
    let port: u16 = etcd.client_url.rsplit(':').next().unwrap().parse().unwrap();
    let ports = ports_children_listen_on(std::process::id());
    assert!(ports.contains(&port), "{port} in {ports:?}");
    let got = block_on(async {
        let mut got = http_attempts(port).await;
        got.extend(grpc_attempts(port, b"").await);
        got
    });
    assert!(got.iter().any(|g| g.contains("/v3/kv/range") && g.contains("200")), "{got:#?}");
    assert!(got.iter().any(|g| g.starts_with("gRPC Range") && !g.ends_with(" 0 keys")), "{got:#?}");
    assert!(got.iter().any(|g| g.starts_with("gRPC Put")), "{got:#?}");
}
