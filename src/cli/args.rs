//! The commands and options as argh parses them, and the table of options that take a value
//! (which the hoisting of global options needs; `tests::option_table_matches_argh` keeps the
//! two in step).

use std::path::PathBuf;

use argh::FromArgs;

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
    pub config: Option<PathBuf>,
    /// log level: error, warn, info, debug or trace, any case (overrides config and environment)
    #[argh(option)]
    pub log_level: Option<String>,
    /// log format: text or json (overrides config and environment)
    #[argh(option)]
    pub log_format: Option<String>,
    /// print the version and exit
    #[argh(switch)]
    pub version: bool,
    #[argh(subcommand)]
    pub command: Option<Command>,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum Command {
    Start(StartCmd),
    Install(InstallCmd),
    Status(StatusCmd),
    Jobs(JobsCmd),
    Add(AddCmd),
    Cancel(CancelCmd),
    Retry(RetryCmd),
    Schedule(ScheduleCmd),
}

/// Run the broker until SIGTERM/SIGINT (installs the schema first if it is missing).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "start", help_triggers("-h", "--help", "help"))]
pub struct StartCmd {
    /// wait for databases another broker instance holds and take them over when it dies
    /// (instead of exiting); several standby processes share their databases out
    /// (same as broker.standby: true)
    #[argh(switch)]
    pub standby: bool,
}

/// Install or upgrade the schema, in one transaction per database.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "install", help_triggers("-h", "--help", "help"))]
pub struct InstallCmd {
    /// only check: list what is missing or outdated, exit 1 if anything is
    #[argh(switch)]
    pub verify_only: bool,
    /// only this configured database (by name)
    #[argh(option)]
    pub database: Option<String>,
}

/// Show the active instance and job counts per queue and status.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "status", help_triggers("-h", "--help", "help"))]
pub struct StatusCmd {
    /// only this configured database (by name)
    #[argh(option)]
    pub database: Option<String>,
    /// print one JSON document: per database the instance and its heartbeat age, job counts
    /// per queue, the oldest ready job's wait, running jobs and recent failures
    #[argh(switch)]
    pub json: bool,
}

/// List jobs, newest first.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "jobs", help_triggers("-h", "--help", "help"))]
pub struct JobsCmd {
    /// only jobs in this state: pending, running, completed, failed or cancelled
    #[argh(option)]
    pub status: Option<String>,
    /// only jobs of this queue
    #[argh(option)]
    pub queue: Option<i32>,
    /// at most this many jobs per database (default 20)
    #[argh(option, default = "20")]
    pub limit: i64,
    /// print a JSON array of jobs instead of a table
    #[argh(switch)]
    pub json: bool,
    /// only this configured database (by name; default: all)
    #[argh(option)]
    pub database: Option<String>,
}

/// Submit a job (as broker_add_job does) and print its id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add", help_triggers("-h", "--help", "help"))]
pub struct AddCmd {
    /// the SQL to run
    #[argh(positional)]
    pub sql: String,
    /// job name
    #[argh(option, default = "String::new()")]
    pub name: String,
    /// queue number (default 1)
    #[argh(option, default = "1")]
    pub queue: i32,
    /// priority, higher first (default 0)
    #[argh(option, default = "0")]
    pub priority: i32,
    /// sql or plpgsql (default sql)
    #[argh(option, default = "String::from(\"sql\")")]
    pub language: String,
    /// role the job runs as
    #[argh(option)]
    pub run_as: Option<String>,
    /// application user visible to the job as broker.user_login
    #[argh(option)]
    pub user_login: Option<String>,
    /// not before this time: RFC 3339 (2026-03-29T01:00:00Z; without an offset, UTC), or a
    /// duration from now such as 30s, 5m or 1h30m
    #[argh(option)]
    pub run_after: Option<String>,
    /// how many times the job is tried in all when it fails, with backoff (default 1)
    #[argh(option, default = "1")]
    pub max_attempts: i32,
    /// the job's statement timeout, e.g. 30s or 5m (default: broker.default_job_timeout)
    #[argh(option)]
    pub timeout: Option<String>,
    /// run the job outside a transaction block (VACUUM, procedures that COMMIT): at most once
    #[argh(switch)]
    pub non_transactional: bool,
    /// with --non-transactional: run the job again when its broker died while it ran, rather
    /// than record it failed (for jobs that may apply twice)
    #[argh(switch)]
    pub retry_on_crash: bool,
    /// ids of jobs that must complete first; repeat the option or separate ids with commas
    #[argh(option)]
    pub depends_on: Vec<String>,
    /// configured database to submit to (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Cancel a job: a pending one at once, a running one by cancelling its statement.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "cancel", help_triggers("-h", "--help", "help"))]
pub struct CancelCmd {
    /// the job's id
    #[argh(positional)]
    pub id: i64,
    /// configured database of the job (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Run a failed or cancelled job again (one more attempt); dependents that were cancelled
/// because it ended are pending again too.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "retry", help_triggers("-h", "--help", "help"))]
pub struct RetryCmd {
    /// the job's id
    #[argh(positional)]
    pub id: i64,
    /// configured database of the job (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Work with schedules: check an expression, add, list, enable, disable, remove.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "schedule", help_triggers("-h", "--help", "help"))]
pub struct ScheduleCmd {
    #[argh(subcommand)]
    pub command: ScheduleCommand,
}

#[derive(FromArgs, Debug)]
#[argh(subcommand)]
pub enum ScheduleCommand {
    Next(ScheduleNextCmd),
    Add(ScheduleAddCmd),
    List(ScheduleListCmd),
    Enable(ScheduleEnableCmd),
    Disable(ScheduleDisableCmd),
    Remove(ScheduleRemoveCmd),
}

/// Print the next fire times of a cron expression, one RFC 3339 time per line.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "next", help_triggers("-h", "--help", "help"))]
pub struct ScheduleNextCmd {
    /// the expression: 5 fields (minute hour day-of-month month day-of-week), 6 with a
    /// leading second, @hourly/@daily/@weekly/@monthly/@yearly, or @every 90s
    #[argh(positional)]
    pub expr: String,
    /// IANA time zone the expression is read in (default UTC)
    #[argh(option, default = "String::from(\"UTC\")")]
    pub tz: String,
    /// how many fire times to print (default 5)
    #[argh(option, default = "5")]
    pub count: usize,
    /// list fire times strictly after this time: RFC 3339, or a wall time in --tz such as
    /// "2026-03-29 01:00" (default: now)
    #[argh(option)]
    pub after: Option<String>,
}

/// Add a schedule (as broker_add_schedule does) and print its id.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "add", help_triggers("-h", "--help", "help"))]
pub struct ScheduleAddCmd {
    /// the schedule's name
    #[argh(positional)]
    pub name: String,
    /// when it fires: a cron expression as `schedule next` takes it
    #[argh(positional)]
    pub cron: String,
    /// the SQL each job runs
    #[argh(positional)]
    pub sql: String,
    /// IANA time zone the expression is read in (default UTC)
    #[argh(option, default = "String::from(\"UTC\")")]
    pub tz: String,
    /// queue of its jobs (default 1)
    #[argh(option, default = "1")]
    pub queue: i32,
    /// priority of its jobs, higher first (default 0)
    #[argh(option, default = "0")]
    pub priority: i32,
    /// sql or plpgsql (default sql)
    #[argh(option, default = "String::from(\"sql\")")]
    pub language: String,
    /// role its jobs run as (default: the role that adds the schedule)
    #[argh(option)]
    pub run_as: Option<String>,
    /// application user visible to its jobs as broker.user_login
    #[argh(option)]
    pub user_login: Option<String>,
    /// fire even while the previous job is still pending or running (default: skip that time)
    #[argh(switch)]
    pub overlap: bool,
    /// configured database (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// List schedules with their next and last fire times.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "list", help_triggers("-h", "--help", "help"))]
pub struct ScheduleListCmd {
    /// print a JSON array instead of a table
    #[argh(switch)]
    pub json: bool,
    /// only this configured database (by name; default: all)
    #[argh(option)]
    pub database: Option<String>,
}

/// Switch a schedule on: its next fire time is the first one from now (clears last_error).
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "enable", help_triggers("-h", "--help", "help"))]
pub struct ScheduleEnableCmd {
    /// the schedule's id, or its name if only one schedule has it
    #[argh(positional)]
    pub schedule: String,
    /// configured database (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Switch a schedule off: it makes no jobs until enabled again.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "disable", help_triggers("-h", "--help", "help"))]
pub struct ScheduleDisableCmd {
    /// the schedule's id, or its name if only one schedule has it
    #[argh(positional)]
    pub schedule: String,
    /// configured database (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Remove a schedule; the jobs it made stay and run as usual.
#[derive(FromArgs, Debug)]
#[argh(subcommand, name = "remove", help_triggers("-h", "--help", "help"))]
pub struct ScheduleRemoveCmd {
    /// the schedule's id, or its name if only one schedule has it
    #[argh(positional)]
    pub schedule: String,
    /// configured database (default: the first)
    #[argh(option)]
    pub database: Option<String>,
}

/// Global options that take a value; each may come before or after the command.
pub const GLOBAL_VALUE_OPTIONS: [&str; 4] = ["-c", "--config", "--log-level", "--log-format"];
/// Global switches, hoisted like the options.
pub const GLOBAL_SWITCHES: [&str; 1] = ["--version"];

/// For each command (path of subcommand names), its own options that take a value. The
/// hoisting pass must know them so it never takes their values for global options
/// (`add --name --config 'SQL'` names the job `--config`). `tests::option_table_matches_argh`
/// checks this table against the argh definitions above.
pub const COMMAND_VALUE_OPTIONS: &[(&str, &[&str])] = &[
    ("start", &[]),
    ("install", &["--database"]),
    ("status", &["--database"]),
    ("jobs", &["--status", "--queue", "--limit", "--database"]),
    (
        "add",
        &[
            "--name",
            "--queue",
            "--priority",
            "--language",
            "--run-as",
            "--user-login",
            "--run-after",
            "--max-attempts",
            "--timeout",
            "--depends-on",
            "--database",
        ],
    ),
    ("cancel", &["--database"]),
    ("retry", &["--database"]),
    ("schedule", &[]),
    ("schedule next", &["--tz", "--count", "--after"]),
    (
        "schedule add",
        &[
            "--tz",
            "--queue",
            "--priority",
            "--language",
            "--run-as",
            "--user-login",
            "--database",
        ],
    ),
    ("schedule list", &["--database"]),
    ("schedule enable", &["--database"]),
    ("schedule disable", &["--database"]),
    ("schedule remove", &["--database"]),
];
