//! Passwords: from the config, the environment, `password_file` or a pgpass file, in that
//! order, against a throwaway cluster that demands SCRAM passwords over TCP. Every run of the
//! binary here is checked: no secret of the suite appears in its stdout or stderr, whether it
//! connected, failed authentication or logged at trace level.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::cluster::Cluster;
use common::*;

/// Unique strings: if one shows up in output, it can only have come from this suite's secrets.
const RIGHT: &str = "Rt-7f3a9c-sekrit";
const WRONG: &str = "Wr-51be2d-sekrit";
const DB: &str = "secretsdb";
const ROLE: &str = "app_login";

/// A cluster where TCP logins need a SCRAM password; `app_login` has the password `RIGHT`.
struct Server {
    cluster: Cluster,
}

impl Server {
    fn new() -> Server {
        let mut cluster = Cluster::init(
            &["password_encryption = 'scram-sha-256'"],
            &["host all all 127.0.0.1/32 scram-sha-256"],
        );
        cluster.start_again();
        // The superuser connection goes over the Unix socket (trust), so it needs no password.
        cluster.exec(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN SUPERUSER PASSWORD '{RIGHT}'"),
        );
        cluster.exec("postgres", &format!("CREATE DATABASE {DB} OWNER {ROLE}"));
        Server { cluster }
    }

    /// Writes a config for `app_login` over TCP with `extra` YAML lines for the database, mode 0600.
    fn config(&self, name: &str, extra: &str) -> PathBuf {
        let text = format!(
            "databases:\n  - name: {DB}\n    host: 127.0.0.1\n    port: {}\n    user: {ROLE}\n    database: {DB}\n    max_open_conns: 3\n    queue_count: 1\n{extra}broker:\n  notify_retry_seconds: 1s\nlogging:\n  level: trace\n",
            self.cluster.port()
        );
        self.file(name, &text, 0o600)
    }

    fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.cluster.dir().join(name);
        std::fs::write(&path, text).expect("write test file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    /// A pgpass path that does not exist, so the machine's own ~/.pgpass stays out of the test.
    fn no_pgpass(&self) -> String {
        self.cluster.dir().join("no-pgpass").display().to_string()
    }

    /// Runs `install` with `config` and the environment; checks its output for secrets.
    fn install(&self, config: &Path, env: &[(&str, &str)]) -> Output {
        let out = run_cli_env(
            &["--config", config.to_str().unwrap_or_default(), "install"],
            env,
        );
        assert_no_secret(&out.stdout, &out.stderr);
        out
    }
}

/// The suite-wide check: neither password of this suite may appear in any output.
fn assert_no_secret(stdout: &str, stderr: &str) {
    for secret in [RIGHT, WRONG] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "a password appeared in the output:\nstdout: {stdout}\nstderr: {stderr}"
        );
    }
}

#[test]
fn password_file_is_used_and_failures_are_clear() {
    let server = Server::new();
    let no_pgpass = server.no_pgpass();
    let env = [("PGPASSFILE", no_pgpass.as_str())];

    // The first line is the password; what follows is ignored.
    let pw = server.file("pw", &format!("{RIGHT}\nnot the password\n"), 0o600);
    let config = server.config(
        "file.yaml",
        &format!("    password_file: {}\n", pw.display()),
    );
    let out = server.install(&config, &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stdout.contains(DB), "{}", out.stdout);

    // No password from anywhere: a clear failure that says where one could come from.
    let config = server.config("none.yaml", "");
    let out = server.install(&config, &env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("database {DB}: cannot connect"))
            && out.stderr.contains("password_file"),
        "{}",
        out.stderr
    );

    // A wrong password: the server's refusal, not the password.
    let wrong = server.file("wrong-pw", &format!("{WRONG}\n"), 0o600);
    let config = server.config(
        "wrong.yaml",
        &format!("    password_file: {}\n", wrong.display()),
    );
    let out = server.install(&config, &env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{}",
        out.stderr
    );

    // An unreadable password_file is a configuration error naming the key.
    let config = server.config(
        "missing.yaml",
        &format!(
            "    password_file: {}\n",
            server.cluster.dir().join("nope").display()
        ),
    );
    let out = server.install(&config, &env);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("databases[0].password_file"),
        "{}",
        out.stderr
    );
}

#[test]
fn pgpass_is_used_unless_others_can_read_it() {
    let server = Server::new();
    let port = server.cluster.port();
    // The first matching line wins: the wrong-port line above it must not match, the
    // wildcard line below it must not be reached.
    let pgpass = server.file(
        "pgpass",
        &format!(
            "# host:port:database:user:password\n127.0.0.1:1:*:{ROLE}:{WRONG}\n127.0.0.1:{port}:*:{ROLE}:{RIGHT}\n*:*:*:*:{WRONG}\n"
        ),
        0o600,
    );
    let pgpass_str = pgpass.display().to_string();
    let config = server.config("pgpass.yaml", "");
    let out = server.install(&config, &[("PGPASSFILE", &pgpass_str)]);
    assert!(out.status.success(), "{}", out.stderr);

    // As libpq: a pgpass file with group or world access is ignored, with a warning.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = server.install(&config, &[("PGPASSFILE", &pgpass_str)]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("WARN")
            && out.stderr.contains(&pgpass_str)
            && out.stderr.contains("group or world access"),
        "{}",
        out.stderr
    );
}

#[test]
fn config_and_environment_passwords_come_first() {
    let server = Server::new();
    let wrong_file = server.file("wrong-pw", &format!("{WRONG}\n"), 0o600);
    let wrong_pgpass = server.file("pgpass", &format!("*:*:*:*:{WRONG}\n"), 0o600);
    let pgpass = wrong_pgpass.display().to_string();
    let env = [("PGPASSFILE", pgpass.as_str())];

    // The config's password beats password_file and pgpass.
    let config = server.config(
        "config-pw.yaml",
        &format!(
            "    password: {RIGHT}\n    password_file: {}\n",
            wrong_file.display()
        ),
    );
    let out = server.install(&config, &env);
    assert!(out.status.success(), "{}", out.stderr);

    // The environment's password beats the config's.
    let config = server.config("env-pw.yaml", &format!("    password: {WRONG}\n"));
    let var = format!("PGSQL_BROKER_DB_{}_PASSWORD", DB.to_uppercase());
    let out = server.install(&config, &[("PGPASSFILE", pgpass.as_str()), (&var, RIGHT)]);
    assert!(out.status.success(), "{}", out.stderr);
}

#[test]
fn world_readable_config_with_a_password_warns() {
    let server = Server::new();
    let no_pgpass = server.no_pgpass();
    let env = [("PGPASSFILE", no_pgpass.as_str())];
    let config = server.config("open.yaml", &format!("    password: {RIGHT}\n"));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = server.install(&config, &env);
    assert!(out.status.success(), "{}", out.stderr);
    let warning = out
        .stderr
        .lines()
        .find(|l| l.contains("WARN") && l.contains("holds a password"))
        .unwrap_or_else(|| panic!("no warning about the config file:\n{}", out.stderr));
    assert!(
        warning.contains(&config.display().to_string()) && warning.contains("0644"),
        "{warning}"
    );

    // Owner and group only (as the packages install it): no warning.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let out = server.install(&config, &env);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(!out.stderr.contains("holds a password"), "{}", out.stderr);
}

/// The running broker at trace level, with the password from a file: its whole log, through
/// start, a job and shutdown, holds no secret; neither does a failed start with a wrong one.
#[test]
fn a_running_broker_logs_no_secret() {
    let server = Server::new();
    let no_pgpass = server.no_pgpass();
    let pw = server.file("pw", &format!("{RIGHT}\n"), 0o600);
    let config = server.config(
        "run.yaml",
        &format!("    password_file: {}\n", pw.display()),
    );
    let mut broker = BrokerProcess::start_env(&config, &[("PGPASSFILE", no_pgpass.as_str())]);
    broker.wait_log("serving as instance");
    let id: i64 = server
        .cluster
        .value(DB, "SELECT broker_add_job('secret job', 'SELECT 1')")
        .and_then(|v| v.parse().ok())
        .expect("job id");
    wait_until("the job to complete", || {
        server
            .cluster
            .value(
                DB,
                &format!("SELECT status FROM broker_jobs WHERE id = {id}"),
            )
            .as_deref()
            == Some("completed")
    });
    broker.signal("TERM");
    assert!(broker.wait_exit(HANG).success(), "{}", broker.log());
    let log = broker.log();
    assert!(log.contains("TRACE") || log.contains("DEBUG"), "{log}");
    assert_no_secret("", &log);

    let config = server.config("bad.yaml", &format!("    password: {WRONG}\n"));
    let out = run_cli_env(
        &["--config", config.to_str().unwrap_or_default(), "start"],
        &[("PGPASSFILE", no_pgpass.as_str())],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
    assert_no_secret(&out.stdout, &out.stderr);
}
