//! The SQL of jobs as the listener and the commands see them: claim, delayed jobs, cancels,
//! retries, dependencies and retention.

use std::time::{Duration, SystemTime};

use postgres::{Client, GenericClient};

/// A job the listener claimed for this process, as the queue's channel carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    /// The claim token `broker_get` gave; starting and finishing the job need it.
    pub claim: i64,
    pub attempt: i32,
    /// The oid of the role the job runs as; None when that role no longer exists.
    pub role: Option<u32>,
    /// The job's own timeout; None when it set none.
    pub timeout: Option<Duration>,
    pub transactional: bool,
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

/// Jobs pending and running per queue, as `(queue, pending, running)`; queues above
/// `queue_count` come as one, numbered `queue_count + 1`. Each part reads a partial index of
/// unfinished jobs (ready, delayed, running; waiting dependents through their edges), so the
/// cost follows the unfinished jobs, never the finished ones a table keeps until retention.
pub fn queue_gauges(
    c: &mut Client,
    queue_count: i32,
) -> Result<Vec<(i32, i64, i64)>, postgres::Error> {
    let rows = c.query(
        "SELECT least(job_queue, $1 + 1),
                count(*) FILTER (WHERE status = 'pending'),
                count(*) FILTER (WHERE status = 'running')
           FROM (SELECT job_queue, status FROM broker_jobs
                  WHERE status = 'pending' AND waiting = 0 AND NOT delayed
                 UNION ALL
                 SELECT job_queue, status FROM broker_jobs
                  WHERE status = 'pending' AND delayed
                 UNION ALL
                 SELECT job_queue, status FROM broker_jobs
                  WHERE id IN (SELECT job_id FROM broker_job_dependencies)
                    AND status = 'pending' AND waiting > 0 AND NOT delayed
                 UNION ALL
                 SELECT job_queue, status FROM broker_jobs WHERE status = 'running') unfinished
          GROUP BY 1",
        &[&queue_count],
    )?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
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

/// The database's clock (`now()`), e.g. for a run_after given as a duration from now.
pub fn database_now(c: &mut impl GenericClient) -> Result<SystemTime, postgres::Error> {
    Ok(c.query_one("SELECT now()", &[])?.get(0))
}

/// What `broker_cancel_job` did: the job's status before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelOutcome {
    pub before: String,
    pub after: String,
}

/// Cancels job `id` through `broker_cancel_job` (a pending job at once, a running one by
/// asking its instance to cancel its statement). None when no job `id` exists that the caller
/// may see.
pub fn cancel_job(c: &mut Client, id: i64) -> Result<Option<CancelOutcome>, postgres::Error> {
    let mut tx = c.transaction()?;
    let Some(before) = tx.query_opt("SELECT status FROM broker_jobs WHERE id = $1", &[&id])? else {
        return Ok(None);
    };
    let after = tx.query_one("SELECT broker_cancel_job($1)", &[&id])?;
    let outcome = CancelOutcome {
        before: before.get(0),
        after: after.get(0),
    };
    tx.commit()?;
    Ok(Some(outcome))
}

/// A job after `broker_retry_job`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryOutcome {
    pub status: String,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Dependencies it still waits for.
    pub waiting: i32,
    /// Seconds until its run_after, when that is in the future.
    pub due_in: Option<f64>,
    /// Its dependents that were cancelled because it ended, pending again.
    pub dependents: Vec<i64>,
}

/// Retries a failed or cancelled job through `broker_retry_job`; the server's refusals (no
/// such job 02000, not failed or cancelled 55000, not the caller's 42501) come back as errors.
pub fn retry_job(c: &mut Client, id: i64) -> Result<RetryOutcome, postgres::Error> {
    let mut tx = c.transaction()?;
    let retried = tx.query_one(
        "SELECT status, dependents FROM broker_retry_job($1)",
        &[&id],
    )?;
    // A statement of its own: the call's changes are not visible to the statement making it.
    let row = tx.query_one(
        "SELECT attempts, max_attempts, waiting,
                CASE WHEN run_after > now() THEN extract(epoch FROM run_after - now())::float8 END
           FROM broker_jobs WHERE id = $1",
        &[&id],
    )?;
    let outcome = RetryOutcome {
        status: retried.get(0),
        dependents: retried.get::<_, Option<Vec<i64>>>(1).unwrap_or_default(),
        attempts: row.get(0),
        max_attempts: row.get(1),
        waiting: row.get(2),
        due_in: row.get(3),
    };
    tx.commit()?;
    Ok(outcome)
}
