//! One binary, several names: the image links it as `etcd`, `etcdctl`, `migrate` and
//! `migrate-if-needed.sh`, the paths Kubernetes' own etcd manifests call, and each name behaves as that
//! program did there. Any other name (`etcd-migrate`) is the migrator's own command line.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use crate::bundle::{Bundle, BundleError};
use crate::config::{self, ConfigError};
use crate::etcd_flags::{self, EtcdFlags};
use crate::version::Version;

/// What this binary was asked to be, by the name it was run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `etcd`: migrate as etcd's own flags say, then exec the target etcd with exactly those flags.
    Etcd,
    /// `migrate`, `migrate-if-needed.sh`: migrate and exit with the result, leaving the exec to the
    /// manifest's own command, as Kubernetes' script and its Go `migrate` did.
    Migrate,
    /// `etcdctl`: the etcdctl Kubernetes' image had at that path: `TARGET_VERSION`'s when its script
    /// would have copied it there (`DO_NOT_MOVE_BINARIES` not `true`), else the newest bundled one.
    Etcdctl,
    /// Any other name: the migrator's command line.
    Migrator,
}

pub fn role(argv0: &OsStr) -> Role {
    match Path::new(argv0).file_name().and_then(OsStr::to_str) {
        Some("etcd") => Role::Etcd,
        Some("migrate" | "migrate-if-needed.sh") => Role::Migrate,
        Some("etcdctl") => Role::Etcdctl,
        _ => Role::Migrator,
    }
}

/// What to do for a role: run the migrator with these arguments, or hand over to a bundled release.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// The migrator's command line. `verbatim`: exec the target etcd with exactly the arguments after
    /// `--` (the `etcd` name), rather than with `--data-dir` put first (the migrator's own form).
    Migrate { args: Vec<OsString>, verbatim: bool },
    /// Exec this bundled release with the arguments as given.
    Exec { binary: PathBuf, args: Vec<OsString> },
}

/// The action for `role`, given the arguments (without the program name), the environment and the
/// directory this binary runs from (the image's bin dir, beside the bundled releases).
pub fn action(
    role: Role,
    args: &[OsString],
    env: &HashMap<String, String>,
    bin_dir: &Path,
) -> Result<Action, ConfigError> {
    let bin_dir_flag = || [OsString::from("--bin-dir"), bin_dir.as_os_str().to_owned()];
    match role {
        Role::Migrator => Ok(Action::Migrate { args: args.to_vec(), verbatim: false }),
        Role::Migrate => {
            let mut migrator = bin_dir_flag().to_vec();
            migrator.push("--migrate-only".into());
            migrator.extend(args.iter().cloned());
            Ok(Action::Migrate { args: migrator, verbatim: false })
        }
        Role::Etcdctl => {
            let version = match moved_target(env, bin_dir) {
                Some(target) => target,
                None => newest_bundled(env, bin_dir)?,
            };
            Ok(Action::Exec { binary: bin_dir.join(format!("etcdctl-{version}")), args: args.to_vec() })
        }
        Role::Etcd => {
            let flags = EtcdFlags::read(args, env);
            if flags.only_asks_etcd() {
                let newest = newest_bundled(env, bin_dir)?;
                return Ok(Action::Exec {
                    binary: bin_dir.join(format!("etcd-{newest}")),
                    args: args.to_vec(),
                });
            }
            let mut migrator = bin_dir_flag().to_vec();
            let settings = [
                ("--data-dir", flags.data_dir().into_os_string()),
                ("--name", flags.name()),
                ("--listen-peer-urls", flags.listen_peer_urls()),
                ("--initial-advertise-peer-urls", flags.initial_advertise_peer_urls()),
                ("--initial-cluster", flags.initial_cluster()),
                // etcd's own flags alone say how this member is secured, not the migrate scripts' ETCD_CREDS.
                ("--etcd-server-extra-args", OsString::new()),
            ];
            for (flag, value) in settings {
                migrator.push(flag.into());
                migrator.push(value);
            }
            for arg in flags.peer_tls_args() {
                migrator.push(etcd_flags::flag_arg("etcd-server-arg", &arg));
            }
            if env.get("TARGET_VERSION").is_none_or(|v| v.is_empty()) {
                migrator.push("--target-version".into());
                migrator.push(newest_bundled(env, bin_dir)?.to_string().into());
            }
            migrator.push("--".into());
            migrator.extend(args.iter().cloned());
            Ok(Action::Migrate { args: migrator, verbatim: true })
        }
    }
}

/// `TARGET_VERSION`, when Kubernetes' script would have copied `etcdctl-<TARGET_VERSION>` over `etcdctl`
/// (it did unless `DO_NOT_MOVE_BINARIES=true`) and that release is bundled.
fn moved_target(env: &HashMap<String, String>, bin_dir: &Path) -> Option<Version> {
    if env.get("DO_NOT_MOVE_BINARIES").is_some_and(|v| v == "true") {
        return None;
    }
    let target: Version = env.get("TARGET_VERSION")?.parse().ok()?;
    Bundle::is_executable(&Bundle::in_dir(bin_dir).etcdctl(target)).then_some(target)
}

/// The newest of `BUNDLED_VERSIONS`, else of the `etcd-X.Y.Z` in the bin dir.
fn newest_bundled(env: &HashMap<String, String>, bin_dir: &Path) -> Result<Version, ConfigError> {
    let listed = env.get("BUNDLED_VERSIONS").filter(|v| !v.is_empty()).map(|list| {
        config::parse_version_list(list)
            .map_err(|message| ConfigError::Invalid { option: "BUNDLED_VERSIONS", message })
    });
    let bundle = Bundle::resolve(bin_dir, listed.transpose()?)?;
    bundle.newest().ok_or_else(|| {
        ConfigError::BinDir(BundleError {
            dir: bin_dir.to_path_buf(),
            message: "it holds no etcd-X.Y.Z: bundle at least one etcd release beside this binary".into(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// A bin dir holding (empty) etcd and etcdctl 3.4.23 and 3.5.16.
    fn bin_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for version in ["3.4.23", "3.5.16"] {
            for tool in ["etcd", "etcdctl"] {
                let path = dir.path().join(format!("{tool}-{version}"));
                std::fs::write(&path, "").unwrap();
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            }
        }
        dir
    }

    #[test]
    fn every_name_has_its_role() {
        for (argv0, expected) in [
            ("/usr/local/bin/etcd", Role::Etcd),
            ("etcd", Role::Etcd),
            ("/usr/local/bin/migrate", Role::Migrate),
            ("/usr/local/bin/migrate-if-needed.sh", Role::Migrate),
            ("/usr/local/bin/etcdctl", Role::Etcdctl),
            ("/usr/local/bin/etcd-migrate", Role::Migrator),
            ("./target/debug/etcd-migrate", Role::Migrator),
            ("/usr/local/bin/etcd-3.5.16", Role::Migrator),
        ] {
            assert_eq!(role(OsStr::new(argv0)), expected, "{argv0}");
        }
    }

    #[test]
    fn the_migrator_name_keeps_its_command_line() {
        let args = strings(&["status", "--data-dir", "/d"]);
        let chosen = action(Role::Migrator, &args, &env(&[]), Path::new("/nowhere")).unwrap();
        assert_eq!(chosen, Action::Migrate { args, verbatim: false });
    }

    #[test]
    fn migrate_names_migrate_only_from_their_bin_dir() {
        let args = strings(&["--name", "m"]);
        let chosen = action(Role::Migrate, &args, &env(&[]), Path::new("/usr/local/bin")).unwrap();
        let expected = strings(&["--bin-dir", "/usr/local/bin", "--migrate-only", "--name", "m"]);
        assert_eq!(chosen, Action::Migrate { args: expected, verbatim: false });
    }

    #[test]
    fn etcdctl_is_the_one_kubernetes_image_had_at_that_path() {
        let temp = bin_dir();
        let dir = temp.path();
        let args = strings(&["endpoint", "health"]);
        for (vars, runs) in [
            (&[][..], "3.5.16"),
            (&[("BUNDLED_VERSIONS", "3.4.23")][..], "3.4.23"),
            (&[("TARGET_VERSION", "3.4.23")][..], "3.4.23"),
            (&[("TARGET_VERSION", "3.4.23"), ("DO_NOT_MOVE_BINARIES", "true")][..], "3.5.16"),
            (&[("TARGET_VERSION", "3.4.23"), ("DO_NOT_MOVE_BINARIES", "false")][..], "3.4.23"),
            (&[("TARGET_VERSION", "3.4.9")][..], "3.5.16"),
        ] {
            let chosen = action(Role::Etcdctl, &args, &env(vars), dir).unwrap();
            let binary = dir.join(format!("etcdctl-{runs}"));
            assert_eq!(chosen, Action::Exec { binary, args: args.clone() }, "{vars:?}");
        }
    }

    #[test]
    fn etcd_migrates_from_its_own_flags_then_passes_them_on_verbatim() {
        let temp = bin_dir();
        let dir = temp.path();
        let args = strings(&[
            "--name=node1",
            "--data-dir",
            "/var/lib/etcd",
            "--listen-peer-urls=https://10.0.0.1:2380",
            "--initial-advertise-peer-urls=https://10.0.0.1:2380",
            "--peer-cert-file=/pki/peer.crt",
            "--peer-key-file=/pki/peer.key",
            "--cert-file=/pki/server.crt",
        ]);
        let Action::Migrate { args: migrator, verbatim } = action(Role::Etcd, &args, &env(&[]), dir).unwrap()
        else {
            panic!("etcd migrates first");
        };
        assert!(verbatim);
        let split = migrator.iter().position(|a| a == "--").unwrap();
        assert_eq!(&migrator[split + 1..], &args[..], "etcd gets exactly its arguments");
        let bin = dir.to_string_lossy().into_owned();
        let expected = strings(&[
            "--bin-dir",
            &bin,
            "--data-dir",
            "/var/lib/etcd",
            "--name",
            "node1",
            "--listen-peer-urls",
            "https://10.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "https://10.0.0.1:2380",
            "--initial-cluster",
            "node1=https://10.0.0.1:2380",
            "--etcd-server-extra-args",
            "",
            "--etcd-server-arg=--peer-cert-file=/pki/peer.crt",
            "--etcd-server-arg=--peer-key-file=/pki/peer.key",
            "--target-version",
            "3.5.16",
        ]);
        assert_eq!(&migrator[..split], &expected[..]);
    }

    #[test]
    fn etcd_takes_the_target_from_the_environment_when_set() {
        let temp = bin_dir();
        let dir = temp.path();
        let args = strings(&["--data-dir=/d"]);
        let Action::Migrate { args: migrator, .. } =
            action(Role::Etcd, &args, &env(&[("TARGET_VERSION", "3.4.23")]), dir).unwrap()
        else {
            panic!("etcd migrates first");
        };
        assert!(!migrator.iter().any(|a| a == "--target-version"), "config reads TARGET_VERSION itself");
        let Action::Migrate { args: migrator, .. } =
            action(Role::Etcd, &args, &env(&[("TARGET_VERSION", "")]), dir).unwrap()
        else {
            panic!("etcd migrates first");
        };
        assert!(migrator.windows(2).any(|w| w[0] == "--target-version" && w[1] == "3.5.16"));
    }

    #[test]
    fn etcd_version_and_help_go_straight_to_the_newest_etcd() {
        let temp = bin_dir();
        let dir = temp.path();
        let args = strings(&["--version"]);
        let chosen = action(Role::Etcd, &args, &env(&[]), dir).unwrap();
        assert_eq!(chosen, Action::Exec { binary: dir.join("etcd-3.5.16"), args });
    }

    #[test]
    fn no_bundled_release_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = action(Role::Etcdctl, &[], &env(&[]), dir.path()).unwrap_err();
        assert!(err.to_string().contains("holds no etcd-X.Y.Z"), "{err}");
    }
}
