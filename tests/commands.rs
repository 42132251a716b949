//! The operator commands against a real PostgreSQL: `status --json` agrees with the text,
//! `jobs` filters, `add` options land in the row, `cancel` changes it, `schedule
//! add|list|enable|disable|remove` change broker_schedule, and a database without the schema
//! is pointed at `install`. `retry` has tests/retry.rs.

mod common;
use common::*;

use std::collections::BTreeMap;

use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

/// `status` and `status --json` of a database with a running broker, completed, failed,
/// running and waiting jobs (one in a queue no worker serves) carry the same counts and the
/// same instance; the JSON adds the heartbeat's age, the running job's run time, the failure
/// and the oldest ready job's wait. Then `cancel` of the running job makes it cancelled.
#[test]
fn status_json_matches_the_table() {
    let db = TestDb::new();
    let config = db.config("", "  queue_timer_sec: 3600\n");
    let broker = BrokerProcess::start_serving(&db, &config);
    let done = db.cli_add(&["--name", "done", "SELECT 1"]);
    let failed = db.cli_add(&["--name", "boom", "SELECT 1/0"]);
    let stuck = db.cli_add(&["--name", "stuck", "--queue", "2", "SELECT pg_sleep(600)"]);
    let lost = db.add_job("broker_add_job('lost', 'SELECT 1', 5)");
    db.wait_status(done, "completed");
    db.wait_status(failed, "failed");
    wait_until("the stuck job to run", || {
        db.value(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsql-broker job {stuck}'"
        ))
        .as_deref()
            == Some("1")
    });

    let text = db.cli_ok(&["status"]);
    let doc = json(&db.cli_ok(&["status", "--json"]));
    let dbs = doc["databases"].as_array().expect("databases array");
    assert_eq!(dbs.len(), 1, "{doc}");
    let d = &dbs[0];
    assert_eq!(d["name"], db.name.as_str());
    assert_eq!(d["ok"], true);

    // The instance line: "instance ID "NAME" on HOST pid PID: active (heartbeat ...)".
    let instance_line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{}: instance ", db.name)))
        .unwrap_or_else(|| panic!("no instance line:\n{text}"));
    let id: i64 = instance_line
        .split(' ')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("instance id");
    assert_eq!(d["instance"]["id"], id);
    assert_eq!(d["instance"]["pid"], broker.pid());
    assert!(instance_line.contains(&format!("pid {}", broker.pid())));
    assert_eq!(d["instance"]["status"], "active");
    assert_eq!(d["instance"]["stale"], false);
    let age = d["instance"]["heartbeat_age_seconds"]
        .as_f64()
        .expect("age");
    assert!((0.0..HANG.as_secs_f64()).contains(&age), "{age}");

    // Every "queue Q STATUS: N" line is a JSON count, and every count above zero is a line.
    let mut from_text = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&format!("{}: queue ", db.name)) else {
            continue;
        };
        let (key, count) = rest.split_once(": ").expect("queue line");
        let count: i64 = count
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("count");
        from_text.insert(key.to_string(), count);
    }
    let mut from_json = BTreeMap::new();
    for q in d["queues"].as_array().expect("queues") {
        let queue = q["queue"].as_i64().expect("queue");
        for (status, n) in q["counts"].as_object().expect("counts") {
            let n = n.as_i64().expect("count");
            if n > 0 {
                from_json.insert(format!("{queue} {status}"), n);
            }
        }
    }
    assert_eq!(from_text, from_json, "text:\n{text}\njson: {doc}");
    let expected: BTreeMap<String, i64> = [
        ("1 completed", 1),
        ("1 failed", 1),
        ("2 running", 1),
        ("5 pending", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(from_json, expected);

    let queue = |n: i64| {
        d["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["queue"] == n))
            .unwrap_or_else(|| panic!("no queue {n}: {doc}"))
    };
    assert_eq!(queue(1)["served"], true);
    assert_eq!(queue(2)["served"], true);
    assert_eq!(queue(5)["served"], false);
    assert!(
        queue(5)["oldest_pending_seconds"].as_f64().is_some(),
        "{doc}"
    );
    assert!(queue(1)["oldest_pending_seconds"].is_null(), "{doc}");

    let running = d["running"].as_array().expect("running");
    assert_eq!(running.len(), 1, "{doc}");
    assert_eq!(running[0]["id"], stuck);
    assert_eq!(running[0]["queue"], 2);
    let run = running[0]["run_seconds"].as_f64().expect("run time");
    assert!((0.0..HANG.as_secs_f64() * 2.0).contains(&run), "{run}");
    let failures = d["recent_failures"].as_array().expect("failures");
    assert_eq!(failures.len(), 1, "{doc}");
    assert_eq!(failures[0]["id"], failed);
    assert!(
        failures[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("SQLSTATE 22012")),
        "{doc}"
    );
    assert_eq!(db.status(lost), "pending");

    // Cancelling the running job: requested at once, done by the broker.
    let out = db.cli_ok(&["cancel", &stuck.to_string()]);
    assert!(out.contains("cancel requested"), "{out}");
    db.wait_status(stuck, "cancelled");
    assert!(
        db.job_column(stuck, "error_text").contains("while running"),
        "{}",
        db.job_column(stuck, "error_text")
    );
    let doc = json(&db.cli_ok(&["status", "--json"]));
    assert_eq!(doc["databases"][0]["running"], Value::Array(vec![]));
}

/// `cancel` of a pending job makes it cancelled with the reason, at once and without a broker;
/// a job already ended, or none at all, is exit status 1 naming the job.
#[test]
fn cancel_changes_the_row() {
    let db = TestDb::new();
    db.install();
    let id = db.cli_add(&["SELECT 1"]);
    let out = db.cli_ok(&["cancel", &id.to_string()]);
    assert_eq!(out.trim(), format!("job {id} cancelled"));
    assert_eq!(db.status(id), "cancelled");
    assert_eq!(
        db.job_column(id, "error_text"),
        format!("cancelled by {}", user())
    );
    assert_eq!(db.job_column(id, "completed_at IS NOT NULL"), "true");

    let out = db.cli(&["cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("job {id} is already cancelled; nothing to cancel")),
        "{}",
        out.stderr
    );
    let finished = db.cli_add(&["SELECT 1"]);
    db.exec(&format!(
        "UPDATE broker_jobs SET status = 'completed', completed_at = now() WHERE id = {finished}"
    ));
    let out = db.cli(&["cancel", &finished.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("already completed"), "{}", out.stderr);
    assert_eq!(db.status(finished), "completed");

    let out = db.cli(&["cancel", "424242"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("no job 424242 in database {}", db.name)),
        "{}",
        out.stderr
    );
    let out = db.cli(&["cancel", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
}

/// `jobs` lists newest first, filters by state and queue, limits, prints JSON, and refuses a
/// bad filter naming what is allowed.
#[test]
fn jobs_lists_and_filters() {
    let db = TestDb::new();
    db.install();
    let a = db.cli_add(&["--name", "first", "SELECT 1"]);
    let b = db.cli_add(&["--name", "second", "--queue", "2", "SELECT 2"]);
    let c = db.cli_add(&["--name", "third", "--priority", "5", "SELECT 3"]);
    db.cli_ok(&["cancel", &b.to_string()]);

    let ids = |out: &str| -> Vec<i64> {
        out.lines()
            .skip(1)
            .map(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|id| id.parse().ok())
                    .unwrap_or_else(|| panic!("bad row {l:?}"))
            })
            .collect()
    };
    let out = db.cli_ok(&["jobs"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "QUEUE", "STATUS", "PRIO", "ATTEMPTS", "CREATED", "RUN", "NAME", "ERROR"]
    );
    assert_eq!(ids(&out), [c, b, a], "{out}");
    assert!(out.contains("cancelled by"), "{out}");
    assert_eq!(ids(&db.cli_ok(&["jobs", "--status", "cancelled"])), [b]);
    assert_eq!(ids(&db.cli_ok(&["jobs", "--status", "pending"])), [c, a]);
    assert_eq!(ids(&db.cli_ok(&["jobs", "--queue", "2"])), [b]);
    assert_eq!(
        ids(&db.cli_ok(&["jobs", "--queue", "1", "--limit", "1"])),
        [c]
    );
    assert_eq!(
        ids(&db.cli_ok(&["jobs", "--status", "failed"])),
        Vec::<i64>::new()
    );

    let doc = json(&db.cli_ok(&["jobs", "--json", "--status", "pending"]));
    let jobs = doc.as_array().expect("array");
    assert_eq!(jobs.len(), 2, "{doc}");
    assert_eq!(jobs[0]["id"], c);
    assert_eq!(jobs[0]["name"], "third");
    assert_eq!(jobs[0]["priority"], 5);
    assert_eq!(jobs[0]["max_attempts"], 1);
    assert_eq!(jobs[0]["database"], db.name.as_str());
    assert_eq!(jobs[0]["status"], "pending");
    assert_eq!(
        jobs[0]["created_at"].as_str().map(|t| t.ends_with('Z')),
        Some(true)
    );
    assert!(jobs[0]["started_at"].is_null());

    for (args, says) in [
        (
            &["jobs", "--status", "done"][..],
            "--status \"done\": no such job state; use one of pending, running, completed, failed, cancelled",
        ),
        (&["jobs", "--queue", "0"], "--queue 0"),
        (&["jobs", "--limit", "0"], "--limit 0 is out of range"),
        (&["jobs", "--database", "nope"], "--database nope"),
    ] {
        let out = db.cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
}

/// Every option of `add` lands in the row `broker_add_job` makes; bad values are refused
/// before anything is submitted, naming the option.
#[test]
fn add_options_land_in_the_row() {
    let db = TestDb::new();
    db.install();
    let (a, b, c) = (
        db.cli_add(&["SELECT 1"]),
        db.cli_add(&["SELECT 2"]),
        db.cli_add(&["SELECT 3"]),
    );
    let id = db.cli_add(&[
        "--name",
        "full",
        "--queue",
        "2",
        "--priority",
        "7",
        "--run-after",
        "5m",
        "--max-attempts",
        "3",
        "--timeout",
        "1m30s",
        "--non-transactional",
        "--retry-on-crash",
        "--depends-on",
        &a.to_string(),
        "--depends-on",
        &format!("{b},{c}"),
        "VACUUM",
    ]);
    for (expr, expected) in [
        ("job_name", "full"),
        ("job_queue", "2"),
        ("job_priority", "7"),
        ("max_attempts", "3"),
        ("timeout", "00:01:30"),
        ("transactional", "false"),
        ("retry_on_crash", "true"),
        // Counted from the database's now(), in the transaction that made the job.
        ("run_after - created_at", "00:05:00"),
        ("delayed", "true"),
        ("waiting", "3"),
        (
            "ARRAY(SELECT depends_on FROM broker_job_dependencies WHERE job_id = id ORDER BY 1)",
            &format!("{{{a},{b},{c}}}"),
        ),
    ] {
        assert_eq!(db.job_column(id, expr), expected, "{expr}");
    }
    let at = db.cli_add(&["--run-after", "2030-01-02T03:04:05+01:00", "SELECT 1"]);
    assert_eq!(
        db.job_column(at, "run_after = '2030-01-02 02:04:05Z'"),
        "true",
        "{}",
        db.job_column(at, "run_after")
    );
    let plain = db.cli_add(&["SELECT 1"]);
    for (expr, expected) in [
        ("max_attempts", "1"),
        ("timeout", "NULL"),
        ("transactional", "true"),
        ("delayed", "false"),
    ] {
        assert_eq!(db.job_column(plain, expr), expected, "{expr}");
    }

    let count = || db.value("SELECT count(*) FROM broker_jobs");
    let before = count();
    for (args, says) in [
        (&["--run-after", "soon"][..], "--run-after \"soon\""),
        (&["--timeout", "0"], "--timeout 0"),
        (&["--timeout", "fast"], "--timeout: bad duration"),
        (&["--max-attempts", "0"], "--max-attempts 0"),
        (&["--depends-on", "1,x"], "--depends-on \"x\": not a job id"),
        (
            &["--retry-on-crash"],
            "--retry-on-crash applies to --non-transactional",
        ),
        (&["--queue", "3"], "--queue 3"),
    ] {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        all.push("SELECT 1");
        let out = db.cli(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = db.cli(&["add", "--depends-on", "424242", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("SQLSTATE 23503") && out.stderr.contains("424242"),
        "{}",
        out.stderr
    );
    assert_eq!(count(), before);
}

/// `schedule add|list|enable|disable|remove` change broker_schedule as the SQL helpers do; a
/// schedule is named by id or by a name only it has.
#[test]
fn schedule_subcommands_change_broker_schedule() {
    let db = TestDb::new();
    db.install();
    let schedule = |id: i64, expr: &str| {
        db.value(&format!(
            "SELECT ({expr})::text FROM broker_schedule WHERE id = {id}"
        ))
        .unwrap_or_else(|| "NULL".into())
    };
    let out = db.cli_ok(&[
        "schedule",
        "add",
        "nightly",
        "0 3 * * *",
        "SELECT 1",
        "--tz",
        "europe/amsterdam",
        "--queue",
        "2",
        "--priority",
        "4",
        "--overlap",
    ]);
    let id: i64 = out.trim().parse().expect("schedule id");
    for (expr, expected) in [
        ("schedule_name", "nightly"),
        ("cron", "0 3 * * *"),
        ("timezone", "Europe/Amsterdam"),
        ("execute_str", "SELECT 1"),
        ("job_queue", "2"),
        ("job_priority", "4"),
        ("overlap", "true"),
        ("enabled", "true"),
    ] {
        assert_eq!(schedule(id, expr), expected, "{expr}");
    }

    let list = db.cli_ok(&["schedule", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&format!("{id} ")))
        .unwrap_or_else(|| panic!("no row for {id}:\n{list}"));
    assert!(
        row.contains("nightly") && row.contains("0 3 * * *") && row.contains("Europe/Amsterdam"),
        "{row}"
    );
    let doc = json(&db.cli_ok(&["schedule", "list", "--json"]));
    assert_eq!(doc[0]["id"], id);
    assert_eq!(doc[0]["enabled"], true);
    assert_eq!(doc[0]["timezone"], "Europe/Amsterdam");
    assert!(doc[0]["last_error"].is_null());

    let out = db.cli_ok(&["schedule", "disable", "nightly"]);
    assert_eq!(out.trim(), format!("schedule {id} disabled"));
    assert_eq!(schedule(id, "enabled"), "false");
    db.exec(&format!(
        "UPDATE broker_schedule SET last_error = 'bad' WHERE id = {id}"
    ));
    db.cli_ok(&["schedule", "enable", &id.to_string()]);
    assert_eq!(schedule(id, "enabled"), "true");
    assert_eq!(schedule(id, "last_error"), "NULL");

    // A name two schedules share is not enough; an unknown one is an error.
    let out = db.cli_ok(&["schedule", "add", "nightly", "@hourly", "SELECT 2"]);
    let twin: i64 = out.trim().parse().expect("schedule id");
    let out = db.cli(&["schedule", "remove", "nightly"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr
            .contains(&format!("(ids {id}, {twin}); give the id")),
        "{}",
        out.stderr
    );
    let out = db.cli(&["schedule", "disable", "weekly"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains("no schedule named \"weekly\""),
        "{}",
        out.stderr
    );

    let out = db.cli_ok(&["schedule", "remove", &twin.to_string()]);
    assert_eq!(out.trim(), format!("schedule {twin} removed"));
    db.cli_ok(&["schedule", "remove", "nightly"]);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schedule").as_deref(),
        Some("0")
    );
    let out = db.cli(&["schedule", "remove", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stderr.contains(&format!("no schedule {id}")),
        "{}",
        out.stderr
    );

    // An expression or zone the broker could not plan is refused up front.
    for (args, says) in [
        (
            &["bad", "61 * * * *", "SELECT 1"][..],
            "cron expression \"61 * * * *\"",
        ),
        (&["bad", "@daily", "SELECT 1", "--tz", "Mars/Base"], "--tz"),
        (&["bad", "@daily", "SELECT 1", "--queue", "9"], "--queue 9"),
    ] {
        let mut all = vec!["schedule", "add"];
        all.extend_from_slice(args);
        let out = db.cli(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stdout);
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    let out = db.cli(&["schedule", "add", "empty", "@daily", " "]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(out.stderr.contains("SQLSTATE 22023"), "{}", out.stderr);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schedule").as_deref(),
        Some("0")
    );
}

/// On a database without the schema every command says to install it: exit status 1, no raw
/// SQLSTATE 42P01 alone, no panic. `status --json` still prints a document.
#[test]
fn commands_on_an_uninstalled_database_point_at_install() {
    let db = TestDb::new();
    for args in [
        &["jobs"][..],
        &["jobs", "--json"],
        &["cancel", "1"],
        &["retry", "1"],
        &["add", "SELECT 1"],
        &["schedule", "list"],
        &["schedule", "disable", "1"],
    ] {
        let out = db.cli(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("run `pgsql-broker install`"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
    }
    let out = db.cli(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let doc = json(&out.stdout);
    assert_eq!(doc["databases"][0]["ok"], false);
    assert!(
        doc["databases"][0]["problem"]
            .as_str()
            .is_some_and(|p| p.starts_with("not installed")),
        "{doc}"
    );
}
