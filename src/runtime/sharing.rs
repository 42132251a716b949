//! Standby processes share databases out, with PostgreSQL as the only coordinator: each holds
//! a shared "member" advisory lock on every database it is connected to, so any process can
//! count how many processes want a database, serve its fair share of them, and hand over
//! what is beyond it.

use std::time::{Duration, Instant};

use postgres::Client;

use crate::db;
use crate::runtime::instance::Instance;
use crate::runtime::shared::Shared;

/// How long a free database is left to processes that serve fewer databases, per database this
/// process serves at or above its fair share. Nobody below their share: it is taken anyway.
pub(crate) const SHARE_STEP: Duration = Duration::from_secs(2);

/// A process hands over at most one database per this interval, so the count of members and
/// served databases settles between moves and databases do not ping-pong.
const HAND_OVER_COOLDOWN: Duration = Duration::from_secs(10);

/// How many of its `databases` a process should serve when `members` processes (itself
/// included) want them: the ceiling, so that every database has someone and nobody waits idle
/// while another serves two more than it.
pub fn fair_share(databases: usize, members: i64) -> usize {
    let members = usize::try_from(members).unwrap_or(1).max(1);
    databases.div_ceil(members)
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
    use super::fair_share;

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
