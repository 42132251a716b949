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
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

mod harness;

use harness::*;

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
        println!("pgsql-broker bench (benches/throughput/)");
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
