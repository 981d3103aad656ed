//! Running a bundled etcdctl (v3 API): a clean environment and a mandatory timeout on every call, since
//! some commands wait forever (`migrate` on a locked data dir, `lease list` without a server).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::client::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum EtcdctlError {
    #[error("cannot run {binary}: {source}")]
    Spawn { binary: PathBuf, source: std::io::Error },
    #[error("etcdctl {command} did not finish within {timeout:?} and was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("etcdctl {command} failed ({status}): {stderr}")]
    Failed { command: String, status: std::process::ExitStatus, stderr: String },
}

#[derive(Debug, Clone)]
pub struct Etcdctl {
    pub binary: PathBuf,
}

impl Etcdctl {
    pub fn new(binary: PathBuf) -> Etcdctl {
        Etcdctl { binary }
    }

    /// Runs `etcdctl args…`, returning its stdout. At `timeout` it is killed and reaped before this
    /// returns, so nothing it does can outlast the call.
    pub async fn run(&self, args: &[String], timeout: Duration) -> Result<String, EtcdctlError> {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command.kill_on_drop(true);
        for (key, _) in std::env::vars_os() {
            let key_text = key.to_string_lossy();
            if key_text.starts_with("ETCD_")
                || (key_text.starts_with("ETCDCTL_") && key_text != "ETCDCTL_API")
            {
                command.env_remove(key);
            }
        }
        let spawn_error = |source| EtcdctlError::Spawn { binary: self.binary.clone(), source };
        let mut child = command.spawn().map_err(spawn_error)?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let finished = tokio::time::timeout(timeout, async {
            let (stdout, stderr, status) = tokio::join!(read_all(stdout), read_all(stderr), child.wait());
            Ok::<_, std::io::Error>((stdout?, stderr?, status?))
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
    pub async fn migrate(&self, data_dir: &Path, timeout: Duration) -> Result<String, EtcdctlError> {
        self.run(&["migrate".into(), "--data-dir".into(), data_dir.display().to_string()], timeout).await
    }

    /// `etcdctl snapshot save` from a running member, with its client TLS files if it has them.
    pub async fn snapshot_save(
        &self,
        endpoint: &str,
        tls: &TlsFiles,
        file: &Path,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
        let mut args = vec!["--endpoints".into(), endpoint.into()];
        for (flag, path) in [("--cacert", &tls.ca), ("--cert", &tls.cert), ("--key", &tls.key)] {
            if let Some(path) = path {
                args.extend([flag.into(), path.display().to_string()]);
            }
        }
        args.extend(["snapshot".into(), "save".into(), file.display().to_string()]);
        self.run(&args, timeout).await
    }

    /// `etcdctl snapshot restore` into a new data dir for member `name`.
    pub async fn snapshot_restore(
        &self,
        snapshot: &Path,
        data_dir: &Path,
        member: &RestoreMember<'_>,
        timeout: Duration,
    ) -> Result<String, EtcdctlError> {
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
        self.run(&args, timeout).await
    }
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

    #[tokio::test]
    async fn a_hanging_command_is_killed_at_its_timeout() {
        let sleeper = Etcdctl::new(PathBuf::from("/bin/sleep"));
        let err = sleeper.run(&["30".into()], Duration::from_millis(100)).await.unwrap_err();
        assert!(matches!(err, EtcdctlError::TimedOut { .. }), "{err}");
        let err =
            Etcdctl::new(PathBuf::from("/bin/false")).run(&[], Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, EtcdctlError::Failed { .. }), "{err}");
    }
}
