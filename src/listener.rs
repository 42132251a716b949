//! The listener of one database. On its dedicated connection it holds the instance lock,
//! LISTENs on `broker_jobs` and turns each notification (payload: the queue) into wake-ups
//! for that queue's workers. Every `queue_timer_sec` it polls for ready jobs a notification
//! missed and recovers jobs left by dead instances; every few seconds it sends the heartbeat.
//! On shutdown it drains the workers and marks the instance shut down.
//!
//! Becoming the active instance (connecting, retrying, waiting as a standby) is the
//! [`Acquirer`]'s part; when the connection drops the listener hands back to it, and serves
//! again once it has reconnected and registered: LISTEN again and a poll at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::error::Severity;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::acquire::Acquirer;
use crate::broker::{Shared, Started};
use crate::db::{self, describe};
use crate::instance::{Instance, HEARTBEAT_INTERVAL};
use crate::sharing;

/// How long the listener blocks for notifications before it looks at the stop flag.
const TICK: Duration = Duration::from_millis(250);

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
    wakers: Vec<Sender<()>>,
    done: Receiver<()>,
    first: std::sync::mpsc::Sender<Started>,
) {
    let name = shared.db.name.clone();
    let mut acquirer = Acquirer::new(first);
    let mut session: Option<(Client, Instance)> = None;
    let mut warned_queues = HashSet::new();
    while !shared.is_stopping() {
        let Some((client, instance)) = session.as_mut() else {
            session = acquirer.acquire(&shared);
            if session.is_none() {
                // Stopping, or this database must not be served by this process.
                break;
            }
            continue;
        };
        match serve(&shared, client, *instance, &wakers, &mut warned_queues) {
            Ok(()) => {}
            Err(Interrupted::Connection(e)) => {
                // Running jobs go on on their own connections; nothing new is claimed until
                // the listener is back (it reconnects at once, then with backoff).
                log::warn!("database {name}: listener connection lost ({e}); reconnecting");
                shared.set_instance(None);
                session = None;
                acquirer.lost();
            }
            Err(Interrupted::Failed(e)) => {
                // Starting over at once could repeat the failure in a tight loop. The session
                // goes (and with it the lock): a fresh one may fare better, or a standby may.
                let retry = shared.settings.notify_retry_seconds;
                log::error!("database {name}: listener failed: {e}; starting over in {retry:?}");
                shared.set_instance(None);
                session = None;
                acquirer.lost();
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
                wait_on(&mut acquirer, client);
            }
            Err(Interrupted::HandOver(members)) => {
                let Some((mut client, instance)) = session.take() else {
                    break;
                };
                match sharing::hand_over(&shared, &mut client, instance, members) {
                    Ok(true) => wait_on(&mut acquirer, client),
                    Ok(false) => session = Some((client, instance)),
                    Err(e) => {
                        log::warn!(
                            "database {name}: listener connection lost while handing over ({}); reconnecting",
                            describe(&e)
                        );
                        shared.set_instance(None);
                        acquirer.lost();
                    }
                }
            }
        }
    }
    drain(&shared, wakers, done);
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

/// Listens, polls and beats the heart until shutdown or a broken connection.
fn serve(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    wakers: &[Sender<()>],
    warned_queues: &mut HashSet<i32>,
) -> Result<(), Interrupted> {
    client.batch_execute("LISTEN broker_jobs")?;
    let poll_every = Duration::from_secs(shared.settings.queue_timer_sec);
    // Poll at once: jobs added while we were not listening must not wait for the timer.
    let mut next_poll = Instant::now();
    let mut next_ping = Instant::now() + HEARTBEAT_INTERVAL;
    while !shared.is_stopping() {
        let now = Instant::now();
        if now >= next_poll {
            let (orphans, schedule_wait) = poll(shared, client, instance, wakers, warned_queues)?;
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
        }
        if now >= next_ping {
            if !instance.ping(client)? {
                return Err(Interrupted::Superseded);
            }
            if let Some(members) = sharing::should_hand_over(shared, client)? {
                return Err(Interrupted::HandOver(members));
            }
            next_ping = now + HEARTBEAT_INTERVAL;
        }
        let mut cancel_asked = false;
        {
            let mut notifications = client.notifications();
            let mut iter = notifications
                .timeout_iter(TICK)
                .take(MAX_NOTIFICATIONS_PER_TICK);
            while let Some(n) = iter.next()? {
                match n.payload() {
                    "cancel" => cancel_asked = true,
                    crate::scheduler::NOTIFY_PAYLOAD => next_poll = Instant::now(),
                    payload => match payload.parse::<i32>() {
                        Ok(queue) => wake(shared, wakers, queue, warned_queues),
                        Err(_) => log::debug!(
                            "database {}: ignoring notification {payload:?}",
                            shared.db.name
                        ),
                    },
                }
            }
        }
        if cancel_asked {
            db::deliver_cancels(client)?;
        }
        if client.is_closed() {
            return Err(Interrupted::Connection("connection closed".into()));
        }
    }
    Ok(())
}

/// Recovers orphaned jobs, wakes every queue that has a ready job and fires due schedules.
/// Returns whether orphans remain (still locked) and how soon the next schedule is due.
fn poll(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    wakers: &[Sender<()>],
    warned_queues: &mut HashSet<i32>,
) -> Result<(bool, Option<Duration>), postgres::Error> {
    let recovered = db::recover(client, instance.id, &shared.in_flight())?;
    if recovered > 0 {
        log::info!(
            "database {}: recovered {recovered} job(s) left running by a dead instance",
            shared.db.name
        );
    }
    for queue in db::queues_to_wake(client, wakers.len() as i32)? {
        wake(shared, wakers, queue, warned_queues);
    }
    // A cancel whose notification was missed still arrives, one poll late.
    db::deliver_cancels(client)?;
    let settled = db::settle_dependencies(client)?;
    if settled > 0 {
        log::info!(
            "database {}: settled {settled} dependent job(s) a dependency's end had missed",
            shared.db.name
        );
    }
    purge(shared, client)?;
    let schedule_wait = crate::scheduler::run(&shared.db.name, client)?;
    Ok((db::orphans_left(client, instance.id)?, schedule_wait))
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

/// Wakes the workers of `queue`; a full channel already holds enough wake-ups.
fn wake(shared: &Shared, wakers: &[Sender<()>], queue: i32, warned_queues: &mut HashSet<i32>) {
    let Some(tx) = usize::try_from(queue)
        .ok()
        .and_then(|q| q.checked_sub(1))
        .and_then(|i| wakers.get(i))
    else {
        if warned_queues.insert(queue) {
            log::warn!(
                "database {}: jobs in queue {queue} will not run: queue_count is {}",
                shared.db.name,
                wakers.len()
            );
        }
        return;
    };
    for _ in 0..shared.settings.workers_per_queue {
        let _ = tx.try_send(());
    }
}

/// Keeps waiting for the database on `client`, which no longer serves it. It stops listening
/// first, or notifications would pile up in memory while another process serves.
fn wait_on(acquirer: &mut Acquirer, mut client: Client) {
    match client.batch_execute("UNLISTEN *") {
        Ok(()) => acquirer.resume(client),
        Err(_) => acquirer.lost(),
    }
}

/// Lets the workers finish: closes their wake-up channels, waits `shutdown_timeout_sec`, then
/// cancels what still runs (transactional jobs roll back and become pending again).
fn drain(shared: &Shared, wakers: Vec<Sender<()>>, done: Receiver<()>) {
    drop(wakers);
    let name = &shared.db.name;
    let timeout = Duration::from_secs(shared.settings.shutdown_timeout_sec);
    if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(timeout) {
        let n = shared.cancel_running();
        log::warn!("database {name}: shutdown timeout of {timeout:?} reached; cancelled {n} running job(s)");
        // Cancelled jobs end at once; this bound only guards against a hang.
        if let Err(RecvTimeoutError::Timeout) = done.recv_timeout(Duration::from_secs(60)) {
            log::error!("database {name}: workers did not stop after cancel; leaving them");
            shared.abandon_workers();
        }
    }
}
