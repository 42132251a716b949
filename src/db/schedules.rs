//! The SQL of schedules: which are due, planning, firing, disabling.

use std::time::Duration;

use postgres::{Client, GenericClient};

/// A schedule as the scheduler reads it: one to plan (`next_run` NULL) or one that is due.
/// Times are the database's, so every broker host agrees on what is due.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub id: i64,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub next_run: Option<std::time::SystemTime>,
    /// What an `@every` series counts from: the last fire time, else the creation time.
    pub anchor: std::time::SystemTime,
    /// The database's now() when the row was read.
    pub now: std::time::SystemTime,
}

fn schedule_row(r: &postgres::Row) -> ScheduleRow {
    ScheduleRow {
        id: r.get(0),
        name: r.get(1),
        cron: r.get(2),
        timezone: r.get(3),
        next_run: r.get(4),
        anchor: r.get(5),
        now: r.get(6),
    }
}

const SCHEDULE_COLUMNS: &str =
    "id, schedule_name, cron, timezone, next_run, coalesce(last_run, created_at), now()";

/// Enabled schedules that need planning or are due, those to plan first, at most `limit`.
pub fn schedules_to_run(c: &mut Client, limit: i64) -> Result<Vec<ScheduleRow>, postgres::Error> {
    let rows = c.query(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM broker_schedule
              WHERE enabled AND (next_run IS NULL OR next_run <= now())
              ORDER BY next_run NULLS FIRST, id LIMIT $1"
        ),
        &[&limit],
    )?;
    Ok(rows.iter().map(schedule_row).collect())
}

/// Stores the first planned fire time of a schedule, unless it was planned or changed meanwhile.
pub fn plan_schedule(
    c: &mut Client,
    id: i64,
    next_run: std::time::SystemTime,
) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE broker_schedule SET next_run = $2
          WHERE id = (SELECT id FROM broker_schedule
                       WHERE id = $1 AND enabled AND next_run IS NULL FOR UPDATE SKIP LOCKED)",
        &[&id, &next_run],
    )
    .map(drop)
}

/// Locks a due schedule in the caller's transaction; None if it is no longer due or another
/// transaction (an operator's edit) holds it, in which case a later poll looks again.
pub fn lock_due_schedule(
    c: &mut impl GenericClient,
    id: i64,
) -> Result<Option<ScheduleRow>, postgres::Error> {
    let row = c.query_opt(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM broker_schedule
              WHERE id = $1 AND enabled AND next_run <= now()
                FOR UPDATE SKIP LOCKED"
        ),
        &[&id],
    )?;
    Ok(row.as_ref().map(schedule_row))
}

/// Fires the due time `due` of a locked schedule and moves it on to `next`; see
/// `broker_fire_schedule`. Returns the new job's id (if any) and the outcome.
pub fn fire_schedule(
    c: &mut impl GenericClient,
    id: i64,
    due: std::time::SystemTime,
    next: std::time::SystemTime,
) -> Result<(Option<i64>, String), postgres::Error> {
    let row = c.query_one(
        "SELECT job_id, outcome FROM broker_fire_schedule($1, $2, $3)",
        &[&id, &due, &next],
    )?;
    Ok((row.get(0), row.get(1)))
}

/// Switches a schedule off with the reason, for the operator to read in `last_error`.
pub fn disable_schedule(
    c: &mut impl GenericClient,
    id: i64,
    error: &str,
) -> Result<(), postgres::Error> {
    c.execute(
        "UPDATE broker_schedule SET enabled = false, last_error = $2
          WHERE id = (SELECT id FROM broker_schedule WHERE id = $1 FOR UPDATE SKIP LOCKED)",
        &[&id, &error],
    )
    .map(drop)
}

/// How long until the earliest planned fire time (zero if one is already due); None when no
/// enabled schedule is planned.
pub fn next_schedule_wait(c: &mut Client) -> Result<Option<Duration>, postgres::Error> {
    let row = c.query_one(
        "SELECT extract(epoch FROM min(next_run) - now())::float8
           FROM broker_schedule WHERE enabled AND next_run IS NOT NULL",
        &[],
    )?;
    let secs: Option<f64> = row.get(0);
    Ok(secs.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)))
}

/// A schedule to add: the arguments of `broker_add_schedule`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchedule {
    pub name: String,
    pub cron: String,
    pub sql: String,
    pub queue: i32,
    pub priority: i32,
    pub language: String,
    pub run_as: Option<String>,
    pub user_login: Option<String>,
    pub timezone: String,
    pub overlap: bool,
}

/// Adds a schedule through `broker_add_schedule`; returns its id.
pub fn add_schedule(c: &mut Client, s: &NewSchedule) -> Result<i64, postgres::Error> {
    let row = c.query_one(
        "SELECT broker_add_schedule(schedule_name => $1, cron => $2, execute_str => $3, \
         job_queue => $4, job_priority => $5, job_language => $6, run_as => $7::text::name, \
         user_login => $8, timezone => $9, overlap => $10)",
        &[
            &s.name,
            &s.cron,
            &s.sql,
            &s.queue,
            &s.priority,
            &s.language,
            &s.run_as,
            &s.user_login,
            &s.timezone,
            &s.overlap,
        ],
    )?;
    Ok(row.get(0))
}

/// The ids of the schedules called `name` that the caller may see, lowest first.
pub fn schedule_ids_named(c: &mut Client, name: &str) -> Result<Vec<i64>, postgres::Error> {
    let rows = c.query(
        "SELECT id FROM broker_schedule WHERE schedule_name = $1 ORDER BY id",
        &[&name],
    )?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Switches a schedule on (`broker_enable_schedule`: clears last_error, plans from now) or off
/// (`broker_disable_schedule`). False when no such schedule is the caller's.
pub fn set_schedule_enabled(
    c: &mut Client,
    id: i64,
    enabled: bool,
) -> Result<bool, postgres::Error> {
    let sql = if enabled {
        "SELECT broker_enable_schedule($1)"
    } else {
        "SELECT broker_disable_schedule($1)"
    };
    Ok(c.query_one(sql, &[&id])?.get(0))
}

/// Removes a schedule (`broker_remove_schedule`); the jobs it made stay. False when no such
/// schedule is the caller's.
pub fn remove_schedule(c: &mut Client, id: i64) -> Result<bool, postgres::Error> {
    Ok(c.query_one("SELECT broker_remove_schedule($1)", &[&id])?
        .get(0))
}
