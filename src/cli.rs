//! The command line: `pgsql-broker [--config F] [--log-level L] <start|install|status|add>`.
//! Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use argh::FromArgs;

use crate::broker::Broker;
use crate::config::{Config, ConfigError, ENV_PREFIX};
use crate::db::{self, describe, NewJob};
use crate::error::Error;
use crate::{cron, install, logging, shutdown};

/// A job broker for PostgreSQL: jobs are rows in broker_jobs, the broker runs their SQL.
#[derive(FromArgs, Debug)]
pub struct Cli {
    /// config file (.yaml/.yml or .json); default: $PGSQL_BROKER_CONFIG, else one database
    /// from the libpq environment (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD)
    #[argh(option, short = 'c')]
    config: Option<PathBuf>,
    /// log level: error, warn, info, debug or trace (overrides config and environment)
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
#[argh(subcommand, name = "start")]
struct StartCmd {
    /// wait for databases another broker instance holds and take them over when it dies
    /// (instead of exiting); several standby processes share their databases out
    /// (same as broker.standby: true)
    #[argh(switch)]
    standby: bool,
}

/// Install or upgrade the schema, in one transaction per database.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install")]
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
#[argh(subcommand, name = "status")]
struct StatusCmd {
    /// only this configured database (by name)
    #[argh(option)]
    database: Option<String>,
}

/// Submit a job (as broker_add_job does) and print its id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add")]
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

/// Runs the command line `args` (without the program name) and returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["pgsql-broker"], &strs) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    0
                }
                Err(()) => {
                    eprintln!(
                        "{}\nRun pgsql-broker --help for usage.",
                        early.output.trim_end()
                    );
                    2
                }
            };
        }
    };
    if cli.version {
        println!("pgsql-broker {}", env!("CARGO_PKG_VERSION"));
        return 0;
    }
    let Some(command) = cli.command.as_ref() else {
        eprintln!("pgsql-broker: a command is required: start, install, status, add or schedule\nRun pgsql-broker --help for usage.");
        return 2;
    };
    // Checking an expression needs neither a configuration nor a database.
    if let Command::Schedule(cmd) = command {
        return schedule(cmd);
    }
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pgsql-broker: {e}");
            return 2;
        }
    };
    if let Err(e) = logging::init(&config.logging, config.broker.enable_debug) {
        eprintln!("pgsql-broker: {e}");
        return 1;
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

/// File, then environment, then flags.
fn load_config(cli: &Cli) -> Result<Config, ConfigError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let path = cli
        .config
        .clone()
        .or_else(|| env.get(&format!("{ENV_PREFIX}CONFIG")).map(PathBuf::from));
    let mut config = Config::load(path.as_deref(), &env)?;
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
    Ok(config)
}

fn start(config: Config) -> Result<i32, Error> {
    // A panic is a bug; it goes to the log with the rest, where the operator looks. The
    // worker that panicked fails its job and carries on (see worker.rs).
    std::panic::set_hook(Box::new(|info| {
        log::error!("internal error (a bug): {info}")
    }));
    let stop = crate::broker::StopHandle::default();
    shutdown::install(stop.clone())
        .map_err(|e| Error::Runtime(format!("cannot install signal handlers: {e}")))?;
    let broker = Broker::start_with(config, stop)?;
    broker.wait()?;
    log::info!("stopped");
    Ok(0)
}

/// The configured databases `--database` selects (all when it is absent).
fn selected<'a>(
    config: &'a Config,
    name: Option<&str>,
) -> Result<Vec<&'a crate::config::DatabaseConfig>, Error> {
    Ok(match name {
        Some(name) => vec![config.database(name)?],
        None => config.databases.iter().collect(),
    })
}

fn run_install(config: &Config, cmd: &InstallCmd) -> Result<i32, Error> {
    let mut code = 0;
    for db in selected(config, cmd.database.as_deref())? {
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

fn status(config: &Config, database: Option<&str>) -> Result<i32, Error> {
    for db in selected(config, database)? {
        let mut client = db::connect(db)?;
        let lines = db::status_report(&mut client).map_err(|source| Error::Sql {
            database: db.name.clone(),
            action: "reading status",
            source,
        })?;
        for line in lines {
            println!("{}: {line}", db.name);
        }
    }
    Ok(0)
}

fn add(config: &Config, cmd: &AddCmd) -> Result<i32, Error> {
    let db = match &cmd.database {
        Some(name) => config.database(name)?,
        None => &config.databases[0],
    };
    let mut client = db::connect(db)?;
    let job = NewJob {
        name: cmd.name.clone(),
        sql: cmd.sql.clone(),
        queue: cmd.queue,
        priority: cmd.priority,
        language: cmd.language.clone(),
        run_as: cmd.run_as.clone(),
        user_login: cmd.user_login.clone(),
    };
    match db::add_job(&mut client, &job) {
        Ok(id) => {
            println!("{id}");
            Ok(0)
        }
        Err(e) if e.as_db_error().is_some() => {
            eprintln!("pgsql-broker: job refused: {}", describe(&e));
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
#[argh(subcommand, name = "schedule")]
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
#[argh(subcommand, name = "next")]
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
