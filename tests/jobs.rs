//! Running jobs: order, parallel queues, wake-up by NOTIFY, failures, languages, roles.

mod common;
use common::*;
use std::time::Instant;

/// A broker that can only learn of new jobs through NOTIFY (its poll is an hour away).
fn notify_only_broker(db: &TestDb) -> BrokerProcess {
    let config = db.config("", "  queue_timer_sec: 3600\n");
    BrokerProcess::start_serving(db, &config)
}

/// A notify-only broker past its startup poll and the claims after it, for `queue`: a job
/// queued before it started has completed (only that claim could take it). From then on, only
/// a notification makes it claim in `queue` again.
fn idle_notify_only_broker(db: &TestDb, queue: i32) -> BrokerProcess {
    let before = db.add_job(&format!(
        "broker_add_job('before the start', 'SELECT 1', {queue})"
    ));
    let broker = notify_only_broker(db);
    db.wait_status(before, "completed");
    broker
}

#[test]
fn priority_then_age_within_a_queue() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE ran (seq bigserial, job text)");
    // Submitted while no broker runs, so the order is the broker's choice alone.
    let jobs = [
        ("low-1", 0),
        ("high-1", 10),
        ("mid", 5),
        ("high-2", 10),
        ("low-2", 0),
        ("neg", -3),
    ];
    for (name, prio) in jobs {
        db.add_job(&format!(
            "broker_add_job('{name}', $$INSERT INTO ran (job) VALUES ('{name}')$$, 1, {prio})"
        ));
    }
    let _broker = BrokerProcess::start_serving(&db, &db.config("", ""));
    wait_until("all jobs done", || {
        db.value("SELECT count(*) FROM broker_jobs WHERE status <> 'completed'")
            .as_deref()
            == Some("0")
    });
    let order = db
        .value("SELECT string_agg(job, ',' ORDER BY seq) FROM ran")
        .unwrap_or_default();
    assert_eq!(order, "high-1,high-2,mid,low-1,low-2,neg");
}

#[test]
fn two_queues_run_at_the_same_time() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE marks (queue int)");
    // Queue 1's job waits (up to 20 s) for queue 2's job to have committed; queue 2's job
    // checks that queue 1's job is running meanwhile. Serial queues would fail one of them.
    let first = db.add_job(
        "broker_add_job('waits', $job$DO $b$ BEGIN
            FOR i IN 1..200 LOOP
              EXIT WHEN EXISTS (SELECT FROM marks WHERE queue = 2);
              PERFORM pg_sleep(0.1);
            END LOOP;
            IF NOT EXISTS (SELECT FROM marks WHERE queue = 2) THEN RAISE EXCEPTION 'queue 2 never ran'; END IF;
          END $b$$job$, 1)",
    );
    let _broker = BrokerProcess::start_serving(&db, &db.config("", ""));
    wait_until("queue 1 job running", || db.status(first) == "running");
    let second = db.add_job(&format!(
        "broker_add_job('checks', $job$DO $b$ BEGIN
            IF (SELECT status FROM broker_jobs WHERE id = {first}) <> 'running' THEN
              RAISE EXCEPTION 'queue 1 job is not running';
            END IF;
            INSERT INTO marks VALUES (2);
          END $b$$job$, 2)"
    ));
    db.wait_status(second, "completed");
    db.wait_status(first, "completed");
}

#[test]
fn notify_wakes_an_idle_broker() {
    let db = TestDb::new();
    db.install();
    let _broker = idle_notify_only_broker(&db, 1);
    let t = Instant::now();
    let id = db.add_job("broker_add_job('wake', 'SELECT 1')");
    db.wait_status(id, "completed");
    println!("NOTIFY wake-up to completion: {:?}", t.elapsed());
}

#[test]
fn plain_insert_wakes_the_broker() {
    let db = TestDb::new();
    db.install();
    let broker = idle_notify_only_broker(&db, 2);
    let t = Instant::now();
    let id: i64 = db
        .value("INSERT INTO broker_jobs (job_name, execute_str, job_queue) VALUES ('plain', 'SELECT 2', 2) RETURNING id")
        .and_then(|v| v.parse().ok())
        .expect("id");
    db.wait_status(id, "completed");
    println!("plain INSERT wake-up to completion: {:?}", t.elapsed());
    assert!(broker.log().contains(&format!("job {id} completed")));
}

#[test]
fn failing_job_is_recorded_and_the_broker_goes_on() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x int)");
    let broker = notify_only_broker(&db);
    let bad = db.add_job("broker_add_job('bad', 'INSERT INTO t VALUES (1); SELECT 1/0')");
    db.wait_status(bad, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {bad}"
        ))
        .unwrap_or_default();
    assert_eq!(error, "SQLSTATE 22012: division by zero");
    // Its first statement rolled back with it.
    assert_eq!(db.value("SELECT count(*) FROM t").as_deref(), Some("0"));
    let missing = db.add_job("broker_add_job('missing', 'SELECT * FROM no_such_table')");
    db.wait_status(missing, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {missing}"
        ))
        .unwrap_or_default();
    assert!(
        error.starts_with("SQLSTATE 42P01: relation \"no_such_table\" does not exist"),
        "{error}"
    );
    let good =
        db.add_job("broker_add_job('good', 'INSERT INTO t VALUES (2); INSERT INTO t VALUES (3)')");
    db.wait_status(good, "completed");
    assert_eq!(
        db.value("SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
            .as_deref(),
        Some("2,3")
    );
    assert!(broker.log().contains(&format!("job {bad} failed")));
}

#[test]
fn plpgsql_runs_as_a_do_block() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x text)");
    let _broker = notify_only_broker(&db);
    // The body holds a dollar quote of the broker's own kind, to prove the wrapper's tag adapts.
    let id = db.add_job(
        "broker_add_job('pl', $body$DECLARE n int := 2; BEGIN
            INSERT INTO t VALUES ($pgsql_broker$x$pgsql_broker$ || n);
          END$body$, 1, 0, 'plpgsql')",
    );
    db.wait_status(id, "completed");
    assert_eq!(db.value("SELECT x FROM t").as_deref(), Some("x2"));
}

#[test]
fn unknown_language_is_refused() {
    let db = TestDb::new();
    db.install();
    let err = db
        .client()
        .query_one(
            "SELECT broker_add_job('py', 'print(1)', 1, 0, 'python')",
            &[],
        )
        .expect_err("python must be refused");
    let dberr = err.as_db_error().expect("server error");
    assert_eq!(dberr.code().code(), "22023");
    assert!(
        dberr
            .message()
            .contains("job_language 'python' is not supported"),
        "{}",
        dberr.message()
    );
    let err = db
        .client()
        .batch_execute("INSERT INTO broker_jobs (execute_str, job_language) VALUES ('x', 'perl')")
        .expect_err("perl by plain INSERT must be refused");
    assert_eq!(err.code().map(|c| c.code()), Some("22023"));
    assert_eq!(
        db.value("SELECT count(*) FROM broker_jobs").as_deref(),
        Some("0")
    );
}

#[test]
fn job_sees_its_role_user_login_and_application_name() {
    let db = TestDb::new();
    db.install();
    let role = db.role("runner");
    db.exec(&format!(
        "CREATE TABLE seen (who name, login text, app text, job text);
         GRANT INSERT ON seen TO {role}"
    ));
    let _broker = notify_only_broker(&db);
    let record = "INSERT INTO seen SELECT current_user, current_setting(''broker.user_login''), current_setting(''application_name''), current_setting(''broker.job_id'')";
    let id = db.add_job(&format!(
        "broker_add_job('as role', '{record}', 1, 0, 'sql', '{role}', 'alice@example.com')"
    ));
    db.wait_status(id, "completed");
    let row = db
        .value("SELECT who || '|' || login || '|' || app || '|' || job FROM seen")
        .unwrap_or_default();
    assert_eq!(
        row,
        format!("{role}|alice@example.com|pgsql-broker job {id}|{id}")
    );
    // Without run_as the job runs as its submitter.
    let id2 = db.add_job(&format!("broker_add_job('as owner', '{record}')"));
    db.wait_status(id2, "completed");
    let who = db.value(&format!(
        "SELECT who || '|' || login FROM seen WHERE job = '{id2}'"
    ));
    assert_eq!(who, Some(format!("{}|", user())));
}

#[test]
fn job_that_cannot_switch_role_fails_clearly() {
    let db = TestDb::new();
    db.install();
    let role = format!("{}_gone", db.name);
    db.exec(&format!("CREATE ROLE {role}"));
    let id = db.add_job(&format!(
        "broker_add_job('x', 'SELECT 1', 1, 0, 'sql', '{role}')"
    ));
    db.exec(&format!("DROP ROLE {role}"));
    let _broker = notify_only_broker(&db);
    db.wait_status(id, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {id}"
        ))
        .unwrap_or_default();
    assert!(error.contains(&role), "{error}");
}

#[test]
fn session_state_does_not_leak_between_jobs() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE seen (path text)");
    let _broker = notify_only_broker(&db);
    let a = db.add_job("broker_add_job('sets', 'SET search_path = pg_catalog, public; CREATE TEMP TABLE tmp (x int)')");
    db.wait_status(a, "completed");
    let b = db.add_job("broker_add_job('reads', 'INSERT INTO seen SELECT current_setting(''search_path'') || (to_regclass(''tmp'') IS NULL)::text')");
    db.wait_status(b, "completed");
    assert_eq!(
        db.value("SELECT path FROM seen").as_deref(),
        Some("\"$user\", publictrue")
    );
}

#[test]
fn non_transactional_job_runs_outside_a_transaction_block() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x int)");
    let _broker = notify_only_broker(&db);
    let id = db.add_job("broker_add_job('vacuum', 'VACUUM t', transactional => false)");
    db.wait_status(id, "completed");
    // In a transaction it fails, with the reason.
    let id = db.add_job("broker_add_job('vacuum in tx', 'VACUUM t')");
    db.wait_status(id, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {id}"
        ))
        .unwrap_or_default();
    assert!(error.contains("25001"), "{error}");
}

/// With `workers_per_queue: 2` two jobs of one queue run at the same time: each waits (up to
/// 20 s) for the other to have been claimed. One worker would run them one after the other and
/// the first would give up.
#[test]
fn more_workers_per_queue_run_a_queue_in_parallel() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE started (job text)");
    let waits_for = |me: &str, other: &str| {
        format!(
            "broker_add_job('{me}', $job$DO $b$ BEGIN
                FOR i IN 1..200 LOOP
                  EXIT WHEN EXISTS (SELECT FROM broker_jobs WHERE job_name = '{other}' AND status <> 'pending');
                  PERFORM pg_sleep(0.1);
                END LOOP;
                IF NOT EXISTS (SELECT FROM broker_jobs WHERE job_name = '{other}' AND status <> 'pending') THEN
                  RAISE EXCEPTION '{other} never ran alongside';
                END IF;
              END $b$$job$, 1)"
        )
    };
    let a = db.add_job(&waits_for("a", "b"));
    let b = db.add_job(&waits_for("b", "a"));
    let config = db.config("", "  workers_per_queue: 2\n");
    let _broker = BrokerProcess::start_serving(&db, &config);
    db.wait_status(a, "completed");
    db.wait_status(b, "completed");
}
