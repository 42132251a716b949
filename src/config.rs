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
    #[serde(default)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub sslmode: SslMode,
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
    /// Upper bound on jobs one claim may take (see README: workers claim one at a time to keep
    /// priority order exact; the poll looks at this many runnable jobs per queue).
    pub fetch_query_que_size: u32,
    /// Seconds between polls that catch jobs a notification missed.
    pub queue_timer_sec: u64,
    /// Capacity of each queue's wake-up channel.
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
    /// Completed jobs older than this are deleted; zero keeps them forever.
    #[serde(deserialize_with = "de_duration")]
    pub retention_completed: Duration,
    /// Failed and cancelled jobs older than this are deleted; zero keeps them forever.
    #[serde(deserialize_with = "de_duration")]
    pub retention_failed: Duration,
    /// Rows deleted per statement, so retention never holds long locks.
    pub retention_batch_size: u32,
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

/// libpq's `sslmode`. The modes beyond `prefer` need a TLS connector, which is not built in yet.
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
            retention_completed: Duration::from_secs(7 * 86_400),
            retention_failed: Duration::from_secs(30 * 86_400),
            retention_batch_size: 1000,
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
            sslmode: SslMode::default(),
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
        Ok(config)
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
        for (key, value) in [
            ("fetch_query_que_size", b.fetch_query_que_size as u64),
            ("queue_timer_sec", b.queue_timer_sec),
            ("queue_buffer_size", b.queue_buffer_size as u64),
            ("workers_per_queue", b.workers_per_queue as u64),
            ("retention_batch_size", b.retention_batch_size as u64),
        ] {
            if value == 0 {
                return invalid(format!("broker.{key}"), "must be at least 1");
            }
        }
        if b.notify_retry_seconds.is_zero() {
            return invalid(
                "broker.notify_retry_seconds".into(),
                "must be more than zero",
            );
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
            if db.queue_count == 0 {
                return invalid(key("queue_count"), "must be at least 1");
            }
            if db.max_open_conns == 0 {
                return invalid(key("max_open_conns"), "must be at least 1");
            }
            if !matches!(
                db.sslmode,
                SslMode::Disable | SslMode::Allow | SslMode::Prefer
            ) {
                return invalid(
                    key("sslmode"),
                    "require, verify-ca and verify-full need TLS support, which this build lacks",
                );
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
            "retention_completed" => self.retention_completed = parse_duration(v)?,
            "retention_failed" => self.retention_failed = parse_duration(v)?,
            "retention_batch_size" => self.retention_batch_size = parse_scalar(v)?,
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
            "sslmode" => self.sslmode = parse_scalar(v)?,
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
    fn secrets_do_not_print() {
        let path = write(
            "secret.yaml",
            "databases:\n  - database: app\n    password: hunter2\n",
        );
        let c = Config::load(Some(&path), &env(&[])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
