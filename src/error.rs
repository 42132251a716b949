//! The broker's error type (each variant says which database and what it was doing), and how
//! PostgreSQL's errors read to the person at the terminal.

use std::fmt;

use crate::config::ConfigError;

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
    /// `broker_add_job` refused the job [`submit`](crate::job::submit)ted, or the statement failed.
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
                    describe_connect_error(source)
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

/// An error as the person at the terminal needs it: SQLSTATE and message, plus detail and hint.
/// Job failures are recorded in this form too.
pub fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("SQLSTATE {}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
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

/// The connection-failure text with a hint for the failures the connector cannot explain: a
/// server that refuses TLS while sslmode demands it, and a password nobody gave.
pub fn describe_connect_error(e: &postgres::Error) -> String {
    let mut text = describe(e);
    // postgres::Error's Display leaves out its cause ("error performing TLS handshake"), and
    // the cause is what the person needs: the refused port, the certificate problem.
    if e.as_db_error().is_none() {
        if let Some(cause) = std::error::Error::source(e) {
            text = format!("{text}: {cause}");
        }
    }
    if text.ends_with("server does not support TLS") {
        format!(
            "{text}: the server has ssl = off (or does not offer TLS); sslmode require, \
             verify-ca and verify-full insist on TLS, prefer would fall back to plain text"
        )
    } else if text.ends_with("password missing") {
        // Not TLS, but the other connection failure whose fix is in the broker's settings.
        format!(
            "{text}: the server asks for a password and none was found (set password, \
             password_file, PGSQL_BROKER_DB_<NAME>_PASSWORD or a pgpass entry)"
        )
    } else {
        text
    }
}
