//! A worker: waits for a wake-up of its queue, then claims and runs that queue's jobs one at a
//! time, best first, until none is ready. Each job runs on a pooled connection:
//!
//! 1. `broker_get` claims it and commits (status `running`, visible to operators);
//! 2. `broker_prepare_job` makes sure the job's role has its runner (a SECURITY DEFINER
//!    function owned by that role, so the job cannot SET ROLE back to the broker's login);
//! 3. in a new transaction `broker_run` locks its row, the runner runs its SQL, and
//!    `broker_set(..., 'completed')` is recorded in that same transaction before COMMIT.
//!
//! A job whose SQL fails is rolled back and recorded `failed` with SQLSTATE and message. A
//! panic in the broker's own code while a job runs fails that job and keeps the worker alive.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use postgres::Client;

use crate::broker::Shared;
use crate::db::{self, describe, Job, Outcome, PooledClient};

/// Runs one worker of `queue` until the wake-up channel closes (shutdown).
pub(crate) fn run(
    shared: Arc<Shared>,
    queue: i32,
    slot: usize,
    wake: Receiver<()>,
    _done: Sender<()>,
) {
    let idle = Duration::from_secs(shared.settings.worker_idle_timeout_sec.max(1));
    let mut conn: Option<PooledClient> = None;
    loop {
        select! {
            recv(wake) -> msg => if msg.is_err() { break },
            default(idle) => {
                // Give the connection back so an idle broker holds few of them.
                conn = None;
                continue;
            }
        }
        while !shared.is_stopping() {
            if conn.is_none() {
                match shared.pool.get() {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        log::warn!(
                            "database {}: queue {queue}: no connection: {e}",
                            shared.db.name
                        );
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            let mut current = None;
            let result = catch_unwind(AssertUnwindSafe(|| {
                run_next(&shared, queue, slot, c, &mut current)
            }));
            let Ok(result) = result else {
                fail_after_panic(&shared, c, current.as_ref());
                conn = None;
                break;
            };
            match result {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::warn!(
                        "database {}: queue {queue}: {}",
                        shared.db.name,
                        describe(&e)
                    );
                    if c.is_closed() {
                        conn = None;
                    }
                    break;
                }
            }
        }
    }
}

/// Claims and runs the best ready job of `queue`. Ok(false) when there was none.
/// Errors are the broker's own (connection lost); job errors are recorded, not returned.
fn run_next(
    shared: &Shared,
    queue: i32,
    slot: usize,
    c: &mut Client,
    current: &mut Option<Job>,
) -> Result<bool, postgres::Error> {
    let Some(instance) = shared.instance() else {
        return Ok(false);
    };
    let Some(job) = db::claim(c, queue, instance, 1)?.pop() else {
        return Ok(false);
    };
    // Kept where the panic handler finds it.
    let job: &Job = current.insert(job);
    let _in_flight = shared.track(slot, job.id, c.cancel_token());
    if shared.is_stopping() {
        // Claimed but not started: give it back for the next instance.
        db::finish_job(c, job, &Outcome::Pending, None)?;
        return Ok(false);
    }
    let started = Instant::now();
    log::debug!(
        "database {}: job {} started (queue {queue}, attempt {})",
        shared.db.name,
        job.id,
        job.attempt
    );
    let result = if job.transactional {
        run_in_transaction(c, job, shared)
    } else {
        run_in_session(c, job, shared)
    };
    let left_open = reset_session(c)?;
    let mut outcome = result?;
    if left_open && !job.transactional {
        outcome = Some(Outcome::Failed(
            "the job left a transaction open (BEGIN without COMMIT); it was rolled back".into(),
        ));
    }
    let status = match &outcome {
        Some(outcome) => db::finish_job(c, job, outcome, None)?,
        None => Some("completed".into()),
    };
    let took = started.elapsed().as_secs_f64();
    match outcome {
        Some(Outcome::Failed(error)) => log::warn!(
            "database {}: job {} failed after {took:.3}s (now {}): {error}",
            shared.db.name,
            job.id,
            status.as_deref().unwrap_or("gone")
        ),
        Some(Outcome::Pending) => {
            log::info!(
                "database {}: job {} rolled back and handed back, pending again",
                shared.db.name,
                job.id
            )
        }
        _ => log::info!(
            "database {}: job {} completed in {took:.3}s",
            shared.db.name,
            job.id
        ),
    }
    Ok(true)
}

/// Runs a transactional job: its SQL (as its role, through its runner) and its completion
/// commit together. Returns the outcome still to record (None when the completion already
/// committed with the job).
fn run_in_transaction(
    c: &mut Client,
    job: &Job,
    shared: &Shared,
) -> Result<Option<Outcome>, postgres::Error> {
    // Whether the job's own SQL was running when an error came: a deadlock or serialization
    // failure in the broker's steps around it is not the job's failure and costs no attempt.
    let mut in_job_sql = false;
    let result = db::prepare_job(c, job).and_then(|runner| {
        let mut tx = c.transaction()?;
        let xid = db::begin_job(&mut tx, job, shared.settings.default_job_timeout)?;
        in_job_sql = true;
        runner.run(&mut tx, &job.sql())?;
        in_job_sql = false;
        let status = db::finish_job(&mut tx, job, &Outcome::Completed, xid)?;
        if status.as_deref() != Some("completed") {
            // The row is no longer this attempt's (recovered or cancelled meanwhile): the
            // job's effects must not commit without its completion. Dropping tx rolls back.
            return Ok(false);
        }
        tx.commit().map(|()| true)
    });
    match result {
        Ok(true) => Ok(None),
        Ok(false) => Ok(Some(Outcome::Failed(
            "the job changed hands while it ran (recovered or cancelled); rolled back".into(),
        ))),
        Err(e) => outcome_of(e, shared, true, in_job_sql),
    }
}

/// Runs a job outside a transaction block (VACUUM, procedures that COMMIT). At most once: if
/// the broker dies meanwhile, recovery marks it failed rather than running it again.
fn run_in_session(
    c: &mut Client,
    job: &Job,
    shared: &Shared,
) -> Result<Option<Outcome>, postgres::Error> {
    let result = db::begin_job(c, job, shared.settings.default_job_timeout)
        .and_then(|_| c.batch_execute(&job.sql()));
    match result {
        Ok(()) => Ok(Some(Outcome::Completed)),
        Err(e) => outcome_of(e, shared, false, true),
    }
}

/// What an error while running a job means. A statement error is the job's outcome: handed
/// back when nothing of it can have applied (a transactional job cancelled by shutdown, or a
/// deadlock in the broker's own steps around its SQL), failed otherwise. Any other error is the
/// broker's (connection lost) and is returned.
fn outcome_of(
    e: postgres::Error,
    shared: &Shared,
    transactional: bool,
    in_job_sql: bool,
) -> Result<Option<Outcome>, postgres::Error> {
    if !db::is_statement_error(&e) {
        return Err(e);
    }
    let shutdown_cancel = shared.is_stopping() && db::is_query_canceled(&e);
    if transactional && (shutdown_cancel || (!in_job_sql && db::is_transient_conflict(&e))) {
        return Ok(Some(Outcome::Pending));
    }
    let error = describe(&e);
    Ok(Some(Outcome::Failed(if shutdown_cancel {
        format!("cancelled by broker shutdown: {error}")
    } else {
        error
    })))
}

/// Clears whatever session state a job left (SET, temp tables, LISTEN, advisory locks, role,
/// an open transaction) so it cannot leak into the next job on this connection. True when a
/// transaction had been left open and was rolled back.
fn reset_session(c: &mut Client) -> Result<bool, postgres::Error> {
    use postgres::error::SqlState;
    match c.batch_execute("DISCARD ALL") {
        Err(e)
            if e.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION)
                || e.code() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION) =>
        {
            c.batch_execute("ROLLBACK")?;
            c.batch_execute("DISCARD ALL")?;
            Ok(true)
        }
        other => other.map(|()| false),
    }
}

/// A bug in the broker panicked while `job` ran: the attempt is recorded as failed with that
/// reason (retried like any failure while attempts remain, never left running) and the
/// connection, in an unknown state, is reset.
fn fail_after_panic(shared: &Shared, c: &mut Client, job: Option<&Job>) {
    log::error!(
        "database {}: worker panicked{}; see the message above",
        shared.db.name,
        job.map(|j| format!(" while running job {}", j.id))
            .unwrap_or_default()
    );
    let Some(job) = job else { return };
    let reason =
        Outcome::Failed("the broker panicked while running this job (a bug; see its log)".into());
    if let Err(e) = reset_session(c).and_then(|_| db::finish_job(c, job, &reason, None)) {
        log::error!(
            "database {}: cannot record job {} as failed after the panic: {}; recovery will",
            shared.db.name,
            job.id,
            describe(&e)
        );
    }
}
