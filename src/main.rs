//! The pod command: parse, migrate, exec. Errors become one line and an exit code: 2 for bad
//! configuration or input (nothing changed), 1 for a failed step.

use std::collections::HashMap;
use std::ffi::OsString;
use std::process::ExitCode;

use tracing::{error, info};

use etcd_migrate::config::{self, Command, Config, Invocation};
use etcd_migrate::{exec, logging, migrate, report};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let env: HashMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let config = match config::parse(&args, &env) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Help) => return print(config::help()),
        Ok(Invocation::ListOptions) => return print(config::list_options()),
        Ok(Invocation::Version) => return print(format!("etcd-migrate {}\n", env!("CARGO_PKG_VERSION"))),
        Err(e) => {
            eprintln!("etcd-migrate: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(config.log_format);
    match run(&config, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            error!("{message}");
            ExitCode::from(code)
        }
    }
}

fn print(text: String) -> ExitCode {
    print!("{text}");
    ExitCode::SUCCESS
}

fn run(config: &Config, env: &HashMap<String, String>) -> Result<(), (u8, String)> {
    let failed = |e: migrate::MigrateError| (e.exit_code(), e.to_string());
    match config.command {
        Command::Plan => return report::plan(config).map(print).map(drop).map_err(failed),
        Command::Status => return report::status(config).map(print).map(drop).map_err(failed),
        Command::Migrate => {}
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| (1, e.to_string()))?;
    runtime.block_on(migrate::migrate(config)).map_err(failed)?;
    drop(runtime);
    let target = config.target();
    if config.migrate_only {
        info!(at = %target, "migrated; --migrate-only: not starting etcd");
        return Ok(());
    }
    let argv = exec::etcd_command(&config.etcd_binary(target.version), &config.data_dir, &config.etcd_args);
    info!(at = %target, binary = %config.etcd_binary(target.version).display(), "starting etcd");
    let e = exec::exec(&argv, env);
    Err((2, format!("{e}: bundle etcd {} in the bin dir", target.version)))
}
