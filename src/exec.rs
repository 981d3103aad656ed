//! The hand-off: replace this process with the target etcd (same PID, so kubelet's signals reach etcd
//! directly), keeping the operator's environment.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::etcd_flags;

/// The command line of the final etcd: `--data-dir` first when given, then the operator's flags.
pub fn etcd_command(binary: &Path, data_dir: Option<&Path>, etcd_args: &[OsString]) -> Vec<OsString> {
    let mut argv = vec![binary.as_os_str().to_owned()];
    if let Some(data_dir) = data_dir {
        argv.extend([OsString::from("--data-dir"), data_dir.as_os_str().to_owned()]);
    }
    argv.extend(etcd_args.iter().cloned());
    argv
}

/// The `ETCD_*` variables to drop: those whose flag is also on the command line, in any form etcd reads.
/// etcd 3.4 and later refuse to start when an option comes both ways; the flag is the operator's
/// explicit choice.
pub fn shadowed_variables(argv: &[OsString], env: &HashMap<String, String>) -> Vec<String> {
    let flags = etcd_flags::read(argv.get(1..).unwrap_or_default());
    let mut shadowed: Vec<String> = flags
        .iter()
        .map(|flag| etcd_flags::env_name(&flag.name))
        .filter(|var| env.contains_key(var))
        .collect();
    shadowed.sort();
    shadowed.dedup();
    shadowed
}

#[derive(Debug, thiserror::Error)]
#[error("cannot exec {binary}: {source}")]
pub struct ExecError {
    pub binary: PathBuf,
    pub source: std::io::Error,
}

/// Execs etcd; returns only if that fails.
pub fn exec(argv: &[OsString], env: &HashMap<String, String>) -> ExecError {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    for var in shadowed_variables(argv, env) {
        command.env_remove(var);
    }
    let source = command.exec();
    ExecError { binary: PathBuf::from(&argv[0]), source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_comes_first_when_given_then_the_operator_flags() {
        let args = ["--name", "m"].map(OsString::from);
        let argv = etcd_command(Path::new("/bin/etcd-3.5.16"), Some(Path::new("/d")), &args);
        assert_eq!(argv, ["/bin/etcd-3.5.16", "--data-dir", "/d", "--name", "m"].map(OsString::from));
        let argv = etcd_command(Path::new("/bin/etcd-3.5.16"), None, &args);
        assert_eq!(argv, ["/bin/etcd-3.5.16", "--name", "m"].map(OsString::from));
    }

    #[test]
    fn drops_only_variables_that_a_flag_shadows_in_any_form() {
        let argv = [
            "/etcd",
            "--data-dir",
            "/d",
            "-name",
            "m",
            "--listen-client-urls=http://x",
            "-enable-v2",
            "--snapshot-count",
            "10",
        ]
        .map(OsString::from);
        let env: HashMap<String, String> = [
            "ETCD_NAME",
            "ETCD_DATA_DIR",
            "ETCD_LISTEN_CLIENT_URLS",
            "ETCD_ENABLE_V2",
            "ETCD_QUOTA_BACKEND_BYTES",
            "ETCD_10",
            "NAME",
        ]
        .iter()
        .map(|v| (v.to_string(), "x".to_string()))
        .collect();
        assert_eq!(
            shadowed_variables(&argv, &env),
            ["ETCD_DATA_DIR", "ETCD_ENABLE_V2", "ETCD_LISTEN_CLIENT_URLS", "ETCD_NAME"]
        );
    }
}
