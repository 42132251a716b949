//! The listener of one database. On its dedicated connection it holds the instance lock and
//! LISTENs on `broker_jobs`; a notification (payload: the queue) makes it claim that queue's
//! ready jobs, as many as the queue's channel has room for, in one statement, and send them
//! down the channel to the queue's workers. Every `queue_timer_sec` it polls: recovery of
//! jobs left by dead instances, dependencies, retention, schedules, and a claim for every
//! queue. It also enforces deadlines (ending the backend of a job that outlived its timeout
//! or a cancel), sends the heartbeat and, while `/metrics` is served, reads the pending and
//! running jobs per queue every [`GAUGES_EVERY`]. On shutdown it drains the workers and marks
//! the instance shut down.
//!
//! Becoming the active instance (connecting, retrying, waiting as a standby) is the
//! [`Acquirer`]'s part; when the connection drops the listener hands back to it, and serves
//! again once it has reconnected and registered: LISTEN again and a poll at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::Level;
use postgres::error::Severity;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::db;
use crate::db::Job;
use crate::error::describe;
use crate::runtime::acquire::Acquirer;
use crate::runtime::deadlines::{deliver_cancels, enforce_deadlines};
use crate::runtime::instance::{Instance, HEARTBEAT_INTERVAL};
use crate::runtime::shared::{Shared, Started};
use crate::runtime::sharing;
use crate::runtime::stats::{Ended, Gauges};

/// How long the listener blocks for notifications before it looks at the stop flag.
const TICK: Duration = Duration::from_millis(250);

/// How often the pending/running gauges are read from the database (when they are wanted).
pub(crate) const GAUGES_EVERY: Duration = Duration::from_secs(5);

/// How soon to poll again while a dead instance's jobs are still locked.
const ORPHAN_RECHECK: Duration = Duration::from_secs(1);

/// Retention batches per poll, so a large backlog is worked off without stalling the listener.
const MAX_PURGE_BATCHES_PER_POLL: usize = 10;

/// Notifications handled per tick at most, so a flood cannot starve the poll and heartbeat.
const MAX_NOTIFICATIONS_PER_TICK: usize = 1000;

/// Why serving on a connection ended.
enum Interrupted {
    /// The connection is gone (server restart, terminated backend, network).
    Connection(String),
    /// A statement of the listener failed on a working connection.
    Failed(String),
    /// Another instance took over the database; this one must not claim any more.
    Superseded,
    /// This standby process serves more than its share and another one waits for this
    /// database (the number of processes that want it).
    HandOver(i64),
}

impl From<postgres::Error> for Interrupted {
    fn from(e: postgres::Error) -> Self {
        // FATAL (e.g. 57P01 from pg_terminate_backend or a shutdown) arrives as a server error
        // while the client may not have seen the connection close yet.
        let gone = e.is_closed()
            || e.as_db_error().is_none_or(|d| {
                matches!(d.parsed_severity(), Some(Severity::Fatal | Severity::Panic))
                    || d.code().code().starts_with("08")
                    || d.code().code().starts_with("57P")
            });
        if gone {
            Interrupted::Connection(describe(&e))
        } else {
            Interrupted::Failed(describe(&e))
        }
    }
}

/// Serves the database until shutdown: becomes its active instance (reporting the first try
/// on `first`), serves, and starts over when the connection drops or, in standby mode, when
/// the database goes to another process.
pub(crate) fn run(
    shared: Arc<Shared>,
    queues: Vec<Sender<Job>>,
    done: Receiver<()>,
    first: std::sync::mpsc::Sender<Started>,
) {
    let name = shared.db.name.clone();
    let mut acquirer = Acquirer::new(first);
    let mut session: Option<(Client, Instance)> = None;
    let mut memory = Memory::new();
    while !shared.is_stopping() {
        let Some((client, instance)) = session.as_mut() else {
            session = acquirer.acquire(&shared);
            if session.is_none() {
                // Stopping, or this database must not be served by this process.
                break;
            }
            continue;
        };
        match serve(&shared, client, *instance, &queues, &mut memory) {
            Ok(()) => {}
            Err(Interrupted::Connection(e)) => {
                // Running jobs go on on their own connections; nothing new is claimed until
                // the listener is back (it reconnects at once, then with backoff).
                shared.set_instance(None);
                session = None;
                acquirer.lost(
                    &shared,
                    format!("database {name}: listener connection lost ({e}); reconnecting"),
                    Level::Warn,
                );
            }
            Err(Interrupted::Failed(e)) => {
                // Starting over at once could repeat the failure in a tight loop. The session
                // goes (and with it the lock): a fresh one may fare better, or a standby may.
                let retry = shared.settings.notify_retry_seconds;
                shared.set_instance(None);
                session = None;
                acquirer.lost(
                    &shared,
                    format!("database {name}: listener failed: {e}; starting over in {retry:?}"),
                    Level::Error,
                );
                shared.pause(retry);
            }
            Err(Interrupted::Superseded) => {
                shared.set_instance(None);
                let Some((mut client, instance)) = session.take() else {
                    break;
                };
                // Release the instance lock this session may still hold, or a standby (this
                // one included) would wait for it forever.
                if let Err(e) = instance.shutdown(&mut client) {
                    log::debug!(
                        "database {name}: releasing the superseded instance: {}",
                        describe(&e)
                    );
                }
                if !shared.process.standby {
                    shared.fail("another broker instance took over".into());
                    break;
                }
                log::warn!("database {name}: another broker instance took over; waiting (standby)");
                wait_on(
                    &mut acquirer,
                    &shared,
                    client,
                    "standby: another broker instance took over",
                );
            }
            Err(Interrupted::HandOver(members)) => {
                let Some((mut client, instance)) = session.take() else {
                    break;
                };
                match sharing::hand_over(&shared, &mut client, instance, members) {
                    Ok(true) => wait_on(
                        &mut acquirer,
                        &shared,
                        client,
                        "standby: handed over to a process that serves fewer databases",
                    ),
                    Ok(false) => session = Some((client, instance)),
                    Err(e) => {
                        shared.set_instance(None);
                        acquirer.lost(
                            &shared,
                            format!(
                                "database {name}: listener connection lost while handing over ({}); reconnecting",
                                describe(&e)
                            ),
                            Level::Warn,
                        );
                    }
                }
            }
        }
    }
    acquirer.draining(&shared);
    drain(&shared, queues, done);
    if let Some((mut client, instance)) = session {
        match instance.shutdown(&mut client) {
            Ok(()) => log::info!("database {name}: instance {} shut down", instance.id),
            Err(e) => log::warn!(
                "database {name}: cannot mark instance {} shut down: {}",
                instance.id,
                describe(&e)
            ),
        }
    }
}

/// What the listener remembers across reconnects: what it warned about, and the counts of the
/// periodic summary.
struct Memory {
    /// Queues above `queue_count` already reported (bounded: a flood cannot grow it).
    warned_queues: HashSet<i32>,
    /// Notifications ignored since the last report, and when that was (None: never).
    ignored: u64,
    last_report: Option<Instant>,
    /// Totals at the last summary line, to log what changed since, and when that was.
    last_summary: (u64, u64, u64),
    last_summary_at: Instant,
}

/// Queues above `queue_count` reported at most, so a flood of them cannot grow memory.
const MAX_WARNED_QUEUES: usize = 100;

/// How often the listener writes its summary line (jobs completed, failed, rate).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Delayed jobs promoted per statement, so a large backlog is worked off in bounded steps.
const PROMOTE_BATCH: i32 = 10_000;

impl Memory {
    fn new() -> Memory {
        Memory {
            warned_queues: HashSet::new(),
            ignored: 0,
            last_report: None,
            last_summary: (0, 0, 0),
            last_summary_at: Instant::now(),
        }
    }
}

/// What woke the listener, gathered over one round of notifications; a flood of the same kind
/// costs one action.
#[derive(Default)]
struct Wakeups {
    cancel: bool,
    schedule: bool,
    delayed: bool,
}

/// Listens, claims, polls and beats the heart until shutdown or a broken connection.
fn serve(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    queues: &[Sender<Job>],
    memory: &mut Memory,
) -> Result<(), Interrupted> {
    prepare_session(shared, client)?;
    let claim = db::ClaimStatement::prepare(client)?;
    let poll_every = Duration::from_secs(shared.settings.queue_timer_sec);
    // Poll at once: jobs added while we were not listening must not wait for the timer.
    let mut next_poll = Instant::now();
    let mut next_ping = Instant::now() + HEARTBEAT_INTERVAL;
    let mut next_gauges = Instant::now();
    let mut next_delayed: Option<Instant> = None;
    let mut next_cancels: Option<Instant> = None;
    let mut wanted = vec![true; queues.len()];
    let mut woke = Wakeups {
        delayed: true,
        ..Wakeups::default()
    };
    while !shared.is_stopping() {
        let now = Instant::now();
        if now >= next_poll {
            let (orphans, schedule_wait) = poll(shared, client, instance, queues.len(), memory)?;
            wanted.iter_mut().for_each(|w| *w = true);
            woke.cancel = true;
            woke.delayed = true;
            // Orphans still locked by a dying backend are free in a moment: look again soon.
            next_poll = now
                + if orphans {
                    ORPHAN_RECHECK.min(poll_every)
                } else {
                    poll_every
                };
            // The poll fires due schedules: a schedule due before the timer brings it forward
            // (a seconds field needs it; the timer alone is queue_timer_sec).
            if let Some(wait) = schedule_wait {
                next_poll = next_poll.min(Instant::now() + wait);
            }
        } else if std::mem::take(&mut woke.schedule) {
            if let Some(wait) = schedules(shared, client)? {
                next_poll = next_poll.min(Instant::now() + wait);
            }
        }
        if std::mem::take(&mut woke.delayed) || next_delayed.is_some_and(|t| now >= t) {
            let (ready, next_in) = db::promote_delayed(client, PROMOTE_BATCH)?;
            for queue in ready {
                if let Some(w) = usize::try_from(queue - 1)
                    .ok()
                    .and_then(|i| wanted.get_mut(i))
                {
                    *w = true;
                }
            }
            next_delayed = next_in.map(|d| Instant::now() + d);
        }
        if now >= next_ping {
            if !instance.ping(client)? {
                return Err(Interrupted::Superseded);
            }
            if let Some(members) = sharing::should_hand_over(shared, client)? {
                return Err(Interrupted::HandOver(members));
            }
            next_ping = now + HEARTBEAT_INTERVAL;
            summary(shared, memory);
        }
        if shared.process.read_gauges && now >= next_gauges {
            read_gauges(shared, client)?;
            next_gauges = now + GAUGES_EVERY;
        }
        if std::mem::take(&mut woke.cancel) || next_cancels.is_some_and(|t| now >= t) {
            // Until every asked-for cancel has taken, look again every second (the backstop).
            next_cancels = deliver_cancels(shared, client)?.then(|| now + Duration::from_secs(1));
        }
        enforce_deadlines(shared, client)?;
        let soon = claim_for(shared, client, &claim, instance, queues, &mut wanted)?;
        // A queue with more ready jobs than its channel took is looked at again in a moment.
        let wait = if soon { BACKLOG_TICK } else { TICK };
        listen(shared, client, wait, &mut wanted, &mut woke, memory)?;
        if client.is_closed() {
            return Err(Interrupted::Connection("connection closed".into()));
        }
    }
    Ok(())
}

/// How long the listener waits for notifications while a queue has more ready jobs than its
/// channel could take: its workers free room within milliseconds when jobs are short.
const BACKLOG_TICK: Duration = Duration::from_millis(1);

/// The listener's session: LISTEN, the broker's schema first in its path, bounded lock waits,
/// and commits that do not wait for the disk (a claim lost in a crash is simply not a claim:
/// the job is still pending; a job's own transaction commits durably and flushes the claim
/// before it). The settings the database enforces are published here.
fn prepare_session(shared: &Shared, client: &mut Client) -> Result<(), postgres::Error> {
    let schema = db::broker_schema(client)?;
    client.batch_execute(&format!(
        "LISTEN broker_jobs; SET search_path = pg_catalog, {schema}; \
         SET lock_timeout = '5s'; SET synchronous_commit = off"
    ))?;
    shared.set_schema(&schema);
    db::publish_setting(
        client,
        "max_job_size",
        &shared.settings.max_job_size.to_string(),
    )
}

/// Claims ready jobs for every queue that wants them and has room in its channel, and sends
/// them there (never blocking: the claim takes no more than the channel has room for).
/// Returns true when some queue has more waiting than its channel could take.
fn claim_for(
    shared: &Shared,
    client: &mut Client,
    claim: &db::ClaimStatement,
    instance: Instance,
    queues: &[Sender<Job>],
    wanted: &mut [bool],
) -> Result<bool, postgres::Error> {
    let fetch = shared.settings.fetch_query_que_size as usize;
    let mut backlog = false;
    for (i, tx) in queues.iter().enumerate() {
        if !wanted[i] {
            continue;
        }
        let capacity = tx.capacity().unwrap_or(fetch);
        let room = capacity.saturating_sub(tx.len());
        // While the workers still have work queued, wait until a good share of the channel is
        // free, so claims come in batches rather than one row at a time.
        let worth_it = (capacity.min(fetch) / 2).max(1);
        if room == 0 || (!tx.is_empty() && room < worth_it) {
            backlog = true;
            continue;
        }
        let limit = room.min(fetch);
        let jobs = claim.claim(client, i as i32 + 1, instance.id, limit as i32)?;
        shared.note_claimed(jobs.iter().map(|j| j.id));
        let got = jobs.len();
        shared.stats.claim_size.observe(got as u64);
        log::trace!(
            "database {}: claimed {got} job(s) of queue {}",
            shared.db.name,
            i + 1
        );
        let _whole = shared.sending(i as i32 + 1);
        for job in jobs {
            if tx.try_send(job).is_err() {
                // Cannot happen (the claim took no more than the room, and only this thread
                // sends); should it, the job is left to recovery rather than lost.
                shared.release([job.id]);
            }
        }
        wanted[i] = got == limit;
        backlog |= wanted[i];
    }
    Ok(backlog)
}

/// Waits up to `wait` for notifications and notes what they ask for; a bounded number per
/// round, each handled in constant time, so a flood costs its own weight and no more.
fn listen(
    shared: &Shared,
    client: &mut Client,
    wait: Duration,
    wanted: &mut [bool],
    woke: &mut Wakeups,
    memory: &mut Memory,
) -> Result<(), postgres::Error> {
    let mut notifications = client.notifications();
    // Wait for the first; then take what has arrived meanwhile, without waiting again.
    let Some(first) = notifications.timeout_iter(wait).next()? else {
        return Ok(());
    };
    log::trace!(
        "database {}: notified ({:?})",
        shared.db.name,
        first.payload()
    );
    let mut rest = notifications.iter().take(MAX_NOTIFICATIONS_PER_TICK);
    let mut next = Some(first);
    let mut received = 0;
    while let Some(n) = next.take() {
        received += 1;
        match n.payload() {
            "cancel" => woke.cancel = true,
            "delayed" => woke.delayed = true,
            crate::schedule::scheduler::NOTIFY_PAYLOAD => woke.schedule = true,
            payload => match payload
                .parse::<usize>()
                .ok()
                .and_then(|q| q.checked_sub(1))
                .and_then(|i| wanted.get_mut(i))
            {
                Some(w) => *w = true,
                // Unknown, or a queue nobody serves (the poll reports real jobs there).
                None => memory.ignored += 1,
            },
        }
        next = rest.next()?;
    }
    shared
        .stats
        .notifications
        .fetch_add(received, std::sync::atomic::Ordering::Relaxed);
    let due = memory
        .last_report
        .is_none_or(|t| t.elapsed() >= SUMMARY_EVERY);
    if memory.ignored > 0 && due {
        log::warn!(
            "database {}: ignored {} notification(s) on channel broker_jobs that name no queue 1..{} (sent by hand?)",
            shared.db.name,
            memory.ignored,
            wanted.len()
        );
        memory.ignored = 0;
        memory.last_report = Some(Instant::now());
    }
    Ok(())
}

/// Recovers orphaned jobs, settles dependencies, applies retention and fires due schedules.
/// Returns whether orphans remain (still locked) and how soon the next schedule is due.
/// Maintenance never waits long on a lock a submitter holds: such a step is skipped until the
/// next poll.
fn poll(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    queue_count: usize,
    memory: &mut Memory,
) -> Result<(bool, Option<Duration>), postgres::Error> {
    let name = &shared.db.name;
    let in_flight = shared.in_flight();
    if let Some(recovered) = maintenance(shared, db::recover(client, instance.id, &in_flight))? {
        recovered.log(name);
    }
    if let Some(settled) = maintenance(shared, db::settle_dependencies(client))? {
        if settled > 0 {
            log::info!(
                "database {name}: settled {settled} dependent job(s) a dependency's end had missed"
            );
        }
    }
    maintenance(shared, purge(shared, client))?;
    let schedule_wait = schedules(shared, client)?;
    for queue in db::queues_above(client, queue_count as i32)? {
        if memory.warned_queues.len() < MAX_WARNED_QUEUES && memory.warned_queues.insert(queue) {
            log::warn!(
                "database {name}: jobs in queue {queue} will not run: queue_count is {queue_count}"
            );
        }
    }
    Ok((db::orphans_left(client, &in_flight)?, schedule_wait))
}

/// Fires due schedules (a maintenance step) and counts them; returns how soon the next one is
/// due.
fn schedules(shared: &Shared, client: &mut Client) -> Result<Option<Duration>, postgres::Error> {
    let ran = maintenance(
        shared,
        crate::schedule::scheduler::run(&shared.db.name, client),
    )?;
    Ok(ran.and_then(|ran| {
        shared
            .stats
            .schedules_fired
            .fetch_add(ran.fired, std::sync::atomic::Ordering::Relaxed);
        ran.next_in
    }))
}

/// Reads the jobs pending and running per queue for `/metrics`: one statement every
/// [`GAUGES_EVERY`], whatever the number of queues or scrapes. A lock it would wait for skips
/// it until next time, as for maintenance.
fn read_gauges(shared: &Shared, client: &mut Client) -> Result<(), postgres::Error> {
    let queue_count = shared.db.queue_count as i32;
    if let Some(rows) = maintenance(shared, db::queue_gauges(client, queue_count))? {
        let mut gauges = Gauges {
            queues: vec![(0, 0); shared.db.queue_count as usize],
            unserved: (0, 0),
            read_at: Instant::now(),
        };
        for (queue, pending, running) in rows {
            let slot = usize::try_from(queue - 1)
                .ok()
                .and_then(|i| gauges.queues.get_mut(i))
                .unwrap_or(&mut gauges.unserved);
            slot.0 += pending;
            slot.1 += running;
        }
        shared.stats.set_gauges(Some(gauges));
    }
    Ok(())
}

/// A maintenance step's result: a lock it would have waited for (lock timeout, deadlock,
/// cancel) skips it until the next poll instead of stopping the listener.
fn maintenance<T>(
    shared: &Shared,
    result: Result<T, postgres::Error>,
) -> Result<Option<T>, postgres::Error> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if db::is_statement_error(&e) && db::is_transient(&e) => {
            log::debug!(
                "database {}: maintenance step skipped until the next poll: {}",
                shared.db.name,
                describe(&e)
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Deletes finished jobs past their retention, a batch at a time, a bounded amount per poll.
fn purge(shared: &Shared, client: &mut Client) -> Result<(), postgres::Error> {
    let s = &shared.settings;
    let mut total = 0;
    for _ in 0..MAX_PURGE_BATCHES_PER_POLL {
        let n = db::purge(
            client,
            s.retention_completed,
            s.retention_failed,
            s.retention_batch_size,
        )?;
        total += n;
        if n < s.retention_batch_size as i32 {
            break;
        }
    }
    if total > 0 {
        log::info!(
            "database {}: retention deleted {total} finished job(s)",
            shared.db.name
        );
    }
    Ok(())
}

/// Once a minute, when anything happened: how many jobs completed and failed, and the rate.
fn summary(shared: &Shared, memory: &mut Memory) {
    use std::sync::atomic::Ordering::Relaxed;
    let elapsed = memory.last_summary_at.elapsed();
    if elapsed < SUMMARY_EVERY {
        return;
    }
    let s = &shared.stats;
    let now = (
        s.total(Ended::Completed),
        // An attempt that failed counts as a failure, also when the job is retried.
        s.total(Ended::Failed) + s.total(Ended::Retried),
        s.total(Ended::Cancelled),
    );
    let (before, secs) = (memory.last_summary, elapsed.as_secs_f64());
    let (c, f, x) = (now.0 - before.0, now.1 - before.1, now.2 - before.2);
    if c + f + x > 0 {
        let unlogged = s.unlogged_job_lines.swap(0, Relaxed);
        log::info!(
            "database {}: in the last {secs:.0}s: {c} job(s) completed, {f} failed, {x} cancelled ({:.1} jobs/s){}",
            shared.db.name,
            (c + f + x) as f64 / secs,
            if unlogged > 0 {
                format!("; {unlogged} line(s) about single jobs (failures, jobs that could not start) logged at debug only")
            } else {
                String::new()
            }
        );
    }
    memory.last_summary = now;
    memory.last_summary_at = Instant::now();
}

/// Keeps waiting for the database on `client`, which no longer serves it (`why`). It stops
/// listening first, or notifications would pile up in memory while another process serves.
fn wait_on(acquirer: &mut Acquirer, shared: &Shared, mut client: Client, why: &str) {
    match client.batch_execute("UNLISTEN *") {
        Ok(()) => acquirer.resume(shared, client, why),
        Err(e) => acquirer.lost(
            shared,
            format!(
                "database {}: listener connection lost ({}); reconnecting",
                shared.db.name,
                describe(&e)
            ),
            Level::Warn,
        ),
    }
}

/// Lets the workers finish what they claimed: closes their channels and waits
/// `shutdown_timeout_sec`; then what has not started goes back, and what still runs is
/// cancelled (transactional jobs roll back and become pending again).
fn drain(shared: &Shared, queues: Vec<Sender<Job>>, done: Receiver<()>) {
    drop(queues);
    let name = &shared.db.name;
    let timeout = Duration::from_secs(shared.settings.shutdown_timeout_sec);
    if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(timeout) {
        shared.hand_back_claims();
        let n = shared.cancel_running();
        log::warn!("database {name}: shutdown timeout of {timeout:?} reached; cancelled {n} running job(s)");
        // Cancelled jobs end at once; this bound only guards against a hang.
        if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(60)) {
            log::error!("database {name}: workers did not stop after cancel; leaving them");
            shared.abandon_workers();
        }
    }
}
