//! Connections: the parameters of a configured database, dedicated connections, the workers'
//! pool (with `max_idle_conns`), and cancel requests over the database's own TLS settings.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::{CancelToken, Client};
use r2d2_postgres::PostgresConnectionManager;

use super::tls::{self, MakeTls};
use crate::config::{self, DatabaseConfig, KeyError, Secret};
use crate::error::Error;

pub type Pool = r2d2::Pool<PoolManager>;
pub type PooledClient = r2d2::PooledConnection<PoolManager>;

/// Application name of the broker's own connections; a running job shows its id instead.
pub const APPLICATION_NAME: &str = "pgsql-broker";

/// The connection parameters of a configured database, with the password found now (config,
/// `password_file` or pgpass, see [`DatabaseConfig::find_password`]).
pub fn pg_config(db: &DatabaseConfig) -> Result<postgres::Config, Error> {
    let mut pg = config_without_password(db);
    if let Some(password) = password(db)? {
        pg.password(password.expose());
    }
    Ok(pg)
}

fn config_without_password(db: &DatabaseConfig) -> postgres::Config {
    let mut pg = postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&db.database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(Duration::from_secs(10))
        // A peer that vanished (network cut, half-open connection) is noticed within about a
        // minute instead of TCP's quarter of an hour: keepalives, and a bound on unacked data.
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_secs(60))
        .ssl_mode(tls::pg_ssl_mode(db));
    pg
}

/// A setting of `db` that cannot be used, as a configuration error naming it.
fn setting_error(db: &DatabaseConfig, e: KeyError) -> Error {
    Error::Config(e.at(&format!("databases[{}]", db.name)))
}

fn password(db: &DatabaseConfig) -> Result<Option<Secret>, Error> {
    let pgpass = config::pgpass_path(|var| std::env::var(var).ok());
    let found = db
        .find_password(pgpass.as_deref())
        .map_err(|e| setting_error(db, e))?;
    // Config::load already warned once; per connection this would only repeat itself.
    for warning in &found.warnings {
        log::debug!("database {}: {warning}", db.name);
    }
    if let Some(source) = &found.source {
        log::trace!("database {}: password from {source}", db.name);
    }
    Ok(found.password)
}

/// A dedicated connection, for the listener and one-off commands (never pooled).
pub fn connect(db: &DatabaseConfig) -> Result<Client, Error> {
    let tls = MakeTls::new(db).map_err(|e| setting_error(db, e))?;
    pg_config(db)?
        .connect(tls)
        .map_err(|source| Error::Connect {
            database: db.name.clone(),
            source,
        })
}

/// The workers' pool. It connects lazily, so a database that is down does not fail the build;
/// unusable settings (a password file or certificate that cannot be read) do.
pub fn try_pool(db: &DatabaseConfig) -> Result<Pool, Error> {
    let tls = MakeTls::new(db).map_err(|e| setting_error(db, e))?;
    Ok(build_pool(db, pg_config(db)?, tls))
}

fn build_pool(db: &DatabaseConfig, pg: postgres::Config, tls: MakeTls) -> Pool {
    let idle = Arc::new(IdleConns::default());
    let manager = PoolManager {
        inner: PostgresConnectionManager::new(pg, tls),
        idle: idle.clone(),
        max_idle: db.max_idle_conns as usize,
    };
    r2d2::Pool::builder()
        .max_size(db.max_open_conns)
        .min_idle(Some(0))
        .max_lifetime(Some(db.conn_max_lifetime))
        .idle_timeout(Some(db.conn_max_idle_time))
        .connection_timeout(Duration::from_secs(10))
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .event_handler(Box::new(IdleTracker(idle)))
        .build_unchecked(manager)
}

/// The connections sitting idle in a pool, by r2d2's connection id.
#[derive(Debug, Default)]
struct IdleConns(Mutex<HashSet<u64>>);

impl IdleConns {
    fn ids(&self) -> MutexGuard<'_, HashSet<u64>> {
        // A set of ids cannot be left half-changed by a panic.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Keeps [`IdleConns`] current from the pool's events: a new connection and one given back
/// are idle; one handed out or closed (idle timeout, lifetime, broken) is not.
#[derive(Debug)]
struct IdleTracker(Arc<IdleConns>);

impl r2d2::HandleEvent for IdleTracker {
    fn handle_acquire(&self, e: r2d2::event::AcquireEvent) {
        self.0.ids().insert(e.connection_id());
    }
    fn handle_checkin(&self, e: r2d2::event::CheckinEvent) {
        self.0.ids().insert(e.connection_id());
    }
    fn handle_checkout(&self, e: r2d2::event::CheckoutEvent) {
        self.0.ids().remove(&e.connection_id());
    }
    fn handle_release(&self, e: r2d2::event::ReleaseEvent) {
        self.0.ids().remove(&e.connection_id());
    }
}

/// r2d2_postgres's manager plus `max_idle_conns`, which r2d2 lacks: a connection given back
/// while more than `max_idle` connections are idle (counting it: r2d2 reports the check-in
/// before it asks `has_broken`) is closed instead of kept, as Go's database/sql does.
pub struct PoolManager {
    inner: PostgresConnectionManager<MakeTls>,
    idle: Arc<IdleConns>,
    max_idle: usize,
}

impl r2d2::ManageConnection for PoolManager {
    type Connection = Client;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Client, postgres::Error> {
        self.inner.connect()
    }

    fn is_valid(&self, conn: &mut Client) -> Result<(), postgres::Error> {
        self.inner.is_valid(conn)
    }

    fn has_broken(&self, conn: &mut Client) -> bool {
        self.inner.has_broken(conn) || self.idle.ids().len() > self.max_idle
    }
}

/// Cancels the statement running on the connection `token` came from. The cancel request
/// travels over a new connection with the database's own TLS settings (a server that insists
/// on TLS refuses it in plain text).
pub fn cancel(db: &DatabaseConfig, token: &CancelToken) -> Result<(), postgres::Error> {
    token.cancel_query(MakeTls::for_database(db))
}

impl DatabaseConfig {
    /// A connection to this database with the settings the broker itself uses (TLS per
    /// `sslmode`, the password from `password`, `password_file` or pgpass), e.g. to
    /// [`submit`](crate::job::submit) jobs. Not pooled: keep it for as long as it is useful.
    pub fn connect(&self) -> Result<postgres::Client, Error> {
        connect(self)
    }
}
