//! The database adapter: connections and the pool (with TLS), what an error means, one typed
//! call per broker SQL function, what the operator commands read, and the embedded schema.
//! Everything else reaches PostgreSQL through here.

/// What a failed statement means for the connection, the job and the retry.
mod classify;
/// The embedded schema and its installer.
pub mod install;
/// The SQL of the single active instance.
mod instance;
/// The SQL of jobs: claim, delayed jobs, cancels, retries, dependencies, retention.
mod jobs;
/// Connections and the workers' pool.
mod pool;
/// What the operator commands read: status, job and schedule lists.
mod report;
/// The SQL of schedules.
mod schedules;
/// TLS for database connections with libpq's sslmode semantics (rustls).
pub mod tls;

pub use classify::{is_not_startable, is_query_canceled, is_statement_error, is_transient};
pub use instance::*;
pub use jobs::*;
pub use pool::*;
pub use report::*;
pub use schedules::*;
