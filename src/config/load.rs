//! Loading: a file (YAML or JSON), the `PGSQL_BROKER_*` environment over it, validation, and
//! where the file is looked for.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::*;

impl Config {
    /// A configuration serving the given databases with default broker and logging settings.
    pub fn new(databases: Vec<DatabaseConfig>) -> Config {
        Config {
            databases,
            broker: BrokerConfig::default(),
            logging: LoggingConfig::default(),
            http: HttpConfig::default(),
            systemd: None,
            warnings: Vec::new(),
        }
    }

    /// Parses a config file: JSON if its name ends in `.json`, YAML otherwise.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed: Result<Config, String> = if is_json {
            // JSON is YAML, but a JSON file should get JSON's strictness about what it holds.
            if !text.trim_start().starts_with('{') {
                Err("a .json config must hold a JSON object".into())
            } else {
                serde_yaml::from_str(&text).map_err(|e| e.to_string())
            }
        } else {
            serde_yaml::from_str(&text).map_err(|e| e.to_string())
        };
        let mut config = parsed.map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        config.fill_names();
        // An empty password is no password (as in libpq): nothing to hide.
        if config
            .databases
            .iter()
            .any(|db| db.password.as_ref().is_some_and(|p| !p.0.is_empty()))
        {
            if let Some(mode) = readable_by_others(path) {
                config.warnings.push(format!(
                    "config file {} holds a password and other users can read it (mode {mode:04o}): \
                     chmod o-rwx it, or move the password to password_file, ~/.pgpass or \
                     {ENV_PREFIX}DB_<NAME>_PASSWORD",
                    path.display()
                ));
            }
        }
        Ok(config)
    }

    /// Loads what the process runs with: the file at `path`, or without one the databases the
    /// `PGSQL_BROKER_DB_<NAME>_<KEY>` variables define, or without those one database from the
    /// libpq environment; then the `PGSQL_BROKER_*` variables from `env`, then validation,
    /// then the files the databases name (certificates, key, password file, pgpass) are read
    /// once so a bad one is an error naming its key. Problems that do not stop the broker are
    /// in [`Config::warnings`].
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        Ok(Config::load_reporting(path, env)?.0)
    }

    /// [`Config::load`], also returning the names of the databases the environment defined.
    fn load_reporting(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let mut config = match path {
            Some(p) => Config::from_file(p)?,
            None if env_defines_databases(env) => Config::new(Vec::new()),
            None => Config::new(vec![DatabaseConfig::from_libpq_env(env)?]),
        };
        let before = config.databases.len();
        config.apply_env(env)?;
        let from_env = config.databases[before..]
            .iter()
            .map(|db| db.name.clone())
            .collect();
        config.validate()?;
        config.check_files(env)?;
        config.systemd = SystemdConfig::from_env(env);
        Ok((config, from_env))
    }

    /// Finds the configuration where users expect it and loads it ([`Config::load`]). The first
    /// found wins: `explicit` (`--config`), `$PGSQL_BROKER_CONFIG`, the first of `search` that
    /// exists ([`search_path`]: `./broker.yaml`, `./broker.json`,
    /// `/etc/pgsql-broker/broker.yaml`); with none, the environment alone. A file named by
    /// `explicit` or the variable must exist. Returns what was used, for the start-up log.
    pub(crate) fn discover(
        explicit: Option<&Path>,
        env: &BTreeMap<String, String>,
        search: &[(PathBuf, FileOrigin)],
    ) -> Result<(Config, ConfigSource), ConfigError> {
        let named = match explicit {
            Some(p) => Some((p.to_path_buf(), FileOrigin::Flag)),
            None => env
                .get(&format!("{ENV_PREFIX}CONFIG"))
                .filter(|p| !p.is_empty())
                .map(|p| (PathBuf::from(p), FileOrigin::EnvVar)),
        };
        let mut skipped = Vec::new();
        let file = match named {
            Some(named) => Some(named),
            None => {
                let mut found = search.iter().filter(|(p, _)| std::fs::metadata(p).is_ok());
                let first = found.next().cloned();
                // Two files side by side (broker.yaml and broker.json) are worth a word; the
                // system-wide file behind a local one is the point of the order.
                if let Some((_, origin)) = &first {
                    skipped.extend(found.filter(|(_, o)| o == origin).map(|(p, _)| p.clone()));
                }
                first
            }
        };
        let (mut config, env_databases) =
            Config::load_reporting(file.as_ref().map(|(p, _)| p.as_path()), env)?;
        if let Some((used, _)) = &file {
            for other in skipped {
                config.warnings.push(format!(
                    "config file {} is not read: {} was found first",
                    other.display(),
                    used.display()
                ));
            }
        }
        Ok((
            config,
            ConfigSource {
                file,
                env_databases,
            },
        ))
    }

    /// Reads what each database will connect with (certificates, key, password file, pgpass),
    /// so that a bad file is a configuration error at start, naming its key, and a pgpass file
    /// others can read is a warning. Connections read the files again: a rotated password file
    /// is picked up by new connections.
    pub(crate) fn check_files(
        &mut self,
        env: &BTreeMap<String, String>,
    ) -> Result<(), ConfigError> {
        let pgpass = pgpass_path(|var| env.get(var).cloned());
        for (i, db) in self.databases.iter().enumerate() {
            let prefix = format!("databases[{i}]");
            db.tls_files().map_err(|e| e.at(&prefix))?;
            let found = db
                .find_password(pgpass.as_deref())
                .map_err(|e| e.at(&prefix))?;
            self.warnings.extend(
                found
                    .warnings
                    .into_iter()
                    .map(|w| format!("database {}: {w}", db.name)),
            );
        }
        Ok(())
    }

    fn fill_names(&mut self) {
        for db in &mut self.databases {
            if db.name.is_empty() {
                db.name = db.database.clone();
            }
        }
    }

    /// Applies `PGSQL_BROKER_<KEY>`, `PGSQL_BROKER_LOG_<KEY>`, `PGSQL_BROKER_HTTP_<KEY>` and
    /// `PGSQL_BROKER_DB_<NAME>_<KEY>`.
    /// A variable with the prefix that matches no key is an error, so typos do not pass silently.
    ///
    /// `<NAME>` is a database's name as [`env_name`] writes it. Variables whose `<NAME>` is no
    /// configured database define a new one, named `<NAME>` in lower case, if one of them is
    /// `PGSQL_BROKER_DB_<NAME>_DATABASE`; without it they are an error. New databases come after
    /// the configured ones, in the order of their names.
    pub(crate) fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        // (variable, NAME, KEY, value) of each database variable.
        let mut db_vars: Vec<(&String, String, &'static str, &String)> = Vec::new();
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" || rest == "SYSTEM_CONFIG" {
                continue; // where the config file is, read by `Config::discover`'s caller
            }
            let err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            if let Some(key) = rest.strip_prefix("LOG_") {
                self.logging
                    .set(&key.to_ascii_lowercase(), value)
                    .map_err(err)?;
            } else if let Some(key) = rest.strip_prefix("HTTP_") {
                self.http
                    .set(&key.to_ascii_lowercase(), value)
                    .map_err(err)?;
            } else if let Some(rest) = rest.strip_prefix("DB_") {
                let (name, key) = split_db_var(rest).ok_or_else(|| {
                    err(format!(
                        "expected {ENV_PREFIX}DB_<NAME>_<KEY> with KEY one of {}",
                        DB_ENV_KEYS.join(", ")
                    ))
                })?;
                db_vars.push((var, name, key, value));
            } else {
                self.broker
                    .set(&rest.to_ascii_lowercase(), value)
                    .map_err(err)?;
            }
        }
        let configured: Vec<String> = self.databases.iter().map(|db| db.name.clone()).collect();
        for (var, name, _, _) in &db_vars {
            if self.databases.iter().any(|db| env_name(&db.name) == *name) {
                continue;
            }
            if db_vars
                .iter()
                .any(|(_, n, k, _)| n == name && *k == "DATABASE")
            {
                let mut db = DatabaseConfig::new("");
                db.name = name.to_ascii_lowercase();
                self.databases.push(db);
                continue;
            }
            let configured = if configured.is_empty() {
                "none".to_string()
            } else {
                configured.join(", ")
            };
            return Err(ConfigError::Env {
                var: (*var).clone(),
                message: format!(
                    "names no configured database (configured: {configured}); to define a \
                     database {} by environment variables, set {ENV_PREFIX}DB_{name}_DATABASE",
                    name.to_ascii_lowercase()
                ),
            });
        }
        for (var, name, key, value) in db_vars {
            let err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            let db = self
                .databases
                .iter_mut()
                .find(|db| env_name(&db.name) == name)
                .ok_or_else(|| err("names no configured database".into()))?;
            db.set(&key.to_ascii_lowercase(), value).map_err(err)?;
        }
        Ok(())
    }

    /// Checks what the types alone cannot; each error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.databases.is_empty() {
            return invalid("databases".into(), "at least one database is required");
        }
        let b = &self.broker;
        const DAY: u64 = 86_400;
        // Upper bounds keep timers and thread counts sane (and arithmetic on them from
        // overflowing); a value beyond them is a typo, not a wish.
        for (key, value, min, max) in [
            (
                "fetch_query_que_size",
                b.fetch_query_que_size as u64,
                1,
                100_000,
            ),
            ("queue_timer_sec", b.queue_timer_sec, 1, DAY),
            (
                "queue_buffer_size",
                b.queue_buffer_size as u64,
                1,
                1_000_000,
            ),
            ("workers_per_queue", b.workers_per_queue as u64, 1, 64),
            (
                "retention_batch_size",
                b.retention_batch_size as u64,
                1,
                1_000_000,
            ),
            ("worker_idle_timeout_sec", b.worker_idle_timeout_sec, 0, DAY),
            ("shutdown_timeout_sec", b.shutdown_timeout_sec, 0, DAY),
            (
                "notify_retry_seconds",
                b.notify_retry_seconds.as_secs_f64().ceil() as u64,
                1,
                DAY,
            ),
            (
                "default_job_timeout",
                b.default_job_timeout.as_secs(),
                0,
                365 * DAY,
            ),
            ("max_job_timeout", b.max_job_timeout.as_secs(), 0, 365 * DAY),
            ("batch_max_ms", b.batch_max_ms, 1, 60_000),
            ("max_job_size", b.max_job_size, 0, 1 << 30),
            (
                "retention_completed",
                b.retention_completed.as_secs(),
                0,
                100 * 365 * DAY,
            ),
            (
                "retention_failed",
                b.retention_failed.as_secs(),
                0,
                100 * 365 * DAY,
            ),
        ] {
            if !(min..=max).contains(&value) {
                let message = format!("must be between {min} and {max} (seconds for durations)");
                return invalid(format!("broker.{key}"), &message);
            }
        }
        if let Err(message) = self.http.address() {
            return invalid("http.listen".into(), &message);
        }
        for (i, db) in self.databases.iter().enumerate() {
            let key = |k: &str| format!("databases[{i}].{k}");
            if db.database.is_empty() {
                return invalid(key("database"), "must not be empty");
            }
            if self.databases[..i]
                .iter()
                .any(|other| other.name == db.name)
            {
                return invalid(
                    key("name"),
                    &format!("{:?} is used by two databases", db.name),
                );
            }
            if !(1..=1000).contains(&db.queue_count) {
                return invalid(key("queue_count"), "must be between 1 and 1000");
            }
            if !(1..=10_000).contains(&db.max_open_conns) {
                return invalid(key("max_open_conns"), "must be between 1 and 10000");
            }
        }
        Ok(())
    }
}

impl BrokerConfig {
    pub(super) fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "name" => self.name = v.to_string(),
            "fetch_query_que_size" => self.fetch_query_que_size = parse_scalar(v)?,
            "queue_timer_sec" => self.queue_timer_sec = parse_scalar(v)?,
            "queue_buffer_size" => self.queue_buffer_size = parse_scalar(v)?,
            "worker_idle_timeout_sec" => self.worker_idle_timeout_sec = parse_scalar(v)?,
            "notify_retry_seconds" => self.notify_retry_seconds = parse_duration(v)?,
            "enable_debug" => self.enable_debug = parse_scalar(v)?,
            "workers_per_queue" => self.workers_per_queue = parse_scalar(v)?,
            "shutdown_timeout_sec" => self.shutdown_timeout_sec = parse_scalar(v)?,
            "default_job_timeout" => self.default_job_timeout = parse_duration(v)?,
            "max_job_timeout" => self.max_job_timeout = parse_duration(v)?,
            "batch_max_ms" => self.batch_max_ms = parse_scalar(v)?,
            "max_job_size" => self.max_job_size = parse_scalar(v)?,
            "evict_lock_holders" => self.evict_lock_holders = parse_scalar(v)?,
            "retention_completed" => self.retention_completed = parse_duration(v)?,
            "retention_failed" => self.retention_failed = parse_duration(v)?,
            "retention_batch_size" => self.retention_batch_size = parse_scalar(v)?,
            "standby" => self.standby = parse_scalar(v)?,
            _ => return Err(format!("unknown broker key {key:?}")),
        }
        Ok(())
    }
}

impl LoggingConfig {
    /// Sets `level` or `format` from text, as the environment and flags give them.
    pub(crate) fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "level" => self.level = v.parse()?,
            "format" => self.format = v.parse()?,
            _ => return Err(format!("unknown logging key {key:?}")),
        }
        Ok(())
    }
}

impl HttpConfig {
    /// Sets `listen` from text, as the environment gives it.
    pub(crate) fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "listen" => self.listen = v.to_string(),
            _ => return Err(format!("unknown http key {key:?}")),
        }
        Ok(())
    }
}

impl DatabaseConfig {
    pub(super) fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "host" => self.host = v.to_string(),
            "port" => self.port = parse_scalar(v)?,
            "database" => self.database = v.to_string(),
            "user" => self.user = v.to_string(),
            "password" => self.password = Some(Secret(v.to_string())),
            "password_file" => self.password_file = Some(PathBuf::from(v)),
            "sslmode" => self.sslmode = parse_scalar(v)?,
            "sslrootcert" => self.sslrootcert = Some(PathBuf::from(v)),
            "sslcert" => self.sslcert = Some(PathBuf::from(v)),
            "sslkey" => self.sslkey = Some(PathBuf::from(v)),
            "max_open_conns" => self.max_open_conns = parse_scalar(v)?,
            "max_idle_conns" => self.max_idle_conns = parse_scalar(v)?,
            "conn_max_lifetime" => self.conn_max_lifetime = parse_duration(v)?,
            "conn_max_idle_time" => self.conn_max_idle_time = parse_duration(v)?,
            "queue_count" => self.queue_count = parse_scalar(v)?,
            _ => return Err(format!("unknown database key {key:?}")),
        }
        Ok(())
    }
}

/// The system-wide config file, looked for last (see [`search_path`]).
pub const SYSTEM_CONFIG: &str = "/etc/pgsql-broker/broker.yaml";

/// What named or found the config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOrigin {
    /// `--config`.
    Flag,
    /// `$PGSQL_BROKER_CONFIG`.
    EnvVar,
    /// Found in the working directory.
    WorkingDir,
    /// The system-wide file.
    System,
}

/// Where [`Config::discover`] looks when neither `--config` nor `$PGSQL_BROKER_CONFIG` names a
/// file: `./broker.yaml`, `./broker.json`, then `$PGSQL_BROKER_SYSTEM_CONFIG` if set (empty:
/// none), else [`SYSTEM_CONFIG`].
pub fn search_path(env: &BTreeMap<String, String>) -> Vec<(PathBuf, FileOrigin)> {
    let mut paths = vec![
        (PathBuf::from("./broker.yaml"), FileOrigin::WorkingDir),
        (PathBuf::from("./broker.json"), FileOrigin::WorkingDir),
    ];
    let system = env
        .get(&format!("{ENV_PREFIX}SYSTEM_CONFIG"))
        .map(String::as_str)
        .unwrap_or(SYSTEM_CONFIG);
    if !system.is_empty() {
        paths.push((PathBuf::from(system), FileOrigin::System));
    }
    paths
}

/// Where the configuration came from, as [`Config::discover`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSource {
    /// The config file and what named or found it; None without a file.
    pub file: Option<(PathBuf, FileOrigin)>,
    /// Databases `PGSQL_BROKER_DB_<NAME>_<KEY>` variables defined (beyond the file's).
    pub env_databases: Vec<String>,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_dbs = self.env_databases.join(", ");
        match &self.file {
            Some((path, origin)) => {
                let how = match origin {
                    FileOrigin::Flag => "named by --config",
                    FileOrigin::EnvVar => "named by $PGSQL_BROKER_CONFIG",
                    FileOrigin::WorkingDir => "found in the working directory",
                    FileOrigin::System => "the system-wide file",
                };
                write!(f, "config file {} ({how})", path.display())?;
                if !env_dbs.is_empty() {
                    write!(
                        f,
                        ", plus database(s) {env_dbs} from {ENV_PREFIX}DB_* variables"
                    )?;
                }
                Ok(())
            }
            None if !env_dbs.is_empty() => write!(
                f,
                "no config file; database(s) {env_dbs} from {ENV_PREFIX}DB_* variables"
            ),
            None => write!(
                f,
                "no config file and no {ENV_PREFIX}DB_* variables; one database from the libpq \
                 environment (PGHOST, PGPORT, PGUSER, PGDATABASE)"
            ),
        }
    }
}

/// Parses one value the way the config file would: `"5"` as a number, `"json"` as a format.
pub(super) fn parse_scalar<T: DeserializeOwned>(v: &str) -> Result<T, String> {
    serde_yaml::from_str(v).map_err(|e| format!("bad value {v:?}: {e}"))
}
