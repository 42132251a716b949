//! Brings one database from "not connected" to "this process is its active instance":
//! connect (retrying with backoff while the database is down), refuse a server in recovery,
//! check the schema, then take the instance lock, or, in standby mode, wait until it is free.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use log::Level;

use postgres::Client;

use crate::config::DatabaseConfig;
use crate::db;
use crate::db::install;
use crate::error::Error;
use crate::runtime::instance::{Instance, TAKEOVER_GRACE};
use crate::runtime::shared::{Shared, Started, State};
use crate::runtime::sharing::{fair_share, SHARE_STEP};

/// How often a standby looks whether the database it waits for came free. Takeover after the
/// active instance dies takes about this long (plus the share delay below).
const STANDBY_TICK: Duration = Duration::from_secs(1);

/// Reconnect backoff: `notify_retry_seconds` doubled per failed try, up to this factor of it
/// and never above `BACKOFF_MAX`.
const BACKOFF_FACTOR: u32 = 8;
const BACKOFF_MAX: Duration = Duration::from_secs(300);

fn sql_error(db: &DatabaseConfig, action: &'static str, source: postgres::Error) -> Error {
    Error::Sql {
        database: db.name.clone(),
        action,
        source,
    }
}

/// The wait before the next connection try after `failures` failed ones in a row: `retry`,
/// doubled per failure after the first, at most `BACKOFF_FACTOR` times `retry` and
/// `BACKOFF_MAX` (but never less than `retry`).
fn backoff(retry: Duration, failures: u32) -> Duration {
    let cap = retry
        .saturating_mul(BACKOFF_FACTOR)
        .min(BACKOFF_MAX)
        .max(retry);
    let doublings = failures.saturating_sub(1).min(16);
    retry.saturating_mul(1 << doublings).min(cap)
}

/// A problem that lasts is logged when it starts, then again after a minute, and from then on
/// at doubling intervals up to this one: a database down for a day makes a few dozen lines.
const REMINDER_MAX: Duration = Duration::from_secs(3600);
const REMINDER_FIRST: Duration = Duration::from_secs(60);

/// The same interruption again within this window counts as a repeat (logged quietly).
const REPEAT_WINDOW: Duration = Duration::from_secs(600);

/// When a lasting condition is worth another line.
struct Reminder {
    since: Instant,
    at: Instant,
    gap: Duration,
}

impl Reminder {
    fn start() -> Reminder {
        let now = Instant::now();
        Reminder {
            since: now,
            at: now + REMINDER_FIRST,
            gap: REMINDER_FIRST,
        }
    }

    /// How long the condition has lasted, when a reminder is due now.
    fn due(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now < self.at {
            return None;
        }
        self.gap = self.gap.saturating_mul(2).min(REMINDER_MAX);
        self.at = now + self.gap;
        Some(now - self.since)
    }
}

/// The listener's last interruption, to tell a repeat from news.
struct Interruption {
    message: String,
    last: Instant,
    /// Repeats since it was last logged.
    repeats: u32,
    reminder: Reminder,
}

/// A duration as a person reads it in a log line: `45s`, `12m`, `3h20m`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    }
}

/// Brings one database from "not connected" to "this process is its active instance".
pub(crate) struct Acquirer {
    /// The listener's dedicated connection, kept while waiting so its member lock counts.
    client: Option<Client>,
    /// `client` passed the schema check and holds the member lock (standby).
    prepared: bool,
    /// Whether the listener has connected before: later connections are reconnects.
    connected_before: bool,
    /// Since when the database is not served, after it was (for "back after" in the log).
    down_since: Option<Instant>,
    /// When the present problem (unreachable, in recovery, schema) is worth another line.
    reminder: Reminder,
    /// The listener's last interruption (connection lost, statement failed).
    interruption: Option<Interruption>,
    /// The next "serving" line ends a repeated interruption: logged at debug, like it.
    quiet_serving: bool,
    /// Failed tries in a row, for the backoff.
    failures: u32,
    /// Where the outcome of the very first try goes (`Broker::start` waits for it).
    first: Option<Sender<Started>>,
    /// Since when a standby has seen the database free without taking it.
    free_since: Option<Instant>,
}

impl Acquirer {
    pub fn new(first: Sender<Started>) -> Acquirer {
        Acquirer {
            client: None,
            prepared: false,
            connected_before: false,
            down_since: None,
            reminder: Reminder::start(),
            interruption: None,
            quiet_serving: false,
            failures: 0,
            first: Some(first),
            free_since: None,
        }
    }

    /// Takes back a connection that served and no longer does (handed over, or superseded in
    /// standby mode): it keeps waiting on it, member lock and all. `why` is for `/readyz`; the
    /// caller has logged it.
    pub fn resume(&mut self, shared: &Shared, client: Client, why: &str) {
        self.client = Some(client);
        self.free_since = None;
        shared.set_state(State::Released, why.into());
    }

    /// Serving ended with the connection (`message` says why, at `level`): logged once, and a
    /// repeat of the same interruption soon after quietly (with a reminder now and then), so a
    /// listener that fails the same way after every reconnect does not log every time.
    pub fn lost(&mut self, shared: &Shared, message: String, level: Level) {
        let message = named(shared, message);
        self.client = None;
        self.down_since.get_or_insert_with(Instant::now);
        let now = Instant::now();
        let repeat = match self.interruption.as_mut() {
            Some(i) if i.message == message && i.last.elapsed() < REPEAT_WINDOW => {
                i.last = now;
                i.repeats += 1;
                Some(i)
            }
            _ => None,
        };
        let (level, line) = match repeat {
            Some(i) => match i.reminder.due() {
                Some(lasted) => {
                    let line = format!(
                        "{message} ({} more time(s) in the last {})",
                        i.repeats,
                        human(lasted)
                    );
                    i.repeats = 0;
                    (level, line)
                }
                None => (Level::Debug, message.clone()),
            },
            None => {
                self.interruption = Some(Interruption {
                    message: message.clone(),
                    last: now,
                    repeats: 0,
                    reminder: Reminder::start(),
                });
                (level, message.clone())
            }
        };
        self.quiet_serving = level == Level::Debug;
        log::log!(level, "{line}");
        shared.set_state(State::Lost, detail(shared, &message));
    }

    /// The broker stops: this database drains.
    pub fn draining(&mut self, shared: &Shared) {
        let (was, _) = shared.state();
        let message = if was == State::Serving {
            format!(
                "database {}: draining: no new claims; running jobs get up to {}s to finish",
                shared.db.name, shared.settings.shutdown_timeout_sec
            )
        } else {
            format!("database {}: stopping (it was not served)", shared.db.name)
        };
        self.note(shared, State::Draining, message);
    }

    /// Blocks until this process is the database's active instance. None when the broker stops,
    /// or when the database must not be served by this process: held by another instance
    /// without standby (the whole broker then stops; on the first try `Broker::start` reports
    /// it), or unusable on the first try.
    pub fn acquire(&mut self, shared: &Shared) -> Option<(Client, Instance)> {
        let db = &shared.db;
        let retry = shared.settings.notify_retry_seconds;
        let standby = shared.process.standby;
        while !shared.is_stopping() {
            let mut client = match self.client.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => {
                    self.prepared = false;
                    if self.failures > 0 {
                        shared.pause(backoff(retry, self.failures));
                        if shared.is_stopping() {
                            break;
                        }
                    }
                    match db::connect(db) {
                        Ok(c) => {
                            if self.connected_before {
                                shared.stats.reconnects.fetch_add(1, Relaxed);
                            }
                            self.connected_before = true;
                            c
                        }
                        Err(e @ Error::Config(_)) if self.first.is_some() => {
                            self.report(Started::Refused(e));
                            return None;
                        }
                        Err(e) => {
                            self.unreachable(shared, e);
                            continue;
                        }
                    }
                }
            };
            // A standby server cannot run jobs; it may be promoted, so keep looking.
            match db::in_recovery(&mut client) {
                Err(source) => {
                    self.unreachable(shared, sql_error(db, "checking for recovery", source));
                    continue;
                }
                Ok(true) => {
                    self.note(
                        shared,
                        State::InRecovery,
                        format!(
                            "database {}: the server at {}:{} is in recovery (a standby server); not serving it, checking again every {retry:?}",
                            db.name, db.host, db.port
                        ),
                    );
                    self.report(Started::InRecovery);
                    self.failures = 0;
                    self.client = Some(client);
                    shared.pause(retry);
                    continue;
                }
                Ok(false) => {}
            }
            if !self.prepared {
                if let Err(e) = install::ensure(&mut client, db) {
                    if client.is_closed() {
                        self.unreachable(shared, e);
                        continue;
                    }
                    // Someone may be upgrading it right now: look again later.
                    if self.refuse_or_wait(shared, client, e) {
                        return None;
                    }
                    continue;
                }
                if standby {
                    if let Err(source) = db::take_member_lock(&mut client) {
                        let e = sql_error(db, "taking the member lock", source);
                        self.unreachable(shared, e);
                        continue;
                    }
                }
                self.prepared = true;
            }
            let grace = if standby {
                // Look before trying: a failed try is an ERROR in the server's log, and a free
                // database may be better left to a process that serves fewer.
                match self.standby_may_try(shared, &mut client) {
                    Err(source) => {
                        let e = sql_error(db, "looking at the instance lock", source);
                        self.unreachable(shared, e);
                        continue;
                    }
                    Ok(false) => {
                        self.failures = 0;
                        self.client = Some(client);
                        shared.pause(STANDBY_TICK);
                        continue;
                    }
                    Ok(true) => Duration::ZERO,
                }
            } else {
                TAKEOVER_GRACE
            };
            match Instance::register_with(
                &mut client,
                db,
                &shared.settings.name,
                grace,
                shared.settings.evict_lock_holders,
            ) {
                Ok(instance) => {
                    self.failures = 0;
                    self.free_since = None;
                    shared.set_instance(Some(instance));
                    let back = self
                        .down_since
                        .take()
                        .map(|t| format!("; back after {}", human(t.elapsed())))
                        .unwrap_or_default();
                    let level = if std::mem::take(&mut self.quiet_serving) {
                        Level::Debug
                    } else {
                        Level::Info
                    };
                    self.note_at(
                        shared,
                        State::Serving,
                        format!(
                            "database {}: serving as instance {} ({} queues, {} worker(s) each){back}",
                            db.name, instance.id, db.queue_count, shared.settings.workers_per_queue
                        ),
                        Some(level),
                    );
                    self.report(Started::Serving);
                    return Some((client, instance));
                }
                Err(Error::InstanceActive { message, .. }) if standby => {
                    // Taken between our look and our try.
                    self.held(shared, format!("database {}: {message}", db.name));
                    self.client = Some(client);
                    shared.pause(STANDBY_TICK);
                }
                Err(Error::InstanceActive { database, message }) => {
                    // Without standby this process expects to be the only broker here.
                    if self.first.is_some() {
                        self.report(Started::Refused(Error::InstanceActive {
                            database,
                            message,
                        }));
                    } else {
                        shared.fail(message);
                    }
                    return None;
                }
                Err(e) if client.is_closed() => self.unreachable(shared, e),
                Err(e) => {
                    if self.refuse_or_wait(shared, client, e) {
                        return None;
                    }
                }
            }
        }
        None
    }

    /// Whether a standby should try the instance lock now: never while it is held; when it is
    /// free, at once if this process serves less than its share, else only after the database
    /// stayed free for a while (so a process with fewer databases gets it first).
    fn standby_may_try(
        &mut self,
        shared: &Shared,
        client: &mut Client,
    ) -> Result<bool, postgres::Error> {
        let (holder, members) = db::instance_lock_state(client)?;
        if holder == Some(false) {
            // Held by a session that is no broker: registering names it (and ends it, if
            // configured); waiting would wait for nobody.
            return Ok(true);
        }
        if holder.is_some() {
            self.free_since = None;
            if shared.state().0 != State::Held {
                let holder = db::active_instance(client)?
                    .unwrap_or_else(|| "an instance that has not registered yet".into());
                self.held(
                    shared,
                    format!(
                        "database {}: another broker instance is active: {holder}",
                        shared.db.name
                    ),
                );
            }
            return Ok(false);
        }
        let served = shared.process.served();
        let fair = fair_share(shared.process.databases, members);
        let delay = if served < fair {
            Duration::ZERO
        } else {
            SHARE_STEP.saturating_mul(u32::try_from(served - fair + 1).unwrap_or(u32::MAX))
        };
        let since = match self.free_since {
            Some(since) => since,
            None => {
                if !delay.is_zero() {
                    self.note_at(
                        shared,
                        State::Free,
                        format!(
                            "database {}: free; leaving it to processes with fewer databases for {delay:?} (this one serves {served}, its share is {fair} of {} with {members} process(es))",
                            shared.db.name,
                            shared.process.databases
                        ),
                        Some(Level::Debug),
                    );
                }
                *self.free_since.insert(Instant::now())
            }
        };
        Ok(since.elapsed() >= delay)
    }

    fn held(&mut self, shared: &Shared, message: String) {
        self.note(
            shared,
            State::Held,
            format!("{message}; waiting to take over (standby)"),
        );
        self.report(Started::Waiting);
        self.failures = 0;
    }

    /// A try that failed for want of a working connection: counts for the backoff.
    fn unreachable(&mut self, shared: &Shared, e: Error) {
        let error = e.to_string();
        let first_try = self.first.is_some();
        self.report(Started::Unreachable(e));
        self.client = None;
        self.failures = self.failures.saturating_add(1);
        let retry = backoff(shared.settings.notify_retry_seconds, self.failures);
        let cap = backoff(shared.settings.notify_retry_seconds, u32::MAX);
        let message = if !first_try {
            format!("{error}; retrying in {retry:?}, backing off to every {cap:?}")
        } else if shared.process.databases == 1 {
            // Starting fails with this error, and the CLI says so: no retry to announce.
            self.note_at(shared, State::Unreachable, error, Some(Level::Debug));
            return;
        } else {
            // Whether the broker starts depends on the other databases: say both outcomes.
            format!(
                "{error}; if another configured database can be served, retrying in {retry:?} \
                 (backing off to every {cap:?}), else the broker exits"
            )
        };
        self.note(shared, State::Unreachable, message);
        log::debug!(
            "database {}: connection try {} failed: {error}",
            shared.db.name,
            self.failures
        );
    }

    /// Publishes `state` and logs `message` if the state changed; a problem that lasts is
    /// logged again now and then ([`Reminder`]), never once per try.
    fn note(&mut self, shared: &Shared, state: State, message: String) {
        self.note_at(shared, state, message, None);
    }

    /// [`note`](Self::note) at `level` instead of the state's own.
    fn note_at(&mut self, shared: &Shared, state: State, message: String, level: Option<Level>) {
        let message = named(shared, message);
        let (was, _) = shared.state();
        shared.set_state(state, detail(shared, &message));
        let problem = matches!(
            state,
            State::Unreachable | State::InRecovery | State::SchemaUnusable
        );
        let level = level.unwrap_or(match state {
            State::Unreachable | State::SchemaUnusable if shared.is_stopping() => Level::Debug,
            State::Unreachable | State::SchemaUnusable => Level::Error,
            State::Held | State::InRecovery | State::Lost => Level::Warn,
            State::Serving | State::Draining => Level::Info,
            State::Connecting | State::Free | State::Released => Level::Debug,
        });
        if was != state {
            self.reminder = Reminder::start();
            if level != Level::Debug {
                // News worth a line: the line that ends it is worth one too.
                self.quiet_serving = false;
            }
            log::log!(level, "{message}");
        } else if problem {
            if let Some(lasted) = self.reminder.due() {
                log::log!(level, "{message} (for {} now)", human(lasted));
            }
        }
    }

    /// A problem with a working connection (schema, registration): on the very first try it
    /// refuses the start (true); later it is logged once and tried again after
    /// `notify_retry_seconds`, keeping the connection.
    fn refuse_or_wait(&mut self, shared: &Shared, client: Client, e: Error) -> bool {
        if self.first.is_some() {
            self.report(Started::Refused(e));
            return true;
        }
        let retry = shared.settings.notify_retry_seconds;
        self.note(
            shared,
            State::SchemaUnusable,
            format!("{e}; trying again every {retry:?}"),
        );
        self.client = Some(client);
        shared.pause(retry);
        false
    }

    fn report(&mut self, started: Started) {
        if let Some(first) = self.first.take() {
            // Broker::start may have given up waiting (it stops then): nothing to tell.
            let _ = first.send(started);
        }
    }
}

/// A log line that starts with `database NAME: ` (most errors say it themselves; a
/// configuration error, e.g. a password file gone unreadable, names its key instead).
fn named(shared: &Shared, message: String) -> String {
    let prefix = format!("database {}: ", shared.db.name);
    if message.starts_with(&prefix) {
        message
    } else {
        prefix + &message
    }
}

/// A log line without its `database NAME: ` prefix, for `/readyz`.
fn detail(shared: &Shared, message: &str) -> String {
    let prefix = format!("database {}: ", shared.db.name);
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

#[cfg(test)]
mod tests {
    use super::{backoff, human, Reminder, REMINDER_FIRST, REMINDER_MAX};
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_a_cap() {
        let s = Duration::from_secs;
        let tries = |retry| (1..=6).map(|f| backoff(retry, f)).collect::<Vec<_>>();
        assert_eq!(tries(s(1)), [s(1), s(2), s(4), s(8), s(8), s(8)]);
        assert_eq!(tries(s(30)), [s(30), s(60), s(120), s(240), s(240), s(240)]);
        assert_eq!(
            tries(s(60)),
            [s(60), s(120), s(240), s(300), s(300), s(300)]
        );
        // A retry above the absolute cap is kept as configured.
        assert_eq!(tries(s(600)), [s(600); 6]);
        assert_eq!(backoff(s(1), u32::MAX), s(8));
    }

    #[test]
    fn reminders_come_after_a_minute_then_ever_rarer() {
        let mut r = Reminder::start();
        assert_eq!(r.due(), None);
        let mut gaps = Vec::new();
        for _ in 0..8 {
            r.at = std::time::Instant::now(); // as if its time had come
            assert!(r.due().is_some());
            gaps.push(r.gap.as_secs());
        }
        assert_eq!(REMINDER_FIRST.as_secs(), 60);
        assert_eq!(gaps, [120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(REMINDER_MAX.as_secs(), 3600);
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        let s = Duration::from_secs;
        assert_eq!(human(s(45)), "45s");
        assert_eq!(human(s(600)), "10m");
        assert_eq!(human(s(3 * 3600 + 20 * 60 + 5)), "3h20m");
    }
}
