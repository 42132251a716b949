//! The listener of one database. On its dedicated connection it holds the instance lock,
//! LISTENs on `broker_jobs` and turns each notification (payload: the queue) into wake-ups
//! for that queue's workers. Every `queue_timer_sec` it polls for ready jobs a notification
//! missed and recovers jobs left by dead instances; every few seconds it sends the heartbeat.
//! On shutdown it drains the workers and marks the instance shut down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

use crate::broker::Shared;
use crate::db::{self, describe};
use crate::error::Error;
use crate::instance::{Instance, HEARTBEAT_INTERVAL};

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
    Connection(String),
    /// Another instance took over the database; this one must not claim any more.
    Superseded,
}

impl From<postgres::Error> for Interrupted {
    fn from(e: postgres::Error) -> Self {
        Interrupted::Connection(describe(&e))
    }
}

/// Serves the database until shutdown, reconnecting when the connection drops.
pub(crate) fn run(
    shared: Arc<Shared>,
    client: Client,
    instance: Instance,
    wakers: Vec<Sender<()>>,
    done: Receiver<()>,
) {
    let name = shared.db.name.clone();
    let mut session = Some((client, instance));
    let mut warned_queues = HashSet::new();
    while !shared.is_stopping() {
        let Some((client, instance)) = session.as_mut() else {
            session = reconnect(&shared);
            continue;
        };
        match serve(&shared, client, *instance, &wakers, &mut warned_queues) {
            Ok(()) => {}
            Err(Interrupted::Connection(e)) => {
                log::warn!(
                    "database {name}: listener connection lost ({e}); reconnecting in {:?}",
                    shared.settings.notify_retry_seconds
                );
                shared.set_instance(None);
                session = None;
                pause(&shared, shared.settings.notify_retry_seconds);
            }
            Err(Interrupted::Superseded) => {
                shared.set_instance(None);
                shared.fail("another broker instance took over".into());
                break;
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
            let orphans = poll(shared, client, instance, wakers, warned_queues)?;
            // Orphans still locked by a dying backend are free in a moment: look again soon.
            next_poll = now
                + if orphans {
                    ORPHAN_RECHECK.min(poll_every)
                } else {
                    poll_every
                };
        }
        if now >= next_ping {
            if !instance.ping(client)? {
                return Err(Interrupted::Superseded);
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

/// Recovers orphaned jobs and wakes every queue that has a ready job. Returns whether
/// orphans remain (still locked).
fn poll(
    shared: &Shared,
    client: &mut Client,
    instance: Instance,
    wakers: &[Sender<()>],
    warned_queues: &mut HashSet<i32>,
) -> Result<bool, postgres::Error> {
    let recovered = db::recover(client, instance.id, &shared.in_flight())?;
    if recovered > 0 {
        log::info!(
            "database {}: recovered {recovered} job(s) left running by a dead instance",
            shared.db.name
        );
    }
    for queue in db::runnable_queues(client, wakers.len() as i32)? {
        wake(shared, wakers, queue, warned_queues);
    }
    for queue in db::orphan_queues(client, wakers.len() as i32)? {
        wake(shared, wakers, queue, warned_queues);
    }
    // A cancel whose notification was missed still arrives, one poll late.
    db::deliver_cancels(client)?;
    purge(shared, client)?;
    db::orphans_left(client, instance.id)
}

/// Deletes finished jobs past their retention, a batch at a time, a bounded amount per poll.
fn purge(shared: &Shared, client: &mut Client) -> Result<(), postgres::Error> {
    let s = &shared.settings;
    let mut total = 0;
    for _ in 0..MAX_PURGE_BATCHES_PER_POLL {
        let n = db::purge(client, s.retention_completed, s.retention_failed, s.retention_batch_size)?;
        total += n;
        if n < s.retention_batch_size as i32 {
            break;
        }
    }
    if total > 0 {
        log::info!("database {}: retention deleted {total} finished job(s)", shared.db.name);
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

/// Connects again and re-registers; None (after a log line) if the database is not back yet.
fn reconnect(shared: &Shared) -> Option<(Client, Instance)> {
    let attempt = db::connect(&shared.db).and_then(|mut client| {
        let instance = Instance::register(&mut client, &shared.db, &shared.settings.name)?;
        Ok((client, instance))
    });
    match attempt {
        Ok((client, instance)) => {
            log::info!(
                "database {}: reconnected as instance {}",
                shared.db.name,
                instance.id
            );
            shared.set_instance(Some(instance));
            Some((client, instance))
        }
        Err(Error::InstanceActive { message, .. }) => {
            shared.fail(message);
            None
        }
        Err(e) => {
            log::warn!(
                "{e}; retrying in {:?}",
                shared.settings.notify_retry_seconds
            );
            pause(shared, shared.settings.notify_retry_seconds);
            None
        }
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
        }
    }
}

/// Sleeps up to `d`, returning early on shutdown.
fn pause(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.is_stopping() && Instant::now() < until {
        std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
    }
}
