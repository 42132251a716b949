//! The broker: for each database a listener thread and a fixed set of workers, started together
//! and drained together.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use postgres::CancelToken;

use crate::config::{BrokerConfig, Config, DatabaseConfig};
use crate::db::{self, Pool};
use crate::error::Error;
use crate::install;
use crate::instance::Instance;
use crate::{listener, worker};

/// A running broker. `stop()` begins a graceful drain; `wait()` returns once it is done.
pub struct Broker {
    stop: StopHandle,
    threads: Vec<JoinHandle<()>>,
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
    /// Installs a missing schema, registers as each database's active instance and starts the
    /// listeners and workers. Fails if any database cannot be served (the others are stopped).
    pub fn start(config: Config) -> Result<Broker, Error> {
        config.validate()?;
        let mut broker = Broker {
            stop: StopHandle::default(),
            threads: Vec::new(),
            databases: Vec::new(),
        };
        for db in &config.databases {
            if let Err(e) = broker.start_database(db, &config.broker) {
                broker.stop();
                // The started databases drain; their errors matter less than this one.
                let _ = broker.wait();
                return Err(e);
            }
        }
        Ok(broker)
    }

    fn start_database(
        &mut self,
        db: &DatabaseConfig,
        settings: &BrokerConfig,
    ) -> Result<(), Error> {
        let mut client = db::connect(db)?;
        install::ensure(&mut client, db)?;
        let instance = Instance::register(&mut client, db, &settings.name)?;
        log::info!(
            "database {}: serving as instance {} ({} queues, {} worker(s) each)",
            db.name,
            instance.id,
            db.queue_count,
            settings.workers_per_queue
        );
        let shared = Arc::new(Shared {
            db: db.clone(),
            settings: settings.clone(),
            pool: db::pool(db),
            instance: AtomicI64::new(instance.id),
            stop: self.stop.clone(),
            running: Mutex::new(HashMap::new()),
            fatal: Mutex::new(None),
        });
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
        let mut wakers = Vec::new();
        let mut slot = 0;
        for queue in 1..=db.queue_count as i32 {
            let (wake_tx, wake_rx) = crossbeam_channel::bounded(settings.queue_buffer_size);
            wakers.push(wake_tx);
            for _ in 0..settings.workers_per_queue {
                let (shared, wake_rx, done_tx) = (shared.clone(), wake_rx.clone(), done_tx.clone());
                self.spawn(format!("worker {} q{queue}", db.name), move || {
                    worker::run(shared, queue, slot, wake_rx, done_tx)
                })?;
                slot += 1;
            }
        }
        drop(done_tx);
        let listener_shared = shared.clone();
        self.spawn(format!("listener {}", db.name), move || {
            listener::run(listener_shared, client, instance, wakers, done_rx)
        })?;
        self.databases.push(shared);
        Ok(())
    }

    fn spawn(&mut self, name: String, f: impl FnOnce() + Send + 'static) -> Result<(), Error> {
        let handle = std::thread::Builder::new()
            .name(name.clone())
            .spawn(f)
            .map_err(|e| Error::Runtime(format!("cannot start thread {name}: {e}")))?;
        self.threads.push(handle);
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
        for handle in self.threads {
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

/// What the listener and workers of one database share.
pub(crate) struct Shared {
    pub db: DatabaseConfig,
    pub settings: BrokerConfig,
    pub pool: Pool,
    /// The instance id, 0 while the listener has none (reconnecting or lost).
    instance: AtomicI64,
    stop: StopHandle,
    /// Jobs running now, by worker slot, with what cancels them.
    running: Mutex<HashMap<usize, (i64, CancelToken)>>,
    /// Why this database stopped being served, when it was not a requested stop.
    fatal: Mutex<Option<String>>,
}

impl Shared {
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

    pub fn set_instance(&self, instance: Option<Instance>) {
        self.instance
            .store(instance.map_or(0, |i| i.id), Ordering::SeqCst);
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
            if let Err(e) = token.cancel_query(postgres::NoTls) {
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
