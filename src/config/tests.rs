//! Unit tests of the configuration; the module is declared under `#[cfg(test)]`.

use std::collections::BTreeMap;
use std::path::Path;

use super::load::SYSTEM_CONFIG;
use super::*;

pub(super) fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgsql-broker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn durations_parse_like_go() {
    assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
    assert_eq!(parse_duration("2.5s").unwrap(), Duration::from_millis(2500));
    assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
    assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    assert!(parse_duration("m")
        .unwrap_err()
        .contains("expected a number"));
    assert!(parse_duration("5").is_ok());
    assert!(parse_duration("").is_err());
    assert!(parse_duration("10").is_ok());
    assert!(parse_duration("3 s").is_err());
}

#[test]
fn yaml_defaults_are_the_seeds() {
    let path = write("defaults.yaml", "databases:\n  - database: app\n");
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    let db = &c.databases[0];
    assert_eq!(db.name, "app");
    assert_eq!(db.port, 5432);
    assert_eq!(db.sslmode, SslMode::Disable);
    assert_eq!(
        (db.max_open_conns, db.max_idle_conns, db.queue_count),
        (25, 5, 4)
    );
    assert_eq!(db.conn_max_lifetime, Duration::from_secs(300));
    assert_eq!(db.conn_max_idle_time, Duration::from_secs(600));
    let b = &c.broker;
    assert_eq!(
        (
            b.fetch_query_que_size,
            b.queue_timer_sec,
            b.queue_buffer_size
        ),
        (100, 10, 50)
    );
    assert_eq!(b.worker_idle_timeout_sec, 10);
    assert_eq!(b.notify_retry_seconds, Duration::from_secs(30));
    assert_eq!(c.logging.format, LogFormat::Text);
}

#[test]
fn json_is_accepted_by_extension() {
    let path = write(
        "c.json",
        r#"{"databases":[{"database":"app","conn_max_lifetime":"1h"}],
        "logging":{"format":"json","level":"debug"}}"#,
    );
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(c.databases[0].conn_max_lifetime, Duration::from_secs(3600));
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.level, LogLevel::Debug);
}

#[test]
fn unknown_and_bad_keys_are_named() {
    let path = write(
        "unknown.yaml",
        "databases:\n  - database: app\n    queue_cuont: 3\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue_cuont"), "{e}");
    let path = write(
        "badtype.yaml",
        "databases:\n  - database: app\n    queue_count: many\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("queue_count"), "{e}");
    let path = write(
        "zero.yaml",
        "databases:\n  - database: app\n    queue_count: 0\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("databases[0].queue_count"), "{e}");
    let path = write(
        "dur.yaml",
        "broker:\n  notify_retry_seconds: soon\ndatabases: [{database: a}]\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("notify_retry_seconds") && e.contains("soon"),
        "{e}"
    );
}

#[test]
fn environment_overrides_file() {
    let path = write(
        "env.yaml",
        "databases:\n  - name: main-db\n    database: app\n",
    );
    let vars = env(&[
        ("PGSQL_BROKER_QUEUE_TIMER_SEC", "3"),
        ("PGSQL_BROKER_LOG_FORMAT", "json"),
        ("PGSQL_BROKER_DB_MAIN_DB_QUEUE_COUNT", "7"),
        ("PGSQL_BROKER_DB_MAIN_DB_PASSWORD", "123"),
        ("PGSQL_BROKER_CONFIG", "/ignored"),
        ("UNRELATED", "x"),
    ]);
    let c = Config::load(Some(&path), &vars).unwrap();
    assert_eq!(c.broker.queue_timer_sec, 3);
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.databases[0].queue_count, 7);
    assert_eq!(c.databases[0].password.as_ref().unwrap().expose(), "123");

    let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_QUEUE_TIMER", "3")])).unwrap_err();
    assert!(e.to_string().contains("PGSQL_BROKER_QUEUE_TIMER"), "{e}");
    let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_QUEUE_TIMER_SEC", "x")])).unwrap_err();
    assert!(
        e.to_string().contains("PGSQL_BROKER_QUEUE_TIMER_SEC"),
        "{e}"
    );
}

#[test]
fn libpq_environment_without_file() {
    let vars = env(&[
        ("PGHOST", "db.example"),
        ("PGPORT", "6543"),
        ("PGUSER", "app"),
        ("PGPASSWORD", "pw"),
    ]);
    let c = Config::load(None, &vars).unwrap();
    let db = &c.databases[0];
    assert_eq!(
        (db.host.as_str(), db.port, db.user.as_str()),
        ("db.example", 6543, "app")
    );
    assert_eq!(
        db.database, "app",
        "PGDATABASE defaults to the user, as in libpq"
    );
    assert_eq!(db.password, Some(Secret::new("pw")));
    let e = Config::load(None, &env(&[("PGPORT", "x")])).unwrap_err();
    assert!(e.to_string().contains("PGPORT"));
}

#[test]
fn world_readable_config_with_password_warns() {
    use std::os::unix::fs::PermissionsExt;
    let path = write(
        "open.yaml",
        "databases:\n  - database: app\n    password: hunter2\n",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    assert!(c.warnings[0].contains("open.yaml") && c.warnings[0].contains("0644"));
    assert!(!c.warnings[0].contains("hunter2"));
    // Group-readable is how packages install it (root:pgsql-broker 0640): no warning.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn tls_keys_parse_and_bad_files_name_their_key() {
    let path = write(
        "tls.yaml",
        "databases:\n  - database: app\n    host: db.example\n    sslmode: verify-full\n    sslrootcert: /nonexistent/ca.pem\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("databases[0].sslrootcert") && e.contains("/nonexistent/ca.pem"),
        "{e}"
    );
    let path = write(
        "pwfile.yaml",
        "databases:\n  - database: app\n    password_file: /nonexistent/pw\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("databases[0].password_file"), "{e}");
    // require without any root certificate encrypts without verifying: no file needed.
    let path = write(
        "require.yaml",
        "databases:\n  - database: app\n    host: db.example\n    sslmode: require\n",
    );
    let c = Config::load(Some(&path), &env(&[("HOME", "/nonexistent")])).unwrap();
    assert_eq!(c.databases[0].sslmode, SslMode::Require);
    let c = Config::load(
        Some(&path),
        &env(&[("PGSQL_BROKER_DB_APP_SSLROOTCERT", "/nonexistent/ca.pem")]),
    )
    .unwrap_err()
    .to_string();
    assert!(c.contains("sslrootcert"), "{c}");
}

/// A password the parser chokes on must not be quoted back in the error.
#[test]
fn parse_errors_do_not_quote_passwords() {
    for (i, text) in [
        "databases:\n  - database: app\n    password: Zq9-sekrit: x\n",
        "databases:\n  - database: app\n    password: \"Zq9-sekrit\n",
        "databases:\n  - database: app\n    password: [Zq9-sekrit]\n",
        "databases:\n  - database: app\n    password: {Zq9-sekrit: 1}\n",
        "databases:\n  - database: app\n    password: Zq9-sekrit\n    bogus: 1\n",
        "databases:\n  - database: app\n    password: Zq9-sekrit\n  port: x\n",
        "{\"databases\": [{\"database\": \"app\", \"password\": \"Zq9-sekrit\"}",
    ]
    .iter()
    .enumerate()
    {
        let path = write(&format!("leak{i}.yaml"), text);
        match Config::load(Some(&path), &env(&[])) {
            Ok(c) => assert!(!format!("{c:?}").contains("Zq9-sekrit")),
            Err(e) => assert!(!e.to_string().contains("Zq9-sekrit"), "{text:?}: {e}"),
        }
    }
}

#[test]
fn log_levels_and_formats_are_case_insensitive_everywhere() {
    let path = write(
        "levels.yaml",
        "databases: [{database: app}]\nlogging:\n  level: DEBUG\n  format: Json\n",
    );
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(
        (c.logging.level, c.logging.format),
        (LogLevel::Debug, LogFormat::Json)
    );
    let c = Config::load(
        Some(&path),
        &env(&[
            ("PGSQL_BROKER_LOG_LEVEL", "Trace"),
            ("PGSQL_BROKER_LOG_FORMAT", "TEXT"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (c.logging.level, c.logging.format),
        (LogLevel::Trace, LogFormat::Text)
    );
    let mut logging = LoggingConfig::default();
    for (text, level) in [
        ("ERROR", LogLevel::Error),
        ("Warn", LogLevel::Warn),
        ("warning", LogLevel::Warn),
        ("info", LogLevel::Info),
    ] {
        logging.set("level", text).unwrap();
        assert_eq!(logging.level, level, "{text}");
    }
    let e = logging.set("level", "loud").unwrap_err();
    assert!(e.contains("loud") && e.contains("debug"), "{e}");
    let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_LOG_LEVEL", "LOUD")])).unwrap_err();
    assert!(e.to_string().contains("PGSQL_BROKER_LOG_LEVEL"), "{e}");
}

#[test]
fn empty_password_in_open_file_does_not_warn() {
    use std::os::unix::fs::PermissionsExt;
    let path = write(
        "empty-pw.yaml",
        "databases:\n  - database: app\n    password: \"\"\n",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn every_database_env_key_is_a_database_key() {
    let mut db = DatabaseConfig::new("app");
    for key in DB_ENV_KEYS {
        if let Err(e) = db.set(&key.to_ascii_lowercase(), "1") {
            assert!(!e.contains("unknown database key"), "{key}: {e}");
        }
    }
    assert_eq!(
        split_db_var("MAIN_DB_PASSWORD_FILE"),
        Some(("MAIN_DB".into(), "PASSWORD_FILE"))
    );
    assert_eq!(
        split_db_var("app_user_password"),
        Some(("APP_USER".into(), "PASSWORD"))
    );
    assert_eq!(split_db_var("_HOST"), None);
    assert_eq!(split_db_var("HOST"), None);
    assert_eq!(split_db_var("DB1_QUEUE_CUONT"), None);
}

#[test]
fn environment_alone_defines_databases() {
    let vars = env(&[
        ("PGSQL_BROKER_DB_DB1_DATABASE", "first"),
        ("PGSQL_BROKER_DB_DB1_HOST", "h1"),
        ("PGSQL_BROKER_DB_DB1_QUEUE_COUNT", "2"),
        ("PGSQL_BROKER_DB_REPORTS_DB_DATABASE", "second"),
        ("PGSQL_BROKER_DB_REPORTS_DB_PORT", "6000"),
        (
            "PGSQL_BROKER_DB_REPORTS_DB_PASSWORD_FILE",
            "/nonexistent/pw",
        ),
        // Not read: the variables define the databases.
        ("PGHOST", "libpq-host"),
        ("PGDATABASE", "libpq-db"),
    ]);
    let mut config = Config::new(Vec::new());
    config.apply_env(&vars).unwrap();
    let dbs = &config.databases;
    assert_eq!(dbs.len(), 2, "{dbs:?}");
    assert_eq!(
        (
            dbs[0].name.as_str(),
            dbs[0].database.as_str(),
            dbs[0].host.as_str()
        ),
        ("db1", "first", "h1")
    );
    assert_eq!(dbs[0].queue_count, 2);
    assert_eq!(
        (dbs[1].name.as_str(), dbs[1].database.as_str(), dbs[1].port),
        ("reports_db", "second", 6000)
    );
    assert_eq!(dbs[1].host, "localhost", "the file's defaults, not PGHOST");
    // Config::load reads them with no file (and checks the password file).
    let e = Config::load(None, &vars).unwrap_err().to_string();
    assert!(e.contains("databases[1].password_file"), "{e}");
    let mut vars = vars;
    vars.remove("PGSQL_BROKER_DB_REPORTS_DB_PASSWORD_FILE");
    let c = Config::load(None, &vars).unwrap();
    let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["db1", "reports_db"]);

    // A name that is no database and defines none is an error naming the variable.
    let e = Config::load(
        None,
        &env(&[
            ("PGSQL_BROKER_DB_DB1_DATABASE", "first"),
            ("PGSQL_BROKER_DB_DB2_HOST", "h2"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("PGSQL_BROKER_DB_DB2_HOST") && e.contains("PGSQL_BROKER_DB_DB2_DATABASE"),
        "{e}"
    );
    let e = Config::load(None, &env(&[("PGSQL_BROKER_DB_DB1_QUEUE_CUONT", "3")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGSQL_BROKER_DB_DB1_QUEUE_CUONT"), "{e}");
}

#[test]
fn without_database_variables_the_libpq_database_takes_overrides() {
    let vars = env(&[
        ("PGDATABASE", "app"),
        ("PGUSER", "u"),
        ("PGSQL_BROKER_DB_APP_QUEUE_COUNT", "9"),
    ]);
    let c = Config::load(None, &vars).unwrap();
    assert_eq!(c.databases.len(), 1);
    assert_eq!(
        (c.databases[0].name.as_str(), c.databases[0].queue_count),
        ("app", 9)
    );
}

#[test]
fn environment_adds_databases_to_a_file() {
    let path = write(
        "plus-env.yaml",
        "databases:\n  - name: main-db\n    database: app\n",
    );
    let (c, source) = Config::discover(
        Some(&path),
        &env(&[
            ("PGSQL_BROKER_DB_MAIN_DB_QUEUE_COUNT", "3"),
            ("PGSQL_BROKER_DB_EXTRA_DATABASE", "extra"),
        ]),
        &[],
    )
    .unwrap();
    let names: Vec<&str> = c.databases.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["main-db", "extra"]);
    assert_eq!(c.databases[0].queue_count, 3);
    assert_eq!(source.env_databases, ["extra"]);
    let line = source.to_string();
    assert!(
        line.contains("plus-env.yaml") && line.contains("--config"),
        "{line}"
    );
    assert!(line.contains("extra"), "{line}");
}

/// `--config`, then `$PGSQL_BROKER_CONFIG`, then the search path in order, then the
/// environment; the search path is injected, so no file on this machine matters.
#[test]
fn discovery_order_first_found_wins() {
    let dir = std::env::temp_dir().join(format!("pgsql-broker-discover-{}", std::process::id()));
    let cwd = dir.join("cwd");
    let etc = dir.join("etc");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let file = |path: &Path, db: &str| {
        std::fs::write(path, format!("databases: [{{database: {db}}}]\n")).unwrap();
        path.to_path_buf()
    };
    let flag = file(&dir.join("flag.yaml"), "from_flag");
    let var = file(&dir.join("var.yaml"), "from_var");
    let yaml = cwd.join("broker.yaml");
    let json = cwd.join("broker.json");
    let system = etc.join("broker.yaml");
    let search = [
        (yaml.clone(), FileOrigin::WorkingDir),
        (json.clone(), FileOrigin::WorkingDir),
        (system.clone(), FileOrigin::System),
    ];
    let vars = env(&[
        ("PGSQL_BROKER_CONFIG", var.to_str().unwrap()),
        ("PGDATABASE", "from_libpq"),
    ]);
    let found = |explicit: Option<&Path>, vars: &BTreeMap<String, String>| {
        let (c, source) = Config::discover(explicit, vars, &search).unwrap();
        (c.databases[0].database.clone(), source, c.warnings)
    };

    // Nothing on the search path: the environment (here libpq's).
    let none = env(&[("PGDATABASE", "from_libpq")]);
    let (db, source, _) = found(None, &none);
    assert_eq!((db.as_str(), &source.file), ("from_libpq", &None));
    assert!(source.to_string().contains("libpq"), "{source}");

    file(&system, "from_system");
    let (db, source, _) = found(None, &none);
    assert_eq!(db, "from_system");
    assert_eq!(source.file, Some((system.clone(), FileOrigin::System)));

    std::fs::write(&json, "{\"databases\": [{\"database\": \"from_json\"}]}").unwrap();
    assert_eq!(found(None, &none).0, "from_json");

    file(&yaml, "from_yaml");
    let (db, source, warnings) = found(None, &none);
    assert_eq!(db, "from_yaml");
    assert_eq!(source.file, Some((yaml.clone(), FileOrigin::WorkingDir)));
    assert!(source.to_string().contains("working directory"), "{source}");
    // A second file in the working directory is named, so it confuses nobody; the
    // system-wide file behind it is not worth a warning.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("broker.json"), "{warnings:?}");

    let (db, source, _) = found(None, &vars);
    assert_eq!(
        (db.as_str(), source.file.map(|f| f.1)),
        ("from_var", Some(FileOrigin::EnvVar))
    );
    let (db, source, _) = found(Some(&flag), &vars);
    assert_eq!(
        (db.as_str(), source.file.map(|f| f.1)),
        ("from_flag", Some(FileOrigin::Flag))
    );

    // An empty $PGSQL_BROKER_CONFIG is unset; a named file must exist.
    let empty = env(&[("PGSQL_BROKER_CONFIG", "")]);
    assert_eq!(found(None, &empty).0, "from_yaml");
    let missing = env(&[("PGSQL_BROKER_CONFIG", "/nonexistent/b.yaml")]);
    let e = Config::discover(None, &missing, &search)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/b.yaml"), "{e}");
    let e = Config::discover(Some(Path::new("/nonexistent/c.yaml")), &none, &search)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/c.yaml"), "{e}");

    // Database variables alone, with nothing found.
    std::fs::remove_dir_all(&dir).unwrap();
    let (c, source) =
        Config::discover(None, &env(&[("PGSQL_BROKER_DB_A_DATABASE", "a")]), &search).unwrap();
    assert_eq!(c.databases[0].name, "a");
    assert_eq!(source.env_databases, ["a"]);
    assert!(source.to_string().contains("no config file"), "{source}");
}

#[test]
fn search_path_system_file_can_be_moved_or_switched_off() {
    let paths = |vars: &[(&str, &str)]| -> Vec<PathBuf> {
        search_path(&env(vars))
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    };
    assert_eq!(
        paths(&[]),
        [
            PathBuf::from("./broker.yaml"),
            PathBuf::from("./broker.json"),
            PathBuf::from(SYSTEM_CONFIG)
        ]
    );
    assert_eq!(
        paths(&[("PGSQL_BROKER_SYSTEM_CONFIG", "/usr/local/etc/b.yaml")])[2],
        PathBuf::from("/usr/local/etc/b.yaml")
    );
    assert_eq!(paths(&[("PGSQL_BROKER_SYSTEM_CONFIG", "")]).len(), 2);
    // The variable is no broker key.
    let mut c = Config::new(vec![DatabaseConfig::new("app")]);
    c.apply_env(&env(&[("PGSQL_BROKER_SYSTEM_CONFIG", "")]))
        .unwrap();
}

#[test]
fn secrets_do_not_print() {
    let path = write(
        "secret.yaml",
        "databases:\n  - database: app\n    password: hunter2\n",
    );
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn http_listen_is_off_by_default_and_set_by_file_or_environment() {
    use std::net::SocketAddr;
    let path = write("http-off.yaml", "databases: [{database: app}]\n");
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(c.http.listen, "");
    assert_eq!(c.http.address(), Ok(None));
    let path = write(
        "http.yaml",
        "databases: [{database: app}]\nhttp:\n  listen: 127.0.0.1:9187\n",
    );
    let c = Config::load(Some(&path), &env(&[])).unwrap();
    assert_eq!(
        c.http.address(),
        Ok(Some("127.0.0.1:9187".parse::<SocketAddr>().unwrap()))
    );
    let c = Config::load(
        Some(&path),
        &env(&[("PGSQL_BROKER_HTTP_LISTEN", "[::1]:9100")]),
    )
    .unwrap();
    assert_eq!(
        c.http.address(),
        Ok(Some("[::1]:9100".parse::<SocketAddr>().unwrap()))
    );
    // The environment turns it off again.
    let c = Config::load(Some(&path), &env(&[("PGSQL_BROKER_HTTP_LISTEN", "")])).unwrap();
    assert_eq!(c.http.address(), Ok(None));
    for (text, addr) in [
        (":9187", "0.0.0.0:9187"),
        ("localhost:9187", "127.0.0.1:9187"),
        (" 0.0.0.0:80 ", "0.0.0.0:80"),
    ] {
        let http = HttpConfig {
            listen: text.into(),
        };
        assert_eq!(
            http.address(),
            Ok(Some(addr.parse::<SocketAddr>().unwrap())),
            "{text}"
        );
    }
}

#[test]
fn a_bad_http_listen_names_the_key() {
    for bad in [
        "9187",
        "127.0.0.1",
        "example.com:9187",
        "127.0.0.1:99999",
        "[::1]",
    ] {
        let path = write(
            "http-bad.yaml",
            &format!("databases: [{{database: app}}]\nhttp:\n  listen: \"{bad}\"\n"),
        );
        let e = Config::load(Some(&path), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http.listen") && e.contains(bad), "{bad}: {e}");
    }
    let path = write(
        "http-key.yaml",
        "databases: [{database: app}]\nhttp:\n  port: 1\n",
    );
    let e = Config::load(Some(&path), &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("port"), "{e}");
    let path = write("http-ok.yaml", "databases: [{database: app}]\n");
    let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_HTTP_PORT", "1")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGSQL_BROKER_HTTP_PORT"), "{e}");
    let e = Config::load(Some(&path), &env(&[("PGSQL_BROKER_HTTP_LISTEN", "nope")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("http.listen") && e.contains("nope"), "{e}");
}

#[test]
fn systemd_settings_come_from_the_environment() {
    let path = write("systemd.yaml", "databases: [{database: app}]\n");
    assert_eq!(Config::load(Some(&path), &env(&[])).unwrap().systemd, None);
    let c = Config::load(
        Some(&path),
        &env(&[
            ("NOTIFY_SOCKET", "@/org/freedesktop/systemd1/notify"),
            ("WATCHDOG_USEC", "30000000"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.systemd,
        Some(SystemdConfig {
            notify_socket: "@/org/freedesktop/systemd1/notify".into(),
            watchdog: Some(Duration::from_secs(30)),
        })
    );
    // A watchdog meant for another process, or none at all.
    let ours = std::process::id().to_string();
    for (pid, usec, want) in [
        ("1", "30000000", None),
        (ours.as_str(), "30000000", Some(Duration::from_secs(30))),
        (ours.as_str(), "0", None),
        (ours.as_str(), "soon", None),
    ] {
        let c = SystemdConfig::from_env(&env(&[
            ("NOTIFY_SOCKET", "/run/systemd/notify"),
            ("WATCHDOG_PID", pid),
            ("WATCHDOG_USEC", usec),
        ]));
        assert_eq!(c.and_then(|c| c.watchdog), want, "{pid} {usec}");
    }
    assert_eq!(
        SystemdConfig::from_env(&env(&[("NOTIFY_SOCKET", "")])),
        None
    );
}
