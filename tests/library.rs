//! The library API: a broker built in code, started, stopped and waited for in-process.

mod common;
use common::*;
use pgsql_broker::{submit, Broker, Config, DatabaseConfig, Error, NewJob};
use std::time::{Duration, SystemTime};

#[test]
fn embedded_broker_runs_jobs_and_drains() {
    let db = TestDb::new();
    let mut target = DatabaseConfig::new(&db.name);
    target.host = host();
    target.port = port();
    target.user = user();
    target.queue_count = 1;
    target.max_open_conns = 2;
    let broker = Broker::start(Config::new(vec![target])).expect("broker starts");
    let instances = broker.instances();
    assert_eq!(instances.len(), 1);
    let instance = instances[0].1.expect("registered");
    assert_eq!(
        db.value(&format!(
            "SELECT status FROM broker_queueinstance WHERE id = {instance}"
        ))
        .as_deref(),
        Some("active")
    );
    let id = db.add_job("broker_add_job('lib', 'SELECT 1')");
    db.wait_status(id, "completed");
    broker.stop();
    broker.wait().expect("clean drain");
    assert_eq!(
        db.value(&format!(
            "SELECT status FROM broker_queueinstance WHERE id = {instance}"
        ))
        .as_deref(),
        Some("shutdown")
    );
}

#[test]
fn start_fails_cleanly_when_the_database_is_unreachable() {
    let mut target = DatabaseConfig::new("nowhere");
    target.host = "127.0.0.1".into();
    target.port = 1;
    let err = Broker::start(Config::new(vec![target]))
        .err()
        .expect("must fail");
    assert_eq!(err.exit_code(), 1);
    assert!(
        err.to_string().contains("database nowhere: cannot connect"),
        "{err}"
    );
}

#[test]
fn submit_adds_a_job_the_broker_runs() {
    let db = TestDb::new();
    let mut target = DatabaseConfig::new(&db.name);
    target.host = host();
    target.port = port();
    target.user = user();
    target.queue_count = 2;
    target.max_open_conns = 2;
    let broker = Broker::start(Config::new(vec![target.clone()])).expect("broker starts");
    db.exec("CREATE TABLE t (x int)");

    let mut client = target.connect().expect("connect");
    let mut job = NewJob::new("lib-submit", "INSERT INTO t VALUES (7)");
    job.queue = 2;
    job.priority = 5;
    job.run_after = Some(SystemTime::now() - Duration::from_secs(60));
    job.max_attempts = 3;
    job.timeout = Some(Duration::from_millis(1500));
    let id = submit(&mut client, &job).expect("submitted");
    assert_eq!(
        db.value(&format!(
            "SELECT concat_ws(',', job_name, job_queue, job_priority, max_attempts, timeout) \
             FROM broker_jobs WHERE id = {id}"
        ))
        .as_deref(),
        Some("lib-submit,2,5,3,00:00:01.5")
    );
    db.wait_status(id, "completed");
    assert_eq!(db.value("SELECT x FROM t").as_deref(), Some("7"));

    // Inside the caller's transaction: nothing until it commits.
    let mut tx = client.transaction().expect("begin");
    let later = submit(&mut tx, &NewJob::new("lib-tx", "INSERT INTO t VALUES (8)")).expect("ok");
    assert_eq!(
        db.value(&format!(
            "SELECT count(*) FROM broker_jobs WHERE id = {later}"
        ))
        .as_deref(),
        Some("0")
    );
    tx.commit().expect("commit");
    db.wait_status(later, "completed");

    let err = submit(&mut client, &NewJob::new("empty-one", "")).expect_err("empty SQL is refused");
    let message = err.to_string();
    assert!(message.contains("\"empty-one\""), "{message}");
    assert!(message.contains("SQLSTATE 22023"), "{message}");
    assert!(
        matches!(err, Error::Submit { ref job, .. } if job == "empty-one"),
        "{err:?}"
    );

    broker.stop();
    broker.wait().expect("clean drain");
}
