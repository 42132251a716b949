//! The privilege model: who a job runs as, what a submitter may see and do, hostile names.

mod common;
use common::*;

#[test]
fn run_as_a_role_the_submitter_is_not_a_member_of_is_refused() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), db.role("bob"));
    let mut c = session(&db, &alice);
    let err = c
        .query_one(
            "SELECT broker_add_job('x', 'SELECT 1', 1, 0, 'sql', $1::text::name)",
            &[&bob],
        )
        .expect_err("alice is not a member of bob");
    assert_eq!(code(&err), "42501", "{}", explain(&err));
    // The same through a plain INSERT.
    let err = c
        .execute(
            "INSERT INTO broker_jobs (execute_str, run_as) VALUES ('SELECT 1', $1::text::name)",
            &[&bob],
        )
        .expect_err("plain insert too");
    assert_eq!(code(&err), "42501");
    // Membership makes it fine.
    db.exec(&format!(
        "GRANT {} TO {}",
        quote_ident(&bob),
        quote_ident(&alice)
    ));
    let mut c = session(&db, &alice);
    c.query_one(
        "SELECT broker_add_job('x', 'SELECT 1', 1, 0, 'sql', $1::text::name)",
        &[&bob],
    )
    .expect("member may");
}

#[test]
fn plain_insert_cannot_smuggle_another_owner_or_state() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let mut c = session(&db, &alice);
    let row = c
        .query_one(
            "INSERT INTO broker_jobs (execute_str, owner, status, attempts, instance_id)
             VALUES ('SELECT 1', 'postgres', 'completed', 7, NULL)
             RETURNING owner::text, status, attempts",
            &[],
        )
        .expect("plain insert");
    assert_eq!(row.get::<_, String>(0), alice);
    assert_eq!(row.get::<_, String>(1), "pending");
    assert_eq!(row.get::<_, i32>(2), 0);
    // Nor change it afterwards: the only change a submitter may make is a cancel.
    let id: i64 = c
        .query_one("SELECT max(id) FROM broker_jobs", &[])
        .expect("id")
        .get(0);
    let err = c
        .execute(
            "UPDATE broker_jobs SET owner = 'postgres' WHERE id = $1",
            &[&id],
        )
        .expect_err("no owner change");
    assert_eq!(code(&err), "42501");
    let err = c
        .execute("UPDATE broker_jobs SET status = 'cancelled', execute_str = 'DROP TABLE x' WHERE id = $1", &[&id])
        .expect_err("no sneaking a new body in with a cancel");
    assert_eq!(code(&err), "42501");
}

#[test]
fn a_job_by_alice_cannot_read_what_only_bob_can() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    db.exec(&format!(
        "CREATE TABLE bobs_secrets (s text); INSERT INTO bobs_secrets VALUES ('s3cret');
         GRANT SELECT ON bobs_secrets TO {bob};
         CREATE TABLE loot (s text); GRANT INSERT ON loot TO {alice}, {bob};",
        alice = quote_ident(&alice),
        bob = quote_ident(&bob)
    ));
    let _broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 3600\n"));
    let steal = "INSERT INTO loot SELECT s FROM bobs_secrets";
    let mut a = session(&db, &alice);
    let direct: i64 = a
        .query_one("SELECT broker_add_job('steal', $1)", &[&steal])
        .expect("add")
        .get(0);
    // Tries to climb back to the broker's login inside the job.
    let escape: i64 = a
        .query_one(
            "SELECT broker_add_job('escape', $1)",
            &[&format!("RESET ROLE; {steal}")],
        )
        .expect("add")
        .get(0);
    let escape2: i64 = a
        .query_one(
            "SELECT broker_add_job('escape2', $1)",
            &[&format!("SET ROLE {}; {steal}", quote_ident(&user()))],
        )
        .expect("add")
        .get(0);
    let escape3: i64 = a
        .query_one(
            "SELECT broker_add_job('escape3', $1, 1, 0, 'plpgsql')",
            &[&format!(
                "BEGIN PERFORM set_config('role', '{}', false); {steal}; END",
                user()
            )],
        )
        .expect("add")
        .get(0);
    // Outside a transaction a job runs in the broker's session: refused for alice's role.
    let outside: i64 = a
        .query_one(
            "SELECT broker_add_job('outside', $1, transactional => false)",
            &[&format!("RESET ROLE; {steal}")],
        )
        .expect("add")
        .get(0);
    let mut b = session(&db, &bob);
    let bobs: i64 = b
        .query_one("SELECT broker_add_job('bob reads', $1)", &[&steal])
        .expect("add")
        .get(0);
    for id in [direct, escape, escape2, escape3, outside] {
        db.wait_status(id, "failed");
    }
    db.wait_status(bobs, "completed");
    for id in [direct, escape, escape2, escape3] {
        let error = db
            .value(&format!(
                "SELECT error_text FROM broker_jobs WHERE id = {id}"
            ))
            .unwrap_or_default();
        assert!(
            error.starts_with("SQLSTATE 42501") || error.contains("security-definer"),
            "job {id}: {error}"
        );
    }
    let error = db
        .value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {outside}"
        ))
        .unwrap_or_default();
    assert!(error.contains("outside a transaction"), "{error}");
    assert_eq!(
        db.value("SELECT count(*) FROM loot").as_deref(),
        Some("1"),
        "only bob's job read it"
    );
}

#[test]
fn alice_cannot_see_or_cancel_bobs_jobs() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let admin = db.role("admin");
    db.exec(&format!("GRANT broker_admin TO {}", quote_ident(&admin)));
    let mut b = session(&db, &bob);
    let bobs: i64 = b
        .query_one(
            "SELECT broker_add_job('bob', 'SELECT 1', run_after => now() + interval '1 hour')",
            &[],
        )
        .expect("add")
        .get(0);
    let mut a = session(&db, &alice);
    let alices: i64 = a
        .query_one(
            "SELECT broker_add_job('alice', 'SELECT 1', run_after => now() + interval '1 hour')",
            &[],
        )
        .expect("add")
        .get(0);
    let seen: Vec<i64> = a
        .query("SELECT id FROM broker_jobs", &[])
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![alices]);
    let err = a
        .query_one("SELECT broker_cancel_job($1)", &[&bobs])
        .expect_err("cannot cancel bob's");
    assert_eq!(
        code(&err),
        "02000",
        "bob's job does not even exist for alice: {}",
        explain(&err)
    );
    let n = a
        .execute(
            "UPDATE broker_jobs SET status = 'cancelled' WHERE id = $1",
            &[&bobs],
        )
        .expect("update");
    assert_eq!(n, 0, "invisible rows are not updated");
    let err = a
        .query_one(
            &format!("SELECT broker_add_job('dep', 'SELECT 1', depends_on => ARRAY[{bobs}])"),
            &[],
        )
        .expect_err("cannot depend on bob's job");
    assert_eq!(code(&err), "23503");
    assert_eq!(db.status(bobs), "pending");
    // Alice cancels her own; an admin sees and cancels bob's.
    let status: String = a
        .query_one("SELECT broker_cancel_job($1)", &[&alices])
        .expect("own")
        .get(0);
    assert_eq!(status, "cancelled");
    let mut adm = session(&db, &admin);
    let n: i64 = adm
        .query_one("SELECT count(*) FROM broker_jobs", &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 2);
    let status: String = adm
        .query_one("SELECT broker_cancel_job($1)", &[&bobs])
        .expect("admin")
        .get(0);
    assert_eq!(status, "cancelled");
}

#[test]
fn public_gets_nothing() {
    let db = TestDb::new();
    db.install();
    let nobody = db.role("nobody");
    let mut c = session(&db, &nobody);
    for sql in [
        "SELECT broker_add_job('x', 'SELECT 1')",
        "SELECT count(*) FROM broker_jobs",
        "INSERT INTO broker_jobs (execute_str) VALUES ('SELECT 1')",
        "SELECT broker_cancel_job(1)",
        "SELECT broker_register_instance('x', 'x', 1, 'x')",
        "SELECT * FROM broker_get(1, 1)",
    ] {
        let err = c.batch_execute(sql).expect_err(sql);
        assert_eq!(code(&err), "42501", "{sql}: {}", explain(&err));
    }
}

/// Role, job, login and instance names full of quotes, semicolons, backslashes and non-ASCII
/// travel as data.
#[test]
fn hostile_names_are_data() {
    let db = TestDb::new();
    db.install();
    let role = submitter(&db, "R'o\"l;e\\ é; DROP TABLE t;--");
    db.exec(&format!(
        "CREATE TABLE t (who text, login text, job text); GRANT INSERT ON t TO {}",
        quote_ident(&role)
    ));
    let hostile_name = "j'o\"b; DROP TABLE t; -- \\ ü";
    let hostile_login = "l'o\"g$$in; DROP TABLE t; -- \\ ø";
    let config = db.config(
        "",
        "  name: \"b'r\\\"o;ker \\\\ ß\"\n  queue_timer_sec: 3600\n",
    );
    let _broker = BrokerProcess::start_serving(&db, &config);
    let mut c = session(&db, &role);
    let id: i64 = c
        .query_one(
            "SELECT broker_add_job($1, $2, 1, 0, 'sql', NULL, $3)",
            &[&hostile_name, &"INSERT INTO t SELECT current_user, current_setting('broker.user_login'), (SELECT job_name FROM broker_jobs WHERE id = current_setting('broker.job_id')::bigint)", &hostile_login],
        )
        .expect("add")
        .get(0);
    db.wait_status(id, "completed");
    let mut check = db.client();
    let row = check
        .query_one("SELECT who, login, job FROM t", &[])
        .expect("row");
    assert_eq!(row.get::<_, String>(0), role);
    assert_eq!(row.get::<_, String>(1), hostile_login);
    assert_eq!(row.get::<_, String>(2), hostile_name);
    let name: String = check
        .query_one(
            "SELECT name FROM broker_queueinstance WHERE status = 'active'",
            &[],
        )
        .expect("instance")
        .get(0);
    assert_eq!(name, "b'r\"o;ker \\ ß");
}

#[test]
fn submitters_manage_only_their_own_schedules() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let mut b = session(&db, &bob);
    let bobs: i64 = b
        .query_one(
            "SELECT broker_add_schedule('bob', '@daily', 'SELECT 1')",
            &[],
        )
        .expect("bob adds")
        .get(0);
    let mut a = session(&db, &alice);
    let alices: i64 = a
        .query_one(
            "SELECT broker_add_schedule('alice', '@daily', 'SELECT 1')",
            &[],
        )
        .expect("alice adds")
        .get(0);
    let seen: Vec<i64> = a
        .query("SELECT id FROM broker_schedule", &[])
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![alices]);
    let removed: bool = a
        .query_one("SELECT broker_remove_schedule($1)", &[&bobs])
        .expect("call")
        .get(0);
    assert!(!removed, "bob's schedule is invisible to alice");
    let disabled: bool = a
        .query_one("SELECT broker_disable_schedule($1)", &[&alices])
        .expect("own")
        .get(0);
    assert!(disabled);
    assert_eq!(
        db.value(&format!(
            "SELECT enabled FROM broker_schedule WHERE id = {bobs}"
        ))
        .as_deref(),
        Some("t")
    );
    let nobody = db.role("nobody");
    let mut n = session(&db, &nobody);
    let err = n
        .batch_execute("SELECT broker_add_schedule('x', '@daily', 'SELECT 1')")
        .expect_err("public");
    assert_eq!(code(&err), "42501");
}

/// A submitter cannot take a schedule's due-time slot (which would silently skip that firing)
/// nor link a job to someone else's schedule.
#[test]
fn submitters_cannot_occupy_schedule_slots() {
    let db = TestDb::new();
    db.install();
    let (alice, bob) = (submitter(&db, "alice"), submitter(&db, "bob"));
    let mut b = session(&db, &bob);
    let bobs: i64 = b
        .query_one(
            "SELECT broker_add_schedule('bob', '@daily', 'SELECT 1')",
            &[],
        )
        .expect("bob adds")
        .get(0);
    let mut a = session(&db, &alice);
    let err = a
        .execute(
            "INSERT INTO broker_jobs (execute_str, schedule_id, scheduled_for) VALUES ('SELECT 1', $1, now())",
            &[&bobs],
        )
        .expect_err("not alice's schedule");
    assert_eq!(code(&err), "42501", "{}", explain(&err));
    let alices: i64 = a
        .query_one(
            "SELECT broker_add_schedule('alice', '@daily', 'SELECT 1')",
            &[],
        )
        .expect("alice adds")
        .get(0);
    let row = a
        .query_one(
            "INSERT INTO broker_jobs (execute_str, schedule_id, scheduled_for) VALUES ('SELECT 1', $1, now())
             RETURNING scheduled_for IS NULL",
            &[&alices],
        )
        .expect("own schedule may be linked");
    assert!(
        row.get::<_, bool>(0),
        "the due-time slot is the broker's to set"
    );
}

/// Jobs a schedule makes belong to the schedule's owner, who sees and can cancel them.
#[test]
fn scheduled_jobs_belong_to_the_schedule_owner() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let mut a = session(&db, &alice);
    a.query_one(
        "SELECT broker_add_schedule('tick', '* * * * * *', 'SELECT pg_sleep(30)')",
        &[],
    )
    .expect("alice adds");
    let _broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 3600\n"));
    wait_until("a scheduled job", || {
        db.value("SELECT count(*) FROM broker_jobs WHERE schedule_id IS NOT NULL")
            .as_deref()
            != Some("0")
    });
    let mut a = session(&db, &alice);
    let row = a
        .query_one("SELECT id, owner::text FROM broker_jobs WHERE schedule_id IS NOT NULL ORDER BY id LIMIT 1", &[])
        .expect("alice sees her schedule's job");
    assert_eq!(row.get::<_, String>(1), alice);
}

/// broker_admin sees every job but, like any submitter, may only cancel it: rewriting its SQL
/// or role would run it with privileges the admin lacks.
#[test]
fn admins_cannot_rewrite_jobs() {
    let db = TestDb::new();
    db.install();
    let bob = submitter(&db, "bob");
    let admin = db.role("admin");
    db.exec(&format!("GRANT broker_admin TO {}", quote_ident(&admin)));
    let mut b = session(&db, &bob);
    let bobs: i64 = b
        .query_one(
            "SELECT broker_add_job('bob', 'SELECT 1', run_after => now() + interval '1 hour')",
            &[],
        )
        .expect("add")
        .get(0);
    let mut adm = session(&db, &admin);
    for sql in [
        "UPDATE broker_jobs SET execute_str = 'DROP TABLE x' WHERE id = $1",
        "UPDATE broker_jobs SET run_as = 'postgres' WHERE id = $1",
        "UPDATE broker_jobs SET owner = 'postgres' WHERE id = $1",
    ] {
        let err = adm.execute(sql, &[&bobs]).expect_err(sql);
        assert_eq!(code(&err), "42501", "{sql}: {}", explain(&err));
    }
}

/// Tricks that would make the broker's login run a job's code after the job's SQL returns: a
/// temp table shadowing broker_jobs with a trigger, a deferred constraint trigger, a holdable
/// cursor. All of it must run as the job's role, or not at all.
#[test]
fn nothing_of_a_job_runs_as_the_broker() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    db.exec(&format!(
        "CREATE TABLE loot (who text); GRANT INSERT ON loot TO {}",
        quote_ident(&alice)
    ));
    let _broker = BrokerProcess::start_serving(&db, &db.config("", "  queue_timer_sec: 3600\n"));
    let record = "CREATE FUNCTION pg_temp.rec() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN INSERT INTO public.loot VALUES (current_user); RETURN NULL; END$f$;";
    let shadow = format!(
        "{record} CREATE TEMP TABLE broker_jobs AS SELECT * FROM public.broker_jobs WHERE id = current_setting('broker.job_id')::bigint;
         CREATE TRIGGER t BEFORE UPDATE ON pg_temp.broker_jobs FOR EACH ROW EXECUTE FUNCTION pg_temp.rec();"
    );
    let deferred = format!(
        "{record} CREATE TEMP TABLE d (x int);
         CREATE CONSTRAINT TRIGGER c AFTER INSERT ON d DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pg_temp.rec();
         INSERT INTO d VALUES (1);"
    );
    let cursor = "CREATE FUNCTION pg_temp.h() RETURNS int LANGUAGE plpgsql AS $f$BEGIN INSERT INTO public.loot VALUES (current_user); RETURN 1; END$f$;
         DECLARE c CURSOR WITH HOLD FOR SELECT pg_temp.h();".to_string();
    let mut a = session(&db, &alice);
    let mut ids = Vec::new();
    for sql in [&shadow, &deferred, &cursor] {
        let id: i64 = a
            .query_one("SELECT broker_add_job('trick', $1)", &[sql])
            .expect("add")
            .get(0);
        ids.push(id);
    }
    for id in &ids {
        wait_until("the trick job to end", || {
            matches!(db.status(*id).as_str(), "completed" | "failed")
        });
    }
    let who = db
        .value("SELECT coalesce(string_agg(DISTINCT who, ','), '') FROM loot")
        .unwrap_or_default();
    assert!(who.is_empty() || who == alice, "code ran as {who}");
    // The shadowing table did not fool the completion either: the real row is finished.
    assert_ne!(db.status(ids[0]), "running");
}

#[test]
fn submitters_cannot_pick_ids_or_schedule_times() {
    let db = TestDb::new();
    db.install();
    let alice = submitter(&db, "alice");
    let mut a = session(&db, &alice);
    let err = a
        .batch_execute("INSERT INTO broker_jobs (id, execute_str) VALUES (424242, 'SELECT 1')")
        .expect_err("ids are the broker's");
    assert_eq!(code(&err), "428C9", "{}", explain(&err));
    let id: i64 = a
        .query_one("SELECT broker_add_schedule('s', '@daily', 'SELECT 1')", &[])
        .expect("add")
        .get(0);
    for sql in [
        "UPDATE broker_schedule SET last_run = 'infinity' WHERE id = $1",
        "UPDATE broker_schedule SET next_run = now() - interval '1 year' WHERE id = $1",
        "UPDATE broker_schedule SET owner = 'postgres' WHERE id = $1",
    ] {
        let err = a.execute(sql, &[&id]).expect_err(sql);
        assert_eq!(code(&err), "42501", "{sql}: {}", explain(&err));
    }
    let err = a
        .execute(
            "INSERT INTO broker_cancel_requests (job_id, requested_by) VALUES (1, 'postgres')",
            &[],
        )
        .expect_err("requested_by is not the submitter's to write");
    assert_eq!(code(&err), "42501", "{}", explain(&err));
}
