//! Non-transactional jobs: each runs alone in the session, outside a transaction block, and
//! its outcome is recorded in a transaction of its own.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use super::*;

impl Worker<'_> {
    /// Runs a job outside a transaction block, alone in the session (VACUUM, procedures that
    /// COMMIT). At most once: if the broker dies meanwhile, recovery fails it rather than
    /// running it again.
    pub(super) fn run_alone(&mut self, job: &Job) -> Result<(), Lost> {
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

    /// Records an outcome in its own transaction (non-transactional jobs, jobs that never
    /// started).
    pub(super) fn record_alone(&mut self, job: &Job, outcome: Outcome, took: Duration) {
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
