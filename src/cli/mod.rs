//! The command line: `pgsql-broker [--config F] [--log-level L] <start|install|status|add>`.
//! Global options may also follow the command, as the original broker's README types them
//! (`pgsql-broker start --config broker.yaml`): [`hoist_global_options`](crate::cli::hoist_global_options) moves them ahead.
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use argh::FromArgs;

use crate::config::{self as cfg, Config, ConfigError, DatabaseConfig};
use crate::db;
use crate::db::install;
use crate::error::describe;
use crate::error::Error;
use crate::job::{self, NewJob};
use crate::logging;
use crate::runtime::broker::Broker;
use crate::runtime::shutdown;
use crate::schedule::cron;
use postgres::error::SqlState;

/// A job broker for PostgreSQL: jobs are rows in broker_jobs, the broker runs their SQL.
#[derive(FromArgs, Debug)]
#[argh(
    help_triggers("-h", "--help", "help"),
    note = "Global options may also follow the command: pgsql-broker start --config broker.yaml.
Without --config the configuration is $PGSQL_BROKER_CONFIG, ./broker.yaml, ./broker.json or
/etc/pgsql-broker/broker.yaml, the first that exists; with none, PGSQL_BROKER_DB_<NAME>_<KEY>
variables define the databases, and without those the libpq variables (PGHOST, ...) one."
)]
pub struct Cli {
    /// config file (.yaml/.yml or .json); default: $PGSQL_BROKER_CONFIG, else ./broker.yaml,
    /// ./broker.json, /etc/pgsql-broker/broker.yaml, else the environment
    /// (PGSQL_BROKER_DB_* variables, else PGHOST, PGPORT, PGUSER, PGDATABASE)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// log level: error, warn, info, debug or trace, any case (overrides config and environment)
    #[argh(option)]
    log_level: Option<String>,
    /// log format: text or json (overrides config and environment)
    #[argh(option)]
    log_format: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum Command {
    Start(StartCmd),
    Install(InstallCmd),
    Status(StatusCmd),
    Add(AddCmd),
    Schedule(ScheduleCmd),
}

/// Run the broker until SIGTERM/SIGINT (installs the schema first if it is missing).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "start", help_triggers("-h", "--help", "help"))]
struct StartCmd {
    /// wait for databases another broker instance holds and take them over when it dies
    /// (instead of exiting); several standby processes share their databases out
    /// (same as broker.standby: true)
    #[argh(switch)]
    standby: bool,
}

/// Install or upgrade the schema, in one transaction per database.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install", help_triggers("-h", "--help", "help"))]
struct InstallCmd {
    /// only check: list what is missing or outdated, exit 1 if anything is
    #[argh(switch)]
    verify_only: bool,
    /// only this configured database (by name)
    #[argh(option)]
    database: Option<String>,
}

/// Show the active instance and job counts per queue and status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status", help_triggers("-h", "--help", "help"))]
struct StatusCmd {
    /// only this configured database (by name)
    #[argh(option)]
    database: Option<String>,
}

/// Submit a job (as broker_add_job does) and print its id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add", help_triggers("-h", "--help", "help"))]
struct AddCmd {
    /// the SQL to run
    #[argh(positional)]
    sql: String,
    /// job name
    #[argh(option, default = "String::new()")]
    name: String,
    /// queue number (default 1)
    #[argh(option, default = "1")]
    queue: i32,
    /// priority, higher first (default 0)
    #[argh(option, default = "0")]
    priority: i32,
    /// sql or plpgsql (default sql)
    #[argh(option, default = "String::from(\"sql\")")]
    language: String,
    /// role the job runs as
    #[argh(option)]
    run_as: Option<String>,
    /// application user visible to the job as broker.user_login
    #[argh(option)]
    user_login: Option<String>,
    /// configured database to submit to (default: the first)
    #[argh(option)]
    database: Option<String>,
}

/// Global options that take a value; each may come before or after the command.
const GLOBAL_VALUE_OPTIONS: [&str; 4] = ["-c", "--config", "--log-level", "--log-format"];
/// Global switches, hoisted like the options.
const GLOBAL_SWITCHES: [&str; 1] = ["--version"];

/// For each command (path of subcommand names), its own options that take a value. The
/// hoisting pass must know them so it never takes their values for global options
/// (`add --name --config 'SQL'` names the job `--config`). `tests::option_table_matches_argh`
/// checks this table against the argh definitions above.
const COMMAND_VALUE_OPTIONS: &[(&str, &[&str])] = &[
    ("start", &[]),
    ("install", &["--database"]),
    ("status", &["--database"]),
    (
        "add",
        &[
            "--name",
            "--queue",
            "--priority",
            "--language",
            "--run-as",
            "--user-login",
            "--database",
        ],
    ),
    ("schedule", &[]),
    ("schedule next", &["--tz", "--count", "--after"]),
];

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
        return usage_error("a command is required: start, install, status, add or schedule");
    };
    // Checking an expression needs neither a configuration nor a database.
    if let Command::Schedule(cmd) = command {
        return schedule(cmd);
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (config, source) = match load_config(&cli, &env, &cfg::search_path(&env)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsql-broker: {e}");
            return 2;
        }
    };
    // What the command works on, checked before anything connects or logs.
    let target = match command {
        Command::Install(InstallCmd { database, .. }) | Command::Status(StatusCmd { database }) => {
            selected(&config, database.as_deref()).map(|_| ())
        }
        Command::Add(cmd) => add_target(&config, cmd).map(|_| ()),
        Command::Start(_) | Command::Schedule(_) => Ok(()),
    };
    if let Err(e) = target {
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
        Command::Status(cmd) => status(&config, cmd.database.as_deref()),
        Command::Add(cmd) => add(&config, cmd),
        Command::Schedule(cmd) => Ok(schedule(cmd)),
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

/// The database `add` submits to, after checking that a worker there serves `--queue`.
fn add_target<'a>(config: &'a Config, cmd: &AddCmd) -> Result<&'a DatabaseConfig, String> {
    let db = match &cmd.database {
        Some(name) => find_database(config, name)?,
        None => config
            .databases
            .first()
            .ok_or("the configuration names no database")?,
    };
    if cmd.queue < 1 || i64::from(cmd.queue) > i64::from(db.queue_count) {
        return Err(format!(
            "--queue {}: database {} has queues 1 to {} (its queue_count); a job in another \
             queue would never run",
            cmd.queue, db.name, db.queue_count
        ));
    }
    Ok(db)
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

/// Prints each database's instance and job counts. A database without the schema is reported
/// as such (exit 1), and the other databases are still shown.
fn status(config: &Config, database: Option<&str>) -> Result<i32, Error> {
    let mut code = 0;
    for db in selected(config, database).map_err(Error::Runtime)? {
        let mut client = db::connect(db)?;
        let sql_error = |source| Error::Sql {
            database: db.name.clone(),
            action: "reading status",
            source,
        };
        if install::installed_version(&mut client).map_err(sql_error)? == 0 {
            println!(
                "{}: not installed — run `pgsql-broker install`{}",
                db.name,
                if config.databases.len() > 1 {
                    format!(" (or `pgsql-broker install --database {}`)", db.name)
                } else {
                    String::new()
                }
            );
            code = 1;
            continue;
        }
        let queue_count = i32::try_from(db.queue_count).unwrap_or(i32::MAX);
        match db::status_report(&mut client, queue_count) {
            Ok(lines) => {
                for line in lines {
                    println!("{}: {line}", db.name);
                }
            }
            // Tables or functions missing: an incomplete install, not a broker failure.
            Err(e)
                if matches!(e.code(), Some(c) if *c == SqlState::UNDEFINED_TABLE
                || *c == SqlState::UNDEFINED_COLUMN || *c == SqlState::UNDEFINED_FUNCTION) =>
            {
                println!(
                    "{}: schema incomplete ({}) — run `pgsql-broker install`; \
                     `pgsql-broker install --verify-only` lists what is missing",
                    db.name,
                    describe(&e)
                );
                code = 1;
            }
            Err(e) => return Err(sql_error(e)),
        }
    }
    Ok(code)
}

/// A refusal from the database as the submitter needs it: SQLSTATE, message and hint, without
/// the "Failing row contains (...)" detail, which repeats the whole job, SQL and all.
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

fn add(config: &Config, cmd: &AddCmd) -> Result<i32, Error> {
    let db = add_target(config, cmd).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    let job = NewJob {
        queue: cmd.queue,
        priority: cmd.priority,
        language: cmd.language.clone(),
        run_as: cmd.run_as.clone(),
        user_login: cmd.user_login.clone(),
        ..NewJob::new(&cmd.name, &cmd.sql)
    };
    match job::add(&mut client, &job) {
        Ok(id) => {
            println!("{id}");
            Ok(0)
        }
        Err(e) if e.as_db_error().is_some() => {
            eprintln!("pgsql-broker: job refused: {}", refusal(&e));
            Ok(1)
        }
        Err(source) => Err(Error::Sql {
            database: db.name.clone(),
            action: "adding the job",
            source,
        }),
    }
}

/// Work with schedule expressions (no database needed).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "schedule", help_triggers("-h", "--help", "help"))]
struct ScheduleCmd {
    #[argh(subcommand)]
    command: ScheduleCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
enum ScheduleCommand {
    Next(ScheduleNextCmd),
}

/// Print the next fire times of a cron expression, one RFC 3339 time per line.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "next", help_triggers("-h", "--help", "help"))]
struct ScheduleNextCmd {
    /// the expression: 5 fields (minute hour day-of-month month day-of-week), 6 with a
    /// leading second, @hourly/@daily/@weekly/@monthly/@yearly, or @every 90s
    #[argh(positional)]
    expr: String,
    /// IANA time zone the expression is read in (default UTC)
    #[argh(option, default = "String::from(\"UTC\")")]
    tz: String,
    /// how many fire times to print (default 5)
    #[argh(option, default = "5")]
    count: usize,
    /// list fire times strictly after this time: RFC 3339, or a wall time in --tz such as
    /// "2026-03-29 01:00" (default: now)
    #[argh(option)]
    after: Option<String>,
}

/// Most fire times `schedule next --count` prints; more is a typo, not a use.
const MAX_SCHEDULE_COUNT: usize = 10_000;

fn schedule(cmd: &ScheduleCmd) -> i32 {
    let ScheduleCommand::Next(next) = &cmd.command;
    match schedule_next(next) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("pgsql-broker: {e}");
            2
        }
    }
}

fn schedule_next(cmd: &ScheduleNextCmd) -> Result<Vec<String>, String> {
    if cmd.count == 0 || cmd.count > MAX_SCHEDULE_COUNT {
        return Err(format!(
            "--count {} is out of range 1-{MAX_SCHEDULE_COUNT}",
            cmd.count
        ));
    }
    let cron = cron::Cron::parse(&cmd.expr).map_err(|e| e.to_string())?;
    let tz = cron::parse_timezone(&cmd.tz).map_err(|e| format!("--tz: {e}"))?;
    let after = match &cmd.after {
        Some(text) => cron::parse_instant(text, tz).map_err(|e| format!("--after: {e}"))?,
        None => std::time::SystemTime::now().into(),
    };
    let times = cron
        .upcoming(after, tz, cmd.count)
        .map_err(|e| e.to_string())?;
    Ok(times.iter().map(cron::format_time).collect())
}

#[cfg(test)]
mod tests;
