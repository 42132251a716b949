//! `pgsql-broker retry ID` and `broker_retry_job`: what a retry changes in the row, that a
//! running broker runs the job again at once, the dependents a failure cancelled, who may
//! retry, and an existing database getting the function from `install`.

mod common;
use common::*;

/// Runs a command that must fail with exit status 1 and returns its standard error.
fn fails(db: &TestDb, args: &[&str]) -> String {
    let out = db.cli(args);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}", out.stdout);
    out.stderr
}

/// Makes job `id` look as if its last allowed attempt failed (as the tables' owner may).
fn fail(db: &TestDb, id: i64) {
    db.exec(&format!(
        "UPDATE broker_jobs
            SET status = 'failed', attempts = max_attempts, claim = 7,
                error_text = 'SQLSTATE 22012: division by zero',
                attempt_errors = attempt_errors
                                 || ('attempt ' || max_attempts || ': SQLSTATE 22012: division by zero'),
                started_at = now(), completed_at = now()
          WHERE id = {id}"
    ));
}

/// A failed job is pending again with exactly one more attempt, unclaimed, its error cleared
/// and its failed attempts' errors kept; a cancelled job keeps the attempts it had left and its
/// run_after; anything else is refused with the SQLSTATE.
#[test]
fn retry_changes_the_row_as_stated() {
    let db = TestDb::new();
    db.install();
    let failed = db.cli_add(&["SELECT 1"]);
    fail(&db, failed);
    db.exec(&format!(
        "INSERT INTO broker_cancel_requests (job_id) VALUES ({failed})"
    ));
    let out = db.cli_ok(&["retry", &failed.to_string()]);
    assert_eq!(
        out.trim(),
        format!("job {failed} is pending again: attempt 2 of at most 2")
    );
    for (expr, expected) in [
        ("status", "pending"),
        ("attempts", "1"),
        ("max_attempts", "2"),
        ("error_text", "NULL"),
        ("claim", "NULL"),
        ("started_at", "NULL"),
        ("completed_at", "NULL"),
        ("delayed", "false"),
        ("waiting", "0"),
        (
            "attempt_errors",
            "{\"attempt 1: SQLSTATE 22012: division by zero\"}",
        ),
        // A cancel left over from the last run would stop the next one.
        (
            "(SELECT count(*) FROM broker_cancel_requests r WHERE r.job_id = id)",
            "0",
        ),
    ] {
        assert_eq!(db.job_column(failed, expr), expected, "{expr}");
    }
    let e = fails(&db, &["retry", &failed.to_string()]);
    assert!(
        e.contains(&format!(
            "cannot retry job {failed}: SQLSTATE 55000: job {failed} is pending; only a failed or cancelled job can be retried"
        )),
        "{e}"
    );

    // Cancelled before it ran: its own retries still stand, and so does its run_after.
    let later = db.cli_add(&["--max-attempts", "3", "--run-after", "1h", "SELECT 1"]);
    db.cli_ok(&["cancel", &later.to_string()]);
    let out = db.cli_ok(&["retry", &later.to_string()]);
    assert!(
        out.starts_with(&format!(
            "job {later} is pending again: attempt 1 of at most 3, due in "
        )),
        "{out}"
    );
    assert_eq!(db.job_column(later, "max_attempts"), "3");
    assert_eq!(db.job_column(later, "delayed"), "true");
    assert_eq!(db.job_column(later, "error_text"), "NULL");

    let done = db.cli_add(&["SELECT 1"]);
    db.exec(&format!(
        "UPDATE broker_jobs SET status = 'completed', attempts = 1, completed_at = now() WHERE id = {done}"
    ));
    let e = fails(&db, &["retry", &done.to_string()]);
    assert!(
        e.contains("SQLSTATE 55000") && e.contains("is completed"),
        "{e}"
    );
    assert_eq!(db.status(done), "completed");
    let e = fails(&db, &["retry", "424242"]);
    assert!(
        e.contains("SQLSTATE 02000: job 424242 does not exist"),
        "{e}"
    );

    // A plain UPDATE back to pending is a retry too, whoever makes it.
    let plain = db.cli_add(&["SELECT 1"]);
    fail(&db, plain);
    db.exec(&format!(
        "UPDATE broker_jobs SET status = 'pending' WHERE id = {plain}"
    ));
    assert_eq!(db.job_column(plain, "max_attempts"), "2");
    assert_eq!(db.job_column(plain, "error_text"), "NULL");
}

/// A job that failed in a running broker runs again as soon as it is retried (the broker
/// polls once an hour here, so only the retry's notification can wake it), and completes.
#[test]
fn a_running_broker_reruns_a_retried_job() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE gate (open boolean); CREATE TABLE ran (n int)");
    let _broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 3600\n"));
    let id = db.cli_add(&[
        "--name",
        "flaky",
        "SELECT 1 / (SELECT count(*)::int FROM gate); INSERT INTO ran VALUES (1)",
    ]);
    db.wait_status(id, "failed");
    assert!(db
        .job_column(id, "error_text")
        .starts_with("SQLSTATE 22012"));
    db.exec("INSERT INTO gate VALUES (true)");
    db.cli_ok(&["retry", &id.to_string()]);
    db.wait_status(id, "completed");
    for (expr, expected) in [
        ("attempts", "2"),
        ("max_attempts", "2"),
        ("error_text", "NULL"),
        ("cardinality(attempt_errors)", "1"),
        (
            "attempt_errors[1] LIKE 'attempt 1: SQLSTATE 22012%'",
            "true",
        ),
    ] {
        assert_eq!(db.job_column(id, expr), expected, "{expr}");
    }
    assert_eq!(db.value("SELECT count(*) FROM ran").as_deref(), Some("1"));
}

/// Dependents cancelled because a job failed come back with it, transitively, and run after
/// it; a dependent an operator cancelled stays cancelled. A dependent cannot be retried while
/// what it depends on is still failed.
#[test]
fn retry_revives_the_dependents_a_failure_cancelled() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE gate (open boolean); CREATE TABLE ran (seq serial, job text)");
    let job = |name: &str, deps: &str| {
        let sql = format!("INSERT INTO ran (job) VALUES ('{name}')");
        if deps.is_empty() {
            db.cli_add(&["--name", name, &sql])
        } else {
            db.cli_add(&["--name", name, "--depends-on", deps, &sql])
        }
    };
    let a = db.cli_add(&[
        "--name",
        "A",
        "SELECT 1 / (SELECT count(*)::int FROM gate); INSERT INTO ran (job) VALUES ('A')",
    ]);
    let b = job("B", &a.to_string());
    let c = job("C", &b.to_string());
    let d = job("D", &a.to_string());
    db.cli_ok(&["cancel", &d.to_string()]);
    let _broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 3600\n"));
    db.wait_status(a, "failed");
    db.wait_status(b, "cancelled");
    db.wait_status(c, "cancelled");
    assert_eq!(
        db.job_column(b, "error_text"),
        format!("dependency {a} failed")
    );

    let e = fails(&db, &["retry", &b.to_string()]);
    assert!(
        e.contains(&format!(
            "SQLSTATE 55000: job {b} depends on job {a}, which is failed; retry job {a} first"
        )),
        "{e}"
    );
    assert_eq!(db.status(b), "cancelled");

    db.exec("INSERT INTO gate VALUES (true)");
    let out = db.cli_ok(&["retry", &a.to_string()]);
    assert!(
        out.contains(&format!(
            "dependents pending again (they were cancelled because it ended): {b}, {c}\n"
        )),
        "{out}"
    );
    assert_eq!(db.status(d), "cancelled");
    db.wait_status(c, "completed");
    assert_eq!(
        db.value("SELECT string_agg(job, ',' ORDER BY seq) FROM ran")
            .as_deref(),
        Some("A,B,C")
    );
    assert_eq!(db.job_column(b, "max_attempts"), "1");
    assert_eq!(db.status(d), "cancelled");
    assert_eq!(
        db.job_column(d, "error_text"),
        format!("cancelled by {}", user())
    );
}

/// Who may cancel a job may retry it: its owner and broker_admin members, through
/// broker_retry_job or a plain UPDATE that changes nothing but the status. Nobody else sees
/// the job, and a job whose owner lost its run_as role is not run again.
#[test]
fn retry_follows_who_may_cancel() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let (admin, carol) = (db.role("admin"), db.role("carol"));
    db.exec(&format!(
        "GRANT broker_admin TO {}; GRANT {} TO {}",
        quote_ident(&admin),
        quote_ident(&carol),
        quote_ident(&bob)
    ));
    let mut b = session(&db, &bob);
    let mut submit = |sql: &str| -> i64 { b.query_one(sql, &[]).expect("add").get(0) };
    let bobs =
        submit("SELECT broker_add_job('bob', 'SELECT 1', run_after => now() + interval '1 hour')");
    let as_carol = submit(&format!(
        "SELECT broker_add_job('carol', 'SELECT 1', run_as => '{carol}', run_after => now() + interval '1 hour')"
    ));
    fail(&db, bobs);
    fail(&db, as_carol);
    let retry = |role: &str, id: i64| {
        session(&db, role)
            .query_one("SELECT status FROM broker_retry_job($1)", &[&id])
            .map(|r| r.get::<_, String>(0))
    };

    let err = retry(&alice, bobs).expect_err("alice may not");
    assert_eq!(code(&err), "02000", "{}", explain(&err));
    let n = session(&db, &alice)
        .execute(
            "UPDATE broker_jobs SET status = 'pending' WHERE id = $1",
            &[&bobs],
        )
        .expect("update");
    assert_eq!(n, 0);
    assert_eq!(db.status(bobs), "failed");

    assert_eq!(retry(&bob, bobs).expect("bob may"), "pending");
    assert_eq!(db.job_column(bobs, "max_attempts"), "2");
    fail(&db, bobs);
    assert_eq!(retry(&admin, bobs).expect("an admin may"), "pending");
    assert_eq!(db.job_column(bobs, "max_attempts"), "3");

    fail(&db, bobs);
    let mut b = session(&db, &bob);
    let err = b
        .execute(
            "UPDATE broker_jobs SET status = 'pending', execute_str = 'SELECT 2' WHERE id = $1",
            &[&bobs],
        )
        .expect_err("a retry changes nothing else");
    assert_eq!(code(&err), "42501", "{}", explain(&err));
    b.execute(
        "UPDATE broker_jobs SET status = 'pending' WHERE id = $1",
        &[&bobs],
    )
    .expect("a plain retry");
    assert_eq!(db.job_column(bobs, "max_attempts"), "4");

    db.exec(&format!(
        "REVOKE {} FROM {}",
        quote_ident(&carol),
        quote_ident(&bob)
    ));
    for role in [&bob, &admin] {
        let err = retry(role, as_carol).expect_err("its owner may no longer run as carol");
        assert_eq!(code(&err), "42501", "{}", explain(&err));
        assert!(
            explain(&err).contains("may no longer use"),
            "{}",
            explain(&err)
        );
    }
    assert_eq!(db.status(as_carol), "failed");
}

/// A database installed by a build without broker_retry_job gets it from `install` (the
/// functions' digest differs); until then `retry` says to install.
#[test]
fn install_brings_retry_to_an_existing_database() {
    let db = TestDb::new();
    db.install();
    let id = db.cli_add(&["SELECT 1"]);
    fail(&db, id);
    db.exec(
        "DROP FUNCTION broker_retry_job(bigint);
         DROP TRIGGER broker_jobs_retry ON broker_jobs;
         DROP FUNCTION broker_jobs_retry();
         UPDATE broker_schema_version SET functions_digest = md5('an older build')",
    );
    let e = fails(&db, &["retry", &id.to_string()]);
    assert!(e.contains("run `pgsql-broker install`"), "{e}");
    let out = db.cli(&["install", "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stdout.contains("missing function broker_retry_job"),
        "{}",
        out.stdout
    );
    let out = db.cli_ok(&["install"]);
    assert!(out.contains("functions updated"), "{out}");
    db.cli_ok(&["install", "--verify-only"]);
    db.cli_ok(&["retry", &id.to_string()]);
    assert_eq!(db.job_column(id, "max_attempts"), "2");
}
