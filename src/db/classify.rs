//! Error classes: what a failed statement means for the connection, the job and the retry.

use postgres::error::SqlState;

/// True when the error came from the server about a statement, so the connection still works
/// (a FATAL error, such as 57P01 from pg_terminate_backend, ends the connection with it).
pub fn is_statement_error(e: &postgres::Error) -> bool {
    use postgres::error::Severity;
    e.as_db_error()
        .is_some_and(|d| !matches!(d.parsed_severity(), Some(Severity::Fatal | Severity::Panic)))
        && !e.is_closed()
}

/// True when `broker_run` refused to start a job that is not this attempt's to run: another
/// session holds its row (55P03), or the claim is no longer held (55000). Raised by the
/// broker's function itself (its error context says so, which no job's SQL can fake).
pub fn is_not_startable(e: &postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        matches!(d.code().code(), "55P03" | "55000")
            && d.where_()
                .is_some_and(|w| w.contains("function broker_run("))
    })
}

/// Errors that go away by themselves: serialization failures, deadlocks, lock or statement
/// timeouts, cancels, the server shutting down. Worth trying again at the next poll.
pub fn is_transient(e: &postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        let c = c.code();
        c.starts_with("40") || c.starts_with("57") || c == "55P03"
    })
}

/// The statement was cancelled (57014): a cancel request or a statement timeout.
pub fn is_query_canceled(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}
