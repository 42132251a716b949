//! Configuration errors exit 2 and name the problem; passwords never reach the logs.

mod common;
use common::*;

fn start_with(db: &TestDb, yaml: &str) -> Output {
    let path = db.write_file("bad.yaml", yaml);
    run_cli(&["--config", path.to_str().unwrap_or_default(), "start"])
}

#[test]
fn unknown_key_exits_2_naming_it() {
    let db = TestDb::new();
    let out = start_with(&db, "databases:\n  - database: x\n    queue_cuont: 3\n");
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("queue_cuont"), "{}", out.stderr);
}

#[test]
fn bad_type_exits_2_naming_the_key() {
    let db = TestDb::new();
    let out = start_with(&db, "databases:\n  - database: x\n    queue_count: many\n");
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("queue_count"), "{}", out.stderr);
    let out = start_with(
        &db,
        "databases:\n  - database: x\nbroker:\n  queue_timer_sec: -4\n",
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("queue_timer_sec"), "{}", out.stderr);
}

#[test]
fn missing_file_exits_2_naming_it() {
    let out = run_cli(&["--config", "/nonexistent/broker.yaml", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/broker.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn unknown_environment_variable_exits_2() {
    let db = TestDb::new();
    let config = db.config("", "");
    let out = run_cli_env(
        &["--config", config.to_str().unwrap_or_default(), "status"],
        &[("PGSQL_BROKER_QUEUE_TIMER", "5")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("PGSQL_BROKER_QUEUE_TIMER"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_flag_and_bad_log_level_exit_2() {
    let out = run_cli(&["--no-such-flag", "start"]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let db = TestDb::new();
    let config = db.config("", "");
    let out = run_cli(&[
        "--config",
        config.to_str().unwrap_or_default(),
        "--log-level",
        "loud",
        "status",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("--log-level"), "{}", out.stderr);
}

#[test]
fn version_prints_and_exits_0() {
    let out = run_cli(&["--version"]);
    assert!(out.status.success());
    assert!(out.stdout.starts_with("pgsql-broker "), "{}", out.stdout);
}

#[test]
fn libpq_environment_is_used_without_a_config_file() {
    let db = TestDb::new();
    let port = port().to_string();
    let (host, user) = (host(), user());
    let env = [
        ("PGHOST", host.as_str()),
        ("PGPORT", port.as_str()),
        ("PGUSER", user.as_str()),
        ("PGDATABASE", db.name.as_str()),
    ];
    let out = run_cli_env(&["install"], &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains(&db.name), "{}", out.stdout);
    assert_eq!(
        db.value("SELECT count(*) FROM broker_schema_version")
            .as_deref(),
        Some(schema_versions().as_str())
    );
}

/// The password is set in the file and in the environment, the broker logs at trace level,
/// fails to connect once (wrong port) and runs a job; the password appears in no output.
#[test]
fn password_never_appears_in_logs() {
    const FILE_SECRET: &str = "file-Secr3t-pw";
    const ENV_SECRET: &str = "env-Secr3t-pw";
    let db = TestDb::new();

    // A failed connection attempt, with the password in the config.
    let bad = db.write_file(
        "bad-port.yaml",
        &format!(
            "databases:\n  - database: {}\n    host: 127.0.0.1\n    port: 1\n    password: {FILE_SECRET}\nlogging:\n  level: trace\n",
            db.name
        ),
    );
    let out = run_cli(&["--config", bad.to_str().unwrap_or_default(), "start"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert!(
        !out.stderr.contains(FILE_SECRET) && !out.stdout.contains(FILE_SECRET),
        "{}",
        out.stderr
    );

    // A working broker at trace level, with the password from the environment.
    let config = db.config("    password: placeholder\n", "");
    let var = format!("PGSQL_BROKER_DB_{}_PASSWORD", db.name.to_uppercase());
    let mut broker = BrokerProcess::start_env(&config, &[(&var, ENV_SECRET)]);
    broker.wait_log("serving as instance");
    let id = db.add_job("broker_add_job('secret test', 'SELECT 1')");
    db.wait_status(id, "completed");
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success());
    let log = broker.log();
    assert!(log.contains(&format!("job {id} completed")), "{log}");
    assert!(
        !log.contains(ENV_SECRET) && !log.contains("placeholder"),
        "{log}"
    );
}

/// `start --log-format json` (the option after the command) writes one JSON object per line,
/// each with time, level, target and message, that a JSON parser reads back exactly, even a
/// job error holding quotes, backslashes, line breaks, tabs, control characters and non-ASCII.
#[test]
fn json_log_lines_parse() {
    let db = TestDb::new();
    let config = db.config("", "");
    db.install();
    let mut broker = BrokerProcess::spawn_in(
        db.dir(),
        &[
            "start",
            "--log-format",
            "json",
            "--config",
            config.to_str().unwrap_or_default(),
        ],
        &[],
    );
    broker.wait_log("serving as instance");
    let body = r#"BEGIN RAISE EXCEPTION USING MESSAGE = E'bad "q" \\ back\nline2\ttab\x01 é'; END"#;
    let id = db.add_job(&format!(
        "broker_add_job('tricky', '{}', 1, 0, 'plpgsql')",
        body.replace('\'', "''")
    ));
    db.wait_status(id, "failed");
    broker.wait_log(&format!("job {id} failed"));
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success());
    let log = broker.log();
    assert!(log.lines().count() >= 3, "{log}");
    let mut messages = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        for key in ["ts", "level", "target", "msg"] {
            assert!(
                obj.get(key).is_some_and(|f| f.is_string()),
                "{key} in {line}"
            );
        }
        let ts = obj["ts"].as_str().unwrap_or_default();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{line}");
        messages.push(obj["msg"].as_str().unwrap_or_default().to_string());
    }
    assert!(log.contains("\"level\":\"INFO\""), "{log}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("configuration: config file")),
        "{messages:?}"
    );
    let raw = "bad \"q\" \\ back\nline2\ttab\u{1} é";
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("job {id} failed")) && m.contains(raw)),
        "{messages:#?}"
    );
}
