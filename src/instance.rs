//! The single active instance per database: a session advisory lock held by the listener's
//! dedicated connection (so it dies with the process, even on kill -9) plus a row in
//! `broker_queueinstance` with a heartbeat for operators.
//!
//! Getting there is the [`Acquirer`]'s job: connect (retrying with backoff while the database
//! is down), refuse a server in recovery, check the schema, then take the lock, or, in standby
//! mode, wait until it is free. Standby processes also share databases out: each holds a shared
//! "member" advisory lock on every database it is connected to, so any process can count how
//! many processes want a database and serve only its fair share of them (see [`fair_share`]).

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use crate::broker::{Shared, Started};
use crate::config::DatabaseConfig;
use crate::db;
use crate::error::Error;
use crate::install;

/// How often the active instance proves it is alive (and a standby process checks whether it
/// serves more than its share).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long registration retries a lock held by a predecessor whose connection is still
/// closing (after kill -9 the server needs a moment to notice).
const TAKEOVER_GRACE: Duration = Duration::from_secs(3);

/// How often a standby looks whether the database it waits for came free. Takeover after the
/// active instance dies takes about this long (plus the share delay below).
const STANDBY_TICK: Duration = Duration::from_secs(1);

/// How long a free database is left to processes that serve fewer databases, per database this
/// process serves at or above its fair share. Nobody below their share: it is taken anyway.
const SHARE_STEP: Duration = Duration::from_secs(2);

/// A process hands over at most one database per this interval, so the count of members and
/// served databases settles between moves and databases do not ping-pong.
const HAND_OVER_COOLDOWN: Duration = Duration::from_secs(10);

/// Reconnect backoff: `notify_retry_seconds` doubled per failed try, up to this factor of it
/// and never above `BACKOFF_MAX`.
const BACKOFF_FACTOR: u32 = 8;
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// This process's registration on one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub id: i64,
}

impl Instance {
    /// Becomes the active instance of the database `client` is connected to, or explains who
    /// is. Jobs in `in_flight` (this process's workers still run them) are left to their
    /// workers; a held lock is retried for `grace`.
    fn register_with(
        client: &mut Client,
        db: &DatabaseConfig,
        name: &str,
        in_flight: &[i64],
        grace: Duration,
    ) -> Result<Instance, Error> {
        let deadline = Instant::now() + grace;
        loop {
            match db::register_instance(
                client,
                name,
                &hostname(),
                env!("CARGO_PKG_VERSION"),
                in_flight,
            ) {
                Ok(id) => return Ok(Instance { id }),
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    if Instant::now() >= deadline {
                        let message = e
                            .as_db_error()
                            .map(|d| d.message().to_string())
                            .unwrap_or_default();
                        return Err(Error::InstanceActive {
                            database: db.name.clone(),
                            message,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(source) => {
                    return Err(Error::Sql {
                        database: db.name.clone(),
                        action: "registering the instance",
                        source,
                    })
                }
            }
        }
    }

    /// The heartbeat; false means another instance has taken over.
    pub fn ping(&self, client: &mut Client) -> Result<bool, postgres::Error> {
        db::ping_instance(client, self.id)
    }

    /// Marks the instance shut down and releases the lock.
    pub fn shutdown(&self, client: &mut Client) -> Result<(), postgres::Error> {
        db::shutdown_instance(client, self.id)
    }
}

/// The host name recorded with the instance, so an operator knows where it runs.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// How many of its `databases` a process should serve when `members` processes (itself
/// included) want them: the ceiling, so that every database has someone and nobody waits idle
/// while another serves two more than it.
pub fn fair_share(databases: usize, members: i64) -> usize {
    let members = usize::try_from(members).unwrap_or(1).max(1);
    databases.div_ceil(members)
}

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

/// Where one database stands for this process. Logged once per change, not per try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Unreachable,
    InRecovery,
    SchemaUnusable,
    Held,
    Serving,
}

/// Brings one database from "not connected" to "this process is its active instance".
pub(crate) struct Acquirer {
    /// The listener's dedicated connection, kept while waiting so its member lock counts.
    client: Option<Client>,
    /// `client` passed the schema check and holds the member lock (standby).
    prepared: bool,
    state: Option<State>,
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
            state: None,
            failures: 0,
            first: Some(first),
            free_since: None,
        }
    }

    /// Takes back a connection that served and no longer does (handed over, or superseded in
    /// standby mode): it keeps waiting on it, member lock and all.
    pub fn resume(&mut self, client: Client) {
        self.client = Some(client);
        self.state = None;
        self.free_since = None;
    }

    /// Notes that serving ended with the connection.
    pub fn lost(&mut self) {
        self.client = None;
        self.state = None;
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
                        Ok(c) => c,
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
                    if self.first.is_some() {
                        self.report(Started::Refused(e));
                        return None;
                    }
                    // Someone may be upgrading it right now: look again later.
                    self.note(
                        shared,
                        State::SchemaUnusable,
                        format!("{e}; checking again every {retry:?}"),
                    );
                    self.client = Some(client);
                    shared.pause(retry);
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
                &shared.in_flight(),
                grace,
            ) {
                Ok(instance) => {
                    self.failures = 0;
                    self.free_since = None;
                    shared.set_instance(Some(instance));
                    self.note(
                        shared,
                        State::Serving,
                        format!(
                            "database {}: serving as instance {} ({} queues, {} worker(s) each)",
                            db.name, instance.id, db.queue_count, shared.settings.workers_per_queue
                        ),
                    );
                    self.report(Started::Serving);
                    return Some((client, instance));
                }
                Err(Error::InstanceActive { message, .. }) if standby => {
                    // Taken between our look and our try.
                    self.held(shared, message);
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
                    if self.first.is_some() {
                        self.report(Started::Refused(e));
                        return None;
                    }
                    self.note(
                        shared,
                        State::SchemaUnusable,
                        format!("{e}; trying again every {retry:?}"),
                    );
                    self.client = Some(client);
                    shared.pause(retry);
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
        let (held, members) = db::instance_lock_state(client)?;
        if held {
            self.free_since = None;
            if self.state != Some(State::Held) {
                let holder = db::active_instance(client)?
                    .unwrap_or_else(|| "an instance that has not registered yet".into());
                self.held(
                    shared,
                    format!(
                        "another broker instance is active on database {}: {holder}",
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
                    log::debug!(
                        "database {}: free; leaving it to processes with fewer databases for {delay:?} (this one serves {served}, its share is {fair} of {} with {members} process(es))",
                        shared.db.name,
                        shared.process.databases
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
        self.report(Started::Unreachable(e));
        self.client = None;
        self.failures = self.failures.saturating_add(1);
        let retry = shared.settings.notify_retry_seconds;
        let cap = backoff(retry, u32::MAX);
        self.note(
            shared,
            State::Unreachable,
            format!("{error}; retrying in {retry:?}, backing off to every {cap:?}"),
        );
        log::debug!(
            "database {}: connection try {} failed: {error}",
            shared.db.name,
            self.failures
        );
    }

    /// Logs `message` if the state changed; a state held for hours logs once.
    fn note(&mut self, shared: &Shared, state: State, message: String) {
        if self.state == Some(state) {
            return;
        }
        self.state = Some(state);
        match state {
            State::Serving => log::info!("{message}"),
            State::Held | State::InRecovery => log::warn!("{message}"),
            State::Unreachable | State::SchemaUnusable => {
                if shared.is_stopping() {
                    log::debug!("{message}")
                } else {
                    log::error!("{message}")
                }
            }
        }
    }

    fn report(&mut self, started: Started) {
        if let Some(first) = self.first.take() {
            // Broker::start may have given up waiting (it stops then): nothing to tell.
            let _ = first.send(started);
        }
    }
}

/// Whether this (standby) process should hand `instance`'s database over to another process:
/// it serves more than its share and another standby process is connected to the database, and
/// it has handed none over recently. Marks the hand-over as begun when it says yes, and returns
/// how many processes want the database.
pub(crate) fn should_hand_over(
    shared: &Shared,
    client: &mut Client,
) -> Result<Option<i64>, postgres::Error> {
    let process = &shared.process;
    // A process serving one database is within any share.
    if !process.standby || process.served() <= 1 {
        return Ok(None);
    }
    let (_, members) = db::instance_lock_state(client)?;
    if members < 2 || process.served() <= fair_share(process.databases, members) {
        return Ok(None);
    }
    Ok(process
        .begin_hand_over(HAND_OVER_COOLDOWN)
        .then_some(members))
}

/// Gives the database up gracefully so a process with fewer databases takes it: no new claims,
/// running jobs finish (for up to `shutdown_timeout_sec`), then the instance shuts down and
/// releases its lock. Ok(false) when jobs ran too long: it keeps serving.
pub(crate) fn hand_over(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    members: i64,
) -> Result<bool, postgres::Error> {
    let name = &shared.db.name;
    shared.set_instance(None);
    // A worker that read the instance id just before may still be claiming: give its claim
    // time to commit, then wait for what the database shows running under this instance.
    shared.pause(Duration::from_millis(500));
    let deadline = Instant::now() + Duration::from_secs(shared.settings.shutdown_timeout_sec);
    while !shared.in_flight().is_empty() || db::instance_has_running(client, instance.id)? {
        if Instant::now() >= deadline || shared.is_stopping() {
            log::info!(
                "database {name}: not handing over: jobs still running; serving on as instance {}",
                instance.id
            );
            shared.set_instance(Some(instance));
            return Ok(false);
        }
        shared.pause(Duration::from_millis(250));
    }
    instance.shutdown(client)?;
    log::info!(
        "database {name}: handed over (instance {} shut down): this process served more than its share of {} database(s) among {members} process(es)",
        instance.id,
        shared.process.databases
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::{backoff, fair_share};
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
    fn fair_share_is_the_ceiling() {
        assert_eq!(fair_share(4, 2), 2);
        assert_eq!(fair_share(4, 3), 2);
        assert_eq!(fair_share(4, 1), 4);
        assert_eq!(fair_share(1, 2), 1);
        assert_eq!(fair_share(3, 0), 3);
        assert_eq!(fair_share(5, 2), 3);
    }
}
