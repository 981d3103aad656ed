//! A three-member cluster on loopback (plain or with TLS) run as a control plane runs it: each member's
//! pod is the migrator in exec mode with the cluster's `--initial-cluster`, replaced one member at a
//! time; a writer that keeps writing through a roll; and the checks that nothing it was told was written,
//! nor anything seeded before, is lost on any member.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder, SortTarget, WatchOptions,
};
use etcd_migrate::client::v3::{LATEST, V3Client, connect_options, versions};
use etcd_migrate::client::{ClientError, Endpoint, TlsFiles, health};
use etcd_migrate::etcd_process::{EtcdProcess, EtcdSpec};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::netns::Network;
use super::{Certs, KillOnDrop, Migrator, TempDir, block_on, etcd, etcdctl_binary, free_port, start_etcd};

/// How long a member, or the whole cluster, may take to get where a test waits for it, on a busy 2-core
/// machine. Only a deadline: every wait polls for its condition.
pub const SETTLE: Duration = Duration::from_secs(120);

/// How long a stopped member's etcd may take to exit after SIGTERM (a leader hands over first).
const STOP_GRACE: Duration = Duration::from_secs(30);

pub struct Member {
    pub name: String,
    pub data: PathBuf,
    pub client: String,
    pub peer: String,
    /// The network namespace the member runs in (its own host), if not the test's.
    pub netns: Option<String>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub initial_cluster: String,
    /// The TLS flags every etcd of the cluster takes (none without certificates).
    pub tls: Vec<String>,
    tls_files: TlsFiles,
    scheme: &'static str,
    /// Where each pod's output goes, one file per run.
    logs: PathBuf,
    runs: AtomicUsize,
}

/// What runs as a member now.
pub enum Running {
    /// An etcd the test started itself.
    Bare(Box<EtcdProcess>),
    /// The member's pod: the migrator in exec mode, then the etcd it execs.
    Pod(Pod),
    Stopped,
}

impl Running {
    /// Stops the member's etcd (SIGTERM, then SIGKILL after a grace) and waits until it is gone.
    pub fn stop(&mut self) {
        match std::mem::replace(self, Running::Stopped) {
            Running::Bare(etcd) => {
                block_on(etcd.stop(STOP_GRACE)).unwrap();
            }
            Running::Pod(pod) => pod.stop(),
            Running::Stopped => {}
        }
    }
}

/// A member's pod: the migrator run in exec mode, its output (and the exec'd etcd's) in a log file.
pub struct Pod {
    process: KillOnDrop,
    log: PathBuf,
}

impl Pod {
    /// SIGTERM, as the kubelet stops a pod, then SIGKILL if it has not exited within a grace.
    pub fn stop(mut self) {
        let pid = Pid::from_raw(self.process.0.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while self.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        // KillOnDrop kills it if it has not exited by now, and reaps it.
    }

    /// How the pod ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.0.try_wait().unwrap()
    }

    /// What the migrator and the etcd it exec'd have written so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Cluster {
    /// Three members on loopback.
    pub fn new(dir: &TempDir, certs: Option<&Certs>) -> Cluster {
        Cluster::of_size(dir, 3, certs)
    }

    /// `size` members on loopback, on free ports.
    pub fn of_size(dir: &TempDir, size: usize, certs: Option<&Certs>) -> Cluster {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                data: dir.join(&format!("m{i}/data")),
                client: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer: format!("{scheme}://127.0.0.1:{}", free_port()),
                netns: None,
            })
            .collect();
        Cluster::of_members(dir, members, certs)
    }

    /// One member on each host of `network`, each host its own network namespace: etcd's own ports
    /// on the host's address, plain HTTP.
    pub fn on_hosts(dir: &TempDir, network: &Network) -> Cluster {
        let members = (0..network.hosts())
            .map(|i| Member {
                name: format!("m{i}"),
                data: dir.join(&format!("m{i}/data")),
                client: format!("http://{}:2379", network.address(i)),
                peer: format!("http://{}:2380", network.address(i)),
                netns: Some(network.host(i)),
            })
            .collect();
        Cluster::of_members(dir, members, None)
    }

    fn of_members(dir: &TempDir, members: Vec<Member>, certs: Option<&Certs>) -> Cluster {
        let scheme = if certs.is_some() { "https" } else { "http" };
        let initial_cluster =
            members.iter().map(|m| format!("{}={}", m.name, m.peer)).collect::<Vec<_>>().join(",");
        let tls = certs.map_or(Vec::new(), |c| {
            let (ca, cert, key) = (c.ca.display(), c.cert.display(), c.key.display());
            vec![
                format!("--cert-file={cert}"),
                format!("--key-file={key}"),
                format!("--trusted-ca-file={ca}"),
                "--client-cert-auth".into(),
                format!("--peer-cert-file={cert}"),
                format!("--peer-key-file={key}"),
                format!("--peer-trusted-ca-file={ca}"),
                "--peer-client-cert-auth".into(),
            ]
        });
        let tls_files = certs.map_or(TlsFiles::default(), |c| TlsFiles {
            ca: Some(c.ca.clone()),
            cert: Some(c.cert.clone()),
            key: Some(c.key.clone()),
        });
        let logs = dir.join("pod-logs");
        fs::create_dir_all(&logs).unwrap();
        Cluster { members, initial_cluster, tls, tls_files, scheme, logs, runs: AtomicUsize::new(0) }
    }

    /// A client endpoint of this cluster at `url`, with the cluster's client certificate.
    pub fn endpoint(&self, url: &str) -> Endpoint {
        Endpoint::new(url, &self.tls_files).unwrap()
    }

    /// Every member's client endpoint, in member order.
    pub fn client_endpoints(&self) -> Vec<Endpoint> {
        self.members.iter().map(|m| self.endpoint(&m.client)).collect()
    }

    pub fn spec(&self, member: &Member, version: &str) -> EtcdSpec {
        EtcdSpec {
            binary: etcd(version),
            version: version.parse().unwrap(),
            data_dir: member.data.clone(),
            name: member.name.clone(),
            listen_client_urls: member.client.clone(),
            listen_peer_urls: member.peer.clone(),
            initial_advertise_peer_urls: member.peer.clone(),
            initial_cluster: self.initial_cluster.clone(),
            initial_cluster_state: None,
            enable_v2: false,
            extra_args: self.tls.iter().map(Into::into).collect(),
            lone_member: false,
            client_tls: self.tls_files.clone(),
        }
    }

    /// Starts etcd `version` as `member`, outside any pod, without waiting for it to be healthy (it may
    /// need its peers for that).
    pub fn start_bare(&self, member: &Member, version: &str) -> Running {
        Running::Bare(Box::new(block_on(start_etcd(self.spec(member, version)))))
    }

    /// Starts every member with `version` and waits until each is healthy.
    pub fn start(&self, version: &str) -> Vec<Running> {
        let running: Vec<Running> = self.members.iter().map(|m| self.start_bare(m, version)).collect();
        self.wait_all_healthy();
        running
    }

    /// etcdctl against `endpoint` with this cluster's client certificate.
    pub fn etcdctl(&self, version: &str, endpoint: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new("timeout");
        command
            .arg("20")
            .arg(etcdctl_binary(version))
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint]);
        for arg in &self.tls {
            for (server_flag, client_flag) in
                [("--cert-file=", "--cert="), ("--key-file=", "--key="), ("--trusted-ca-file=", "--cacert=")]
            {
                if let Some(path) = arg.strip_prefix(server_flag) {
                    command.arg(format!("{client_flag}{path}"));
                }
            }
        }
        let output = command.args(args).output().unwrap();
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.client.clone()).collect::<Vec<_>>().join(",")
    }

    fn healthy(&self, member: &Member) -> bool {
        block_on(health::check(&self.endpoint(&member.client))).unwrap_or(false)
    }

    /// Waits until every member answers healthy.
    pub fn wait_all_healthy(&self) {
        let deadline = Instant::now() + SETTLE;
        while !self.members.iter().all(|m| self.healthy(m)) {
            let sick: Vec<&str> =
                self.members.iter().filter(|m| !self.healthy(m)).map(|m| m.name.as_str()).collect();
            assert!(Instant::now() < deadline, "members {sick:?} never became healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The migrator for `member`, with the member's real identity, TLS and a hidden client URL.
    pub fn migrator(&self, member: &Member, target: &str) -> Migrator {
        let hidden_port = free_port();
        let hidden = format!("{}://127.0.0.1:{hidden_port}", self.scheme);
        let mut migrator = Migrator::new(&member.data, &member.peer);
        // Served over TLS by the run's authority, whatever the scheme asked.
        migrator.hidden_client_url = format!("https://127.0.0.1:{hidden_port}");
        let migrator = match &member.netns {
            Some(host) => migrator.in_netns(host),
            None => migrator,
        };
        migrator.args(&[
            "--target-version",
            target,
            "--name",
            &member.name,
            "--listen-client-urls",
            &hidden,
            "--listen-peer-urls",
            &member.peer,
            "--initial-advertise-peer-urls",
            &member.peer,
            "--initial-cluster",
            &self.initial_cluster,
            "--etcd-server-extra-args",
            &self.tls.join(" "),
            "--health-timeout",
            "180s",
        ])
    }

    /// What the pod gives the etcd the migrator execs: `--`, then the member's own flags.
    pub fn final_etcd_args(&self, member: &Member) -> Vec<String> {
        let mut args = vec![
            "--".to_string(),
            format!("--name={}", member.name),
            format!("--listen-client-urls={}", member.client),
            format!("--advertise-client-urls={}", member.client),
            format!("--listen-peer-urls={}", member.peer),
            format!("--initial-advertise-peer-urls={}", member.peer),
            format!("--initial-cluster={}", self.initial_cluster),
        ];
        args.extend(self.tls.iter().cloned());
        args
    }

    /// version.txt of every member says `version`/etcd3, as a fresh etcd leaves none.
    pub fn write_version_files(&self, version: &str) {
        for member in &self.members {
            fs::write(member.data.join("version.txt"), format!("{version}/etcd3")).unwrap();
        }
    }

    /// Starts member `i`'s pod with `target`: the migrator migrates, then execs the target etcd.
    pub fn run_pod(&self, i: usize, target: &str) -> Pod {
        let member = &self.members[i];
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        let log = self.logs.join(format!("{run:02}-{}-{target}.log", member.name));
        let mut migrator = self.migrator(member, target);
        migrator.command.args(self.final_etcd_args(member)).stderr(File::create(&log).unwrap());
        migrator.command.stdout(Stdio::null());
        Pod { process: KillOnDrop(migrator.command.spawn().unwrap()), log }
    }

    /// Waits until member `i`, run by `pod`, is healthy and its version.txt says `target`/etcd3; fails at
    /// once, with the pod's log, if the pod ends.
    pub fn wait_ready(&self, i: usize, pod: &mut Pod, target: &str) {
        let member = &self.members[i];
        let state = format!("{target}/etcd3");
        let deadline = Instant::now() + SETTLE + SETTLE;
        loop {
            if let Some(status) = pod.exited() {
                panic!("{}'s pod ended ({status}) on its way to {state}:\n{}", member.name, pod.log());
            }
            let said = fs::read_to_string(member.data.join("version.txt")).unwrap_or_default();
            if said.trim() == state && self.healthy(member) {
                return;
            }
            assert!(Instant::now() < deadline, "{} never served {state}:\n{}", member.name, pod.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Member `i`'s pod with `target`, once that member is ready.
    pub fn pod_ready(&self, i: usize, target: &str) -> Running {
        let mut pod = self.run_pod(i, target);
        self.wait_ready(i, &mut pod, target);
        Running::Pod(pod)
    }

    /// Replaces what runs as member `i` with its pod at `target`, as a node's roll does: the old etcd
    /// stopped, the new pod started, the member healthy and at `target` again.
    pub fn replace(&self, running: &mut Running, i: usize, target: &str) {
        running.stop();
        *running = self.pod_ready(i, target);
    }

    /// One round: every member replaced by its pod at `target`, one member at a time, then the cluster
    /// runs at `target`'s minor.
    pub fn roll(&self, running: &mut [Running], target: &str) {
        for (i, member) in running.iter_mut().enumerate() {
            self.replace(member, i, target);
        }
        self.wait_cluster_version(&cluster_version(target));
    }

    /// Waits until every member says the cluster runs at `expected` (`3.5.0`).
    pub fn wait_cluster_version(&self, expected: &str) {
        let deadline = Instant::now() + SETTLE;
        for member in &self.members {
            loop {
                let cluster = block_on(versions(&self.endpoint(&member.client))).map(|v| v.cluster);
                if cluster.as_ref().is_ok_and(|c| c == expected) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} never ran the cluster at {expected}: {cluster:?}",
                    member.name
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }

    /// Every key `member` serves (a linearizable read through its own endpoint) with its value and lease.
    pub fn keys_on(&self, member: &Member) -> BTreeMap<String, (Vec<u8>, i64)> {
        block_on(async {
            let client = V3Client::connect(self.endpoint(&member.client)).await.unwrap();
            let mut all = BTreeMap::new();
            client
                .for_each_page(b"\0", &[0], LATEST, async |kvs| {
                    for kv in kvs {
                        all.insert(String::from_utf8(kv.key).unwrap(), (kv.value, kv.lease));
                    }
                    Ok::<(), ClientError>(())
                })
                .await
                .unwrap();
            all
        })
    }

    /// Writes the seed data through member 0: [`super::sample_keys`], and a few keys on one long lease.
    pub fn seed(&self) -> Seeded {
        let endpoint = self.endpoint(&self.members[0].client);
        block_on(async {
            let mut client = super::grpc(&endpoint).await;
            let mut keys = super::sample_keys();
            for (key, value) in &keys {
                client.put(key.as_str(), value.as_slice(), None).await.unwrap();
            }
            let lease = client.lease_grant(SEED_LEASE_TTL, None).await.unwrap().id();
            let mut leased = Vec::new();
            for i in 0..5 {
                let key = format!("/registry/masterleases/10.0.0.{i}");
                let value = format!("10.0.0.{i}").into_bytes();
                client
                    .put(key.as_str(), value.as_slice(), Some(PutOptions::new().with_lease(lease)))
                    .await
                    .unwrap();
                keys.insert(key.clone(), value);
                leased.push(key);
            }
            Seeded { keys, leased, lease }
        })
    }

    /// Every member holds the seeded keys with their values, no other key outside the writer's, and the
    /// leased ones still on their one lease, which is alive and holds exactly them.
    pub fn check_seeded(&self, seeded: &Seeded) {
        for member in &self.members {
            let keys = self.keys_on(member);
            let values: BTreeMap<String, Vec<u8>> = keys
                .iter()
                .filter(|(key, _)| !key.starts_with(ACKED))
                .map(|(key, (value, _))| (key.clone(), value.clone()))
                .collect();
            let differing: Vec<&String> = values
                .keys()
                .chain(seeded.keys.keys())
                .filter(|key| values.get(*key) != seeded.keys.get(*key))
                .collect();
            assert!(
                differing.is_empty(),
                "{}: seeded keys changed, added or lost: {differing:?}",
                member.name
            );
            for key in &seeded.leased {
                assert_eq!(keys[key].1, seeded.lease, "{} keeps {key} on the seeded lease", member.name);
            }
            let info = block_on(super::lease_info(&self.endpoint(&member.client), seeded.lease));
            let mut on_lease: Vec<String> =
                info.keys().iter().map(|k| String::from_utf8(k.to_vec()).unwrap()).collect();
            on_lease.sort();
            assert_eq!(on_lease, seeded.leased, "{}: the lease holds the seeded keys", member.name);
            assert!(info.ttl() > 0, "{}: the seeded lease is alive ({}s left)", member.name, info.ttl());
        }
    }

    /// Every acknowledged put is on every member with its value.
    pub fn check_acked(&self, acked: &BTreeMap<String, String>) {
        assert!(!acked.is_empty(), "the writer had puts acknowledged");
        for member in &self.members {
            let keys = self.keys_on(member);
            let lost: Vec<&String> = acked
                .iter()
                .filter(|(k, v)| keys.get(*k).map(|kv| kv.0.as_slice()) != Some(v.as_bytes()))
                .map(|(k, _)| k)
                .collect();
            assert!(
                lost.is_empty(),
                "{} lacks {} of {} acknowledged puts, first {:?}",
                member.name,
                lost.len(),
                acked.len(),
                lost.first()
            );
        }
    }
}

/// The cluster version etcd `target` runs a cluster of its own release at: `3.5.16` → `3.5.0`.
pub fn cluster_version(target: &str) -> String {
    let mut parts = target.split('.');
    format!("{}.{}.0", parts.next().unwrap(), parts.next().unwrap())
}

/// The lease the seeded leased keys share: long enough to outlive any test.
const SEED_LEASE_TTL: i64 = 3600;

/// The prefix of the writer's keys.
pub const ACKED: &str = "/registry/acked/";

/// What [`Cluster::seed`] wrote: every key with its value, and the keys on the one lease.
pub struct Seeded {
    pub keys: BTreeMap<String, Vec<u8>>,
    /// Sorted.
    pub leased: Vec<String>,
    pub lease: i64,
}

/// Puts `/registry/acked/<n>` without pause, one at a time, to whichever member answers (each client
/// URL in turn), and notes each put etcd acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    thread: JoinHandle<BTreeMap<String, String>>,
}

/// How long one put may take before the writer tries the next member (it is then not acknowledged).
const PUT_TIMEOUT: Duration = Duration::from_secs(5);

impl Writer {
    pub fn start(endpoints: Vec<Endpoint>) -> Writer {
        let (stop, count) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (stopped, counted) = (stop.clone(), count.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(write_until(&endpoints, &stopped, &counted))
        });
        Writer { stop, count, thread }
    }

    /// How many puts were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops writing; returns every acknowledged key with its value.
    pub fn stop(self) -> BTreeMap<String, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

async fn write_until(
    endpoints: &[Endpoint],
    stop: &AtomicBool,
    count: &AtomicUsize,
) -> BTreeMap<String, String> {
    let mut clients: Vec<Option<Client>> = endpoints.iter().map(|_| None).collect();
    let mut acked = BTreeMap::new();
    let (mut n, mut at) = (0u64, 0);
    while !stop.load(Ordering::Relaxed) {
        let (key, value) = (format!("{ACKED}{n:08}"), format!("value-{n}-via-m{at}"));
        n += 1;
        let put = async {
            if clients[at].is_none() {
                let options = connect_options(&endpoints[at]).unwrap().with_timeout(PUT_TIMEOUT);
                clients[at] = Some(Client::connect([endpoints[at].base_url()], Some(options)).await?);
            }
            clients[at].as_mut().unwrap().put(key.as_str(), value.as_str(), None).await
        };
        match tokio::time::timeout(PUT_TIMEOUT, put).await {
            Ok(Ok(_)) => {
                acked.insert(key, value);
                count.store(acked.len(), Ordering::Relaxed);
            }
            _ => {
                clients[at] = None;
                at = (at + 1) % endpoints.len();
                // A member that refuses at once must not turn this into a busy loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    acked
}

/// What a [`Watcher`] received: each put of the writer's keys, in the order received.
pub struct Watched {
    /// (revision, key, value)
    pub puts: Vec<(i64, String, String)>,
    /// How many times its stream broke and it resumed on another member.
    pub resumed: usize,
}

/// Watches the writer's keys from `from_revision` on, as a Kubernetes API server's watch cache does:
/// whenever its stream breaks (its member stopped, or the watch was cancelled), it resumes on the next
/// member from the last revision it received + 1. Plain HTTP only.
pub struct Watcher {
    /// The revision it stops at once it has received it; `i64::MAX` while it runs.
    until: Arc<AtomicI64>,
    thread: JoinHandle<Watched>,
}

/// How long a watcher waits on a quiet stream before looking whether it may stop.
const WATCH_POLL: Duration = Duration::from_millis(500);

impl Watcher {
    pub fn start(endpoints: Vec<Endpoint>, from_revision: i64) -> Watcher {
        let until = Arc::new(AtomicI64::new(i64::MAX));
        let stop_at = until.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(watch_until(&endpoints, from_revision, &stop_at))
        });
        Watcher { until, thread }
    }

    /// Waits until it has received every put up to `revision` (the last the writer's keys got), and
    /// returns what it received.
    pub fn stop_at(self, revision: i64) -> Watched {
        self.until.store(revision, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

async fn watch_until(endpoints: &[Endpoint], from_revision: i64, until: &AtomicI64) -> Watched {
    let mut watched = Watched { puts: Vec::new(), resumed: 0 };
    let mut next = from_revision;
    let mut at = 0;
    let deadline = Instant::now() + SETTLE * 30;
    loop {
        assert!(Instant::now() < deadline, "the watcher never caught up (next revision {next})");
        if next > until.load(Ordering::Relaxed) {
            return watched;
        }
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
        let opened = async {
            let mut client = Client::connect([endpoints[at].base_url()], Some(options)).await?;
            let watch = WatchOptions::new().with_prefix().with_start_revision(next);
            client.watch(ACKED, Some(watch)).await
        };
        if let Ok(Ok(mut stream)) = tokio::time::timeout(PUT_TIMEOUT, opened).await {
            loop {
                let message = match tokio::time::timeout(WATCH_POLL, stream.message()).await {
                    Err(_quiet) if next > until.load(Ordering::Relaxed) => return watched,
                    Err(_quiet) => continue,
                    Ok(message) => message,
                };
                let Ok(Some(response)) = message else { break };
                assert_eq!(response.compact_revision(), 0, "no revision the watcher needed was compacted");
                for event in response.events().iter().filter(|e| e.event_type() == EventType::Put) {
                    let kv = event.kv().unwrap();
                    let (key, value) = (kv.key_str().unwrap(), kv.value_str().unwrap());
                    watched.puts.push((kv.mod_revision(), key.into(), value.into()));
                    next = kv.mod_revision() + 1;
                }
                if response.canceled() {
                    break;
                }
            }
        }
        watched.resumed += 1;
        at = (at + 1) % endpoints.len();
        // A member that refuses at once must not turn this into a busy loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The newest revision of the writer's keys on the member at `endpoint` (they are only ever put once).
pub fn last_acked_revision(endpoint: &Endpoint) -> i64 {
    block_on(async {
        let options =
            GetOptions::new().with_prefix().with_sort(SortTarget::Mod, SortOrder::Descend).with_limit(1);
        let response = super::grpc(endpoint).await.get(ACKED, Some(options)).await.unwrap();
        response.kvs().first().map_or(0, |kv| kv.mod_revision())
    })
}

/// The watcher received every acknowledged put exactly once with its value, every put in strictly
/// increasing revisions, and no key twice.
pub fn check_watched(watched: &Watched, acked: &BTreeMap<String, String>) {
    for pair in watched.puts.windows(2) {
        assert!(pair[0].0 < pair[1].0, "revisions strictly increase: {:?} then {:?}", pair[0], pair[1]);
    }
    let mut seen = BTreeMap::new();
    for (revision, key, value) in &watched.puts {
        assert!(seen.insert(key, value).is_none(), "{key} received twice (again at revision {revision})");
    }
    let missed: Vec<&String> = acked.iter().filter(|(k, v)| seen.get(k) != Some(v)).map(|(k, _)| k).collect();
    assert!(
        missed.is_empty(),
        "the watcher missed {} of {} acknowledged puts, first {:?}",
        missed.len(),
        acked.len(),
        missed.first()
    );
}
