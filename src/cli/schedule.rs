//! `schedule next` (no database: the fire times of an expression), and the schedules of a
//! database: `schedule add` (`broker_add_schedule`), `list`, `enable`, `disable` and `remove`
//! (`broker_enable_schedule`, `broker_disable_schedule`, `broker_remove_schedule`).

use serde_json::{json, Value};

use super::args::{
    ScheduleAddCmd, ScheduleCommand, ScheduleDisableCmd, ScheduleEnableCmd, ScheduleListCmd,
    ScheduleNextCmd, ScheduleRemoveCmd,
};
use super::format::{excerpt, json_time, short_time, table};
use super::{check_queue, list_each, one_database, refused, selected};
use crate::config::{Config, DatabaseConfig};
use crate::db::{self, NewSchedule, ScheduleInfo};
use crate::error::Error;
use crate::schedule::cron;

/// Most fire times `schedule next --count` prints; more is a typo, not a use.
const MAX_SCHEDULE_COUNT: usize = 10_000;

/// `schedule next`: prints the fire times, or the problem with exit status 2.
pub(super) fn next(cmd: &ScheduleNextCmd) -> i32 {
    match schedule_next(cmd) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("pgsql-broker: {e}");
            2
        }
    }
}

fn schedule_next(cmd: &ScheduleNextCmd) -> Result<Vec<String>, String> {
    if cmd.count == 0 || cmd.count > MAX_SCHEDULE_COUNT {
        return Err(format!(
            "--count {} is out of range 1-{MAX_SCHEDULE_COUNT}",
            cmd.count
        ));
    }
    let cron = cron::Cron::parse(&cmd.expr).map_err(|e| e.to_string())?;
    let tz = cron::parse_timezone(&cmd.tz).map_err(|e| format!("--tz: {e}"))?;
    let after = match &cmd.after {
        Some(text) => cron::parse_instant(text, tz).map_err(|e| format!("--after: {e}"))?,
        None => std::time::SystemTime::now().into(),
    };
    let times = cron
        .upcoming(after, tz, cmd.count)
        .map_err(|e| e.to_string())?;
    Ok(times.iter().map(cron::format_time).collect())
}

/// The schedule `schedule add` makes; the expression and zone are checked here with the
/// broker's own parser, so a schedule the broker could not plan is refused up front.
fn new_schedule(db: &DatabaseConfig, cmd: &ScheduleAddCmd) -> Result<NewSchedule, String> {
    check_queue(db, cmd.queue)?;
    cron::Cron::parse(&cmd.cron).map_err(|e| format!("cron expression {:?}: {e}", cmd.cron))?;
    let tz = cron::parse_timezone(&cmd.tz).map_err(|e| format!("--tz: {e}"))?;
    Ok(NewSchedule {
        name: cmd.name.clone(),
        cron: cmd.cron.clone(),
        sql: cmd.sql.clone(),
        queue: cmd.queue,
        priority: cmd.priority,
        language: cmd.language.clone(),
        run_as: cmd.run_as.clone(),
        user_login: cmd.user_login.clone(),
        timezone: tz.name().to_string(),
        overlap: cmd.overlap,
    })
}

/// The database option of a schedule command.
fn database(cmd: &ScheduleCommand) -> Option<&str> {
    match cmd {
        ScheduleCommand::Next(_) => None,
        ScheduleCommand::Add(ScheduleAddCmd { database, .. })
        | ScheduleCommand::List(ScheduleListCmd { database, .. })
        | ScheduleCommand::Enable(ScheduleEnableCmd { database, .. })
        | ScheduleCommand::Disable(ScheduleDisableCmd { database, .. })
        | ScheduleCommand::Remove(ScheduleRemoveCmd { database, .. }) => database.as_deref(),
    }
}

/// Checks the options of a schedule command before anything connects.
pub(super) fn check(config: &Config, cmd: &ScheduleCommand) -> Result<(), String> {
    match cmd {
        ScheduleCommand::Next(_) => Ok(()),
        ScheduleCommand::List(list) => selected(config, list.database.as_deref()).map(drop),
        ScheduleCommand::Add(add) => {
            new_schedule(one_database(config, add.database.as_deref())?, add).map(drop)
        }
        _ => one_database(config, database(cmd)).map(drop),
    }
}

pub(super) fn run(config: &Config, cmd: &ScheduleCommand) -> Result<i32, Error> {
    match cmd {
        ScheduleCommand::Next(next_cmd) => Ok(next(next_cmd)),
        ScheduleCommand::List(list_cmd) => list(config, list_cmd),
        ScheduleCommand::Add(add_cmd) => add(config, add_cmd),
        ScheduleCommand::Enable(ScheduleEnableCmd { schedule, .. }) => {
            change(config, cmd, schedule, Change::Enable)
        }
        ScheduleCommand::Disable(ScheduleDisableCmd { schedule, .. }) => {
            change(config, cmd, schedule, Change::Disable)
        }
        ScheduleCommand::Remove(ScheduleRemoveCmd { schedule, .. }) => {
            change(config, cmd, schedule, Change::Remove)
        }
    }
}

fn add(config: &Config, cmd: &ScheduleAddCmd) -> Result<i32, Error> {
    let db = one_database(config, cmd.database.as_deref()).map_err(Error::Runtime)?;
    let schedule = new_schedule(db, cmd).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    match db::add_schedule(&mut client, &schedule) {
        Ok(id) => {
            println!("{id}");
            Ok(0)
        }
        Err(e) => refused(db, "schedule refused", "adding the schedule", e),
    }
}

fn list(config: &Config, cmd: &ScheduleListCmd) -> Result<i32, Error> {
    let dbs = selected(config, cmd.database.as_deref()).map_err(Error::Runtime)?;
    list_each(
        &dbs,
        cmd.json,
        "listing schedules",
        db::list_schedules,
        schedule_json,
        schedule_table,
    )
}

fn schedule_table(schedules: &[ScheduleInfo]) -> String {
    let time = |t: Option<std::time::SystemTime>| t.map_or_else(|| "-".into(), short_time);
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|s| {
            vec![
                s.id.to_string(),
                excerpt(&s.name, 30),
                s.cron.clone(),
                s.timezone.clone(),
                if s.enabled { "yes" } else { "no" }.into(),
                time(s.next_run),
                time(s.last_run),
                s.last_error
                    .as_deref()
                    .map_or_else(String::new, |e| excerpt(e, 60)),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "CRON",
            "TIMEZONE",
            "ENABLED",
            "NEXT_RUN",
            "LAST_RUN",
            "LAST_ERROR",
        ],
        &rows,
    )
}

fn schedule_json(db: &DatabaseConfig, s: &ScheduleInfo) -> Value {
    json!({
        "database": db.name,
        "id": s.id,
        "name": s.name,
        "cron": s.cron,
        "timezone": s.timezone,
        "enabled": s.enabled,
        "overlap": s.overlap,
        "queue": s.queue,
        "priority": s.priority,
        "language": s.language,
        "run_as": s.run_as,
        "owner": s.owner,
        "sql": s.sql,
        "next_run": json_time(s.next_run),
        "last_run": json_time(s.last_run),
        "last_error": s.last_error,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Enable,
    Disable,
    Remove,
}

/// Enables, disables or removes the schedule `which` (an id, or a name only one schedule has).
fn change(
    config: &Config,
    cmd: &ScheduleCommand,
    which: &str,
    change: Change,
) -> Result<i32, Error> {
    let db = one_database(config, database(cmd)).map_err(Error::Runtime)?;
    let mut client = db::connect(db)?;
    let id = match which.trim().parse::<i64>() {
        Ok(id) => id,
        Err(_) => match db::schedule_ids_named(&mut client, which) {
            Ok(ids) => match ids.as_slice() {
                [id] => *id,
                [] => {
                    eprintln!(
                        "pgsql-broker: no schedule named {which:?} in database {}",
                        db.name
                    );
                    return Ok(1);
                }
                several => {
                    let ids: Vec<String> = several.iter().map(i64::to_string).collect();
                    eprintln!(
                        "pgsql-broker: {} schedules are named {which:?} in database {} (ids {}); \
                         give the id",
                        ids.len(),
                        db.name,
                        ids.join(", ")
                    );
                    return Ok(1);
                }
            },
            Err(e) => return refused(db, "finding the schedule", "finding the schedule", e),
        },
    };
    let (done, verb) = match change {
        Change::Enable => (db::set_schedule_enabled(&mut client, id, true), "enabled"),
        Change::Disable => (db::set_schedule_enabled(&mut client, id, false), "disabled"),
        Change::Remove => (db::remove_schedule(&mut client, id), "removed"),
    };
    match done {
        Ok(true) => {
            println!("schedule {id} {verb}");
            Ok(0)
        }
        Ok(false) => {
            eprintln!("pgsql-broker: no schedule {id} in database {}", db.name);
            Ok(1)
        }
        Err(e) => refused(
            db,
            &format!("schedule {id} not {verb}"),
            "changing the schedule",
            e,
        ),
    }
}
