//! Configuration: a YAML or JSON file, overridden by `PGSQL_BROKER_*` environment variables,
//! overridden by command-line flags. With no file, one database from the libpq environment.
//!
//! Every key has one parser (its serde type); environment values go through the same parser, so a
//! value means the same thing wherever it is written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Duration values as Go writes them.
mod duration;
/// Environment variable names and the libpq environment.
mod env;
/// Loading a file and the environment, validation.
mod load;
/// Passwords: `password_file` and pgpass.
mod password;
#[cfg(test)]
mod tests;
/// The TLS files a database names, read and checked.
mod tls;

use duration::de_duration;
pub use duration::parse_duration;
use env::{env_defines_databases, os_user, split_db_var};
pub use env::{env_name, DB_ENV_KEYS};
use load::parse_scalar;
pub use load::{search_path, ConfigSource, FileOrigin};
pub use password::pgpass_path;
use password::readable_by_others;
pub use tls::{is_unix_socket, Verify};

/// Prefix of every environment variable the broker reads (besides the libpq `PG*` ones).
pub const ENV_PREFIX: &str = "PGSQL_BROKER_";

/// The whole configuration of one broker process: built in code with [`Config::new`], or
/// loaded with [`Config::load`] (a file and the environment, as the command does) or
/// [`Config::from_file`]. [`Broker::start`](crate::runtime::broker::Broker::start) validates it.
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
    /// The HTTP endpoint for `/metrics`, `/healthz` and `/readyz` (off unless `listen` is set).
    #[serde(default)]
    pub http: HttpConfig,
    /// Where to send systemd notifications (`READY=1`, `STOPPING=1`, `WATCHDOG=1`): taken from
    /// `NOTIFY_SOCKET` and `WATCHDOG_USEC` by [`Config::load`]; None (no notifications) for a
    /// configuration built in code. Not a config file key.
    #[serde(skip)]
    pub systemd: Option<SystemdConfig>,
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
    /// databases share them out (see docs/guarantees.md, "Failover, standby and sharing").
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

/// The broker's own HTTP endpoint: `/metrics` (Prometheus text format), `/healthz` and
/// `/readyz`, served by one thread of its own. Off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on: `127.0.0.1:9187`, `[::1]:9187`, `0.0.0.0:9187`, `:9187` (every
    /// IPv4 interface) or `localhost:9187`. Empty: no HTTP endpoint.
    pub listen: String,
}

impl HttpConfig {
    /// The socket address `listen` names, None when it is empty (off).
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        parse_listen(&self.listen)
    }
}

/// Parses `http.listen` (see [`HttpConfig::listen`]); no name resolution beyond `localhost`.
fn parse_listen(text: &str) -> Result<Option<std::net::SocketAddr>, String> {
    use std::net::{Ipv4Addr, SocketAddr};
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad = || {
        format!(
            "{text:?} is not an address to listen on: expected IP:PORT such as 127.0.0.1:9187, \
             [::1]:9187, :9187 (every interface) or localhost:9187"
        )
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let ip = match host {
        "" => Ipv4Addr::UNSPECIFIED,
        h if h.eq_ignore_ascii_case("localhost") => Ipv4Addr::LOCALHOST,
        _ => return Err(bad()),
    };
    Ok(Some(SocketAddr::from((ip, port))))
}

/// systemd's notification socket and watchdog, as the service manager passes them in the
/// environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemdConfig {
    /// The datagram socket: a path, or an abstract name starting with `@`.
    pub notify_socket: String,
    /// The watchdog interval (`WatchdogSec=`); the broker sends `WATCHDOG=1` every half of it.
    pub watchdog: Option<Duration>,
}

impl SystemdConfig {
    /// From the environment; None without `NOTIFY_SOCKET`. A `WATCHDOG_PID` naming another
    /// process leaves the watchdog off (it is meant for that process), as in libsystemd.
    pub fn from_env(env: &BTreeMap<String, String>) -> Option<SystemdConfig> {
        let socket = env.get("NOTIFY_SOCKET").filter(|s| !s.is_empty())?;
        let ours = env
            .get("WATCHDOG_PID")
            .is_none_or(|pid| pid.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = env
            .get("WATCHDOG_USEC")
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|&usec| usec > 0 && ours)
            .map(Duration::from_micros);
        Some(SystemdConfig {
            notify_socket: socket.clone(),
            watchdog,
        })
    }
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
}
