//! An etcd command line read the way etcd reads it: `--flag=value`, `--flag value` and Go's single-dash
//! forms, each flag falling back to its `ETCD_*` variable, then to etcd's own default. The multi-call
//! `etcd` takes from it what a migration needs (data dir, member name, peer URLs, peer TLS); the
//! arguments themselves go on to etcd untouched.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;

/// etcd's default peer URL, for `--listen-peer-urls` and `--initial-advertise-peer-urls`.
const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// The value flags read here: etcd takes the next argument as the value when no `=` is given.
const VALUE_FLAGS: &[&str] = &[
    "data-dir",
    "name",
    "initial-cluster",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-crl-file",
];

/// Boolean flags read here: alone they mean true, and never take the next argument.
const BOOL_FLAGS: &[&str] = &["peer-client-cert-auth", "peer-auto-tls", "help", "version"];

/// The flags that secure the peer listener: the hidden etcd that rejoins the member's peers needs
/// them, and nothing of the client side (it serves its clients on plain loopback).
const PEER_TLS_FLAGS: &[&str] = &[
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-crl-file",
    "peer-client-cert-auth",
    "peer-auto-tls",
];

/// The flags etcd was given, with its environment as the fallback.
#[derive(Debug, Clone)]
pub struct EtcdFlags {
    given: HashMap<&'static str, String>,
    env: HashMap<String, String>,
}

impl EtcdFlags {
    pub fn read(args: &[OsString], env: &HashMap<String, String>) -> EtcdFlags {
        let mut given = HashMap::new();
        let mut args = args.iter().map(|a| a.to_string_lossy());
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else { continue };
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (flag, None),
            };
            if let Some(known) = VALUE_FLAGS.iter().find(|f| **f == name) {
                if let Some(value) = inline.or_else(|| args.next().map(|v| v.into_owned())) {
                    given.insert(*known, value);
                }
            } else if let Some(known) = BOOL_FLAGS.iter().find(|f| **f == name) {
                given.insert(*known, inline.unwrap_or_else(|| "true".into()));
            }
        }
        EtcdFlags { given, env: env.clone() }
    }

    /// The flag's value, else its `ETCD_*` variable's (an empty variable counts as unset).
    fn get(&self, flag: &str) -> Option<String> {
        if let Some(value) = self.given.get(flag) {
            return Some(value.clone());
        }
        self.env.get(&env_name(flag)).filter(|v| !v.is_empty()).cloned()
    }

    fn is_true(&self, flag: &str) -> bool {
        self.get(flag).is_some_and(|v| v == "true" || v == "1")
    }

    /// `--help` or `--version`: etcd answers those without touching any data.
    pub fn only_asks_etcd(&self) -> bool {
        self.given.contains_key("help") || self.given.contains_key("version")
    }

    pub fn name(&self) -> String {
        self.get("name").unwrap_or_else(|| "default".into())
    }

    /// etcd's default is `<name>.etcd` in the working directory.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.get("data-dir").unwrap_or_else(|| format!("{}.etcd", self.name())))
    }

    pub fn listen_peer_urls(&self) -> String {
        self.get("listen-peer-urls").unwrap_or_else(|| DEFAULT_PEER_URL.into())
    }

    pub fn initial_advertise_peer_urls(&self) -> String {
        self.get("initial-advertise-peer-urls").unwrap_or_else(|| DEFAULT_PEER_URL.into())
    }

    /// etcd's default: this member alone, at each URL it advertises.
    pub fn initial_cluster(&self) -> String {
        self.get("initial-cluster").unwrap_or_else(|| {
            let name = self.name();
            let urls = self.initial_advertise_peer_urls();
            urls.split(',').map(|url| format!("{name}={}", url.trim())).collect::<Vec<_>>().join(",")
        })
    }

    /// The peer TLS settings as flags, for the hidden etcd.
    pub fn peer_tls_args(&self) -> Vec<String> {
        PEER_TLS_FLAGS
            .iter()
            .filter_map(|flag| {
                if BOOL_FLAGS.contains(flag) {
                    self.is_true(flag).then(|| format!("--{flag}"))
                } else {
                    self.get(flag).map(|value| format!("--{flag}={value}"))
                }
            })
            .collect()
    }
}

/// `peer-cert-file` → `ETCD_PEER_CERT_FILE`, as etcd maps its flags.
fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(args: &[&str], env: &[(&str, &str)]) -> EtcdFlags {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EtcdFlags::read(&args, &env)
    }

    #[test]
    fn reads_both_forms_and_single_dashes() {
        let flags = read(
            &[
                "--name",
                "m1",
                "--data-dir=/var/lib/etcd",
                "-listen-peer-urls",
                "https://10.0.0.1:2380",
                "--client-cert-auth=true",
                "--peer-client-cert-auth",
                "--peer-cert-file",
                "/p.crt",
                "--initial-advertise-peer-urls=https://10.0.0.1:2380",
            ],
            &[],
        );
        assert_eq!(flags.name(), "m1");
        assert_eq!(flags.data_dir(), PathBuf::from("/var/lib/etcd"));
        assert_eq!(flags.listen_peer_urls(), "https://10.0.0.1:2380");
        assert_eq!(flags.initial_cluster(), "m1=https://10.0.0.1:2380");
        assert_eq!(flags.peer_tls_args(), ["--peer-cert-file=/p.crt", "--peer-client-cert-auth"]);
        assert!(!flags.only_asks_etcd());
    }

    #[test]
    fn the_environment_fills_in_and_flags_win() {
        let flags = read(
            &["--name=flag"],
            &[
                ("ETCD_NAME", "env"),
                ("ETCD_DATA_DIR", "/d"),
                ("ETCD_INITIAL_CLUSTER", "a=http://a:2380,b=http://b:2380"),
                ("ETCD_PEER_KEY_FILE", "/k"),
                ("ETCD_PEER_AUTO_TLS", "false"),
                ("ETCD_LISTEN_PEER_URLS", ""),
            ],
        );
        assert_eq!(flags.name(), "flag");
        assert_eq!(flags.data_dir(), PathBuf::from("/d"));
        assert_eq!(flags.initial_cluster(), "a=http://a:2380,b=http://b:2380");
        assert_eq!(flags.listen_peer_urls(), DEFAULT_PEER_URL, "an empty variable is unset");
        assert_eq!(flags.peer_tls_args(), ["--peer-key-file=/k"]);
    }

    #[test]
    fn etcds_defaults_apply_when_nothing_is_given() {
        let flags = read(&["--quota-backend-bytes", "8589934592", "--enable-v2"], &[]);
        assert_eq!(flags.name(), "default");
        assert_eq!(flags.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(flags.initial_cluster(), "default=http://localhost:2380");
        assert!(flags.peer_tls_args().is_empty());
    }

    #[test]
    fn help_and_version_are_only_questions_for_etcd() {
        assert!(read(&["--version"], &[]).only_asks_etcd());
        assert!(read(&["-help"], &[]).only_asks_etcd());
    }
}
