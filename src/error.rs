//! The broker's error type: each variant says which database and what it was doing.

use std::fmt;

use crate::config::ConfigError;
use crate::db::describe;

/// What went wrong, naming the database (or job) and what the broker was doing. New variants
/// may be added.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable; the CLI exits 2.
    Config(ConfigError),
    /// Connecting to a database failed.
    Connect {
        database: String,
        source: postgres::Error,
    },
    /// A statement the broker itself issued failed.
    Sql {
        database: String,
        action: &'static str,
        source: postgres::Error,
    },
    /// The installed schema is missing objects or has another version than this binary.
    Schema {
        database: String,
        problems: Vec<String>,
    },
    /// Another broker instance holds the database.
    InstanceActive { database: String, message: String },
    /// `broker_add_job` refused the job [`submit`](crate::submit)ted, or the statement failed.
    Submit {
        job: String,
        source: postgres::Error,
    },
    /// Anything else that stops the broker, e.g. a thread that could not be started.
    Runtime(String),
}

impl Error {
    /// The process exit code the CLI uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(e) => e.fmt(f),
            Error::Connect { database, source } => {
                write!(
                    f,
                    "database {database}: cannot connect: {}",
                    crate::tls::describe_connect_error(source)
                )
            }
            Error::Sql {
                database,
                action,
                source,
            } => {
                write!(
                    f,
                    "database {database}: {action} failed: {}",
                    describe(source)
                )
            }
            Error::Schema { database, problems } => {
                write!(
                    f,
                    "database {database}: schema not usable: {}",
                    problems.join("; ")
                )
            }
            Error::InstanceActive { database, message } => {
                write!(f, "database {database}: {message}")
            }
            Error::Submit { job, source } => {
                write!(f, "job {job:?} not submitted: {}", describe(source))
            }
            Error::Runtime(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(e) => Some(e),
            Error::Connect { source, .. }
            | Error::Sql { source, .. }
            | Error::Submit { source, .. } => Some(source),
            Error::Schema { .. } | Error::InstanceActive { .. } | Error::Runtime(_) => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        Error::Config(e)
    }
}
