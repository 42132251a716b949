//! Attacks by a submitter who has read the code. Each runs as an ordinary member of
//! broker_submitter (never a superuser), keeps the attack in force, and shows that another
//! role's job still completes promptly and that the broker stays up. Each test names the
//! defence it checks; without that defence it fails.

mod common;
use common::*;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// How soon an innocent job must complete while an attack is in force.
const PROMPT: Duration = Duration::from_secs(5);

/// A real login of `role` (not a superuser that SET ROLEs): pg_stat_activity names it, and
/// ending its session takes a signal the broker's login must be allowed to send.
fn login(db: &TestDb, role: &str) -> Client {
    db.exec(&format!("ALTER ROLE {} LOGIN", quote_ident(role)));
    let mut cfg = postgres::Config::new();
    cfg.host(&host())
        .port(port())
        .user(role)
        .dbname(&db.name)
        .application_name("squatter");
    cfg.connect(NoTls).expect("the role logs in")
}

fn backend_pid(c: &mut Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .expect("backend pid")
        .get(0)
}

/// The broker's job for `sql` as the session's role.
fn add(c: &mut Client, name: &str, sql: &str) -> i64 {
    c.query_one("SELECT broker_add_job($1, $2)", &[&name, &sql])
        .unwrap_or_else(|e| panic!("add job {name}: {}", explain(&e)))
        .get(0)
}

/// The broker process runs and its active instance's heartbeat is recent.
fn assert_alive(db: &TestDb, broker: &BrokerProcess) {
    if let Some(status) = broker.exited() {
        panic!(
            "the broker process is gone ({status}); log:\n{}",
            broker.log()
        );
    }
    let fresh = db.value(
        "SELECT count(*) FILTER (WHERE now() - heartbeat_at < interval '15 seconds') || '/' || count(*)
           FROM broker_queueinstance WHERE status = 'active'",
    );
    assert_eq!(
        fresh.as_deref(),
        Some("1/1"),
        "one active instance with a fresh heartbeat (fresh/active); log:\n{}",
        broker.log()
    );
}

/// Waits (at most `PROMPT` from now) for job `id` to complete; `check` runs at every look
/// (e.g. that nobody waits on the attacker).
fn completes_promptly(
    db: &TestDb,
    broker: &BrokerProcess,
    id: i64,
    mut check: impl FnMut(),
) -> Duration {
    let start = Instant::now();
    let mut c = db.client();
    loop {
        let row = c
            .query_one(
                "SELECT status, coalesce(error_text, '') FROM broker_jobs WHERE id = $1",
                &[&id],
            )
            .expect("job row");
        let (status, error): (String, String) = (row.get(0), row.get(1));
        if status == "completed" {
            return start.elapsed();
        }
        assert!(
            matches!(status.as_str(), "pending" | "running"),
            "job {id} ended {status}: {error}; log:\n{}",
            broker.log()
        );
        assert!(
            start.elapsed() < PROMPT,
            "job {id} of an innocent role is still {status} after {PROMPT:?}; log:\n{}",
            broker.log()
        );
        check();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The defence: the poll's dependency settling (broker_settle_dependencies) and every other
/// broker statement that touches a submitter's row lock it with SKIP LOCKED, never waiting.
/// Without it the listener waits on alice's row lock at every poll (and, with lock_timeout,
/// spends all but a sliver of its time waiting): another backend blocked by alice's backend is
/// what this test looks for at every step, as well as bob's job and the heartbeat.
#[test]
fn row_lock_on_a_dependent_does_not_stall_the_database() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let mut a = session(&db, &alice);
    let job_a: i64 = a
        .query_one(
            "SELECT broker_add_job('A', 'SELECT 1', run_after => now() + interval '1 hour')",
            &[],
        )
        .expect("add A")
        .get(0);
    // B's edge commits after A ended: A's end could not see it, only the poll settles B.
    let mut other = session(&db, &alice);
    other
        .batch_execute("SET statement_timeout = '30s'")
        .expect("timeout");
    let mut tx = a.transaction().expect("begin");
    let job_b: i64 = tx
        .query_one(
            "SELECT broker_add_job('B', 'select 1', depends_on => ARRAY[$1::bigint])",
            &[&job_a],
        )
        .expect("add B")
        .get(0);
    let cancelled: String = other
        .query_one("SELECT broker_cancel_job($1)", &[&job_a])
        .expect("cancel A meanwhile")
        .get(0);
    assert_eq!(cancelled, "cancelled");
    tx.commit().expect("commit B");
    assert_eq!(
        db.value(&format!(
            "SELECT status || ' ' || waiting FROM broker_jobs WHERE id = {job_b}"
        ))
        .as_deref(),
        Some("pending 1"),
        "B waits for a cancelled A: the next poll must settle it"
    );
    // Alice holds her dependent. The broker starts only now, so no poll settles B before the
    // lock is taken; it then polls every second while the lock is held.
    let mut holder = session(&db, &alice);
    let alice_pid = backend_pid(&mut holder);
    let mut lock = holder.transaction().expect("begin");
    lock.query_one(
        "SELECT id FROM broker_jobs WHERE id = $1 FOR UPDATE",
        &[&job_b],
    )
    .expect("alice locks her dependent");
    let broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 1\n"));
    let mut watch = db.client();
    let mut nobody_waits_on_alice = || {
        let waiting: Vec<String> = watch
            .query(
                "SELECT pid || ' ' || coalesce(application_name, '') || ': ' || coalesce(query, '')
                   FROM pg_stat_activity WHERE $1 = ANY (pg_blocking_pids(pid))",
                &[&alice_pid],
            )
            .expect("blocked sessions")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            waiting.is_empty(),
            "sessions wait on alice's row lock: {waiting:?}"
        );
    };
    let mut b = session(&db, &bob);
    let held_since = Instant::now();
    let mut took = Vec::new();
    while held_since.elapsed() < Duration::from_secs(8) {
        let id = add(&mut b, "bob", "SELECT 1");
        took.push(completes_promptly(
            &db,
            &broker,
            id,
            &mut nobody_waits_on_alice,
        ));
        nobody_waits_on_alice();
        assert_alive(&db, &broker);
        std::thread::sleep(Duration::from_millis(250));
    }
    // A listener that waits out its lock_timeout at every poll still finishes each job within
    // 5 s, but runs only one or two in 8 s.
    assert!(
        took.len() >= 5,
        "bob's jobs took {took:?} while the lock was held"
    );
    assert_eq!(db.status(job_b), "pending", "alice still holds B");
    lock.rollback().expect("alice lets go");
    db.wait_status(job_b, "cancelled");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {job_b}"
        ))
        .unwrap_or_default();
    assert!(
        error.contains(&format!("dependency {job_a} cancelled")),
        "{error}"
    );
    assert_alive(&db, &broker);
}

/// The defence: making a role's runner is serialised inside the broker process (and the
/// database's own catalog locks), not by an advisory lock any session can take. A broker that
/// waits for `pg_advisory_lock('pgsql-broker runner <oid>')` never runs the first job of a role
/// whose key alice squats.
#[test]
fn squatting_runner_locks_does_not_block_new_roles() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    // Carol is brand new (no runner yet), and exists before the squat so her key is held.
    let carol = submitter(&db, "carol");
    let mut squat = session(&db, &alice);
    let alice_pid = backend_pid(&mut squat);
    let squatted = squat
        .query(
            "SELECT pg_advisory_lock(hashtextextended('pgsql-broker runner ' || oid, 0)),
                    pg_advisory_lock(hashtextextended('pgsql-broker runner ' || rolname, 0))
               FROM pg_roles",
            &[],
        )
        .expect("alice squats the runner keys")
        .len();
    let held: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1",
            &[&alice_pid],
        )
        .expect("locks")
        .get(0);
    assert!(
        squatted > 0 && held >= squatted as i64,
        "{held} locks held for {squatted} roles"
    );
    let broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 60\n"));
    let mut c = session(&db, &carol);
    let id = add(&mut c, "carol's first", "SELECT 1");
    completes_promptly(&db, &broker, id, || {});
    // Alice's own first job too, while she holds her own key.
    let id = add(&mut squat, "alice's", "SELECT 1");
    completes_promptly(&db, &broker, id, || {});
    assert_alive(&db, &broker);
    squat
        .batch_execute("SELECT 1")
        .expect("alice still holds her locks");
}

/// Alice holds the instance lock before any broker starts.
fn squat_instance_lock(db: &TestDb, alice: &str) -> (Client, i32) {
    let mut squat = login(db, alice);
    let pid = backend_pid(&mut squat);
    squat
        .batch_execute(
            "SELECT pg_advisory_lock(hashtextextended('pgsql-broker instance ' || current_database(), 0))",
        )
        .expect("alice takes the instance lock");
    (squat, pid)
}

/// The defence: registration tells a holder of the instance lock that is no broker instance
/// from a predecessor, names it, and (broker.evict_lock_holders, the default) ends its session.
/// Without it the broker waits for, or gives up on, a lock alice never lets go.
#[test]
fn squatting_the_instance_lock() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let (mut squat, _pid) = squat_instance_lock(&db, &alice);
    let broker = BrokerProcess::start(&db.config("", "  queue_timer_sec: 60\n"));
    broker.wait_log("serving as instance");
    let mut b = session(&db, &bob);
    let id = add(&mut b, "bob", "SELECT 1");
    completes_promptly(&db, &broker, id, || {});
    assert_alive(&db, &broker);
    assert!(
        squat.batch_execute("SELECT 1").is_err(),
        "alice's session was ended"
    );
    let log = broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("no broker instance") && l.contains(alice.as_str())),
        "the log names the squatter {alice}:\n{log}"
    );
}

/// The defence: with eviction off the broker still tells the squatter from another broker and
/// names it (pid and role), and refuses to start rather than waiting for ever.
#[test]
fn squatting_is_named_when_eviction_is_off() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let (mut squat, pid) = squat_instance_lock(&db, &alice);
    let mut broker = BrokerProcess::start(
        &db.config("", "  queue_timer_sec: 60\n  evict_lock_holders: false\n"),
    );
    let status = broker.wait_exit(HANG);
    let log = broker.log();
    assert!(
        !status.success(),
        "the broker refused to start: {status}\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("no broker instance")
            && l.contains(&format!("pid {pid}"))
            && l.contains(alice.as_str())),
        "the log names the squatter (pid {pid}, role {alice}):\n{log}"
    );
    squat
        .batch_execute("SELECT 1")
        .expect("alice's session was left alone");
}

/// The defence: the insert trigger refuses any id the identity sequence did not just hand this
/// session (broker_job_id_assigned), and submitters have no rights on the sequence. Without it
/// alice takes the ids the sequence hands out next, and every other role's insert fails with a
/// unique violation until the sequence has passed them.
#[test]
fn a_submitter_cannot_pick_ids() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let mut a = session(&db, &alice);
    let take_next_five = "INSERT INTO broker_jobs (id, execute_str) OVERRIDING SYSTEM VALUE
        SELECT g, 'select 1'
          FROM generate_series((SELECT coalesce(max(id), 0) FROM broker_jobs) + 1,
                               (SELECT coalesce(max(id), 0) FROM broker_jobs) + 5) g";
    let attempts = [
        take_next_five,
        "INSERT INTO broker_jobs (id, execute_str) OVERRIDING SYSTEM VALUE
         VALUES (-9223372036854775808, 'select 1')",
        // A row with an id of the sequence's first, then one she picks.
        "INSERT INTO broker_jobs (id, execute_str) OVERRIDING SYSTEM VALUE
         VALUES (DEFAULT, 'select 1'),
                (currval(pg_get_serial_sequence('broker_jobs', 'id')) + 1, 'select 1')",
        // The sequence itself: exhausted, or wound back onto ids in use.
        "SELECT setval(pg_get_serial_sequence('broker_jobs', 'id'), 9223372036854775807)",
        "SELECT setval(pg_get_serial_sequence('broker_jobs', 'id'), 1, false)",
        "SELECT nextval(pg_get_serial_sequence('broker_jobs', 'id'))",
    ];
    for sql in attempts {
        let err = a.batch_execute(sql).expect_err(sql);
        assert_eq!(code(&err), "42501", "{sql}: {}", explain(&err));
    }
    // After a plain insert of her own (the session has a currval), the next ids are still not
    // hers to take.
    let own: i64 = a
        .query_one(
            "INSERT INTO broker_jobs (execute_str, run_after) VALUES ('select 1', now() + interval '1 hour') RETURNING id",
            &[],
        )
        .expect("plain insert")
        .get(0);
    let err = a
        .batch_execute(take_next_five)
        .expect_err("the next ids after her own");
    assert_eq!(code(&err), "42501", "{}", explain(&err));
    let mut b = session(&db, &bob);
    let mut last = own;
    for i in 0..5 {
        let id: i64 = b
            .query_one(
                "SELECT broker_add_job('bob', 'SELECT 1', run_after => now() + interval '1 hour')",
                &[],
            )
            .unwrap_or_else(|e| panic!("bob's job {i}: {}", explain(&e)))
            .get(0);
        assert!(id > last, "ids keep increasing: {id} after {last}");
        last = id;
    }
    let again: i64 = a
        .query_one(
            "INSERT INTO broker_jobs (execute_str) VALUES ('select 1') RETURNING id",
            &[],
        )
        .expect("alice's plain insert without an id still works")
        .get(0);
    assert!(again > last);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_jobs WHERE id <= 0 OR owner = 'postgres'")
            .as_deref(),
        Some("0")
    );
}

/// The defence: the listener handles a bounded number of notifications per round, each in
/// constant time and memory (a flag per kind; unknown payloads only counted and summarised
/// at most once a minute). Without it a flood means a log line, a statement or a remembered
/// payload per notification: bob's job waits behind them, the log or the memory grows.
#[test]
fn notification_flood_does_not_delay_real_work() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 60\n"));
    let mut a = session(&db, &alice);
    a.batch_execute("SET synchronous_commit = off")
        .expect("alice's own commits are hers to speed up");
    // Queues nobody serves (queue_count is 2), and payloads that are no queue at all.
    a.batch_execute("SELECT pg_notify('broker_jobs', g::text) FROM generate_series(3, 5002) g")
        .expect("numbers");
    a.batch_execute(
        "SELECT pg_notify('broker_jobs', 'garbage' || g) FROM generate_series(1, 2000) g;
         SELECT pg_notify('broker_jobs', p)
           FROM unnest(ARRAY['0', '-1', '', ' 1', '1 ', '+1', '18446744073709551617',
                             '99999999999999999999999', repeat('9', 7990)]) p",
    )
    .expect("garbage");
    // The same payload twice in one transaction is delivered once: a transaction each.
    a.batch_execute(
        "DO $$
         BEGIN
             FOR i IN 1..5000 LOOP
                 PERFORM pg_notify('broker_jobs', 'cancel');
                 PERFORM pg_notify('broker_jobs', 'schedule');
                 PERFORM pg_notify('broker_jobs', 'delayed');
                 COMMIT;
             END LOOP;
         END
         $$",
    )
    .expect("5000 of each kind");
    let mut b = session(&db, &bob);
    let id = add(&mut b, "bob", "SELECT 1");
    completes_promptly(&db, &broker, id, || {});
    assert_alive(&db, &broker);
    let log = broker.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("notification") || l.contains("will not run"))
        .collect();
    assert!(
        noisy.len() <= 5,
        "{} log lines about the flood, e.g. {:?}",
        noisy.len(),
        &noisy[..noisy.len().min(5)]
    );
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).expect("proc status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    assert!(
        rss_kb < 50 * 1024,
        "the broker uses {rss_kb} kB after the flood"
    );
}

/// The defence: the text logger escapes control characters in every message (a job's error, a
/// schedule's cron), so one event is one line and no message can start a line of its own.
#[test]
fn a_job_cannot_forge_log_lines() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 60\n"));
    let mut a = session(&db, &alice);
    let newline = add(
        &mut a,
        "forge",
        r"DO $$ BEGIN RAISE EXCEPTION E'boom\n2026-01-01T00:00:00Z [INFO] database x: job 1 completed'; END $$",
    );
    let carriage = add(
        &mut a,
        "forge2",
        r"DO $$ BEGIN RAISE EXCEPTION E'bang\r2026-01-01T00:00:00Z [INFO] forged \x1b[2K'; END $$",
    );
    let schedule: i64 = a
        .query_one(
            r"SELECT broker_add_schedule('forge', E'bogus\n2026-01-01T00:00:00Z [INFO] forged cron', 'SELECT 1')",
            &[],
        )
        .expect("a cron the database cannot check")
        .get(0);
    db.wait_status(newline, "failed");
    db.wait_status(carriage, "failed");
    wait_until("the bogus schedule to be disabled", || {
        db.value(&format!(
            "SELECT enabled FROM broker_schedule WHERE id = {schedule}"
        ))
        .as_deref()
            == Some("f")
    });
    broker.wait_log("bang");
    broker.wait_log("disabled");
    let log = broker.log();
    assert!(
        !log.lines().any(|l| l.starts_with("2026-01-01T00:00:00Z")),
        "a job forged a log line:\n{log}"
    );
    assert!(
        !log.contains('\r') && !log.contains('\u{1b}'),
        "raw control characters in the log:\n{log:?}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("boom") && l.contains("\\n2026-01-01")),
        "the forged text is escaped on the job's line:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("bang") && l.contains("\\r2026-01-01")),
        "the carriage return is escaped on the job's line:\n{log}"
    );
    // The job's error itself is kept as raised.
    assert!(db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {newline}"
        ))
        .unwrap_or_default()
        .contains("boom\n2026-01-01"));
    assert_alive(&db, &broker);
}

/// Asserts that `sql` (run by `c`) is refused for its size, naming the setting.
fn refused_for_size(c: &mut Client, sql: &str, limit: &str) {
    let err = c.batch_execute(sql).expect_err(sql);
    let message = explain(&err);
    assert_eq!(code(&err), "54000", "{sql}: {message}");
    assert!(
        message.contains("broker.max_job_size") && message.contains(limit),
        "{sql}: {message}"
    );
}

/// The defence: every way into broker_jobs and broker_schedule (the helpers, a plain INSERT, an
/// UPDATE of a schedule) checks the job text's size in bytes against broker.max_job_size, which
/// the active broker publishes in broker_settings (1 MB before any has). Without it a submitter
/// fills the broker's memory and the table with texts of any size.
#[test]
fn oversized_jobs_are_refused() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let broker = BrokerProcess::start_serving(
        &db,
        &db.config("", "  queue_timer_sec: 60\n  max_job_size: 1000\n"),
    );
    wait_until("the broker to publish max_job_size", || {
        db.value("SELECT value FROM broker_settings WHERE name = 'max_job_size'")
            .as_deref()
            == Some("1000")
    });
    let mut a = session(&db, &alice);
    let big = "'SELECT 1' || repeat(' ', 2000)";
    for sql in [
        format!("SELECT broker_add_job('big', {big})"),
        format!("INSERT INTO broker_jobs (execute_str) VALUES ({big})"),
        format!("SELECT broker_add_schedule('big', '@daily', {big})"),
        // Fewer than 1000 characters, more than 1000 bytes.
        "SELECT broker_add_job('wide', 'SELECT 1 -- ' || repeat('é', 600))".to_string(),
    ] {
        refused_for_size(&mut a, &sql, "1000");
    }
    // A small schedule made big afterwards.
    let small: i64 = a
        .query_one(
            "SELECT broker_add_schedule('small', '@daily', 'SELECT 1')",
            &[],
        )
        .expect("a small schedule")
        .get(0);
    refused_for_size(
        &mut a,
        &format!("UPDATE broker_schedule SET execute_str = {big} WHERE id = {small}"),
        "1000",
    );
    let fits: i64 = a
        .query_one(
            "SELECT broker_add_job('fits', 'SELECT 1' || repeat(' ', 892))",
            &[],
        )
        .expect("a 900-byte job")
        .get(0);
    assert_eq!(
        db.value(&format!(
            "SELECT octet_length(execute_str) FROM broker_jobs WHERE id = {fits}"
        ))
        .as_deref(),
        Some("900")
    );
    completes_promptly(&db, &broker, fits, || {});
    assert_alive(&db, &broker);

    // No broker has published a limit here: 1 MB.
    let fresh = TestDb::new();
    fresh.install();
    assert_eq!(
        fresh.value("SELECT value FROM broker_settings WHERE name = 'max_job_size'"),
        None
    );
    let alice = submitter(&fresh, "alice");
    let mut a = session(&fresh, &alice);
    refused_for_size(
        &mut a,
        "SELECT broker_add_job('huge', 'SELECT 1' || repeat(' ', 2 * 1024 * 1024))",
        "1048576",
    );
    a.query_one(
        "SELECT broker_add_job('under a megabyte', 'SELECT 1' || repeat(' ', 1000000))",
        &[],
    )
    .expect("a job under 1 MB is accepted");
}
