//! The SQL of jobs as the listener and the commands see them: claim, delayed jobs, cancels,
//! dependencies, retention, and the status report.

use std::time::Duration;

use postgres::Client;

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
