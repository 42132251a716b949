// graphile-worker baseline for benches/compare.sh: the drain of scenario 1 of
// benches/throughput.rs, done by graphile-worker (version pinned in package.json).
//
// Run: cd benches/graphile && npm ci && node bench.js
//
// Creates a scratch database, installs graphile-worker's schema, queues BENCH_JOBS (default
// 20000) jobs of a task that does nothing, then starts the worker (library run(), concurrency
// 10) and times from that start until no job is left (graphile-worker deletes finished jobs),
// polling every 5 ms. The database is dropped afterwards WITH (FORCE); the drain gives up after
// 10 minutes. Server from BROKER_TEST_DSN in libpq key=value form (unquoted values only),
// default "host=127.0.0.1 port=5432 user=postgres".
"use strict";

const pg = require("pg");
const { run, runMigrations, Logger } = require("graphile-worker");
const { version } = require("graphile-worker/package.json");

const TIMEOUT_MS = 10 * 60 * 1000;
const POLL_MS = 5;
const CONCURRENCY = 10;

function serverFromDsn(dsn) {
  const known = { host: "host", port: "port", user: "user", password: "password" };
  const server = {};
  for (const pair of dsn.trim().split(/\s+/)) {
    const [key, value] = pair.split(/=(.*)/s);
    if (known[key] === undefined || value === undefined) {
      throw new Error(`BROKER_TEST_DSN: unsupported part ${JSON.stringify(pair)}`);
    }
    server[known[key]] = value;
  }
  return server;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Only warnings and errors, like the broker's logging.level warn.
const quietLogger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker ${level}: ${message}`);
});

async function main() {
  const server = serverFromDsn(process.env.BROKER_TEST_DSN || "host=127.0.0.1 port=5432 user=postgres");
  const jobs = Number(process.env.BENCH_JOBS || 20000);
  if (!Number.isInteger(jobs) || jobs < 1) throw new Error("BENCH_JOBS must be a positive integer");
  const database = `graphile_bench_${process.pid}`;

  const admin = new pg.Client({ ...server, database: "postgres" });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${database}`);
  const pool = new pg.Pool({ ...server, database, max: CONCURRENCY + 2 });
  // Our own DROP DATABASE ... WITH (FORCE) at the end may end a connection pg has not closed yet.
  pool.on("error", (e) => e.code === "57P01" || console.error(`pool: ${e.message}`));
  const poller = new pg.Client({ ...server, database });
  try {
    await runMigrations({ pgPool: pool, logger: quietLogger });
    await pool.query("SELECT graphile_worker.add_job('noop') FROM generate_series(1, $1::int)", [jobs]);
    await pool.query("VACUUM ANALYZE graphile_worker._private_jobs");
    await poller.connect();

    const started = performance.now();
    const runner = await run({
      pgPool: pool,
      concurrency: CONCURRENCY,
      noHandleSignals: true,
      logger: quietLogger,
      taskList: { noop: async () => {} },
    });
    let secs;
    try {
      for (;;) {
        const { rowCount } = await poller.query("SELECT 1 FROM graphile_worker.jobs LIMIT 1");
        secs = (performance.now() - started) / 1000;
        if (rowCount === 0) break;
        if (secs * 1000 > TIMEOUT_MS) throw new Error("jobs still queued after 10 minutes");
        await sleep(POLL_MS);
      }
    } finally {
      await runner.stop();
    }
    console.log(
      `graphile-worker ${version}: drain: ${jobs} no-op jobs, concurrency ${CONCURRENCY}, ` +
        `worker started after queueing: ${secs.toFixed(3)} s from run() = ${(jobs / secs).toFixed(0)} jobs/s`,
    );
  } finally {
    await poller.end();
    await pool.end();
    // pg may still be closing connections; give them a second before forcing them out.
    for (let i = 0; i < 20; i++) {
      const { rows } = await admin.query("SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1", [database]);
      if (rows[0].n === 0) break;
      await sleep(50);
    }
    await admin.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    await admin.end();
  }
}

main().catch((e) => {
  console.error(`bench failed: ${e.stack || e}`);
  process.exit(1);
});
