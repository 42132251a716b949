//! One active instance per database, kill -9 recovery, graceful shutdown.

mod common;
use common::*;

#[test]
fn second_instance_is_refused_naming_the_first() {
    let db = TestDb::new();
    let config = db.config("", "");
    let first = BrokerProcess::start_serving(&db, &config);
    let mut second = BrokerProcess::start(&config);
    let status = second.wait_exit(HANG);
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(log.contains("another broker instance is active"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "{log}");
    assert!(
        log.contains(&pgsql_broker::test_support::hostname()),
        "{log}"
    );
    // The first one is untouched and still serving.
    let id = db.add_job("broker_add_job('still', 'SELECT 1')");
    db.wait_status(id, "completed");
    assert_eq!(
        db.value("SELECT count(*) FROM broker_queueinstance WHERE status = 'active'")
            .as_deref(),
        Some("1")
    );
}

#[test]
fn restart_right_after_kill_9_is_not_blocked() {
    let db = TestDb::new();
    db.exec("CREATE TABLE t (x int); CREATE SEQUENCE tries");
    let config = db.config("", "");
    let first = BrokerProcess::start_serving(&db, &config);
    // A job in flight when the broker dies: its transaction rolls back, it runs again later.
    // The first try would sleep a minute in a backend the server does not know is orphaned;
    // the successor must terminate it rather than wait (sequences do not roll back).
    let id = db.add_job(
        "broker_add_job('long', 'SELECT pg_sleep(CASE WHEN nextval(''tries'') = 1 THEN 60 ELSE 0 END); INSERT INTO t VALUES (1)')",
    );
    db.wait_status(id, "running");
    // Claimed is not yet started: kill only once the first try has counted itself.
    wait_until("the first try to start", || {
        db.value("SELECT is_called FROM tries").as_deref() == Some("t")
    });
    first.signal("KILL");
    let second = BrokerProcess::start_serving(&db, &config);
    db.wait_status(id, "completed");
    assert_eq!(
        db.value("SELECT count(*) FROM t").as_deref(),
        Some("1"),
        "ran exactly once"
    );
    assert_eq!(
        db.value(&format!("SELECT attempts FROM broker_jobs WHERE id = {id}"))
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        db.value("SELECT last_value FROM tries").as_deref(),
        Some("2"),
        "tried twice, applied once"
    );
    let statuses = db
        .value("SELECT string_agg(status, ',' ORDER BY id) FROM broker_queueinstance")
        .unwrap_or_default();
    assert_eq!(statuses, "dead,active");
    drop(second);
}

#[test]
fn sigterm_lets_a_running_job_finish_and_exits_0() {
    let db = TestDb::new();
    db.exec("CREATE TABLE t (x int)");
    let config = db.config("", "");
    let mut broker = BrokerProcess::start_serving(&db, &config);
    let id =
        db.add_job("broker_add_job('sleeper', 'SELECT pg_sleep(2); INSERT INTO t VALUES (1)')");
    db.wait_status(id, "running");
    broker.signal("TERM");
    // Jobs submitted during the drain are not started.
    let later = db.add_job("broker_add_job('later', 'SELECT 1', 2)");
    let status = broker.wait_exit(HANG);
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert_eq!(db.status(id), "completed");
    assert_eq!(db.value("SELECT count(*) FROM t").as_deref(), Some("1"));
    assert_eq!(db.status(later), "pending");
    assert_eq!(
        db.value("SELECT status FROM broker_queueinstance")
            .as_deref(),
        Some("shutdown")
    );
    assert!(broker.log().contains("shut down"), "{}", broker.log());
}

#[test]
fn shutdown_timeout_cancels_and_hands_the_job_back() {
    let db = TestDb::new();
    db.exec("CREATE TABLE t (x int)");
    let config = db.config("", "  shutdown_timeout_sec: 1\n");
    let mut broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_job('stuck', 'INSERT INTO t VALUES (1); SELECT pg_sleep(60)')");
    db.wait_status(id, "running");
    broker.signal("TERM");
    let status = broker.wait_exit(HANG);
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert_eq!(db.status(id), "pending", "{}", broker.log());
    assert_eq!(
        db.value(&format!("SELECT attempts FROM broker_jobs WHERE id = {id}"))
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        db.value("SELECT count(*) FROM t").as_deref(),
        Some("0"),
        "rolled back"
    );
    // The next broker runs it (quickly, this time, because the table says so).
    db.exec(&format!(
        "UPDATE broker_jobs SET execute_str = 'INSERT INTO t VALUES (2)' WHERE id = {id}"
    ));
    let _next = BrokerProcess::start_serving(&db, &config);
    db.wait_status(id, "completed");
}

#[test]
fn second_signal_exits_at_once() {
    let db = TestDb::new();
    db.exec("CREATE SEQUENCE tries");
    let config = db.config("", "  shutdown_timeout_sec: 600\n");
    let mut broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_job('long', 'SELECT pg_sleep(CASE WHEN nextval(''tries'') = 1 THEN 60 ELSE 0 END)')");
    db.wait_status(id, "running");
    wait_until("the first try to start", || {
        db.value("SELECT is_called FROM tries").as_deref() == Some("t")
    });
    broker.signal("TERM");
    broker.wait_log("draining");
    broker.signal("INT");
    let status = broker.wait_exit(HANG);
    assert_eq!(status.code(), Some(1));
    // The job's backend sleeps on unaware; the next broker ends it and runs the job again.
    let _next = BrokerProcess::start_serving(&db, &config);
    db.wait_status(id, "completed");
}

#[test]
fn jobs_of_an_unknown_queue_are_reported() {
    let db = TestDb::new();
    let config = db.config("", "  queue_timer_sec: 1\n");
    let broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_job('far', 'SELECT 1', 9)");
    broker.wait_log("jobs in queue 9 will not run: queue_count is 2");
    // A whole poll since, and the claims for every queue that follow it, left it alone.
    broker.wait_poll(&db);
    assert_eq!(db.status(id), "pending");
}

#[test]
fn status_shows_the_instance_and_counts() {
    let db = TestDb::new();
    let config = db.config("", "");
    let broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_job('x', 'SELECT 1')");
    db.wait_status(id, "completed");
    let out = run_cli(&["--config", config.to_str().unwrap_or_default(), "status"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("pid {}", broker.pid())),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("queue 1 completed: 1"),
        "{}",
        out.stdout
    );
    let out = run_cli(&[
        "--config",
        config.to_str().unwrap_or_default(),
        "add",
        "--queue",
        "2",
        "--name",
        "cli",
        "SELECT 42",
    ]);
    assert!(out.status.success(), "{}", out.stderr);
    let id: i64 = out.stdout.trim().parse().expect("add prints the id");
    db.wait_status(id, "completed");
}

/// A cancel asked for while the broker drains is not lost when the drain rolls the job back.
#[test]
fn cancel_during_drain_stands() {
    let db = TestDb::new();
    let config = db.config("", "  shutdown_timeout_sec: 3\n");
    let mut broker = BrokerProcess::start_serving(&db, &config);
    let id = db.add_job("broker_add_job('stuck', 'SELECT pg_sleep(60)')");
    wait_until("job statement to run", || {
        db.value(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsql-broker job {id}'"
        ))
        .as_deref()
            == Some("1")
    });
    broker.signal("TERM");
    broker.wait_log("draining");
    assert_eq!(
        db.value(&format!("SELECT broker_cancel_job({id})"))
            .as_deref(),
        Some("running")
    );
    let status = broker.wait_exit(HANG);
    assert_eq!(status.code(), Some(0), "{}", broker.log());
    assert_eq!(db.status(id), "cancelled", "{}", broker.log());
}

/// A worker holding an old claim (its job was recovered and claimed again meanwhile, with the
/// same attempt number) can neither start nor finish the job: claims are unique tokens.
#[test]
fn a_stale_claim_can_neither_start_nor_finish_its_job() {
    let db = TestDb::new();
    db.install();
    let id = db.add_job("broker_add_job('x', 'SELECT 1')");
    let mut c = db.client();
    let instance: i64 = c
        .query_one(
            "SELECT broker_register_instance('test', 'host', 1, 'v')",
            &[],
        )
        .expect("register")
        .get(0);
    let claim = |c: &mut postgres::Client| -> (i64, i32) {
        let row = c
            .query_one("SELECT claim, attempt FROM broker_get(1, $1)", &[&instance])
            .expect("claim");
        (row.get(0), row.get(1))
    };
    let (stale, attempt1) = claim(&mut c);
    // Recovery hands the job back; it is claimed again.
    c.batch_execute(&format!(
        "UPDATE broker_jobs SET status = 'pending', claim = NULL, attempts = attempts - 1 WHERE id = {id}"
    ))
    .expect("hand back");
    let (fresh, attempt2) = claim(&mut c);
    assert_eq!(
        attempt1, attempt2,
        "the attempt number alone cannot tell them apart"
    );
    assert_ne!(stale, fresh);
    let mut tx = c.transaction().expect("tx");
    let err = tx
        .query_one("SELECT broker_run($1, $2)", &[&id, &stale])
        .expect_err("stale claim must not start");
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("55000"),
        "{}",
        explain(&err)
    );
    drop(tx);
    let status: String = c
        .query_one("SELECT broker_set($1, $2, 'completed')", &[&id, &stale])
        .expect("set")
        .get(0);
    assert_eq!(status, "running", "a stale completion changes nothing");
    let mut tx = c.transaction().expect("tx");
    tx.query_one("SELECT broker_run($1, $2)", &[&id, &fresh])
        .expect("the fresh claim starts");
}
