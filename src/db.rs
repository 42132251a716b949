//! The database adapter: connections, the pool, and one typed call per broker SQL function.
//! Everything else reaches PostgreSQL through here.

use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, GenericClient, NoTls};
use r2d2_postgres::PostgresConnectionManager;

use crate::config::{DatabaseConfig, SslMode};
use crate::error::Error;

pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;
pub type PooledClient = r2d2::PooledConnection<PostgresConnectionManager<NoTls>>;

/// Application name of the broker's own connections; a running job shows its id instead.
pub const APPLICATION_NAME: &str = "pgsql-broker";

/// The connection parameters of a configured database.
pub fn pg_config(db: &DatabaseConfig) -> postgres::Config {
    let mut pg = postgres::Config::new();
    pg.host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&db.database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(Duration::from_secs(10))
        .keepalives_idle(Duration::from_secs(30))
        .ssl_mode(match db.sslmode {
            SslMode::Disable => postgres::config::SslMode::Disable,
            // Without a TLS connector the server's plain-text offer is the one we can take.
            _ => postgres::config::SslMode::Prefer,
        });
    if let Some(password) = &db.password {
        pg.password(password.expose());
    }
    pg
}

/// A dedicated connection, for the listener and one-off commands (never pooled).
pub fn connect(db: &DatabaseConfig) -> Result<Client, Error> {
    pg_config(db)
        .connect(NoTls)
        .map_err(|source| Error::Connect {
            database: db.name.clone(),
            source,
        })
}

/// The workers' pool. It connects lazily, so a database that is down does not fail the build.
pub fn pool(db: &DatabaseConfig) -> Pool {
    let manager = PostgresConnectionManager::new(pg_config(db), NoTls);
    r2d2::Pool::builder()
        .max_size(db.max_open_conns)
        .min_idle(Some(0))
        .max_lifetime(Some(db.conn_max_lifetime))
        .idle_timeout(Some(db.conn_max_idle_time))
        .connection_timeout(Duration::from_secs(10))
        .error_handler(Box::new(r2d2::NopErrorHandler))
        .build_unchecked(manager)
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

/// True when the error came from the server about a statement, so the connection still works.
pub fn is_statement_error(e: &postgres::Error) -> bool {
    e.as_db_error().is_some() && !e.is_closed()
}

pub fn is_query_canceled(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// How a job's SQL is handed to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Sql,
    Plpgsql,
}

/// A job claimed by this broker instance.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub attempt: i32,
    pub execute_str: String,
    pub language: Language,
    pub transactional: bool,
}

impl Job {
    /// The text sent to the server: the statements as they are, or a plpgsql body as a DO block
    /// quoted with a dollar tag that does not occur in the body.
    pub fn sql(&self) -> String {
        match self.language {
            Language::Sql => self.execute_str.clone(),
            Language::Plpgsql => {
                let mut tag = String::from("$pgsql_broker$");
                let mut n = 0;
                while self.execute_str.contains(&tag) {
                    n += 1;
                    tag = format!("$pgsql_broker{n}$");
                }
                format!("DO LANGUAGE plpgsql {tag}{}{tag}", self.execute_str)
            }
        }
    }
}

/// The end of an attempt, as `broker_set` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    /// Handed back unstarted, or rolled back by shutdown: runs again later.
    Pending,
}

/// Registers this process as the database's active instance; see `broker_register_instance`.
pub fn register_instance(
    c: &mut Client,
    name: &str,
    host: &str,
    version: &str,
) -> Result<i64, postgres::Error> {
    let row = c.query_one(
        "SELECT broker_register_instance($1, $2, $3, $4)",
        &[&name, &host, &(std::process::id() as i32), &version],
    )?;
    Ok(row.get(0))
}

/// The heartbeat. False means the instance is no longer the active one.
pub fn ping_instance(c: &mut Client, instance: i64) -> Result<bool, postgres::Error> {
    Ok(
        c.query_one("SELECT broker_ping_instance($1)", &[&instance])?
            .get(0),
    )
}

pub fn shutdown_instance(c: &mut Client, instance: i64) -> Result<(), postgres::Error> {
    c.execute("SELECT broker_shutdown_instance($1)", &[&instance])
        .map(drop)
}

/// Recovers jobs left running by dead instances, or by this one outside `in_flight`.
pub fn recover(c: &mut Client, instance: i64, in_flight: &[i64]) -> Result<i32, postgres::Error> {
    Ok(
        c.query_one("SELECT broker_recover($1, $2)", &[&instance, &in_flight])?
            .get(0),
    )
}

/// True while jobs of other (dead) instances are still running, e.g. in backends being terminated.
pub fn orphans_left(c: &mut Client, instance: i64) -> Result<bool, postgres::Error> {
    let row = c.query_one(
        "SELECT EXISTS (SELECT 1 FROM broker_jobs WHERE status = 'running' AND instance_id IS DISTINCT FROM $1)",
        &[&instance],
    )?;
    Ok(row.get(0))
}

/// Queues in 1..=`max_queue` that have a job ready to run now.
pub fn runnable_queues(c: &mut Client, max_queue: i32) -> Result<Vec<i32>, postgres::Error> {
    let rows = c.query(
        "SELECT DISTINCT job_queue FROM broker_jobs
          WHERE status = 'pending' AND run_after <= now() AND job_queue <= $1",
        &[&max_queue],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Queues above `max_queue` that hold pending jobs nobody will run.
pub fn orphan_queues(c: &mut Client, max_queue: i32) -> Result<Vec<i32>, postgres::Error> {
    let rows = c.query(
        "SELECT DISTINCT job_queue FROM broker_jobs WHERE status = 'pending' AND job_queue > $1",
        &[&max_queue],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Claims up to `limit` jobs of `queue` for `instance` and commits the claim.
pub fn claim(
    c: &mut impl GenericClient,
    queue: i32,
    instance: i64,
    limit: i32,
) -> Result<Vec<Job>, postgres::Error> {
    let rows = c.query(
        "SELECT id, attempt, execute_str, job_language, transactional FROM broker_get($1, $2, $3)",
        &[&queue, &instance, &limit],
    )?;
    Ok(rows
        .iter()
        .map(|r| Job {
            id: r.get(0),
            attempt: r.get(1),
            execute_str: r.get(2),
            language: if r.get::<_, &str>(3) == "plpgsql" {
                Language::Plpgsql
            } else {
                Language::Sql
            },
            transactional: r.get(4),
        })
        .collect())
}

/// Starts `job` in the current transaction (or session, for a non-transactional job) and
/// switches to its role. Returns the transaction id its completion must commit in.
pub fn begin_job(
    c: &mut impl GenericClient,
    job: &Job,
    default_timeout: Duration,
) -> Result<Option<i64>, postgres::Error> {
    let default_ms = i64::try_from(default_timeout.as_millis()).unwrap_or(i64::MAX);
    let row = c.query_one(
        "SELECT broker_run($1, $2, $3, $4)",
        &[&job.id, &job.attempt, &job.transactional, &default_ms],
    )?;
    Ok(row.get(0))
}


/// Records how an attempt ended; returns the job's status afterwards.
pub fn finish_job(
    c: &mut impl GenericClient,
    job: &Job,
    outcome: &Outcome,
    xid: Option<i64>,
) -> Result<Option<String>, postgres::Error> {
    let (status, error) = match outcome {
        Outcome::Completed => ("completed", None),
        Outcome::Failed(e) => ("failed", Some(e.as_str())),
        Outcome::Pending => ("pending", None),
    };
    let row = c.query_one(
        "SELECT broker_set($1, $2, $3, $4, $5)",
        &[&job.id, &job.attempt, &status, &error, &xid],
    )?;
    Ok(row.get(0))
}

/// A job as `pgsql-broker add` submits it.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub name: String,
    pub sql: String,
    pub queue: i32,
    pub priority: i32,
    pub language: String,
    pub run_as: Option<String>,
    pub user_login: Option<String>,
}

pub fn add_job(c: &mut Client, job: &NewJob) -> Result<i64, postgres::Error> {
    let row = c.query_one(
        "SELECT broker_add_job($1, $2, $3, $4, $5, $6::text::name, $7)",
        &[
            &job.name,
            &job.sql,
            &job.queue,
            &job.priority,
            &job.language,
            &job.run_as,
            &job.user_login,
        ],
    )?;
    Ok(row.get(0))
}

/// One line of `pgsql-broker status`.
pub fn status_report(c: &mut Client) -> Result<Vec<String>, postgres::Error> {
    let mut lines = Vec::new();
    for r in c.query(
        "SELECT id, name, host, pid, status, heartbeat_at::text, now() - heartbeat_at < interval '30 seconds'
           FROM broker_queueinstance WHERE status = 'active'",
        &[],
    )? {
        let fresh: bool = r.get(6);
        lines.push(format!(
            "instance {} {:?} on {} pid {}: {} (heartbeat {}{})",
            r.get::<_, i64>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            r.get::<_, i32>(3),
            r.get::<_, String>(4),
            r.get::<_, String>(5),
            if fresh { "" } else { ", stale" }
        ));
    }
    if lines.is_empty() {
        lines.push("no active instance".into());
    }
    for r in c.query(
        "SELECT job_queue, status, count(*) FROM broker_jobs GROUP BY 1, 2 ORDER BY 1, 2",
        &[],
    )? {
        lines.push(format!(
            "queue {} {}: {}",
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2)
        ));
    }
    Ok(lines)
}

/// Cancels the statements of running jobs whose cancel was asked for; returns how many.
pub fn deliver_cancels(c: &mut Client) -> Result<i32, postgres::Error> {
    Ok(c.query_one("SELECT broker_deliver_cancels()", &[])?.get(0))
}

/// Deletes one batch of finished jobs past retention (a zero duration keeps them); returns
/// how many rows went.
pub fn purge(
    c: &mut Client,
    completed: Duration,
    failed: Duration,
    batch: u32,
) -> Result<i32, postgres::Error> {
    let secs = |d: Duration| (!d.is_zero()).then(|| format!("{} seconds", d.as_secs_f64()));
    let row = c.query_one(
        "SELECT broker_purge($1::text::interval, $2::text::interval, $3)",
        &[&secs(completed), &secs(failed), &(batch.min(i32::MAX as u32) as i32)],
    )?;
    Ok(row.get(0))
}
