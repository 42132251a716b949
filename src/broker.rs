//! The broker: for each database a listener thread and a fixed set of workers, started together
//! and drained together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use postgres::CancelToken;

use crate::config::{BrokerConfig, Config, DatabaseConfig};
use crate::db::{self, Pool};
use crate::error::Error;
use crate::instance::Instance;
use crate::{listener, worker};

/// A running broker. `stop()` begins a graceful drain; `wait()` returns once it is done.
pub struct Broker {
    stop: StopHandle,
    /// Listener threads, then worker threads with their database.
    threads: Vec<(JoinHandle<()>, Option<Arc<Shared>>)>,
    databases: Vec<Arc<Shared>>,
}

/// Asks a broker to drain; cheap to clone and safe to call from a signal thread.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
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
    /// On failure everything started is stopped again.
    pub fn start(config: Config) -> Result<Broker, Error> {
        Self::start_with(config, StopHandle::default())
    }

    /// [`start`](Self::start) with a stop handle made beforehand, so a signal that arrives
    /// while databases are still being connected already drains them.
    pub fn start_with(config: Config, stop: StopHandle) -> Result<Broker, Error> {
        config.validate()?;
        let process = Arc::new(Process {
            standby: config.broker.standby,
            databases: config.databases.len(),
            served: AtomicUsize::new(0),
            last_hand_over: Mutex::new(None),
        });
        let mut broker = Broker {
            stop,
            threads: Vec::new(),
            databases: Vec::new(),
        };
        let mut first_tries = Vec::new();
        for db in &config.databases {
            match broker.start_database(db, &config.broker, &process) {
                Ok(first) => first_tries.push((db.name.clone(), first)),
                Err(e) => return Err(broker.abort(e)),
            }
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
        let shared = Arc::new(Shared {
            db: db.clone(),
            settings: settings.clone(),
            pool: db::try_pool(db)?,
            instance: AtomicI64::new(0),
            process: process.clone(),
            stop: self.stop.clone(),
            running: Mutex::new(HashMap::new()),
            fatal: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        });
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let mut wakers = Vec::new();
        let mut slot = 0;
        for queue in 1..=db.queue_count as i32 {
            let (wake_tx, wake_rx) = crossbeam_channel::bounded(settings.queue_buffer_size);
            wakers.push(wake_tx);
            for _ in 0..settings.workers_per_queue {
                let (worker_shared, wake_rx, done_tx) =
                    (shared.clone(), wake_rx.clone(), done_tx.clone());
                self.spawn(
                    format!("worker {} q{queue}", db.name),
                    Some(shared.clone()),
                    move || worker::run(worker_shared, queue, slot, wake_rx, done_tx),
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
            let run = move || listener::run(listener_shared, wakers, done_rx, first_tx);
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

    /// Waits until every thread has finished (after `stop()` or a fatal database error).
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

/// How a listener's first try went, for `Broker::start`.
pub(crate) enum Started {
    Serving,
    /// Held by another instance; this standby waits for it.
    Waiting,
    /// The server is a standby; the listener waits for its promotion.
    InRecovery,
    /// Not reachable now; the listener keeps trying.
    Unreachable(Error),
    /// Must not or cannot be served: another instance holds it (without standby), or the
    /// schema or a setting is unusable.
    Refused(Error),
}

/// What the databases of one broker process share: whether it runs in standby mode and how
/// many databases it serves, to share them out with other standby processes.
pub(crate) struct Process {
    pub standby: bool,
    /// Databases configured in this process.
    pub databases: usize,
    /// Databases this process is the active instance of now.
    served: AtomicUsize,
    /// When this process last began handing a database over to another process.
    last_hand_over: Mutex<Option<Instant>>,
}

impl Process {
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// True (and noted) if no hand-over began within `cooldown`: one at a time, so the counts
    /// other processes see settle before the next move.
    pub fn begin_hand_over(&self, cooldown: Duration) -> bool {
        let mut last = self
            .last_hand_over
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < cooldown) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// What the listener and workers of one database share.
pub(crate) struct Shared {
    pub db: DatabaseConfig,
    pub settings: BrokerConfig,
    pub pool: Pool,
    /// The instance id, 0 while the listener has none (connecting, waiting or handing over).
    instance: AtomicI64,
    pub process: Arc<Process>,
    stop: StopHandle,
    /// Jobs running now, by worker slot, with what cancels them.
    running: Mutex<HashMap<usize, (i64, CancelToken)>>,
    /// Why this database stopped being served, when it was not a requested stop.
    fatal: Mutex<Option<String>>,
    /// Set when shutdown gave up on workers that did not stop after their job was cancelled.
    abandoned: AtomicBool,
}

impl Shared {
    pub fn abandon_workers(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    pub fn workers_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    /// Stops the whole broker because this database cannot be served; `wait()` reports `why`.
    pub fn fail(&self, why: String) {
        log::error!("database {}: {why}; stopping", self.db.name);
        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(format!("database {}: {why}", self.db.name));
        self.stop.stop();
    }

    fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn instance(&self) -> Option<i64> {
        Some(self.instance.load(Ordering::SeqCst)).filter(|&id| id != 0)
    }

    /// Publishes the instance the workers claim for (None: claim nothing) and keeps the
    /// process's count of served databases.
    pub fn set_instance(&self, instance: Option<Instance>) {
        let new = instance.map_or(0, |i| i.id);
        let old = self.instance.swap(new, Ordering::SeqCst);
        match (old, new) {
            (0, n) if n != 0 => {
                self.process.served.fetch_add(1, Ordering::SeqCst);
            }
            (o, 0) if o != 0 => {
                self.process.served.fetch_sub(1, Ordering::SeqCst);
            }
            _ => {}
        }
    }

    /// Sleeps up to `d`, returning early on shutdown.
    pub fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        while !self.is_stopping() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }

    fn running(&self) -> MutexGuard<'_, HashMap<usize, (i64, CancelToken)>> {
        // A worker that panicked while holding the lock left nothing half-written in a map insert.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that `slot` runs `job`; the returned guard forgets it again.
    pub fn track(&self, slot: usize, job: i64, cancel: CancelToken) -> InFlight<'_> {
        self.running().insert(slot, (job, cancel));
        InFlight { shared: self, slot }
    }

    pub fn in_flight(&self) -> Vec<i64> {
        self.running().values().map(|(id, _)| *id).collect()
    }

    /// Cancels every running job's statement; returns how many were asked.
    pub fn cancel_running(&self) -> usize {
        let running: Vec<(i64, CancelToken)> = self.running().values().cloned().collect();
        for (job, token) in &running {
            if let Err(e) = db::cancel(&self.db, token) {
                log::warn!("database {}: cannot cancel job {job}: {e}", self.db.name);
            }
        }
        running.len()
    }
}

/// A job marked as running on a worker slot for as long as this lives.
pub(crate) struct InFlight<'a> {
    shared: &'a Shared,
    slot: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.shared.running().remove(&self.slot);
    }
}
