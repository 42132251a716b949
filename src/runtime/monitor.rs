//! What the process tells the outside about itself: `/metrics`, `/healthz` and `/readyz` over
//! HTTP (`http.listen`), and systemd notifications (`READY=1`, `STATUS=`, `STOPPING=1`,
//! `WATCHDOG=1`). Both read what each database's threads already keep in their [`Shared`]
//! state; neither adds work to the job path.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::SystemdConfig;
use crate::error::Error;
use crate::ops::http::{Handler, Response, Server};
use crate::ops::metrics::{Text, CONTENT_TYPE};
use crate::ops::systemd::Notifier;
use crate::runtime::listener::GAUGES_EVERY;
use crate::runtime::shared::{Shared, State};
use crate::runtime::shutdown::StopHandle;
use crate::runtime::stats::{Ended, Stats};

/// How often the systemd thread looks at the databases and the stop flag.
const NOTIFY_TICK: Duration = Duration::from_millis(100);

/// Gauges older than this are not shown (the listener could not read them for a while).
const GAUGES_MAX_AGE: Duration = GAUGES_EVERY.saturating_mul(6);

/// The HTTP server and the systemd thread of a broker, stopped by [`Monitor::stop`].
#[derive(Default)]
pub(crate) struct Monitor {
    http: Option<Server>,
    systemd: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

/// Binds `http.listen`'s address before anything else starts, so a port in use is an error at
/// once, naming the key and the address.
pub(crate) fn bind_http(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, Error> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    Server::bind(addr)
        .map(Some)
        .map_err(|e| Error::Runtime(format!("http.listen: cannot listen on {addr}: {e}")))
}

impl Monitor {
    /// Serves HTTP on `listener` (if any) and notifies systemd (if configured) about
    /// `databases`.
    pub fn start(
        listener: Option<TcpListener>,
        systemd: Option<&SystemdConfig>,
        databases: &[Arc<Shared>],
        stop: &StopHandle,
    ) -> Result<Monitor, Error> {
        let mut monitor = Monitor::default();
        if let Some(listener) = listener {
            let dbs = databases.to_vec();
            let handler: Handler = Box::new(move |path| answer(path, &dbs));
            let server = Server::start(listener, "http", handler)
                .map_err(|e| Error::Runtime(format!("http.listen: cannot start: {e}")))?;
            log::info!(
                "http: serving /metrics, /healthz and /readyz on {}",
                server.local_addr()
            );
            monitor.http = Some(server);
        }
        if let Some(systemd) = systemd {
            match Notifier::new(&systemd.notify_socket) {
                Ok(notifier) => {
                    let done = Arc::new(AtomicBool::new(false));
                    let (dbs, stop, watchdog, until) = (
                        databases.to_vec(),
                        stop.clone(),
                        systemd.watchdog,
                        done.clone(),
                    );
                    let thread = std::thread::Builder::new()
                        .name("systemd".into())
                        .spawn(move || notify(&notifier, &dbs, &stop, watchdog, &until))
                        .map_err(|e| {
                            Error::Runtime(format!("cannot start the systemd thread: {e}"))
                        })?;
                    monitor.systemd = Some((done, thread));
                }
                Err(e) => log::warn!(
                    "systemd: NOTIFY_SOCKET {:?} is unusable ({e}); not notifying",
                    systemd.notify_socket
                ),
            }
        }
        Ok(monitor)
    }

    /// The address `/metrics` is served on, if it is.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(Server::local_addr)
    }

    pub fn stop(self) {
        if let Some(http) = self.http {
            http.stop();
        }
        if let Some((done, thread)) = self.systemd {
            done.store(true, Ordering::SeqCst);
            let _ = thread.join();
        }
    }
}

/// The answer to a GET of `path`.
fn answer(path: &str, databases: &[Arc<Shared>]) -> Response {
    match path {
        "/metrics" => Response {
            status: 200,
            content_type: CONTENT_TYPE,
            body: metrics(databases),
        },
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let (ready, lines) = readiness(databases);
            Response::text(if ready { 200 } else { 503 }, lines)
        }
        _ => Response::text(404, "not found: try /metrics, /healthz or /readyz\n"),
    }
}

/// Whether every database is served or deliberately on standby, and one line per database
/// saying where it stands.
pub(crate) fn readiness(databases: &[Arc<Shared>]) -> (bool, String) {
    let mut all = true;
    let mut lines = String::new();
    for db in databases {
        let (state, detail) = db.state();
        all &= state.is_ready();
        let verdict = if state.is_ready() {
            "ready"
        } else {
            "not ready"
        };
        lines.push_str(&format!(
            "database {}: {verdict}: {}\n",
            db.db.name,
            one_line(&detail)
        ));
    }
    (all, lines)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `/metrics` page: counters from the broker's own accounting, gauges as the listener
/// last read them.
pub(crate) fn metrics(databases: &[Arc<Shared>]) -> String {
    let mut t = Text::default();
    t.family(
        "pgsql_broker_up",
        "gauge",
        "1 when this process is the database's active broker instance, else 0.",
    );
    for db in databases {
        let up = u8::from(db.instance().is_some());
        t.sample("pgsql_broker_up", &[("database", &db.db.name)], up);
    }
    t.family(
        "pgsql_broker_jobs_total",
        "counter",
        "Job attempts this process finished, by queue and outcome (completed; failed for good; \
         retried: failed, another attempt follows; cancelled).",
    );
    for db in databases {
        for queue in 1..=db.stats.queue_count() {
            let q = queue.to_string();
            for how in Ended::ALL {
                let labels = [
                    ("database", db.db.name.as_str()),
                    ("queue", q.as_str()),
                    ("status", how.label()),
                ];
                t.sample(
                    "pgsql_broker_jobs_total",
                    &labels,
                    db.stats.count(queue, how),
                );
            }
        }
    }
    let gauges: Vec<_> = databases
        .iter()
        .map(|db| {
            db.stats
                .gauges()
                .filter(|g| g.read_at.elapsed() <= GAUGES_MAX_AGE)
        })
        .collect();
    for (name, help, pick) in [
        (
            "pgsql_broker_jobs_pending",
            "Jobs pending per queue (delayed and waiting for dependencies included), read from \
             the database every few seconds by the active instance; queue=\"unserved\" sums the \
             queues above queue_count.",
            (|p: &(i64, i64)| p.0) as fn(&(i64, i64)) -> i64,
        ),
        (
            "pgsql_broker_jobs_running",
            "Jobs running per queue, read from the database every few seconds by the active \
             instance; queue=\"unserved\" sums the queues above queue_count.",
            |p: &(i64, i64)| p.1,
        ),
    ] {
        t.family(name, "gauge", help);
        for (db, g) in databases.iter().zip(&gauges) {
            let Some(g) = g else { continue };
            for (i, counts) in g.queues.iter().enumerate() {
                let q = (i + 1).to_string();
                t.sample(
                    name,
                    &[("database", &db.db.name), ("queue", &q)],
                    pick(counts),
                );
            }
            t.sample(
                name,
                &[("database", &db.db.name), ("queue", "unserved")],
                pick(&g.unserved),
            );
        }
    }
    t.family(
        "pgsql_broker_job_duration_seconds",
        "histogram",
        "How long finished job attempts ran, from the start of their SQL.",
    );
    for db in databases {
        t.histogram(
            "pgsql_broker_job_duration_seconds",
            &[("database", &db.db.name)],
            &db.stats.job_duration,
            1e6,
        );
    }
    t.family(
        "pgsql_broker_claim_batch_size",
        "histogram",
        "Jobs per claim statement of the listener (0: a claim that found none ready).",
    );
    for db in databases {
        t.histogram(
            "pgsql_broker_claim_batch_size",
            &[("database", &db.db.name)],
            &db.stats.claim_size,
            1.0,
        );
    }
    counter(
        &mut t,
        databases,
        "pgsql_broker_notifications_total",
        "Notifications the listener received on channel broker_jobs.",
        |s| &s.notifications,
    );
    counter(
        &mut t,
        databases,
        "pgsql_broker_reconnects_total",
        "Connections the listener made to the database after its first one.",
        |s| &s.reconnects,
    );
    counter(
        &mut t,
        databases,
        "pgsql_broker_schedules_fired_total",
        "Jobs this process enqueued for due schedule times.",
        |s| &s.schedules_fired,
    );
    t.into_string()
}

/// A counter family with one sample per database.
fn counter(
    t: &mut Text,
    databases: &[Arc<Shared>],
    name: &str,
    help: &str,
    value: impl Fn(&Stats) -> &AtomicU64,
) {
    t.family(name, "counter", help);
    for db in databases {
        let v = value(&db.stats).load(Ordering::Relaxed);
        t.sample(name, &[("database", &db.db.name)], v);
    }
}

/// The systemd thread: `STATUS=` whenever the summary changes, `READY=1` once every database
/// is served or on standby, `STOPPING=1` when the drain begins, `WATCHDOG=1` every half of
/// the watchdog interval; until `done` (after one last round).
fn notify(
    notifier: &Notifier,
    databases: &[Arc<Shared>],
    stop: &StopHandle,
    watchdog: Option<Duration>,
    done: &AtomicBool,
) {
    let mut failed_once = false;
    let mut send = |state: &str| {
        if let Err(e) = notifier.send(state) {
            if !std::mem::replace(&mut failed_once, true) {
                log::warn!("systemd: cannot notify ({e}); the service manager may not see this process's state");
            }
        }
    };
    let (mut ready_sent, mut stopping_sent) = (false, false);
    let mut last_status = String::new();
    let mut next_watchdog = Instant::now();
    loop {
        // One more round after `done`: a drain shorter than a tick still says STOPPING=1.
        let last = done.load(Ordering::SeqCst);
        if stop.is_stopped() {
            if !stopping_sent {
                send("STOPPING=1\nSTATUS=draining");
                log::debug!("systemd: STOPPING=1");
                stopping_sent = true;
            }
        } else {
            let (ready, status) = summary(databases);
            if ready && !ready_sent {
                send(&format!("READY=1\nSTATUS={status}"));
                log::info!("systemd: ready ({status})");
                ready_sent = true;
                last_status = status;
            } else if status != last_status {
                send(&format!("STATUS={status}"));
                last_status = status;
            }
        }
        if let Some(interval) = watchdog {
            if Instant::now() >= next_watchdog {
                send("WATCHDOG=1");
                next_watchdog = Instant::now() + interval / 2;
            }
        }
        if last {
            break;
        }
        std::thread::sleep(NOTIFY_TICK);
    }
}

/// Whether every database is ready, and a one-line summary for `systemctl status`.
fn summary(databases: &[Arc<Shared>]) -> (bool, String) {
    let mut serving = 0;
    let mut standby = 0;
    let mut problems = Vec::new();
    for db in databases {
        let (state, detail) = db.state();
        match state {
            State::Serving => serving += 1,
            s if s.is_ready() => standby += 1,
            _ => problems.push(format!("{}: {}", db.db.name, one_line(&detail))),
        }
    }
    let mut status = format!("serving {serving} of {} database(s)", databases.len());
    if standby > 0 {
        status += &format!(", {standby} on standby");
    }
    if !problems.is_empty() {
        status += "; ";
        status += &problems.join("; ");
    }
    // One line of reasonable length: it is what `systemctl status` shows.
    if status.len() > 400 {
        let mut end = 400;
        while !status.is_char_boundary(end) {
            end -= 1;
        }
        status.truncate(end);
        status.push('…');
    }
    (problems.is_empty(), status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BrokerConfig, DatabaseConfig};
    use crate::runtime::shared::Process;
    use std::os::unix::net::UnixDatagram;

    fn database(name: &str) -> Arc<Shared> {
        let mut db = DatabaseConfig::new(name);
        db.queue_count = 2;
        let process = Arc::new(Process::new(false, 2, true));
        Arc::new(
            Shared::new(
                &db,
                &BrokerConfig::default(),
                process,
                StopHandle::default(),
            )
            .expect("shared state"),
        )
    }

    #[test]
    fn ready_only_when_every_database_is() {
        let (a, b) = (database("a"), database("b"));
        let dbs = [a.clone(), b.clone()];
        assert_eq!(
            readiness(&dbs),
            (
                false,
                "database a: not ready: connecting\ndatabase b: not ready: connecting\n".into()
            )
        );
        a.set_state(State::Serving, "serving as instance 1".into());
        b.set_state(State::Unreachable, "cannot connect:\nrefused".into());
        let (ready, body) = readiness(&dbs);
        assert!(!ready);
        assert_eq!(
            body,
            "database a: ready: serving as instance 1\ndatabase b: not ready: cannot connect: refused\n"
        );
        assert_eq!(
            summary(&dbs),
            (
                false,
                "serving 1 of 2 database(s); b: cannot connect: refused".into()
            )
        );
        b.set_state(State::Held, "another broker instance is active".into());
        assert!(readiness(&dbs).0);
        assert_eq!(
            summary(&dbs),
            (true, "serving 1 of 2 database(s), 1 on standby".into())
        );
        b.set_state(State::Draining, "draining".into());
        assert!(!readiness(&dbs).0);
    }

    #[test]
    fn metrics_page_has_every_family_and_gauges_only_when_fresh() {
        let db = database("app");
        db.stats
            .finished(2, Ended::Completed, Duration::from_millis(3));
        let page = metrics(std::slice::from_ref(&db));
        for line in [
            "pgsql_broker_up{database=\"app\"} 0",
            "pgsql_broker_jobs_total{database=\"app\",queue=\"2\",status=\"completed\"} 1",
            "pgsql_broker_jobs_total{database=\"app\",queue=\"1\",status=\"retried\"} 0",
            "pgsql_broker_job_duration_seconds_bucket{database=\"app\",le=\"0.005\"} 1",
            "pgsql_broker_job_duration_seconds_count{database=\"app\"} 1",
            "pgsql_broker_claim_batch_size_count{database=\"app\"} 0",
            "pgsql_broker_notifications_total{database=\"app\"} 0",
            "pgsql_broker_reconnects_total{database=\"app\"} 0",
            "pgsql_broker_schedules_fired_total{database=\"app\"} 0",
            "# TYPE pgsql_broker_jobs_pending gauge",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }
        assert!(!page.contains("pgsql_broker_jobs_pending{"), "{page}");
        db.stats.set_gauges(Some(crate::runtime::stats::Gauges {
            queues: vec![(3, 1), (0, 0)],
            unserved: (7, 0),
            read_at: Instant::now(),
        }));
        let page = metrics(&[db]);
        for line in [
            "pgsql_broker_jobs_pending{database=\"app\",queue=\"1\"} 3",
            "pgsql_broker_jobs_running{database=\"app\",queue=\"1\"} 1",
            "pgsql_broker_jobs_pending{database=\"app\",queue=\"unserved\"} 7",
        ] {
            assert!(page.lines().any(|l| l == line), "{line} missing:\n{page}");
        }
    }

    #[test]
    fn a_drain_shorter_than_a_tick_still_says_stopping() {
        let dir = std::env::temp_dir().join(format!("pgsql-broker-monitor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let notifier = Notifier::new(path.to_str().expect("utf-8")).expect("notifier");
        let stop = StopHandle::default();
        stop.stop();
        // The broker is done before the thread's first look at the stop flag.
        notify(
            &notifier,
            &[database("app")],
            &stop,
            None,
            &AtomicBool::new(true),
        );
        let mut buf = [0u8; 256];
        let n = socket.recv(&mut buf).expect("a notification");
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
