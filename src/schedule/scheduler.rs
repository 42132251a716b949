//! Schedules: turns due rows of `broker_schedule` into jobs. It runs on the listener's own
//! connection from its poll, so only the active instance fires schedules.
//!
//! Each due time fires exactly once: the schedule row is locked, the job inserted and
//! `next_run` advanced in one transaction (`broker_fire_schedule`). A crash before the commit
//! leaves the due time for the next instance; after it, the due time is gone. `next_run` is
//! always the first fire time after the database's now(), so after downtime a schedule fires
//! once for what it missed, not once per missed slot.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use postgres::Client;

use crate::db::{self, ScheduleRow};
use crate::error::describe;
use crate::schedule::cron::{self, Cron};

/// The notification payload (on channel `broker_jobs`) that asks for a scheduler run now:
/// a schedule was added, changed or enabled.
pub(crate) const NOTIFY_PAYLOAD: &str = "schedule";

/// Schedules handled per run at most; more are due → the caller is told to come back at once.
const MAX_PER_RUN: i64 = 500;

/// What a scheduler run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ran {
    /// How long until the earliest planned fire time (None: nothing planned).
    pub next_in: Option<Duration>,
    /// Jobs enqueued for due times.
    pub fired: u64,
}

/// Plans new schedules and fires due ones. Returns how long until the earliest planned fire
/// time, for the listener to poll again by then, and how many jobs it enqueued.
///
/// Only a broken connection is an error: a statement that fails is logged (and, if the
/// schedule itself is at fault, the schedule disabled) so that one bad row cannot stop the
/// listener.
pub(crate) fn run(database: &str, client: &mut Client) -> Result<Ran, postgres::Error> {
    let mut ran = Ran::default();
    let rows = match db::schedules_to_run(client, MAX_PER_RUN) {
        Ok(rows) => rows,
        Err(e) => return statement_error(database, "reading schedules", e).map(|()| ran),
    };
    let more = rows.len() as i64 >= MAX_PER_RUN;
    for row in &rows {
        match handle(database, client, row) {
            Ok(fired) => ran.fired += u64::from(fired),
            Err(e) => {
                if !db::is_statement_error(&e) {
                    return Err(e);
                }
                if db::is_transient(&e) {
                    log::warn!(
                        "database {database}: schedule {} {:?}: {}; trying again at the next poll",
                        row.id,
                        row.name,
                        describe(&e)
                    );
                    continue;
                }
                // The same would fail at every poll (e.g. run_as no longer allowed): stop, say
                // why.
                let reason = format!("cannot enqueue its job: {}", describe(&e));
                disable(database, client, row, &reason)?;
            }
        }
    }
    if more {
        ran.next_in = Some(Duration::ZERO);
        return Ok(ran);
    }
    match db::next_schedule_wait(client) {
        Ok(wait) => ran.next_in = wait,
        Err(e) => statement_error(database, "reading the next fire time", e)?,
    }
    Ok(ran)
}

/// Plans a schedule that has no `next_run`, or fires a due one; true when it enqueued a job.
fn handle(database: &str, client: &mut Client, row: &ScheduleRow) -> Result<bool, postgres::Error> {
    let Some(due) = row.next_run else {
        let Some((cron, tz)) = parse(database, client, row)? else {
            return Ok(false);
        };
        let anchor = DateTime::<Utc>::from(row.anchor);
        match cron.next_since(anchor, row.now.into(), tz) {
            Ok(next) => db::plan_schedule(client, row.id, SystemTime::from(next))?,
            Err(e) => disable(database, client, row, &e.to_string())?,
        }
        return Ok(false);
    };
    let mut tx = client.transaction()?;
    // Read again under the lock: an operator may have changed or disabled it meanwhile.
    let Some(locked) = db::lock_due_schedule(&mut tx, row.id)? else {
        return Ok(false);
    };
    let due = locked.next_run.unwrap_or(due);
    // The first fire time after now: missed slots collapse into this one firing.
    let planned = parsed(&locked).and_then(|(cron, tz)| {
        let next = cron
            .next_since(due.into(), locked.now.into(), tz)
            .map_err(|e| e.to_string())?;
        Ok((tz, SystemTime::from(next)))
    });
    let (tz, next) = match planned {
        Ok(planned) => planned,
        Err(reason) => {
            log::error!(
                "database {database}: schedule {} {:?} disabled: {reason}",
                locked.id,
                locked.name
            );
            db::disable_schedule(&mut tx, locked.id, &reason)?;
            tx.commit()?;
            return Ok(false);
        }
    };
    let (job, outcome) = db::fire_schedule(&mut tx, locked.id, due, next)?;
    tx.commit()?;
    let due_text = DateTime::<Utc>::from(due).with_timezone(&tz);
    let due_text = cron::format_time(&due_text);
    match (outcome.as_str(), job) {
        ("fired", Some(job)) => log::debug!(
            "database {database}: schedule {} {:?}: job {job} for {due_text}",
            locked.id,
            locked.name
        ),
        ("overlap", _) => log::debug!(
            "database {database}: schedule {} {:?}: skipped {due_text}, its previous job is still pending or running",
            locked.id,
            locked.name
        ),
        ("duplicate", _) => log::warn!(
            "database {database}: schedule {} {:?}: {due_text} already had a job; not enqueued again",
            locked.id,
            locked.name
        ),
        _ => log::debug!(
            "database {database}: schedule {} {:?} changed while firing; left for the next poll",
            locked.id,
            locked.name
        ),
    }
    Ok(outcome == "fired" && job.is_some())
}

/// The expression and zone of a row, or (after disabling the schedule) None.
fn parse(
    database: &str,
    client: &mut Client,
    row: &ScheduleRow,
) -> Result<Option<(Cron, Tz)>, postgres::Error> {
    match parsed(row) {
        Ok(p) => Ok(Some(p)),
        Err(reason) => {
            disable(database, client, row, &reason)?;
            Ok(None)
        }
    }
}

fn parsed(row: &ScheduleRow) -> Result<(Cron, Tz), String> {
    let cron = Cron::parse(&row.cron).map_err(|e| format!("invalid cron expression: {e}"))?;
    let tz = cron::parse_timezone(&row.timezone).map_err(|e| format!("invalid timezone: {e}"))?;
    Ok((cron, tz))
}

/// Disables a schedule with `reason` in last_error and logs it; a failing statement is logged
/// too (the schedule is then looked at again at the next poll).
fn disable(
    database: &str,
    client: &mut Client,
    row: &ScheduleRow,
    reason: &str,
) -> Result<(), postgres::Error> {
    log::error!(
        "database {database}: schedule {} {:?} disabled: {reason}",
        row.id,
        row.name
    );
    match db::disable_schedule(client, row.id, reason) {
        Ok(()) => Ok(()),
        Err(e) => statement_error(database, "disabling a schedule", e),
    }
}

/// Logs a failed statement and carries on; passes a connection error up.
fn statement_error(
    database: &str,
    action: &str,
    e: postgres::Error,
) -> Result<(), postgres::Error> {
    if db::is_statement_error(&e) {
        log::error!(
            "database {database}: scheduler: {action} failed: {}",
            describe(&e)
        );
        Ok(())
    } else {
        Err(e)
    }
}
