//! The command line as users type it: the original Go broker's README command lines (options
//! after the command), config discovery in the working directory, databases defined by
//! environment variables alone, and the messages of `status` and `add` on the rough edges.

mod common;
use common::*;

/// The config of `db.config` with another log level, so a `--log-level` flag shows.
fn config_at_level(db: &TestDb, name: &str, level: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(db.config("", "")).expect("read config");
    std::fs::remove_file(db.dir().join("broker.yaml")).expect("remove broker.yaml");
    db.write_file(
        name,
        &text.replace("level: debug", &format!("level: {level}")),
    )
}

/// `./bin/pgsql-broker install --config broker.yaml`, `install --verify-only --config
/// broker.yaml` and `start --config broker.yaml`, exactly as the Go broker's README types them.
#[test]
fn go_readme_command_lines_work() {
    let db = TestDb::new();
    db.config("", "");
    let dir = db.dir();

    let out = run_cli_in(dir, &["install", "--config", "broker.yaml"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(&db.name), "{}", out.stdout);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schema_version")
            .as_deref(),
        Some(schema_versions().as_str())
    );

    let out = run_cli_in(
        dir,
        &["install", "--verify-only", "--config", "broker.yaml"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("installed and complete"),
        "{}",
        out.stdout
    );

    let mut broker = BrokerProcess::spawn_in(dir, &["start", "--config", "broker.yaml"], &[]);
    broker.wait_log("serving as instance");
    let id = db.add_job("broker_add_job('readme', 'SELECT 1')");
    db.wait_status(id, "completed");
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "{}", broker.log());
    assert!(
        broker
            .log()
            .contains("configuration: config file broker.yaml (named by --config)"),
        "{}",
        broker.log()
    );
}

/// `./bin/pgsql-broker start --log-level debug` in a directory holding broker.yaml: the file
/// is found without `-c`, the flag after the command takes effect, and the broker serves the
/// configured database (not `postgres` from the libpq defaults).
#[test]
fn start_with_log_level_after_the_command_finds_broker_yaml() {
    let db = TestDb::new();
    config_at_level(&db, "broker.yaml", "warn");
    let mut broker = BrokerProcess::spawn_in(db.dir(), &["start", "--log-level", "debug"], &[]);
    broker.wait_log("serving as instance");
    let id = db.add_job("broker_add_job('found', 'SELECT 1')");
    db.wait_status(id, "completed");
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "{}", broker.log());
    let log = broker.log();
    assert!(
        log.contains("configuration: config file ./broker.yaml (found in the working directory)"),
        "{log}"
    );
    assert!(log.contains("[DEBUG]"), "--log-level debug ignored:\n{log}");
    // The schema went where the file says, and the instance registered there.
    assert_eq!(
        db.value("SELECT count(*) FROM broker_queueinstance")
            .as_deref(),
        Some("1")
    );
}

/// Without a broker.yaml, broker.json in the working directory is the config; the commands
/// that do not start the broker find it too.
#[test]
fn broker_json_in_the_working_directory_is_found() {
    let db = TestDb::new();
    db.write_file(
        "broker.json",
        &format!(
            r#"{{"databases": [{{"name": "j", "host": "{}", "port": {}, "user": "{}", "database": "{}"}}]}}"#,
            host(),
            port(),
            user(),
            db.name
        ),
    );
    let out = run_cli_in(db.dir(), &["install"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.starts_with("j: schema installed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr
            .contains("config file ./broker.json (found in the working directory)"),
        "{}",
        out.stderr
    );
    let out = run_cli_in(db.dir(), &["add", "SELECT 1", "--name", "json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let id: i64 = out.stdout.trim().parse().expect("job id");
    assert_eq!(
        db.value(&format!("SELECT job_name FROM broker_jobs WHERE id = {id}"))
            .as_deref(),
        Some("json")
    );
}

/// The system-wide file is the last place looked at (moved here by
/// `PGSQL_BROKER_SYSTEM_CONFIG`, as the harness keeps this machine's /etc out of the tests),
/// and a broker.yaml in the working directory comes before it.
#[test]
fn system_config_is_the_fallback() {
    let db = TestDb::new();
    let system = config_at_level(&db, "system.yaml", "info");
    let system = system.to_str().unwrap_or_default();
    let cwd = empty_dir();
    let out = run_cli_in(
        &cwd,
        &["status", "--log-level", "debug"],
        &[("PGSQL_BROKER_SYSTEM_CONFIG", system)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("{}: not installed", db.name)),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains("(the system-wide file)"),
        "{}",
        out.stderr
    );

    let local = TestDb::new();
    local.config("", "");
    local.install();
    let out = run_cli_in(
        local.dir(),
        &["status"],
        &[("PGSQL_BROKER_SYSTEM_CONFIG", system)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("{}: no active instance", local.name)),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&db.name), "{}", out.stdout);
}

/// Global options before or after the command, in any order and any form; `-h` is `--help`.
#[test]
fn global_options_in_any_place() {
    let db = TestDb::new();
    let config = db.config("", "");
    db.install();
    let c = config.to_str().unwrap_or_default();
    let config_eq = format!("--config={c}");
    for args in [
        &["status", "-c", c][..],
        &["status", "--log-format", "json", "--config", c],
        &["--log-level", "warn", "status", &config_eq],
        &[
            "-c",
            c,
            "status",
            "--database",
            &db.name,
            "--log-level",
            "ERROR",
        ],
    ] {
        let out = run_cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", out.stderr);
        assert!(
            out.stdout
                .contains(&format!("{}: no active instance", db.name)),
            "{args:?}: {}",
            out.stdout
        );
    }
    // A job named like an option is still a job name, and the option after the SQL is global.
    let out = run_cli(&["add", "--name", "--config", "SELECT 1", "--config", c]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let id = out.stdout.trim();
    assert_eq!(
        db.value(&format!("SELECT job_name FROM broker_jobs WHERE id = {id}"))
            .as_deref(),
        Some("--config")
    );

    for (args, usage) in [
        (&["-h"][..], "Usage: pgsql-broker [-c <config>]"),
        (&["start", "-h"], "Usage: pgsql-broker start"),
        (
            &["install", "--config", c, "-h"],
            "Usage: pgsql-broker install",
        ),
        (&["add", "--help"], "Usage: pgsql-broker add"),
    ] {
        let out = run_cli(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", out.stderr);
        assert!(out.stdout.starts_with(usage), "{args:?}: {}", out.stdout);
    }
    let out = run_cli(&["-h"]);
    assert!(
        out.stdout
            .contains("Global options may also follow the command"),
        "{}",
        out.stdout
    );

    let out = run_cli(&["start", "--config"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("--config needs a value"),
        "{}",
        out.stderr
    );
    let out = run_cli(&["start", "--config", c, "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--bogus"), "{}", out.stderr);
}

/// Two databases from `PGSQL_BROKER_DB_<NAME>_<KEY>` variables alone: no file anywhere, and
/// the libpq variables (which would name a third database) are not used.
#[test]
fn two_databases_from_environment_variables_alone() {
    let (one, two) = (TestDb::new(), TestDb::new());
    let (host, port, user) = (host(), port().to_string(), user());
    let mut env: Vec<(String, String)> = Vec::new();
    for (name, db) in [("DB1", &one), ("REPORTS_DB", &two)] {
        for (key, value) in [
            ("DATABASE", db.name.as_str()),
            ("HOST", host.as_str()),
            ("PORT", port.as_str()),
            ("USER", user.as_str()),
            ("QUEUE_COUNT", "2"),
        ] {
            env.push((format!("PGSQL_BROKER_DB_{name}_{key}"), value.to_string()));
        }
    }
    env.push(("PGDATABASE".into(), "postgres".into()));
    env.push(("PGHOST".into(), host.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    let out = run_cli_in(one.dir(), &["install"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("db1: schema installed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("reports_db: schema installed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stderr.contains(
            "no config file; database(s) db1, reports_db from PGSQL_BROKER_DB_* variables"
        ),
        "{}",
        out.stderr
    );

    let mut broker = BrokerProcess::spawn_in(one.dir(), &["start"], &env);
    wait_until("both databases served", || {
        broker.log().matches("serving as instance").count() == 2
    });
    let first = one.add_job("broker_add_job('one', 'SELECT 1')");
    let out = run_cli_in(
        one.dir(),
        &["add", "SELECT 2", "--database", "reports_db"],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    let second: i64 = out.stdout.trim().parse().expect("job id");
    one.wait_status(first, "completed");
    two.wait_status(second, "completed");
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "{}", broker.log());

    // A variable for a name that no variable defines is an error naming it.
    let mut bad = env.clone();
    bad.push(("PGSQL_BROKER_DB_DB3_HOST", "elsewhere"));
    let out = run_cli_in(one.dir(), &["status"], &bad);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("PGSQL_BROKER_DB_DB3_HOST")
            && out.stderr.contains("PGSQL_BROKER_DB_DB3_DATABASE"),
        "{}",
        out.stderr
    );
}

/// Levels in any case, from the environment, the file and the flag.
#[test]
fn log_levels_are_case_insensitive() {
    let db = TestDb::new();
    let config = config_at_level(&db, "levels.yaml", "WARN");
    let c = config.to_str().unwrap_or_default();
    db.install();
    let out = run_cli_env(&["status", "-c", c], &[("PGSQL_BROKER_LOG_LEVEL", "DEBUG")]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("[DEBUG] configuration:"),
        "{}",
        out.stderr
    );
    let out = run_cli(&["status", "-c", c, "--log-level", "Debug"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("[DEBUG]"), "{}", out.stderr);
    // WARN from the file: no debug line.
    let out = run_cli(&["status", "-c", c]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("[DEBUG]"), "{}", out.stderr);
    let out = run_cli_env(&["status", "-c", c], &[("PGSQL_BROKER_LOG_LEVEL", "LOUD")]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("PGSQL_BROKER_LOG_LEVEL"),
        "{}",
        out.stderr
    );
}

/// `status` on a database without the schema says so and how to fix it, not SQLSTATE 42P01.
#[test]
fn status_on_an_uninstalled_database() {
    let db = TestDb::new();
    let config = db.config("", "");
    let out = run_cli(&["status", "--config", config.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("{}: not installed — run `pgsql-broker install`", db.name)
    );
    assert!(
        !out.stderr.contains("42P01") && !out.stdout.contains("42P01"),
        "{}",
        out.stderr
    );
    // Half an install: pointed at install --verify-only, still no raw error on stderr.
    db.install();
    db.exec("DROP TABLE broker_queueinstance CASCADE");
    let out = run_cli(&["status", "--config", config.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stdout.contains("schema incomplete") && out.stdout.contains("--verify-only"),
        "{}",
        out.stdout
    );
}

/// A job in a queue above `queue_count` (submitted in SQL) shows in `status` with the reason it
/// waits; `add` refuses such a queue (and queue 0) up front, naming `--queue`.
#[test]
fn status_explains_jobs_above_queue_count() {
    let db = TestDb::new();
    let config = db.config("", ""); // queue_count: 2
    let c = config.to_str().unwrap_or_default();
    db.install();
    db.add_job("broker_add_job('lost', 'SELECT 1', 5)");
    db.add_job("broker_add_job('fine', 'SELECT 1', 2)");
    let out = run_cli(&["status", "-c", c]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "{}: queue 5 pending: 1 (waiting: no worker serves queue 5, queue_count is 2",
            db.name
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains(&format!("{}: queue 2 pending: 1\n", db.name)),
        "{}",
        out.stdout
    );

    for queue in ["5", "0", "-1"] {
        let out = run_cli(&["add", "SELECT 1", "--queue", queue, "-c", c]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "--queue {queue}: {}",
            out.stderr
        );
        assert!(
            out.stderr.starts_with(&format!(
                "pgsql-broker: --queue {queue}: database {}",
                db.name
            )),
            "{}",
            out.stderr
        );
        assert!(out.stderr.contains("queue_count"), "{}", out.stderr);
        assert!(!out.stderr.contains("Failing row"), "{}", out.stderr);
    }
    assert_eq!(
        db.value("SELECT count(*) FROM broker_jobs").as_deref(),
        Some("2")
    );
}

/// `--database nope` is a usage error on stderr (exit 2) listing the configured names, not a
/// log line.
#[test]
fn unknown_database_is_a_usage_error() {
    let db = TestDb::new();
    let config = db.config("", "");
    let c = config.to_str().unwrap_or_default();
    for args in [
        &["status", "--database", "nope", "-c", c][..],
        &["install", "--database", "nope", "-c", c],
        &["add", "SELECT 1", "--database", "nope", "-c", c],
    ] {
        let out = run_cli(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.starts_with(&format!(
                "pgsql-broker: --database nope: no such database in the configuration (configured: {})",
                db.name
            )),
            "{args:?}: {}",
            out.stderr
        );
    }
}

/// When the only database cannot be reached at start, the log says the broker exits rather
/// than promising retries it will not make.
#[test]
fn unreachable_at_start_says_it_exits() {
    let db = TestDb::new();
    let one = db.write_file(
        "unreachable.yaml",
        &format!(
            "databases:\n  - database: {}\n    host: 127.0.0.1\n    port: 1\nbroker:\n  notify_retry_seconds: 30s\n",
            db.name
        ),
    );
    let out = run_cli(&["start", "--config", one.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert!(
        out.stderr.contains("exiting without retrying"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("retrying in"), "{}", out.stderr);

    let two = db.write_file(
        "unreachable2.yaml",
        &format!(
            "databases:\n  - {{name: a, database: {0}, host: 127.0.0.1, port: 1}}\n  - {{name: b, database: {0}, host: 127.0.0.1, port: 1}}\n",
            db.name
        ),
    );
    let out = run_cli(&["start", "--config", two.to_str().unwrap_or_default()]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no configured database could be reached"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("else the broker exits"),
        "{}",
        out.stderr
    );
}
