//! `status`: per database the active instance and the job counts per queue and state, as text
//! lines (`NAME: ...`), or with `--json` one document with the same facts and more: the
//! heartbeat's age, the oldest ready job's wait per queue, running jobs with their run time and
//! the most recent failures. Both are made from one report, so they always agree.

use serde_json::{json, Map, Value};

use super::args::StatusCmd;
use super::format::{json_secs, json_time, rfc3339};
use super::{describe, schema_missing, selected};
use crate::config::{Config, DatabaseConfig};
use crate::db::{self, install, StatusReport, JOB_STATUSES};
use crate::error::Error;

/// How many failed jobs `status --json` lists, newest first.
const RECENT_FAILURES: i64 = 5;

/// A heartbeat older than this is marked stale (the broker beats every few seconds).
const STALE_SECS: f64 = 30.0;

/// What `status` found in one database.
enum Found {
    Report(Box<StatusReport>),
    /// No schema, or half of one: the line saying so (exit status 1).
    Problem(String),
}

/// Prints the status of the selected databases. A database without the schema (or with an
/// incomplete one) is reported as such, with exit status 1, and the others are still shown.
pub(super) fn run(config: &Config, cmd: &StatusCmd) -> Result<i32, Error> {
    let mut code = 0;
    let mut documents = Vec::new();
    for db in selected(config, cmd.database.as_deref()).map_err(Error::Runtime)? {
        let found = read(config, db)?;
        if matches!(found, Found::Problem(_)) {
            code = 1;
        }
        if cmd.json {
            documents.push(to_json(db, &found));
        } else {
            for line in text(db, &found) {
                println!("{}: {line}", db.name);
            }
        }
    }
    if cmd.json {
        let document = json!({ "databases": documents });
        println!(
            "{}",
            serde_json::to_string_pretty(&document)
                .map_err(|e| Error::Runtime(format!("cannot write JSON: {e}")))?
        );
    }
    Ok(code)
}

fn read(config: &Config, db: &DatabaseConfig) -> Result<Found, Error> {
    let mut client = db::connect(db)?;
    let sql_error = |source| Error::Sql {
        database: db.name.clone(),
        action: "reading status",
        source,
    };
    if install::installed_version(&mut client).map_err(sql_error)? == 0 {
        return Ok(Found::Problem(format!(
            "not installed — run `pgsql-broker install`{}",
            if config.databases.len() > 1 {
                format!(" (or `pgsql-broker install --database {}`)", db.name)
            } else {
                String::new()
            }
        )));
    }
    match db::status_report(&mut client, RECENT_FAILURES) {
        Ok(report) => Ok(Found::Report(Box::new(report))),
        // Tables or functions missing: an incomplete install, not a broker failure.
        Err(e) if schema_missing(&e) => Ok(Found::Problem(format!(
            "schema incomplete ({}) — run `pgsql-broker install`; \
             `pgsql-broker install --verify-only` lists what is missing",
            describe(&e)
        ))),
        Err(e) => Err(sql_error(e)),
    }
}

/// The queue count of `db` as the SQL compares it.
fn queue_count(db: &DatabaseConfig) -> i32 {
    i32::try_from(db.queue_count).unwrap_or(i32::MAX)
}

/// The text lines of one database (each printed after `NAME: `).
fn text(db: &DatabaseConfig, found: &Found) -> Vec<String> {
    let report = match found {
        Found::Report(report) => report,
        Found::Problem(line) => return vec![line.clone()],
    };
    let mut lines = Vec::new();
    match &report.instance {
        Some(i) => lines.push(format!(
            "instance {} {:?} on {} pid {}: {} (heartbeat {}{})",
            i.id,
            i.name,
            i.host,
            i.pid,
            i.status,
            i.heartbeat_text,
            if i.heartbeat_age < STALE_SECS {
                ""
            } else {
                ", stale"
            }
        )),
        None => lines.push("no active instance".into()),
    }
    let queue_count = queue_count(db);
    for c in &report.counts {
        let mut line = format!("queue {} {}: {}", c.queue, c.status, c.count);
        if c.queue > queue_count && c.status == "pending" {
            line.push_str(&format!(
                " (waiting: no worker serves queue {q}, queue_count is {queue_count}; \
                 raise queue_count or move the jobs to queue 1-{queue_count})",
                q = c.queue
            ));
        }
        lines.push(line);
    }
    lines
}

/// The JSON object of one database; see docs-pending/cli-commands.md for its fields.
fn to_json(db: &DatabaseConfig, found: &Found) -> Value {
    let report = match found {
        Found::Report(report) => report,
        Found::Problem(line) => {
            return json!({ "name": db.name, "ok": false, "problem": line });
        }
    };
    let instance = report.instance.as_ref().map_or(Value::Null, |i| {
        json!({
            "id": i.id,
            "name": i.name,
            "host": i.host,
            "pid": i.pid,
            "status": i.status,
            "heartbeat_at": rfc3339(i.heartbeat_at),
            "heartbeat_age_seconds": json_secs(Some(i.heartbeat_age)),
            "stale": i.heartbeat_age >= STALE_SECS,
        })
    });
    // Every served queue, and any other queue that holds jobs, with all five counts.
    let queue_count = queue_count(db);
    let mut queues: Vec<i32> = (1..=queue_count.min(10_000)).collect();
    queues.extend(report.counts.iter().map(|c| c.queue));
    queues.sort_unstable();
    queues.dedup();
    let queues: Vec<Value> = queues
        .iter()
        .map(|&q| {
            let mut counts = Map::new();
            for status in JOB_STATUSES {
                let n = report
                    .counts
                    .iter()
                    .find(|c| c.queue == q && c.status == status)
                    .map_or(0, |c| c.count);
                counts.insert(status.to_string(), n.into());
            }
            let oldest = report
                .oldest_pending
                .iter()
                .find(|(queue, _)| *queue == q)
                .map(|(_, age)| *age);
            json!({
                "queue": q,
                "served": q >= 1 && q <= queue_count,
                "counts": counts,
                "oldest_pending_seconds": json_secs(oldest),
            })
        })
        .collect();
    let running: Vec<Value> = report
        .running
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "queue": j.queue,
                "name": j.name,
                "attempt": j.attempts,
                "max_attempts": j.max_attempts,
                "instance_id": j.instance_id,
                "started_at": json_time(j.started_at),
                "run_seconds": json_secs(j.run_seconds),
            })
        })
        .collect();
    let failures: Vec<Value> = report
        .recent_failures
        .iter()
        .map(|j| {
            json!({
                "id": j.id,
                "queue": j.queue,
                "name": j.name,
                "attempts": j.attempts,
                "completed_at": json_time(j.completed_at),
                "age_seconds": json_secs(j.age_seconds),
                "error": j.error,
            })
        })
        .collect();
    json!({
        "name": db.name,
        "ok": true,
        "instance": instance,
        "queues": queues,
        "running": running,
        "recent_failures": failures,
    })
}
