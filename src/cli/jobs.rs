//! The commands on jobs: `add` (every option of `broker_add_job`), `jobs` (a table or JSON),
//! `cancel ID` (`broker_cancel_job`) and `retry ID` (`broker_retry_job`). Each works whether
//! or not a broker runs: they only read and call the broker's SQL.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::args::{AddCmd, CancelCmd, JobsCmd, RetryCmd};
use super::format::{duration, excerpt, json_secs, json_time, rfc3339, short_time, table};
use super::{check_queue, list_each, one_database, refused, selected};
use crate::config::{parse_duration, Config, DatabaseConfig};
use crate::db::{self, JobFilter, JobRow, JOB_STATUSES};
use crate::error::Error;
use crate::job::{self, NewJob};
use crate::schedule::cron;

/// Most jobs `jobs --limit` lists per database.
const MAX_LIMIT: i64 = 10_000;

/// When a job may start, as `--run-after` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAfter {
    At(SystemTime),
    /// From now, by the database's clock.
    In(Duration),
}

/// `--run-after`: a duration from now (`30s`, `5m`, a bare number of seconds), else a time
/// (RFC 3339; without an offset, UTC).
fn parse_run_after(text: &str) -> Result<RunAfter, String> {
    if let Ok(d) = parse_duration(text) {
        return Ok(RunAfter::In(d));
    }
    match cron::parse_instant(text, chrono_tz::UTC) {
        Ok(t) => Ok(RunAfter::At(t.into())),
        Err(_) => Err(format!(
            "--run-after {text:?}: neither a time (e.g. 2026-03-29T01:00:00Z, \
             2026-03-29T03:00:00+02:00, or 2026-03-29 01:00 read as UTC) nor a duration from \
             now (e.g. 30s, 5m, 1h30m)"
        )),
    }
}

/// `--depends-on`, repeated or comma-separated: job ids.
fn parse_depends_on(values: &[String]) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for part in values.iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        match part.parse::<i64>() {
            Ok(id) if id > 0 => ids.push(id),
            _ => return Err(format!("--depends-on {part:?}: not a job id")),
        }
    }
    Ok(ids)
}

/// The job `add` submits, and its `--run-after`; errors name the option.
fn new_job(cmd: &AddCmd) -> Result<(NewJob, Option<RunAfter>), String> {
    if cmd.max_attempts < 1 {
        return Err(format!(
            "--max-attempts {}: a job is tried at least once (1 = no retries)",
            cmd.max_attempts
        ));
    }
    let timeout = match &cmd.timeout {
        Some(text) => {
            let t = parse_duration(text).map_err(|e| format!("--timeout: {e}"))?;
            if t.is_zero() {
                return Err(
                    "--timeout 0: leave the option out for the broker's default_job_timeout".into(),
                );
            }
            Some(t)
        }
        None => None,
    };
    if cmd.retry_on_crash && !cmd.non_transactional {
        return Err(
            "--retry-on-crash applies to --non-transactional jobs only (a transactional job \
             always runs again after a crash: its transaction rolled back)"
                .into(),
        );
    }
    let run_after = cmd.run_after.as_deref().map(parse_run_after).transpose()?;
    let job = NewJob {
        queue: cmd.queue,
        priority: cmd.priority,
        language: cmd.language.clone(),
        run_as: cmd.run_as.clone(),
        user_login: cmd.user_login.clone(),
        max_attempts: cmd.max_attempts,
        timeout,
        transactional: !cmd.non_transactional,
        retry_on_crash: cmd.retry_on_crash,
        depends_on: parse_depends_on(&cmd.depends_on)?,
        ..NewJob::new(&cmd.name, &cmd.sql)
    };
    Ok((job, run_after))
}

/// The database `add` submits to, after checking that a worker there serves `--queue`.
fn add_target<'a>(config: &'a Config, cmd: &AddCmd) -> Result<&'a DatabaseConfig, String> {
    let db = one_database(config, cmd.database.as_deref())?;
    check_queue(db, cmd.queue)?;
    Ok(db)
}

pub(super) fn check_add(config: &Config, cmd: &AddCmd) -> Result<(), String> {
    add_target(config, cmd)?;
    new_job(cmd).map(drop)
}

pub(super) fn add(config: &Config, cmd: &AddCmd) -> Result<i32, Error> {
    let db = add_target(config, cmd).map_err(Error::Runtime)?;
    let (mut job, run_after) = new_job(cmd).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    let added = submit(&mut client, &mut job, run_after);
    match added {
        Ok(id) => {
            println!("{id}");
            Ok(0)
        }
        Err(e) => refused(db, "job refused", "adding the job", e),
    }
}

/// Submits `job` in a transaction; a `--run-after` duration counts from the database's now(),
/// the clock the broker compares run_after with.
fn submit(
    client: &mut postgres::Client,
    job: &mut NewJob,
    run_after: Option<RunAfter>,
) -> Result<i64, postgres::Error> {
    let mut tx = client.transaction()?;
    job.run_after = match run_after {
        Some(RunAfter::At(t)) => Some(t),
        Some(RunAfter::In(d)) => Some(db::database_now(&mut tx)? + d),
        None => None,
    };
    let id = job::add(&mut tx, job)?;
    tx.commit()?;
    Ok(id)
}

pub(super) fn check_list(config: &Config, cmd: &JobsCmd) -> Result<(), String> {
    selected(config, cmd.database.as_deref())?;
    filter(cmd).map(drop)
}

fn filter(cmd: &JobsCmd) -> Result<JobFilter, String> {
    if let Some(status) = &cmd.status {
        if !JOB_STATUSES.contains(&status.as_str()) {
            return Err(format!(
                "--status {status:?}: no such job state; use one of {}",
                JOB_STATUSES.join(", ")
            ));
        }
    }
    if let Some(queue) = cmd.queue {
        if queue < 1 {
            return Err(format!("--queue {queue}: queues are numbered from 1"));
        }
    }
    if !(1..=MAX_LIMIT).contains(&cmd.limit) {
        return Err(format!(
            "--limit {} is out of range 1-{MAX_LIMIT}",
            cmd.limit
        ));
    }
    Ok(JobFilter {
        status: cmd.status.clone(),
        queue: cmd.queue,
        limit: cmd.limit,
    })
}

/// Lists the newest jobs of each selected database, as a table per database (headed by the
/// database's name when there are several) or as one JSON array.
pub(super) fn list(config: &Config, cmd: &JobsCmd) -> Result<i32, Error> {
    let filter = filter(cmd).map_err(Error::Runtime)?;
    let dbs = selected(config, cmd.database.as_deref()).map_err(Error::Runtime)?;
    list_each(
        &dbs,
        cmd.json,
        "listing jobs",
        |c| db::list_jobs(c, &filter),
        job_json,
        job_table,
    )
}

/// What the RUN column says: how long an ended job ran or a running one has run so far; for a
/// pending job, what it waits for.
fn run_cell(j: &JobRow) -> String {
    if j.status == "pending" {
        return match (j.due_in, j.waiting) {
            (Some(due), _) => format!("due in {}", duration(due)),
            (None, n) if n > 0 => format!("waits for {n} job(s)"),
            _ => "-".into(),
        };
    }
    j.run_seconds.map_or_else(|| "-".into(), duration)
}

fn job_table(jobs: &[JobRow]) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.id.to_string(),
                j.queue.to_string(),
                j.status.clone(),
                j.priority.to_string(),
                format!("{}/{}", j.attempts, j.max_attempts),
                short_time(j.created_at),
                run_cell(j),
                excerpt(&j.name, 30),
                j.error
                    .as_deref()
                    .map_or_else(String::new, |e| excerpt(e, 60)),
            ]
        })
        .collect();
    table(
        &[
            "ID", "QUEUE", "STATUS", "PRIO", "ATTEMPTS", "CREATED", "RUN", "NAME", "ERROR",
        ],
        &rows,
    )
}

fn job_json(db: &DatabaseConfig, j: &JobRow) -> Value {
    json!({
        "database": db.name,
        "id": j.id,
        "queue": j.queue,
        "status": j.status,
        "priority": j.priority,
        "attempts": j.attempts,
        "max_attempts": j.max_attempts,
        "name": j.name,
        "owner": j.owner,
        "run_as": j.run_as,
        "language": j.language,
        "transactional": j.transactional,
        "created_at": rfc3339(j.created_at),
        "run_after": rfc3339(j.run_after),
        "started_at": json_time(j.started_at),
        "completed_at": json_time(j.completed_at),
        "run_seconds": json_secs(j.run_seconds),
        "waiting": j.waiting,
        "depends_on": j.depends_on,
        "schedule_id": j.schedule_id,
        "error": j.error,
    })
}

/// Cancels a job: exit 0 when it is cancelled or its cancel was requested (running), 1 when it
/// does not exist or had already ended.
pub(super) fn cancel(config: &Config, cmd: &CancelCmd) -> Result<i32, Error> {
    let db = one_database(config, cmd.database.as_deref()).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    let outcome = match db::cancel_job(&mut client, cmd.id) {
        Ok(outcome) => outcome,
        Err(e) => {
            return refused(
                db,
                &format!("cannot cancel job {}", cmd.id),
                "cancelling",
                e,
            )
        }
    };
    let id = cmd.id;
    let Some(outcome) = outcome else {
        eprintln!("pgsql-broker: no job {id} in database {}", db.name);
        return Ok(1);
    };
    match (outcome.before.as_str(), outcome.after.as_str()) {
        (_, "cancelled") if outcome.before != "cancelled" => {
            println!("job {id} cancelled");
            Ok(0)
        }
        (_, "running") => {
            println!(
                "job {id} is running: cancel requested (the active broker instance cancels its \
                 statement, and ends its backend if the job ignores that)"
            );
            Ok(0)
        }
        ("pending" | "running", after) => {
            eprintln!("pgsql-broker: job {id} ended {after} before it could be cancelled");
            Ok(1)
        }
        (before, _) => {
            eprintln!("pgsql-broker: job {id} is already {before}; nothing to cancel");
            Ok(1)
        }
    }
}

/// Retries a failed or cancelled job; the server's refusal (no such job, not failed or
/// cancelled, a dependency still failed, not the caller's) gives exit status 1.
pub(super) fn retry(config: &Config, cmd: &RetryCmd) -> Result<i32, Error> {
    let db = one_database(config, cmd.database.as_deref()).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    let id = cmd.id;
    let r = match db::retry_job(&mut client, id) {
        Ok(r) => r,
        Err(e) => return refused(db, &format!("cannot retry job {id}"), "retrying", e),
    };
    let mut line = format!(
        "job {id} is {} again: attempt {} of at most {}",
        r.status,
        r.attempts + 1,
        r.max_attempts
    );
    if let Some(due) = r.due_in {
        line.push_str(&format!(", due in {}", duration(due)));
    }
    if r.waiting > 0 {
        line.push_str(&format!(
            ", after {} job(s) it depends on complete",
            r.waiting
        ));
    }
    println!("{line}");
    if !r.dependents.is_empty() {
        let ids: Vec<String> = r.dependents.iter().map(i64::to_string).collect();
        println!(
            "dependents pending again (they were cancelled because it ended): {}",
            ids.join(", ")
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_after_is_a_duration_or_a_time() {
        assert_eq!(
            parse_run_after("90"),
            Ok(RunAfter::In(Duration::from_secs(90)))
        );
        assert_eq!(
            parse_run_after("1h30m"),
            Ok(RunAfter::In(Duration::from_secs(5400)))
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_774_746_000);
        assert_eq!(
            parse_run_after("2026-03-29T01:00:00Z"),
            Ok(RunAfter::At(at))
        );
        assert_eq!(
            parse_run_after("2026-03-29T03:00:00+02:00"),
            Ok(RunAfter::At(at))
        );
        assert_eq!(parse_run_after("2026-03-29 01:00"), Ok(RunAfter::At(at)));
        let e = parse_run_after("tomorrow").unwrap_err();
        assert!(e.starts_with("--run-after \"tomorrow\""), "{e}");
    }

    #[test]
    fn depends_on_takes_repeats_and_commas() {
        let values = ["3,4".to_string(), " 7 ".to_string()];
        assert_eq!(parse_depends_on(&values), Ok(vec![3, 4, 7]));
        let e = parse_depends_on(&["3,x".to_string()]).unwrap_err();
        assert_eq!(e, "--depends-on \"x\": not a job id");
        assert!(parse_depends_on(&["0".to_string()]).is_err());
        assert!(parse_depends_on(&["3,".to_string()]).is_err());
    }
}
