//! Throughput and pickup latency of a real broker against a real PostgreSQL.
//!
//! `cargo bench --bench throughput` (server from BROKER_TEST_DSN, default
//! `host=127.0.0.1 port=5432 user=postgres`; BENCH_JOBS sets the batch size). It creates a
//! scratch database, runs an in-process broker and prints:
//! - throughput: N trivial jobs over 4 queues, queued before start, drained by the broker;
//! - pickup latency: jobs added one at a time to an idle broker (NOTIFY path), measured in the
//!   server's own clock from the inserting transaction to the job's transaction.

use std::time::{Duration, Instant};

use pgsql_broker::config::DatabaseConfig;
use pgsql_broker::{Broker, Config};
use postgres::{Client, NoTls};

fn main() {
    if let Err(e) = run() {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dsn = std::env::var("BROKER_TEST_DSN")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres".into());
    let jobs: i64 = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let server: postgres::Config = dsn.parse()?;
    let name = format!("pgsql_broker_bench_{}", std::process::id());
    let mut admin = server.clone().dbname("postgres").connect(NoTls)?;
    admin.batch_execute(&format!("CREATE DATABASE {name}"))?;
    let result = bench(&server, &name, jobs);
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    result
}

fn bench(
    server: &postgres::Config,
    name: &str,
    jobs: i64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut db = DatabaseConfig::new(name);
    if let Some(postgres::config::Host::Tcp(h)) = server.get_hosts().first() {
        db.host = h.clone();
    }
    db.port = server.get_ports().first().copied().unwrap_or(5432);
    db.user = server.get_user().unwrap_or("postgres").to_string();
    db.queue_count = 4;
    let mut client: Client = server.clone().dbname(name).connect(NoTls)?;
    pgsql_broker::install::install(&mut client, &db)?;

    client.execute(
        "INSERT INTO broker_jobs (job_name, execute_str, job_queue)
         SELECT 'bench', 'SELECT 1', 1 + g % 4 FROM generate_series(1, $1::bigint) g",
        &[&jobs],
    )?;
    let started = Instant::now();
    let broker = Broker::start(Config::new(vec![db]))?;
    wait(
        &mut client,
        "SELECT count(*) FROM broker_jobs WHERE status <> 'completed'",
        0,
    )?;
    let took = started.elapsed();
    println!(
        "throughput: {jobs} jobs on 4 queues (1 worker each) in {:.2} s = {:.0} jobs/s",
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64()
    );

    let samples = 50;
    let mut latencies = Vec::new();
    for _ in 0..samples {
        std::thread::sleep(Duration::from_millis(20));
        let id: i64 = client
            .query_one("SELECT broker_add_job('latency', 'SELECT 1')", &[])?
            .get(0);
        wait(
            &mut client,
            &format!("SELECT count(*) FROM broker_jobs WHERE id = {id} AND status <> 'completed'"),
            0,
        )?;
        let ms: f64 = client
            .query_one(
                "SELECT extract(epoch FROM completed_at - created_at)::float8 * 1000 FROM broker_jobs WHERE id = $1",
                &[&id],
            )?
            .get(0);
        latencies.push(ms);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "pickup latency (insert to job start, {samples} jobs, idle broker): p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    );
    broker.stop();
    broker.wait()?;
    Ok(())
}

fn wait(client: &mut Client, sql: &str, target: i64) -> Result<(), Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n: i64 = client.query_one(sql, &[])?.get(0);
        if n == target {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("timed out: {sql}").into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
