//! Test harness: a real PostgreSQL server, one fresh database per test, and the broker binary.
//!
//! The server comes from `BROKER_TEST_DSN` (a libpq key=value string), by default
//! `host=127.0.0.1 port=5432 user=postgres`. Each `TestDb` creates its own database and drops it
//! (WITH FORCE) when dropped, so tests run in parallel without seeing each other's jobs.

#![allow(dead_code)]

/// Throwaway clusters of a test's own (TLS, password auth, restarts).
pub mod cluster;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

pub const DSN_VAR: &str = "BROKER_TEST_DSN";
const DEFAULT_DSN: &str = "host=127.0.0.1 port=5432 user=postgres";

/// Generous upper bound for anything that should take a second: catches hangs, not slowness.
pub const HANG: Duration = Duration::from_secs(30);

pub fn dsn() -> String {
    std::env::var(DSN_VAR).unwrap_or_else(|_| DEFAULT_DSN.to_string())
}

fn server() -> postgres::Config {
    dsn()
        .parse()
        .unwrap_or_else(|e| panic!("{DSN_VAR} is not a valid connection string: {e}"))
}

pub fn host() -> String {
    match server().get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "127.0.0.1".into(),
    }
}

pub fn port() -> u16 {
    server().get_ports().first().copied().unwrap_or(5432)
}

pub fn user() -> String {
    server().get_user().unwrap_or("postgres").to_string()
}

fn admin() -> Client {
    let mut cfg = server();
    cfg.dbname("postgres");
    cfg.connect(NoTls)
        .unwrap_or_else(|e| panic!("cannot reach the test server ({DSN_VAR}={}): {e}", dsn()))
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub name: String,
    dir: PathBuf,
    roles: std::cell::RefCell<Vec<String>>,
}

impl TestDb {
    pub fn new() -> TestDb {
        let name = format!(
            "pgsql_broker_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        admin()
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create test database");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestDb {
            name,
            dir,
            roles: Default::default(),
        }
    }

    /// Creates a role unique to this test (cluster-wide names) and removes it afterwards.
    /// `suffix` may hold any characters; the returned name must be quoted in SQL.
    pub fn role(&self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.name);
        let sql: String = admin()
            .query_one("SELECT format('CREATE ROLE %I', $1::text)", &[&name])
            .expect("format")
            .get(0);
        admin()
            .batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", explain(&e)));
        self.roles.borrow_mut().push(name.clone());
        name
    }

    pub fn client(&self) -> Client {
        let mut cfg = server();
        cfg.dbname(&self.name);
        cfg.connect(NoTls).expect("connect to test database")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a YAML config for this database; `extra_db` and `broker` are YAML lines indented
    /// for their section.
    pub fn config(&self, extra_db: &str, broker: &str) -> PathBuf {
        let text = format!(
            "databases:\n  - name: {name}\n    host: \"{host}\"\n    port: {port}\n    user: {user}\n    database: {name}\n    max_open_conns: 6\n    queue_count: 2\n{extra_db}\nbroker:\n  notify_retry_seconds: 1s\n{broker}\nlogging:\n  level: debug\n",
            name = self.name,
            host = host(),
            port = port(),
            user = user(),
        );
        self.write_file("broker.yaml", &text)
    }

    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }

    /// Runs SQL and returns the first column of the first row as text (None for NULL).
    pub fn value(&self, sql: &str) -> Option<String> {
        let rows = self
            .client()
            .simple_query(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", explain(&e)));
        rows.into_iter().find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })?
    }

    pub fn exec(&self, sql: &str) {
        self.client()
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", explain(&e)));
    }

    pub fn add_job(&self, call: &str) -> i64 {
        self.value(&format!("SELECT {call}"))
            .and_then(|v| v.parse().ok())
            .expect("job id")
    }

    pub fn status(&self, id: i64) -> String {
        self.value(&format!("SELECT status FROM broker_jobs WHERE id = {id}"))
            .unwrap_or_default()
    }

    /// Waits until `id` reaches `status`, failing after `HANG`.
    pub fn wait_status(&self, id: i64, status: &str) {
        wait_until(&format!("job {id} to be {status}"), || {
            self.status(id) == status
        });
    }

    pub fn install(&self) {
        let out = run_cli(&[
            "--config",
            self.config("", "").to_str().unwrap_or_default(),
            "install",
        ]);
        assert!(out.status.success(), "install failed: {}", out.stderr);
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Roles are cluster-wide: drop what they own here (job runners), then the database,
        // then the roles themselves.
        let roles = self.roles.borrow().clone();
        if !roles.is_empty() {
            let mut cfg = server();
            cfg.dbname(&self.name);
            if let Ok(mut c) = cfg.connect(NoTls) {
                for role in &roles {
                    let _ = c.batch_execute(&format!("DROP OWNED BY {}", quote_ident(role)));
                }
            }
        }
        let _ = admin().batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
        for role in &roles {
            let _ = admin().batch_execute(&format!("DROP ROLE IF EXISTS {}", quote_ident(role)));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A session of `role` (a superuser connection that SET ROLEs, as a login would be).
pub fn session(db: &TestDb, role: &str) -> Client {
    let mut c = db.client();
    c.batch_execute(&format!("SET ROLE {}", quote_ident(role)))
        .expect("set role");
    c
}

/// A role of this test that is a member of `broker_submitter` only.
pub fn submitter(db: &TestDb, suffix: &str) -> String {
    let role = db.role(suffix);
    db.exec(&format!("GRANT broker_submitter TO {}", quote_ident(&role)));
    role
}

/// An error's SQLSTATE, or "none".
pub fn code(e: &postgres::Error) -> &str {
    e.code().map(|c| c.code()).unwrap_or("none")
}

/// An identifier quoted for SQL, whatever it holds.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How many rows `broker_schema_version` holds after a full install.
pub fn schema_versions() -> String {
    pgsql_broker::test_support::SCHEMA_VERSION.to_string()
}

/// An error with the server's message, for test failure output.
pub fn explain(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("SQLSTATE {}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Polls `cond` every 50 ms until it holds; panics naming `what` after `HANG`.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + HANG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const BIN: &str = env!("CARGO_BIN_EXE_pgsql-broker");

/// What a finished CLI run printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl TestDb {
    /// Runs the binary on this database's config with `args` after it.
    pub fn cli(&self, args: &[&str]) -> Output {
        let config = self.config("", "");
        let mut all = vec!["--config", config.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        run_cli(&all)
    }

    /// Runs a command that must succeed and returns its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}{}",
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `add` through the command line; returns the new job's id.
    pub fn cli_add(&self, args: &[&str]) -> i64 {
        let mut all = vec!["add"];
        all.extend_from_slice(args);
        let out = self.cli_ok(&all);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("not an id: {out}"))
    }

    /// One column (an expression over the row) of job `id`, as text; `NULL` when null.
    pub fn job_column(&self, id: i64, expr: &str) -> String {
        self.value(&format!(
            "SELECT ({expr})::text FROM broker_jobs WHERE id = {id}"
        ))
        .unwrap_or_else(|| "NULL".into())
    }
}

/// Runs the binary to completion with a clean `PGSQL_BROKER_*` environment.
pub fn run_cli(args: &[&str]) -> Output {
    run_cli_env(args, &[])
}

pub fn run_cli_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_cli_in(&empty_dir(), args, env)
}

/// Runs the binary to completion in the working directory `dir` (where it looks for
/// `broker.yaml`), with a clean environment plus `env`.
pub fn run_cli_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(env);
    let out = cmd
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run pgsql-broker");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// A working directory without a config file, for runs that must not find one.
pub fn empty_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgsql_broker_t_{}_cwd", std::process::id()));
    std::fs::create_dir_all(&dir).expect("empty working directory");
    dir
}

/// The binary with no `PGSQL_BROKER_*` or `PG*` variables of the test's own environment, and
/// no system-wide config file (`/etc/pgsql-broker/broker.yaml` of this machine must not
/// matter; a test may set `PGSQL_BROKER_SYSTEM_CONFIG` in `env`), run in a directory without
/// a config file unless the caller picks another.
fn command(env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PGSQL_BROKER_") || k.starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PGSQL_BROKER_SYSTEM_CONFIG", "");
    cmd.current_dir(empty_dir());
    cmd.envs(env.iter().copied());
    cmd
}

/// A `pgsql-broker` process (normally `start`), its stderr in a log file; killed (SIGKILL) if
/// still running when dropped. The one broker-process helper of the tests.
pub struct BrokerProcess {
    /// Behind a lock so that `&self` methods can see whether it exited.
    child: Mutex<Child>,
    log: PathBuf,
}

/// Queue numbers for [`BrokerProcess::wait_poll`]'s markers: far above any `queue_count`, and
/// never the same twice in a test binary (the broker reports each queue once per process).
static MARKER_QUEUES: AtomicI32 = AtomicI32::new(1_000_000);

impl BrokerProcess {
    pub fn start(config: &Path) -> BrokerProcess {
        Self::start_env(config, &[])
    }

    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> BrokerProcess {
        Self::start_args_env(config, &["start"], env)
    }

    /// Runs `--config <config> <args...>` (e.g. `start --standby`) in the config's directory.
    pub fn start_args(config: &Path, args: &[&str]) -> BrokerProcess {
        Self::start_args_env(config, args, &[])
    }

    fn start_args_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let dir = config.parent().map_or_else(empty_dir, Path::to_path_buf);
        let mut all = vec!["--config", config.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        Self::spawn_in(&dir, &all, env)
    }

    /// Runs the binary with `args` as given (e.g. `start --log-level debug`) in the working
    /// directory `dir`; its stderr goes to a log file in `dir`.
    pub fn spawn_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> BrokerProcess {
        let log = dir.join(format!(
            "broker.{}.log",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = command(env)
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn pgsql-broker");
        BrokerProcess {
            child: Mutex::new(child),
            log,
        }
    }

    /// Starts the broker and waits until it serves the database.
    pub fn start_serving(db: &TestDb, config: &Path) -> BrokerProcess {
        let p = Self::start(config);
        let _ = db;
        p.wait_log("serving as instance");
        p
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// How the process ended, or None while it runs.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child().try_wait().expect("try_wait")
    }

    pub fn is_running(&self) -> bool {
        self.exited().is_none()
    }

    /// Waits for a log line holding `needle`; fails at once if the process exits without
    /// having logged it, and after `HANG`.
    pub fn wait_log(&self, needle: &str) {
        wait_until(&format!("broker log line {needle:?}"), || {
            if self.log().contains(needle) {
                return true;
            }
            if let Some(status) = self.exited() {
                // It may have written the line just before it exited.
                let log = self.log();
                assert!(
                    log.contains(needle),
                    "broker exited with {status} before logging {needle:?}; log:\n{log}"
                );
                return true;
            }
            false
        });
    }

    /// Waits until the listener of `db` has run a whole poll (recovery, dependencies,
    /// retention, schedules) that began after this call, so a test can then assert what the
    /// poll did not do. The event: the poll's report of jobs in queues above `queue_count`
    /// (after everything else it does), about a marker job added now; two markers, one after
    /// the other's report, since the first may be reported by a poll already under way. The
    /// markers are deleted again. The broker must poll (`queue_timer_sec`) to get there.
    pub fn wait_poll(&self, db: &TestDb) {
        for _ in 0..2 {
            let queue = MARKER_QUEUES.fetch_add(1, Ordering::SeqCst);
            let id = db.add_job(&format!(
                "broker_add_job('poll marker', 'SELECT 1', {queue})"
            ));
            self.wait_log(&format!(
                "database {}: jobs in queue {queue} will not run",
                db.name
            ));
            db.exec(&format!("DELETE FROM broker_jobs WHERE id = {id}"));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
        assert!(
            ok.map(|s| s.success()).unwrap_or(false),
            "kill -{sig} failed"
        );
    }

    /// kill -9, and waits until the process is gone.
    pub fn kill(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits for the process to exit, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
