//! Many databases, failover, standby and recovery: connections killed, servers restarted or
//! down at start, a standby taking over, processes sharing databases, a replica refused.

mod common;
use common::cluster::Cluster;
use common::*;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One `databases[]` entry of a config file.
fn db_entry(name: &str, host: &str, port: u16, queue_count: u32) -> String {
    format!(
        "  - name: {name}\n    host: \"{host}\"\n    port: {port}\n    user: {user}\n    database: {name}\n    max_open_conns: 4\n    queue_count: {queue_count}\n",
        user = user()
    )
}

/// Writes a config for `entries`; `broker` holds extra lines of the broker section.
fn write_config(dir: &Path, file: &str, entries: &[String], broker: &str) -> PathBuf {
    let text = format!(
        "databases:\n{}broker:\n  notify_retry_seconds: 1s\n  queue_timer_sec: 2\n{broker}logging:\n  level: debug\n",
        entries.concat()
    );
    let path = dir.join(file);
    std::fs::write(&path, text).expect("write config");
    path
}

/// The pid of the broker holding `db` according to its active instance row.
/// None before the broker installed the schema, too.
fn serving_pid(db: &TestDb) -> Option<u32> {
    let row = db
        .client()
        .query_opt(
            "SELECT pid FROM broker_queueinstance WHERE status = 'active'",
            &[],
        )
        .ok()??;
    u32::try_from(row.get::<_, i32>(0)).ok()
}

/// How many of `ids` reached `status`.
fn count_status(db: &TestDb, status: &str) -> i64 {
    db.value(&format!(
        "SELECT count(*) FROM broker_jobs WHERE status = '{status}'"
    ))
    .and_then(|v| v.parse().ok())
    .unwrap_or(0)
}

/// Waits until a job counting its tries in `sequence` has started its first try.
fn started(db: &TestDb, sequence: &str) {
    wait_until(&format!("a job to take {sequence}"), || {
        db.value(&format!("SELECT is_called FROM {sequence}"))
            .as_deref()
            == Some("t")
    });
}

/// Kills every connection of the broker to `db` (listener, workers, running jobs).
fn terminate_broker_connections(db: &TestDb) -> i64 {
    db.value(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'pgsql-broker%'
            AND pid <> pg_backend_pid()",
    )
    .and_then(|v| v.parse().ok())
    .unwrap_or(0)
}

#[test]
fn one_process_serves_two_databases_with_their_own_queue_counts() {
    let (a, b) = (TestDb::new(), TestDb::new());
    let config = write_config(
        a.dir(),
        "two.yaml",
        &[
            db_entry(&a.name, &host(), port(), 1),
            db_entry(&b.name, &host(), port(), 3),
        ],
        "",
    );
    let broker = BrokerProcess::start(&config);
    broker.wait_log(&format!("database {}: serving as instance", a.name));
    broker.wait_log(&format!("database {}: serving as instance", b.name));
    assert!(broker.log().contains("(1 queues"), "{}", broker.log());
    assert!(broker.log().contains("(3 queues"), "{}", broker.log());
    // Queues 1..3 of b run (in parallel); queue 3 of a does not exist.
    b.exec("CREATE TABLE started (q int, at timestamptz DEFAULT clock_timestamp())");
    let jobs: Vec<i64> = (1..=3)
        .map(|q| {
            b.add_job(&format!(
                "broker_add_job('q{q}', 'INSERT INTO started (q) VALUES ({q}); SELECT pg_sleep(1)', {q})"
            ))
        })
        .collect();
    let on_a = a.add_job("broker_add_job('a1', 'SELECT 1', 1)");
    let beyond = a.add_job("broker_add_job('a3', 'SELECT 1', 3)");
    for id in &jobs {
        b.wait_status(*id, "completed");
    }
    a.wait_status(on_a, "completed");
    // Started together, not one after the other.
    let spread: f64 = b
        .value("SELECT extract(epoch FROM max(at) - min(at)) FROM started")
        .and_then(|v| v.parse().ok())
        .expect("spread");
    assert!(
        spread < 0.9,
        "queues of b ran one after another ({spread}s)"
    );
    broker.wait_log(&format!(
        "database {}: jobs in queue 3 will not run: queue_count is 1",
        a.name
    ));
    // A whole poll of a since, and the claims for every queue that follow it, left it alone.
    broker.wait_poll(&a);
    assert_eq!(a.status(beyond), "pending");
    assert_eq!(serving_pid(&a), Some(broker.pid()));
    assert_eq!(serving_pid(&b), Some(broker.pid()));
}

#[test]
fn terminating_every_broker_connection_mid_run_loses_nothing() {
    let db = TestDb::new();
    // A second run of a job would fail on the key, so exactly-once shows in the statuses.
    db.exec("CREATE TABLE t (job int PRIMARY KEY)");
    let config = db.config("", "  queue_timer_sec: 2\n");
    let broker = BrokerProcess::start_serving(&db, &config);
    let n = 30;
    for i in 0..n {
        db.add_job(&format!(
            "broker_add_job('j{i}', 'INSERT INTO t VALUES ({i}); SELECT pg_sleep(0.1)', {})",
            1 + i % 2
        ));
    }
    let serving = || broker.log().matches("serving as instance").count();
    for round in 1..=2 {
        wait_until("some jobs to complete", || {
            count_status(&db, "completed") >= 8 * round
        });
        // Each kill hits a serving listener: after the first, wait until it is back.
        wait_until("the listener to serve", || serving() as i64 >= round);
        let killed = terminate_broker_connections(&db);
        assert!(killed >= 2, "terminated only {killed} connection(s)");
    }
    wait_until("every job to complete", || {
        count_status(&db, "completed") == n
    });
    assert_eq!(count_status(&db, "failed"), 0, "{}", broker.log());
    assert_eq!(
        db.value("SELECT count(*) FROM t").as_deref(),
        Some(&*n.to_string())
    );
    // The last jobs may end while the listener is still reconnecting.
    wait_until("the listener to serve again after the second kill", || {
        serving() >= 3
    });
    let log = broker.log();
    assert!(log.contains("listener connection lost"), "{log}");
    assert!(log.matches("serving as instance").count() >= 3, "{log}");
    // Exactly one active instance, and it is this process.
    assert_eq!(serving_pid(&db), Some(broker.pid()));
}

#[test]
fn restarted_server_is_reconnected_and_jobs_finish() {
    let mut cluster = Cluster::start(&[]);
    cluster.exec("postgres", "CREATE DATABASE app");
    cluster.exec("app", "CREATE TABLE t (job int PRIMARY KEY)");
    let dir = cluster.dir().to_path_buf();
    let config = write_config(
        &dir,
        "restart.yaml",
        &[db_entry("app", "127.0.0.1", cluster.port(), 2)],
        "",
    );
    let broker = BrokerProcess::start(&config);
    broker.wait_log("database app: serving as instance");
    let n = 20;
    for i in 0..n {
        cluster.exec(
            "app",
            &format!(
                "SELECT broker_add_job('j{i}', 'INSERT INTO t VALUES ({i}); SELECT pg_sleep(0.2)', {})",
                1 + i % 2
            ),
        );
    }
    let completed = |c: &Cluster| -> i64 {
        c.value(
            "app",
            "SELECT count(*) FROM broker_jobs WHERE status = 'completed'",
        )
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
    };
    wait_until("some jobs to complete", || completed(&cluster) >= 4);
    let port = cluster.port();
    let restarted = Instant::now();
    cluster.restart();
    assert_eq!(cluster.port(), port, "the restarted server moved");
    wait_until("every job to complete after the restart", || {
        completed(&cluster) == n
    });
    println!(
        "all jobs completed {:.1}s after the restart began",
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(
        cluster.value("app", "SELECT count(*) FROM t").as_deref(),
        Some(&*n.to_string())
    );
    let log = broker.log();
    assert!(
        log.contains("database app: listener connection lost"),
        "{log}"
    );
    assert!(broker.is_running(), "{log}");
}

#[test]
fn database_down_at_start_is_served_once_it_comes_up() {
    let served = TestDb::new();
    let mut cluster = Cluster::start(&[]);
    cluster.exec("postgres", "CREATE DATABASE late");
    let late_port = cluster.port();
    cluster.stop();
    let config = write_config(
        served.dir(),
        "late.yaml",
        &[
            db_entry(&served.name, &host(), port(), 1),
            db_entry("late", "127.0.0.1", late_port, 1),
        ],
        "",
    );
    let broker = BrokerProcess::start(&config);
    broker.wait_log(&format!("database {}: serving as instance", served.name));
    broker.wait_log("database late: cannot connect");
    let id = served.add_job("broker_add_job('meanwhile', 'SELECT 1')");
    served.wait_status(id, "completed");
    // Several tries fail meanwhile (after 1 s, then 2 s more), logged once.
    broker.wait_log("database late: connection try 3 failed");
    let log = broker.log();
    assert_eq!(
        log.matches("database late: cannot connect").count()
            - log.matches("connection try").count(),
        1,
        "one line per state change, not per try:\n{log}"
    );
    assert!(log.matches("connection try").count() >= 2, "{log}");
    let up = Instant::now();
    cluster.start_again();
    assert_eq!(cluster.port(), late_port, "the server came back elsewhere");
    broker.wait_log("database late: serving as instance");
    println!(
        "served {:.1}s after the server came up",
        up.elapsed().as_secs_f64()
    );
    cluster.exec("late", "SELECT broker_add_job('late', 'SELECT 1')");
    wait_until("the job on the late database", || {
        cluster
            .value("late", "SELECT status FROM broker_jobs")
            .as_deref()
            == Some("completed")
    });
    assert!(broker.is_running());
}

#[test]
fn standby_takes_over_within_seconds_of_kill_9() {
    let db = TestDb::new();
    db.exec("CREATE TABLE t (x int); CREATE SEQUENCE tries");
    let config = db.config("", "");
    let mut active = BrokerProcess::start(&config);
    active.wait_log("serving as instance");
    let standby = BrokerProcess::start_args(&config, &["start", "--standby"]);
    standby.wait_log("waiting to take over (standby)");
    assert!(
        standby.log().contains(&format!("pid {}", active.pid())),
        "the standby names whom it waits for:\n{}",
        standby.log()
    );
    assert_eq!(serving_pid(&db), Some(active.pid()));
    // A job in flight when the active one dies: rolled back, run again by the standby.
    let id = db.add_job(
        "broker_add_job('long', 'SELECT pg_sleep(CASE WHEN nextval(''tries'') = 1 THEN 60 ELSE 0 END); INSERT INTO t VALUES (1)')",
    );
    started(&db, "tries");
    active.kill();
    let killed = Instant::now();
    wait_until("the standby to take over", || {
        serving_pid(&db) == Some(standby.pid())
    });
    let took = killed.elapsed();
    println!("standby took over {:.2}s after kill -9", took.as_secs_f64());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    db.wait_status(id, "completed");
    assert_eq!(db.value("SELECT count(*) FROM t").as_deref(), Some("1"));
    assert!(standby.is_running());
}

/// Which of `pids` serves each database (None: nobody or someone else).
fn owners(dbs: &[TestDb]) -> Vec<Option<u32>> {
    dbs.iter().map(serving_pid).collect()
}

#[test]
fn two_standby_processes_share_four_databases_and_survive_one_death() {
    let dbs: Vec<TestDb> = (0..4).map(|_| TestDb::new()).collect();
    let entries: Vec<String> = dbs
        .iter()
        .map(|d| db_entry(&d.name, &host(), port(), 1))
        .collect();
    let config = write_config(dbs[0].dir(), "share.yaml", &entries, "  standby: true\n");
    // The first process alone takes all four.
    let mut first = BrokerProcess::start(&config);
    wait_until("the first process to serve all four", || {
        owners(&dbs).iter().all(|o| *o == Some(first.pid()))
    });
    // Jobs keep running while databases move: none lost, none run twice.
    let n = 12;
    for d in &dbs {
        d.exec("CREATE TABLE t (job int PRIMARY KEY)");
        for i in 0..n {
            d.add_job(&format!(
                "broker_add_job('j{i}', 'INSERT INTO t VALUES ({i}); SELECT pg_sleep(0.25)')"
            ));
        }
    }
    // A second one joins: the first hands databases over until each serves its share.
    let second = BrokerProcess::start(&config);
    let pids = [first.pid(), second.pid()];
    let joined = Instant::now();
    let serves = |pid: u32| owners(&dbs).iter().filter(|o| **o == Some(pid)).count();
    wait_until("the second process to get a database", || {
        serves(pids[1]) >= 1
    });
    println!(
        "first hand-over after {:.1}s",
        joined.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(45);
    while serves(pids[0]) != 2 || serves(pids[1]) != 2 {
        assert!(
            Instant::now() < deadline,
            "no even split: {:?}\n{}\n{}",
            owners(&dbs),
            first.log(),
            second.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "split two and two after {:.1}s: {:?}",
        joined.elapsed().as_secs_f64(),
        owners(&dbs)
    );
    assert!(first.log().contains("handed over"), "{}", first.log());
    for d in &dbs {
        // Each database is served by exactly one process (one active instance).
        assert_eq!(
            d.value("SELECT count(*) FROM broker_queueinstance WHERE status = 'active'")
                .as_deref(),
            Some("1")
        );
        wait_until("the jobs of every database", || {
            count_status(d, "completed") == n
        });
        assert_eq!(count_status(d, "failed"), 0);
        assert_eq!(
            d.value("SELECT count(*) FROM t").as_deref(),
            Some(&*n.to_string())
        );
    }
    first.kill();
    let killed = Instant::now();
    wait_until("the survivor to serve all four", || {
        owners(&dbs).iter().all(|o| *o == Some(pids[1]))
    });
    let took = killed.elapsed();
    println!(
        "survivor served all four {:.2}s after kill -9",
        took.as_secs_f64()
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    for d in &dbs {
        let id = d.add_job("broker_add_job('after', 'SELECT 1')");
        d.wait_status(id, "completed");
    }
    drop(second);
}

#[test]
fn without_standby_a_database_held_elsewhere_refuses_the_whole_start() {
    let (free, held) = (TestDb::new(), TestDb::new());
    let holder_config = write_config(
        held.dir(),
        "holder.yaml",
        &[db_entry(&held.name, &host(), port(), 1)],
        "",
    );
    let holder = BrokerProcess::start(&holder_config);
    holder.wait_log("serving as instance");
    let both = write_config(
        free.dir(),
        "both.yaml",
        &[
            db_entry(&free.name, &host(), port(), 1),
            db_entry(&held.name, &host(), port(), 1),
        ],
        "",
    );
    let mut second = BrokerProcess::start(&both);
    assert_eq!(second.wait_exit(HANG).code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(
        log.contains(&format!(
            "database {}: another broker instance is active",
            held.name
        )),
        "{log}"
    );
    assert!(log.contains(&format!("pid {}", holder.pid())), "{log}");
    // The free database was let go again.
    assert_eq!(serving_pid(&free), None);
    assert_eq!(serving_pid(&held), Some(holder.pid()));
}

#[test]
fn crashed_jobs_outside_a_transaction_fail_or_run_again_as_submitted() {
    let db = TestDb::new();
    db.exec("CREATE SEQUENCE plain_tries; CREATE SEQUENCE safe_tries");
    let config = db.config("", "");
    let mut first = BrokerProcess::start(&config);
    first.wait_log("serving as instance");
    let sleeper =
        |seq: &str| format!("SELECT pg_sleep(CASE WHEN nextval(''{seq}'') = 1 THEN 60 ELSE 0 END)");
    let plain = db.add_job(&format!(
        "broker_add_job('plain', '{}', 1, transactional => false)",
        sleeper("plain_tries")
    ));
    let safe = db.add_job(&format!(
        "broker_add_job('safe', '{}', 2, transactional => false, retry_on_crash => true)",
        sleeper("safe_tries")
    ));
    // Claimed is not yet started: wait until both really run (their first try counted).
    started(&db, "plain_tries");
    started(&db, "safe_tries");
    first.kill();
    let second = BrokerProcess::start(&config);
    second.wait_log("serving as instance");
    db.wait_status(plain, "failed");
    db.wait_status(safe, "completed");
    // The log says what recovery did: one job back to pending, and which one it failed.
    second.wait_log("recovered 1 job(s) left running by a dead instance or a lost connection");
    second.wait_log(&format!("non-transactional job(s) [{plain}] were running"));
    assert_eq!(
        db.value(&format!(
            "SELECT error_text FROM broker_jobs WHERE id = {plain}"
        ))
        .as_deref(),
        Some("instance died while running")
    );
    assert_eq!(
        db.value("SELECT last_value FROM plain_tries").as_deref(),
        Some("1"),
        "never run twice"
    );
    assert_eq!(
        db.value("SELECT last_value FROM safe_tries").as_deref(),
        Some("2")
    );
}

/// When the broker's connection to the replica's `app` last began its recovery check, if
/// that was after `since` (both in the server's clock, as text).
fn recovery_check_after(replica: &Cluster, since: &str) -> Option<String> {
    replica.value(
        "app",
        &format!(
            "SELECT max(query_start)::text FROM pg_stat_activity
              WHERE datname = 'app' AND application_name = 'pgsql-broker'
                AND query = 'SELECT pg_is_in_recovery()' AND query_start > '{since}'"
        ),
    )
}

#[test]
fn a_replica_is_refused_until_it_is_promoted() {
    let primary = Cluster::start(&[]);
    primary.exec("postgres", "CREATE DATABASE app");
    primary.exec("app", "CREATE TABLE t (x int)");
    let replica = Cluster::replica_of(&primary);
    assert_eq!(
        replica
            .value("app", "SELECT pg_is_in_recovery()")
            .as_deref(),
        Some("t")
    );
    let config = write_config(
        replica.dir(),
        "replica.yaml",
        &[db_entry("app", "127.0.0.1", replica.port(), 1)],
        "",
    );
    let broker = BrokerProcess::start(&config);
    broker.wait_log("database app: the server at 127.0.0.1");
    assert!(broker.log().contains("is in recovery"), "{}", broker.log());
    // It keeps looking (every notify_retry_seconds) on its connection: two more looks, as the
    // replica's pg_stat_activity shows them, pass without serving or another line.
    let mut since = replica.value("app", "SELECT now()::text").expect("now");
    for _ in 0..2 {
        wait_until(
            "the broker to look for recovery again",
            || match recovery_check_after(&replica, &since) {
                Some(at) => {
                    since = at;
                    true
                }
                None => false,
            },
        );
    }
    assert!(broker.is_running(), "{}", broker.log());
    let log = broker.log();
    assert!(!log.contains("serving as instance"), "{log}");
    assert_eq!(log.matches("is in recovery").count(), 1, "{log}");
    // Promoted, it is served: the schema is installed and jobs run.
    replica.promote();
    broker.wait_log("database app: serving as instance");
    replica.exec(
        "app",
        "SELECT broker_add_job('promoted', 'INSERT INTO t VALUES (1)')",
    );
    wait_until("the job on the promoted server", || {
        replica.value("app", "SELECT count(*) FROM t").as_deref() == Some("1")
    });
    drop(primary);
}

#[test]
fn the_pool_keeps_at_most_max_idle_conns_idle() {
    let db = TestDb::new();
    let mut target = pgsql_broker::DatabaseConfig::new(&db.name);
    target.host = host();
    target.port = port();
    target.user = user();
    target.max_open_conns = 6;
    target.max_idle_conns = 2;
    let pool = pgsql_broker::test_support::try_pool(&target).expect("pool");
    let busy: Vec<_> = (0..5).map(|_| pool.get().expect("connection")).collect();
    assert_eq!(pool.state().connections, 5);
    drop(busy);
    let state = pool.state();
    assert_eq!((state.idle_connections, state.connections), (2, 2));
    // Taken and given back again, still two.
    let again: Vec<_> = (0..2).map(|_| pool.get().expect("connection")).collect();
    drop(again);
    assert_eq!(pool.state().connections, 2);
}
