//! The run's certificate authority: every hidden etcd serves only the migrator. On a control-plane node
//! every hostNetwork pod shares the loopback interface, so a hidden etcd on plain `http://127.0.0.1`
//! would serve every Secret of the cluster to any process there for as long as a migration runs.
//!
//! Made in process for each run (rcgen): a CA whose key never leaves memory, a server certificate for the
//! hidden etcd (127.0.0.1, localhost, and the hosts of its URLs) and a client certificate for the
//! migrator. The files go into a 0700 dir in the data dir's state dir (`data_dir::authority_dir`), which
//! backups leave out, each 0600, and the dir is taken away when this is dropped: at the end of the run,
//! on a failure and on SIGTERM/SIGINT (the run returns). A run killed with SIGKILL leaves them behind,
//! but nothing trusts them: the next run removes them and makes a new authority (a new CA key), so a
//! certificate from the old one is good for no later hidden etcd.
//!
//! This module is the one place that says how the hidden etcd is secured: its TLS flags, its URLs'
//! scheme, and what the migrator presents to it.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::client::TlsFiles;
use crate::etcd_flags::{self, flag_arg};

/// What etcd's client listener is secured by: the operator's values are replaced by the run's.
const CLIENT_TLS_FLAGS: &[&str] =
    &["cert-file", "key-file", "trusted-ca-file", "client-crl-file", "client-cert-auth", "auto-tls"];

const CA: &str = "ca.crt";
const CLIENT_CERT: &str = "client.crt";
const CLIENT_KEY: &str = "client.key";

/// The room the authority's files take, with a margin (five PEM files of under 1 KiB each).
pub const BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("cannot make the run's certificate authority: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("cannot write the run's certificate authority into {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// The run's authority, its files on disk until this is dropped.
#[derive(Debug)]
pub struct RunAuthority {
    dir: PathBuf,
    /// The state dir, when making the authority made it (removed with it if then empty).
    made_state_dir: Option<PathBuf>,
    /// What the hidden etcd serves with and trusts: its certificate, its key, the CA.
    server: TlsFiles,
    /// What the migrator presents, and trusts the hidden etcd by.
    client: TlsFiles,
}

impl RunAuthority {
    /// Makes a fresh authority in `dir` (inside `state_dir`), after removing whatever a killed run left
    /// there. `hosts` are the hidden etcd's URLs' hosts, named in its certificate beside 127.0.0.1 and
    /// localhost. On failure, what was made is taken away.
    pub fn create(state_dir: &Path, dir: &Path, hosts: &[String]) -> Result<RunAuthority, AuthorityError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| AuthorityError::Io { path, source }
        };
        let made_state_dir = (!state_dir.exists()).then(|| state_dir.to_path_buf());
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(dir)(e)),
            _ => {}
        }
        let mut authority = RunAuthority {
            dir: dir.to_path_buf(),
            made_state_dir,
            server: TlsFiles::default(),
            client: TlsFiles::default(),
        };
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        let files = Certificates::make(hosts)?;
        let write = |name: &str, pem: &str| -> Result<PathBuf, AuthorityError> {
            let path = dir.join(name);
            write_private(&path, pem.as_bytes()).map_err(io(&path))?;
            Ok(path)
        };
        let ca = write(CA, &files.ca)?;
        authority.server = TlsFiles {
            ca: Some(ca),
            cert: Some(write("server.crt", &files.server_cert)?),
            key: Some(write("server.key", &files.server_key)?),
        };
        write(CLIENT_CERT, &files.client_cert)?;
        write(CLIENT_KEY, &files.client_key)?;
        authority.client = client_files(dir);
        Ok(authority)
    }

    /// What the migrator presents to a hidden etcd and trusts it by.
    pub fn client(&self) -> &TlsFiles {
        &self.client
    }

    /// The hidden etcd's flags: the operator's (`operator`), without what secures its client listener
    /// (and, for a single member, its peer listener), then the run's for those. A member of a cluster
    /// keeps the operator's peer TLS: its peers know the member by it. `client_tls` false (a release
    /// that cannot serve its clients over TLS, `release::Capabilities::client_tls`): the client listener
    /// gets none.
    pub fn hidden_etcd_args(
        &self,
        operator: &[OsString],
        single_member: bool,
        client_tls: bool,
    ) -> Vec<OsString> {
        let replaced = |name: &str| {
            CLIENT_TLS_FLAGS.contains(&name) || (single_member && etcd_flags::is_peer_tls_flag(name))
        };
        let mut args = etcd_flags::without(operator, replaced);
        let mut secure = |prefix: &str| {
            let TlsFiles { ca, cert, key } = &self.server;
            for (flag, path) in [("cert-file", cert), ("key-file", key), ("trusted-ca-file", ca)] {
                let path = path.as_ref().expect("a made authority has every file");
                args.push(flag_arg(&format!("{prefix}{flag}"), path.as_os_str()));
            }
            args.push(format!("--{prefix}client-cert-auth").into());
        };
        if client_tls {
            secure("");
        }
        if single_member {
            secure("peer-");
        }
        args
    }
}

impl Drop for RunAuthority {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(state_dir) = &self.made_state_dir {
            // Only when empty: the run may have written its journal there meanwhile.
            let _ = fs::remove_dir(state_dir);
        }
    }
}

/// What the migrator presents and trusts, in an authority's `dir` (tests reach a paused run's hidden
/// etcd with it).
pub fn client_files(dir: &Path) -> TlsFiles {
    TlsFiles { ca: Some(dir.join(CA)), cert: Some(dir.join(CLIENT_CERT)), key: Some(dir.join(CLIENT_KEY)) }
}

/// `urls` (etcd's comma-separated form) served over TLS: each `http://` becomes `https://`.
pub fn https_urls(urls: &str) -> String {
    urls.split(',')
        .map(|url| match url.trim().strip_prefix("http://") {
            Some(rest) => format!("https://{rest}"),
            None => url.trim().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The hosts of `urls` (etcd's comma-separated form), for the server certificate.
pub fn url_hosts(urls: &str) -> Vec<String> {
    urls.split(',')
        .filter_map(|url| url.trim().split("://").nth(1))
        .map(|rest| {
            let authority = rest.split('/').next().unwrap_or(rest);
            let host = authority.rsplit_once(':').map_or(authority, |(host, _)| host);
            host.trim_matches(['[', ']']).to_string()
        })
        .filter(|host| !host.is_empty())
        .collect()
}

/// The authority's certificates and keys, PEM. The CA's key is not among them: nothing is signed later.
struct Certificates {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

impl Certificates {
    fn make(hosts: &[String]) -> Result<Certificates, rcgen::Error> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "etcd-migrate run authority");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        // etcd's peer listener checks its peers' certificates as clients too: the server's serves both.
        let leaf = |common_name: &str, names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let mut params = CertificateParams::new(names)?;
            params.distinguished_name.push(DnType::CommonName, common_name);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = usages;
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?.pem();
            Ok::<_, rcgen::Error>((cert, key.serialize_pem()))
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (server_cert, server_key) = leaf("hidden etcd", names, vec![ServerAuth, ClientAuth])?;
        let (client_cert, client_key) = leaf("etcd-migrate", Vec::new(), vec![ClientAuth])?;
        Ok(Certificates { ca, server_cert, server_key, client_cert, client_key })
    }
}

/// A new file readable by its owner alone (0600 whatever the umask), its bytes synced.
fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_authority_is_private_fresh_each_run_and_gone_when_dropped() {
        let temp = tempfile::tempdir().unwrap();
        let state = temp.path().join(".etcd-migrate");
        let dir = state.join("authority");
        let first = RunAuthority::create(&state, &dir, &["10.0.0.1".into()]).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        for entry in fs::read_dir(&dir).unwrap() {
            let mode = entry.unwrap().metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let ca = fs::read(first.client().ca.as_ref().unwrap()).unwrap();
        // A killed run's files are never trusted: a new run makes a new CA over them.
        std::mem::forget(first);
        let second = RunAuthority::create(&state, &dir, &[]).unwrap();
        assert_ne!(fs::read(second.client().ca.as_ref().unwrap()).unwrap(), ca);
        drop(second);
        assert!(!dir.exists());
        let fresh = temp.path().join("fresh");
        drop(RunAuthority::create(&fresh, &fresh.join("authority"), &[]).unwrap());
        assert!(!fresh.exists(), "the state dir it made is gone too");
    }

    #[test]
    fn the_hidden_etcd_is_secured_by_the_run_whatever_the_operator_gave() {
        let temp = tempfile::tempdir().unwrap();
        let authority = RunAuthority::create(temp.path(), &temp.path().join("authority"), &[]).unwrap();
        let operator: Vec<OsString> =
            ["--cert-file=/op.crt", "--client-cert-auth", "--peer-cert-file", "/p.crt", "--snapshot-count=5"]
                .map(OsString::from)
                .to_vec();
        let single = authority.hidden_etcd_args(&operator, true, true);
        let text: Vec<String> = single.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(!text.iter().any(|a| a.contains("/op.crt") || a.contains("/p.crt")), "{text:?}");
        assert!(text.contains(&"--snapshot-count=5".to_string()), "{text:?}");
        assert!(text.contains(&"--client-cert-auth".to_string()), "{text:?}");
        assert!(text.contains(&"--peer-client-cert-auth".to_string()), "{text:?}");
        let member = authority.hidden_etcd_args(&operator, false, true);
        let text: Vec<String> = member.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert!(text.contains(&"--peer-cert-file=/p.crt".to_string()), "{text:?}");
        assert!(!text.iter().any(|a| a.contains("/op.crt")), "{text:?}");
        assert!(!text.contains(&"--peer-client-cert-auth".to_string()), "{text:?}");
    }

    #[test]
    fn urls_become_https_and_name_their_hosts() {
        assert_eq!(
            https_urls("http://127.0.0.1:18629, https://10.0.0.1:2379"),
            "https://127.0.0.1:18629,https://10.0.0.1:2379"
        );
        assert_eq!(url_hosts("http://[::1]:1,https://node-a:2/x"), ["::1", "node-a"]);
    }
}
