//! pgsql-broker: a job broker for PostgreSQL. Jobs are rows in `broker_jobs`; the broker runs
//! their SQL inside the database, woken by LISTEN/NOTIFY and a slow poll.
//!
//! Data flows one way: notification (`listener`) → claim and run (`worker`) → result
//! (`broker_set`, through [`db`]).
//!
//! ```no_run
//! use pgsql_broker::{Broker, Config, DatabaseConfig};
//! let broker = Broker::start(Config::new(vec![DatabaseConfig::new("app")]))?;
//! // ... later, e.g. on shutdown:
//! broker.stop();
//! broker.wait()?;
//! # Ok::<(), pgsql_broker::Error>(())
//! ```

/// Per database: from "not connected" to "active instance" (backoff, recovery, standby).
mod acquire;
/// Starting and stopping the whole broker.
pub mod broker;
/// The command line.
pub mod cli;
/// Configuration: file, environment, flags, libpq defaults.
pub mod config;
/// Cron expressions and their fire times in a time zone.
pub mod cron;
/// The database adapter: connections, pool, typed calls of the SQL API.
pub mod db;
/// The error type.
pub mod error;
/// The embedded schema and its installer.
pub mod install;
/// The single active instance per database.
pub mod instance;
/// Per database: LISTEN, poll, heartbeat, drain.
mod listener;
/// Text and JSON log output.
pub mod logging;
/// Due schedules become jobs (called from the listener's poll).
mod scheduler;
/// Standby processes sharing databases out among themselves.
mod sharing;
/// SIGTERM/SIGINT handling.
pub mod shutdown;
/// TLS for database connections with libpq's sslmode semantics (rustls).
pub mod tls;
/// Per queue: claim and run jobs.
mod worker;

pub use broker::{Broker, StopHandle};
pub use config::{Config, DatabaseConfig};
pub use error::Error;
