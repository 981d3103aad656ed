//! Running a bundled etcd on the hidden ports: start it with a clean environment, wait until it is
//! healthy, stop it. The process never outlives us: it gets `PR_SET_PDEATHSIG`, and dropping an
//! `EtcdProcess` that was not stopped stops it (SIGTERM, then SIGKILL).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::client::{ClientError, Endpoint, TlsFiles, health, v3};
use crate::durable;
use crate::etcd_flags::{self, flag_arg};
use crate::release;
use crate::version::Version;

/// How often health is polled: etcd becomes healthy about a second after start, so polling fast is
/// what keeps a migration close to the time etcd itself needs.
const HEALTH_POLL: Duration = Duration::from_millis(10);
/// One health request's limit: a hung request must not eat the wait for the next one.
const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const LOG_LINES_KEPT: usize = 50;
/// How long an exited etcd's last output may take to drain from its pipes into the log.
const LOG_DRAIN: Duration = Duration::from_secs(1);
/// The variable etcd requires, naming the architecture, on one it does not support.
const UNSUPPORTED_ARCH: &str = "ETCD_UNSUPPORTED_ARCH";
/// This machine's architecture as Go names it (`GOARCH`), where some etcd release refuses to start
/// without `ETCD_UNSUPPORTED_ARCH` naming it: arm64 and s390x before 3.5, 32-bit arm in every release.
/// amd64 and ppc64le are supported by every release.
const UNSUPPORTED_GOARCH: Option<&str> = if cfg!(target_arch = "aarch64") {
    Some("arm64")
} else if cfg!(target_arch = "arm") {
    Some("arm")
} else if cfg!(target_arch = "s390x") {
    Some("s390x")
} else {
    None
};
/// How long a dropped (never stopped) etcd gets between SIGTERM and SIGKILL.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// How to run one etcd.
#[derive(Debug, Clone)]
pub struct EtcdSpec {
    pub binary: PathBuf,
    /// The release `binary` is: it decides the flags etcd gets beyond these.
    pub version: Version,
    pub data_dir: PathBuf,
    pub name: String,
    /// Also advertised: the hidden etcd is only reached through it.
    pub listen_client_urls: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    /// `None`: etcd's default (`new`).
    pub initial_cluster_state: Option<String>,
    /// Pass `--enable-v2=true`: only releases with the flag accept it (see `release::Capabilities`).
    pub enable_v2: bool,
    /// Extra flags: the TLS that secures it (`run_ca`), the operator's others (`ETCD_CREDS`).
    pub extra_args: Vec<OsString>,
    /// A member with no peers: it elects itself as soon as etcd's timing allows (see [`LONE_MEMBER_TIMING`]).
    pub lone_member: bool,
    /// What its clients present to it and trust it by.
    pub client_tls: TlsFiles,
}

/// The election timing of a hidden etcd that is a lone member: a 10 ms heartbeat and a 50 ms election
/// timeout, the shortest etcd accepts (an election timeout of at least 5 heartbeats, from 2.x to 3.x).
/// With etcd's defaults (100 ms, 1 s), a lone member restarted on its data waits out a randomized 1–2 s
/// before it elects itself; with these, 50–100 ms. A member without peers has nobody to lose an election
/// to, so a busy machine's late ticks cannot unseat it. A cluster member keeps its cluster's timing (the
/// operator's flags), or its peers would see elections it starts too soon.
const LONE_MEMBER_TIMING: [&str; 2] = ["--heartbeat-interval=10", "--election-timeout=50"];

impl EtcdSpec {
    pub fn args(&self) -> Vec<OsString> {
        let mut args = vec![
            flag_arg("name", self.name.as_ref()),
            flag_arg("data-dir", self.data_dir.as_os_str()),
            flag_arg("listen-client-urls", self.listen_client_urls.as_ref()),
            flag_arg("advertise-client-urls", self.listen_client_urls.as_ref()),
            flag_arg("listen-peer-urls", self.listen_peer_urls.as_ref()),
            flag_arg("initial-advertise-peer-urls", self.initial_advertise_peer_urls.as_ref()),
            flag_arg("initial-cluster", self.initial_cluster.as_ref()),
        ];
        if let Some(state) = &self.initial_cluster_state {
            args.push(flag_arg("initial-cluster-state", state.as_ref()));
        }
        if self.enable_v2 {
            args.push("--enable-v2=true".into());
        }
        if release::capabilities(self.version).max_txn_ops_flag {
            args.push(format!("--max-txn-ops={}", v3::RAISED_MAX_TXN_OPS).into());
        }
        args.extend(self.election_timing());
        args.extend(self.extra_args.iter().cloned());
        args
    }

    /// [`LONE_MEMBER_TIMING`] for a lone member, unless the operator's flags set etcd's timing.
    fn election_timing(&self) -> Vec<OsString> {
        let operator_sets_timing = etcd_flags::read(&self.extra_args)
            .iter()
            .any(|flag| flag.name == "heartbeat-interval" || flag.name == "election-timeout");
        if !self.lone_member || operator_sets_timing {
            return Vec::new();
        }
        LONE_MEMBER_TIMING.iter().map(OsString::from).collect()
    }

    /// The first client URL: the one health checks and clients use.
    pub fn client_url(&self) -> &str {
        self.listen_client_urls.split(',').next().unwrap_or_default().trim()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot start {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error(
        "port {port} ({url}) is in use: a leftover etcd from a killed run may hold it; stop it (or free the port) and retry"
    )]
    PortInUse { port: u16, url: String },
    #[error("etcd {binary} exited with {status}; its last lines:\n{}", .last_lines.join("\n"))]
    Exited { binary: PathBuf, status: ExitStatus, last_lines: Vec<String> },
    #[error("etcd {binary} was not healthy after {timeout:?}; its last lines:\n{}", .last_lines.join("\n"))]
    Unhealthy { binary: PathBuf, timeout: Duration, last_lines: Vec<String> },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("waiting for etcd {binary}: {source}")]
    Wait { binary: PathBuf, source: std::io::Error },
}

/// A running etcd.
pub struct EtcdProcess {
    spec: EtcdSpec,
    child: Option<Child>,
    endpoint: Endpoint,
    log: Arc<Mutex<VecDeque<String>>>,
    log_readers: Vec<JoinHandle<()>>,
}

impl EtcdProcess {
    /// Starts etcd. The environment is ours minus every `ETCD_*` variable: etcd 3.4 and later refuse to
    /// start when an option comes both as a flag and from the environment, and manifests set several.
    /// `ETCD_UNSUPPORTED_ARCH` stays (it has no flag), and is set when unset on an architecture some
    /// etcd release refuses to start on without it ([`UNSUPPORTED_GOARCH`]).
    pub async fn start(spec: EtcdSpec) -> Result<EtcdProcess, EtcdError> {
        for url in spec.listen_client_urls.split(',').chain(spec.listen_peer_urls.split(',')) {
            ensure_port_free(url.trim())?;
        }
        let endpoint = Endpoint::new(spec.client_url(), &spec.client_tls)?;
        let mut command = Command::new(&spec.binary);
        command
            .args(spec.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") && key != UNSUPPORTED_ARCH {
                command.env_remove(key);
            }
        }
        if let Some(goarch) = UNSUPPORTED_GOARCH
            && std::env::var_os(UNSUPPORTED_ARCH).is_none()
        {
            command.env(UNSUPPORTED_ARCH, goarch);
        }
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Killed between fork and prctl: the signal will never come, so do not start etcd.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("the migrator died while starting etcd"));
                }
                Ok(())
            });
        }
        durable::owner_only_files(&mut command);
        let mut child =
            command.spawn().map_err(|source| EtcdError::Spawn { binary: spec.binary.clone(), source })?;
        let log = Arc::new(Mutex::new(VecDeque::with_capacity(LOG_LINES_KEPT)));
        let mut log_readers = Vec::new();
        if let Some(stdout) = child.stdout.take() {
            log_readers.push(tokio::spawn(keep_lines(stdout, Arc::clone(&log))));
        }
        if let Some(stderr) = child.stderr.take() {
            log_readers.push(tokio::spawn(keep_lines(stderr, Arc::clone(&log))));
        }
        debug!(binary = %spec.binary.display(), pid = child.id(), "etcd started");
        Ok(EtcdProcess { spec, child: Some(child), endpoint, log, log_readers })
    }

    /// Polls `/health` until etcd says it is healthy. Fails at once if etcd exits, or at `timeout`.
    /// Reads only: a health check that wrote a key would change the data it is about to migrate.
    pub async fn wait_healthy(&mut self, timeout: Duration) -> Result<(), EtcdError> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("a running etcd has a child");
            if let Some(status) = child.try_wait().map_err(|source| self.wait_error(source))? {
                return Err(EtcdError::Exited {
                    binary: self.spec.binary.clone(),
                    status,
                    last_lines: self.final_log_lines().await,
                });
            }
            let request_timeout =
                HEALTH_REQUEST_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
            if let Ok(Ok(true)) = tokio::time::timeout(request_timeout, health::check(&self.endpoint)).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(EtcdError::Unhealthy {
                    binary: self.spec.binary.clone(),
                    timeout,
                    last_lines: self.last_log_lines(),
                });
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn spec(&self) -> &EtcdSpec {
        &self.spec
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap_or_default()
    }

    pub fn last_log_lines(&self) -> Vec<String> {
        self.log.lock().map(|lines| lines.iter().cloned().collect()).unwrap_or_default()
    }

    /// Stops etcd: SIGTERM, then SIGKILL after `grace`; the child is always reaped. An etcd that exits
    /// otherwise than cleanly (see [`is_clean_stop`]) or has to be killed is logged, not an error: it
    /// is stopped either way, and what it wrote is checked by whoever reads the data next. Killing is
    /// safe for the data (etcd syncs its WAL before it acknowledges a write) and sometimes needed:
    /// etcd 3.3 to 3.5 can hang in their own shutdown when SIGTERM comes just after they start serving.
    pub async fn stop(mut self, grace: Duration) -> Result<Stopped, EtcdError> {
        let mut child = self.child.take().expect("a running etcd has a child");
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let binary = self.spec.binary.display().to_string();
        let status = match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => status.map_err(|source| self.wait_error(source))?,
            Err(_) => {
                warn!(binary, "etcd did not stop within {grace:?} of SIGTERM: killing it");
                let _ = child.start_kill();
                child.wait().await.map_err(|source| self.wait_error(source))?
            }
        };
        let last_lines = self.final_log_lines().await;
        if !is_clean_stop(&status) {
            warn!(binary, %status, ?last_lines, "etcd did not exit cleanly when stopped");
        }
        Ok(Stopped { status, last_lines })
    }

    /// The last lines of an etcd that has exited, once its output is read to the end (or `LOG_DRAIN`
    /// has passed).
    async fn final_log_lines(&mut self) -> Vec<String> {
        for reader in self.log_readers.drain(..) {
            let _ = tokio::time::timeout(LOG_DRAIN, reader).await;
        }
        self.last_log_lines()
    }

    fn wait_error(&self, source: std::io::Error) -> EtcdError {
        EtcdError::Wait { binary: self.spec.binary.clone(), source }
    }
}

/// How a stopped etcd ended, and the last lines it wrote.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    pub last_lines: Vec<String>,
}

/// Whether etcd stopped as it does on SIGTERM: it re-raises the signal (a shell shows 143), or exits 0.
pub fn is_clean_stop(status: &ExitStatus) -> bool {
    status.signal() == Some(libc::SIGTERM) || matches!(status.code(), Some(0 | 143))
}

impl Drop for EtcdProcess {
    /// An etcd that was never stopped (an error or a signal cut its step short) is stopped here, blocking
    /// briefly: it must not outlive the migrator, and a clean stop beats SIGKILL. It is reaped too, so
    /// that no zombie is left behind for whoever checks that it is gone.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let Some(pid) = child.id() else { return };
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        if reaped_within(&mut child, DROP_GRACE) {
            return;
        }
        warn!(binary = %self.spec.binary.display(), "etcd did not stop within {DROP_GRACE:?}: killing it");
        let _ = child.start_kill();
        reaped_within(&mut child, DROP_GRACE);
    }
}

/// Polls (blocking: `Drop` cannot await) until the child has exited and is reaped, or `limit` passes.
fn reaped_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !matches!(child.try_wait(), Ok(None)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads etcd's output to its end. Lines are bytes: etcd logs its flags' values, which need not be UTF-8,
/// and a reader that stopped there would close the pipe and kill etcd with SIGPIPE.
async fn keep_lines(stream: impl AsyncRead + Unpin, log: Arc<Mutex<VecDeque<String>>>) {
    let mut reader = BufReader::new(stream);
    let mut bytes = Vec::new();
    while reader.read_until(b'\n', &mut bytes).await.is_ok_and(|read| read > 0) {
        let line = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned();
        bytes.clear();
        debug!(target: "etcd", "{line}");
        if let Ok(mut log) = log.lock() {
            if log.len() == LOG_LINES_KEPT {
                log.pop_front();
            }
            log.push_back(line);
        }
    }
}

/// Fails when something already listens on the URL's port on this host.
pub fn ensure_port_free(url: &str) -> Result<(), EtcdError> {
    let Some(authority) = url.split("://").nth(1).map(|rest| rest.split('/').next().unwrap_or(rest)) else {
        return Ok(());
    };
    let Some((host, port)) = authority.rsplit_once(':') else { return Ok(()) };
    let Ok(port) = port.parse::<u16>() else { return Ok(()) };
    let host = host.trim_matches(['[', ']']);
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map(Iterator::collect).unwrap_or_default();
    for addr in addrs {
        if let Err(e) = TcpListener::bind(addr)
            && e.kind() == std::io::ErrorKind::AddrInUse
        {
            return Err(EtcdError::PortInUse { port, url: url.to_string() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_port_is_reported_not_fought() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let err = ensure_port_free(&format!("http://127.0.0.1:{port}")).unwrap_err();
        assert!(err.to_string().contains("leftover etcd"), "{err}");
        drop(listener);
        ensure_port_free(&format!("http://127.0.0.1:{port}")).unwrap();
        ensure_port_free("unix://socket").unwrap();
    }

    fn spec(lone_member: bool, extra_args: &[&str]) -> EtcdSpec {
        EtcdSpec {
            binary: PathBuf::from("etcd-3.5.16"),
            version: "3.5.16".parse().unwrap(),
            data_dir: PathBuf::from("/data"),
            name: "m".into(),
            listen_client_urls: "http://127.0.0.1:1".into(),
            listen_peer_urls: "http://127.0.0.1:2".into(),
            initial_advertise_peer_urls: "http://127.0.0.1:2".into(),
            initial_cluster: "m=http://127.0.0.1:2".into(),
            initial_cluster_state: None,
            enable_v2: false,
            extra_args: extra_args.iter().map(OsString::from).collect(),
            lone_member,
            client_tls: TlsFiles::default(),
        }
    }

    fn timing_flags(spec: &EtcdSpec) -> Vec<String> {
        let args = spec.args();
        let flags = etcd_flags::read(&args);
        let timing = flags.iter().filter(|f| f.name == "heartbeat-interval" || f.name == "election-timeout");
        timing.map(|f| format!("{}={}", f.name, f.value.as_ref().unwrap().to_string_lossy())).collect()
    }

    #[test]
    fn a_lone_member_gets_the_shortest_election_timing_unless_the_operator_sets_it() {
        assert_eq!(timing_flags(&spec(true, &[])), ["heartbeat-interval=10", "election-timeout=50"]);
        assert!(timing_flags(&spec(false, &[])).is_empty(), "a cluster member keeps its cluster's timing");
        let operator = ["--election-timeout", "5000"];
        assert_eq!(timing_flags(&spec(true, &operator)), ["election-timeout=5000"]);
    }

    #[test]
    fn a_stop_by_sigterm_or_exit_0_is_clean() {
        assert!(is_clean_stop(&ExitStatus::from_raw(libc::SIGTERM)), "killed by SIGTERM");
        assert!(is_clean_stop(&ExitStatus::from_raw(0)));
        assert!(is_clean_stop(&ExitStatus::from_raw(143 << 8)));
        assert!(!is_clean_stop(&ExitStatus::from_raw(libc::SIGKILL)));
        assert!(!is_clean_stop(&ExitStatus::from_raw(1 << 8)));
    }
}
