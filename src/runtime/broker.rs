//! The broker: for each database a listener thread and a fixed set of workers, started together
//! and drained together.

use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use super::monitor::{self, Monitor};
use super::{listener, worker};
use crate::config::{BrokerConfig, Config, DatabaseConfig};
use crate::db::Job;
use crate::error::Error;
use crate::runtime::shared::{Process, Shared, Started};

pub use crate::runtime::shutdown::StopHandle;

/// A running broker. `stop()` begins a graceful drain; `wait()` returns once it is done.
pub struct Broker {
    stop: StopHandle,
    /// Listener threads, then worker threads with their database.
    threads: Vec<(JoinHandle<()>, Option<Arc<Shared>>)>,
    databases: Vec<Arc<Shared>>,
    /// `/metrics` and the systemd notifications.
    monitor: Monitor,
}

impl Broker {
    /// Starts a listener and workers per database. Each listener connects, installs a missing
    /// schema and registers as the database's active instance, all databases at once; this
    /// returns when each has made its first try:
    ///
    /// - a database that cannot be reached is retried in the background (every
    ///   `notify_retry_seconds`, with backoff) while the others are served, unless no database
    ///   at all could be reached: then this fails with the first one's error, as a wrong host
    ///   or password is the likely cause;
    /// - a database held by another live instance makes this fail naming that instance, unless
    ///   `broker.standby` is set: then its listener waits and takes over when it comes free;
    /// - a server in recovery is not served; its listener checks again until it is promoted;
    /// - an unusable schema or setting makes this fail.
    ///
    /// With `http.listen` set, `/metrics`, `/healthz` and `/readyz` are served from the start
    /// (an address that cannot be bound makes this fail before any database is touched); with
    /// [`Config::systemd`] set, the service manager is told `READY=1` once every database is
    /// served or waiting as a standby, and `STOPPING=1` when the drain begins.
    ///
    /// On failure everything started is stopped again.
    pub fn start(config: Config) -> Result<Broker, Error> {
        Self::start_with(config, StopHandle::default())
    }

    /// [`start`](Self::start) with a stop handle made beforehand, so a signal that arrives
    /// while databases are still being connected already drains them.
    pub fn start_with(config: Config, stop: StopHandle) -> Result<Broker, Error> {
        config.validate()?;
        let http = monitor::bind_http(config.http.address().map_err(|message| {
            Error::Config(crate::config::ConfigError::Invalid {
                key: "http.listen".into(),
                message,
            })
        })?)?;
        let process = Arc::new(Process::new(
            config.broker.standby,
            config.databases.len(),
            http.is_some(),
        ));
        let mut broker = Broker {
            stop,
            threads: Vec::new(),
            databases: Vec::new(),
            monitor: Monitor::default(),
        };
        let mut first_tries = Vec::new();
        for db in &config.databases {
            match broker.start_database(db, &config.broker, &process) {
                Ok(first) => first_tries.push((db.name.clone(), first)),
                Err(e) => return Err(broker.abort(e)),
            }
        }
        match Monitor::start(
            http,
            config.systemd.as_ref(),
            &broker.databases,
            &broker.stop,
        ) {
            Ok(m) => broker.monitor = m,
            Err(e) => return Err(broker.abort(e)),
        }
        let mut reached = false;
        let mut unreachable = None;
        let mut refused = None;
        for (name, first) in first_tries {
            match first.recv() {
                Ok(Started::Serving | Started::Waiting | Started::InRecovery) => reached = true,
                Ok(Started::Unreachable(e)) => {
                    unreachable.get_or_insert(e);
                }
                Ok(Started::Refused(e)) => {
                    refused.get_or_insert(e);
                }
                Err(mpsc::RecvError) => {
                    refused.get_or_insert(Error::Runtime(format!(
                        "database {name}: the listener ended before its first connection try"
                    )));
                }
            }
        }
        if let Some(e) = refused {
            return Err(broker.abort(e));
        }
        match unreachable {
            Some(e) if !reached => Err(broker.abort(e)),
            _ => Ok(broker),
        }
    }

    /// Stops what was started and hands back the error that made starting fail.
    fn abort(self, e: Error) -> Error {
        self.stop();
        // The started databases drain; their errors matter less than this one.
        let _ = self.wait();
        e
    }

    /// Starts the workers and listener of one database; the receiver gets the outcome of the
    /// listener's first try.
    fn start_database(
        &mut self,
        db: &DatabaseConfig,
        settings: &BrokerConfig,
        process: &Arc<Process>,
    ) -> Result<mpsc::Receiver<Started>, Error> {
        let shared = Arc::new(Shared::new(
            db,
            settings,
            process.clone(),
            self.stop.clone(),
        )?);
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let mut queues = Vec::new();
        let mut slot = 0;
        for queue in 1..=db.queue_count as i32 {
            let (jobs_tx, jobs_rx) = crossbeam_channel::bounded::<Job>(settings.queue_buffer_size);
            queues.push(jobs_tx);
            for _ in 0..settings.workers_per_queue {
                let (worker_shared, jobs_rx, done_tx) =
                    (shared.clone(), jobs_rx.clone(), done_tx.clone());
                self.spawn(
                    format!("worker {} q{queue}", db.name),
                    Some(shared.clone()),
                    move || worker::run(worker_shared, queue, slot, jobs_rx, done_tx),
                )?;
                slot += 1;
            }
        }
        drop(done_tx);
        let (first_tx, first_rx) = mpsc::channel();
        let listener_shared = shared.clone();
        self.databases.push(shared);
        self.spawn(format!("listener {}", db.name), None, move || {
            let guard = listener_shared.clone();
            let run = move || listener::run(listener_shared, queues, done_rx, first_tx);
            // A bug in the listener must not leave the process up without serving the
            // database: stop everything and exit non-zero, so the supervisor restarts it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).is_err() {
                guard.fail("the listener panicked (a bug; see the log)".into());
            }
        })?;
        Ok(first_rx)
    }

    fn spawn(
        &mut self,
        name: String,
        worker_of: Option<Arc<Shared>>,
        f: impl FnOnce() + Send + 'static,
    ) -> Result<(), Error> {
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(|e| Error::Runtime(format!("cannot start thread {name}: {e}")))?;
        self.threads.push((handle, worker_of));
        Ok(())
    }

    /// Begins the drain: no new claims; running jobs get `shutdown_timeout_sec` to finish.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle that stops this broker from elsewhere (a signal thread, another thread).
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// The instance id this broker holds on each database, by database name (None while a
    /// database's listener is reconnecting).
    pub fn instances(&self) -> Vec<(String, Option<i64>)> {
        self.databases
            .iter()
            .map(|s| (s.db.name.clone(), s.instance()))
            .collect()
    }

    /// The address `/metrics`, `/healthz` and `/readyz` are served on (`http.listen`, with the
    /// port the system picked if it said port 0); None when `http.listen` is not set.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.monitor.http_addr()
    }

    /// Waits until every thread has finished (after `stop()` or a fatal database error). The
    /// HTTP endpoint answers until then (`/readyz` says the databases drain).
    pub fn wait(self) -> Result<(), Error> {
        let mut panicked = Vec::new();
        // Listeners first: their drain decides whether workers that ignored the cancel are
        // left behind, in which case waiting for them would hang the shutdown for good.
        let (listeners, workers): (Vec<_>, Vec<_>) = self
            .threads
            .into_iter()
            .partition(|(_, worker_of)| worker_of.is_none());
        for (handle, worker_of) in listeners.into_iter().chain(workers) {
            if worker_of.is_some_and(|s| s.workers_abandoned()) {
                continue; // detached: the process exit ends it, the server rolls it back
            }
            let name = handle.thread().name().unwrap_or("?").to_string();
            if handle.join().is_err() {
                panicked.push(name);
            }
        }
        self.monitor.stop();
        let mut problems: Vec<String> = self.databases.iter().filter_map(|s| s.fatal()).collect();
        if !panicked.is_empty() {
            problems.push(format!("thread(s) panicked: {}", panicked.join(", ")));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Runtime(problems.join("; ")))
        }
    }
}
