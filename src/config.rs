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

/// The whole configuration of one broker process: built in code with [`Config::new`], or
/// loaded with [`Config::load`] (a file and the environment, as the command does) or
/// [`Config::from_file`]. [`Broker::start`](crate::Broker::start) validates it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The databases served, each with its own listener, queues and workers.
    #[serde(default)]
    pub databases: Vec<DatabaseConfig>,
    /// Settings shared by every database.
    #[serde(default)]
    pub broker: BrokerConfig,
    /// How the `pgsql-broker` command logs; the library installs no logger and ignores it.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Problems worth a warning that do not stop the broker (e.g. a config file others can read
    /// that holds a password). Loading happens before logging is set up, so the caller logs them.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// One database the broker serves, and how to connect to it. [`DatabaseConfig::new`] gives
/// the defaults: `localhost:5432`, the operating-system user, `sslmode` `disable`, up to 25
/// pooled connections, 4 queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Name used in logs, `--database` and environment variables; defaults to `database`.
    #[serde(default)]
    pub name: String,
    /// Host name, IP address, or the directory of a Unix socket (starting with `/`).
    #[serde(default = "default_host")]
    pub host: String,
    /// TCP port (or the socket's number).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The database's name on the server.
    pub database: String,
    /// The role the broker logs in as.
    #[serde(default = "default_user")]
    pub user: String,
    /// The password; else `password_file`, else the pgpass file (`PGPASSFILE` or `~/.pgpass`,
    /// as in libpq). An empty password counts as none.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose first line is the password, e.g. a systemd credential or a mounted secret.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS, with libpq's meaning of each mode.
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
    /// Size of the workers' connection pool (the listener has one connection of its own).
    #[serde(default = "default_max_open_conns")]
    pub max_open_conns: u32,
    /// Pooled connections kept open while idle.
    #[serde(default = "default_max_idle_conns")]
    pub max_idle_conns: u32,
    /// A pooled connection is closed once it is this old.
    #[serde(
        default = "default_conn_max_lifetime",
        deserialize_with = "de_duration"
    )]
    pub conn_max_lifetime: Duration,
    /// A pooled connection idle this long is closed.
    #[serde(
        default = "default_conn_max_idle_time",
        deserialize_with = "de_duration"
    )]
    pub conn_max_idle_time: Duration,
    /// Queues 1 to `queue_count` are served; jobs in higher queues wait.
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
    /// Log at debug level at least (the command's logger).
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

/// How the `pgsql-broker` command logs. An embedding program installs its own `log`
/// implementation instead (see the [crate documentation](crate#logging)).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// The least severe level logged.
    pub level: LogLevel,
    /// Text lines or JSON lines on stderr.
    pub format: LogFormat,
}

/// `logging.level`; written in any case (`debug`, `DEBUG`), `warning` for `warn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// `logging.format`; written in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line per event: time, level, message.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<LogLevel, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "error" => LogLevel::Error,
            "warn" | "warning" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "unknown log level {s:?}: expected error, warn, info, debug or trace"
                ))
            }
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<LogFormat, String> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => return Err(format!("unknown log format {s:?}: expected text or json")),
        })
    }
}

/// Deserializes a string through `FromStr`, so the file, the environment and the flags accept
/// the same spellings.
fn de_from_str<'de, D: Deserializer<'de>, T: std::str::FromStr<Err = String>>(
    d: D,
) -> Result<T, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LogLevel, D::Error> {
        de_from_str(d)
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LogFormat, D::Error> {
        de_from_str(d)
    }
}

/// libpq's `sslmode`, on rustls (no system OpenSSL):
///
/// | sslmode | encrypts | verifies the chain | verifies the host name |
/// |---|---|---|---|
/// | `disable` | no | | |
/// | `allow`, `prefer` | if the server offers it | no | no |
/// | `require` | yes | only if a root certificate is there (as libpq) | no |
/// | `verify-ca` | yes | yes | no |
/// | `verify-full` | yes | yes | yes |
///
/// The root certificate is `sslrootcert`; `sslcert` and `sslkey` are the client certificate.
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
    /// Wraps a password so that `Debug` shows `"***"`.
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
    /// A config file cannot be read.
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A config file does not parse, or holds an unknown key.
    Parse { path: PathBuf, message: String },
    /// A setting's value is not usable.
    Invalid { key: String, message: String },
    /// A `PGSQL_BROKER_*` or libpq variable is not usable.
    Env { var: String, message: String },
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
            batch_max_ms: 20,
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

    /// A connection to this database with the settings the broker itself uses (TLS per
    /// `sslmode`, the password from `password`, `password_file` or pgpass), e.g. to
    /// [`submit`](crate::submit) jobs. Not pooled: keep it for as long as it is useful.
    pub fn connect(&self) -> Result<postgres::Client, crate::Error> {
        crate::db::connect(self)
    }

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
    pub(crate) fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "level" => self.level = v.parse()?,
            "format" => self.format = v.parse()?,
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
    pub(crate) fn find_password(&self, pgpass: Option<&Path>) -> Result<FoundPassword, KeyError> {
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
fn split_db_var(rest: &str) -> Option<(String, &'static str)> {
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
fn env_defines_databases(env: &BTreeMap<String, String>) -> bool {
    env.keys().any(|var| {
        var.strip_prefix(ENV_PREFIX)
            .and_then(|rest| rest.strip_prefix("DB_"))
            .and_then(split_db_var)
            .is_some_and(|(_, key)| key == "DATABASE")
    })
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
    fn log_levels_and_formats_are_case_insensitive_everywhere() {
        let path = write(
            "levels.yaml",
            "databases: [{database: app}]\nlogging:\n  level: DEBUG\n  format: Json\n",
        );
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert_eq!(
            (c.logging.level, c.logging.format),
            (LogLevel::Debug, LogFormat::Json)
        );
        let c = Config::load(
            Some(&path),
            &env(&[
                ("PGSQL_BROKER_LOG_LEVEL", "Trace"),
                ("PGSQL_BROKER_LOG_FORMAT", "TEXT"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.logging.level, c.logging.format),
            (LogLevel::Trace, LogFormat::Text)
        );
        let mut logging = LoggingConfig::default();
        for (text, level) in [
            ("ERROR", LogLevel::Error),
            ("Warn", LogLevel::Warn),
            ("warning", LogLevel::Warn),
            ("info", LogLevel::Info),
        ] {
            logging.set("level", text).unwrap();
            assert_eq!(logging.level, level, "{text}");
        }
        let e = logging.set("level", "loud").unwrap_err();
        assert!(e.contains("loud") && e.contains("debug"), "{e}");
        let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_LOG_LEVEL", "LOUD")])).unwrap_err();
        assert!(e.to_string().contains("PGSQL_BROKER_LOG_LEVEL"), "{e}");
    }

    #[test]
    fn empty_password_in_open_file_does_not_warn() {
        use std::os::unix::fs::PermissionsExt;
        let path = write(
            "empty-pw.yaml",
            "databases:\n  - database: app\n    password: \"\"\n",
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn every_database_env_key_is_a_database_key() {
        let mut db = DatabaseConfig::new("app");
        for key in DB_ENV_KEYS {
            if let Err(e) = db.set(&key.to_ascii_lowercase(), "1") {
                assert!(!e.contains("unknown database key"), "{key}: {e}");
            }
        }
        assert_eq!(
            split_db_var("MAIN_DB_PASSWORD_FILE"),
            Some(("MAIN_DB".into(), "PASSWORD_FILE"))
        );
        assert_eq!(
            split_db_var("app_user_password"),
            Some(("APP_USER".into(), "PASSWORD"))
        );
        assert_eq!(split_db_var("_HOST"), None);
        assert_eq!(split_db_var("HOST"), None);
        assert_eq!(split_db_var("DB1_QUEUE_CUONT"), None);
    }

    #[test]
    fn environment_alone_defines_databases() {
        let vars = env(&[
            ("PGSQL_BROKER_DB_DB1_DATABASE", "first"),
            ("PGSQL_BROKER_DB_DB1_HOST", "h1"),
            ("PGSQL_BROKER_DB_DB1_QUEUE_COUNT", "2"),
            ("PGSQL_BROKER_DB_REPORTS_DB_DATABASE", "second"),
            ("PGSQL_BROKER_DB_REPORTS_DB_PORT", "6000"),
            (
                "PGSQL_BROKER_DB_REPORTS_DB_PASSWORD_FILE",
                "/nonexistent/pw",
            ),
            // Not read: the variables define the databases.
            ("PGHOST", "libpq-host"),
            ("PGDATABASE", "libpq-db"),
        ]);
        let mut config = Config::new(Vec::new());
        config.apply_env(&vars).unwrap();
        let dbs = &config.databases;
        assert_eq!(dbs.len(), 2, "{dbs:?}");
        assert_eq!(
            (
                dbs[0].name.as_str(),
                dbs[0].database.as_str(),
                dbs[0].host.as_str()
            ),
            ("db1", "first", "h1")
        );
        assert_eq!(dbs[0].queue_count, 2);
        assert_eq!(
            (dbs[1].name.as_str(), dbs[1].database.as_str(), dbs[1].port),
            ("reports_db", "second", 6000)
        );
        assert_eq!(dbs[1].host, "localhost", "the file's defaults, not PGHOST");
        // Config::load reads them with no file (and checks the password file).
        let e = Config::load(None, &vars).unwrap_err().to_string();
        assert!(e.contains("databases[1].password_file"), "{e}");
        let mut vars = vars;
        vars.remove("PGSQL_BROKER_DB_REPORTS_DB_PASSWORD_FILE");
        let c = Config::load(None, &vars).unwrap();
        let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["db1", "reports_db"]);

        // A name that is no database and defines none is an error naming the variable.
        let e = Config::load(
            None,
            &env(&[
                ("PGSQL_BROKER_DB_DB1_DATABASE", "first"),
                ("PGSQL_BROKER_DB_DB2_HOST", "h2"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("PGSQL_BROKER_DB_DB2_HOST") && e.contains("PGSQL_BROKER_DB_DB2_DATABASE"),
            "{e}"
        );
        let e = Config::load(None, &env(&[("PGSQL_BROKER_DB_DB1_QUEUE_CUONT", "3")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGSQL_BROKER_DB_DB1_QUEUE_CUONT"), "{e}");
    }

    #[test]
    fn without_database_variables_the_libpq_database_takes_overrides() {
        let vars = env(&[
            ("PGDATABASE", "app"),
            ("PGUSER", "u"),
            ("PGSQL_BROKER_DB_APP_QUEUE_COUNT", "9"),
        ]);
        let c = Config::load(None, &vars).unwrap();
        assert_eq!(c.databases.len(), 1);
        assert_eq!(
            (c.databases[0].name.as_str(), c.databases[0].queue_count),
            ("app", 9)
        );
    }

    #[test]
    fn environment_adds_databases_to_a_file() {
        let path = write(
            "plus-env.yaml",
            "databases:\n  - name: main-db\n    database: app\n",
        );
        let (c, source) = Config::discover(
            Some(&path),
            &env(&[
                ("PGSQL_BROKER_DB_MAIN_DB_QUEUE_COUNT", "3"),
                ("PGSQL_BROKER_DB_EXTRA_DATABASE", "extra"),
            ]),
            &[],
        )
        .unwrap();
        let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["main-db", "extra"]);
        assert_eq!(c.databases[0].queue_count, 3);
        assert_eq!(source.env_databases, ["extra"]);
        let line = source.to_string();
        assert!(
            line.contains("plus-env.yaml") && line.contains("--config"),
            "{line}"
        );
        assert!(line.contains("extra"), "{line}");
    }

    /// `--config`, then `$PGSQL_BROKER_CONFIG`, then the search path in order, then the
    /// environment; the search path is injected, so no file on this machine matters.
    #[test]
    fn discovery_order_first_found_wins() {
        let dir =
            std::env::temp_dir().join(format!("pgsql-broker-discover-{}", std::process::id()));
        let cwd = dir.join("cwd");
        let etc = dir.join("etc");
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let file = |path: &Path, db: &str| {
            std::fs::write(path, format!("databases: [{{database: {db}}}]\n")).unwrap();
            path.to_path_buf()
        };
        let flag = file(&dir.join("flag.yaml"), "from_flag");
        let var = file(&dir.join("var.yaml"), "from_var");
        let yaml = cwd.join("broker.yaml");
        let json = cwd.join("broker.json");
        let system = etc.join("broker.yaml");
        let search = [
            (yaml.clone(), FileOrigin::WorkingDir),
            (json.clone(), FileOrigin::WorkingDir),
            (system.clone(), FileOrigin::System),
        ];
        let vars = env(&[
            ("PGSQL_BROKER_CONFIG", var.to_str().unwrap()),
            ("PGDATABASE", "from_libpq"),
        ]);
        let found = |explicit: Option<&Path>, vars: &BTreeMap<String, String>| {
            let (c, source) = Config::discover(explicit, vars, &search).unwrap();
            (c.databases[0].database.clone(), source, c.warnings)
        };

        // Nothing on the search path: the environment (here libpq's).
        let none = env(&[("PGDATABASE", "from_libpq")]);
        let (db, source, _) = found(None, &none);
        assert_eq!((db.as_str(), &source.file), ("from_libpq", &None));
        assert!(source.to_string().contains("libpq"), "{source}");

        file(&system, "from_system");
        let (db, source, _) = found(None, &none);
        assert_eq!(db, "from_system");
        assert_eq!(source.file, Some((system.clone(), FileOrigin::System)));

        std::fs::write(&json, "{\"databases\": [{\"database\": \"from_json\"}]}").unwrap();
        assert_eq!(found(None, &none).0, "from_json");

        file(&yaml, "from_yaml");
        let (db, source, warnings) = found(None, &none);
        assert_eq!(db, "from_yaml");
        assert_eq!(source.file, Some((yaml.clone(), FileOrigin::WorkingDir)));
        assert!(source.to_string().contains("working directory"), "{source}");
        // A second file in the working directory is named, so it confuses nobody; the
        // system-wide file behind it is not worth a warning.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("broker.json"), "{warnings:?}");

        let (db, source, _) = found(None, &vars);
        assert_eq!(
            (db.as_str(), source.file.map(|f| f.1)),
            ("from_var", Some(FileOrigin::EnvVar))
        );
        let (db, source, _) = found(Some(&flag), &vars);
        assert_eq!(
            (db.as_str(), source.file.map(|f| f.1)),
            ("from_flag", Some(FileOrigin::Flag))
        );

        // An empty $PGSQL_BROKER_CONFIG is unset; a named file must exist.
        let empty = env(&[("PGSQL_BROKER_CONFIG", "")]);
        assert_eq!(found(None, &empty).0, "from_yaml");
        let missing = env(&[("PGSQL_BROKER_CONFIG", "/nonexistent/b.yaml")]);
        let e = Config::discover(None, &missing, &search)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/b.yaml"), "{e}");
        let e = Config::discover(Some(Path::new("/nonexistent/c.yaml")), &none, &search)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/c.yaml"), "{e}");

        // Database variables alone, with nothing found.
        std::fs::remove_dir_all(&dir).unwrap();
        let (c, source) =
            Config::discover(None, &env(&[("PGSQL_BROKER_DB_A_DATABASE", "a")]), &search).unwrap();
        assert_eq!(c.databases[0].name, "a");
        assert_eq!(source.env_databases, ["a"]);
        assert!(source.to_string().contains("no config file"), "{source}");
    }

    #[test]
    fn search_path_system_file_can_be_moved_or_switched_off() {
        let paths = |vars: &[(&str, &str)]| -> Vec<PathBuf> {
            search_path(&env(vars))
                .into_iter()
                .map(|(p, _)| p)
                .collect()
        };
        assert_eq!(
            paths(&[]),
            [
                PathBuf::from("./broker.yaml"),
                PathBuf::from("./broker.json"),
                PathBuf::from(SYSTEM_CONFIG)
            ]
        );
        assert_eq!(
            paths(&[("PGSQL_BROKER_SYSTEM_CONFIG", "/usr/local/etc/b.yaml")])[2],
            PathBuf::from("/usr/local/etc/b.yaml")
        );
        assert_eq!(paths(&[("PGSQL_BROKER_SYSTEM_CONFIG", "")]).len(), 2);
        // The variable is no broker key.
        let mut c = Config::new(vec![DatabaseConfig::new("app")]);
        c.apply_env(&env(&[("PGSQL_BROKER_SYSTEM_CONFIG", "")]))
            .unwrap();
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
