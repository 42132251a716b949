//! A worker of one queue: takes the jobs the listener claimed from the queue's channel and runs
//! them on a pooled connection. What it can take without waiting (up to
//! `fetch_query_que_size`) runs in one transaction, each job in its own savepoint, and commits
//! once (group commit): after the last job, after [`MAX_JOBS_PER_TRANSACTION`] jobs or once the
//! transaction has run `batch_max_ms`. A failing job rolls back to its savepoint alone and its
//! failure is recorded at once; the completions are recorded together, in one statement before
//! the COMMIT. Non-transactional jobs run alone, in the session. The statements themselves are
//! [`crate::runtime::execute`]'s.
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

use crate::db::Job;
use crate::db::{self, PooledClient};
use crate::error::describe;
use crate::runtime::deadlines::DEADLINE_GRACE;
use crate::runtime::execute::{self, last_value, Outcome};
use crate::runtime::shared::{Running, Shared};
use crate::runtime::stats::Ended;

/// Non-transactional jobs, alone in the session.
mod alone;
/// A lost connection or a panic mid-batch.
mod loss;

use loss::Lost;

/// Jobs per transaction at most, whatever `fetch_query_que_size` says: PostgreSQL keeps 64
/// subtransaction ids per backend in shared memory; beyond that every other session's snapshot
/// gets slower while the transaction is open.
pub(crate) const MAX_JOBS_PER_TRANSACTION: usize = 64;

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
        log::log!(
            self.shared.stats.job_line_level(log::Level::Info),
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
                    stats.finished(self.queue, Ended::Completed, f.took);
                    log::debug!("database {name}: job {id} completed in {took:.3}s");
                }
                (Outcome::Pending, _) => {
                    log::info!("database {name}: job {id} handed back, pending again")
                }
                (_, "locked") => {
                    log::log!(
                        stats.job_line_level(log::Level::Warn),
                        "database {name}: job {id}: another session holds its row; recovery settles it once that lock is gone"
                    )
                }
                (outcome, status) => {
                    let how = match status {
                        "cancelled" => Ended::Cancelled,
                        "pending" => Ended::Retried,
                        _ => Ended::Failed,
                    };
                    stats.finished(self.queue, how, f.took);
                    let error = match outcome {
                        Outcome::Failed(e) => e.as_str(),
                        _ => "the job changed hands while it ran (recovered or cancelled)",
                    };
                    log::log!(
                        stats.job_line_level(log::Level::Warn),
                        "database {name}: job {id} failed after {took:.3}s (now {status}): {error}"
                    );
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
