//! The command line: `pgsql-broker [--config F] [--log-level L] <command>`, the commands being
//! `start`, `install`, `status`, `jobs`, `add`, `cancel`, `retry` and `schedule`.
//! Global options may also follow the command, as the original broker's README types them
//! (`pgsql-broker start --config broker.yaml`): [`hoist_global_options`](crate::cli::hoist_global_options) moves them ahead.
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.
//!
//! This module parses and dispatches; `args` holds the argh structs, `status`, `jobs` and
//! `schedule` the operator commands (each checks its options before anything connects, then
//! runs through the typed calls of `db`), `format` how they print.

use std::collections::BTreeMap;
use std::path::PathBuf;

use argh::FromArgs;

use crate::config::{self as cfg, Config, ConfigError, DatabaseConfig};
use crate::db;
use crate::db::install;
use crate::error::{describe, Error};
use crate::logging;
use crate::runtime::broker::Broker;
use crate::runtime::shutdown;
use postgres::error::SqlState;

/// The argh structs and the table of options that take a value.
mod args;
/// Tables, times and durations as the commands print them.
mod format;
/// `add`, `jobs`, `cancel`, `retry`.
mod jobs;
/// `schedule next|add|list|enable|disable|remove`.
mod schedule;
/// `status` and `status --json`.
mod status;

use args::*;

/// Moves the global options (`-c F`, `--config F`, `--config=F`, `--log-level L`,
/// `--log-format F`, `--version`) ahead of the command, wherever they are, so argh (which only
/// takes them before it) parses `pgsql-broker start --config broker.yaml` too. A command's own
/// options keep their values (even one that looks like a global option), positionals stay in
/// order, and nothing after `--` moves. `--opt=value` becomes `--opt value` for every known
/// option. Errors when a global option lacks its value.
pub fn hoist_global_options(args: &[String]) -> Result<Vec<String>, String> {
    let mut globals: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    let mut path = String::new();
    let mut in_command = false;
    let mut options_ended = false;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].as_str();
        i += 1;
        if options_ended {
            rest.push(arg.to_string());
            continue;
        }
        if arg == "--" {
            options_ended = true;
            rest.push(arg.to_string());
            continue;
        }
        let (name, inline_value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg, None),
        };
        if GLOBAL_VALUE_OPTIONS.contains(&name) {
            let value = match inline_value {
                Some(v) => v.to_string(),
                None => {
                    let v = args
                        .get(i)
                        .ok_or_else(|| format!("option {name} needs a value"))?;
                    i += 1;
                    v.clone()
                }
            };
            globals.push(name.to_string());
            globals.push(value);
            continue;
        }
        if inline_value.is_none() && GLOBAL_SWITCHES.contains(&name) {
            globals.push(name.to_string());
            continue;
        }
        let own_options = COMMAND_VALUE_OPTIONS
            .iter()
            .find(|(p, _)| in_command && *p == path)
            .map_or(&[][..], |(_, options)| *options);
        if own_options.contains(&name) {
            rest.push(name.to_string());
            match inline_value {
                Some(v) => rest.push(v.to_string()),
                None => {
                    if let Some(v) = args.get(i) {
                        rest.push(v.clone());
                        i += 1;
                    }
                }
            }
            continue;
        }
        if !arg.starts_with('-') {
            // The first positional is the command; a later one a subcommand if it names one.
            let deeper = if in_command {
                format!("{path} {arg}")
            } else {
                arg.to_string()
            };
            if !in_command || COMMAND_VALUE_OPTIONS.iter().any(|(p, _)| *p == deeper) {
                path = deeper;
                in_command = true;
            }
        }
        rest.push(arg.to_string());
    }
    globals.extend(rest);
    Ok(globals)
}

/// A usage error: printed as `pgsql-broker: ...` (never as a log line), exit code 2.
fn usage_error(message: impl std::fmt::Display) -> i32 {
    eprintln!("pgsql-broker: {message}\nRun pgsql-broker --help for usage.");
    2
}

/// Runs the command line `args` (without the program name) and returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let args = match hoist_global_options(args) {
        Ok(args) => args,
        Err(e) => return usage_error(e),
    };
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["pgsql-broker"], &strs) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    0
                }
                Err(()) => usage_error(early.output.trim_end()),
            };
        }
    };
    if cli.version {
        println!("pgsql-broker {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(command) = cli.command.as_ref() else {
        return usage_error(
            "a command is required: start, install, status, jobs, add, cancel, retry or schedule",
        );
    };
    // Checking an expression needs neither a configuration nor a database.
    if let Command::Schedule(ScheduleCmd {
        command: ScheduleCommand::Next(next),
    }) = command
    {
        return schedule::next(next);
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (config, source) = match load_config(&cli, &env, &cfg::search_path(&env)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsql-broker: {e}");
            return 2;
        }
    };
    // What the command works on and its options, checked before anything connects or logs.
    let checked = match command {
        Command::Install(InstallCmd { database, .. })
        | Command::Status(StatusCmd { database, .. }) => {
            selected(&config, database.as_deref()).map(drop)
        }
        Command::Jobs(cmd) => jobs::check_list(&config, cmd),
        Command::Add(cmd) => jobs::check_add(&config, cmd),
        Command::Cancel(CancelCmd { database, .. }) | Command::Retry(RetryCmd { database, .. }) => {
            one_database(&config, database.as_deref()).map(drop)
        }
        Command::Schedule(cmd) => schedule::check(&config, &cmd.command),
        Command::Start(_) => Ok(()),
    };
    if let Err(e) = checked {
        return usage_error(e);
    }
    if let Err(e) = logging::init(&config.logging, config.broker.enable_debug) {
        eprintln!("pgsql-broker: {e}");
        return 1;
    }
    match command {
        Command::Start(_) | Command::Install(_) => log::info!("configuration: {source}"),
        _ => log::debug!("configuration: {source}"),
    }
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
    let result = match command {
        Command::Start(cmd) => {
            let mut config = config;
            config.broker.standby |= cmd.standby;
            start(config)
        }
        Command::Install(cmd) => run_install(&config, cmd),
        Command::Status(cmd) => status::run(&config, cmd),
        Command::Jobs(cmd) => jobs::list(&config, cmd),
        Command::Add(cmd) => jobs::add(&config, cmd),
        Command::Cancel(cmd) => jobs::cancel(&config, cmd),
        Command::Retry(cmd) => jobs::retry(&config, cmd),
        Command::Schedule(cmd) => schedule::run(&config, &cmd.command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e}");
            e.exit_code()
        }
    }
}

/// Discovers the configuration (file, then environment), then applies the flags.
fn load_config(
    cli: &Cli,
    env: &BTreeMap<String, String>,
    search: &[(PathBuf, cfg::FileOrigin)],
) -> Result<(Config, cfg::ConfigSource), ConfigError> {
    let (mut config, source) = Config::discover(cli.config.as_deref(), env, search)?;
    db::tls::check_files(&config)?;
    for (flag, key, value) in [
        ("--log-level", "level", &cli.log_level),
        ("--log-format", "format", &cli.log_format),
    ] {
        if let Some(value) = value {
            config
                .logging
                .set(key, value)
                .map_err(|message| ConfigError::Invalid {
                    key: flag.into(),
                    message,
                })?;
        }
    }
    Ok((config, source))
}

fn start(config: Config) -> Result<i32, Error> {
    // A panic is a bug; it goes to the log with the rest, where the operator looks. The
    // worker that panicked fails its job and carries on (see worker.rs).
    std::panic::set_hook(Box::new(|info| {
        log::error!("internal error (a bug): {info}")
    }));
    let stop = crate::runtime::broker::StopHandle::default();
    shutdown::install(stop.clone())
        .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    let several = config.databases.len() > 1;
    let broker = Broker::start_with(config, stop).map_err(|e| match e {
        // Say what happens: no retrying in the background when nothing could be reached.
        Error::Connect { .. } => Error::Runtime(format!(
            "{e}; exiting without retrying, as {} (a wrong host, port, user or password is \
             the likely cause; a service manager restarts the broker)",
            if several {
                "no configured database could be reached"
            } else {
                "the configured database could not be reached"
            }
        )),
        e => e,
    })?;
    broker.wait()?;
    log::info!("stopped");
    Ok(0)
}

/// The configured database called `name`, for `--database`; the error lists the names there are.
fn find_database<'a>(config: &'a Config, name: &str) -> Result<&'a DatabaseConfig, String> {
    config
        .databases
        .iter()
        .find(|db| db.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.databases.iter().map(|db| db.name.as_str()).collect();
            format!(
                "--database {name}: no such database in the configuration (configured: {})",
                names.join(", ")
            )
        })
}

/// The configured databases `--database` selects (all when it is absent).
fn selected<'a>(config: &'a Config, name: Option<&str>) -> Result<Vec<&'a DatabaseConfig>, String> {
    Ok(match name {
        Some(name) => vec![find_database(config, name)?],
        None => config.databases.iter().collect(),
    })
}

/// The configured database a command that changes one works on: `--database`, else the first.
fn one_database<'a>(config: &'a Config, name: Option<&str>) -> Result<&'a DatabaseConfig, String> {
    match name {
        Some(name) => find_database(config, name),
        None => config
            .databases
            .first()
            .ok_or_else(|| "the configuration names no database".to_string()),
    }
}

/// Checks that database `db` serves queue `queue` (`--queue` of `add` and `schedule add`).
fn check_queue(db: &DatabaseConfig, queue: i32) -> Result<(), String> {
    if queue < 1 || i64::from(queue) > i64::from(db.queue_count) {
        return Err(format!(
            "--queue {queue}: database {} has queues 1 to {} (its queue_count); a job in another \
             queue would never run",
            db.name, db.queue_count
        ));
    }
    Ok(())
}

/// A refusal from the database as the person at the terminal needs it: SQLSTATE, message and
/// hint, without the "Failing row contains (...)" detail, which repeats the whole job, SQL and
/// all.
fn refusal(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
            if let Some(detail) = db
                .detail()
                .filter(|d| !d.starts_with("Failing row contains"))
            {
                s.push_str(&format!(" (detail: {detail})"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!(" (hint: {hint})"));
            }
            s
        }
        None => e.to_string(),
    }
}

/// True when a statement failed because the broker's tables or functions are missing.
fn schema_missing(e: &postgres::Error) -> bool {
    matches!(e.code(), Some(c) if *c == SqlState::UNDEFINED_TABLE
        || *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::UNDEFINED_FUNCTION)
}

/// Reports a statement of a command that the database refused, on standard error, and gives
/// exit status 1: a missing schema with how to install it, anything else with `what` and the
/// server's SQLSTATE and message. An error that is not the server's answer (the connection
/// broke) is returned, to be logged as the broker's errors are.
/// What `jobs` and `schedule list` share: `read` runs on each database, and its rows print as
/// one JSON array of them all (`json`), or as a table per database, headed by the database's
/// name when there are several. A database that refuses is reported and the others go on.
fn list_each<T>(
    dbs: &[&DatabaseConfig],
    json: bool,
    what: &'static str,
    read: impl Fn(&mut postgres::Client) -> Result<Vec<T>, postgres::Error>,
    to_json: impl Fn(&DatabaseConfig, &T) -> serde_json::Value,
    to_table: impl Fn(&[T]) -> String,
) -> Result<i32, Error> {
    let mut code = 0;
    let mut all = Vec::new();
    for (i, db) in dbs.iter().enumerate() {
        let mut client = db::connect(db)?;
        let rows = match read(&mut client) {
            Ok(rows) => rows,
            Err(e) => {
                code = refused(db, what, what, e)?;
                continue;
            }
        };
        if json {
            all.extend(rows.iter().map(|r| to_json(db, r)));
            continue;
        }
        if dbs.len() > 1 {
            println!("{}database {}:", if i > 0 { "\n" } else { "" }, db.name);
        }
        print!("{}", to_table(&rows));
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&all)
                .map_err(|e| Error::Runtime(format!("cannot write JSON: {e}")))?
        );
    }
    Ok(code)
}

fn refused(
    db: &DatabaseConfig,
    what: &str,
    action: &'static str,
    e: postgres::Error,
) -> Result<i32, Error> {
    if e.as_db_error().is_none() {
        return Err(Error::Sql {
            database: db.name.clone(),
            action,
            source: e,
        });
    }
    if schema_missing(&e) {
        eprintln!(
            "pgsql-broker: database {}: the broker schema is missing or incomplete ({}) — run \
             `pgsql-broker install`",
            db.name,
            describe(&e)
        );
    } else {
        eprintln!("pgsql-broker: {what}: {}", refusal(&e));
    }
    Ok(1)
}

fn run_install(config: &Config, cmd: &InstallCmd) -> Result<i32, Error> {
    let mut code = 0;
    for db in selected(config, cmd.database.as_deref()).map_err(Error::Runtime)? {
        let mut client = db::connect(db)?;
        if cmd.verify_only {
            let problems = install::verify(&mut client, db)?;
            if problems.is_empty() {
                println!(
                    "{}: schema version {} is installed and complete",
                    db.name,
                    install::SCHEMA_VERSION
                );
            } else {
                for p in &problems {
                    println!("{}: {p}", db.name);
                }
                code = 1;
            }
        } else {
            let done = install::install(&mut client, db)?;
            if done.from == done.to && !done.functions_replaced {
                println!("{}: schema version {} already installed", db.name, done.to);
            } else if done.from == done.to {
                println!(
                    "{}: functions updated (schema version {})",
                    db.name, done.to
                );
            } else {
                println!(
                    "{}: schema installed (version {} -> {})",
                    db.name, done.from, done.to
                );
            }
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests;
