//! A lost connection or a panic in the middle of a batch: who is to blame decides what happens
//! to each job of the open transaction.

use std::time::Duration;

use super::*;

/// The connection was lost (or the transaction ended under the worker).
pub(super) struct Lost {
    pub(super) error: String,
    /// The job that caused it, with its outcome; None when it was not a job's doing.
    pub(super) blamed: Option<Box<(Job, Outcome, Duration)>>,
    /// The job whose statement was running, when not blamed: it runs again.
    pub(super) interrupted: Option<Job>,
}

impl Worker<'_> {
    /// The connection is gone while `job` ran: who is to blame decides what happens to it.
    pub(super) fn lost(&mut self, job: &Job, e: postgres::Error, took: Duration) -> Lost {
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
    pub(super) fn after_loss(
        &mut self,
        lost: Lost,
        batch: &mut VecDeque<Job>,
        losses: u32,
    ) -> bool {
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

    /// A bug in the broker panicked mid-batch: the connection, in an unknown state, goes (and
    /// with it the open transaction); the job that ran is recorded failed (retried like any
    /// failure while attempts remain, never left running); the others are left to recovery.
    pub(super) fn after_panic(&mut self, batch: VecDeque<Job>) {
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
}
