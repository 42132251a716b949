//! Schedules: cron expressions and their fire times ([`cron`]), and the scheduler that turns
//! due schedules into jobs from the listener's poll ([`scheduler`]).

/// Cron expressions and their fire times in a time zone.
pub(crate) mod cron;
/// Due schedules become jobs (called from the listener's poll).
pub(crate) mod scheduler;
