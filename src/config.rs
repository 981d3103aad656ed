//! Configuration, in two stages (after ripgrep's low and high args).
//!
//! 1. [`parse`]: clap reads the command line and, for each option, the environment variable the
//!    Kubernetes etcd image used, and fills in each default. That one definition also makes `--help` and
//!    `--list-options` (which the manifest tests check against). Nothing else is read; paths stay
//!    `PathBuf` and etcd's own flags `OsString`.
//! 2. [`resolve`]: the I/O and the derived values, once: the bundled releases ([`Bundle`]), the
//!    [`Target`] against them, where backups go (`backup::policy`, which reads the mounts), whether this
//!    is a member of a cluster, the hostname behind the default member name, the hidden etcd's ports, URLs
//!    and flags. Another front end can build [`Args`] its own way and resolve it the same.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::{PossibleValue, RangedU64ValueParser};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::backup::{self, BackupPolicy};
use crate::bundle::{Bundle, BundleError};
use crate::client::TlsFiles;
use crate::cluster::{self, Peer};
use crate::etcd_flags;
use crate::version::{EtcdState, Storage, Version};

const DEFAULT_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The hidden etcd's ports. Kubernetes runs a second etcd for events, whose data dir path contains
/// [`EVENTS_MARKER`]; it gets a pair of its own so that both can migrate on one node at once.
struct Ports {
    client: u16,
    peer: u16,
}

const PORTS: Ports = Ports { client: 18629, peer: 2380 };
const EVENTS_PORTS: Ports = Ports { client: 18631, peer: 2381 };
const EVENTS_MARKER: &str = "event";

const EXIT_CODES: &str = "exit codes: 0 done, 1 failed after changing the data dir, 2 changed nothing (bad configuration or input)";

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Migrate, then exec the target etcd (or exit with `--migrate-only`): what runs without a subcommand.
    #[command(skip)]
    Migrate,
    /// Print the steps a migration would take; change nothing
    Plan,
    /// Print what is known about the data dir
    Status,
    /// List the bundled etcd releases and their tools; exit 1 if one (of VERSIONS, if given) lacks a tool
    Releases {
        /// Only these releases
        #[arg(value_name = "X.Y.Z")]
        versions: Vec<Version>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// How a 3.x downgrade rebuilds the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DowngradeMethod {
    /// Snapshot restore (keeps revisions), falling back to a logical copy if that fails
    Auto,
    /// Snapshot restore only
    Snapshot,
    /// Every key and lease copied through the API into a fresh member (revisions start over)
    Logical,
}

impl ValueEnum for Storage {
    fn value_variants<'a>() -> &'a [Self] {
        &[Storage::Etcd2, Storage::Etcd3]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// Versions given as one value, `3.4.23,3.5.16` or `3.4.23 3.5.16`. An alias rather than `Vec<Version>`
/// written out, because clap's derive reads a literal `Vec` as an option given several times.
pub type VersionList = Vec<Version>;

/// Migrates etcd data to TARGET_VERSION/TARGET_STORAGE, then execs etcd
// Stage 1: what the operator typed, with the environment and the defaults filled in. (The doc line
// above is the --help text.) Parse with `parse`, not clap's `Parser::parse`, which would skip
// `command()`'s adjustments.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "etcd-migrate",
    version,
    args_override_self = true, // a repeated option: the last one wins
    disable_help_subcommand = true,
    after_help = EXIT_CODES
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// etcd data directory (required)
    #[arg(long, env = "DATA_DIRECTORY", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// etcd version to end at (required, but not by status)
    #[arg(long, env = "TARGET_VERSION", value_name = "X.Y.Z")]
    pub target_version: Option<Version>,

    /// Storage to end at
    #[arg(long, env = "TARGET_STORAGE", value_enum, default_value = "etcd3")]
    pub target_storage: Storage,

    /// Directory holding etcd-X.Y.Z and etcdctl-X.Y.Z
    #[arg(long, value_name = "DIR", default_value = "/usr/local/bin")]
    pub bin_dir: PathBuf,

    /// Versions to use, comma or space separated [default: every etcd-X.Y.Z in the bin dir]
    #[arg(long, env = "BUNDLED_VERSIONS", value_name = "VERSIONS", value_parser = parse_version_list)]
    pub bundled_versions: Option<VersionList>,

    /// Member name [default: etcd-$ETCD_HOSTNAME, else etcd-$HOSTNAME, else etcd-<hostname>]
    #[arg(long, env = "ETCD_NAME")]
    pub name: Option<String>,

    #[arg(
        long,
        value_parser = clap::value_parser!(u16).range(1..),
        help = format!(
            "Hidden etcd's client port [default: {}; {} when the data dir path contains \"{EVENTS_MARKER}\"]",
            PORTS.client, EVENTS_PORTS.client
        )
    )]
    pub port: Option<u16>,

    #[arg(
        long,
        value_parser = clap::value_parser!(u16).range(1..),
        help = format!("Peer port [default: {}; {} likewise]", PORTS.peer, EVENTS_PORTS.peer)
    )]
    pub peer_port: Option<u16>,

    /// Hidden etcd's client URLs [default: http://127.0.0.1:<port>]
    #[arg(long, env = "LISTEN_CLIENT_URLS", value_name = "URLS")]
    pub listen_client_urls: Option<String>,

    /// Peer URLs [default: http://localhost:<peer-port>]
    #[arg(long, env = "LISTEN_PEER_URLS", value_name = "URLS")]
    pub listen_peer_urls: Option<String>,

    /// Advertised peer URLs [default: http://localhost:<peer-port>]
    #[arg(long, env = "INITIAL_ADVERTISE_PEER_URLS", value_name = "URLS")]
    pub initial_advertise_peer_urls: Option<String>,

    /// Initial cluster [default: <name>=http://localhost:<peer-port>]
    #[arg(long, env = "INITIAL_CLUSTER", value_name = "CLUSTER")]
    pub initial_cluster: Option<String>,

    /// Key prefix of the Kubernetes data
    #[arg(
        long = "etcd-data-prefix",
        env = "ETCD_DATA_PREFIX",
        value_name = "PREFIX",
        default_value = "/registry"
    )]
    pub data_prefix: String,

    /// Keys whose TTLs become leases [default: <prefix>/events]
    #[arg(long, env = "TTL_KEYS_DIRECTORY", value_name = "PREFIX")]
    pub ttl_keys_directory: Option<String>,

    /// Extra flags for the hidden etcd, e.g. TLS, split at whitespace
    #[arg(long, env = "ETCD_CREDS", value_name = "FLAGS", allow_hyphen_values = true)]
    pub etcd_server_extra_args: Option<OsString>,

    /// One more flag for the hidden etcd, kept whole (a path may hold spaces); repeatable
    #[arg(long = "etcd-server-arg", value_name = "FLAG", allow_hyphen_values = true)]
    pub etcd_server_args: Vec<OsString>,

    /// How the API server stores objects
    #[arg(long, env = "STORAGE_MEDIA_TYPE", value_name = "TYPE", default_value = DEFAULT_MEDIA_TYPE)]
    pub storage_media_type: String,

    /// Log format (stderr)
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: Format,

    /// Output format of plan, status and releases
    #[arg(long, value_enum, default_value = "text")]
    pub output: Format,

    /// Where backups go [default: the data dir's parent; <data-dir>/.etcd-migrate/backups when that parent
    /// is on another mount]
    #[arg(long, env = "BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,

    /// Backups of this data dir to keep
    #[arg(
        long,
        env = "BACKUP_RETENTION",
        value_name = "N",
        default_value = "3",
        value_parser = RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub backup_retention: usize,

    /// Longest lease for converted TTL keys
    #[arg(long, env = "TTL_LEASE_DURATION", value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    pub ttl_lease_duration: Duration,

    /// How long a hidden etcd may take to become healthy
    #[arg(long, env = "HEALTH_TIMEOUT", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub health_timeout: Duration,

    /// SIGTERM to SIGKILL grace for a hidden etcd
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub stop_grace: Duration,

    /// How a 3.x downgrade rebuilds the member: auto is a snapshot restore, else a logical copy
    #[arg(long, env = "DOWNGRADE_METHOD", value_enum, default_value = "auto")]
    pub downgrade_method: DowngradeMethod,

    /// Version and storage of data that has no version.txt
    #[arg(long = "assume-current-version", env = "ASSUME_CURRENT_VERSION", value_name = "X.Y.Z/etcdN")]
    pub assume_current: Option<EtcdState>,

    /// Migrate, then exit 0 instead of exec'ing etcd
    #[arg(long)]
    pub migrate_only: bool,

    /// Print each option and its environment variable, one per line
    #[arg(long)]
    pub list_options: bool,

    /// Flags for the final etcd
    #[arg(last = true, value_name = "ETCD_ARGS")]
    pub etcd_args: Vec<OsString>,
}

/// The parser: [`Args`] with every option allowed before or after `plan`/`status`, and an empty
/// environment variable counted as unset, as the Kubernetes image did (its manifests set empty ones;
/// clap would take the empty string as the value).
fn command() -> clap::Command {
    Args::command().mut_args(|arg| {
        let arg = arg.global(true);
        let empty = arg.get_env().and_then(std::env::var_os).is_some_and(|value| value.is_empty());
        if empty { arg.env(None::<&'static str>) } else { arg }
    })
}

/// Stage 1: the arguments (without the program name) and the options' environment variables, nothing
/// else. An error is clap's: it carries the exit code (0 after `--help` and `--version`, 2 for bad usage).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Args, clap::Error> {
    let argv = std::iter::once(OsString::from("etcd-migrate")).chain(args);
    let matches = command().try_get_matches_from(argv)?;
    Args::from_arg_matches(&matches)
}

/// A usage error as one line: what is wrong, the accepted values if clap lists them, and where to look.
/// clap's own rendering spreads that over several lines around a usage block.
pub fn usage_error(error: &clap::Error) -> String {
    let rendered = error.to_string();
    let detail: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect();
    format!("{}: see --help", detail.join(" ").trim_start_matches("error: "))
}

/// Every option's flag and its environment variable (`-` for none), one per line.
pub fn list_options() -> String {
    let mut command = Args::command();
    command.build();
    command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env().and_then(|env| env.to_str()).unwrap_or("-");
            Some(format!("--{} {env}\n", arg.get_long()?))
        })
        .collect()
}

/// Everything a run needs: stage 2's result.
#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    pub data_dir: PathBuf,
    /// Every command but `status` has one (checked by [`resolve`]).
    pub target: Option<Target>,
    pub bundle: Bundle,
    pub name: String,
    pub listen_client_urls: String,
    pub listen_peer_urls: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster: String,
    /// The other members of `initial_cluster`: a member with any is a member of a cluster.
    pub peers: Vec<Peer>,
    /// The TLS files of the member's peer URL (`extra_args`), for asking its peers. (The hidden etcd's
    /// client URL is secured by the run's authority, `run_ca`.)
    pub peer_tls: TlsFiles,
    pub data_prefix: String,
    pub ttl_keys_directory: String,
    /// The hidden etcd's own flags (`ETCD_CREDS`, then each `--etcd-server-arg`).
    pub extra_args: Vec<OsString>,
    pub storage_media_type: String,
    pub log_format: Format,
    pub output: Format,
    pub migrate_only: bool,
    /// Where backups go and how many are kept (`backup::policy`).
    pub backup: BackupPolicy,
    pub ttl_lease_duration: Duration,
    pub health_timeout: Duration,
    pub stop_grace: Duration,
    pub downgrade_method: DowngradeMethod,
    pub assume_current: Option<EtcdState>,
    /// The operator's flags for the final etcd, everything after `--`.
    pub etcd_args: Vec<OsString>,
}

/// The target of a run, resolved once: as asked, and as it will be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub asked: EtcdState,
    /// `asked`, or the newest bundled patch of its minor when that patch is not bundled, since
    /// Kubernetes' manifests template the version and the image separately. (No bundled patch at all:
    /// the planner refuses.)
    pub state: EtcdState,
}

impl Target {
    fn resolve(asked: EtcdState, bundle: &Bundle) -> Target {
        let state = match bundle.versions().contains(&asked.version) {
            true => asked,
            false => EtcdState::new(
                bundle.newest_patch(asked.version.minor()).unwrap_or(asked.version),
                asked.storage,
            ),
        };
        Target { asked, state }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is required: set the flag or its environment variable")]
    Missing(&'static str),
    #[error("{option}: {message}")]
    Invalid { option: &'static str, message: String },
    #[error(transparent)]
    BinDir(#[from] BundleError),
    #[error("cannot make the default member name: {0}: set --name (ETCD_NAME)")]
    Hostname(String),
}

/// Stage 2: checks what is required, scans the bin dir unless the versions were given, resolves the
/// target against it, and derives the member name (from `env`'s `ETCD_HOSTNAME` or `HOSTNAME`, else the
/// hostname), ports, URLs and where backups go. (`releases` needs only the bundle: [`Bundle::resolve`].)
pub fn resolve(args: Args, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let command = args.command.unwrap_or(Command::Migrate);
    let data_dir = args.data_dir.ok_or(ConfigError::Missing("--data-dir (DATA_DIRECTORY)"))?;
    let bundle = Bundle::resolve(&args.bin_dir, args.bundled_versions)?;
    let target = match (&command, args.target_version) {
        (_, Some(version)) => Some(Target::resolve(EtcdState::new(version, args.target_storage), &bundle)),
        (Command::Status, None) => None,
        (_, None) => return Err(ConfigError::Missing("--target-version (TARGET_VERSION)")),
    };
    let ports = if is_events_data_dir(&data_dir) { EVENTS_PORTS } else { PORTS };
    let port = args.port.unwrap_or(ports.client);
    let peer_url = format!("http://localhost:{}", args.peer_port.unwrap_or(ports.peer));
    let name = match args.name {
        Some(name) => name,
        None => format!("etcd-{}", hostname(env)?),
    };
    let extra_args: Vec<OsString> =
        etcd_flags::split_at_whitespace(&args.etcd_server_extra_args.unwrap_or_default())
            .into_iter()
            .chain(args.etcd_server_args)
            .collect();
    let initial_cluster = args.initial_cluster.unwrap_or_else(|| format!("{name}={peer_url}"));
    Ok(Config {
        command,
        target,
        bundle,
        peers: cluster::peers(&initial_cluster, &name),
        initial_cluster,
        peer_tls: TlsFiles::peer_from_etcd_args(&extra_args),
        extra_args,
        listen_client_urls: args.listen_client_urls.unwrap_or_else(|| format!("http://127.0.0.1:{port}")),
        listen_peer_urls: args.listen_peer_urls.unwrap_or_else(|| peer_url.clone()),
        initial_advertise_peer_urls: args.initial_advertise_peer_urls.unwrap_or_else(|| peer_url.clone()),
        ttl_keys_directory: args.ttl_keys_directory.unwrap_or_else(|| format!("{}/events", args.data_prefix)),
        data_prefix: args.data_prefix,
        storage_media_type: args.storage_media_type,
        log_format: args.log_format,
        output: args.output,
        migrate_only: args.migrate_only,
        backup: backup::policy(&data_dir, args.backup_dir, args.backup_retention),
        ttl_lease_duration: args.ttl_lease_duration,
        health_timeout: args.health_timeout,
        stop_grace: args.stop_grace,
        downgrade_method: args.downgrade_method,
        assume_current: args.assume_current,
        name,
        data_dir,
        etcd_args: args.etcd_args,
    })
}

impl Config {
    /// Whether this member has peers.
    pub fn is_cluster_member(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The state a run ends at (see [`Target`]).
    pub fn target(&self) -> EtcdState {
        self.target.expect("resolve requires a target for this command").state
    }
}

fn is_events_data_dir(data_dir: &Path) -> bool {
    data_dir
        .as_os_str()
        .as_encoded_bytes()
        .windows(EVENTS_MARKER.len())
        .any(|w| w == EVENTS_MARKER.as_bytes())
}

/// `ETCD_HOSTNAME`, else `HOSTNAME` (empty ones count as unset, as in the manifests), else the kernel's.
fn hostname(env: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    if let Some(host) =
        ["ETCD_HOSTNAME", "HOSTNAME"].into_iter().find_map(|var| env(var).filter(|h| !h.is_empty()))
    {
        return Ok(host);
    }
    let host = nix::unistd::gethostname().map_err(|e| ConfigError::Hostname(e.to_string()))?;
    host.into_string().map_err(|host| ConfigError::Hostname(format!("hostname {host:?} is not UTF-8")))
}

pub fn parse_version_list(list: &str) -> Result<VersionList, String> {
    let mut versions = list
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|v| !v.is_empty())
        .map(|v| v.parse::<Version>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    versions.sort();
    versions.dedup();
    Ok(versions)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};

    use super::*;

    const CHILD: &str = "ETCD_MIGRATE_CONFIG_TEST_CHILD";

    /// clap reads the options' environment variables from this process, which the tests share (and
    /// changing it under other threads is unsound). So a test that parses runs `body` in a child: this test
    /// binary again, on that one test, with exactly `vars` as its environment.
    fn in_environment(test: &str, vars: &[(&str, &str)], body: impl FnOnce()) {
        if std::env::var_os(CHILD).is_some() {
            return body();
        }
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args([&format!("config::tests::{test}"), "--exact", "--nocapture"])
            .env_clear()
            .env(CHILD, "1")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{test} in its own environment:\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn os_args<T: Into<OsString>>(args: impl IntoIterator<Item = T>) -> Vec<OsString> {
        args.into_iter().map(Into::into).collect()
    }

    /// Both stages, as `main` runs them.
    fn config(args: &[&str]) -> Result<Config, String> {
        let args = parse(os_args(args)).map_err(|e| usage_error(&e))?;
        resolve(args, |var| std::env::var(var).ok()).map_err(|e| e.to_string())
    }

    const BASE: &[(&str, &str)] = &[
        ("DATA_DIRECTORY", "/var/etcd/data"),
        ("TARGET_VERSION", "3.5.16"),
        ("BUNDLED_VERSIONS", "3.4.23, 3.5.16"),
        ("HOSTNAME", "node1"),
    ];

    #[test]
    fn environment_gives_the_kubernetes_defaults() {
        in_environment("environment_gives_the_kubernetes_defaults", BASE, || {
            let config = config(&[]).unwrap();
            assert_eq!(config.command, Command::Migrate);
            assert_eq!(config.target(), "3.5.16/etcd3".parse().unwrap());
            assert_eq!(config.bundle.dir(), Path::new("/usr/local/bin"));
            assert_eq!(config.bundle.versions(), [Version::new(3, 4, 23), Version::new(3, 5, 16)]);
            assert_eq!(config.name, "etcd-node1");
            assert_eq!(config.listen_client_urls, "http://127.0.0.1:18629");
            assert_eq!(config.listen_peer_urls, "http://localhost:2380");
            assert_eq!(config.initial_advertise_peer_urls, "http://localhost:2380");
            assert_eq!(config.initial_cluster, "etcd-node1=http://localhost:2380");
            assert_eq!(config.data_prefix, "/registry");
            assert_eq!(config.ttl_keys_directory, "/registry/events");
            assert!(config.extra_args.is_empty());
            assert_eq!(config.storage_media_type, DEFAULT_MEDIA_TYPE);
            assert_eq!((config.log_format, config.output), (Format::Text, Format::Text));
            assert_eq!(config.backup.backup_dir, Path::new("/var/etcd"), "beside the data dir");
            assert_eq!(config.backup.retention, 3);
            assert_eq!(config.ttl_lease_duration, Duration::from_secs(3600));
            assert_eq!(config.health_timeout, Duration::from_secs(300));
            assert_eq!(config.stop_grace, Duration::from_secs(10));
            assert_eq!(config.downgrade_method, DowngradeMethod::Auto);
            assert_eq!(config.assume_current, None);
            assert!(!config.migrate_only);
            assert!(config.etcd_args.is_empty());
        });
    }

    #[test]
    fn every_environment_variable_is_read() {
        let vars = [
            ("DATA_DIRECTORY", "/var/etcd/data-events"),
            ("TARGET_VERSION", "3.4.23"),
            ("TARGET_STORAGE", "etcd2"),
            ("BUNDLED_VERSIONS", "3.4.23"),
            ("ETCD_NAME", "m0"),
            ("LISTEN_CLIENT_URLS", "http://127.0.0.1:1"),
            ("LISTEN_PEER_URLS", "http://127.0.0.1:2"),
            ("INITIAL_ADVERTISE_PEER_URLS", "http://m0:2"),
            ("INITIAL_CLUSTER", "m0=http://m0:2,m1=http://m1:2"),
            ("ETCD_DATA_PREFIX", "/k8s"),
            ("TTL_KEYS_DIRECTORY", "/k8s/ev"),
            ("ETCD_CREDS", "--cert-file=/c  --key-file /k"),
            ("STORAGE_MEDIA_TYPE", "application/json"),
            ("BACKUP_DIR", "/backups"),
            ("BACKUP_RETENTION", "5"),
            ("TTL_LEASE_DURATION", "2h"),
            ("HEALTH_TIMEOUT", "90s"),
            ("DOWNGRADE_METHOD", "logical"),
            ("ASSUME_CURRENT_VERSION", "3.4.23/etcd3"),
        ];
        in_environment("every_environment_variable_is_read", &vars, || {
            let config = config(&[]).unwrap();
            assert_eq!(config.data_dir, PathBuf::from("/var/etcd/data-events"));
            assert_eq!(config.target(), "3.4.23/etcd2".parse().unwrap());
            assert_eq!(config.bundle.versions(), [Version::new(3, 4, 23)]);
            assert_eq!(config.name, "m0");
            assert_eq!(config.listen_client_urls, "http://127.0.0.1:1");
            assert_eq!(config.listen_peer_urls, "http://127.0.0.1:2");
            assert_eq!(config.initial_advertise_peer_urls, "http://m0:2");
            assert!(config.is_cluster_member());
            assert_eq!(config.data_prefix, "/k8s");
            assert_eq!(config.ttl_keys_directory, "/k8s/ev");
            assert_eq!(config.extra_args, ["--cert-file=/c", "--key-file", "/k"]);
            assert_eq!(config.storage_media_type, "application/json");
            assert_eq!(config.backup.backup_dir, Path::new("/backups"));
            assert_eq!(config.backup.retention, 5);
            assert_eq!(config.ttl_lease_duration, Duration::from_secs(7200));
            assert_eq!(config.health_timeout, Duration::from_secs(90));
            assert_eq!(config.downgrade_method, DowngradeMethod::Logical);
            assert_eq!(config.assume_current, Some("3.4.23/etcd3".parse().unwrap()));
        });
    }

    #[test]
    fn empty_environment_variables_count_as_unset() {
        let vars = [
            ("DATA_DIRECTORY", "/var/etcd/data"),
            ("TARGET_VERSION", "3.5.16"),
            ("BUNDLED_VERSIONS", "3.5.16"),
            ("TARGET_STORAGE", ""),
            ("ETCD_NAME", ""),
            ("ETCD_HOSTNAME", ""),
            ("HOSTNAME", "node1"),
            ("LISTEN_CLIENT_URLS", ""),
            ("INITIAL_CLUSTER", ""),
            ("ETCD_CREDS", ""),
            ("BACKUP_DIR", ""),
            ("BACKUP_RETENTION", ""),
            ("HEALTH_TIMEOUT", ""),
            ("DOWNGRADE_METHOD", ""),
            ("ASSUME_CURRENT_VERSION", ""),
        ];
        in_environment("empty_environment_variables_count_as_unset", &vars, || {
            let config = config(&[]).unwrap();
            assert_eq!(config.target(), "3.5.16/etcd3".parse().unwrap());
            assert_eq!(config.name, "etcd-node1");
            assert_eq!(config.listen_client_urls, "http://127.0.0.1:18629");
            assert_eq!(config.initial_cluster, "etcd-node1=http://localhost:2380");
            assert!(config.extra_args.is_empty());
            assert_eq!(config.backup.backup_dir, Path::new("/var/etcd"), "beside the data dir");
            assert_eq!(config.backup.retention, 3);
            assert_eq!(config.health_timeout, Duration::from_secs(300));
            assert_eq!(config.downgrade_method, DowngradeMethod::Auto);
            assert_eq!(config.assume_current, None);
        });
    }

    #[test]
    fn flags_win_over_environment_and_etcd_args_pass_through() {
        let vars = [BASE, &[("ETCD_NAME", "ignored"), ("ETCD_CREDS", "--ignored")]].concat();
        in_environment("flags_win_over_environment_and_etcd_args_pass_through", &vars, || {
            let config = config(&[
                "--data-dir",
                "/d/events",
                "--target-version=3.4.23",
                "--name",
                "m0",
                "--name",
                "m1",
                "--etcd-server-extra-args",
                "--cert-file=/c --key-file /k",
                "--etcd-server-arg=--peer-cert-file=/a b",
                "--migrate-only",
                "--downgrade-method=logical",
                "--",
                "--foo",
                "x",
            ])
            .unwrap();
            assert_eq!(config.data_dir, PathBuf::from("/d/events"));
            assert_eq!(config.target().version, Version::new(3, 4, 23));
            assert_eq!(config.name, "m1");
            assert_eq!(config.extra_args, ["--cert-file=/c", "--key-file", "/k", "--peer-cert-file=/a b"]);
            assert!(config.migrate_only);
            assert_eq!(config.downgrade_method, DowngradeMethod::Logical);
            assert_eq!(config.listen_client_urls, "http://127.0.0.1:18631");
            assert_eq!(config.listen_peer_urls, "http://localhost:2381");
            assert_eq!(config.etcd_args, ["--foo", "x"]);
        });
    }

    #[test]
    fn subcommands_come_before_or_after_the_options_and_status_needs_no_target() {
        let vars = [("BUNDLED_VERSIONS", "3.5.16"), ("HOSTNAME", "node1")];
        in_environment(
            "subcommands_come_before_or_after_the_options_and_status_needs_no_target",
            &vars,
            || {
                let status = config(&["status", "--data-dir", "/d"]).unwrap();
                assert_eq!((&status.command, status.target), (&Command::Status, None));
                let plan =
                    config(&["--data-dir", "/d", "plan", "--target-version", "3.5.16", "--", "--x"]).unwrap();
                assert_eq!(plan.command, Command::Plan);
                assert_eq!(plan.target(), "3.5.16/etcd3".parse().unwrap());
                assert_eq!(plan.etcd_args, ["--x"]);
            },
        );
    }

    #[test]
    fn a_missing_data_dir_or_target_is_named_with_its_variable() {
        let vars = [("DATA_DIRECTORY", ""), ("BUNDLED_VERSIONS", "3.5.16"), ("HOSTNAME", "node1")];
        in_environment("a_missing_data_dir_or_target_is_named_with_its_variable", &vars, || {
            let missing_dir = config(&["--target-version", "3.5.16"]).unwrap_err();
            assert!(missing_dir.starts_with("--data-dir (DATA_DIRECTORY) is required"), "{missing_dir}");
            let missing_target = config(&["plan", "--data-dir", "/d"]).unwrap_err();
            assert!(
                missing_target.starts_with("--target-version (TARGET_VERSION) is required"),
                "{missing_target}"
            );
        });
    }

    #[test]
    fn bad_usage_is_one_line_naming_the_option_and_exits_2() {
        in_environment("bad_usage_is_one_line_naming_the_option_and_exits_2", BASE, || {
            let cases: &[(&[&str], &str)] = &[
                (&["--target-version", "3.5"], "--target-version"),
                (&["--target-storage", "etcd4"], "etcd2, etcd3"),
                (&["--port", "http"], "--port"),
                (&["--peer-port", "0"], "--peer-port"),
                (&["--bogus"], "--bogus"),
                (&["--backup-retention", "0"], "--backup-retention"),
                (&["--ttl-lease-duration", "1d"], "--ttl-lease-duration"),
                (&["--log-format", "xml"], "text, json"),
                (&["--downgrade-method", "rsync"], "auto, snapshot, logical"),
                (&["--bundled-versions", "3.5.16,latest"], "--bundled-versions"),
                (&["--name"], "--name"),
                (&["--assume-current-version", "3.4.23"], "--assume-current-version"),
                (&["migrate"], "'migrate'"),
            ];
            for (args, names) in cases {
                let error = parse(os_args(*args)).unwrap_err();
                let line = usage_error(&error);
                assert!(line.contains(names) && line.ends_with(": see --help"), "{args:?}: {line}");
                assert!(!line.contains('\n'), "{args:?}: {line}");
                assert_eq!((error.use_stderr(), error.exit_code()), (true, 2), "{args:?}");
            }
            for informational in ["--help", "--version"] {
                let error = parse(os_args([informational])).unwrap_err();
                assert_eq!((error.use_stderr(), error.exit_code()), (false, 0), "{informational}");
            }
        });
    }

    #[test]
    fn paths_and_etcd_flags_keep_their_bytes() {
        in_environment("paths_and_etcd_flags_keep_their_bytes", BASE, || {
            let data_dir = OsString::from_vec(b"/var/etcd/\xffevents".to_vec());
            let flag = OsString::from_vec(b"--log-dir=/\xfe".to_vec());
            let args =
                parse(os_args([OsString::from("--data-dir"), data_dir.clone(), "--".into(), flag.clone()]));
            let config = resolve(args.unwrap(), |var| std::env::var(var).ok()).unwrap();
            assert_eq!(config.data_dir.as_os_str().as_bytes(), data_dir.as_bytes());
            assert_eq!(config.listen_client_urls, "http://127.0.0.1:18631");
            assert_eq!(config.etcd_args, [flag]);
        });
    }

    #[test]
    fn bundled_versions_default_to_the_etcd_binaries_in_the_bin_dir() {
        let vars = [("DATA_DIRECTORY", "/d"), ("TARGET_VERSION", "3.5.16"), ("HOSTNAME", "node1")];
        in_environment("bundled_versions_default_to_the_etcd_binaries_in_the_bin_dir", &vars, || {
            let temp = tempfile::tempdir().unwrap();
            let bin_dir = temp.path();
            for file in ["etcd-3.5.16", "etcd-3.4.23", "etcdctl-3.3.25", "etcd-notes"] {
                std::fs::write(bin_dir.join(file), "").unwrap();
            }
            let scanned = config(&["--bin-dir", bin_dir.to_str().unwrap()]).unwrap();
            assert_eq!(scanned.bundle.versions(), [Version::new(3, 4, 23), Version::new(3, 5, 16)]);
            let missing = config(&["--bin-dir", bin_dir.join("missing").to_str().unwrap()]).unwrap_err();
            assert!(missing.starts_with("cannot read bin dir"), "{missing}");
        });
    }

    #[test]
    fn the_default_name_comes_from_etcd_hostname_then_hostname_then_the_kernel() {
        let vars = [("DATA_DIRECTORY", "/d"), ("TARGET_VERSION", "3.5.16"), ("BUNDLED_VERSIONS", "3.5.16")];
        in_environment(
            "the_default_name_comes_from_etcd_hostname_then_hostname_then_the_kernel",
            &vars,
            || {
                let args = parse(os_args::<&str>([])).unwrap();
                let name = |pairs: &[(&str, &str)]| {
                    let env: HashMap<String, String> =
                        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                    resolve(args.clone(), |var| env.get(var).cloned()).unwrap().name
                };
                assert_eq!(name(&[("ETCD_HOSTNAME", "a"), ("HOSTNAME", "b")]), "etcd-a");
                assert_eq!(name(&[("ETCD_HOSTNAME", ""), ("HOSTNAME", "b")]), "etcd-b");
                let kernel = nix::unistd::gethostname().unwrap().into_string().unwrap();
                assert_eq!(name(&[("ETCD_HOSTNAME", ""), ("HOSTNAME", "")]), format!("etcd-{kernel}"));
            },
        );
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
        for line in
            ["--data-dir DATA_DIRECTORY", "--etcd-server-extra-args ETCD_CREDS", "--bin-dir -", "--help -"]
        {
            assert!(listed.lines().any(|l| l == line), "{line} in\n{listed}");
        }
        let variables: Vec<&str> =
            listed.lines().filter_map(|l| l.split_once(' ')).map(|(_, env)| env).collect();
        for var in [
            "DATA_DIRECTORY",
            "TARGET_VERSION",
            "TARGET_STORAGE",
            "BUNDLED_VERSIONS",
            "ETCD_NAME",
            "LISTEN_CLIENT_URLS",
            "LISTEN_PEER_URLS",
            "INITIAL_ADVERTISE_PEER_URLS",
            "INITIAL_CLUSTER",
            "ETCD_DATA_PREFIX",
            "TTL_KEYS_DIRECTORY",
            "ETCD_CREDS",
            "STORAGE_MEDIA_TYPE",
            "BACKUP_DIR",
            "BACKUP_RETENTION",
            "TTL_LEASE_DURATION",
            "HEALTH_TIMEOUT",
            "DOWNGRADE_METHOD",
            "ASSUME_CURRENT_VERSION",
        ] {
            assert!(variables.contains(&var), "{var} in\n{listed}");
        }
    }

    #[test]
    fn an_unbundled_target_patch_becomes_the_newest_bundled_patch_of_its_minor() {
        let config = |target: &str| {
            let args = ["--data-dir", "/d", "--name", "m", "--bundled-versions", "3.4.23,3.5.1,3.5.16"];
            let args =
                parse(args.into_iter().chain(["--target-version", target]).map(OsString::from)).unwrap();
            resolve(args, |_| None).unwrap()
        };
        for (asked, runs) in
            [("3.5.16", "3.5.16"), ("3.5.1", "3.5.1"), ("3.5.9", "3.5.16"), ("3.5.30", "3.5.16")]
        {
            assert_eq!(config(asked).target().version.to_string(), runs, "asked {asked}");
        }
        assert_eq!(
            config("3.6.14").target().version,
            Version::new(3, 6, 14),
            "no 3.6 bundled: left to the planner"
        );
    }
}
