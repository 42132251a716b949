//! What a worker sends to run claimed jobs: the statements, their order, and what comes back.
//!
//! A transactional job is one simple-query message inside the worker's batch transaction:
//!
//! ```text
//! SAVEPOINT pgsql_broker_job;                 -- the job's effects stand or fall alone
//! SELECT <schema>.broker_run(id, claim, true, <timeout ms>);
//!                                             -- clean up after the previous job; lock,
//!                                             -- check the claim, publish the job and its
//!                                             -- statement_timeout (armed afresh for the
//!                                             -- next statement); return the start time
//! SELECT broker_exec.run_<role oid>();        -- the job's SQL, as its role
//! RESET ALL;                                  -- settings the job changed, whatever they were
//! RELEASE SAVEPOINT pgsql_broker_job
//! ```
//!
//! and the batch ends with [`complete`]: `broker_complete` records every job that ran, in one
//! statement, then `COMMIT`. One round trip per job, no SQL text of the job on the wire, and
//! nothing named that a job could redefine: every name (types too) is schema-qualified, the
//! only values are numbers, and `RESET ALL` runs before the broker's next statement (a failed
//! job's settings go with its savepoint). If any statement fails, the server skips the rest;
//! [`failure`] then rolls the job back to its savepoint and records its outcome in the same
//! transaction.

use std::time::Duration;

use crate::db::Job;

/// How an attempt ended, as `broker_set` records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed(String),
    /// Handed back unstarted, or rolled back by shutdown: runs again later, costing no attempt.
    Pending,
}

impl Outcome {
    fn status(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed(_) => "failed",
            Outcome::Pending => "pending",
        }
    }
}

const SAVEPOINT: &str = "pgsql_broker_job";

/// Milliseconds for `statement_timeout`: 0 is none, and no value overflows the setting.
fn timeout_ms(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| (t.as_millis().max(1)).min(i32::MAX as u128) as u64)
}

/// The message that runs a transactional job; `begin` opens the batch transaction first. Its
/// first row is the job's start ([`started`]).
pub fn transactional(
    schema: &str,
    job: &Job,
    role: u32,
    timeout: Option<Duration>,
    begin: bool,
) -> String {
    format!(
        "{begin}SAVEPOINT {SAVEPOINT}; SELECT {schema}.broker_run({id}, {claim}, true, {ms}); \
         SELECT broker_exec.run_{role}(); RESET ALL; RELEASE SAVEPOINT {SAVEPOINT}",
        begin = if begin { "BEGIN; " } else { "" },
        id = job.id,
        claim = job.claim,
        ms = timeout_ms(timeout),
    )
}

/// When a [`transactional`] job began, in the server's clock (seconds since the epoch).
pub fn started(messages: &[postgres::SimpleQueryMessage]) -> Option<f64> {
    messages.iter().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
        _ => None,
    })
}

/// Ends a batch: records the jobs that ran (`(job, started, ran for)`) as completed, then
/// commits. The row returned lists the ids recorded.
pub fn complete(schema: &str, ran: &[(Job, f64, Duration)]) -> String {
    if ran.is_empty() {
        return "COMMIT".into();
    }
    let list = |f: &dyn Fn(&(Job, f64, Duration)) -> String| {
        ran.iter().map(f).collect::<Vec<_>>().join(",")
    };
    format!(
        "SELECT {schema}.broker_complete('{{{ids}}}'::pg_catalog.int8[], \
         '{{{claims}}}'::pg_catalog.int8[], '{{{started}}}'::pg_catalog.float8[], \
         '{{{ran_for}}}'::pg_catalog.float8[]); COMMIT",
        ids = list(&|r| r.0.id.to_string()),
        claims = list(&|r| r.0.claim.to_string()),
        started = list(&|r| r.1.to_string()),
        ran_for = list(&|r| r.2.as_secs_f64().to_string()),
    )
}

/// The ids `broker_complete` returned (a text array).
pub fn completed_ids(messages: &[postgres::SimpleQueryMessage]) -> Vec<i64> {
    last_value(messages)
        .unwrap_or_default()
        .trim_matches(|c| c == '{' || c == '}')
        .split(',')
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// After a failed [`transactional`] message: back to the job's savepoint, then the outcome
/// recorded in the batch transaction. `ran_for` is how long the job ran (its recorded start
/// went with the rollback).
pub fn failure(schema: &str, job: &Job, outcome: &Outcome, ran_for: Duration) -> String {
    format!(
        "ROLLBACK TO SAVEPOINT {SAVEPOINT}; RESET ALL; {record}; RELEASE SAVEPOINT {SAVEPOINT}",
        record = record(schema, job, outcome, Some(ran_for)),
    )
}

/// Undoes a job whose outcome could not be recorded: its row is left to recovery.
pub fn abandon() -> String {
    format!("ROLLBACK TO SAVEPOINT {SAVEPOINT}; RELEASE SAVEPOINT {SAVEPOINT}")
}

/// `SELECT broker_set(...)` for `outcome`, with the error text as a literal no setting can
/// change the meaning of.
pub fn record(schema: &str, job: &Job, outcome: &Outcome, ran_for: Option<Duration>) -> String {
    let error = match outcome {
        Outcome::Failed(e) => literal(e),
        _ => "NULL".into(),
    };
    let ran_for = ran_for.map_or("NULL".into(), |d| format!("{}", d.as_secs_f64()));
    format!(
        "SELECT {schema}.broker_set({id}, {claim}, '{status}', {error}, {ran_for})",
        id = job.id,
        claim = job.claim,
        status = outcome.status(),
    )
}

/// Starts a non-transactional job in the session: its role and timeout set, its SQL returned.
pub fn start_in_session(schema: &str, job: &Job, timeout: Option<Duration>) -> String {
    format!(
        "SELECT {schema}.broker_run({id}, {claim}, false, {ms})",
        id = job.id,
        claim = job.claim,
        ms = timeout_ms(timeout),
    )
}

/// Makes sure the role with oid `role` has its runner.
pub fn prepare_runner(schema: &str, role: u32) -> String {
    format!("SELECT {schema}.broker_prepare_runner({role})")
}

/// A string as a dollar-quoted literal whose tag does not occur in it: its meaning does not
/// depend on `standard_conforming_strings` or any other setting.
pub fn literal(text: &str) -> String {
    let mut tag = String::from("$e$");
    let mut n = 0;
    while text.contains(&tag) {
        n += 1;
        tag = format!("$e{n}$");
    }
    format!("{tag}{text}{tag}")
}

/// The first column of the last row a simple query returned (NULL and no row alike: None).
pub fn last_value(messages: &[postgres::SimpleQueryMessage]) -> Option<String> {
    messages.iter().rev().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
        _ => None,
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            id: 7,
            claim: 9,
            attempt: 1,
            role: Some(10),
            timeout: None,
            transactional: true,
        }
    }

    #[test]
    fn literal_picks_a_tag_the_text_does_not_hold() {
        assert_eq!(literal("boom"), "$e$boom$e$");
        assert_eq!(literal("a $e$ b"), "$e1$a $e$ b$e1$");
        assert_eq!(literal("$e$$e1$"), "$e2$$e$$e1$$e2$");
        assert_eq!(literal("it's \\n"), "$e$it's \\n$e$");
    }

    #[test]
    fn the_job_message_is_qualified_and_carries_no_sql_text() {
        let msg = transactional("\"s\"", &job(), 10, Some(Duration::from_secs(5)), true);
        assert_eq!(
            msg,
            "BEGIN; SAVEPOINT pgsql_broker_job; SELECT \"s\".broker_run(7, 9, true, 5000); \
             SELECT broker_exec.run_10(); RESET ALL; RELEASE SAVEPOINT pgsql_broker_job"
        );
    }

    #[test]
    fn a_batch_ends_with_one_qualified_completion() {
        assert_eq!(complete("\"s\"", &[]), "COMMIT");
        let ran = [(job(), 1.5, Duration::from_millis(250))];
        assert_eq!(
            complete("\"s\"", &ran),
            "SELECT \"s\".broker_complete('{7}'::pg_catalog.int8[], '{9}'::pg_catalog.int8[], \
             '{1.5}'::pg_catalog.float8[], '{0.25}'::pg_catalog.float8[]); COMMIT"
        );
    }

    #[test]
    fn timeouts_are_bounded_and_zero_means_none() {
        assert_eq!(timeout_ms(None), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(10))), 1);
        assert_eq!(
            timeout_ms(Some(Duration::from_secs(u64::MAX / 4))),
            i32::MAX as u64
        );
    }

    #[test]
    fn failures_are_recorded_as_literals() {
        let out = record(
            "\"s\"",
            &job(),
            &Outcome::Failed("SQLSTATE 22012: x'$e$".into()),
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(
            out,
            "SELECT \"s\".broker_set(7, 9, 'failed', $e1$SQLSTATE 22012: x'$e$$e1$, 1.5)"
        );
    }
}
