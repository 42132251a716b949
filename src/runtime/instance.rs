//! The single active instance per database: a session advisory lock held by the listener's
//! dedicated connection (so it dies with the process, even on kill -9) plus a row in
//! `broker_queueinstance` with a heartbeat for operators. Getting there (connecting, waiting
//! as a standby) is `acquire`'s job; sharing databases among processes is
//! `sharing`'s.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::Client;

use crate::config::DatabaseConfig;
use crate::db;
use crate::error::Error;

/// How often the active instance proves it is alive (and a standby process checks whether it
/// serves more than its share).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// How long registration retries a lock held by a predecessor whose connection is still
/// closing (after kill -9 the server needs a moment to notice).
pub(crate) const TAKEOVER_GRACE: Duration = Duration::from_secs(3);

/// This process's registration on one database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub id: i64,
}

impl Instance {
    /// Becomes the active instance of the database `client` is connected to, or explains who
    /// is; a held lock is retried for `grace`. (Recovery is the listener's first poll.)
    pub(crate) fn register_with(
        client: &mut Client,
        db: &DatabaseConfig,
        name: &str,
        grace: Duration,
        evict: bool,
    ) -> Result<Instance, Error> {
        let deadline = Instant::now() + grace;
        let mut named = None;
        loop {
            match db::register_instance(client, name, &hostname(), env!("CARGO_PKG_VERSION"), evict)
            {
                Ok(id) => return Ok(Instance { id }),
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                    let message = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_default();
                    // A squatter is worth a line of its own, once, even if the retry wins
                    // (the operator should know whose session the broker ended).
                    if message.contains("no broker instance") && named.as_ref() != Some(&message) {
                        log::warn!("database {}: {message}", db.name);
                        named = Some(message.clone());
                    }
                    if Instant::now() >= deadline {
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
