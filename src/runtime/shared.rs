//! What the listener and workers of one database share ([`Shared`]), and what the databases of
//! one process share ([`Process`]).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::CancelToken;

use crate::config::{BrokerConfig, DatabaseConfig};
use crate::db::{self, Pool};
use crate::error::Error;
use crate::runtime::instance::Instance;
use crate::runtime::shutdown::StopHandle;
use crate::runtime::stats::Stats;

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
    /// Read the pending/running gauges from the database (someone may scrape them).
    pub read_gauges: bool,
    /// When this process last began handing a database over to another process.
    last_hand_over: Mutex<Option<Instant>>,
}

impl Process {
    pub fn new(standby: bool, databases: usize, read_gauges: bool) -> Process {
        Process {
            standby,
            databases,
            served: AtomicUsize::new(0),
            read_gauges,
            last_hand_over: Mutex::new(None),
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// True (and noted) if no hand-over began within `cooldown`: one at a time, so the counts
    /// other processes see settle before the next move.
    pub fn begin_hand_over(&self, cooldown: Duration) -> bool {
        let mut last = lock(&self.last_hand_over);
        if last.is_some_and(|t| t.elapsed() < cooldown) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// A lock whose data no panic can leave half-written (ids, flags, counters).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One worker's place, where the listener finds what it runs: to cancel it, or to end its
/// backend when it outlives its deadline.
#[derive(Default)]
pub(crate) struct Slot {
    /// The worker's connection: its backend pid and what cancels its statement.
    pub conn: Option<(i32, CancelToken)>,
    /// The job whose statement runs now.
    pub job: Option<Running>,
}

pub(crate) struct Running {
    pub id: i64,
    /// After this the listener ends the job's backend (its timeout plus a grace).
    pub deadline: Option<Instant>,
    /// When the listener asked the server to cancel the job's statement (a cancel request).
    pub cancel_sent: Option<Instant>,
    /// Why the listener ended the job's backend, once it has.
    pub ended: Option<String>,
}

/// Where one database stands for this process: what `/readyz` and the systemd notifications
/// report. The database's listener thread (its `Acquirer`) is the only writer, and logs each
/// change once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Before the first connection try has an outcome.
    Connecting,
    /// Cannot connect (or lost the connection while connecting); retrying with backoff.
    Unreachable,
    /// The listener's connection was lost or a statement of it failed; starting over.
    Lost,
    /// The server is in recovery (a replica); checked again until it is promoted.
    InRecovery,
    /// The schema is missing, outdated or unusable, or registering failed; checked again.
    SchemaUnusable,
    /// Standby: another broker instance is active; this one takes over when it dies.
    Held,
    /// Standby: the database is free, left to a process that serves fewer for a moment.
    Free,
    /// Standby: this process handed the database over or was superseded, and waits.
    Released,
    /// This process is the database's active instance.
    Serving,
    /// Shutting down: no new claims, running jobs finish.
    Draining,
}

impl State {
    /// Served, or deliberately waiting as a standby.
    pub fn is_ready(self) -> bool {
        matches!(
            self,
            State::Serving | State::Held | State::Free | State::Released
        )
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
    /// The schema the broker's functions live in, quoted (set by the listener when it serves).
    schema: Mutex<Arc<str>>,
    /// Jobs this process has claimed and not yet finished (queued, running, or in a batch not
    /// yet committed): recovery must leave them alone.
    claimed: Mutex<HashSet<i64>>,
    /// One per worker.
    slots: Vec<Mutex<Slot>>,
    /// Roles whose runner is known to exist; held while a worker makes one.
    runners: Mutex<HashSet<u32>>,
    /// Per queue: held while the listener sends one claim's jobs down the channel, so a
    /// worker takes a claim whole (one transaction) rather than its first job alone.
    sending: Vec<Mutex<()>>,
    pub stats: Stats,
    /// Where the database stands, with a one-line reason (see [`State`]).
    state: Mutex<(State, String)>,
    /// Why this database stopped being served, when it was not a requested stop.
    fatal: Mutex<Option<String>>,
    /// Set when shutdown gave up on workers that did not stop after their job was cancelled.
    abandoned: AtomicBool,
    /// Set when the drain's time is up: claimed jobs not yet started go back.
    hand_back: AtomicBool,
}

impl Shared {
    pub fn new(
        db: &DatabaseConfig,
        settings: &BrokerConfig,
        process: Arc<Process>,
        stop: StopHandle,
    ) -> Result<Shared, Error> {
        let workers = db.queue_count as usize * settings.workers_per_queue as usize;
        Ok(Shared {
            db: db.clone(),
            settings: settings.clone(),
            pool: db::try_pool(db)?,
            instance: AtomicI64::new(0),
            process,
            stop,
            schema: Mutex::new(Arc::from("public")),
            claimed: Mutex::new(HashSet::new()),
            slots: (0..workers).map(|_| Mutex::new(Slot::default())).collect(),
            runners: Mutex::new(HashSet::new()),
            sending: (0..db.queue_count).map(|_| Mutex::new(())).collect(),
            stats: Stats::new(db.queue_count),
            state: Mutex::new((State::Connecting, "connecting".into())),
            fatal: Mutex::new(None),
            abandoned: AtomicBool::new(false),
            hand_back: AtomicBool::new(false),
        })
    }

    pub fn abandon_workers(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    pub fn workers_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::SeqCst)
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_stopped()
    }

    /// From now on workers start no claimed job: they hand them back (shutdown timeout).
    pub fn hand_back_claims(&self) {
        self.hand_back.store(true, Ordering::SeqCst);
    }

    pub fn handing_back(&self) -> bool {
        self.hand_back.load(Ordering::SeqCst)
    }

    /// Stops the whole broker because this database cannot be served; `wait()` reports `why`.
    pub fn fail(&self, why: String) {
        log::error!("database {}: {why}; stopping", self.db.name);
        *lock(&self.fatal) = Some(format!("database {}: {why}", self.db.name));
        self.stop.stop();
    }

    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal).clone()
    }

    /// Where the database stands, and why, in a few words.
    pub fn state(&self) -> (State, String) {
        lock(&self.state).clone()
    }

    /// For the listener's thread only (see [`State`]).
    pub fn set_state(&self, state: State, detail: String) {
        *lock(&self.state) = (state, detail);
    }

    pub fn instance(&self) -> Option<i64> {
        Some(self.instance.load(Ordering::SeqCst)).filter(|&id| id != 0)
    }

    /// Publishes the instance the listener claims for (None: claim nothing) and keeps the
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
        if new == 0 {
            // Not serving: what was read is no longer this process's to report.
            self.stats.set_gauges(None);
        }
    }

    pub fn schema(&self) -> Arc<str> {
        lock(&self.schema).clone()
    }

    pub fn set_schema(&self, schema: &str) {
        *lock(&self.schema) = Arc::from(schema);
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

    /// Notes jobs the listener just claimed.
    pub fn note_claimed(&self, ids: impl IntoIterator<Item = i64>) {
        lock(&self.claimed).extend(ids);
    }

    /// Forgets jobs whose outcome committed, or that are left to recovery.
    pub fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut claimed = lock(&self.claimed);
        for id in ids {
            claimed.remove(&id);
        }
    }

    /// Jobs this process holds: recovery leaves them alone.
    pub fn in_flight(&self) -> Vec<i64> {
        lock(&self.claimed).iter().copied().collect()
    }

    pub fn slot(&self, slot: usize) -> Option<MutexGuard<'_, Slot>> {
        self.slots.get(slot).map(lock)
    }

    pub fn slots(&self) -> impl Iterator<Item = MutexGuard<'_, Slot>> {
        self.slots.iter().map(lock)
    }

    /// The set of roles whose runner exists, locked: a worker that makes one holds it.
    pub fn runners(&self) -> MutexGuard<'_, HashSet<u32>> {
        lock(&self.runners)
    }

    /// Held while one claim's jobs go down `queue`'s channel (see the field).
    pub fn sending(&self, queue: i32) -> Option<MutexGuard<'_, ()>> {
        let i = usize::try_from(queue).ok()?.checked_sub(1)?;
        self.sending.get(i).map(lock)
    }

    /// Cancels every running job's statement; returns how many were asked.
    pub fn cancel_running(&self) -> usize {
        let running: Vec<(i64, CancelToken)> = self
            .slots()
            .filter_map(|s| Some((s.job.as_ref()?.id, s.conn.as_ref()?.1.clone())))
            .collect();
        for (job, token) in &running {
            if let Err(e) = db::cancel(&self.db, token) {
                log::warn!("database {}: cannot cancel job {job}: {e}", self.db.name);
            }
        }
        running.len()
    }
}
