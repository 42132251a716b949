//! The backstop behind a job's timeout and `broker_cancel_job`: the listener, on its own
//! connection, cancels a job's statement and, when the job's SQL catches that and runs on for
//! [`DEADLINE_GRACE`], ends its backend. The worker then records the job failed (or cancelled)
//! with the reason left in its slot, and carries on with a fresh connection.

use std::time::{Duration, Instant};

use postgres::Client;

use crate::db;
use crate::runtime::shared::Shared;

/// How long a job may outlive its timeout (or a cancel) before the listener ends its backend:
/// long enough for a cancelled statement to unwind, short enough that catching
/// `query_canceled` buys nothing.
pub(crate) const DEADLINE_GRACE: Duration = Duration::from_secs(3);

/// Cancels the statements of running jobs whose cancel was asked for and, when one still runs
/// [`DEADLINE_GRACE`] after that, ends its backend. True while requests are pending.
pub(crate) fn deliver_cancels(
    shared: &Shared,
    client: &mut Client,
) -> Result<bool, postgres::Error> {
    let requested = db::cancel_requested(client)?;
    for id in &requested {
        for mut slot in shared.slots() {
            let Some(pid) = slot.conn.as_ref().map(|(pid, _)| *pid) else {
                continue;
            };
            let Some(job) = slot.job.as_mut().filter(|j| j.id == *id) else {
                continue;
            };
            if job.ended.is_some() {
                continue;
            }
            // The worker cannot move on to another job while this slot is locked, so the
            // signal reaches this job's statement and no other.
            match job.cancel_sent {
                None => {
                    db::signal_backend(client, pid, false)?;
                    job.cancel_sent = Some(Instant::now());
                }
                Some(sent) if sent.elapsed() >= DEADLINE_GRACE => {
                    db::signal_backend(client, pid, true)?;
                    job.ended = Some(format!(
                        "cancelled; the job ignored the cancel for {}s and the broker ended its backend",
                        DEADLINE_GRACE.as_secs()
                    ));
                }
                Some(_) => {}
            }
        }
    }
    Ok(!requested.is_empty())
}

/// Ends the backend of every job that outlived its timeout by [`DEADLINE_GRACE`] (its SQL
/// caught the statement timeout); the worker records it failed and carries on.
pub(crate) fn enforce_deadlines(
    shared: &Shared,
    client: &mut Client,
) -> Result<(), postgres::Error> {
    let now = Instant::now();
    for mut slot in shared.slots() {
        let Some(pid) = slot.conn.as_ref().map(|(pid, _)| *pid) else {
            continue;
        };
        let Some(job) = slot.job.as_mut() else {
            continue;
        };
        if job.ended.is_none() && job.deadline.is_some_and(|d| now >= d) {
            db::signal_backend(client, pid, true)?;
            let why = format!(
                "ran past its timeout by {}s (its SQL caught the cancel); the broker ended its backend",
                DEADLINE_GRACE.as_secs()
            );
            log::warn!("database {}: job {}: {why}", shared.db.name, job.id);
            job.ended = Some(why);
        }
    }
    Ok(())
}
