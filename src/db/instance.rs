//! The SQL of the single active instance: registration, heartbeat, locks, recovery, settings.

use postgres::Client;

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
