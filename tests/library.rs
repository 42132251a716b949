//! The library API: a broker built in code, started, stopped and waited for in-process.

mod common;
use common::*;
use pgsql_broker::DatabaseConfig;
use pgsql_broker::{Broker, Config};

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
