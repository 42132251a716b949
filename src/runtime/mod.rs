//! The running broker. Per database, data flows one way: the listener ([`listener`]) wakes on
//! a notification or a poll and claims ready jobs, sends them down the queue's channel, and
//! the queue's workers ([`worker`]) run them ([`execute`]) and record each result in the
//! transaction of its effects. Around that: becoming the single active instance ([`acquire`],
//! [`instance`]), standby sharing ([`sharing`]), the state a database's threads share
//! ([`shared`]) and what they count ([`stats`]), what the process tells the outside
//! ([`monitor`]: HTTP endpoints, systemd), and starting and stopping it all ([`broker`],
//! [`shutdown`]).

/// Per database: from "not connected" to "active instance" (backoff, recovery, standby).
pub(crate) mod acquire;
/// Starting and stopping the whole broker.
pub(crate) mod broker;
/// The backstop behind timeouts and cancels: cancel, then end the backend.
pub(crate) mod deadlines;
/// The statements that run a claimed job, and what they return.
pub(crate) mod execute;
/// The single active instance per database.
pub(crate) mod instance;
/// Per database: LISTEN, claim, poll, heartbeat, drain.
pub(crate) mod listener;
/// `/metrics`, `/healthz`, `/readyz` and the systemd notifications.
pub(crate) mod monitor;
/// What the listener and workers of a database share.
pub(crate) mod shared;
/// Standby processes sharing databases out among themselves.
pub(crate) mod sharing;
/// SIGTERM/SIGINT handling and the stop handle.
pub(crate) mod shutdown;
/// What a database's threads count: jobs, durations, claims, gauges.
pub(crate) mod stats;
/// Per queue: run claimed jobs, group-committed.
pub(crate) mod worker;
