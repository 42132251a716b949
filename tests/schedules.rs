//! Schedules against real PostgreSQL: firing once per due time (also across a restart),
//! overlap, disable, invalid rows, roles, the SQL helpers, and `schedule next`.

mod common;
use common::*;
use std::time::Duration;

/// A broker whose timer poll is an hour away: schedules must be planned through NOTIFY and
/// fired through the schedule-driven wake-up alone.
fn broker_without_timer(db: &TestDb) -> BrokerProcess {
    let config = db.config("", "  queue_timer_sec: 3600\n");
    BrokerProcess::start_serving(db, &config)
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.value(sql)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{sql}: no count"))
}

fn jobs_of(db: &TestDb, schedule: i64) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM broker_jobs WHERE schedule_id = {schedule}"),
    )
}

/// Each due time made at most one job, and every due time is a whole second.
fn assert_no_duplicate_due_time(db: &TestDb, schedule: i64) {
    let dups = db
        .value(&format!(
            "SELECT string_agg(scheduled_for::text || ' x' || n, ', ') FROM (
               SELECT scheduled_for, count(*) AS n FROM broker_jobs
                WHERE schedule_id = {schedule} GROUP BY 1 HAVING count(*) > 1) d"
        ))
        .unwrap_or_default();
    assert_eq!(dups, "", "due times with more than one job");
    let missing = count(
        db,
        &format!(
            "SELECT count(*) FROM broker_jobs WHERE schedule_id = {schedule}
               AND (scheduled_for IS NULL OR scheduled_for <> date_trunc('second', scheduled_for))"
        ),
    );
    assert_eq!(missing, 0, "jobs without a whole-second due time");
}

/// Waits until the every-second schedule `marker` has a job for a due time at least 2 s after
/// `since` (the database's clock): the scheduler has run since, at a time when every other
/// every-second schedule was due as well.
fn wait_fired_after(db: &TestDb, marker: i64, since: &str) {
    wait_until("the marker schedule to fire", || {
        count(
            db,
            &format!(
                "SELECT count(*) FROM broker_jobs WHERE schedule_id = {marker}
                   AND scheduled_for >= '{since}'::timestamptz + interval '2 seconds'"
            ),
        ) > 0
    });
}

#[test]
fn seconds_schedule_fires_once_per_due_time_across_a_restart() {
    let db = TestDb::new();
    db.install();
    let config = db.config("", "  queue_timer_sec: 3600\n");
    let mut broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_schedule('tick', '* * * * * *', 'SELECT 1', overlap => true)");
    // About one job per second: 4 of them within a generous bound.
    wait_until("4 jobs from the every-second schedule", || {
        jobs_of(&db, id) >= 4
    });
    assert_no_duplicate_due_time(&db, id);

    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "log:\n{}", broker.log());
    let before = jobs_of(&db, id);
    let last_before = db
        .value(&format!(
            "SELECT max(scheduled_for) FROM broker_jobs WHERE schedule_id = {id}"
        ))
        .expect("a due time");
    // Downtime of a few seconds: several due times pass unserved.
    std::thread::sleep(Duration::from_millis(2500));
    let restart = db.value("SELECT now()").expect("now");
    let _broker = BrokerProcess::start_serving(&db, &config);
    wait_until("3 more jobs after the restart", || {
        jobs_of(&db, id) >= before + 3
    });
    assert_no_duplicate_due_time(&db, id);
    // The missed due times collapse into one catch-up job.
    let catch_up = count(
        &db,
        &format!(
            "SELECT count(*) FROM broker_jobs WHERE schedule_id = {id}
               AND scheduled_for > '{last_before}' AND scheduled_for < '{restart}'"
        ),
    );
    assert_eq!(catch_up, 1, "catch-up jobs for the downtime");
    wait_until("the schedule's jobs to complete", || {
        count(
            &db,
            &format!(
                "SELECT count(*) FROM broker_jobs WHERE schedule_id = {id}
                   AND status NOT IN ('completed', 'pending', 'running')"
            ),
        ) == 0
    });
    // Each job was made at or after its due time.
    let early = count(
        &db,
        &format!(
            "SELECT count(*) FROM broker_jobs WHERE schedule_id = {id} AND created_at < scheduled_for"
        ),
    );
    assert_eq!(early, 0, "jobs made before their due time");
}

#[test]
fn overlap_false_skips_while_the_previous_job_runs() {
    let db = TestDb::new();
    db.install();
    // What the previous job of the schedule was when each job was inserted, as the inserting
    // transaction saw it (created_at cannot say: it is that transaction's start, which may
    // come before the previous job's completion commits).
    db.exec(
        "CREATE TABLE made (job bigint, previous text);
         CREATE FUNCTION note_made() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO made SELECT NEW.id,
                    (SELECT p.status FROM broker_jobs p
                      WHERE p.schedule_id = NEW.schedule_id AND p.id < NEW.id
                      ORDER BY p.id DESC LIMIT 1);
             RETURN NULL;
         END $$;
         CREATE TRIGGER note_made AFTER INSERT ON broker_jobs
             FOR EACH ROW EXECUTE FUNCTION note_made()",
    );
    let _broker = broker_without_timer(&db);
    let id = db.add_job("broker_add_schedule('slow', '* * * * * *', 'SELECT pg_sleep(2)')");
    wait_until("a second job", || jobs_of(&db, id) >= 2);
    // Every job was made only after the one before it had finished.
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM made m JOIN broker_jobs j ON j.id = m.job
                  WHERE j.schedule_id = {id} AND m.previous IS NOT NULL"
            )
        ),
        count(
            &db,
            &format!(
                "SELECT count(*) FROM made m JOIN broker_jobs j ON j.id = m.job
                  WHERE j.schedule_id = {id}"
            )
        ) - 1,
        "every job but the first was noted with its predecessor"
    );
    let overlapping = count(
        &db,
        &format!(
            "SELECT count(*) FROM made m JOIN broker_jobs j ON j.id = m.job
              WHERE j.schedule_id = {id} AND m.previous IN ('pending', 'running')"
        ),
    );
    assert_eq!(
        overlapping, 0,
        "a job was enqueued while the previous one ran"
    );
    // The due times in between passed without jobs.
    let gap = count(
        &db,
        &format!(
            "SELECT extract(epoch FROM max(scheduled_for) - min(scheduled_for))::int
               FROM (SELECT scheduled_for FROM broker_jobs WHERE schedule_id = {id}
                      ORDER BY id LIMIT 2) f"
        ),
    );
    assert!(gap >= 2, "second due time only {gap}s after the first");
    assert_no_duplicate_due_time(&db, id);
}

#[test]
fn disable_stops_firing_and_enable_resumes() {
    let db = TestDb::new();
    db.install();
    let _broker = broker_without_timer(&db);
    let id = db.add_job("broker_add_schedule('tick', '* * * * * *', 'SELECT 1', overlap => true)");
    wait_until("2 jobs", || jobs_of(&db, id) >= 2);
    assert_eq!(
        db.value(&format!("SELECT broker_disable_schedule({id})"))
            .as_deref(),
        Some("t")
    );
    // A firing in progress holds the row lock, so the disable waited for it: nothing after.
    let at_disable = jobs_of(&db, id);
    assert_eq!(
        db.value(&format!(
            "SELECT enabled::text || ' ' || (next_run IS NULL)::text FROM broker_schedule WHERE id = {id}"
        ))
        .as_deref(),
        Some("false true")
    );
    // Another every-second schedule fires for due times after the disable; the disabled one
    // would have been due with it.
    let disabled_at = db.value("SELECT now()::text").expect("now");
    let marker =
        db.add_job("broker_add_schedule('marker', '* * * * * *', 'SELECT 1', overlap => true)");
    wait_fired_after(&db, marker, &disabled_at);
    assert_eq!(jobs_of(&db, id), at_disable, "a disabled schedule fired");
    db.value(&format!("SELECT broker_enable_schedule({id})"));
    wait_until("firing again after enable", || {
        jobs_of(&db, id) > at_disable
    });
    assert_no_duplicate_due_time(&db, id);
    // Removing it stops it too; its jobs stay.
    assert_eq!(
        db.value(&format!("SELECT broker_remove_schedule({id})"))
            .as_deref(),
        Some("t")
    );
    assert_eq!(
        db.value(&format!("SELECT broker_remove_schedule({id})"))
            .as_deref(),
        Some("f")
    );
    let kept = count(
        &db,
        "SELECT count(*) FROM broker_jobs WHERE job_name = 'tick' AND schedule_id IS NULL",
    );
    let removed_at = db.value("SELECT now()::text").expect("now");
    wait_fired_after(&db, marker, &removed_at);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM broker_jobs WHERE job_name = 'tick'"
        ),
        kept
    );
}

#[test]
fn invalid_cron_or_zone_disables_the_schedule_with_last_error() {
    let db = TestDb::new();
    db.install();
    let broker = broker_without_timer(&db);
    let bad = db.add_job("broker_add_schedule('bad minute', '61 * * * *', 'SELECT 1')");
    // The database accepts only zones it knows; one the broker does not know gets in this way.
    db.exec(
        "SET session_replication_role = replica;
             INSERT INTO broker_schedule (schedule_name, cron, execute_str, timezone)
             VALUES ('bad zone', '* * * * * *', 'SELECT 1', 'Mars/Olympus');
             SET session_replication_role = origin;
             SELECT pg_notify('broker_jobs', 'schedule')",
    );
    let good =
        db.add_job("broker_add_schedule('good', '* * * * * *', 'SELECT 1', overlap => true)");
    wait_until("both bad schedules disabled", || {
        count(
            &db,
            "SELECT count(*) FROM broker_schedule WHERE NOT enabled AND last_error IS NOT NULL",
        ) == 2
    });
    let error = db
        .value(&format!(
            "SELECT last_error FROM broker_schedule WHERE id = {bad}"
        ))
        .unwrap_or_default();
    assert!(
        error.contains("invalid cron expression") && error.contains("minute field \"61\""),
        "{error}"
    );
    let error = db
        .value("SELECT last_error FROM broker_schedule WHERE schedule_name = 'bad zone'")
        .unwrap_or_default();
    assert!(
        error.contains("unknown time zone \"Mars/Olympus\""),
        "{error}"
    );
    broker.wait_log("\"bad minute\" disabled");
    // The others go on.
    wait_until("the good schedule to fire", || jobs_of(&db, good) >= 2);
    assert_eq!(jobs_of(&db, bad), 0);
    // Fixing and enabling clears the error.
    db.exec(&format!(
        "UPDATE broker_schedule SET cron = '* * * * * *', overlap = true WHERE id = {bad};
         SELECT broker_enable_schedule({bad})"
    ));
    wait_until("the fixed schedule to fire", || jobs_of(&db, bad) >= 1);
    assert_eq!(
        db.value(&format!(
            "SELECT last_error FROM broker_schedule WHERE id = {bad}"
        )),
        None
    );
}

#[test]
fn scheduled_jobs_run_as_the_schedule_role() {
    let db = TestDb::new();
    db.install();
    let role = db.role("sched");
    db.exec(&format!(
        "CREATE TABLE seen (who name, schedule text);
         GRANT INSERT ON seen TO {}",
        quote_ident(&role)
    ));
    let _broker = broker_without_timer(&db);
    let as_role = db.add_job(&format!(
        "broker_add_schedule('as role', '* * * * * *', $$INSERT INTO seen VALUES (current_user, 'as role')$$, run_as => '{role}')"
    ));
    let as_owner = db.add_job(
        "broker_add_schedule('as owner', '* * * * * *', $$INSERT INTO seen VALUES (current_user, 'as owner')$$)",
    );
    wait_until("both schedules' jobs to complete", || {
        count(&db, "SELECT count(DISTINCT schedule) FROM seen") == 2
    });
    assert_eq!(
        db.value("SELECT string_agg(DISTINCT who::text, ',') FROM seen WHERE schedule = 'as role'"),
        Some(role.clone())
    );
    // No run_as: the job runs as the schedule's owner (here the test's login), not as the broker.
    let owner = db
        .value(&format!(
            "SELECT owner FROM broker_schedule WHERE id = {as_owner}"
        ))
        .expect("owner");
    assert_eq!(
        db.value(&format!(
            "SELECT string_agg(DISTINCT run_as::text, ',') FROM broker_jobs WHERE schedule_id = {as_owner}"
        )),
        Some(owner)
    );
    assert_eq!(
        db.value(&format!(
            "SELECT string_agg(DISTINCT run_as::text, ',') FROM broker_jobs WHERE schedule_id = {as_role}"
        )),
        Some(role)
    );
}

#[test]
fn helpers_validate_and_force_the_owner() {
    let db = TestDb::new();
    db.install();
    let id = db.add_job(
        "broker_add_schedule('nightly', '0 3 * * *', 'SELECT 1', 2, 5, 'plpgsql', NULL, 'ops', 'europe/amsterdam')",
    );
    assert_eq!(
        db.value(&format!(
            "SELECT concat_ws(' ', timezone, job_queue, job_priority, job_language, user_login, overlap, enabled, owner = current_user)
               FROM broker_schedule WHERE id = {id}"
        ))
        .as_deref(),
        Some("Europe/Amsterdam 2 5 plpgsql ops f t t")
    );
    let refused = |sql: &str, code: &str, needle: &str| {
        let err = db
            .client()
            .batch_execute(sql)
            .expect_err(&format!("{sql} must be refused"));
        let e = err.as_db_error().expect("server error");
        assert_eq!(e.code().code(), code, "{sql}: {}", e.message());
        assert!(e.message().contains(needle), "{sql}: {}", e.message());
    };
    refused(
        "SELECT broker_add_schedule('x', '* * * * *', 'SELECT 1', timezone => 'Mars/Olympus')",
        "22023",
        "unknown time zone 'Mars/Olympus'",
    );
    refused(
        "SELECT broker_add_schedule('x', '* * * * *', 'print(1)', job_language => 'python')",
        "22023",
        "job_language 'python' is not supported",
    );
    refused(
        "SELECT broker_add_schedule('x', '', 'SELECT 1')",
        "22023",
        "cron of schedule 'x' is empty",
    );
    // A role may not schedule jobs that run as a role it is not a member of.
    let low = db.role("low");
    let other = db.role("other");
    db.exec(&format!("GRANT broker_submitter TO {}", quote_ident(&low)));
    refused(
        &format!(
            "SET ROLE {}; SELECT broker_add_schedule('x', '* * * * *', 'SELECT 1', run_as => '{other}')",
            quote_ident(&low)
        ),
        "42501",
        "may not create a schedule that runs as",
    );
    // Whoever rewrites what a schedule runs becomes its owner; the owner cannot be handed on.
    // (Only an admin can see, and so rewrite, another role's schedule.)
    db.exec(&format!("GRANT broker_admin TO {}", quote_ident(&low)));
    let mut c = db.client();
    c.batch_execute(&format!(
        "SET ROLE {};
         UPDATE broker_schedule SET execute_str = 'SELECT 2' WHERE id = {id}",
        quote_ident(&low)
    ))
    .expect("update as low");
    c.batch_execute(&format!(
        "UPDATE broker_schedule SET owner = 'postgres' WHERE id = {id}"
    ))
    .expect("update owner");
    assert_eq!(
        db.value(&format!(
            "SELECT owner FROM broker_schedule WHERE id = {id}"
        )),
        Some(low.clone())
    );
    // Changing the expression makes the broker plan it afresh.
    db.exec(&format!(
        "UPDATE broker_schedule SET next_run = now() + interval '1 day' WHERE id = {id};
         UPDATE broker_schedule SET cron = '0 4 * * *' WHERE id = {id}"
    ));
    assert_eq!(
        db.value(&format!(
            "SELECT next_run FROM broker_schedule WHERE id = {id}"
        )),
        None
    );
    // The firing step: one job per due time, even if a due time were handed out twice.
    let fire = |due: &str| {
        db.value(&format!(
            "UPDATE broker_schedule SET next_run = '{due}' WHERE id = {id};
             SELECT outcome FROM broker_fire_schedule({id}, '{due}', '{due}'::timestamptz + interval '1 hour')"
        ))
        .unwrap_or_default()
    };
    assert_eq!(fire("2026-01-01 03:00:00+00"), "fired");
    assert_eq!(fire("2026-01-01 03:00:00+00"), "overlap");
    db.exec(&format!(
        "UPDATE broker_schedule SET overlap = true WHERE id = {id}"
    ));
    assert_eq!(fire("2026-01-01 03:00:00+00"), "duplicate");
    assert_eq!(fire("2026-01-01 04:00:00+00"), "fired");
    assert_eq!(
        db.value(&format!(
            "SELECT string_agg(scheduled_for::text || ' ' || run_as, ', ' ORDER BY id)
               FROM broker_jobs WHERE schedule_id = {id}"
        )),
        Some(format!(
            "2026-01-01 03:00:00+00 {low}, 2026-01-01 04:00:00+00 {low}"
        ))
    );
    assert_eq!(
        db.value(&format!(
            "SELECT next_run::text || ' ' || last_run::text FROM broker_schedule WHERE id = {id}"
        ))
        .as_deref(),
        Some("2026-01-01 05:00:00+00 2026-01-01 04:00:00+00")
    );
}

#[test]
fn schedule_next_prints_hand_checked_times() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "0 * * * *",
                "--tz",
                "Europe/Amsterdam",
                "--after",
                "2026-03-29T00:30:00Z",
                "--count",
                "3",
            ],
            "2026-03-29T03:00:00+02:00\n2026-03-29T04:00:00+02:00\n2026-03-29T05:00:00+02:00\n",
        ),
        (
            &[
                "30 2 * * *",
                "--tz",
                "Europe/Amsterdam",
                "--after",
                "2026-10-24 12:00",
                "--count",
                "2",
            ],
            "2026-10-25T02:30:00+02:00\n2026-10-26T02:30:00+01:00\n",
        ),
        (
            &[
                "0 * * * *",
                "--tz",
                "America/New_York",
                "--after",
                "2026-11-01T00:30:00-04:00",
                "--count",
                "3",
            ],
            "2026-11-01T01:00:00-04:00\n2026-11-01T02:00:00-05:00\n2026-11-01T03:00:00-05:00\n",
        ),
        (
            &[
                "0 0 29 2 *",
                "--after",
                "2026-01-01T00:00:00Z",
                "--count",
                "2",
            ],
            "2028-02-29T00:00:00+00:00\n2032-02-29T00:00:00+00:00\n",
        ),
        (
            &["0 0 13 * FRI", "--after", "2026-02-01", "--count", "3"],
            "2026-02-06T00:00:00+00:00\n2026-02-13T00:00:00+00:00\n2026-02-20T00:00:00+00:00\n",
        ),
        (
            &[
                "*/20 * * * * *",
                "--after",
                "2026-05-01T10:00:00Z",
                "--count",
                "2",
            ],
            "2026-05-01T10:00:20+00:00\n2026-05-01T10:00:40+00:00\n",
        ),
        (
            &[
                "@every 1h30m",
                "--after",
                "2026-05-01T10:00:00Z",
                "--count",
                "2",
            ],
            "2026-05-01T11:30:00+00:00\n2026-05-01T13:00:00+00:00\n",
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["schedule", "next"];
        argv.extend_from_slice(args);
        let out = run_cli(&argv);
        assert!(out.status.success(), "{argv:?}: {}", out.stderr);
        assert_eq!(&out.stdout, expected, "{argv:?}");
    }
    // Without --after: five times, each in the future, in order.
    let out = run_cli(&["schedule", "next", "@hourly"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 5, "{}", out.stdout);

    let errors: &[(&[&str], &str)] = &[
        (&["schedule", "next", "61 * * * *"], "minute field \"61\""),
        (&["schedule", "next", "0 0 30 2 *"], "never occurs"),
        (
            &["schedule", "next", "@daily", "--tz", "Mars/Olympus"],
            "--tz: unknown time zone \"Mars/Olympus\"",
        ),
        (
            &[
                "schedule",
                "next",
                "@daily",
                "--tz",
                "Europe/Amsterdam",
                "--after",
                "2026-03-29 02:30",
            ],
            "daylight-saving gap",
        ),
        (&["schedule", "next", "@daily", "--count", "0"], "--count 0"),
        (&["schedule", "next"], "expr"),
    ];
    for (argv, needle) in errors {
        let out = run_cli(argv);
        assert_eq!(out.status.code(), Some(2), "{argv:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{argv:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{argv:?}");
    }
}
