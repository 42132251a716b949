//! The path a job takes from claim to commit: isolation between the jobs that share a worker's
//! connection and transaction, hard deadlines, the claim, group commit and crash safety.

mod common;
use common::*;
use postgres::Client;

fn add_as(c: &mut Client, name: &str, sql: &str) -> i64 {
    c.query_one("SELECT broker_add_job($1, $2)", &[&name, &sql])
        .unwrap_or_else(|e| panic!("add {name}: {}", explain(&e)))
        .get(0)
}

/// One worker on one queue, a batch window long enough that jobs queued together share a
/// transaction, and a poll an hour away.
fn one_worker(db: &TestDb) -> std::path::PathBuf {
    db.config(
        "",
        "  queue_timer_sec: 3600\n  batch_max_ms: 2000\n  workers_per_queue: 1\n",
    )
}

/// Alice's job runs `attack`, then Bob's job records what it sees with `probe` (one text
/// value), both queued before the broker starts so that they share the worker's connection
/// and transaction. Returns what Bob saw; asserts that both completed on one backend in one
/// transaction (the case the invariant is about).
fn after_alice(attack: &str, probe: &str, setup: &str) -> String {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    db.exec(&format!(
        "CREATE TABLE seen (job text, backend int, xid bigint, value text);
         GRANT INSERT ON seen TO {a}, {b};
         {setup}",
        a = quote_ident(&alice),
        b = quote_ident(&bob),
    ));
    let a = add_as(
        &mut session(&db, &alice),
        "attack",
        &format!(
            "{attack}; INSERT INTO public.seen SELECT 'alice', pg_catalog.pg_backend_pid(), pg_catalog.txid_current(), NULL"
        ),
    );
    let b = add_as(
        &mut session(&db, &bob),
        "probe",
        &format!(
            "INSERT INTO public.seen SELECT 'bob', pg_catalog.pg_backend_pid(), pg_catalog.txid_current(), ({probe})::text"
        ),
    );
    let _broker = BrokerProcess::start_serving(&db, &one_worker(&db));
    db.wait_status(a, "completed");
    db.wait_status(b, "completed");
    let shared = db
        .value("SELECT count(DISTINCT (backend, xid)) FROM seen")
        .unwrap_or_default();
    assert_eq!(
        shared,
        "1",
        "both jobs should share a backend and a transaction: {:?}",
        db.value("SELECT string_agg(concat_ws(' ', job, backend, xid, value), '; ') FROM seen")
    );
    db.value("SELECT value FROM seen WHERE job = 'bob'")
        .unwrap_or_default()
}

#[test]
fn a_leaked_search_path_cannot_hijack_the_broker() {
    // The reproduction from the issue: a schema the submitter owns, a shadow of the broker's
    // function, and a job that leaves its schema first in the session's search_path.
    let db = TestDb::new();
    db.install();
    let (mallory, bob) = (submitter(&db, "mallory"), submitter(&db, "bob"));
    let m = quote_ident(&mallory);
    db.exec(&format!(
        "CREATE SCHEMA sec_evil AUTHORIZATION {m};
         GRANT USAGE ON SCHEMA sec_evil TO PUBLIC;
         CREATE TABLE sec_evil.loot (cur text, sess text);
         ALTER TABLE sec_evil.loot OWNER TO {m};
         GRANT INSERT ON sec_evil.loot TO PUBLIC;
         CREATE TABLE public.bob_out (v text);
         GRANT INSERT ON public.bob_out TO {b};",
        b = quote_ident(&bob)
    ));
    let mut c = session(&db, &mallory);
    c.batch_execute(
        "CREATE FUNCTION sec_evil.broker_set(bigint, bigint, text, text, float8) RETURNS text
         LANGUAGE plpgsql AS $f$ BEGIN
           INSERT INTO sec_evil.loot SELECT current_user, session_user;
           RETURN public.broker_set($1, $2, $3, $4, $5); END $f$;
         CREATE FUNCTION sec_evil.broker_set(bigint, bigint, text) RETURNS text
         LANGUAGE plpgsql AS $f$ BEGIN
           INSERT INTO sec_evil.loot SELECT current_user, session_user;
           RETURN public.broker_set($1, $2, $3); END $f$;
         CREATE FUNCTION sec_evil.broker_run(bigint, bigint) RETURNS text
         LANGUAGE plpgsql AS $f$ BEGIN
           INSERT INTO sec_evil.loot SELECT current_user, session_user;
           RETURN public.broker_run($1, $2); END $f$;
         -- A shadow of a pg_catalog function, for paths that put sec_evil first.
         CREATE FUNCTION sec_evil.format(text, VARIADIC text[]) RETURNS text
         LANGUAGE plpgsql AS $f$ BEGIN
           INSERT INTO sec_evil.loot SELECT current_user, session_user;
           RETURN 'x'; END $f$;
         CREATE FUNCTION sec_evil.pg_backend_pid() RETURNS int
         LANGUAGE plpgsql AS $f$ BEGIN
           INSERT INTO sec_evil.loot SELECT current_user, session_user;
           RETURN 0; END $f$;",
    )
    .expect("mallory's shadows");
    let attacks = [
        "SET search_path = sec_evil, public",
        "SELECT set_config('search_path', 'sec_evil, pg_catalog, public', false)",
        "SET search_path = sec_evil, pg_catalog, public",
    ];
    let mut ids = Vec::new();
    for attack in attacks {
        ids.push(add_as(&mut c, "hijack", attack));
        ids.push(add_as(
            &mut session(&db, &bob),
            "victim",
            "INSERT INTO public.bob_out VALUES (current_setting('search_path'))",
        ));
    }
    let _broker = BrokerProcess::start_serving(&db, &one_worker(&db));
    for id in &ids {
        db.wait_status(*id, "completed");
    }
    assert_eq!(
        db.value("SELECT count(*) FROM sec_evil.loot").as_deref(),
        Some("0"),
        "a shadow ran: {:?}",
        db.value("SELECT string_agg(cur || '/' || sess, ', ') FROM sec_evil.loot")
    );
    // Bob's jobs ran with the normal path, not Mallory's.
    assert_eq!(
        db.value("SELECT string_agg(DISTINCT v, '|') FROM public.bob_out")
            .as_deref(),
        Some("\"$user\", public")
    );
}

#[test]
fn settings_do_not_leak_to_the_next_job() {
    let seen = after_alice(
        "SET search_path = pg_catalog; SET standard_conforming_strings = off; \
         SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Pacific/Chatham'; \
         SET statement_timeout = 1; SET lock_timeout = 1; SET work_mem = '64kB'; \
         SELECT set_config('alice.secret', 'leaked', false); \
         SELECT set_config('application_name', 'alice was here', false)",
        "concat_ws('|', current_setting('search_path'), current_setting('standard_conforming_strings'), \
         current_setting('DateStyle'), current_setting('TimeZone') = 'Pacific/Chatham', \
         current_setting('statement_timeout'), current_setting('lock_timeout'), \
         current_setting('work_mem') = '64kB', coalesce(current_setting('alice.secret', true), ''))",
        "",
    );
    let fields: Vec<&str> = seen.split('|').collect();
    assert_eq!(fields[0], "\"$user\", public", "{seen}");
    assert_eq!(fields[1], "on", "{seen}");
    assert!(!fields[2].starts_with("SQL"), "{seen}");
    assert_eq!(fields[3], "f", "{seen}");
    assert_eq!(fields[4], "0", "{seen}");
    assert_eq!(fields[5], "0", "{seen}");
    assert_eq!(fields[6], "f", "{seen}");
    assert_eq!(fields.get(7).copied().unwrap_or(""), "", "{seen}");
}

#[test]
fn a_temp_table_cannot_shadow_another_roles_table() {
    // pg_temp comes first for tables unless the path says otherwise: Alice's temp table named
    // like Bob's would catch Bob's rows.
    let seen = after_alice(
        "CREATE TEMP TABLE accounts (owner text); GRANT ALL ON accounts TO PUBLIC",
        "(SELECT count(*) FROM (SELECT 1 FROM pg_class WHERE relnamespace = pg_my_temp_schema() \
          AND relname = 'accounts') t)::text || '|' || \
         (SELECT count(*) FROM accounts)",
        "CREATE TABLE public.accounts (owner text); INSERT INTO public.accounts VALUES ('bob'); \
         GRANT SELECT ON public.accounts TO PUBLIC;",
    );
    assert_eq!(seen, "0|1", "temp table count | rows Bob's query saw");
}

#[test]
fn prepared_statements_do_not_leak() {
    let seen = after_alice(
        "PREPARE alice_stmt AS SELECT 'alice'",
        "(SELECT count(*) FROM pg_prepared_statements)",
        "",
    );
    assert_eq!(seen, "0");
}

#[test]
fn cursors_do_not_leak() {
    let seen = after_alice(
        "DECLARE alice_cur CURSOR WITH HOLD FOR SELECT 1",
        "(SELECT count(*) FROM pg_cursors)",
        "",
    );
    assert_eq!(seen, "0");
}

#[test]
fn advisory_locks_do_not_leak() {
    let seen = after_alice(
        "SELECT pg_advisory_lock(4242)",
        "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
          AND objid = 4242 AND granted)",
        "",
    );
    // Bob may still see Alice's lock until the shared transaction ends only if it were
    // transaction-scoped; a session lock must be gone.
    assert_eq!(seen, "0");
}

#[test]
fn listen_does_not_leak() {
    let seen = after_alice(
        "LISTEN alice_channel",
        "(SELECT count(*) FROM pg_listening_channels())",
        "",
    );
    assert_eq!(seen, "0");
}

#[test]
fn a_job_that_swallows_cancels_is_ended_at_its_deadline() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE after (v int)");
    let stubborn = db.add_job(
        "broker_add_job('stubborn', $j$DO $b$ BEGIN
            LOOP BEGIN PERFORM pg_sleep(0.2); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP;
         END $b$$j$, timeout => '1 second')",
    );
    let next = db.add_job("broker_add_job('next', 'INSERT INTO after VALUES (1)')");
    let _broker = BrokerProcess::start_serving(&db, &one_worker(&db));
    db.wait_status(stubborn, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {stubborn}"
        ))
        .unwrap_or_default();
    assert!(error.contains("timeout"), "{error}");
    assert!(error.contains("ended its backend"), "{error}");
    // The worker carries on with a fresh connection.
    db.wait_status(next, "completed");
}

#[test]
fn a_cancel_holds_against_a_job_that_swallows_it() {
    let db = TestDb::new();
    db.install();
    let stubborn = db.add_job(
        "broker_add_job('stubborn', $j$DO $b$ BEGIN
            LOOP BEGIN PERFORM pg_sleep(0.2); EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP;
         END $b$$j$)",
    );
    let _broker = BrokerProcess::start_serving(&db, &one_worker(&db));
    db.wait_status(stubborn, "running");
    wait_until("the job to start", || {
        db.value(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgsql-broker job {stubborn}'"
        ))
        .as_deref()
            == Some("1")
    });
    db.exec(&format!("SELECT broker_cancel_job({stubborn})"));
    db.wait_status(stubborn, "cancelled");
}

#[test]
fn max_job_timeout_caps_a_submitters_zero() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let mut c = session(&db, &alice);
    let id: i64 = c
        .query_one(
            "SELECT broker_add_job('forever', 'SELECT pg_sleep(120)', timeout => '0')",
            &[],
        )
        .expect("add")
        .get(0);
    let config = db.config(
        "",
        "  queue_timer_sec: 3600\n  default_job_timeout: 1h\n  max_job_timeout: 1s\n",
    );
    let _broker = BrokerProcess::start_serving(&db, &config);
    db.wait_status(id, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {id}"
        ))
        .unwrap_or_default();
    assert!(error.contains("57014"), "{error}");
    let ran = db
        .value(&format!(
            "SELECT extract(epoch FROM completed_at - started_at) < 30 FROM broker_jobs WHERE id = {id}"
        ))
        .unwrap_or_default();
    assert_eq!(ran, "t");
}

#[test]
fn a_dependents_insert_does_not_hide_its_dependency_from_the_claim() {
    let db = TestDb::new();
    db.install();
    // The poll is a minute away: only the claim at the parent's due time can start it.
    let config = db.config("", "  queue_timer_sec: 60\n");
    let _broker = BrokerProcess::start_serving(&db, &config);
    let parent = db.add_job(
        "broker_add_job('parent', 'SELECT 1', run_after => clock_timestamp() + interval '2 seconds')",
    );
    // A transaction adding a dependent holds the parent's row FOR KEY SHARE until it ends.
    let mut open = db.client();
    let mut tx = open.transaction().expect("begin");
    tx.query_one(
        "SELECT broker_add_job('child', 'SELECT 1', depends_on => ARRAY[$1::bigint])",
        &[&parent],
    )
    .expect("child");
    let started = std::time::Instant::now();
    db.wait_status(parent, "completed");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the parent waited for the poll"
    );
    tx.commit().expect("commit");
}

#[test]
fn one_failing_job_rolls_back_alone_in_a_shared_transaction() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE effects (job text, xid bigint)");
    let mut good = Vec::new();
    for i in 0..9 {
        if i == 4 {
            continue;
        }
        good.push(db.add_job(&format!(
            "broker_add_job('good{i}', 'INSERT INTO effects VALUES (''good{i}'', txid_current())')"
        )));
    }
    let bad = db.add_job(
        "broker_add_job('bad', 'INSERT INTO effects VALUES (''bad'', txid_current()); SELECT 1/0')",
    );
    good.push(db.add_job(
        "broker_add_job('last', 'INSERT INTO effects VALUES (''last'', txid_current())')",
    ));
    let _broker = BrokerProcess::start_serving(&db, &one_worker(&db));
    for id in &good {
        db.wait_status(*id, "completed");
    }
    db.wait_status(bad, "failed");
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {bad}"
        ))
        .unwrap_or_default();
    assert!(error.contains("22012"), "{error}");
    assert_eq!(
        db.value("SELECT count(*) FROM effects WHERE job = 'bad'")
            .as_deref(),
        Some("0")
    );
    assert_eq!(
        db.value("SELECT count(*) FROM effects").as_deref(),
        Some(good.len().to_string().as_str())
    );
    // They committed together: one transaction for the whole batch.
    assert_eq!(
        db.value("SELECT count(DISTINCT xid) FROM effects")
            .as_deref(),
        Some("1")
    );
    // started_at and completed_at are the job's own, not the transaction's.
    assert_eq!(
        db.value(&format!(
            "SELECT count(*) FROM broker_jobs WHERE id = ANY (ARRAY{good:?}) AND started_at <= completed_at \
             AND completed_at > created_at"
        ))
        .as_deref(),
        Some(good.len().to_string().as_str())
    );
}

#[test]
fn completed_at_is_when_the_job_ended() {
    let db = TestDb::new();
    db.install();
    let id = db.add_job("broker_add_job('slow', 'SELECT pg_sleep(1.5)')");
    let _broker = BrokerProcess::start_serving(&db, &db.config("", ""));
    db.wait_status(id, "completed");
    let took: f64 = db
        .value(&format!(
            "SELECT extract(epoch FROM completed_at - started_at) FROM broker_jobs WHERE id = {id}"
        ))
        .and_then(|v| v.parse().ok())
        .expect("times");
    assert!(took >= 1.4, "ran {took}s by its times");
}

#[test]
fn kill_9_in_the_middle_of_batches_applies_every_job_once() {
    let db = TestDb::new();
    db.install();
    db.exec("CREATE TABLE effects (job bigint)");
    let n = 3000;
    db.exec(&format!(
        "INSERT INTO broker_jobs (job_name, execute_str, job_queue)
         SELECT 'e', 'INSERT INTO effects SELECT current_setting(''broker.job_id'')::bigint', 1 + g % 2
           FROM generate_series(1, {n}) g"
    ));
    let config = db.config("", "  queue_timer_sec: 1\n");
    let mut broker = BrokerProcess::start(&config);
    wait_until("some jobs to complete", || {
        db.value("SELECT count(*) > 200 FROM broker_jobs WHERE status = 'completed'")
            .as_deref()
            == Some("t")
    });
    broker.signal("KILL");
    broker.wait_exit(HANG);
    let done_at_kill: i64 = db
        .value("SELECT count(*) FROM broker_jobs WHERE status = 'completed'")
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    assert!(done_at_kill < n, "the kill came too late to test anything");
    let again = BrokerProcess::start_serving(&db, &config);
    again.wait_log("job(s) left running by a dead instance or a lost connection: pending again");
    wait_until("every job to complete", || {
        db.value("SELECT count(*) FROM broker_jobs WHERE status <> 'completed'")
            .as_deref()
            == Some("0")
    });
    assert_eq!(
        db.value("SELECT count(*) FROM effects").as_deref(),
        Some(n.to_string().as_str()),
        "every effect once"
    );
    assert_eq!(
        db.value("SELECT count(DISTINCT job) FROM effects")
            .as_deref(),
        Some(n.to_string().as_str())
    );
}
