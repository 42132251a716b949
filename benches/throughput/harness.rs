//! The parts of the benchmark that are not scenarios: the server and scratch databases, the
//! broker as a child process, jobs queued and waited for, and scrapes of `/metrics`.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::{Result, POLL, QUEUES, SCRAPE_EVERY, TIMEOUT};

/// The PostgreSQL server, from BROKER_TEST_DSN.
pub(crate) struct Server {
    pub(crate) config: postgres::Config,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: Option<String>,
}

impl Server {
    pub(crate) fn parse(dsn: &str) -> Result<Server> {
        let config: postgres::Config = dsn
            .parse()
            .map_err(|e| format!("BROKER_TEST_DSN {dsn:?}: {e}"))?;
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            None => "127.0.0.1".into(),
            Some(_) => return Err("BROKER_TEST_DSN must name a TCP host".into()),
        };
        let password = match config.get_password() {
            Some(p) => Some(String::from_utf8(p.to_vec())?),
            None => None,
        };
        Ok(Server {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_string(),
            password,
            config,
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!("{}:{} user {}", self.host, self.port, self.user)
    }

    /// A connection to `database` whose statements give up after TIMEOUT.
    pub(crate) fn connect(&self, database: &str) -> Result<Client> {
        let mut client = self
            .config
            .clone()
            .dbname(database)
            .connect_timeout(Duration::from_secs(30))
            .connect(NoTls)?;
        client.batch_execute(&format!("SET statement_timeout = {}", TIMEOUT.as_millis()))?;
        Ok(client)
    }

    /// The broker's configuration: these databases with 4 queues, `http.listen` if given,
    /// everything else default.
    pub(crate) fn config_yaml(
        &self,
        databases: &[&str],
        hide_password: bool,
        http: Option<&str>,
    ) -> String {
        let mut yaml = String::from("databases:\n");
        for db in databases {
            yaml += &format!("  - name: {}\n", yaml_str(db));
            yaml += &format!("    host: {}\n", yaml_str(&self.host));
            yaml += &format!("    port: {}\n", self.port);
            yaml += &format!("    database: {}\n", yaml_str(db));
            yaml += &format!("    user: {}\n", yaml_str(&self.user));
            if let Some(password) = &self.password {
                let shown = if hide_password { "***" } else { password };
                yaml += &format!("    password: {}\n", yaml_str(shown));
            }
            yaml += &format!("    queue_count: {QUEUES}\n");
        }
        if let Some(listen) = http {
            yaml += &format!("http:\n  listen: {}\n", yaml_str(listen));
        }
        yaml + "logging:\n  level: warn\n"
    }
}

/// A single-quoted YAML scalar: the only escape is '' for '.
pub(crate) fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A scratch database, dropped WITH (FORCE) when this goes out of scope.
pub(crate) struct Scratch<'a> {
    pub(crate) server: &'a Server,
    pub(crate) name: String,
}

impl<'a> Scratch<'a> {
    pub(crate) fn create(server: &'a Server) -> Result<Scratch<'a>> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("pgsql_broker_bench_{}_{n}", std::process::id());
        server
            .connect("postgres")?
            .batch_execute(&format!("CREATE DATABASE {name}"))?;
        Ok(Scratch { server, name })
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let dropped = self.server.connect("postgres").and_then(|mut admin| {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            Ok(admin.batch_execute(&sql)?)
        });
        if let Err(e) = dropped {
            eprintln!(
                "warning: could not drop scratch database {}: {e}",
                self.name
            );
        }
    }
}

/// A private directory for the config files, removed when this goes out of scope.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn create(name: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(name);
        fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            eprintln!("warning: could not remove {}: {e}", self.0.display());
        }
    }
}

/// The broker running as a child process; killed when this goes out of scope unless stopped.
pub(crate) struct BrokerProcess {
    pub(crate) child: Child,
}

impl BrokerProcess {
    pub(crate) fn start(bin: &Path, config: &Path) -> Result<BrokerProcess> {
        let child = broker_command(bin)
            .arg("--config")
            .arg(config)
            .arg("start")
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(BrokerProcess { child })
    }

    /// An error if the broker has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("the broker exited early ({status})").into()),
        }
    }

    /// The process's peak resident set size so far (VmHWM), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .ok_or("no VmHWM in /proc/<pid>/status")?;
        let kib = line
            .trim_start_matches("VmHWM:")
            .trim_end_matches("kB")
            .trim();
        Ok(kib.parse()?)
    }

    /// Stops the broker as systemd would (SIGTERM, it drains) and checks that it exited cleanly.
    pub(crate) fn stop(mut self) -> Result<()> {
        self.check_running()?;
        let kill = run_with_timeout(
            Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string()),
        )?;
        if !kill.status.success() {
            return Err(format!("kill -TERM {} failed", self.child.id()).into());
        }
        let status = wait_for_exit(&mut self.child)?;
        if !status.success() {
            return Err(format!("the broker exited with {status} after SIGTERM").into());
        }
        Ok(())
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The broker binary: BENCH_BROKER_BIN, else target/release/pgsql-broker (built if missing).
pub(crate) fn broker_binary(crate_dir: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BENCH_BROKER_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            return Err(format!("BENCH_BROKER_BIN: no file {}", bin.display()).into());
        }
        return Ok(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    let bin = crate_dir.join(target).join("release").join("pgsql-broker");
    if !bin.is_file() {
        eprintln!(
            "{} is missing: running cargo build --release",
            bin.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .args(["build", "--release", "--bin", "pgsql-broker"])
            .current_dir(crate_dir);
        let mut child = build.spawn()?;
        let status = wait_for_exit(&mut child)?;
        if !status.success() || !bin.is_file() {
            return Err(format!("cargo build --release did not make {}", bin.display()).into());
        }
    }
    Ok(bin)
}

/// A command running the broker binary with only the config file to configure it.
pub(crate) fn broker_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PGSQL_BROKER_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `pgsql-broker --config <file> install`: the schema in every database of the config.
///
/// The option goes before the command: DESIGN.md allows it after as well, but the broker at
/// f951105 refuses `install --config <file>` ("Unrecognized argument: --config").
pub(crate) fn install(bin: &Path, config: &Path) -> Result<()> {
    let out = run_with_timeout(
        broker_command(bin)
            .arg("--config")
            .arg(config)
            .arg("install"),
    )?;
    if !out.status.success() {
        return Err(format!(
            "pgsql-broker install failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Runs a short command to completion (killed after TIMEOUT), capturing its output.
pub(crate) fn run_with_timeout(cmd: &mut Command) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for_exit(&mut child)?;
    Ok(child.wait_with_output()?)
}

/// Waits for a child to exit; kills it after TIMEOUT.
pub(crate) fn wait_for_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("process {} timed out, killed", child.id()).into());
        }
        sleep(Duration::from_millis(20));
    }
}

/// Inserts `n` no-op jobs over the queues (plain INSERT); returns their first and last id.
pub(crate) fn queue_noop_jobs(client: &mut Client, n: i64) -> Result<(i64, i64)> {
    let row = client.query_one(
        "WITH added AS (
             INSERT INTO broker_jobs (job_name, execute_str, job_queue)
             SELECT 'noop', 'SELECT 1', 1 + g % $2::int FROM generate_series(0, $1::bigint - 1) g
             RETURNING id)
         SELECT min(id), max(id), count(*) FROM added",
        &[&n, &QUEUES],
    )?;
    let (first, last, count): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if last - first + 1 != count {
        return Err("the queued jobs' ids are not consecutive".into());
    }
    Ok((first, last))
}

/// `SELECT broker_add_job(...)` in its own autocommit statement; returns the job's id.
pub(crate) fn add_job(client: &mut Client, sql: &str, queue: i32) -> Result<i64> {
    let row = client.query_one("SELECT broker_add_job('bench', $1, $2)", &[&sql, &queue])?;
    Ok(row.get(0))
}

/// Polls each database until no job with an id in its range is pending or running.
///
/// The query walks the id index up from the oldest job not yet seen finished. The broker
/// finishes jobs (and none of these is retried) roughly oldest first, so each poll steps over
/// only the jobs finished since the previous one, and polling costs the server next to nothing.
/// `check_completed` afterwards checks the whole range.
pub(crate) fn wait_until_finished<C: std::borrow::BorrowMut<Client>>(
    broker: &mut BrokerProcess,
    targets: &mut [(C, (i64, i64))],
) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    // Per database, the oldest job that may be unfinished; None once all are finished.
    let mut oldest: Vec<Option<i64>> = targets.iter().map(|(_, (first, _))| Some(*first)).collect();
    loop {
        for ((client, (_, last)), oldest) in targets.iter_mut().zip(&mut oldest) {
            if let Some(from) = *oldest {
                let unfinished = client.borrow_mut().query_opt(
                    "SELECT id FROM broker_jobs
                      WHERE id BETWEEN $1 AND $2 AND status IN ('pending', 'running')
                      ORDER BY id LIMIT 1",
                    &[&from, last],
                )?;
                *oldest = unfinished.map(|row| row.get(0));
            }
        }
        if oldest.iter().all(Option::is_none) {
            return Ok(());
        }
        broker.check_running()?;
        if Instant::now() > deadline {
            return Err(format!("jobs still unfinished after {TIMEOUT:?}").into());
        }
        sleep(POLL);
    }
}

/// Scrapes `/metrics` every [`SCRAPE_EVERY`] on a thread of its own until stopped.
pub(crate) struct Scraper {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) thread: std::thread::JoinHandle<(u32, u32, Duration)>,
}

impl Scraper {
    pub(crate) fn start(addr: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            // Scrapes answered, refused (the broker not listening yet), slowest answer.
            let (mut ok, mut refused, mut slowest) = (0, 0, Duration::ZERO);
            while !stopped.load(Ordering::SeqCst) {
                let started = Instant::now();
                match scrape(addr) {
                    Ok(_) => {
                        ok += 1;
                        slowest = slowest.max(started.elapsed());
                    }
                    Err(_) => refused += 1,
                }
                let next = started + SCRAPE_EVERY;
                while !stopped.load(Ordering::SeqCst) && Instant::now() < next {
                    sleep(Duration::from_millis(10));
                }
            }
            (ok, refused, slowest)
        });
        Scraper { stop, thread }
    }

    /// Stops scraping; says how it went.
    pub(crate) fn stop(self) -> Result<String> {
        self.stop.store(true, Ordering::SeqCst);
        let (ok, refused, slowest) = self
            .thread
            .join()
            .map_err(|_| "the scraper thread panicked")?;
        if ok == 0 {
            return Err(format!("/metrics never answered ({refused} tries)").into());
        }
        Ok(format!(
            "; /metrics scraped {ok} time(s) ({refused} before it listened), slowest {:.1} ms",
            slowest.as_secs_f64() * 1000.0
        ))
    }
}

/// `GET /metrics` over HTTP/1.0: the body of a 200 answer.
pub(crate) fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of head")?;
    if !head.starts_with("HTTP/1.1 200 ") {
        return Err(format!("/metrics answered {head:?}").into());
    }
    Ok(body.to_string())
}

/// Checks that the scraped `pgsql_broker_jobs_total` counts `jobs` completed (the counters are
/// bumped just after each commit, so it is given a moment).
pub(crate) fn check_scraped(addr: SocketAddr, jobs: i64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(addr)?;
        let completed: f64 = page
            .lines()
            .filter(|l| {
                l.starts_with("pgsql_broker_jobs_total{") && l.contains("status=\"completed\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if completed == jobs as f64 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("/metrics counts {completed} completed jobs, not {jobs}").into());
        }
        sleep(Duration::from_millis(100));
    }
}

/// An error naming the first failure if any job in the range did not complete.
pub(crate) fn check_completed(client: &mut Client, (first, last): (i64, i64)) -> Result<()> {
    let row = client.query_one(
        "SELECT count(*), min(status || ': ' || coalesce(error_text, ''))
           FROM broker_jobs WHERE id BETWEEN $1 AND $2 AND status <> 'completed'",
        &[&first, &last],
    )?;
    let (bad, example): (i64, Option<String>) = (row.get(0), row.get(1));
    if bad > 0 {
        return Err(format!(
            "{bad} jobs did not complete, e.g. {}",
            example.unwrap_or_default()
        )
        .into());
    }
    Ok(())
}
