//! Configuration: a YAML or JSON file, overridden by `PGSQL_BROKER_*` environment variables,
//! overridden by command-line flags. With no file, one database from the libpq environment.
//!
//! Every key has one parser (its serde type); environment values go through the same parser, so a
//! value means the same thing wherever it is written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Prefix of every environment variable the broker reads (besides the libpq `PG*` ones).
pub const ENV_PREFIX: &str = "PGSQL_BROKER_";

/// The whole configuration of one broker process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    #[serde(default)]
    pub broker: BrokerConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Problems worth a warning that do not stop the broker (e.g. a config file others can read
    /// that holds a password). Loading happens before logging is set up, so the caller logs them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// One database the broker serves.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Name used in logs, `--database` and environment variables; defaults to `database`.
    #[serde(default)]
    pub name: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    #[serde(default = "default_user")]
    pub user: String,
    /// The password; else `password_file`, else the pgpass file (see [`DatabaseConfig::find_password`]).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password, e.g. a systemd credential or a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate(s) (PEM) that vouch for the server; `system` for the system's CA bundle.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate (PEM) presented to the server, with `sslkey`.
    #[serde(default)]
    pub sslcert: Option<PathBuf>,
    /// Private key (PEM, unencrypted) of `sslcert`.
    #[serde(default)]
    pub sslkey: Option<PathBuf>,
    #[serde(default = "default_max_open_conns")]
    pub max_open_conns: u32,
    #[serde(default = "default_max_idle_conns")]
    pub max_idle_conns: u32,
    #[serde(
        default = "default_conn_max_lifetime",
        deserialize_with = "de_duration"
    )]
    pub conn_max_lifetime: Duration,
    #[serde(
        default = "default_conn_max_idle_time",
        deserialize_with = "de_duration"
    )]
    pub conn_max_idle_time: Duration,
    #[serde(default = "default_queue_count")]
    pub queue_count: u32,
}

/// Settings shared by every database of the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Instance name recorded in `broker_queueinstance`.
    pub name: String,
    /// Jobs the listener claims for a queue in one statement at most, and jobs a worker runs
    /// in one transaction at most (never more than 64, see `worker::MAX_JOBS_PER_TRANSACTION`).
    pub fetch_query_que_size: u32,
    /// Seconds between polls that catch jobs a notification missed.
    pub queue_timer_sec: u64,
    /// Capacity of each queue's channel of claimed jobs: how many jobs may wait, claimed, for
    /// a queue's workers (and so how long a newly arrived higher-priority job may wait).
    pub queue_buffer_size: usize,
    /// Seconds an idle worker keeps its pooled connection before giving it back.
    pub worker_idle_timeout_sec: u64,
    /// Wait before reconnecting a lost listener connection.
    #[serde(deserialize_with = "de_duration")]
    pub notify_retry_seconds: Duration,
    pub enable_debug: bool,
    /// Workers per queue; 1 keeps a queue strictly serial in priority order.
    pub workers_per_queue: u32,
    /// Seconds running jobs get to finish on shutdown before they are cancelled.
    pub shutdown_timeout_sec: u64,
    /// Timeout of jobs that set none themselves; zero means none.
    #[serde(deserialize_with = "de_duration")]
    pub default_job_timeout: Duration,
    /// A cap no job's timeout can exceed, a job's `timeout => '0'` included; zero: no cap.
    #[serde(deserialize_with = "de_duration")]
    pub max_job_timeout: Duration,
    /// A worker's transaction commits once it has run this long (milliseconds), so no job's
    /// commit waits long and no lock is held long.
    pub batch_max_ms: u64,
    /// Largest `execute_str` (bytes) the database accepts in a job or schedule; 0: no limit.
    pub max_job_size: u64,
    /// End a session that holds the instance lock but is no broker instance, where the
    /// broker's login may (superuser, or a member of `pg_signal_backend`).
    pub evict_lock_holders: bool,
    /// Completed jobs older than this are deleted; zero keeps them forever.
    #[serde(deserialize_with = "de_duration")]
    pub retention_completed: Duration,
    /// Failed and cancelled jobs older than this are deleted; zero keeps them forever.
    #[serde(deserialize_with = "de_duration")]
    pub retention_failed: Duration,
    /// Rows deleted per statement, so retention never holds long locks.
    pub retention_batch_size: u32,
    /// Wait for databases another broker instance holds and take them over when it dies,
    /// instead of refusing to start. Several processes with `standby: true` and the same
    /// databases share them out (see README, "Failover and sharing").
    pub standby: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// libpq's `sslmode`; what each mode checks is described in [`crate::tls`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The mode as written in the config, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A password: deserializes like a string, never prints.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    /// The secret itself, for handing to the connection and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A configuration problem, naming the key, variable or file at fault.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Parse {
        path: PathBuf,
        message: String,
    },
    Invalid {
        key: String,
        message: String,
    },
    Env {
        var: String,
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config file {}: {source}", path.display())
            }
            ConfigError::Parse { path, message } => {
                write!(f, "config file {}: {message}", path.display())
            }
            ConfigError::Invalid { key, message } => write!(f, "config key {key}: {message}"),
            ConfigError::Env { var, message } => {
                write!(f, "environment variable {var}: {message}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A problem with one database setting, before it is known where the setting came from:
/// `key` is the bare key (e.g. `password_file`), which the caller places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError {
    pub key: &'static str,
    pub message: String,
}

impl KeyError {
    pub fn new(key: &'static str, message: impl Into<String>) -> KeyError {
        KeyError {
            key,
            message: message.into(),
        }
    }

    /// As a config error naming `prefix.key`, e.g. `databases[0].sslrootcert`.
    pub fn at(self, prefix: &str) -> ConfigError {
        ConfigError::Invalid {
            key: format!("{prefix}.{}", self.key),
            message: self.message,
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for KeyError {}

fn default_host() -> String {
    "localhost".into()
}
fn default_port() -> u16 {
    5432
}
fn default_user() -> String {
    os_user()
}
fn default_max_open_conns() -> u32 {
    25
}
fn default_max_idle_conns() -> u32 {
    5
}
fn default_conn_max_lifetime() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_conn_max_idle_time() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_queue_count() -> u32 {
    4
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            name: "pgsql-broker".into(),
            fetch_query_que_size: 100,
            queue_timer_sec: 10,
            queue_buffer_size: 50,
            worker_idle_timeout_sec: 10,
            notify_retry_seconds: Duration::from_secs(30),
            enable_debug: false,
            workers_per_queue: 1,
            shutdown_timeout_sec: 30,
            default_job_timeout: Duration::ZERO,
            max_job_timeout: Duration::ZERO,
            batch_max_ms: 5,
            max_job_size: 1024 * 1024,
            evict_lock_holders: true,
            retention_completed: Duration::from_secs(7 * 86_400),
            retention_failed: Duration::from_secs(30 * 86_400),
            retention_batch_size: 1000,
            standby: false,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

impl DatabaseConfig {
    /// A database with the seed's defaults for everything but its name.
    pub fn new(database: impl Into<String>) -> DatabaseConfig {
        let database = database.into();
        DatabaseConfig {
            name: database.clone(),
            host: default_host(),
            port: default_port(),
            database,
            user: default_user(),
            password: None,
            password_file: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            max_open_conns: default_max_open_conns(),
            max_idle_conns: default_max_idle_conns(),
            conn_max_lifetime: default_conn_max_lifetime(),
            conn_max_idle_time: default_conn_max_idle_time(),
            queue_count: default_queue_count(),
        }
    }

    /// One database from the libpq environment, as psql would connect with no arguments.
    pub fn from_libpq_env(env: &BTreeMap<String, String>) -> Result<DatabaseConfig, ConfigError> {
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

impl Config {
    /// A configuration serving the given databases with default broker and logging settings.
    pub fn new(databases: Vec<DatabaseConfig>) -> Config {
        Config {
            databases,
            broker: BrokerConfig::default(),
            logging: LoggingConfig::default(),
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
        if config.databases.iter().any(|db| db.password.is_some()) {
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

    /// Loads what the process runs with: the file (or the libpq environment when there is
    /// none), then `PGSQL_BROKER_*` variables from `env`, then validation.
    pub fn load(
        path: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Config::from_file(p)?,
            None => Config::new(vec![DatabaseConfig::from_libpq_env(env)?]),
        };
        config.apply_env(env)?;
        config.validate()?;
        config.check_files(env)?;
        Ok(config)
    }

    /// Reads what each database will connect with (certificates, key, password file, pgpass),
    /// so that a bad file is a configuration error at start, naming its key, and a pgpass file
    /// others can read is a warning. Connections read the files again: a rotated password file
    /// is picked up by new connections.
    pub fn check_files(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        let pgpass = pgpass_path(|var| env.get(var).cloned());
        for (i, db) in self.databases.iter().enumerate() {
            let prefix = format!("databases[{i}]");
            crate::tls::MakeTls::new(db).map_err(|e| e.at(&prefix))?;
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

    /// Applies `PGSQL_BROKER_<KEY>`, `PGSQL_BROKER_LOG_<KEY>` and `PGSQL_BROKER_DB_<NAME>_<KEY>`.
    /// A variable with the prefix that matches no key is an error, so typos do not pass silently.
    pub fn apply_env(&mut self, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if rest == "CONFIG" {
                continue; // the config file path, read by the CLI
            }
            let err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            if let Some(key) = rest.strip_prefix("LOG_") {
                self.logging
                    .set(&key.to_ascii_lowercase(), value)
                    .map_err(err)?;
            } else if let Some(rest) = rest.strip_prefix("DB_") {
                let db = self
                    .databases
                    .iter_mut()
                    .find(|db| rest.starts_with(&format!("{}_", env_name(&db.name))))
                    .ok_or_else(|| err("names no configured database".into()))?;
                let key = rest[env_name(&db.name).len() + 1..].to_ascii_lowercase();
                db.set(&key, value).map_err(err)?;
            } else {
                self.broker
                    .set(&rest.to_ascii_lowercase(), value)
                    .map_err(err)?;
            }
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

    /// The database called `name`, for `--database`.
    pub fn database(&self, name: &str) -> Result<&DatabaseConfig, ConfigError> {
        self.databases
            .iter()
            .find(|db| db.name == name)
            .ok_or_else(|| ConfigError::Invalid {
                key: "--database".into(),
                message: format!("no database named {name:?} in the configuration"),
            })
    }
}

impl BrokerConfig {
    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
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
    pub fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "level" => self.level = parse_scalar(v)?,
            "format" => self.format = parse_scalar(v)?,
            _ => return Err(format!("unknown logging key {key:?}")),
        }
        Ok(())
    }
}

impl DatabaseConfig {
    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
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

/// A password found for a database, and what to warn about on the way.
#[derive(Debug, Default)]
pub struct FoundPassword {
    pub password: Option<Secret>,
    /// Where it came from, for debug logs: `password`, `password_file` or the pgpass path.
    pub source: Option<String>,
    pub warnings: Vec<String>,
}

impl DatabaseConfig {
    /// The password to connect with, in this order: `password` (from the config file or
    /// `PGSQL_BROKER_DB_<NAME>_PASSWORD`; `PGPASSWORD` without a config file), then
    /// `password_file`, then the pgpass file `pgpass` (libpq's `~/.pgpass` or `PGPASSFILE`).
    /// An empty password counts as none, as in libpq. Errors name the key, never the password.
    pub fn find_password(&self, pgpass: Option<&Path>) -> Result<FoundPassword, KeyError> {
        let mut found = FoundPassword::default();
        if let Some(p) = self.password.as_ref().filter(|p| !p.0.is_empty()) {
            found.password = Some(p.clone());
            found.source = Some("password".into());
            return Ok(found);
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                KeyError::new(
                    "password_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let first = text.lines().next().unwrap_or("");
            if first.is_empty() {
                return Err(KeyError::new(
                    "password_file",
                    format!("{}: the first line (the password) is empty", path.display()),
                ));
            }
            if let Some(mode) = readable_by_others(path) {
                found.warnings.push(format!(
                    "password_file {} can be read by other users (mode {mode:04o}); chmod o-rwx it",
                    path.display()
                ));
            }
            found.password = Some(Secret(first.to_string()));
            found.source = Some("password_file".into());
            return Ok(found);
        }
        let Some(path) = pgpass else {
            return Ok(found);
        };
        match pgpass_usable(path) {
            Ok(true) => {}
            Ok(false) => return Ok(found),
            Err(warning) => {
                found.warnings.push(warning);
                return Ok(found);
            }
        }
        // Unreadable (e.g. permission denied): libpq goes on without it, and so do we.
        let Ok(text) = std::fs::read_to_string(path) else {
            found.warnings.push(format!(
                "password file {} cannot be read; not used",
                path.display()
            ));
            return Ok(found);
        };
        let host = pgpass_host(&self.host);
        if let Some(p) = pgpass_lookup(&text, host, self.port, &self.database, &self.user) {
            found.password = Some(p);
            found.source = Some(path.display().to_string());
        }
        Ok(found)
    }
}

/// The pgpass file libpq would read: `PGPASSFILE`, else `~/.pgpass`.
pub fn pgpass_path(env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    env("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".pgpass"))
}

/// The host as pgpass lines name it: libpq matches a Unix socket in the default directory (and
/// an empty host) as `localhost`.
fn pgpass_host(host: &str) -> &str {
    match host {
        "" | "/var/run/postgresql" | "/run/postgresql" | "/tmp" => "localhost",
        h => h,
    }
}

/// Ok(false) when there is no such file; Err(warning) when libpq would ignore it.
fn pgpass_usable(path: &Path) -> Result<bool, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(format!(
                "password file {} cannot be read ({e}); not used",
                path.display()
            ))
        }
    };
    if !meta.is_file() {
        return Err(format!(
            "password file {} is not a plain file; not used",
            path.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "password file {} has group or world access (mode {mode:04o}); permissions \
                 should be u=rw (0600) or less; not used",
                path.display()
            ));
        }
    }
    Ok(true)
}

/// The password of the first pgpass line (`host:port:database:user:password`) that matches.
/// A field that is exactly `*` matches anything; `\:` and `\\` stand for `:` and `\`.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Option<Secret> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), database, user];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((fields, password)) = pgpass_fields(line) else {
            continue;
        };
        let matches = fields.iter().zip(wanted).all(|(field, want)| match field {
            None => true,
            Some(f) => f == want,
        });
        if matches {
            // libpq uses the first matching line, even when its password is empty.
            return Some(Secret(password)).filter(|p| !p.0.is_empty());
        }
    }
    None
}

/// Splits a pgpass line into its four match fields (`None` for the `*` wildcard) and the
/// password, unescaping as libpq does. Lines with fewer than five fields match nothing.
fn pgpass_fields(line: &str) -> Option<([Option<String>; 4], String)> {
    let mut fields: Vec<Option<String>> = Vec::with_capacity(4);
    let mut current = String::new();
    let mut escaped_any = false;
    let mut chars = line.chars();
    while fields.len() < 4 {
        match chars.next()? {
            '\\' => {
                // A trailing backslash stands for itself.
                current.push(chars.next().unwrap_or('\\'));
                escaped_any = true;
            }
            ':' => {
                // Only an unescaped, lone `*` is the wildcard; `\*` is a literal star.
                let field = std::mem::take(&mut current);
                fields.push(if field == "*" && !escaped_any {
                    None
                } else {
                    Some(field)
                });
                escaped_any = false;
            }
            c => current.push(c),
        }
    }
    // The password runs to the end of the line or the next unescaped colon.
    let mut password = String::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => password.push(chars.next().unwrap_or('\\')),
            ':' => break,
            c => password.push(c),
        }
    }
    let fields: [Option<String>; 4] = fields.try_into().ok()?;
    Some((fields, password))
}

/// The file's mode when users outside its owner and group can access it.
fn readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o007 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

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

/// Parses one value the way the config file would: `"5"` as a number, `"json"` as a format.
fn parse_scalar<T: DeserializeOwned>(v: &str) -> Result<T, String> {
    serde_yaml::from_str(v).map_err(|e| format!("bad value {v:?}: {e}"))
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as 30s, 5m or 1h30m, or whole seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Parses a duration as Go writes them (`300ms`, `5m`, `1h30m`, `2.5s`); a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("bad duration {text:?}: {why} (write e.g. 30s, 5m, 1h30m)");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad("expected a number"));
        }
        let value: f64 = rest[..num_len]
            .parse()
            .map_err(|_| bad("expected a number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            // Not Go, but retention periods read better in days.
            "d" => 86_400.0,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad("too large"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// The operating-system user, which libpq uses when PGUSER is not set.
fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pgsql-broker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m")
            .unwrap_err()
            .contains("expected a number"));
        assert!(parse_duration("5").is_ok());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("3 s").is_err());
    }

    #[test]
    fn yaml_defaults_are_the_seeds() {
        let path = write("defaults.yaml", "databases:\n  - database: app\n");
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        let db = &c.databases[0];
        assert_eq!(db.name, "app");
        assert_eq!(db.port, 5432);
        assert_eq!(db.sslmode, SslMode::Disable);
        assert_eq!(
            (db.max_open_conns, db.max_idle_conns, db.queue_count),
            (25, 5, 4)
        );
        assert_eq!(db.conn_max_lifetime, Duration::from_secs(300));
        assert_eq!(db.conn_max_idle_time, Duration::from_secs(600));
        let b = &c.broker;
        assert_eq!(
            (
                b.fetch_query_que_size,
                b.queue_timer_sec,
                b.queue_buffer_size
            ),
            (100, 10, 50)
        );
        assert_eq!(b.worker_idle_timeout_sec, 10);
        assert_eq!(b.notify_retry_seconds, Duration::from_secs(30));
        assert_eq!(c.logging.format, LogFormat::Text);
    }

    #[test]
    fn json_is_accepted_by_extension() {
        let path = write(
            "c.json",
            r#"{"databases":[{"database":"app","conn_max_lifetime":"1h"}],
            "logging":{"format":"json","level":"debug"}}"#,
        );
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(c.databases[0].conn_max_lifetime, Duration::from_secs(3600));
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.logging.level, LogLevel::Debug);
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let path = write(
            "unknown.yaml",
            "databases:\n  - database: app\n    queue_cuont: 3\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_cuont"), "{e}");
        let path = write(
            "badtype.yaml",
            "databases:\n  - database: app\n    queue_count: many\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("queue_count"), "{e}");
        let path = write(
            "zero.yaml",
            "databases:\n  - database: app\n    queue_count: 0\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("databases[0].queue_count"), "{e}");
        let path = write(
            "dur.yaml",
            "broker:\n  notify_retry_seconds: soon\ndatabases: [{database: a}]\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("notify_retry_seconds") && e.contains("soon"),
            "{e}"
        );
    }

    #[test]
    fn environment_overrides_file() {
        let path = write(
            "env.yaml",
            "databases:\n  - name: main-db\n    database: app\n",
        );
        let vars = env(&[
            ("PGSQL_BROKER_QUEUE_TIMER_SEC", "3"),
            ("PGSQL_BROKER_LOG_FORMAT", "json"),
            ("PGSQL_BROKER_DB_MAIN_DB_QUEUE_COUNT", "7"),
            ("PGSQL_BROKER_DB_MAIN_DB_PASSWORD", "123"),
            ("PGSQL_BROKER_CONFIG", "/ignored"),
            ("UNRELATED", "x"),
        ]);
        let c = Config::load(Some(&path), &vars).unwrap();
        assert_eq!(c.broker.queue_timer_sec, 3);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.databases[0].queue_count, 7);
        assert_eq!(c.databases[0].password.as_ref().unwrap().expose(), "123");

        let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_QUEUE_TIMER", "3")])).unwrap_err();
        assert!(e.to_string().contains("PGSQL_BROKER_QUEUE_TIMER"), "{e}");
        let e =
            Config::load(Some(&path), &env(&[("PGSQL_BROKER_QUEUE_TIMER_SEC", "x")])).unwrap_err();
        assert!(
            e.to_string().contains("PGSQL_BROKER_QUEUE_TIMER_SEC"),
            "{e}"
        );
    }

    #[test]
    fn libpq_environment_without_file() {
        let vars = env(&[
            ("PGHOST", "db.example"),
            ("PGPORT", "6543"),
            ("PGUSER", "app"),
            ("PGPASSWORD", "pw"),
        ]);
        let c = Config::load(None, &vars).unwrap();
        let db = &c.databases[0];
        assert_eq!(
            (db.host.as_str(), db.port, db.user.as_str()),
            ("db.example", 6543, "app")
        );
        assert_eq!(
            db.database, "app",
            "PGDATABASE defaults to the user, as in libpq"
        );
        assert_eq!(db.password, Some(Secret::new("pw")));
        let e = Config::load(None, &env(&[("PGPORT", "x")])).unwrap_err();
        assert!(e.to_string().contains("PGPORT"));
    }

    #[test]
    fn pgpass_wildcards_escapes_and_first_match() {
        let text = "\
# comment line:*:*:*:nope
db.example:5432:app:alice:first
*:*:app:alice:second
localhost:*:*:bob:b\\:c\\\\d
host\\:with\\:colons:6000:*:*:colon-host
\\*:*:*:carol:literal-star
*:*:*:*:fallback
";
        let look = |h: &str, p: u16, d: &str, u: &str| {
            pgpass_lookup(text, h, p, d, u).map(|s| s.expose().to_string())
        };
        // First matching line wins, even when a later wildcard line matches too.
        assert_eq!(
            look("db.example", 5432, "app", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            look("other", 5433, "app", "alice").as_deref(),
            Some("second")
        );
        // `\:` is a colon and `\\` a backslash, in the password as in the fields.
        assert_eq!(look("localhost", 1, "x", "bob").as_deref(), Some("b:c\\d"));
        assert_eq!(
            look("host:with:colons", 6000, "x", "y").as_deref(),
            Some("colon-host")
        );
        // An escaped star is a literal star, not a wildcard.
        assert_eq!(look("*", 1, "x", "carol").as_deref(), Some("literal-star"));
        assert_eq!(look("h", 1, "x", "carol").as_deref(), Some("fallback"));
        // The comment is no entry; the port must match as written.
        assert_eq!(
            look("db.example", 5433, "app", "alice").as_deref(),
            Some("second")
        );
        assert_eq!(
            pgpass_lookup("a:1:b:c\n", "a", 1, "b", "c"),
            None,
            "4 fields"
        );
        assert_eq!(
            pgpass_lookup("a:1:b:c:pw:extra\r\n", "a", 1, "b", "c").map(|s| s.expose().to_string()),
            Some("pw".into()),
            "the password ends at an unescaped colon; CRLF is a line end"
        );
        assert_eq!(pgpass_host("/var/run/postgresql"), "localhost");
        assert_eq!(pgpass_host("db"), "db");
    }

    #[test]
    fn password_precedence_config_then_file_then_pgpass() {
        use std::os::unix::fs::PermissionsExt;
        let pgpass = write("pgpass", "*:*:*:*:from-pgpass\n");
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pwfile = write("pwfile", "from-file\nsecond line ignored\n");
        let mut db = DatabaseConfig::new("app");
        let pw = |db: &DatabaseConfig| {
            db.find_password(Some(&pgpass))
                .unwrap()
                .password
                .map(|s| s.expose().to_string())
        };
        assert_eq!(pw(&db).as_deref(), Some("from-pgpass"));
        db.password_file = Some(pwfile.clone());
        assert_eq!(pw(&db).as_deref(), Some("from-file"));
        db.password = Some(Secret::new("from-config"));
        assert_eq!(pw(&db).as_deref(), Some("from-config"));

        // An unreadable password_file is an error naming the key, not the password.
        db.password = None;
        db.password_file = Some("/nonexistent/pw".into());
        let e = db.find_password(Some(&pgpass)).unwrap_err();
        assert_eq!(e.key, "password_file");
        assert!(e.message.contains("/nonexistent/pw"), "{e}");

        // A pgpass file others can read is ignored with a warning, as libpq does.
        db.password_file = None;
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let found = db.find_password(Some(&pgpass)).unwrap();
        assert!(found.password.is_none());
        assert!(
            found.warnings[0].contains("group or world access"),
            "{:?}",
            found.warnings
        );
        // No pgpass file at all is quietly no password.
        let found = db
            .find_password(Some(Path::new("/nonexistent/pgpass")))
            .unwrap();
        assert!(found.password.is_none() && found.warnings.is_empty());
    }

    #[test]
    fn pgpassfile_overrides_home() {
        let vars = env(&[("PGPASSFILE", "/x/pass"), ("HOME", "/home/u")]);
        assert_eq!(
            pgpass_path(|v| vars.get(v).cloned()),
            Some(PathBuf::from("/x/pass"))
        );
        let vars = env(&[("HOME", "/home/u")]);
        assert_eq!(
            pgpass_path(|v| vars.get(v).cloned()),
            Some(PathBuf::from("/home/u/.pgpass"))
        );
    }

    #[test]
    fn world_readable_config_with_password_warns() {
        use std::os::unix::fs::PermissionsExt;
        let path = write(
            "open.yaml",
            "databases:\n  - database: app\n    password: hunter2\n",
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("open.yaml") && c.warnings[0].contains("0644"));
        assert!(!c.warnings[0].contains("hunter2"));
        // Group-readable is how packages install it (root:pgsql-broker 0640): no warning.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn tls_keys_parse_and_bad_files_name_their_key() {
        let path = write(
            "tls.yaml",
            "databases:\n  - database: app\n    host: db.example\n    sslmode: verify-full\n    sslrootcert: /nonexistent/ca.pem\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("databases[0].sslrootcert") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let path = write(
            "pwfile.yaml",
            "databases:\n  - database: app\n    password_file: /nonexistent/pw\n",
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("databases[0].password_file"), "{e}");
        // require without any root certificate encrypts without verifying: no file needed.
        let path = write(
            "require.yaml",
            "databases:\n  - database: app\n    host: db.example\n    sslmode: require\n",
        );
        let c = Config::load(Some(&path), &env(&[("HOME", "/nonexistent")])).unwrap();
        assert_eq!(c.databases[0].sslmode, SslMode::Require);
        let c = Config::load(
            Some(&path),
            &env(&[("PGSQL_BROKER_DB_APP_SSLROOTCERT", "/nonexistent/ca.pem")]),
        )
        .unwrap_err()
        .to_string();
        assert!(c.contains("sslrootcert"), "{c}");
    }

    /// A password the parser chokes on must not be quoted back in the error.
    #[test]
    fn parse_errors_do_not_quote_passwords() {
        for (i, text) in [
            "databases:\n  - database: app\n    password: Zq9-sekrit: x\n",
            "databases:\n  - database: app\n    password: \"Zq9-sekrit\n",
            "databases:\n  - database: app\n    password: [Zq9-sekrit]\n",
            "databases:\n  - database: app\n    password: {Zq9-sekrit: 1}\n",
            "databases:\n  - database: app\n    password: Zq9-sekrit\n    bogus: 1\n",
            "databases:\n  - database: app\n    password: Zq9-sekrit\n  port: x\n",
            "{\"databases\": [{\"database\": \"app\", \"password\": \"Zq9-sekrit\"}",
        ]
        .iter()
        .enumerate()
        {
            let path = write(&format!("leak{i}.yaml"), text);
            match Config::load(Some(&path), &env(&[])) {
                Ok(c) => assert!(!format!("{c:?}").contains("Zq9-sekrit")),
                Err(e) => assert!(!e.to_string().contains("Zq9-sekrit"), "{text:?}: {e}"),
            }
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let path = write(
            "secret.yaml",
            "databases:\n  - database: app\n    password: hunter2\n",
        );
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
