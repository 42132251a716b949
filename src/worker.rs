//! A worker of one queue: takes the jobs the listener claimed from the queue's channel and runs
//! them on a pooled connection. What it can take without waiting (up to
//! `fetch_query_que_size`) runs in one transaction, each job in its own savepoint, and commits
//! once (group commit): after the last job, after [`MAX_JOBS_PER_TRANSACTION`] jobs or once the
//! transaction has run `batch_max_ms`. A failing job rolls back to its savepoint alone and its
//! failure is recorded at once; the completions are recorded together, in one statement before
//! the COMMIT. Non-transactional jobs run alone, in the session. The statements themselves are
//! [`crate::execute`]'s.
//!
//! If the connection is lost, the jobs of the uncommitted transaction are still this
//! process's claims: they run again on a fresh connection (their effects went with the
//! transaction). The job blamed for the loss (the listener ended its backend after its
//! deadline, or its own settings ended the session) is recorded failed instead.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::error::SqlState;
use postgres::Client;

use crate::db::{self, describe, PooledClient};
use crate::execute::{self, last_value, Job, Outcome};
use crate::shared::{Running, Shared};

/// Jobs per transaction at most, whatever `fetch_query_que_size` says: PostgreSQL keeps 64
/// subtransaction ids per backend in shared memory; beyond that every other session's snapshot
/// gets slower while the transaction is open.
pub(crate) const MAX_JOBS_PER_TRANSACTION: usize = 64;

/// How long a job may outlive its timeout (or a cancel) before the listener ends its backend:
/// long enough for a cancelled statement to unwind, short enough that catching
/// `query_canceled` buys nothing.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_secs(3);

/// Connection losses one batch rides through before it leaves its jobs to recovery.
const MAX_LOSSES_PER_BATCH: u32 = 3;

/// Runs one worker of `queue` until its channel closes (shutdown).
pub(crate) fn run(
    shared: Arc<Shared>,
    queue: i32,
    slot: usize,
    jobs: Receiver<Job>,
    _done: Sender<()>,
) {
    let idle = Duration::from_secs(shared.settings.worker_idle_timeout_sec.max(1));
    let max_batch = (shared.settings.fetch_query_que_size as usize).max(1);
    let mut worker = Worker {
        shared: &shared,
        queue,
        slot,
        conn: None,
        open: Vec::new(),
        open_since: None,
        ended: None,
    };
    loop {
        let first = match jobs.recv_timeout(idle) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                // Give the connection back so an idle broker holds few of them.
                worker.disconnect();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = VecDeque::from([first]);
        // Wait until the listener has sent the rest of this claim.
        let whole = shared.sending(queue);
        while batch.len() < max_batch {
            match jobs.try_recv() {
                Ok(job) => batch.push_back(job),
                Err(_) => break,
            }
        }
        drop(whole);
        if catch_unwind(AssertUnwindSafe(|| worker.run_batch(&mut batch))).is_err() {
            worker.after_panic(batch);
        }
    }
    worker.disconnect();
}

/// A job that ran in the open transaction: its outcome is recorded there already (a failure),
/// or will be when it commits (a completion, `started` set).
struct Finished {
    job: Job,
    status: Option<String>,
    outcome: Outcome,
    took: Duration,
    /// When a completed job's SQL began (server clock, seconds since the epoch).
    started: Option<f64>,
}

impl Finished {
    /// A job whose outcome a statement recorded, as its returned status says.
    fn recorded(
        job: &Job,
        rows: &[postgres::SimpleQueryMessage],
        outcome: Outcome,
        took: Duration,
    ) -> Finished {
        Finished {
            job: *job,
            status: last_value(rows),
            outcome,
            took,
            started: None,
        }
    }
}

/// The connection was lost (or the transaction ended under the worker).
struct Lost {
    error: String,
    /// The job that caused it, with its outcome; None when it was not a job's doing.
    blamed: Option<Box<(Job, Outcome, Duration)>>,
    /// The job whose statement was running, when not blamed: it runs again.
    interrupted: Option<Job>,
}

struct Worker<'a> {
    shared: &'a Shared,
    queue: i32,
    slot: usize,
    conn: Option<PooledClient>,
    /// Jobs recorded in the open transaction, not committed yet.
    open: Vec<Finished>,
    open_since: Option<Instant>,
    /// Why the listener ended this worker's backend while the last job ran, if it did.
    ended: Option<String>,
}

impl Worker<'_> {
    fn run_batch(&mut self, batch: &mut VecDeque<Job>) {
        let mut losses = 0;
        self.prepare_runners(batch);
        loop {
            while let Some(job) = batch.pop_front() {
                if self.shared.handing_back() {
                    batch.push_front(job);
                    break;
                }
                let step = if job.transactional {
                    let last = batch.is_empty();
                    self.run_transactional(&job).and_then(|()| {
                        if last || self.transaction_full() {
                            self.commit()
                        } else {
                            Ok(())
                        }
                    })
                } else {
                    self.commit().and_then(|()| self.run_alone(&job))
                };
                if let Err(lost) = step {
                    losses += 1;
                    if !self.after_loss(lost, batch, losses) {
                        return;
                    }
                }
            }
            match self.commit() {
                Ok(()) => break,
                Err(lost) => {
                    losses += 1;
                    // What the lost transaction held runs again on a fresh connection.
                    if !self.after_loss(lost, batch, losses) {
                        return;
                    }
                }
            }
        }
        if !batch.is_empty() {
            // The drain's time is up: claimed but not started, so they go back.
            self.hand_back(batch.drain(..).collect());
        }
    }

    /// True when the open transaction should commit now.
    fn transaction_full(&self) -> bool {
        let max_ms = Duration::from_millis(self.shared.settings.batch_max_ms);
        self.open.len() >= MAX_JOBS_PER_TRANSACTION
            || self.open_since.is_some_and(|t| t.elapsed() >= max_ms)
    }

    /// Runs a transactional job in the open transaction (opening it if needed). Its completion
    /// is recorded when the transaction commits; a failure at once, in the transaction.
    fn run_transactional(&mut self, job: &Job) -> Result<(), Lost> {
        // A role gone since the claim has no runner: broker_run says so, and the job fails.
        let role = job.role.unwrap_or(0);
        let schema = self.shared.schema();
        let timeout = self.timeout_of(job);
        let begin = self.open_since.is_none();
        let message = execute::transactional(&schema, job, role, timeout, begin);
        let mut c = self.take_connection().map_err(|error| Lost {
            error,
            blamed: None,
            interrupted: Some(*job),
        })?;
        let started = Instant::now();
        if begin {
            self.open_since = Some(started);
        }
        let result = self.watched(job, timeout, || c.simple_query(&message));
        self.conn = Some(c);
        let took = started.elapsed();
        let e = match result {
            Ok(rows) => {
                self.open.push(Finished {
                    job: *job,
                    status: None,
                    outcome: Outcome::Completed,
                    took,
                    started: Some(execute::started(&rows).unwrap_or_default()),
                });
                return Ok(());
            }
            Err(e) => e,
        };
        if !db::is_statement_error(&e) {
            return Err(self.lost(job, e, took));
        }
        if db::is_not_startable(&e) {
            self.not_started(job, &e);
            return self.undo(job, took);
        }
        let outcome = self.outcome_of(job, &e);
        let record = execute::failure(&schema, job, &outcome, took);
        let result = match self.conn.as_mut() {
            Some(c) => c.simple_query(&record),
            None => return Err(self.lost(job, e, took)),
        };
        match result {
            Ok(rows) => {
                self.open
                    .push(Finished::recorded(job, &rows, outcome, took));
                Ok(())
            }
            Err(e) if db::is_statement_error(&e) => {
                log::warn!(
                    "database {}: job {}: cannot record its outcome ({}); recovery will",
                    self.shared.db.name,
                    job.id,
                    describe(&e)
                );
                self.shared.release([job.id]);
                self.undo(job, took)
            }
            Err(e) => Err(self.lost(job, e, took)),
        }
    }

    /// `broker_run` would not start the job (see `db::is_not_startable`): no attempt
    /// happened, and the job is left to its lock holder, its new claimant or recovery.
    fn not_started(&self, job: &Job, e: &postgres::Error) {
        log::info!(
            "database {}: job {} not started: {}",
            self.shared.db.name,
            job.id,
            describe(e)
        );
        self.shared.release([job.id]);
    }

    /// Rolls a job that did not run (or whose outcome could not be recorded) back to its
    /// savepoint; the rest of the transaction goes on.
    fn undo(&mut self, job: &Job, took: Duration) -> Result<(), Lost> {
        let undone = self
            .conn
            .as_mut()
            .map(|c| c.batch_execute(&execute::abandon()));
        match undone {
            Some(Err(e)) => Err(self.lost(job, e, took)),
            _ => Ok(()),
        }
    }

    /// Runs a job outside a transaction block, alone in the session (VACUUM, procedures that
    /// COMMIT). At most once: if the broker dies meanwhile, recovery fails it rather than
    /// running it again.
    fn run_alone(&mut self, job: &Job) -> Result<(), Lost> {
        let schema = self.shared.schema();
        let timeout = self.timeout_of(job);
        let lost = |error| Lost {
            error,
            blamed: None,
            interrupted: Some(*job),
        };
        let mut c = self.take_connection().map_err(lost)?;
        let started = Instant::now();
        let start = c.simple_query(&execute::start_in_session(&schema, job, timeout));
        let result = match start {
            Ok(rows) => {
                let sql = last_value(&rows).unwrap_or_default();
                Ok(self.watched(job, timeout, || c.batch_execute(&sql)))
            }
            Err(e) => Err(e),
        };
        self.conn = Some(c);
        let result = match result {
            Ok(result) => result,
            Err(e) if db::is_not_startable(&e) => {
                self.not_started(job, &e);
                return Ok(());
            }
            Err(e) if db::is_statement_error(&e) => {
                let outcome = self.outcome_of(job, &e);
                self.record_alone(job, outcome, started.elapsed());
                return Ok(());
            }
            Err(e) => {
                self.disconnect();
                return Err(lost(describe(&e)));
            }
        };
        let took = started.elapsed();
        let mut outcome = match result {
            Ok(()) => Outcome::Completed,
            Err(e) if db::is_statement_error(&e) => self.outcome_of(job, &e),
            Err(e) => {
                // Its effects may have applied: never run it again from here.
                let why = self.ended.take().unwrap_or_else(|| describe(&e));
                self.disconnect();
                let outcome =
                    Outcome::Failed(format!("the connection was lost while it ran: {why}"));
                self.record_alone(job, outcome, took);
                return Ok(());
            }
        };
        if let Outcome::Pending = outcome {
            // A shutdown cancel cannot roll back what a non-transactional job did.
            outcome = Outcome::Failed("cancelled by broker shutdown".into());
        }
        let c = self.connection().map_err(lost)?;
        match reset_session(c) {
            Ok(false) => {}
            Ok(true) => {
                outcome = Outcome::Failed(
                    "the job left a transaction open (BEGIN without COMMIT); it was rolled back"
                        .into(),
                )
            }
            Err(e) => {
                self.disconnect();
                log::warn!(
                    "database {}: job {}: cannot reset the session after it: {}",
                    self.shared.db.name,
                    job.id,
                    describe(&e)
                );
            }
        }
        self.record_alone(job, outcome, took);
        Ok(())
    }

    /// Runs `statement` while the listener may cancel it or end its backend at the job's
    /// deadline.
    fn watched<T>(
        &mut self,
        job: &Job,
        timeout: Option<Duration>,
        statement: impl FnOnce() -> T,
    ) -> T {
        if let Some(mut slot) = self.shared.slot(self.slot) {
            slot.job = Some(Running {
                id: job.id,
                deadline: timeout.map(|t| Instant::now() + t + DEADLINE_GRACE),
                cancel_sent: None,
                ended: None,
            });
        }
        log::debug!(
            "database {}: job {} started (queue {}, attempt {})",
            self.shared.db.name,
            job.id,
            self.queue,
            job.attempt
        );
        let result = statement();
        self.ended = self
            .shared
            .slot(self.slot)
            .and_then(|mut s| s.job.take())
            .and_then(|r| r.ended);
        result
    }

    /// What an error of a job's statements means: handed back when shutdown cancelled it (its
    /// transaction rolls back), failed otherwise.
    fn outcome_of(&self, job: &Job, e: &postgres::Error) -> Outcome {
        if self.shared.is_stopping() && db::is_query_canceled(e) {
            return Outcome::Pending;
        }
        if e.code() == Some(&SqlState::UNDEFINED_FUNCTION) {
            // Its runner may have been dropped (DROP OWNED BY): make it anew next time.
            if let Some(role) = job.role {
                self.shared.runners().remove(&role);
            }
        }
        Outcome::Failed(describe(e))
    }

    /// The connection is gone while `job` ran: who is to blame decides what happens to it.
    fn lost(&mut self, job: &Job, e: postgres::Error, took: Duration) -> Lost {
        let error = describe(&e);
        let own_doing = matches!(
            e.code().map(|c| c.code()),
            Some("25P03") | Some("57P05") // its own idle timeouts ended the session
        );
        let blamed = match self.ended.take() {
            Some(why) => Some(Outcome::Failed(why)),
            None if own_doing => Some(Outcome::Failed(format!(
                "the job's settings ended the broker's connection: {error}"
            ))),
            None => None,
        };
        self.disconnect();
        match blamed {
            Some(outcome) => Lost {
                error,
                blamed: Some(Box::new((*job, outcome, took))),
                interrupted: None,
            },
            None => Lost {
                error,
                blamed: None,
                interrupted: Some(*job),
            },
        }
    }

    /// After a lost connection: the blamed job is recorded, the uncommitted ones go back to
    /// the front of the batch. False when the batch gives up (its jobs left to recovery).
    fn after_loss(&mut self, lost: Lost, batch: &mut VecDeque<Job>, losses: u32) -> bool {
        self.disconnect();
        let mut again: Vec<Job> = self.open.drain(..).map(|f| f.job).collect();
        self.open_since = None;
        again.extend(lost.interrupted);
        for job in again.into_iter().rev() {
            batch.push_front(job);
        }
        log::warn!(
            "database {}: queue {}: connection lost ({}); {} job(s) of the transaction run again",
            self.shared.db.name,
            self.queue,
            lost.error,
            batch.len()
        );
        if let Some(blamed) = lost.blamed {
            let (job, outcome, took) = *blamed;
            self.record_alone(&job, outcome, took);
        }
        if losses >= MAX_LOSSES_PER_BATCH || self.connection().is_err() {
            log::warn!(
                "database {}: queue {}: leaving {} job(s) to recovery",
                self.shared.db.name,
                self.queue,
                batch.len()
            );
            self.shared.release(batch.drain(..).map(|j| j.id));
            return false;
        }
        true
    }

    /// Records an outcome in its own transaction (non-transactional jobs, jobs that never
    /// started).
    fn record_alone(&mut self, job: &Job, outcome: Outcome, took: Duration) {
        let schema = self.shared.schema();
        let statement = execute::record(&schema, job, &outcome, Some(took));
        let result = self
            .connection()
            .and_then(|c| c.simple_query(&statement).map_err(|e| describe(&e)));
        match result {
            Ok(rows) => {
                self.open
                    .push(Finished::recorded(job, &rows, outcome, took));
                self.committed();
            }
            Err(error) => {
                log::warn!(
                    "database {}: job {}: cannot record its outcome ({error}); recovery will",
                    self.shared.db.name,
                    job.id
                );
                self.shared.release([job.id]);
            }
        }
    }

    /// Records the completions of the open transaction and commits it, if there is one.
    fn commit(&mut self) -> Result<(), Lost> {
        if self.open_since.is_none() {
            return Ok(());
        }
        let ran: Vec<(Job, f64, Duration)> = self
            .open
            .iter()
            .filter_map(|f| Some((f.job, f.started?, f.took)))
            .collect();
        let message = execute::complete(&self.shared.schema(), &ran);
        let result = match self.conn.as_mut() {
            Some(c) => c.simple_query(&message),
            None => {
                return Err(Lost {
                    error: "no connection".into(),
                    blamed: None,
                    interrupted: None,
                })
            }
        };
        match result {
            Ok(rows) => {
                let recorded = execute::completed_ids(&rows);
                for f in self.open.iter_mut().filter(|f| f.started.is_some()) {
                    // Missing from the list: the job changed hands while it ran. broker_run
                    // held its row, so this is a guard, not a case that happens.
                    f.status = Some(if recorded.contains(&f.job.id) {
                        "completed".into()
                    } else {
                        "gone".into()
                    });
                }
                self.committed();
                Ok(())
            }
            Err(e) => {
                // Whatever failed, the transaction is gone with the connection: its jobs run
                // again on a fresh one.
                self.disconnect();
                Err(Lost {
                    error: describe(&e),
                    blamed: None,
                    interrupted: None,
                })
            }
        }
    }

    /// The open transaction committed: its jobs are done.
    fn committed(&mut self) {
        self.open_since = None;
        let name = &self.shared.db.name;
        let stats = &self.shared.stats;
        let done: Vec<Finished> = std::mem::take(&mut self.open);
        self.shared.release(done.iter().map(|f| f.job.id));
        for f in done {
            let (id, took) = (f.job.id, f.took.as_secs_f64());
            let status = f.status.as_deref().unwrap_or("gone");
            match (&f.outcome, status) {
                (Outcome::Completed, "completed") => {
                    stats.completed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    log::debug!("database {name}: job {id} completed in {took:.3}s");
                }
                (Outcome::Pending, _) => {
                    log::info!("database {name}: job {id} handed back, pending again")
                }
                (_, "locked") => log::warn!(
                    "database {name}: job {id}: another session holds its row; recovery settles it once that lock is gone"
                ),
                (outcome, status) => {
                    let counter = if status == "cancelled" {
                        &stats.cancelled
                    } else {
                        &stats.failed
                    };
                    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let error = match outcome {
                        Outcome::Failed(e) => e.as_str(),
                        _ => "the job changed hands while it ran (recovered or cancelled)",
                    };
                    if stats.may_log_failure() {
                        log::warn!(
                            "database {name}: job {id} failed after {took:.3}s (now {status}): {error}"
                        );
                    } else {
                        log::debug!(
                            "database {name}: job {id} failed after {took:.3}s (now {status}): {error}"
                        );
                    }
                }
            }
        }
    }

    /// Makes sure the runner of every transactional job's role exists, before the batch's
    /// transaction opens (creating one is DDL). A job whose runner cannot be made fails.
    fn prepare_runners(&mut self, batch: &mut VecDeque<Job>) {
        let schema = self.shared.schema();
        let mut failed = Vec::new();
        for job in batch.iter().filter(|j| j.transactional) {
            let Some(role) = job.role else {
                continue;
            };
            let mut runners = self.shared.runners();
            if runners.contains(&role) {
                continue;
            }
            let result = match self.connection() {
                Ok(c) => c.batch_execute(&execute::prepare_runner(&schema, role)),
                Err(_) => return, // the batch finds out and leaves its jobs to recovery
            };
            match result {
                Ok(()) => {
                    runners.insert(role);
                }
                Err(e) if db::is_statement_error(&e) => {
                    failed.push((*job, describe(&e)));
                }
                Err(_) => return,
            }
        }
        drop(schema);
        for (job, error) in failed {
            batch.retain(|j| j.id != job.id);
            self.record_alone(&job, Outcome::Failed(error), Duration::ZERO);
        }
    }

    /// Gives claimed jobs that did not start back (shutdown), in one statement.
    fn hand_back(&mut self, jobs: Vec<Job>) {
        let schema = self.shared.schema();
        let statement = jobs
            .iter()
            .map(|j| execute::record(&schema, j, &Outcome::Pending, None))
            .collect::<Vec<_>>()
            .join("; ");
        if let Ok(c) = self.connection() {
            if let Err(e) = c.batch_execute(&statement) {
                log::warn!(
                    "database {}: cannot hand back {} job(s) ({}); recovery will",
                    self.shared.db.name,
                    jobs.len(),
                    describe(&e)
                );
            }
        }
        self.shared.release(jobs.iter().map(|j| j.id));
    }

    /// A bug in the broker panicked mid-batch: the connection, in an unknown state, goes (and
    /// with it the open transaction); the job that ran is recorded failed (retried like any
    /// failure while attempts remain, never left running); the others are left to recovery.
    fn after_panic(&mut self, batch: VecDeque<Job>) {
        let running = self
            .shared
            .slot(self.slot)
            .and_then(|mut s| s.job.take())
            .map(|r| r.id);
        log::error!(
            "database {}: worker panicked{}; see the message above",
            self.shared.db.name,
            running
                .map(|id| format!(" while running job {id}"))
                .unwrap_or_default()
        );
        self.disconnect();
        let mut jobs: Vec<Job> = self.open.drain(..).map(|f| f.job).collect();
        self.open_since = None;
        jobs.extend(batch);
        if let Some(job) = jobs.iter().find(|j| Some(j.id) == running).copied() {
            let reason = "the broker panicked while running this job (a bug; see its log)";
            self.record_alone(&job, Outcome::Failed(reason.into()), Duration::ZERO);
        }
        self.shared.release(jobs.iter().map(|j| j.id));
    }

    /// The job's timeout: its own, else the default; at most `max_job_timeout`.
    fn timeout_of(&self, job: &Job) -> Option<Duration> {
        effective_timeout(
            job.timeout,
            self.shared.settings.default_job_timeout,
            self.shared.settings.max_job_timeout,
        )
    }

    fn connection(&mut self) -> Result<&mut PooledClient, String> {
        if self.conn.as_ref().is_some_and(|c| c.is_closed()) {
            self.disconnect();
        }
        if self.conn.is_none() {
            let mut c = self.shared.pool.get().map_err(|e| e.to_string())?;
            let pid: i32 = c
                .query_one("SELECT pg_catalog.pg_backend_pid()", &[])
                .map_err(|e| describe(&e))?
                .get(0);
            if let Some(mut slot) = self.shared.slot(self.slot) {
                slot.conn = Some((pid, c.cancel_token()));
            }
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    /// The connection, out of `self` while a statement borrows it (put it back after).
    fn take_connection(&mut self) -> Result<PooledClient, String> {
        self.connection()?;
        self.conn.take().ok_or_else(|| "no connection".to_string())
    }

    fn disconnect(&mut self) {
        if let Some(mut slot) = self.shared.slot(self.slot) {
            slot.conn = None;
        }
        self.conn = None;
    }
}

/// A job's own timeout (zero: none), else `default` (zero: none); then at most `max` (zero:
/// no cap), which also bounds jobs that asked for none.
pub(crate) fn effective_timeout(
    own: Option<Duration>,
    default: Duration,
    max: Duration,
) -> Option<Duration> {
    let wanted = own.unwrap_or(default);
    let wanted = (!wanted.is_zero()).then_some(wanted);
    if max.is_zero() {
        return wanted;
    }
    Some(wanted.map_or(max, |t| t.min(max)))
}

/// Clears whatever session state a non-transactional job left (SET, role, temp tables,
/// LISTEN, advisory locks, prepared statements). True when a transaction had been left open
/// and was rolled back.
fn reset_session(c: &mut Client) -> Result<bool, postgres::Error> {
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

#[cfg(test)]
mod tests {
    use super::effective_timeout;
    use std::time::Duration;

    #[test]
    fn timeouts_default_and_cap() {
        let s = Duration::from_secs;
        let z = Duration::ZERO;
        assert_eq!(effective_timeout(None, z, z), None);
        assert_eq!(effective_timeout(Some(z), s(5), z), None);
        assert_eq!(effective_timeout(None, s(5), z), Some(s(5)));
        assert_eq!(effective_timeout(Some(s(2)), s(5), z), Some(s(2)));
        // The cap holds against a submitter's zero ("none") and against long timeouts.
        assert_eq!(effective_timeout(Some(z), s(5), s(60)), Some(s(60)));
        assert_eq!(effective_timeout(Some(s(600)), z, s(60)), Some(s(60)));
        assert_eq!(effective_timeout(None, z, s(60)), Some(s(60)));
    }
}
