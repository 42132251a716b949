//! Benchmark of the `pgsql-broker` binary against a real PostgreSQL (issue 11, item 7).
//!
//! Run: `cargo bench --bench throughput`
//! (compare with graphile-worker: `benches/compare.sh`).
//!
//! It measures the broker from the outside, like an operator would: for each scenario it creates
//! a scratch database, installs the schema with `pgsql-broker --config <file> install`, runs
//! `pgsql-broker --config <file> start` as a child process and watches the jobs from SQL. It uses
//! nothing of the crate's code, so it measures any version of the broker the same way.
//!
//! Scenarios (each on a fresh scratch database, dropped afterwards WITH (FORCE)):
//! 1. `drain`: BENCH_JOBS (default 20000) no-op jobs (`SELECT 1`) over queues 1..4, inserted
//!    before the broker starts; time from process start until none is pending or running.
//! 2. `latency`: 200 jobs added one at a time, 20 ms apart, to an idle broker; enqueue→start
//!    in the server's clock (the job records clock_timestamp(), compared with its created_at).
//!    Before the broker starts, the same cadence measures the floor under that number on this
//!    server: a bare INSERT committed the same way, whose trigger notifies a LISTENing session
//!    that then reads the server's clock (one round trip, as a job's start needs at least one).
//!    The floor is the submitter's commit (its WAL flush) plus the notification's delivery; the
//!    difference is the broker's own share (claim, channel, start).
//! 3. `not-due`: the drain of scenario 1, without and with 100000 not-yet-due priority-10 jobs
//!    (run_after = now() + 1 day) in the same queues.
//! 4. `rss`: peak RSS (VmHWM) of the broker while 2 databases x 4 queues drain BENCH_JOBS jobs
//!    each at the same time.
//!
//! Environment:
//! - BROKER_TEST_DSN: the server, default `host=127.0.0.1 port=5432 user=postgres` (needs a
//!   role that may create databases; a TCP host, since the broker's config takes host and port).
//! - BENCH_BROKER_BIN: the broker binary. Default: `release/pgsql-broker` in $CARGO_TARGET_DIR,
//!   else in the crate's `target/`. `cargo bench` builds that binary itself (cargo builds a
//!   package's binaries for its benches, with the release settings); if it is missing anyway
//!   (the bench run by hand), the bench runs `cargo build --release` first.
//! - BENCH_JOBS: jobs per drain (scenarios 1, 3 and 4), default 20000.
//! - BENCH_ONLY: comma-separated scenarios to run (drain, latency, not-due, rss), default all.
//! - BENCH_HTTP: `1` sets `http.listen` (a free port on 127.0.0.1) in every run's config and
//!   scrapes `/metrics` every second while the broker runs, as Prometheus would (more often
//!   than its default); after each drain the scraped `pgsql_broker_jobs_total` must count
//!   every job. Default: off, the broker's default.
//!
//! The broker runs with a default configuration (queue_count 4, one worker per queue, every
//! other key at its default) and logging.level warn; its warnings show in this output.
//! PGSQL_BROKER_* variables are removed from its environment, so only the file configures it.
//! After queueing the jobs the bench runs VACUUM ANALYZE on broker_jobs, as autovacuum would
//! have done on a real server, so the planner sees the table as it is.
//! Every wait is bounded (10 minutes); on any error the broker child is killed and the scratch
//! databases are dropped.

use std::error::Error;
use std::fs;
use std::io::Read;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

/// Upper bound of every wait: a drain, a child process, a statement.
const TIMEOUT: Duration = Duration::from_secs(600);
/// How often a drain is checked.
const POLL: Duration = Duration::from_millis(5);
const QUEUES: i32 = 4;
const LATENCY_JOBS: usize = 200;
const LATENCY_GAP: Duration = Duration::from_millis(20);
const NOT_DUE_JOBS: i64 = 100_000;
const SCENARIOS: [&str; 4] = ["drain", "latency", "not-due", "rss"];
/// How often `/metrics` is scraped with BENCH_HTTP=1.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

fn main() {
    if let Err(e) = run() {
        // With its causes: a postgres::Error says only "db error", its source what went wrong.
        let mut message = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            message += &format!(": {c}");
            cause = c.source();
        }
        eprintln!("bench failed: {message}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let bench = Bench::from_env()?;
    let only = std::env::var("BENCH_ONLY").unwrap_or_else(|_| SCENARIOS.join(","));
    let only: Vec<&str> = only.split(',').map(str::trim).collect();
    if let Some(bad) = only.iter().find(|s| !SCENARIOS.contains(s)) {
        return Err(format!("BENCH_ONLY: unknown scenario {bad:?} (known: {SCENARIOS:?})").into());
    }
    bench.print_header()?;
    let jobs = bench.jobs;

    if only.contains(&"drain") {
        let d = bench.drain(1, 0)?;
        println!(
            "1. drain: {jobs} no-op jobs on {QUEUES} queues (1 worker each), broker started after \
             queueing: {:.3} s from process start = {:.0} jobs/s (peak RSS {:.1} MiB){}",
            d.secs,
            d.rate(),
            d.peak_rss_mib,
            d.scrapes
        );
    }
    if only.contains(&"latency") {
        let l = bench.latency()?;
        println!(
            "2. latency floor: {LATENCY_JOBS} bare INSERTs committed one at a time, {} ms apart, \
             seen through LISTEN/NOTIFY (server clock, commit start -> the listener's next \
             statement): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            LATENCY_GAP.as_millis(),
            l.floor.percentile(0.50),
            l.floor.percentile(0.95),
            l.floor.percentile(0.99)
        );
        println!(
            "2. latency: {LATENCY_JOBS} jobs added one at a time, {} ms apart, to an idle broker, \
             enqueue->start (server clock, job id {}): p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, \
             max {:.2} ms",
            LATENCY_GAP.as_millis(),
            l.id_source,
            l.start.percentile(0.50),
            l.start.percentile(0.95),
            l.start.percentile(0.99),
            l.start.percentile(1.0)
        );
    }
    if only.contains(&"not-due") {
        let without = bench.drain(1, 0)?;
        let with = bench.drain(1, NOT_DUE_JOBS)?;
        println!(
            "3. not-due: {jobs} due priority-0 no-op jobs: {:.0} jobs/s alone ({:.3} s), {:.0} \
             jobs/s with {NOT_DUE_JOBS} not-yet-due priority-10 jobs in the same queues ({:.3} s); \
             ratio with/without {:.3}",
            without.rate(),
            without.secs,
            with.rate(),
            with.secs,
            with.rate() / without.rate()
        );
    }
    if only.contains(&"rss") {
        let d = bench.drain(2, 0)?;
        println!(
            "4. rss: 2 databases x {QUEUES} queues, {jobs} no-op jobs each, drained at once: \
             peak RSS (VmHWM) {:.1} MiB; {} jobs in {:.3} s = {:.0} jobs/s",
            d.peak_rss_mib,
            d.jobs,
            d.secs,
            d.rate()
        );
    }
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// The 1, 5 and 15 minute load averages of the machine, from /proc/loadavg.
fn load_average() -> String {
    match fs::read_to_string("/proc/loadavg") {
        Ok(s) => s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        Err(e) => format!("unknown ({e})"),
    }
}

/// What every scenario needs: the server, the binary, the sizes and a directory for configs.
struct Bench {
    server: Server,
    bin: PathBuf,
    crate_dir: PathBuf,
    jobs: i64,
    dir: TempDir,
    /// BENCH_HTTP=1: http.listen set and /metrics scraped.
    http: bool,
}

impl Bench {
    fn from_env() -> Result<Bench> {
        let dsn = std::env::var("BROKER_TEST_DSN")
            .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into());
        let jobs = match std::env::var("BENCH_JOBS") {
            Ok(v) => v
                .parse()
                .map_err(|e| format!("BENCH_JOBS={v:?} is not a number: {e}"))?,
            Err(_) => 20_000,
        };
        if jobs < 1 {
            return Err("BENCH_JOBS must be at least 1".into());
        }
        let http = match std::env::var("BENCH_HTTP").as_deref() {
            Ok("1") => true,
            Ok("0") | Ok("") | Err(_) => false,
            Ok(v) => return Err(format!("BENCH_HTTP={v:?}: expected 1 or 0").into()),
        };
        let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Ok(Bench {
            server: Server::parse(&dsn)?,
            bin: broker_binary(&crate_dir)?,
            crate_dir,
            jobs,
            dir: TempDir::create(&format!("pgsql-broker-bench-{}", std::process::id()))?,
            http,
        })
    }

    /// Says what is measured: commit, binary, server and configuration.
    fn print_header(&self) -> Result<()> {
        let git = run_with_timeout(Command::new("git").arg("-C").arg(&self.crate_dir).args([
            "describe",
            "--always",
            "--dirty",
            "--abbrev=12",
        ]));
        let commit: String = match git {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().into(),
            _ => "unknown (not a git checkout?)".into(),
        };
        let version = run_with_timeout(Command::new(&self.bin).arg("--version"))?;
        let mut admin = self.server.connect("postgres")?;
        let server_version: String = admin.query_one("SELECT version()", &[])?.get(0);
        println!("pgsql-broker bench (benches/throughput.rs)");
        println!("commit: {commit} ({})", self.crate_dir.display());
        println!(
            "binary: {} ({})",
            self.bin.display(),
            String::from_utf8_lossy(&version.stdout).trim()
        );
        println!("server: {} ({server_version})", self.server.describe());
        println!(
            "machine: {} CPUs, load average {} (other work on the machine skews every number)",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average()
        );
        println!("jobs per drain: {}", self.jobs);
        if self.http {
            println!("BENCH_HTTP=1: /metrics scraped every {SCRAPE_EVERY:?} while the broker runs");
        }
        println!("config (every run; scenario 4 lists two databases):");
        let http = self.http.then_some("127.0.0.1:<a free port>");
        for line in self
            .server
            .config_yaml(&["<scratch database>"], true, http)
            .lines()
        {
            println!("    {line}");
        }
        Ok(())
    }

    /// Drains `self.jobs` no-op jobs in each of `databases` scratch databases, queued before the
    /// broker starts, after `not_due` not-yet-due priority-10 jobs in the same queues.
    fn drain(&self, databases: usize, not_due: i64) -> Result<Drain> {
        let scratch = (0..databases)
            .map(|_| Scratch::create(&self.server))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<&str> = scratch.iter().map(|s| s.name.as_str()).collect();
        let (config, http) = self.write_config(&names)?;
        install(&self.bin, &config)?;

        let mut targets = Vec::new();
        for s in &scratch {
            let mut client = self.server.connect(&s.name)?;
            if not_due > 0 {
                client.execute(
                    "INSERT INTO broker_jobs (job_name, execute_str, job_queue, job_priority, run_after)
                     SELECT 'later', 'SELECT 1', 1 + g % $2::int, 10, now() + interval '1 day'
                       FROM generate_series(0, $1::bigint - 1) g",
                    &[&not_due, &QUEUES],
                )?;
            }
            let range = queue_noop_jobs(&mut client, self.jobs)?;
            client.batch_execute("VACUUM ANALYZE broker_jobs")?;
            targets.push((client, range));
        }

        let started = Instant::now();
        let mut broker = BrokerProcess::start(&self.bin, &config)?;
        let scraper = http.map(Scraper::start);
        wait_until_finished(&mut broker, &mut targets)?;
        let secs = started.elapsed().as_secs_f64();
        let peak_rss_mib = broker.peak_rss_kib()? as f64 / 1024.0;
        let jobs = self.jobs * databases as i64;
        let scrapes = match (scraper, http) {
            (Some(scraper), Some(addr)) => {
                let scrapes = scraper.stop()?;
                check_scraped(addr, jobs)?;
                scrapes
            }
            _ => String::new(),
        };
        broker.stop()?;
        for (client, range) in &mut targets {
            check_completed(client, *range)?;
        }
        Ok(Drain {
            jobs,
            secs,
            peak_rss_mib,
            scrapes,
        })
    }

    /// Adds jobs one at a time to an idle broker and measures when each one starts.
    fn latency(&self) -> Result<Latency> {
        let scratch = Scratch::create(&self.server)?;
        let (config, http) = self.write_config(&[&scratch.name])?;
        install(&self.bin, &config)?;
        let mut client = self.server.connect(&scratch.name)?;
        client.batch_execute(
            "CREATE TABLE bench_latency (job bigint PRIMARY KEY, started timestamptz NOT NULL);
             CREATE TABLE bench_probe (job text)",
        )?;
        let floor = self.latency_floor(&scratch.name)?;
        let mut broker = BrokerProcess::start(&self.bin, &config)?;
        let scraper = http.map(Scraper::start);

        // Warm-up, one job per queue, which also learns whether the broker tells a job its id
        // (GUC broker.job_id). If not, each job's SQL carries a key the bench makes up instead.
        let mut probes = Vec::new();
        for queue in 1..=QUEUES {
            probes.push(add_job(
                &mut client,
                "INSERT INTO bench_probe VALUES (current_setting('broker.job_id', true))",
                queue,
            )?);
        }
        let probe_range = (probes[0], probes[probes.len() - 1]);
        wait_until_finished(&mut broker, &mut [(&mut client, probe_range)])?;
        check_completed(&mut client, probe_range)?;
        let knows_id: i64 = client
            .query_one(
                "SELECT count(*) FROM bench_probe WHERE job = ANY ($1::bigint[]::text[])",
                &[&probes],
            )?
            .get(0);
        let guc = knows_id == probes.len() as i64;

        let mut keys = Vec::new();
        let mut ids = Vec::new();
        let mut next = Instant::now();
        for i in 0..LATENCY_JOBS {
            sleep(next.saturating_duration_since(Instant::now()));
            next += LATENCY_GAP;
            let key = i as i64;
            let sql = if guc {
                "INSERT INTO bench_latency \
                 VALUES (current_setting('broker.job_id')::bigint, clock_timestamp())"
                    .to_string()
            } else {
                format!("INSERT INTO bench_latency VALUES ({key}, clock_timestamp())")
            };
            let id = add_job(&mut client, &sql, 1 + i as i32 % QUEUES)?;
            ids.push(id);
            keys.push(if guc { id } else { key });
            broker.check_running()?;
        }
        let range = (ids[0], ids[ids.len() - 1]);
        wait_until_finished(&mut broker, &mut [(&mut client, range)])?;
        if let Some(scraper) = scraper {
            scraper.stop()?;
        }
        broker.stop()?;
        check_completed(&mut client, range)?;

        let rows = client.query(
            "SELECT extract(epoch FROM l.started - j.created_at)::float8 * 1000
               FROM unnest($1::bigint[], $2::bigint[]) AS s(key, id)
               JOIN bench_latency l ON l.job = s.key
               JOIN broker_jobs j ON j.id = s.id",
            &[&keys, &ids],
        )?;
        let ms: Vec<f64> = rows.iter().map(|r| r.get(0)).collect();
        if ms.len() != LATENCY_JOBS {
            return Err(format!("{} of {LATENCY_JOBS} latency jobs recorded", ms.len()).into());
        }
        Ok(Latency {
            start: Samples::new(ms),
            floor,
            id_source: if guc {
                "from GUC broker.job_id"
            } else {
                "absent from GUC broker.job_id, passed in the job's SQL"
            },
        })
    }

    /// The floor under scenario 2 on this server (see the module doc): what a submission's
    /// commit and its notification cost before any broker is involved.
    fn latency_floor(&self, database: &str) -> Result<Samples> {
        let mut submitter = self.server.connect(database)?;
        submitter.batch_execute(
            "CREATE TABLE bench_floor (i int PRIMARY KEY, created timestamptz NOT NULL DEFAULT now());
             CREATE FUNCTION bench_floor_notify() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_notify('bench_floor', NEW.i::text); RETURN NULL; END $$;
             CREATE TRIGGER bench_floor_notify AFTER INSERT ON bench_floor
               FOR EACH ROW EXECUTE FUNCTION bench_floor_notify()",
        )?;
        let mut listener = self.server.connect(database)?;
        listener.batch_execute("LISTEN bench_floor")?;
        let seen = std::thread::spawn(move || -> Result<Vec<f64>, String> {
            let clock = listener
                .prepare(
                    "SELECT extract(epoch FROM clock_timestamp() - created)::float8 * 1000
                       FROM bench_floor WHERE i = $1",
                )
                .map_err(|e| e.to_string())?;
            let mut ms = Vec::with_capacity(LATENCY_JOBS);
            while ms.len() < LATENCY_JOBS {
                let payload = listener
                    .notifications()
                    .timeout_iter(Duration::from_secs(10))
                    .next()
                    .map_err(|e| e.to_string())?
                    .ok_or("no notification within 10 s")?
                    .payload()
                    .to_string();
                let i: i32 = payload.parse().map_err(|e| format!("payload: {e}"))?;
                ms.push(
                    listener
                        .query_one(&clock, &[&i])
                        .map_err(|e| e.to_string())?
                        .get(0),
                );
            }
            Ok(ms)
        });
        let insert = submitter.prepare("INSERT INTO bench_floor (i) VALUES ($1)")?;
        let mut next = Instant::now();
        for i in 0..LATENCY_JOBS as i32 {
            sleep(next.saturating_duration_since(Instant::now()));
            next += LATENCY_GAP;
            submitter.execute(&insert, &[&i])?;
        }
        let ms = seen
            .join()
            .map_err(|_| "the floor's listener thread panicked")??;
        Ok(Samples::new(ms))
    }

    /// Writes the broker's configuration for these databases (mode 0600: it may hold a password);
    /// with BENCH_HTTP=1 also the address it serves `/metrics` on.
    fn write_config(&self, databases: &[&str]) -> Result<(PathBuf, Option<SocketAddr>)> {
        let http = if self.http {
            Some(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        } else {
            None
        };
        let path = self.dir.0.join(format!("{}.yaml", databases.join("+")));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let listen = http.map(|a| a.to_string());
        let yaml = self.server.config_yaml(databases, false, listen.as_deref());
        file.write_all(yaml.as_bytes())?;
        Ok((path, http))
    }
}

struct Drain {
    jobs: i64,
    secs: f64,
    peak_rss_mib: f64,
    /// With BENCH_HTTP=1, how the scrapes went (for the result line), else empty.
    scrapes: String,
}

impl Drain {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.secs
    }
}

struct Latency {
    /// Enqueue -> start of each job.
    start: Samples,
    /// The same cadence without a broker: commit -> notification seen (see the module doc).
    floor: Samples,
    id_source: &'static str,
}

/// Milliseconds, sorted.
struct Samples {
    ms: Vec<f64>,
}

impl Samples {
    fn new(mut ms: Vec<f64>) -> Samples {
        ms.sort_by(f64::total_cmp);
        Samples { ms }
    }

    /// Nearest-rank percentile; `p` = 1.0 is the maximum.
    fn percentile(&self, p: f64) -> f64 {
        let rank = (p * self.ms.len() as f64).ceil() as usize;
        self.ms[rank.clamp(1, self.ms.len()) - 1]
    }
}

/// The PostgreSQL server, from BROKER_TEST_DSN.
struct Server {
    config: postgres::Config,
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
}

impl Server {
    fn parse(dsn: &str) -> Result<Server> {
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

    fn describe(&self) -> String {
        format!("{}:{} user {}", self.host, self.port, self.user)
    }

    /// A connection to `database` whose statements give up after TIMEOUT.
    fn connect(&self, database: &str) -> Result<Client> {
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
    fn config_yaml(&self, databases: &[&str], hide_password: bool, http: Option<&str>) -> String {
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
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A scratch database, dropped WITH (FORCE) when this goes out of scope.
struct Scratch<'a> {
    server: &'a Server,
    name: String,
}

impl<'a> Scratch<'a> {
    fn create(server: &'a Server) -> Result<Scratch<'a>> {
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
struct TempDir(PathBuf);

impl TempDir {
    fn create(name: &str) -> Result<TempDir> {
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
struct BrokerProcess {
    child: Child,
}

impl BrokerProcess {
    fn start(bin: &Path, config: &Path) -> Result<BrokerProcess> {
        let child = broker_command(bin)
            .arg("--config")
            .arg(config)
            .arg("start")
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        Ok(BrokerProcess { child })
    }

    /// An error if the broker has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(format!("the broker exited early ({status})").into()),
        }
    }

    /// The process's peak resident set size so far (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> Result<u64> {
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
    fn stop(mut self) -> Result<()> {
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
fn broker_binary(crate_dir: &Path) -> Result<PathBuf> {
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
fn broker_command(bin: &Path) -> Command {
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
fn install(bin: &Path, config: &Path) -> Result<()> {
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
fn run_with_timeout(cmd: &mut Command) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_for_exit(&mut child)?;
    Ok(child.wait_with_output()?)
}

/// Waits for a child to exit; kills it after TIMEOUT.
fn wait_for_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
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
fn queue_noop_jobs(client: &mut Client, n: i64) -> Result<(i64, i64)> {
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
fn add_job(client: &mut Client, sql: &str, queue: i32) -> Result<i64> {
    let row = client.query_one("SELECT broker_add_job('bench', $1, $2)", &[&sql, &queue])?;
    Ok(row.get(0))
}

/// Polls each database until no job with an id in its range is pending or running.
///
/// The query walks the id index up from the oldest job not yet seen finished. The broker
/// finishes jobs (and none of these is retried) roughly oldest first, so each poll steps over
/// only the jobs finished since the previous one, and polling costs the server next to nothing.
/// `check_completed` afterwards checks the whole range.
fn wait_until_finished<C: std::borrow::BorrowMut<Client>>(
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
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u32, u32, Duration)>,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Scraper {
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
    fn stop(self) -> Result<String> {
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
fn scrape(addr: SocketAddr) -> Result<String> {
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
fn check_scraped(addr: SocketAddr, jobs: i64) -> Result<()> {
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
fn check_completed(client: &mut Client, (first, last): (i64, i64)) -> Result<()> {
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
