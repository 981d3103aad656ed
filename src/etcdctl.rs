//! Running a bundled etcdctl (v3 API; `ETCDCTL_API=3` where the release needs it): a clean environment
//! and a mandatory timeout on every call, since some commands wait forever (`migrate` on a locked data
//! dir, `lease list` without a server).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::client::Endpoint;
use crate::durable;
use crate::progress::Progress;
use crate::release;
use crate::version::{Minor, Version};

#[derive(Debug, thiserror::Error)]
pub enum EtcdctlError {
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("etcdctl {command} did not finish within {timeout:?} and was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("etcdctl {command} failed ({status}): {stderr}")]
    Failed { command: String, status: std::process::ExitStatus, stderr: String },
    #[error("etcdctl {command} printed what this tool cannot read ({error}): {output}")]
    Unreadable { command: String, error: String, output: String },
}

/// What a 3.6+ member reports about its storage (`etcdctl endpoint status -w json`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StorageStatus {
    /// The storage version its backend is at, `3.6.0`.
    #[serde(rename = "storageVersion", default)]
    pub storage_version: String,
    #[serde(rename = "downgradeInfo", default)]
    pub downgrade: DowngradeInfo,
}

/// The cluster's downgrade job, if one is enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct DowngradeInfo {
    #[serde(default)]
    pub enabled: bool,
    /// `3.6.0`.
    #[serde(rename = "targetVersion", default)]
    pub target_version: String,
}

#[derive(Deserialize)]
struct EndpointStatus {
    #[serde(rename = "Status")]
    status: StorageStatus,
}

#[derive(Debug, Clone)]
pub struct Etcdctl {
    pub binary: PathBuf,
    /// Set `ETCDCTL_API=3` (etcdctl 3.0–3.5; 3.6 and later warn on it at every call).
    needs_api_3: bool,
}

impl Etcdctl {
    /// The bundled `binary` (etcdctl, or etcdutl) of etcd `version`.
    pub fn new(binary: PathBuf, version: Version) -> Etcdctl {
        Etcdctl { binary, needs_api_3: release::capabilities(version).etcdctl_needs_api_3 }
    }

    /// Runs `etcdctl args…`, returning its stdout. At `timeout` it is killed and reaped before this
    /// returns, so nothing it does can outlast the call.
    pub async fn run(&self, args: &[String], timeout: Duration) -> Result<String, EtcdctlError> {
        self.run_watched(args, timeout, None).await
    }

    /// [`Etcdctl::run`], with the bytes etcdctl has read and written so far (`/proc/<pid>/io`) kept in
    /// `progress` if given.
    async fn run_watched(
        &self,
        args: &[String],
        timeout: Duration,
        progress: Option<&Progress>,
    ) -> Result<String, EtcdctlError> {
        let mut command = Command::new(&self.binary);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        command.kill_on_drop(true);
        durable::owner_only_files(&mut command);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("ETCD_") || key_text.starts_with("ETCDCTL_") {
                command.env_remove(key);
            }
        }
        if self.needs_api_3 {
            command.env("ETCDCTL_API", "3");
        }
        let spawn_error = |source| EtcdctlError::Spawn { binary: self.binary.clone(), source };
        let mut child = command.spawn().map_err(spawn_error)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let io = child.id().map(|pid| PathBuf::from(format!("/proc/{pid}/io")));
        let watch = async {
            let (Some(progress), Some(io)) = (progress, io) else { return std::future::pending().await };
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                if let Some(moved) = bytes_read_and_written(&io) {
                    progress.set(moved);
                }
            }
        };
        let finished = tokio::time::timeout(timeout, async {
            let ran = async {
                let (stdout, stderr, status) = tokio::join!(read_all(stdout), read_all(stderr), child.wait());
                Ok::<_, std::io::Error>((stdout?, stderr?, status?))
            };
            tokio::select! {
                ran = ran => ran,
                never = watch => never,
            }
        })
        .await;
        let shown = args.join(" ");
        let Ok(finished) = finished else {
            let _ = child.kill().await;
            return Err(EtcdctlError::TimedOut { command: shown, timeout });
        };
        let (stdout, stderr, status) = finished.map_err(spawn_error)?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            let stderr = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
            return Err(EtcdctlError::Failed { command: shown, status, stderr });
        }
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// `etcdctl migrate`: copies the v2 store of a stopped member into its v3 store (TTLs are dropped).
    /// `progress` follows the bytes it reads (the newest v2 snapshot and the WAL) and writes (the new
    /// backend, about twice the snapshot, rewritten pages and all): how many in all is not known ahead.
    pub async fn migrate(
        &self,
        data_dir: &Path,
        timeout: Duration,
        progress: &Progress,
    ) -> Result<String, EtcdctlError> {
        let args = ["migrate".into(), "--data-dir".into(), data_dir.display().to_string()];
        self.run_watched(&args, timeout, Some(progress)).await
    }

    /// `etcdctl snapshot save` from a running member.
    pub async fn snapshot_save(
        &self,
        endpoint: &Endpoint,
        file: &Path,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
        let mut args = client_args(endpoint);
        args.extend(["snapshot".into(), "save".into(), file.display().to_string()]);
        self.run(&args, timeout).await
    }

    /// `etcdctl downgrade <action> <target>` (3.6+): `validate` or `enable` a downgrade of the cluster to
    /// minor `target`.
    pub async fn downgrade(
        &self,
        endpoint: &Endpoint,
        action: &str,
        target: Minor,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
        let mut args = client_args(endpoint);
        args.extend(["downgrade".into(), action.into(), target.to_string()]);
        self.run(&args, timeout).await
    }

    /// The storage version and downgrade job of the member at `endpoint` (3.6+).
    pub async fn storage_status(
        &self,
        endpoint: &Endpoint,
        timeout: Duration,
    ) -> Result<StorageStatus, EtcdctlError> {
        let mut args = client_args(endpoint);
        args.extend(["endpoint".into(), "status".into(), "-w".into(), "json".into()]);
        let output = self.run(&args, timeout).await?;
        let unreadable = |error: String| EtcdctlError::Unreadable {
            command: args.join(" "),
            error,
            output: output.clone(),
        };
        let statuses: Vec<EndpointStatus> =
            serde_json::from_str(&output).map_err(|e| unreadable(e.to_string()))?;
        let status = statuses.into_iter().next().ok_or_else(|| unreadable("no endpoint".into()))?;
        Ok(status.status)
    }

    /// `etcdctl snapshot restore` into a new data dir for member `name`.
    pub async fn snapshot_restore(
        &self,
        snapshot: &Path,
        data_dir: &Path,
        member: &RestoreMember<'_>,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
        self.run(&restore_args(snapshot, data_dir, member), timeout).await
    }

    /// `etcdutl snapshot restore --bump-revision <bump> --mark-compacted` (see
    /// `release::Capabilities::restore_bumps_revision`): the restored member's revision is `bump` above
    /// the snapshot's, and everything below it is compacted.
    pub async fn snapshot_restore_bumped(
        &self,
        snapshot: &Path,
        data_dir: &Path,
        member: &RestoreMember<'_>,
        bump: u64,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
        let mut args = restore_args(snapshot, data_dir, member);
        args.extend(["--bump-revision".into(), bump.to_string(), "--mark-compacted".into()]);
        self.run(&args, timeout).await
    }
}

fn restore_args(snapshot: &Path, data_dir: &Path, member: &RestoreMember<'_>) -> Vec<String> {
    let mut args = vec![
        "snapshot".into(),
        "restore".into(),
        snapshot.display().to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--name".into(),
        member.name.into(),
        "--initial-cluster".into(),
        member.initial_cluster.into(),
        "--initial-advertise-peer-urls".into(),
        member.initial_advertise_peer_urls.into(),
    ];
    if member.skip_hash_check {
        args.push("--skip-hash-check".into());
    }
    args
}

/// The flags that reach the member at `endpoint` with the TLS files its clients present and trust it by
/// (etcdctl's v3 flags: only v3 calls reach a running etcd).
fn client_args(endpoint: &Endpoint) -> Vec<String> {
    let tls = endpoint.tls();
    let mut args = vec!["--endpoints".into(), endpoint.base_url().into()];
    for (flag, path) in [("--cacert", &tls.ca), ("--cert", &tls.cert), ("--key", &tls.key)] {
        if let Some(path) = path {
            args.extend([flag.into(), path.display().to_string()]);
        }
    }
    args
}

/// How often a watched etcdctl's reads are sampled.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// `rchar` + `wchar` (bytes read and written, cache or not) of a process, from its `/proc/<pid>/io`.
fn bytes_read_and_written(io: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(io).ok()?;
    let count = |field: &str| -> Option<u64> {
        text.lines().find_map(|line| line.strip_prefix(field)).and_then(|n| n.trim().parse().ok())
    };
    Some(count("rchar:")? + count("wchar:")?)
}

async fn read_all(stream: Option<impl AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if let Some(mut stream) = stream {
        stream.read_to_end(&mut bytes).await?;
    }
    Ok(bytes)
}

/// Who a restored data dir belongs to.
pub struct RestoreMember<'a> {
    pub name: &'a str,
    pub initial_cluster: &'a str,
    pub initial_advertise_peer_urls: &'a str,
    pub skip_hash_check: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_storage_status_of_etcd_3_7() {
        let output = r#"[{"Endpoint":"http://127.0.0.1:2379","Status":{"version":"3.7.1","storageVersion":"3.6.0","downgradeInfo":{"enabled":true,"targetVersion":"3.6.0"}}}]"#;
        let statuses: Vec<EndpointStatus> = serde_json::from_str(output).unwrap();
        let status = &statuses[0].status;
        assert_eq!(status.storage_version, "3.6.0");
        assert_eq!(status.downgrade, DowngradeInfo { enabled: true, target_version: "3.6.0".into() });
        let idle: Vec<EndpointStatus> =
            serde_json::from_str(r#"[{"Status":{"storageVersion":"3.7.0","downgradeInfo":{}}}]"#).unwrap();
        assert_eq!(idle[0].status.downgrade, DowngradeInfo::default());
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_its_timeout() {
        let sleeper = Etcdctl::new(PathBuf::from("/bin/sleep"), Version::new(3, 5, 0));
        let err = sleeper.run(&["30".into()], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, EtcdctlError::TimedOut { .. }), "{err}");
        let err = Etcdctl::new(PathBuf::from("/bin/false"), Version::new(3, 5, 0))
            .run(&[], Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, EtcdctlError::Failed { .. }), "{err}");
    }
}
