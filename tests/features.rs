//! Dependencies, retries, timeouts, cancel and retention.

mod common;
use common::*;

fn broker(db: &TestDb, broker_yaml: &str) -> BrokerProcess {
    BrokerProcess::start_serving(db, &db.config("", broker_yaml))
}

fn error_text(db: &TestDb, id: i64) -> String {
    db.value(&format!(
        "SELECT error_text FROM broker_jobs WHERE id = {id}"
    ))
    .unwrap_or_default()
}

#[test]
fn chain_runs_in_order() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE ran (seq bigserial, job text)");
    // C is submitted with the highest priority and A with the lowest: only the edges order them.
    let a = db.add_job("broker_add_job('A', $$INSERT INTO ran (job) VALUES ('A')$$, 1, -5)");
    let b = db.add_job(&format!("broker_add_job('B', $$INSERT INTO ran (job) VALUES ('B')$$, 2, 0, depends_on => ARRAY[{a}])"));
    let c = db.add_job(&format!("broker_add_job('C', $$INSERT INTO ran (job) VALUES ('C')$$, 1, 9, depends_on => ARRAY[{b}])"));
    assert_eq!(
        db.value(&format!("SELECT waiting FROM broker_jobs WHERE id = {c}"))
            .as_deref(),
        Some("1")
    );
    let _broker = broker(&db, "  queue_timer_sec: 3600\n");
    db.wait_status(c, "completed");
    assert_eq!(
        db.value("SELECT string_agg(job, ',' ORDER BY seq) FROM ran")
            .as_deref(),
        Some("A,B,C")
    );
}

#[test]
fn failing_dependency_cancels_its_dependents_transitively() {
    let db = TestDb::new();
    db.install();
    let a = db.add_job("broker_add_job('A', 'SELECT 1/0')");
    let b = db.add_job(&format!(
        "broker_add_job('B', 'SELECT 1', depends_on => ARRAY[{a}])"
    ));
    let c = db.add_job(&format!(
        "broker_add_job('C', 'SELECT 1', depends_on => ARRAY[{b}])"
    ));
    let other = db.add_job("broker_add_job('other', 'SELECT 1')");
    let _broker = broker(&db, "");
    db.wait_status(a, "failed");
    db.wait_status(other, "completed");
    assert_eq!(db.status(b), "cancelled");
    assert_eq!(db.status(c), "cancelled");
    assert_eq!(error_text(&db, b), format!("dependency {a} failed"));
    assert_eq!(error_text(&db, c), format!("dependency {b} cancelled"));
    // A job added later on a failed dependency is settled at once, not left pending.
    let d = db.add_job(&format!(
        "broker_add_job('D', 'SELECT 1', depends_on => ARRAY[{a}])"
    ));
    assert_eq!(db.status(d), "cancelled");
}

#[test]
fn diamond_waits_for_both_branches() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE ran (seq bigserial, job text)");
    let ins = |j: &str| format!("$$INSERT INTO ran (job) VALUES ('{j}')$$");
    let top = db.add_job(&format!("broker_add_job('top', {})", ins("top")));
    // The slow branch runs in queue 2 while the fast one finishes in queue 1.
    let slow = db.add_job(&format!(
        "broker_add_job('slow', $$SELECT pg_sleep(1); INSERT INTO ran (job) VALUES ('slow')$$, 2, depends_on => ARRAY[{top}])"
    ));
    let fast = db.add_job(&format!(
        "broker_add_job('fast', {}, 1, depends_on => ARRAY[{top}])",
        ins("fast")
    ));
    let bottom = db.add_job(&format!(
        "broker_add_job('bottom', {}, 1, depends_on => ARRAY[{slow}, {fast}, {top}])",
        ins("bottom")
    ));
    let _broker = broker(&db, "");
    db.wait_status(bottom, "completed");
    assert_eq!(
        db.value("SELECT string_agg(job, ',' ORDER BY seq) FROM ran")
            .as_deref(),
        Some("top,fast,slow,bottom")
    );
}

#[test]
fn unknown_dependency_is_refused() {
    let db = TestDb::new();
    db.install();
    let a = db.add_job("broker_add_job('A', 'SELECT 1')");
    let err = db
        .client()
        .query_one(
            &format!("SELECT broker_add_job('B', 'SELECT 1', depends_on => ARRAY[{a}, 424242])"),
            &[],
        )
        .expect_err("unknown id");
    assert_eq!(err.code().map(|c| c.code()), Some("23503"));
    assert!(explain(&err).contains("424242"), "{}", explain(&err));
    assert_eq!(
        db.value("SELECT count(*) FROM broker_jobs").as_deref(),
        Some("1")
    );
    // An edge towards a newer job (the only way to a cycle) is refused by the table itself.
    let b = db.add_job("broker_add_job('B', 'SELECT 1')");
    let err = db
        .client()
        .batch_execute(&format!(
            "INSERT INTO broker_job_dependencies VALUES ({a}, {b})"
        ))
        .expect_err("backward edge");
    assert_eq!(err.code().map(|c| c.code()), Some("23514"));
}

#[test]
fn retries_with_backoff_then_success() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE SEQUENCE tries");
    let _broker = broker(&db, "  queue_timer_sec: 1\n");
    let id = db.add_job(
        "broker_add_job('flaky', $job$DO $b$ BEGIN IF nextval('tries') < 3 THEN RAISE EXCEPTION 'not yet'; END IF; END $b$$job$, max_attempts => 3)",
    );
    db.wait_status(id, "completed");
    let row = db
        .value(&format!("SELECT attempts || '|' || array_to_string(attempt_errors, ';') FROM broker_jobs WHERE id = {id}"))
        .unwrap_or_default();
    assert_eq!(
        row,
        "3|attempt 1: SQLSTATE P0001: not yet;attempt 2: SQLSTATE P0001: not yet"
    );
    // Out of attempts: failed, with every error kept.
    let id = db.add_job("broker_add_job('hopeless', 'SELECT 1/0', max_attempts => 2)");
    db.wait_status(id, "failed");
    let n = db.value(&format!(
        "SELECT cardinality(attempt_errors) FROM broker_jobs WHERE id = {id}"
    ));
    assert_eq!(n.as_deref(), Some("2"));
}

#[test]
fn backoff_delays_the_retry() {
    let db = TestDb::new();
    db.install();
    let id = db.add_job("broker_add_job('flaky', 'SELECT 1/0', max_attempts => 5)");
    let _broker = broker(&db, "  queue_timer_sec: 3600\n");
    wait_until("first attempt recorded", || {
        db.value(&format!(
            "SELECT cardinality(attempt_errors) FROM broker_jobs WHERE id = {id}"
        ))
        .as_deref()
            == Some("1")
    });
    // The first retry waits 2 s with jitter (1.5 to 2.5 s).
    let delay = db
        .value(&format!(
            "SELECT extract(epoch FROM run_after - started_at) FROM broker_jobs WHERE id = {id}"
        ))
        .and_then(|v| v.parse::<f64>().ok())
        .expect("delay");
    assert!((1.4..=2.6).contains(&delay), "backoff {delay}");
}

#[test]
fn timeout_fails_the_job_with_the_reason() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x int)");
    let _broker = broker(&db, "  default_job_timeout: 1h\n");
    let id = db.add_job("broker_add_job('slow', 'INSERT INTO t VALUES (1); SELECT pg_sleep(30)', timeout => '300 ms')");
    db.wait_status(id, "failed");
    assert_eq!(
        error_text(&db, id),
        "SQLSTATE 57014: canceling statement due to statement timeout"
    );
    assert_eq!(db.value("SELECT count(*) FROM t").as_deref(), Some("0"));
}

#[test]
fn broker_default_timeout_applies() {
    let db = TestDb::new();
    db.install();
    let _broker = broker(&db, "  default_job_timeout: 300ms\n");
    let id = db.add_job("broker_add_job('slow', 'SELECT pg_sleep(30)')");
    db.wait_status(id, "failed");
    assert!(error_text(&db, id).contains("statement timeout"));
    let quick = db.add_job("broker_add_job('quick', 'SELECT 1')");
    db.wait_status(quick, "completed");
}

#[test]
fn cancel_pending_and_running_jobs() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x int)");
    let pending =
        db.add_job("broker_add_job('later', 'SELECT 1', run_after => now() + interval '1 hour')");
    let dependent = db.add_job(&format!(
        "broker_add_job('dep', 'SELECT 1', depends_on => ARRAY[{pending}])"
    ));
    assert_eq!(
        db.value(&format!("SELECT broker_cancel_job({pending})"))
            .as_deref(),
        Some("cancelled")
    );
    assert_eq!(db.status(dependent), "cancelled");

    let _broker = broker(&db, "  queue_timer_sec: 3600\n");
    let running = db.add_job("broker_add_job('long', 'INSERT INTO t VALUES (1); SELECT pg_sleep(60)', max_attempts => 3)");
    db.wait_status(running, "running");
    wait_until("job statement to run", || {
        db.value(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsql-broker job {running}'"))
            .as_deref()
            == Some("1")
    });
    assert_eq!(
        db.value(&format!("SELECT broker_cancel_job({running})"))
            .as_deref(),
        Some("running")
    );
    db.wait_status(running, "cancelled");
    assert!(
        error_text(&db, running).starts_with("cancelled by"),
        "{}",
        error_text(&db, running)
    );
    assert_eq!(
        db.value("SELECT count(*) FROM t").as_deref(),
        Some("0"),
        "rolled back, not retried"
    );
    assert_eq!(
        db.value("SELECT count(*) FROM broker_cancel_requests")
            .as_deref(),
        Some("0")
    );
}

#[test]
fn retention_removes_only_what_it_should() {
    let db = TestDb::new();
    db.install();
    // Eight jobs in every state and age; the broker's retention: completed 1 day, failed 3 days.
    let mk = |name: &str, status: &str, age: &str| {
        let id = db.add_job(&format!(
            "broker_add_job('{name}', 'SELECT 1', 2, run_after => now() + interval '1 day')"
        ));
        db.exec(&format!(
            "UPDATE broker_jobs SET status = '{status}', completed_at = now() - interval '{age}' WHERE id = {id}"
        ));
        (name.to_string(), id)
    };
    let jobs = [
        mk("old-completed", "completed", "2 days"),
        mk("new-completed", "completed", "1 hour"),
        mk("old-failed", "failed", "4 days"),
        mk("mid-failed", "failed", "2 days"),
        mk("old-cancelled", "cancelled", "4 days"),
        mk("old-pending", "pending", "10 days"),
    ];
    let broker = broker(
        &db,
        "  retention_completed: 1d\n  retention_failed: 3d\n  retention_batch_size: 1\n  queue_timer_sec: 1\n",
    );
    wait_until("retention to run", || {
        db.value("SELECT count(*) FROM broker_jobs").as_deref() == Some("3")
    });
    // And no further: a whole poll (retention included) has run since.
    broker.wait_poll(&db);
    let left = db
        .value("SELECT string_agg(job_name, ',' ORDER BY id) FROM broker_jobs")
        .unwrap_or_default();
    assert_eq!(left, "new-completed,mid-failed,old-pending");
    assert_eq!(jobs.len(), 6);
}

#[test]
fn retention_can_be_turned_off() {
    let db = TestDb::new();
    db.install();
    let id =
        db.add_job("broker_add_job('old', 'SELECT 1', 2, run_after => now() + interval '1 day')");
    db.exec(&format!("UPDATE broker_jobs SET status = 'completed', completed_at = now() - interval '400 days' WHERE id = {id}"));
    let broker = broker(
        &db,
        "  retention_completed: 0\n  retention_failed: 0\n  queue_timer_sec: 1\n",
    );
    // A whole poll, retention included, has run since the broker serves.
    broker.wait_poll(&db);
    assert_eq!(db.status(id), "completed");
}

/// Many jobs waiting on dependencies cost the claim nothing: it reads the ready index only.
#[test]
fn claim_ignores_waiting_dependents() {
    let db = TestDb::new();
    db.install();
    let root =
        db.add_job("broker_add_job('root', 'SELECT 1', run_after => now() + interval '1 hour')");
    db.exec(&format!(
        "INSERT INTO broker_jobs (job_name, execute_str) SELECT 'dep', 'SELECT 1' FROM generate_series(1, 20000);
         INSERT INTO broker_job_dependencies SELECT id, {root} FROM broker_jobs WHERE id <> {root};
         INSERT INTO broker_jobs (job_name, execute_str) VALUES ('ready', 'SELECT 1');
         ANALYZE broker_jobs;"
    ));
    assert_eq!(
        db.value("SELECT count(*) FROM broker_jobs WHERE waiting = 1")
            .as_deref(),
        Some("20000")
    );
    let mut c = db.client();
    let full: String = c
        .query(
            "EXPLAIN SELECT c.id FROM broker_jobs c
              WHERE c.job_queue = 1 AND c.status = 'pending' AND c.waiting = 0 AND NOT c.delayed
              ORDER BY c.job_priority DESC, c.id LIMIT 1 FOR NO KEY UPDATE SKIP LOCKED",
            &[],
        )
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        full.contains("Index Scan using broker_jobs_ready"),
        "{full}"
    );
    assert!(!full.contains("Seq Scan"), "{full}");
}

/// A dependent whose dependency's end went unseen (an edge committed late) is settled by the
/// next poll, not left waiting forever.
#[test]
fn missed_dependency_ends_are_settled() {
    let db = TestDb::new();
    db.install();
    let a = db.add_job("broker_add_job('A', 'SELECT 1')");
    let bad = db.add_job("broker_add_job('bad', 'SELECT 1/0')");
    let _broker = broker(&db, "  queue_timer_sec: 1\n");
    db.wait_status(a, "completed");
    db.wait_status(bad, "failed");
    // Edges as if they had committed after the ends (the broker's own bookkeeping bypassed).
    let b = db.add_job("broker_add_job('B', 'SELECT 1', run_after => now() + interval '1 hour')");
    let c = db.add_job("broker_add_job('C', 'SELECT 1', run_after => now() + interval '1 hour')");
    db.exec(&format!(
        "ALTER TABLE broker_job_dependencies DISABLE TRIGGER USER;
         INSERT INTO broker_job_dependencies VALUES ({b}, {a}), ({c}, {bad});
         ALTER TABLE broker_job_dependencies ENABLE TRIGGER USER;
         UPDATE broker_jobs SET waiting = 1, run_after = now() WHERE id IN ({b}, {c});"
    ));
    db.wait_status(b, "completed");
    db.wait_status(c, "cancelled");
    assert_eq!(error_text(&db, c), format!("dependency {bad} failed"));
}

#[test]
fn non_transactional_job_leaving_a_transaction_open_fails() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE t (x int)");
    let _broker = broker(&db, "  queue_timer_sec: 3600\n");
    let id = db.add_job(
        "broker_add_job('open', 'BEGIN; INSERT INTO t VALUES (1)', transactional => false)",
    );
    db.wait_status(id, "failed");
    assert!(
        error_text(&db, id).contains("left a transaction open"),
        "{}",
        error_text(&db, id)
    );
    assert_eq!(db.value("SELECT count(*) FROM t").as_deref(), Some("0"));
}

/// Rows of instances gone longer than the failed-job retention are deleted; recent ones stay.
#[test]
fn retention_removes_old_instance_rows() {
    let db = TestDb::new();
    db.install();
    db.exec(
        "INSERT INTO broker_queueinstance (name, host, pid, version, status, stopped_at)
         VALUES ('old', 'h', 1, 'v', 'dead', now() - interval '10 days'),
                ('old', 'h', 2, 'v', 'shutdown', now() - interval '9 days'),
                ('recent', 'h', 3, 'v', 'shutdown', now() - interval '1 hour')",
    );
    let id = db.add_job("broker_add_job('ran on an old instance', 'SELECT 1', run_after => now() + interval '1 day')");
    db.exec(&format!("UPDATE broker_jobs SET instance_id = (SELECT min(id) FROM broker_queueinstance) WHERE id = {id}"));
    let broker = broker(&db, "  retention_failed: 3d\n  queue_timer_sec: 1\n");
    wait_until("old instance rows to go", || {
        db.value("SELECT count(*) FROM broker_queueinstance WHERE name = 'old'")
            .as_deref()
            == Some("0")
    });
    // A whole poll (retention included) has run since: the recent row is still there.
    broker.wait_poll(&db);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_queueinstance WHERE name = 'recent'")
            .as_deref(),
        Some("1")
    );
    assert_eq!(
        db.value(&format!(
            "SELECT instance_id IS NULL FROM broker_jobs WHERE id = {id}"
        ))
        .as_deref(),
        Some("t")
    );
}
