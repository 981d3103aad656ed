//! The pod command: pick the role by the name we were run as, parse, migrate, exec. Errors become one
//! line and an exit code: 2 when nothing was changed (bad configuration or input), 1 after something was
//! (`migrate::Phase`).

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use tracing::{error, info};

use etcd_migrate::bundle::Bundle;
use etcd_migrate::config::{self, Command, Config};
use etcd_migrate::multicall::{self, Action};
use etcd_migrate::version::Version;
use etcd_migrate::{exec, logging, migrate, report};

fn main() -> ExitCode {
    one_malloc_arena();
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let args: Vec<OsString> = argv.collect();
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let role = multicall::role(&argv0);
    let (args, verbatim) = match multicall::action(role, &args, &env, &bin_dir()) {
        Ok(Action::Migrate { args, verbatim }) => (args, verbatim),
        Ok(Action::Exec { binary, args }) => {
            let argv: Vec<OsString> = [binary.into_os_string()].into_iter().chain(args).collect();
            eprintln!("etcd-migrate: {}", exec::exec(&argv, &env));
            return ExitCode::from(2);
        }
        Err(e) => return bad_configuration(e),
    };
    let args = match config::parse(args) {
        Ok(args) => args,
        Err(e) => {
            if e.use_stderr() {
                eprintln!("etcd-migrate: {}", config::usage_error(&e));
            } else {
                let _ = e.print();
            }
            // clap's codes: 0 after --help and --version, 2 for bad usage.
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    if args.list_options {
        return print(config::list_options());
    }
    if let Some(Command::Releases { versions }) = &args.command {
        // It needs only the bundle, not the data dir and target the other commands require.
        return match Bundle::resolve(&args.bin_dir, args.bundled_versions.clone()) {
            Ok(bundle) => releases(&bundle, versions, args.output),
            Err(e) => bad_configuration(e.into()),
        };
    }
    let config = match config::resolve(args, |var| env.get(var).cloned()) {
        Ok(config) => config,
        Err(e) => return bad_configuration(e),
    };
    logging::init(config.log_format);
    match run(&config, verbatim, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            error!("{message}");
            ExitCode::from(code)
        }
    }
}

/// glibc gives each thread that allocates under contention an arena of its own, which keeps what it
/// freed: the short-lived threads of a run (copying a backup, parsing a v2 listing, logging progress)
/// held a few megabytes apiece past their work (measured on a million-key conversion: a peak of 16.0 MiB,
/// 13.5 MiB with one arena, in the same time). One arena serves a migrator that allocates little.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a parameter of the allocator; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// The directory this binary runs from: under another name than `etcd-migrate` it is one of the
/// image's links, beside the bundled releases.
fn bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

fn bad_configuration(e: config::ConfigError) -> ExitCode {
    eprintln!("etcd-migrate: {e}");
    ExitCode::from(2)
}

/// `releases`: exit 1 when a release listed lacks a tool it ships.
fn releases(bundle: &Bundle, versions: &[Version], output: config::Format) -> ExitCode {
    let (text, all_present) = report::releases(bundle, versions, output);
    print!("{text}");
    if all_present { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn print(text: String) -> ExitCode {
    print!("{text}");
    ExitCode::SUCCESS
}

/// Migrates, then execs the target etcd: with exactly the operator's arguments when `verbatim` (run as
/// `etcd`), else with `--data-dir` first.
fn run(config: &Config, verbatim: bool, env: &HashMap<String, String>) -> Result<(), (u8, String)> {
    let failed = |e: migrate::Failure| (e.exit_code(), e.to_string());
    let read_only = |e| failed(migrate::Failure::read_only(e));
    match config.command {
        Command::Plan => return report::plan(config).map(print).map(drop).map_err(read_only),
        Command::Status => return report::status(config).map(print).map(drop).map_err(read_only),
        Command::Migrate => {}
        // Answered in `main` before resolving, which it does not need.
        Command::Releases { .. } => return Ok(()),
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| (2, e.to_string()))?;
    let reached = runtime.block_on(migrate::migrate(config)).map_err(failed)?;
    drop(runtime);
    let target = config.target();
    if config.migrate_only {
        if config.bundle.versions().contains(&reached.at.version) {
            info!(at = %reached.at, "migrated; --migrate-only: not starting etcd");
        } else {
            info!(at = %reached.at, "the data is at the version asked, which is not bundled; --migrate-only: nothing to do, nothing to exec");
        }
        return Ok(());
    }
    let binary = config.bundle.etcd(target.version);
    let data_dir = (!verbatim).then_some(config.data_dir.as_path());
    let argv = exec::etcd_command(&binary, data_dir, &config.etcd_args);
    info!(at = %target, binary = %binary.display(), "starting etcd");
    let e = exec::exec(&argv, env);
    Err((reached.phase.exit_code(), format!("{e}: bundle etcd {} in the bin dir", target.version)))
}
