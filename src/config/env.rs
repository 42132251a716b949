//! Environment variables: the names of `PGSQL_BROKER_DB_<NAME>_<KEY>`, and one database from
//! the libpq environment (`PGHOST`, `PGPORT`, ...) when nothing else defines one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::*;

/// A database name as it appears in environment variable names: upper case, `_` for the rest.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The keys of `PGSQL_BROKER_DB_<NAME>_<KEY>`: every database key but `name`, upper-cased.
pub const DB_ENV_KEYS: [&str; 15] = [
    "HOST",
    "PORT",
    "DATABASE",
    "USER",
    "PASSWORD",
    "PASSWORD_FILE",
    "SSLMODE",
    "SSLROOTCERT",
    "SSLCERT",
    "SSLKEY",
    "MAX_OPEN_CONNS",
    "MAX_IDLE_CONNS",
    "CONN_MAX_LIFETIME",
    "CONN_MAX_IDLE_TIME",
    "QUEUE_COUNT",
];

/// Splits the `<NAME>_<KEY>` of a database variable (upper-cased) at the longest key it ends
/// with, so names may hold underscores: `MAIN_DB_PASSWORD_FILE` is `MAIN_DB`, `PASSWORD_FILE`.
pub(super) fn split_db_var(rest: &str) -> Option<(String, &'static str)> {
    let rest = rest.to_ascii_uppercase();
    DB_ENV_KEYS
        .iter()
        .filter_map(|key| {
            let name = rest.strip_suffix(key)?.strip_suffix('_')?;
            (!name.is_empty()).then(|| (name.to_string(), *key))
        })
        .max_by_key(|(_, key)| key.len())
}

/// True when `env` defines a database by itself (`PGSQL_BROKER_DB_<NAME>_DATABASE`).
pub(super) fn env_defines_databases(env: &BTreeMap<String, String>) -> bool {
    env.keys().any(|var| {
        var.strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.strip_prefix("DB_"))
            .and_then(split_db_var)
            .is_some_and(|(_, key)| key == "DATABASE")
    })
}

impl DatabaseConfig {
    /// One database from the libpq environment, as psql would connect with no arguments.
    pub(crate) fn from_libpq_env(
        env: &BTreeMap<String, String>,
    ) -> Result<DatabaseConfig, ConfigError> {
        let get = |k: &str| env.get(k).filter(|v| !v.is_empty()).cloned();
        let user = get("PGUSER").unwrap_or_else(os_user);
        let mut db = DatabaseConfig::new(get("PGDATABASE").unwrap_or_else(|| user.clone()));
        db.user = user;
        db.host = get("PGHOST").unwrap_or_else(|| {
            let socket_dir = "/var/run/postgresql";
            if Path::new(socket_dir).is_dir() {
                socket_dir.into()
            } else {
                default_host()
            }
        });
        if let Some(port) = get("PGPORT") {
            db.port = parse_scalar(&port).map_err(|message| ConfigError::Env {
                var: "PGPORT".into(),
                message,
            })?;
        }
        db.password = get("PGPASSWORD").map(Secret);
        if let Some(mode) = get("PGSSLMODE") {
            db.sslmode = parse_scalar(&mode).map_err(|message| ConfigError::Env {
                var: "PGSSLMODE".into(),
                message,
            })?;
        }
        db.sslrootcert = get("PGSSLROOTCERT").map(PathBuf::from);
        db.sslcert = get("PGSSLCERT").map(PathBuf::from);
        db.sslkey = get("PGSSLKEY").map(PathBuf::from);
        Ok(db)
    }
}

/// The operating-system user, which libpq uses when PGUSER is not set.
pub(super) fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres".into())
}
