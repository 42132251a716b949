//! What the operator commands read: the status of a database (`status`), a list of jobs
//! (`jobs`) and of schedules (`schedule list`). Typed rows; the command line formats them.
//! Ages and run times are the database's clock, so every host reads the same numbers.

use std::time::SystemTime;

use postgres::{Client, IsolationLevel};

/// The five states of a job, in the order a job passes through them.
pub const JOB_STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// The active broker instance, as its row says.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub id: i64,
    pub name: String,
    pub host: String,
    pub pid: i32,
    pub status: String,
    pub heartbeat_at: SystemTime,
    /// The heartbeat as PostgreSQL prints it (session time zone), as `status` has always shown.
    pub heartbeat_text: String,
    /// Seconds since the last heartbeat.
    pub heartbeat_age: f64,
}

/// How many jobs of a queue are in one state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueCount {
    pub queue: i32,
    pub status: String,
    pub count: i64,
}

/// A job in state `running` (claimed by an instance; perhaps still waiting for its worker).
#[derive(Debug, Clone)]
pub struct RunningJob {
    pub id: i64,
    pub queue: i32,
    pub name: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub instance_id: Option<i64>,
    /// When its SQL started: the row's started_at (jobs outside a transaction) or, for a
    /// transactional job whose start is written when its batch ends, the start of the statement
    /// its backend runs (pg_stat_activity; visible to the broker's login, superusers and
    /// pg_read_all_stats). None: not started yet, or not visible.
    pub started_at: Option<SystemTime>,
    pub run_seconds: Option<f64>,
}

/// A job that ended failed.
#[derive(Debug, Clone)]
pub struct FailedJob {
    pub id: i64,
    pub queue: i32,
    pub name: String,
    pub attempts: i32,
    pub completed_at: Option<SystemTime>,
    pub age_seconds: Option<f64>,
    pub error: Option<String>,
}

/// Everything `status` shows of one database, read in one snapshot.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// The active instance (at most one: a unique index sees to that).
    pub instance: Option<InstanceRow>,
    /// Job counts per queue and state, only those above zero, by queue then state name.
    pub counts: Vec<QueueCount>,
    /// Per queue, how long its longest-waiting ready job (due, not waiting for a dependency)
    /// has been due, in seconds. Queues without such a job are absent.
    pub oldest_pending: Vec<(i32, f64)>,
    /// Running jobs, oldest claim first.
    pub running: Vec<RunningJob>,
    /// The most recent failed jobs, newest first.
    pub recent_failures: Vec<FailedJob>,
}

/// How a running job's start is found (see [`RunningJob::started_at`]); `j` is the job.
const RUN_START: &str = "coalesce(j.started_at,
         (SELECT a.query_start FROM pg_catalog.pg_stat_activity a
           WHERE j.status = 'running'
             AND a.application_name = left('pgsql-broker job ' || j.id, 63)
           LIMIT 1))";

/// Reads the status of the database in one read-only snapshot; `failures` bounds the list of
/// recent failures.
pub fn status_report(c: &mut Client, failures: i64) -> Result<StatusReport, postgres::Error> {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let instance = tx
        .query_opt(
            "SELECT id, name, host, pid, status, heartbeat_at, heartbeat_at::text,
                    extract(epoch FROM now() - heartbeat_at)::float8
               FROM broker_queueinstance WHERE status = 'active' ORDER BY id DESC LIMIT 1",
            &[],
        )?
        .map(|r| InstanceRow {
            id: r.get(0),
            name: r.get(1),
            host: r.get(2),
            pid: r.get(3),
            status: r.get(4),
            heartbeat_at: r.get(5),
            heartbeat_text: r.get(6),
            heartbeat_age: r.get(7),
        });
    let counts = tx
        .query(
            "SELECT job_queue, status, count(*) FROM broker_jobs GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )?
        .iter()
        .map(|r| QueueCount {
            queue: r.get(0),
            status: r.get(1),
            count: r.get(2),
        })
        .collect();
    let oldest_pending = tx
        .query(
            "SELECT job_queue, extract(epoch FROM now() - min(greatest(created_at, run_after)))::float8
               FROM broker_jobs
              WHERE status = 'pending' AND waiting = 0 AND run_after <= now()
              GROUP BY 1 ORDER BY 1",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let running = tx
        .query(
            &format!(
                "SELECT id, job_queue, job_name, attempts, max_attempts, instance_id, s.started,
                        extract(epoch FROM now() - s.started)::float8
                   FROM broker_jobs j, LATERAL (SELECT {RUN_START} AS started) s
                  WHERE j.status = 'running'
                  ORDER BY j.claim, j.id"
            ),
            &[],
        )?
        .iter()
        .map(|r| RunningJob {
            id: r.get(0),
            queue: r.get(1),
            name: r.get(2),
            attempts: r.get(3),
            max_attempts: r.get(4),
            instance_id: r.get(5),
            started_at: r.get(6),
            run_seconds: r.get(7),
        })
        .collect();
    let recent_failures = tx
        .query(
            "SELECT id, job_queue, job_name, attempts, completed_at,
                    extract(epoch FROM now() - completed_at)::float8, error_text
               FROM broker_jobs WHERE status = 'failed'
              ORDER BY completed_at DESC NULLS LAST, id DESC LIMIT $1",
            &[&failures],
        )?
        .iter()
        .map(|r| FailedJob {
            id: r.get(0),
            queue: r.get(1),
            name: r.get(2),
            attempts: r.get(3),
            completed_at: r.get(4),
            age_seconds: r.get(5),
            error: r.get(6),
        })
        .collect();
    tx.commit()?;
    Ok(StatusReport {
        instance,
        counts,
        oldest_pending,
        running,
        recent_failures,
    })
}

/// Which jobs `jobs` lists.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// One of [`JOB_STATUSES`].
    pub status: Option<String>,
    pub queue: Option<i32>,
    pub limit: i64,
}

/// A job as `jobs` shows it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub queue: i32,
    pub status: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub name: String,
    pub owner: String,
    pub run_as: Option<String>,
    pub language: String,
    pub transactional: bool,
    pub created_at: SystemTime,
    pub run_after: SystemTime,
    pub started_at: Option<SystemTime>,
    pub completed_at: Option<SystemTime>,
    /// How long it ran (ended jobs) or has been running (running jobs); None when it never
    /// started, or its start is not visible.
    pub run_seconds: Option<f64>,
    /// Seconds until run_after, for a pending job not due yet.
    pub due_in: Option<f64>,
    /// Dependencies not completed yet.
    pub waiting: i32,
    pub depends_on: Vec<i64>,
    pub schedule_id: Option<i64>,
    pub error: Option<String>,
}

/// The newest jobs first (highest id), filtered, at most `filter.limit`.
pub fn list_jobs(c: &mut Client, filter: &JobFilter) -> Result<Vec<JobRow>, postgres::Error> {
    let rows = c.query(
        &format!(
            "SELECT j.id, j.job_queue, j.status, j.job_priority, j.attempts, j.max_attempts,
                    j.job_name, j.owner::text, j.run_as::text, j.job_language, j.transactional,
                    j.created_at, j.run_after, s.started, j.completed_at,
                    extract(epoch FROM coalesce(j.completed_at, now()) - s.started)::float8,
                    CASE WHEN j.status = 'pending' AND j.run_after > now()
                         THEN extract(epoch FROM j.run_after - now())::float8 END,
                    j.waiting,
                    ARRAY(SELECT d.depends_on FROM broker_job_dependencies d
                           WHERE d.job_id = j.id ORDER BY 1),
                    j.schedule_id, j.error_text
               FROM broker_jobs j, LATERAL (SELECT {RUN_START} AS started) s
              WHERE ($1::text IS NULL OR j.status = $1) AND ($2::int IS NULL OR j.job_queue = $2)
              ORDER BY j.id DESC LIMIT $3"
        ),
        &[&filter.status, &filter.queue, &filter.limit],
    )?;
    Ok(rows
        .iter()
        .map(|r| JobRow {
            id: r.get(0),
            queue: r.get(1),
            status: r.get(2),
            priority: r.get(3),
            attempts: r.get(4),
            max_attempts: r.get(5),
            name: r.get(6),
            owner: r.get(7),
            run_as: r.get(8),
            language: r.get(9),
            transactional: r.get(10),
            created_at: r.get(11),
            run_after: r.get(12),
            started_at: r.get(13),
            completed_at: r.get(14),
            run_seconds: r.get(15),
            due_in: r.get(16),
            waiting: r.get(17),
            depends_on: r.get(18),
            schedule_id: r.get(19),
            error: r.get(20),
        })
        .collect())
}

/// A schedule as `schedule list` shows it.
#[derive(Debug, Clone)]
pub struct ScheduleInfo {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
    pub overlap: bool,
    pub queue: i32,
    pub priority: i32,
    pub language: String,
    pub run_as: Option<String>,
    pub owner: String,
    pub sql: String,
    pub next_run: Option<SystemTime>,
    pub last_run: Option<SystemTime>,
    pub last_error: Option<String>,
}

/// Every schedule the caller may see, by name then id.
pub fn list_schedules(c: &mut Client) -> Result<Vec<ScheduleInfo>, postgres::Error> {
    let rows = c.query(
        "SELECT id, schedule_name, cron, timezone, enabled, overlap, job_queue, job_priority,
                job_language, run_as::text, owner::text, execute_str, next_run, last_run,
                last_error
           FROM broker_schedule ORDER BY schedule_name, id",
        &[],
    )?;
    Ok(rows
        .iter()
        .map(|r| ScheduleInfo {
            id: r.get(0),
            name: r.get(1),
            cron: r.get(2),
            timezone: r.get(3),
            enabled: r.get(4),
            overlap: r.get(5),
            queue: r.get(6),
            priority: r.get(7),
            language: r.get(8),
            run_as: r.get(9),
            owner: r.get(10),
            sql: r.get(11),
            next_run: r.get(12),
            last_run: r.get(13),
            last_error: r.get(14),
        })
        .collect())
}
