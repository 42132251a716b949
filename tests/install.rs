//! `pgsql-broker install`: one transaction, idempotent, `--verify-only` lists what is missing.

mod common;
use common::*;

#[test]
fn install_verify_and_reinstall() {
    let db = TestDb::new();

    let out = db.cli(&["install", "--verify-only"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "verify on an empty database must fail: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("missing table broker_jobs"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("missing function broker_add_job"),
        "{}",
        out.stdout
    );

    let out = db.cli(&["install"]);
    assert!(out.status.success(), "{}", out.stderr);
    let expected = format!(
        "version 0 -> {}",
        pgsql_broker::test_support::SCHEMA_VERSION
    );
    assert!(out.stdout.contains(&expected), "{}", out.stdout);

    let out = db.cli(&["install", "--verify-only"]);
    assert!(out.status.success(), "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("installed and complete"),
        "{}",
        out.stdout
    );

    // A job survives a re-install untouched: the second run is a no-op.
    let id = db.add_job("broker_add_job('keep', 'SELECT 1')");
    let out = db.cli(&["install", "--database", &db.name]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("already installed"), "{}", out.stdout);
    assert_eq!(db.status(id), "pending");
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schema_version")
            .as_deref(),
        Some(schema_versions().as_str())
    );
}

#[test]
fn verify_names_a_missing_function() {
    let db = TestDb::new();
    db.install();
    db.exec("DROP FUNCTION broker_ping_instance(bigint)");
    let out = db.cli(&["install", "--verify-only"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.contains("missing function broker_ping_instance"),
        "{}",
        out.stdout
    );
}

#[test]
fn unknown_database_name_is_a_usage_error() {
    let db = TestDb::new();
    let out = db.cli(&["install", "--database", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
}

#[test]
fn start_refuses_a_newer_schema() {
    let db = TestDb::new();
    db.install();
    db.exec("INSERT INTO broker_schema_version (version) VALUES (999)");
    let out = db.cli(&["start"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("schema version 999 is newer"),
        "{}",
        out.stderr
    );
}

#[test]
fn concurrent_installs_serialize() {
    let db = TestDb::new();
    let config = db.config("", "");
    let path = config.to_str().unwrap_or_default().to_string();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || run_cli(&["--config", &path, "install"]))
        })
        .collect();
    for r in runs {
        let out = r.join().expect("thread");
        assert!(out.status.success(), "{}", out.stderr);
    }
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schema_version")
            .as_deref(),
        Some(schema_versions().as_str())
    );
}

/// Functions from another build (here: a broken broker_get and an old digest) make `start`
/// refuse and `verify` say so; `install` replaces them in place and queued jobs then run.
#[test]
fn functions_of_another_build_are_replaced_by_install() {
    let db = TestDb::new();
    db.install();
    let queued = db.add_job("broker_add_job('queued', 'SELECT 1', 1, 5)");
    db.exec(
        "CREATE OR REPLACE FUNCTION broker_get(p_queue integer, p_instance bigint, p_limit integer DEFAULT 1)
         RETURNS TABLE (id bigint, claim bigint, attempt integer, role_oid oid, timeout_ms bigint,
                        transactional boolean)
         LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'old build'; END $$;
         UPDATE broker_schema_version SET functions_digest = 'from an older build'",
    );

    let out = db.cli(&["install", "--verify-only"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("functions are not this build's"),
        "{}",
        out.stdout
    );
    let out = db.cli(&["start"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "start must not upgrade on its own: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("pgsql-broker install"),
        "{}",
        out.stderr
    );

    let out = db.cli(&["install"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains("functions updated"), "{}", out.stdout);
    assert!(db.cli(&["install", "--verify-only"]).status.success());
    let _broker = BrokerProcess::start_serving(&db, &db.config("", ""));
    db.wait_status(queued, "completed");
}
