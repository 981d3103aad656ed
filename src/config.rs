//! Configuration: command-line flags, each falling back to the environment variable the Kubernetes etcd
//! image used, then to a default. Parsed by hand from one table of options, so `--help`,
//! `--list-options` (which the manifest tests check against) and the parser can never disagree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::version::{EtcdState, Storage, Version};

pub const DEFAULT_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Migrate, then exec the target etcd (or exit with `--migrate-only`).
    Migrate,
    /// Print the steps a migration would take; change nothing.
    Plan,
    /// Print what is known about the data dir.
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

/// How a 3.x downgrade rebuilds the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DowngradeMethod {
    /// Snapshot restore (keeps revisions), falling back to a logical copy if that fails.
    Auto,
    Snapshot,
    /// Every key and lease copied through the API into a fresh member (revisions start over).
    Logical,
}

/// Everything a run needs, resolved from flags, environment and defaults.
#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    pub data_dir: PathBuf,
    pub target: Option<EtcdState>,
    pub bin_dir: PathBuf,
    pub bundled: Vec<Version>,
    pub name: String,
    pub listen_client_urls: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    pub data_prefix: String,
    pub ttl_keys_directory: String,
    pub extra_args: Vec<String>,
    pub storage_media_type: String,
    pub log_format: Format,
    pub output: Format,
    pub migrate_only: bool,
    pub backup_dir: PathBuf,
    pub backup_retention: usize,
    pub ttl_lease_duration: Duration,
    pub health_timeout: Duration,
    pub stop_grace: Duration,
    pub downgrade_method: DowngradeMethod,
    pub assume_current: Option<EtcdState>,
    /// The operator's flags for the final etcd, everything after `--`.
    pub etcd_args: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is required: set the flag or its environment variable")]
    Missing(&'static str),
    #[error("{option}: {message}")]
    Invalid { option: &'static str, message: String },
    #[error("unknown option {0}: see --help")]
    Unknown(String),
    #[error("{0} needs a value")]
    NoValue(&'static str),
    #[error("cannot read bin dir {dir}: {message}")]
    BinDir { dir: PathBuf, message: String },
}

/// One option: its flag, the environment variable it falls back to, and whether it takes a value.
pub struct OptionSpec {
    pub flag: &'static str,
    pub env: Option<&'static str>,
    pub takes_value: bool,
    pub help: &'static str,
}

const fn opt(flag: &'static str, env: Option<&'static str>, help: &'static str) -> OptionSpec {
    OptionSpec { flag, env, takes_value: true, help }
}

const fn switch(flag: &'static str, help: &'static str) -> OptionSpec {
    OptionSpec { flag, env: None, takes_value: false, help }
}

pub const OPTIONS: &[OptionSpec] = &[
    opt("--data-dir", Some("DATA_DIRECTORY"), "etcd data directory (required)"),
    opt("--target-version", Some("TARGET_VERSION"), "etcd version to end at, X.Y.Z (required)"),
    opt("--target-storage", Some("TARGET_STORAGE"), "etcd2 or etcd3 [etcd3]"),
    opt("--bin-dir", None, "directory holding etcd-X.Y.Z and etcdctl-X.Y.Z [/usr/local/bin]"),
    opt("--bundled-versions", Some("BUNDLED_VERSIONS"), "versions to use [every etcd-X.Y.Z in bin dir]"),
    opt("--name", Some("ETCD_NAME"), "member name [etcd-$ETCD_HOSTNAME, else etcd-$HOSTNAME]"),
    opt("--port", None, "hidden client port [18629; 18631 when the data dir path contains \"event\"]"),
    opt("--peer-port", None, "peer port [2380; 2381 likewise]"),
    opt(
        "--listen-client-urls",
        Some("LISTEN_CLIENT_URLS"),
        "hidden etcd client URLs [http://127.0.0.1:<port>]",
    ),
    opt("--listen-peer-urls", Some("LISTEN_PEER_URLS"), "peer URLs [http://localhost:<peer-port>]"),
    opt(
        "--initial-advertise-peer-urls",
        Some("INITIAL_ADVERTISE_PEER_URLS"),
        "advertised peer URLs [http://localhost:<peer-port>]",
    ),
    opt(
        "--initial-cluster",
        Some("INITIAL_CLUSTER"),
        "initial cluster [<name>=http://localhost:<peer-port>]",
    ),
    opt("--etcd-data-prefix", Some("ETCD_DATA_PREFIX"), "key prefix of Kubernetes data [/registry]"),
    opt(
        "--ttl-keys-directory",
        Some("TTL_KEYS_DIRECTORY"),
        "keys whose TTLs become leases [<prefix>/events]",
    ),
    opt("--etcd-server-extra-args", Some("ETCD_CREDS"), "extra flags for the hidden etcd, e.g. TLS [\"\"]"),
    opt("--storage-media-type", Some("STORAGE_MEDIA_TYPE"), "how the API server stores objects [protobuf]"),
    opt("--log-format", None, "text or json [text]"),
    opt("--output", None, "plan/status output: text or json [text]"),
    opt("--backup-dir", Some("BACKUP_DIR"), "where backups go [the data dir's parent]"),
    opt("--backup-retention", Some("BACKUP_RETENTION"), "backups of this data dir to keep [3]"),
    opt("--ttl-lease-duration", Some("TTL_LEASE_DURATION"), "longest lease for converted TTL keys [1h]"),
    opt("--health-timeout", Some("HEALTH_TIMEOUT"), "how long a hidden etcd may take to become healthy [5m]"),
    opt("--stop-grace", None, "SIGTERM to SIGKILL grace for a hidden etcd [10s]"),
    opt(
        "--downgrade-method",
        Some("DOWNGRADE_METHOD"),
        "auto (snapshot restore, else a logical copy), snapshot or logical [auto]",
    ),
    opt(
        "--assume-current-version",
        Some("ASSUME_CURRENT_VERSION"),
        "X.Y.Z/etcdN of data that has no version.txt",
    ),
    switch("--migrate-only", "migrate, then exit 0 instead of exec'ing etcd"),
    switch("--help", "print this help"),
    switch("--list-options", "print each option and its environment variable, one per line"),
    switch("--version", "print the version"),
];

fn spec(flag: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|o| o.flag == flag)
}

/// What the command line asked for before anything is resolved: a command, or an informational switch.
#[derive(Debug)]
pub enum Invocation {
    Run(Box<Config>),
    Help,
    ListOptions,
    Version,
}

pub fn help() -> String {
    let mut text = String::from(
        "etcd-migrate: migrates etcd data to TARGET_VERSION/TARGET_STORAGE, then execs etcd\n\n\
         usage: etcd-migrate [plan|status] [OPTIONS] [-- ETCD_ARGS...]\n\n",
    );
    for o in OPTIONS {
        let value = if o.takes_value { " VALUE" } else { "" };
        let env = o.env.map(|e| format!(" (env {e})")).unwrap_or_default();
        text.push_str(&format!("  {}{value}{env}\n      {}\n", o.flag, o.help));
    }
    text.push_str("\nexit codes: 0 done, 1 a step failed, 2 bad configuration or input\n");
    text
}

pub fn list_options() -> String {
    OPTIONS.iter().map(|o| format!("{} {}\n", o.flag, o.env.unwrap_or("-"))).collect()
}

/// Parses `args` (without the program name) with `env` as the fallback for each option.
pub fn parse(args: &[OsString], env: &HashMap<String, String>) -> Result<Invocation, ConfigError> {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let mut iter = args.into_iter();
    let mut command = None;
    let mut values: HashMap<&'static str, String> = HashMap::new();
    let mut etcd_args = Vec::new();
    while let Some(arg) = iter.next() {
        if arg == "--" {
            etcd_args.extend(iter.by_ref());
            break;
        }
        let subcommand = match arg.as_str() {
            "plan" => Some(Command::Plan),
            "status" => Some(Command::Status),
            _ => None,
        };
        if subcommand.is_some() && command.is_none() {
            command = subcommand;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
            None => (arg.clone(), None),
        };
        let option = spec(&flag).ok_or(ConfigError::Unknown(arg.clone()))?;
        let value = match (option.takes_value, inline) {
            (true, Some(value)) => value,
            (true, None) => iter.next().ok_or(ConfigError::NoValue(option.flag))?,
            (false, None) => String::new(),
            (false, Some(_)) => {
                return Err(ConfigError::Invalid { option: option.flag, message: "takes no value".into() });
            }
        };
        values.insert(option.flag, value);
    }
    for (flag, invocation) in [
        ("--help", Invocation::Help),
        ("--list-options", Invocation::ListOptions),
        ("--version", Invocation::Version),
    ] {
        if values.contains_key(flag) {
            return Ok(invocation);
        }
    }
    let resolver = Resolver { values, env };
    resolver.config(command.unwrap_or(Command::Migrate), etcd_args).map(|c| Invocation::Run(Box::new(c)))
}

struct Resolver<'a> {
    values: HashMap<&'static str, String>,
    env: &'a HashMap<String, String>,
}

impl Resolver<'_> {
    /// The flag's value, else its environment variable's, ignoring empty environment values.
    fn get(&self, flag: &'static str) -> Option<String> {
        if let Some(value) = self.values.get(flag) {
            return Some(value.clone());
        }
        let env = spec(flag).and_then(|o| o.env)?;
        self.env.get(env).filter(|v| !v.is_empty()).cloned()
    }

    fn get_or(&self, flag: &'static str, default: impl FnOnce() -> String) -> String {
        self.get(flag).unwrap_or_else(default)
    }

    fn parsed<T>(
        &self,
        flag: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.get(flag)
            .map(|value| parse(&value).map_err(|message| ConfigError::Invalid { option: flag, message }))
            .transpose()
    }

    fn config(&self, command: Command, etcd_args: Vec<String>) -> Result<Config, ConfigError> {
        let data_dir =
            PathBuf::from(self.get("--data-dir").ok_or(ConfigError::Missing("--data-dir (DATA_DIRECTORY)"))?);
        let target_version =
            self.parsed("--target-version", |v| v.parse::<Version>().map_err(|e| e.to_string()))?;
        let target_storage = self
            .parsed("--target-storage", |v| v.parse::<Storage>().map_err(|e| e.to_string()))?
            .unwrap_or(Storage::Etcd3);
        let target = match (command, target_version) {
            (_, Some(version)) => Some(EtcdState::new(version, target_storage)),
            (Command::Status, None) => None,
            (_, None) => return Err(ConfigError::Missing("--target-version (TARGET_VERSION)")),
        };
        let bin_dir = PathBuf::from(self.get_or("--bin-dir", || "/usr/local/bin".into()));
        let bundled = match self.parsed("--bundled-versions", parse_version_list)? {
            Some(list) => list,
            None => scan_bin_dir(&bin_dir)?,
        };
        let events = data_dir.to_string_lossy().contains("event");
        let port = self.parsed("--port", parse_port)?.unwrap_or(if events { 18631 } else { 18629 });
        let peer_port = self.parsed("--peer-port", parse_port)?.unwrap_or(if events { 2381 } else { 2380 });
        let name = self.get_or("--name", || {
            let host = self
                .env
                .get("ETCD_HOSTNAME")
                .or_else(|| self.env.get("HOSTNAME"))
                .cloned()
                .unwrap_or_else(|| {
                    nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
                });
            format!("etcd-{host}")
        });
        let peer_url = format!("http://localhost:{peer_port}");
        let data_prefix = self.get_or("--etcd-data-prefix", || "/registry".into());
        let format = |flag| {
            self.parsed(flag, |v| match v {
                "text" => Ok(Format::Text),
                "json" => Ok(Format::Json),
                _ => Err(format!("{v:?} is not text or json")),
            })
            .map(|f| f.unwrap_or(Format::Text))
        };
        Ok(Config {
            command,
            target,
            bundled,
            listen_client_urls: self.get_or("--listen-client-urls", || format!("http://127.0.0.1:{port}")),
            listen_peer_urls: self.get_or("--listen-peer-urls", || peer_url.clone()),
            initial_advertise_peer_urls: self.get_or("--initial-advertise-peer-urls", || peer_url.clone()),
            initial_cluster: self.get_or("--initial-cluster", || format!("{name}={peer_url}")),
            ttl_keys_directory: self.get_or("--ttl-keys-directory", || format!("{data_prefix}/events")),
            data_prefix,
            extra_args: self
                .get("--etcd-server-extra-args")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect(),
            storage_media_type: self.get_or("--storage-media-type", || DEFAULT_MEDIA_TYPE.into()),
            log_format: format("--log-format")?,
            output: format("--output")?,
            migrate_only: self.values.contains_key("--migrate-only"),
            backup_dir: self
                .get("--backup-dir")
                .map(PathBuf::from)
                .unwrap_or_else(|| default_backup_dir(&data_dir)),
            backup_retention: self
                .parsed("--backup-retention", |v| match v.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(format!("{v:?} is not a whole number of at least 1")),
                })?
                .unwrap_or(3),
            ttl_lease_duration: self
                .parsed("--ttl-lease-duration", parse_duration)?
                .unwrap_or(Duration::from_secs(3600)),
            health_timeout: self
                .parsed("--health-timeout", parse_duration)?
                .unwrap_or(Duration::from_secs(300)),
            stop_grace: self.parsed("--stop-grace", parse_duration)?.unwrap_or(Duration::from_secs(10)),
            downgrade_method: self
                .parsed("--downgrade-method", |v| match v {
                    "auto" => Ok(DowngradeMethod::Auto),
                    "snapshot" => Ok(DowngradeMethod::Snapshot),
                    "logical" => Ok(DowngradeMethod::Logical),
                    _ => Err(format!("{v:?} is not auto, snapshot or logical")),
                })?
                .unwrap_or(DowngradeMethod::Auto),
            assume_current: self
                .parsed("--assume-current-version", |v| v.parse::<EtcdState>().map_err(|e| e.to_string()))?,
            name,
            bin_dir,
            data_dir,
            etcd_args,
        })
    }
}

impl Config {
    /// The target, which every command but `status` requires (checked at parse time).
    pub fn target(&self) -> EtcdState {
        self.target.expect("the parser requires a target for this command")
    }

    /// Whether this member has peers (more than one member in the initial cluster).
    pub fn is_cluster_member(&self) -> bool {
        self.initial_cluster.split(',').filter(|m| !m.trim().is_empty()).count() > 1
    }

    pub fn etcd_binary(&self, version: Version) -> PathBuf {
        self.bin_dir.join(format!("etcd-{version}"))
    }

    pub fn etcdctl_binary(&self, version: Version) -> PathBuf {
        self.bin_dir.join(format!("etcdctl-{version}"))
    }
}

/// Backups sit beside the data dir, so a pod that mounts the data dir's parent keeps them.
fn default_backup_dir(data_dir: &Path) -> PathBuf {
    match data_dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn parse_version_list(list: &str) -> Result<Vec<Version>, String> {
    let mut versions = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<Version>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    versions.sort();
    versions.dedup();
    Ok(versions)
}

fn parse_port(value: &str) -> Result<u16, String> {
    value.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{value:?} is not a port"))
}

/// `90`, `90s`, `5m`, `1h`, `250ms`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| format!("{value:?} is not a duration like 90s, 5m or 1h"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(number),
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return Err(format!("{value:?} is not a duration like 90s, 5m or 1h")),
    };
    if duration.is_zero() { Err(format!("{value:?} must be longer than zero")) } else { Ok(duration) }
}

/// Every `etcd-X.Y.Z` in the bin dir.
pub fn scan_bin_dir(bin_dir: &Path) -> Result<Vec<Version>, ConfigError> {
    let entries = std::fs::read_dir(bin_dir)
        .map_err(|e| ConfigError::BinDir { dir: bin_dir.to_path_buf(), message: e.to_string() })?;
    let mut versions: Vec<Version> = entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().to_str()?.strip_prefix("etcd-")?.parse().ok())
        .collect();
    versions.sort();
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn run(args: &[&str], env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        match parse(&args, env)? {
            Invocation::Run(config) => Ok(*config),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    const BASE: &[(&str, &str)] = &[
        ("DATA_DIRECTORY", "/var/etcd/data"),
        ("TARGET_VERSION", "3.5.16"),
        ("BUNDLED_VERSIONS", "3.4.23,3.5.16"),
    ];

    #[test]
    fn environment_gives_the_kubernetes_defaults() {
        let mut vars = env(BASE);
        vars.insert("HOSTNAME".into(), "node1".into());
        let config = run(&[], &vars).unwrap();
        assert_eq!(config.command, Command::Migrate);
        assert_eq!(config.target(), "3.5.16/etcd3".parse().unwrap());
        assert_eq!(config.name, "etcd-node1");
        assert_eq!(config.listen_client_urls, "http://127.0.0.1:18629");
        assert_eq!(config.listen_peer_urls, "http://localhost:2380");
        assert_eq!(config.initial_cluster, "etcd-node1=http://localhost:2380");
        assert_eq!(config.ttl_keys_directory, "/registry/events");
        assert_eq!(config.storage_media_type, DEFAULT_MEDIA_TYPE);
        assert_eq!(config.backup_dir, PathBuf::from("/var/etcd"));
        assert_eq!(config.bundled, vec![Version::new(3, 4, 23), Version::new(3, 5, 16)]);
        assert_eq!(config.ttl_lease_duration, Duration::from_secs(3600));
        assert_eq!(config.downgrade_method, DowngradeMethod::Auto);
    }

    #[test]
    fn flags_win_over_environment_and_etcd_args_pass_through() {
        let mut vars = env(BASE);
        vars.insert("ETCD_HOSTNAME".into(), "ignored".into());
        vars.insert("ETCD_CREDS".into(), "--cert-file=/c  --key-file /k".into());
        let config = run(
            &[
                "--data-dir",
                "/d/events",
                "--target-version=3.4.23",
                "--name",
                "m1",
                "--migrate-only",
                "--downgrade-method=logical",
                "--",
                "--foo",
                "x",
            ],
            &vars,
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/d/events"));
        assert_eq!(config.target().version, Version::new(3, 4, 23));
        assert_eq!(config.name, "m1");
        assert!(config.migrate_only);
        assert_eq!(config.downgrade_method, DowngradeMethod::Logical);
        assert_eq!(config.listen_client_urls, "http://127.0.0.1:18631");
        assert_eq!(config.listen_peer_urls, "http://localhost:2381");
        assert_eq!(config.extra_args, ["--cert-file=/c", "--key-file", "/k"]);
        assert_eq!(config.etcd_args, ["--foo", "x"]);
    }

    #[test]
    fn bad_configuration_names_the_option() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[], &[("TARGET_VERSION", "3.5.16")], "--data-dir"),
            (&["--data-dir", "/d"], &[], "--target-version"),
            (&["--target-version", "3.5"], BASE, "--target-version"),
            (&["--target-storage", "etcd4"], BASE, "--target-storage"),
            (&["--port", "http"], BASE, "--port"),
            (&["--bogus"], BASE, "--bogus"),
            (&["--backup-retention", "0"], BASE, "--backup-retention"),
            (&["--ttl-lease-duration", "1d"], BASE, "--ttl-lease-duration"),
            (&["--log-format", "xml"], BASE, "--log-format"),
            (&["--downgrade-method", "rsync"], BASE, "--downgrade-method"),
            (&["--name"], BASE, "--name"),
            (&["--assume-current-version", "3.4.23"], BASE, "--assume-current-version"),
        ];
        for (args, vars, names) in cases {
            let err = run(args, &env(vars)).unwrap_err();
            assert!(err.to_string().contains(names), "{args:?}: {err}");
        }
    }

    #[test]
    fn status_needs_no_target() {
        let config = run(&["status", "--data-dir", "/d", "--bundled-versions", "3.5.16"], &env(&[])).unwrap();
        assert_eq!(config.command, Command::Status);
        assert_eq!(config.target, None);
        let config = run(&["--data-dir", "/d", "plan"], &env(BASE)).unwrap();
        assert_eq!(config.command, Command::Plan);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn every_option_is_listed_with_its_environment_variable() {
        let listed = list_options();
        assert!(listed.contains("--data-dir DATA_DIRECTORY\n"));
        assert!(listed.contains("--etcd-server-extra-args ETCD_CREDS\n"));
        assert!(listed.contains("--bin-dir -\n"));
        assert_eq!(listed.lines().count(), OPTIONS.len());
    }
}
