//! pgsql-broker: a job broker for PostgreSQL. Jobs are rows in `broker_jobs`; the broker runs
//! their SQL inside the database, woken by LISTEN/NOTIFY and a slow poll.
//!
//! Data flows one way: notification → claim (the listener) → a queue's channel → the queue's
//! workers, which run each job and record its result in the same transaction as its effects.
//!
//! # The library
//!
//! The `pgsql-broker` command is a thin layer over this crate; a program can embed the broker
//! instead. What it needs is re-exported here, and nothing else is public:
//!
//! - [`Config`], built in code ([`Config::new`] with [`DatabaseConfig::new`]) or loaded
//!   ([`Config::load`] for a file plus `PGSQL_BROKER_*` variables, [`Config::from_file`]),
//!   with its parts [`DatabaseConfig`], [`BrokerConfig`], [`LoggingConfig`], [`HttpConfig`],
//!   [`SystemdConfig`] and the small types of their fields: [`SslMode`], [`Secret`],
//!   [`LogLevel`], [`LogFormat`].
//! - [`Broker`]: [`Broker::start`] serves the configured databases (and installs a missing
//!   schema); [`Broker::stop`] or a [`StopHandle`] from any thread begins the graceful drain;
//!   [`Broker::wait`] returns when it is over. With [`HttpConfig::listen`] set it serves
//!   `/metrics`, `/healthz` and `/readyz` ([`Broker::http_addr`]); with [`Config::systemd`]
//!   set it notifies the service manager (`READY=1`, `STOPPING=1`, `WATCHDOG=1`).
//! - [`NewJob`] and [`submit`]: add a job through `broker_add_job`, on any connection or
//!   inside the caller's own transaction. [`DatabaseConfig::connect`] opens a connection with
//!   the broker's own settings (TLS, password file, pgpass).
//! - [`Error`] and [`ConfigError`]: each says which database, key or job is at fault.
//!
//! # Logging
//!
//! The broker logs through the [`log`](https://docs.rs/log) facade and installs no logger of
//! its own: install any `log` implementation (env_logger, simplelog, a tracing bridge) before
//! [`Broker::start`], and filter by target (`pgsql_broker::runtime::listener`, `pgsql_broker::runtime::worker`,
//! …). Without one, the broker is silent. The database driver logs every statement with its
//! parameters at debug level under the targets `tokio_postgres` and `postgres`; filter those out
//! to keep job SQL and its data out of the log. The command's text and JSON output are the
//! command's business and not part of the library.
//!
//! # No database-adapter trait
//!
//! Connections are described by [`DatabaseConfig`] (host, port, user, password or
//! `password_file` or pgpass, `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, pool sizes) and
//! TLS is built in (rustls, with libpq's sslmode semantics), which covers what an embedder
//! would bring its own adapter for. A trait would have to hand out the worker pool and the
//! LISTEN connection, which is where every guarantee lives (keepalives, cancel requests over
//! the same TLS, one active instance per database), so it does not earn its place now.
//!
//! # Examples
//!
//! A configuration built in code, started, and stopped from another thread:
//!
//! ```no_run
//! use pgsql_broker::{Broker, Config, DatabaseConfig, Secret};
//!
//! let mut db = DatabaseConfig::new("app");
//! db.host = "db.internal".into();
//! db.user = "broker".into();
//! db.password = Some(Secret::new("s3cret"));
//! db.queue_count = 4;
//! let mut config = Config::new(vec![db]);
//! config.broker.name = "my-service".into();
//!
//! let broker = Broker::start(config)?;
//! let stop = broker.stop_handle();
//! std::thread::spawn(move || {
//!     // e.g. on a shutdown request
//!     stop.stop();
//! });
//! broker.wait()?; // returns once the running jobs have drained
//! # Ok::<(), pgsql_broker::Error>(())
//! ```
//!
//! A configuration loaded from a file and the `PGSQL_BROKER_*` environment, as the command
//! loads it (then validated, and the files it names checked):
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use std::path::Path;
//!
//! let env: BTreeMap<String, String> = std::env::vars().collect();
//! let config = pgsql_broker::Config::load(Some(Path::new("/etc/my-service/broker.yaml")), &env)?;
//! for warning in &config.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! # Ok::<(), pgsql_broker::ConfigError>(())
//! ```
//!
//! Submitting a job:
//!
//! ```no_run
//! use pgsql_broker::{submit, DatabaseConfig, NewJob};
//!
//! let mut client = DatabaseConfig::new("app").connect()?;
//! let mut job = NewJob::new("nightly-report", "CALL build_report()");
//! job.queue = 2;
//! job.max_attempts = 3;
//! let id = submit(&mut client, &job)?;
//! println!("job {id} submitted");
//! # Ok::<(), pgsql_broker::Error>(())
//! ```

/// The command line.
mod cli;
/// Configuration: file, environment, flags, libpq defaults, passwords.
mod config;
/// The database adapter: connections, TLS, error classes, typed SQL calls, the schema.
mod db;
/// The error type, and how PostgreSQL's errors read.
mod error;
/// Submitting jobs.
mod job;
/// Text and JSON log output of the command.
mod logging;
/// Operability building blocks: metrics, a small HTTP server, systemd notifications.
mod ops;
/// The running broker: listener, workers, instance, shutdown.
mod runtime;
/// Cron expressions and the scheduler.
mod schedule;

pub use config::{
    BrokerConfig, Config, ConfigError, DatabaseConfig, HttpConfig, LogFormat, LogLevel,
    LoggingConfig, Secret, SslMode, SystemdConfig,
};
pub use error::Error;
pub use job::{submit, NewJob};
pub use runtime::broker::{Broker, StopHandle};

/// The `pgsql-broker` command with its arguments (without the program name); returns the exit
/// code. For the binary only.
#[doc(hidden)]
pub fn run_cli(args: &[String]) -> i32 {
    cli::main(args)
}

/// Internals the integration tests check against; not part of the API.
#[doc(hidden)]
pub mod test_support {
    pub use crate::db::install::SCHEMA_VERSION;
    pub use crate::db::{cancel, connect, is_query_canceled, try_pool};
    pub use crate::runtime::instance::hostname;
}
