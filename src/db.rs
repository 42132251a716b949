//! The database adapter: connections, the pool, and one typed call per broker SQL function.
//! Everything else reaches PostgreSQL through here.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{CancelToken, Client, GenericClient};
use r2d2_postgres::PostgresConnectionManager;

use crate::config::{self, DatabaseConfig, KeyError, Secret};
use crate::error::Error;
use crate::execute::Job;
use crate::tls::{self, MakeTls};

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

/// True when the error came from the server about a statement, so the connection still works
/// (a FATAL error, such as 57P01 from pg_terminate_backend, ends the connection with it).
pub fn is_statement_error(e: &postgres::Error) -> bool {
    use postgres::error::Severity;
    e.as_db_error()
        .is_some_and(|d| !matches!(d.parsed_severity(), Some(Severity::Fatal | Severity::Panic)))
        && !e.is_closed()
}

/// True when `broker_run` refused to start a job that is not this attempt's to run: another
/// session holds its row (55P03), or the claim is no longer held (55000). Raised by the
/// broker's function itself (its error context says so, which no job's SQL can fake).
pub fn is_not_startable(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        matches!(d.code().code(), "55P03" | "55000")
            && d.where_()
                .is_some_and(|w| w.contains("function broker_run("))
    })
}

/// Errors that go away by themselves: serialization failures, deadlocks, lock or statement
/// timeouts, cancels, the server shutting down. Worth trying again at the next poll.
pub fn is_transient(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("40") || c.starts_with("57") || c == "55P03"
    })
}

/// The statement was cancelled (57014): a cancel request or a statement timeout.
pub fn is_query_canceled(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// Registers this process as the database's active instance; see `broker_register_instance`.
/// The listener's first poll then recovers what dead instances left.
pub fn register_instance(
    c: &mut Client,
    name: &str,
    host: &str,
    version: &str,
    evict: bool,
) -> Result<i64, postgres::Error> {
    let row = c.query_one(
        "SELECT broker_register_instance($1, $2, $3, $4, $5)",
        &[&name, &host, &(std::process::id() as i32), &version, &evict],
    )?;
    Ok(row.get(0))
}

/// Who the active instance is, as its row says, for a standby's log line.
pub fn active_instance(c: &mut Client) -> Result<Option<String>, postgres::Error> {
    let row = c.query_opt(
        "SELECT format('instance %s (%L) on host %s, pid %s, last heartbeat %s',
                       id, name, host, pid, heartbeat_at)
           FROM broker_queueinstance WHERE status = 'active' ORDER BY id DESC LIMIT 1",
        &[],
    )?;
    Ok(row.map(|r| r.get(0)))
}

/// True when the server is a standby (in recovery): it cannot run jobs, and claiming it would
/// fail on the first write.
pub fn in_recovery(c: &mut Client) -> Result<bool, postgres::Error> {
    Ok(c.query_one("SELECT pg_is_in_recovery()", &[])?.get(0))
}

/// The session advisory lock every standby listener connected to the database holds in shared
/// mode, so each can count the processes that want to serve it (see [`instance_lock_state`]).
/// It dies with the connection, like the instance lock.
const MEMBER_LOCK_KEY: &str = "hashtextextended('pgsql-broker member ' || current_database(), 0)";

pub fn take_member_lock(c: &mut Client) -> Result<(), postgres::Error> {
    c.batch_execute(&format!(
        "SELECT pg_advisory_lock_shared({MEMBER_LOCK_KEY})"
    ))
}

/// Who holds the instance lock now (None: nobody; Some(false): a session that is no broker
/// instance), and how many standby processes (holders of the member lock) are connected.
pub fn instance_lock_state(c: &mut Client) -> Result<(Option<bool>, i64), postgres::Error> {
    let row = c.query_one(
        &format!(
            "SELECT (SELECT coalesce(h.is_broker, false) FROM broker_instance_lock_holder() h
                      WHERE h.pid IS NOT NULL),
                    count(l.pid) FILTER (WHERE l.mode = 'ShareLock'
                                         AND l.classid = ((k.member >> 32) & 4294967295)::oid
                                         AND l.objid = (k.member & 4294967295)::oid)
               FROM (SELECT {MEMBER_LOCK_KEY} AS member) k
               LEFT JOIN pg_locks l
                 ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
        &[],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// True while jobs claimed by `instance` are still running (seen by the database, so a claim
/// that committed but that its worker has not noted yet counts too).
pub fn instance_has_running(c: &mut Client, instance: i64) -> Result<bool, postgres::Error> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM broker_jobs WHERE status = 'running' AND instance_id = $1)",
        &[&instance],
    )?
    .get(0))
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

/// What recovery did: jobs pending again, and the non-transactional jobs it failed (they may
/// have applied part of their work; an operator should look at them).
#[derive(Debug, Default)]
pub struct Recovered {
    pub requeued: i32,
    pub failed: Vec<i64>,
}

impl Recovered {
    pub fn log(&self, database: &str) {
        if self.requeued > 0 {
            log::info!(
                "database {database}: recovered {} job(s) left running by a dead instance or a lost connection: pending again",
                self.requeued
            );
        }
        if !self.failed.is_empty() {
            log::warn!(
                "database {database}: non-transactional job(s) {:?} were running when their instance died; recorded failed (they may have applied part of their work)",
                self.failed
            );
        }
    }
}

/// Recovers jobs left running by dead instances, or by this one outside `in_flight`.
pub fn recover(
    c: &mut Client,
    instance: i64,
    in_flight: &[i64],
) -> Result<Recovered, postgres::Error> {
    let row = c.query_one(
        "SELECT requeued, failed FROM broker_recover($1, $2)",
        &[&instance, &in_flight],
    )?;
    Ok(Recovered {
        requeued: row.get(0),
        failed: row.get::<_, Option<Vec<i64>>>(1).unwrap_or_default(),
    })
}

/// True while running jobs that are not in `in_flight` remain, e.g. in backends being
/// terminated.
pub fn orphans_left(c: &mut Client, in_flight: &[i64]) -> Result<bool, postgres::Error> {
    let row = c.query_one(
        "SELECT EXISTS (SELECT 1 FROM broker_jobs
                         WHERE status = 'running' AND NOT id = ANY ($1))",
        &[&in_flight],
    )?;
    Ok(row.get(0))
}

/// Queues above `max_queue` that hold ready jobs: nobody will run those.
pub fn queues_above(c: &mut Client, max_queue: i32) -> Result<Vec<i32>, postgres::Error> {
    let rows = c.query(
        "SELECT DISTINCT job_queue FROM broker_jobs
          WHERE status = 'pending' AND waiting = 0 AND NOT delayed AND job_queue > $1",
        &[&max_queue],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The claim (`broker_get`), prepared once per listener connection.
pub struct ClaimStatement(postgres::Statement);

impl ClaimStatement {
    pub fn prepare(c: &mut Client) -> Result<ClaimStatement, postgres::Error> {
        c.prepare(
            "SELECT id, claim, attempt, role_oid, timeout_ms, transactional
               FROM broker_get($1, $2, $3)",
        )
        .map(ClaimStatement)
    }

    /// Claims up to `limit` ready jobs of `queue` for `instance` (committed), best first.
    pub fn claim(
        &self,
        c: &mut Client,
        queue: i32,
        instance: i64,
        limit: i32,
    ) -> Result<Vec<Job>, postgres::Error> {
        let rows = c.query(&self.0, &[&queue, &instance, &limit])?;
        Ok(rows
            .iter()
            .map(|r| Job {
                id: r.get(0),
                claim: r.get(1),
                attempt: r.get(2),
                role: r.get(3),
                timeout: r
                    .get::<_, Option<i64>>(4)
                    .map(|ms| Duration::from_millis(ms.max(0) as u64)),
                transactional: r.get(5),
            })
            .collect())
    }
}

/// Makes delayed jobs that are due claimable; returns the queues that got some, and how long
/// until the next delayed job is due.
pub fn promote_delayed(
    c: &mut Client,
    limit: i32,
) -> Result<(Vec<i32>, Option<Duration>), postgres::Error> {
    let row = c.query_one(
        "SELECT queues, next_in FROM broker_promote_delayed($1)",
        &[&limit],
    )?;
    let queues: Option<Vec<i32>> = row.get(0);
    let next_in: Option<f64> = row.get(1);
    Ok((
        queues.unwrap_or_default(),
        next_in.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)),
    ))
}

/// Running jobs whose cancel was asked for.
pub fn cancel_requested(c: &mut Client) -> Result<Vec<i64>, postgres::Error> {
    let rows = c.query("SELECT job_id FROM broker_cancel_requested()", &[])?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Cancels the statement of backend `pid` or, with `terminate`, ends the backend.
pub fn signal_backend(c: &mut Client, pid: i32, terminate: bool) -> Result<(), postgres::Error> {
    let function = if terminate {
        "pg_terminate_backend"
    } else {
        "pg_cancel_backend"
    };
    c.execute(&format!("SELECT pg_catalog.{function}($1)"), &[&pid])
        .map(drop)
}

/// The schema the broker is installed in (as found through the session's search_path, as the
/// install did), quoted for SQL.
pub fn broker_schema(c: &mut Client) -> Result<String, postgres::Error> {
    let row = c.query_one(
        "SELECT pg_catalog.quote_ident(n.nspname::text)
           FROM pg_catalog.pg_class r
           JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace
          WHERE r.oid = 'broker_jobs'::regclass",
        &[],
    )?;
    Ok(row.get(0))
}

/// Publishes a setting the database enforces (see `broker_settings`).
pub fn publish_setting(c: &mut Client, name: &str, value: &str) -> Result<(), postgres::Error> {
    c.execute("SELECT broker_publish_setting($1, $2)", &[&name, &value])
        .map(drop)
}

/// The lines of `pgsql-broker status`: the active instance, then job counts per queue and
/// status. Pending jobs in a queue above `queue_count` get a line saying why they wait.
pub fn status_report(c: &mut Client, queue_count: i32) -> Result<Vec<String>, postgres::Error> {
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
        let (queue, status, count) = (
            r.get::<_, i32>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
        );
        let mut line = format!("queue {queue} {status}: {count}");
        if queue > queue_count && status == "pending" {
            line.push_str(&format!(
                " (waiting: no worker serves queue {queue}, queue_count is {queue_count}; \
                 raise queue_count or move the jobs to queue 1-{queue_count})"
            ));
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Fixes dependents whose dependency's end was missed (see `broker_settle_dependencies`).
pub fn settle_dependencies(c: &mut Client) -> Result<i32, postgres::Error> {
    Ok(c.query_one("SELECT broker_settle_dependencies()", &[])?
        .get(0))
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
        &[
            &secs(completed),
            &secs(failed),
            &(batch.min(i32::MAX as u32) as i32),
        ],
    )?;
    Ok(row.get(0))
}

/// A schedule as the scheduler reads it: one to plan (`next_run` NULL) or one that is due.
/// Times are the database's, so every broker host agrees on what is due.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub next_run: Option<std::time::SystemTime>,
    /// What an `@every` series counts from: the last fire time, else the creation time.
    pub anchor: std::time::SystemTime,
    /// The database's now() when the row was read.
    pub now: std::time::SystemTime,
}

fn schedule_row(r: &postgres::Row) -> ScheduleRow {
    ScheduleRow {
        id: r.get(0),
        name: r.get(1),
        cron: r.get(2),
        timezone: r.get(3),
        next_run: r.get(4),
        anchor: r.get(5),
        now: r.get(6),
    }
}

const SCHEDULE_COLUMNS: &str =
    "id, schedule_name, cron, timezone, next_run, coalesce(last_run, created_at), now()";

/// Enabled schedules that need planning or are due, those to plan first, at most `limit`.
pub fn schedules_to_run(c: &mut Client, limit: i64) -> Result<Vec<ScheduleRow>, postgres::Error> {
    let rows = c.query(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM broker_schedule
              WHERE enabled AND (next_run IS NULL OR next_run <= now())
              ORDER BY next_run NULLS FIRST, id LIMIT $1"
        ),
        &[&limit],
    )?;
    Ok(rows.iter().map(schedule_row).collect())
}

/// Stores the first planned fire time of a schedule, unless it was planned or changed meanwhile.
pub fn plan_schedule(
    c: &mut Client,
    id: i64,
    next_run: std::time::SystemTime,
) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE broker_schedule SET next_run = $2
          WHERE id = (SELECT id FROM broker_schedule
                       WHERE id = $1 AND enabled AND next_run IS NULL FOR UPDATE SKIP LOCKED)",
        &[&id, &next_run],
    )
    .map(drop)
}

/// Locks a due schedule in the caller's transaction; None if it is no longer due or another
/// transaction (an operator's edit) holds it, in which case a later poll looks again.
pub fn lock_due_schedule(
    c: &mut impl GenericClient,
    id: i64,
) -> Result<Option<ScheduleRow>, postgres::Error> {
    let row = c.query_opt(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM broker_schedule
              WHERE id = $1 AND enabled AND next_run <= now()
                FOR UPDATE SKIP LOCKED"
        ),
        &[&id],
    )?;
    Ok(row.as_ref().map(schedule_row))
}

/// Fires the due time `due` of a locked schedule and moves it on to `next`; see
/// `broker_fire_schedule`. Returns the new job's id (if any) and the outcome.
pub fn fire_schedule(
    c: &mut impl GenericClient,
    id: i64,
    due: std::time::SystemTime,
    next: std::time::SystemTime,
) -> Result<(Option<i64>, String), postgres::Error> {
    let row = c.query_one(
        "SELECT job_id, outcome FROM broker_fire_schedule($1, $2, $3)",
        &[&id, &due, &next],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// Switches a schedule off with the reason, for the operator to read in `last_error`.
pub fn disable_schedule(
    c: &mut impl GenericClient,
    id: i64,
    error: &str,
) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE broker_schedule SET enabled = false, last_error = $2
          WHERE id = (SELECT id FROM broker_schedule WHERE id = $1 FOR UPDATE SKIP LOCKED)",
        &[&id, &error],
    )
    .map(drop)
}

/// How long until the earliest planned fire time (zero if one is already due); None when no
/// enabled schedule is planned.
pub fn next_schedule_wait(c: &mut Client) -> Result<Option<Duration>, postgres::Error> {
    let row = c.query_one(
        "SELECT extract(epoch FROM min(next_run) - now())::float8
           FROM broker_schedule WHERE enabled AND next_run IS NOT NULL",
        &[],
    )?;
    let secs: Option<f64> = row.get(0);
    Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
}
