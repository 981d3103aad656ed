//! etcd's command line, read the one way etcd (Go's `flag` package) reads it: `-flag` or `--flag`, the
//! value after `=` or in the next argument (a boolean never takes the next one), up to `--` or the first
//! argument that is not a flag. Values stay `OsString`: a path keeps its spaces and its bytes, and no
//! value is ever joined into a string and split again.
//!
//! Every place that looks at or passes on etcd's flags reads them here: the multi-call `etcd` (what a
//! migration needs: data dir, member name, peer URLs, peer TLS), `exec` (the `ETCD_*` variables a flag
//! shadows) and `client::TlsFiles` (the TLS files in the hidden etcd's flags).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// etcd's default peer URL, for `--listen-peer-urls` and `--initial-advertise-peer-urls`.
const DEFAULT_PEER_URL: &str = "http://localhost:2380";

/// Every boolean flag of etcd 2.2–3.7: alone it means true, and it never takes the next argument. Every
/// other flag takes a value, as in Go.
const BOOL_FLAGS: &[&str] = &[
    "auto-tls",
    "client-cert-auth",
    "debug",
    "disable-log-sampling",
    "discovery-insecure-skip-tls-verify",
    "discovery-insecure-transport",
    "enable-distributed-tracing",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "enable-v2",
    "experimental-compact-hash-check-enabled",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-initial-corrupt-check",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
    "experimental-set-member-localaddr",
    "experimental-stop-grpc-service-on-defrag",
    "experimental-txn-mode-write-with-shared-buffer",
    "force-new-cluster",
    "h",
    "help",
    "initial-election-tick-advance",
    "memory-mlock",
    "peer-auto-tls",
    "peer-client-cert-auth",
    "peer-skip-client-san-verification",
    "pre-vote",
    "set-member-localaddr",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "unsafe-no-fsync",
    "version",
];

/// The flags that secure the peer listener: the hidden etcd that rejoins the member's peers needs
/// them, and nothing of the client side (the run's authority secures its client listener).
const PEER_TLS_FLAGS: &[&str] = &[
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-crl-file",
    "peer-client-cert-auth",
    "peer-auto-tls",
];

/// One flag as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// Without its dashes. etcd's flags are ASCII: a name that is not UTF-8 is no flag of etcd's.
    pub name: String,
    /// `None` for a boolean given alone.
    pub value: Option<OsString>,
}

/// The flags of `args` (without the program name), in order, as Go's `flag` package reads them.
pub fn read(args: &[OsString]) -> Vec<Flag> {
    let mut flags = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes == b"--" {
            break;
        }
        let Some(flag) = bytes.strip_prefix(b"--").or_else(|| bytes.strip_prefix(b"-")) else { break };
        if flag.is_empty() || flag[0] == b'-' || flag[0] == b'=' {
            break;
        }
        let (name, inline) = match flag.iter().position(|&b| b == b'=') {
            Some(at) => (&flag[..at], Some(OsStr::from_bytes(&flag[at + 1..]).to_owned())),
            None => (flag, None),
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let value = match inline {
            Some(value) => Some(value),
            None if BOOL_FLAGS.contains(&name.as_str()) => None,
            None => match args.next() {
                Some(value) => Some(value.clone()),
                None => break,
            },
        };
        flags.push(Flag { name, value });
    }
    flags
}

/// Whether `name` is one of the flags that secure the peer listener.
pub fn is_peer_tls_flag(name: &str) -> bool {
    PEER_TLS_FLAGS.contains(&name)
}

/// `args` without the flags `drop` names, each kept flag as one argument in the form etcd reads back.
pub fn without(args: &[OsString], drop: impl Fn(&str) -> bool) -> Vec<OsString> {
    read(args)
        .into_iter()
        .filter(|flag| !drop(&flag.name))
        .map(|flag| match flag.value {
            Some(value) => flag_arg(&flag.name, &value),
            None => format!("--{}", flag.name).into(),
        })
        .collect()
}

/// `-name=value` as one argument, in the form etcd reads back exactly.
pub fn flag_arg(name: &str, value: &OsStr) -> OsString {
    let mut arg = OsString::from(format!("--{name}="));
    arg.push(value);
    arg
}

/// `ETCD_CREDS`, one string by Kubernetes' contract, split at whitespace as its image's shell did.
pub fn split_at_whitespace(line: &OsStr) -> Vec<OsString> {
    line.as_bytes()
        .split(u8::is_ascii_whitespace)
        .filter(|word| !word.is_empty())
        .map(|word| OsStr::from_bytes(word).to_owned())
        .collect()
}

/// The flags etcd was given, with its environment as the fallback.
#[derive(Debug, Clone)]
pub struct EtcdFlags {
    given: Vec<Flag>,
    env: HashMap<String, String>,
}

impl EtcdFlags {
    pub fn read(args: &[OsString], env: &HashMap<String, String>) -> EtcdFlags {
        EtcdFlags { given: read(args), env: env.clone() }
    }

    fn given(&self, flag: &str) -> Option<&Flag> {
        self.given.iter().rev().find(|given| given.name == flag)
    }

    /// The flag's value (the last given, as in Go), else its `ETCD_*` variable's (an empty variable
    /// counts as unset). A boolean given alone is `true`.
    fn get(&self, flag: &str) -> Option<OsString> {
        if let Some(given) = self.given(flag) {
            return Some(given.value.clone().unwrap_or_else(|| "true".into()));
        }
        self.env.get(&env_name(flag)).filter(|v| !v.is_empty()).map(OsString::from)
    }

    fn is_true(&self, flag: &str) -> bool {
        self.get(flag).is_some_and(|value| go_bool(&value))
    }

    /// `--help` or `--version`: etcd answers those without touching any data.
    pub fn only_asks_etcd(&self) -> bool {
        ["h", "help", "version"].iter().any(|flag| self.given(flag).is_some())
    }

    pub fn name(&self) -> OsString {
        self.get("name").unwrap_or_else(|| "default".into())
    }

    /// etcd's default is `<name>.etcd` in the working directory.
    pub fn data_dir(&self) -> PathBuf {
        PathBuf::from(self.get("data-dir").unwrap_or_else(|| {
            let mut dir = self.name();
            dir.push(".etcd");
            dir
        }))
    }

    pub fn listen_peer_urls(&self) -> OsString {
        self.get("listen-peer-urls").unwrap_or_else(|| DEFAULT_PEER_URL.into())
    }

    pub fn initial_advertise_peer_urls(&self) -> OsString {
        self.get("initial-advertise-peer-urls").unwrap_or_else(|| DEFAULT_PEER_URL.into())
    }

    /// etcd's default: this member alone, at each URL it advertises.
    pub fn initial_cluster(&self) -> OsString {
        self.get("initial-cluster").unwrap_or_else(|| {
            let urls = self.initial_advertise_peer_urls();
            let mut cluster = OsString::new();
            for url in urls.as_bytes().split(|&b| b == b',') {
                if !cluster.is_empty() {
                    cluster.push(",");
                }
                cluster.push(self.name());
                cluster.push("=");
                cluster.push(OsStr::from_bytes(url.trim_ascii()));
            }
            cluster
        })
    }

    /// The peer TLS settings for the hidden etcd, one argument per flag.
    pub fn peer_tls_args(&self) -> Vec<OsString> {
        PEER_TLS_FLAGS
            .iter()
            .filter_map(|flag| {
                if BOOL_FLAGS.contains(flag) {
                    self.is_true(flag).then(|| format!("--{flag}").into())
                } else {
                    self.get(flag).map(|value| flag_arg(flag, &value))
                }
            })
            .collect()
    }
}

/// `peer-cert-file` → `ETCD_PEER_CERT_FILE`, as etcd maps its flags.
pub fn env_name(flag: &str) -> String {
    format!("ETCD_{}", flag.replace('-', "_").to_uppercase())
}

/// A boolean as Go's `strconv.ParseBool` reads it true.
fn go_bool(value: &OsStr) -> bool {
    matches!(value.as_bytes(), b"1" | b"t" | b"T" | b"true" | b"TRUE" | b"True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn flag(name: &str, value: Option<&str>) -> Flag {
        Flag { name: name.into(), value: value.map(OsString::from) }
    }

    fn read_flags(args: &[&str], env: &[(&str, &str)]) -> EtcdFlags {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        EtcdFlags::read(&os(args), &env)
    }

    #[test]
    fn reads_every_form_go_accepts() {
        let args = os(&[
            "-name",
            "m1",
            "--data-dir=/var/lib/etcd",
            "--listen-peer-urls",
            "-looks-like-a-flag",
            "-peer-client-cert-auth",
            "--enable-v2=false",
            "-initial-cluster=",
            "--quota-backend-bytes",
            "8589934592",
        ]);
        assert_eq!(
            read(&args),
            [
                flag("name", Some("m1")),
                flag("data-dir", Some("/var/lib/etcd")),
                flag("listen-peer-urls", Some("-looks-like-a-flag")),
                flag("peer-client-cert-auth", None),
                flag("enable-v2", Some("false")),
                flag("initial-cluster", Some("")),
                flag("quota-backend-bytes", Some("8589934592")),
            ]
        );
    }

    #[test]
    fn a_boolean_never_takes_the_next_argument() {
        assert_eq!(
            read(&os(&["--enable-v2", "--name", "m", "-version"])),
            [flag("enable-v2", None), flag("name", Some("m")), flag("version", None)]
        );
    }

    #[test]
    fn reading_stops_where_go_stops() {
        for stop in ["--", "-", "positional", "---triple", "-=x"] {
            let args = os(&["--name", "m", stop, "--data-dir", "/d"]);
            assert_eq!(read(&args), [flag("name", Some("m"))], "{stop}");
        }
        assert_eq!(read(&os(&["--name"])), [], "a value flag without its value");
    }

    #[test]
    fn values_keep_their_spaces_and_bytes() {
        let path = OsString::from_vec(b"/pki/my certs/peer\xff.crt".to_vec());
        let mut inline = OsString::from("--peer-key-file=");
        inline.push(&path);
        let args = vec!["--peer-cert-file".into(), path.clone(), inline];
        let flags = EtcdFlags::read(&args, &HashMap::new());
        assert_eq!(
            flags.peer_tls_args(),
            [flag_arg("peer-cert-file", &path), flag_arg("peer-key-file", &path)]
        );
        assert_eq!(
            read(&flags.peer_tls_args()),
            [
                Flag { name: "peer-cert-file".into(), value: Some(path.clone()) },
                Flag { name: "peer-key-file".into(), value: Some(path) },
            ]
        );
    }

    #[test]
    fn reads_what_a_migration_needs_in_any_form() {
        let flags = read_flags(
            &[
                "--name",
                "m1",
                "-data-dir=/var/lib/etcd",
                "-listen-peer-urls",
                "https://10.0.0.1:2380",
                "--client-cert-auth=true",
                "--peer-client-cert-auth",
                "--peer-auto-tls=f",
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
        let flags = read_flags(
            &["--name=flag"],
            &[
                ("ETCD_NAME", "env"),
                ("ETCD_DATA_DIR", "/d"),
                ("ETCD_INITIAL_CLUSTER", "a=http://a:2380,b=http://b:2380"),
                ("ETCD_PEER_KEY_FILE", "/k"),
                ("ETCD_PEER_AUTO_TLS", "false"),
                ("ETCD_PEER_CLIENT_CERT_AUTH", "1"),
                ("ETCD_LISTEN_PEER_URLS", ""),
            ],
        );
        assert_eq!(flags.name(), "flag");
        assert_eq!(flags.data_dir(), PathBuf::from("/d"));
        assert_eq!(flags.initial_cluster(), "a=http://a:2380,b=http://b:2380");
        assert_eq!(flags.listen_peer_urls(), DEFAULT_PEER_URL, "an empty variable is unset");
        assert_eq!(flags.peer_tls_args(), ["--peer-key-file=/k", "--peer-client-cert-auth"]);
    }

    #[test]
    fn etcds_defaults_apply_when_nothing_is_given() {
        let flags = read_flags(&["--quota-backend-bytes", "8589934592", "--enable-v2"], &[]);
        assert_eq!(flags.name(), "default");
        assert_eq!(flags.data_dir(), PathBuf::from("default.etcd"));
        assert_eq!(flags.initial_cluster(), "default=http://localhost:2380");
        assert!(flags.peer_tls_args().is_empty());
        let flags = read_flags(&["-initial-advertise-peer-urls", "http://a:2380, http://b:2380"], &[]);
        assert_eq!(flags.initial_cluster(), "default=http://a:2380,default=http://b:2380");
    }

    #[test]
    fn help_and_version_are_only_questions_for_etcd() {
        assert!(read_flags(&["--version"], &[]).only_asks_etcd());
        assert!(read_flags(&["-help"], &[]).only_asks_etcd());
        assert!(read_flags(&["-h"], &[]).only_asks_etcd());
        assert!(!read_flags(&["--name", "--version"], &[]).only_asks_etcd(), "a value, not a flag");
    }

    #[test]
    fn etcd_creds_splits_at_whitespace_keeping_bytes() {
        let line = OsString::from_vec(b" --cert-file=/c\xff \t--key-file\n/k ".to_vec());
        let words = split_at_whitespace(&line);
        assert_eq!(
            words,
            [OsString::from_vec(b"--cert-file=/c\xff".to_vec()), "--key-file".into(), "/k".into()]
        );
    }
}
