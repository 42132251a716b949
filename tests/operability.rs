//! Operability (issue 15): `/metrics`, `/healthz` and `/readyz` scraped over real HTTP from a
//! running broker, systemd notifications on a test socket, and the errors of a bad or busy
//! `http.listen`.

mod common;
use common::cluster::{free_port, Cluster};
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `GET path` over HTTP/1.0 on a plain socket: (status code, body).
fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let addr: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {raw:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// The value of the sample `series` (name and labels exactly as written) on a metrics page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Scrapes `/metrics` until `cond` holds on the page; fails after `HANG` with the last page.
fn wait_metrics(addr: &str, what: &str, mut cond: impl FnMut(&str) -> bool) -> String {
    let deadline = Instant::now() + HANG;
    loop {
        let page = match get(addr, "/metrics") {
            Ok((200, page)) => page,
            Ok((status, body)) => format!("status {status}: {body}"),
            Err(e) => e,
        };
        if cond(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last /metrics:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Gets `/readyz` until its status is `want`; returns the body.
fn wait_readyz(addr: &str, want: u16, broker: &BrokerProcess) -> String {
    let deadline = Instant::now() + HANG;
    loop {
        let got = get(addr, "/readyz");
        if let Ok((status, body)) = &got {
            if *status == want {
                return body.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for /readyz {want}; last: {got:?}; log:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn listen_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn metrics_over_http_count_jobs_durations_and_gauges() {
    let db = TestDb::new();
    let n = 25;
    let addr = listen_addr();
    let config = db.config("", "  queue_timer_sec: 1");
    // The environment variable sets the key, as a systemd drop-in would.
    let broker = BrokerProcess::start_env(&config, &[("PGSQL_BROKER_HTTP_LISTEN", &addr)]);
    broker.wait_log("serving as instance");
    broker.wait_log(&format!(
        "http: serving /metrics, /healthz and /readyz on {addr}"
    ));
    assert_eq!(get(&addr, "/healthz"), Ok((200, "ok\n".into())));
    let (status, _) = get(&addr, "/nothing").expect("404");
    assert_eq!(status, 404);
    let name = &db.name;
    let up = format!("pgsql_broker_up{{database=\"{name}\"}}");
    let series = |metric: &str, queue: &str, status: &str| {
        format!(
            "pgsql_broker_{metric}{{database=\"{name}\",queue=\"{queue}\",status=\"{status}\"}}"
        )
    };
    let gauge = |metric: &str, queue: &str| {
        format!("pgsql_broker_{metric}{{database=\"{name}\",queue=\"{queue}\"}}")
    };
    let count = |metric: &str| format!("pgsql_broker_{metric}_count{{database=\"{name}\"}}");

    // A job that runs until the test lets it go, to see it running.
    let mut holder = db.client();
    holder
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .expect("lock");
    let blocked =
        db.add_job("broker_add_job('blocked', 'SELECT pg_advisory_lock(4242); SELECT pg_advisory_unlock(4242)', 2)");
    let ids: Vec<i64> = (0..n)
        .map(|i| {
            db.add_job(&format!(
                "broker_add_job('j{i}', 'SELECT pg_sleep(0.01)', 1)"
            ))
        })
        .collect();
    let flaky = db.add_job("broker_add_job('flaky', 'SELECT 1/0', 1, max_attempts => 2)");
    // Queue 5 is above queue_count (2): nobody serves it.
    db.add_job("broker_add_job('lost', 'SELECT 1', 5)");
    db.add_job("broker_add_job('lost', 'SELECT 1', 7)");
    for id in &ids {
        db.wait_status(*id, "completed");
    }
    db.wait_status(flaky, "failed");
    let page = wait_metrics(&addr, "the counts of the finished jobs", |p| {
        sample(p, &series("jobs_total", "1", "completed")) == Some(n as f64)
            && sample(p, &series("jobs_total", "1", "failed")) == Some(1.0)
            && sample(p, &series("jobs_total", "1", "retried")) == Some(1.0)
    });
    assert_eq!(sample(&page, &up), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, &series("jobs_total", "2", "completed")),
        Some(0.0)
    );
    assert_eq!(
        sample(&page, &series("jobs_total", "1", "cancelled")),
        Some(0.0)
    );
    // Every finished attempt is timed: n completed, two failed attempts.
    assert_eq!(
        sample(&page, &count("job_duration_seconds")),
        Some(n as f64 + 2.0),
        "{page}"
    );
    let inf =
        format!("pgsql_broker_job_duration_seconds_bucket{{database=\"{name}\",le=\"+Inf\"}}");
    assert_eq!(sample(&page, &inf), Some(n as f64 + 2.0), "{page}");
    // pg_sleep(0.01): none of them under 1 ms, all under 10 s.
    let fast =
        format!("pgsql_broker_job_duration_seconds_bucket{{database=\"{name}\",le=\"0.001\"}}");
    let slow = format!("pgsql_broker_job_duration_seconds_bucket{{database=\"{name}\",le=\"10\"}}");
    assert!(sample(&page, &fast).is_some_and(|v| v <= 2.0), "{page}");
    assert_eq!(sample(&page, &slow), Some(n as f64 + 2.0), "{page}");
    let sum = sample(
        &page,
        &format!("pgsql_broker_job_duration_seconds_sum{{database=\"{name}\"}}"),
    )
    .expect("duration sum");
    assert!(sum >= n as f64 * 0.01, "sum {sum}:\n{page}");
    assert!(
        sample(&page, &count("claim_batch_size")).is_some_and(|c| c >= 1.0),
        "{page}"
    );
    assert!(
        sample(
            &page,
            &format!("pgsql_broker_notifications_total{{database=\"{name}\"}}")
        )
        .is_some_and(|c| c >= 1.0),
        "{page}"
    );
    assert!(page.contains("# TYPE pgsql_broker_job_duration_seconds histogram"));
    assert!(page.contains("# TYPE pgsql_broker_jobs_total counter"));

    // Gauges, read from the database every few seconds.
    wait_metrics(&addr, "the running and unserved jobs", |p| {
        sample(p, &gauge("jobs_running", "2")) == Some(1.0)
            && sample(p, &gauge("jobs_pending", "unserved")) == Some(2.0)
            && sample(p, &gauge("jobs_pending", "1")) == Some(0.0)
    });
    assert_eq!(db.status(blocked), "running");
    drop(holder);
    db.wait_status(blocked, "completed");
    wait_metrics(&addr, "the blocked job to count", |p| {
        sample(p, &series("jobs_total", "2", "completed")) == Some(1.0)
            && sample(p, &gauge("jobs_running", "2")) == Some(0.0)
    });

    // Schedules fired.
    db.add_job("broker_add_schedule('tick', '* * * * * *', 'SELECT 1')");
    wait_metrics(&addr, "schedules to fire", |p| {
        sample(
            p,
            &format!("pgsql_broker_schedules_fired_total{{database=\"{name}\"}}"),
        )
        .is_some_and(|c| c >= 2.0)
    });
    let (status, body) = get(&addr, "/readyz").expect("readyz");
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with(&format!("database {name}: ready: serving as instance")),
        "{body}"
    );
}

/// A config for the database `app` of `cluster`, with `http.listen` set in the file.
fn cluster_config(dir: &Path, cluster: &Cluster, addr: &str) -> PathBuf {
    let text = format!(
        "databases:\n  - name: app\n    host: 127.0.0.1\n    port: {port}\n    user: postgres\n    database: app\n    queue_count: 1\nbroker:\n  notify_retry_seconds: 1s\nhttp:\n  listen: \"{addr}\"\nlogging:\n  level: debug\n",
        port = cluster.port()
    );
    let path = dir.join("ops.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn readyz_is_503_while_a_database_is_down_and_200_when_it_is_back() {
    let mut cluster = Cluster::start(&[]);
    cluster.exec("postgres", "CREATE DATABASE app");
    let addr = listen_addr();
    let config = cluster_config(cluster.dir(), &cluster, &addr);
    let broker = BrokerProcess::start(&config);
    let body = wait_readyz(&addr, 200, &broker);
    assert!(
        body.starts_with("database app: ready: serving as instance"),
        "{body}"
    );

    let port = cluster.port();
    cluster.stop();
    let body = wait_readyz(&addr, 503, &broker);
    assert!(body.starts_with("database app: not ready: "), "{body}");
    assert_eq!(body.lines().count(), 1, "{body}");
    let page = wait_metrics(&addr, "up to drop", |p| {
        sample(p, "pgsql_broker_up{database=\"app\"}") == Some(0.0)
    });
    // Not serving: no gauges to report.
    assert!(!page.contains("pgsql_broker_jobs_pending{"), "{page}");
    // The broker keeps trying (logged at debug, one line per try) and says it once.
    wait_until("three failed tries", || {
        broker.log().matches("connection try").count() >= 3
    });
    let body = wait_readyz(&addr, 503, &broker);
    assert!(body.contains("cannot connect"), "{body}");
    let log = broker.log();
    assert_eq!(
        log.matches("database app: cannot connect").count() - log.matches("connection try").count(),
        1,
        "the outage is logged once, not per try:\n{log}"
    );
    assert_eq!(
        log.matches("database app: listener connection lost")
            .count(),
        1,
        "{log}"
    );

    cluster.start_again();
    assert_eq!(cluster.port(), port, "the restarted server moved");
    let body = wait_readyz(&addr, 200, &broker);
    assert!(
        body.starts_with("database app: ready: serving as instance"),
        "{body}"
    );
    broker.wait_log("; back after ");
    let page = wait_metrics(&addr, "up again, after a reconnect", |p| {
        sample(p, "pgsql_broker_up{database=\"app\"}") == Some(1.0)
    });
    assert!(
        sample(&page, "pgsql_broker_reconnects_total{database=\"app\"}").is_some_and(|c| c >= 1.0),
        "{page}"
    );
    // And it serves again.
    cluster.exec("app", "SELECT broker_add_job('after', 'SELECT 1')");
    wait_until("the job after the outage", || {
        cluster
            .value("app", "SELECT status FROM broker_jobs")
            .as_deref()
            == Some("completed")
    });
}

/// Receives datagrams until one holds `want`; returns every one received meanwhile.
fn receive_until(socket: &UnixDatagram, want: &str, broker: &BrokerProcess) -> Vec<String> {
    let deadline = Instant::now() + HANG;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match socket.recv(&mut buf) {
            Ok(n) => {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = message.lines().any(|l| l == want);
                got.push(message);
                if done {
                    return got;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receiving notifications: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "no {want} on the notify socket; got {got:?}; log:\n{}",
            broker.log()
        );
    }
}

#[test]
fn systemd_hears_ready_watchdog_and_stopping() {
    let db = TestDb::new();
    let config = db.config("", "");
    let path = db.dir().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut broker = BrokerProcess::start_env(
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().expect("utf-8 path")),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let got = receive_until(&socket, "READY=1", &broker);
    // Ready means served: the instance is registered by then.
    assert!(broker.log().contains("serving as instance"), "{got:?}");
    let ready = got.last().expect("READY=1");
    assert!(
        ready.contains("STATUS=serving 1 of 1 database(s)"),
        "{ready:?}"
    );
    assert!(!got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    // WATCHDOG_USEC=1000000: a ping every half second.
    receive_until(&socket, "WATCHDOG=1", &broker);
    receive_until(&socket, "WATCHDOG=1", &broker);
    broker.signal("TERM");
    receive_until(&socket, "STOPPING=1", &broker);
    let status = broker.wait_exit(HANG);
    assert!(status.success(), "{status}; log:\n{}", broker.log());
    assert!(broker.log().contains("draining"), "{}", broker.log());
}

#[test]
fn a_busy_or_bad_http_listen_is_a_clear_error() {
    let db = TestDb::new();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let config = db.config("", "");
    let out = run_cli_env(
        &["--config", config.to_str().unwrap_or_default(), "start"],
        &[("PGSQL_BROKER_HTTP_LISTEN", &addr)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("http.listen: cannot listen on {addr}")),
        "{}",
        out.stderr
    );
    // Nothing was started: no instance registered.
    assert!(
        !out.stderr.contains("serving as instance"),
        "{}",
        out.stderr
    );

    let out = run_cli_env(
        &["--config", config.to_str().unwrap_or_default(), "start"],
        &[("PGSQL_BROKER_HTTP_LISTEN", "localhost")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("config key http.listen") && out.stderr.contains("\"localhost\""),
        "{}",
        out.stderr
    );
    drop(taken);
}
