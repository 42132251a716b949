//! Submitting jobs: [`NewJob`] holds what `broker_add_job` takes, [`submit`] calls it.

use std::time::{Duration, SystemTime};

use postgres::GenericClient;

use crate::error::Error;

/// A job to submit: the arguments of `broker_add_job`. [`NewJob::new`] sets the function's
/// defaults; change the fields that matter.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use pgsql_broker::NewJob;
///
/// let mut job = NewJob::new("send-mail", "SELECT send_mail(42)");
/// job.queue = 3;
/// job.priority = 10;
/// job.run_after = Some(SystemTime::now() + Duration::from_secs(60));
/// job.max_attempts = 5;
/// job.timeout = Some(Duration::from_secs(30));
/// assert_eq!(job.language, "sql");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// The job's name, for people reading `broker_jobs` and the log.
    pub name: String,
    /// The SQL (or PL/pgSQL body, see `language`) the broker runs; must not be empty.
    pub sql: String,
    /// The queue, from 1; a broker serves queues 1 to `queue_count`. Default 1.
    pub queue: i32,
    /// Higher runs first within a queue. Default 0.
    pub priority: i32,
    /// `sql` or `plpgsql`. Default `sql`.
    pub language: String,
    /// The role the job runs as; the submitter must be a member of it. Default: the submitter.
    pub run_as: Option<String>,
    /// An application user the job sees as the setting `broker.user_login`.
    pub user_login: Option<String>,
    /// Not before this time. Default: at once.
    pub run_after: Option<SystemTime>,
    /// How many times the job is tried when it fails. Default 1.
    pub max_attempts: i32,
    /// The job's statement timeout. Default: the broker's `default_job_timeout`.
    pub timeout: Option<Duration>,
    /// Run the job in one transaction with the record of its result. Default true.
    pub transactional: bool,
    /// Jobs (by id) that must complete first. Default none.
    pub depends_on: Vec<i64>,
    /// Run the job again when the broker running it died, rather than fail it. Default false.
    pub retry_on_crash: bool,
}

impl NewJob {
    /// A job running `sql`, with `broker_add_job`'s defaults for everything else.
    pub fn new(name: impl Into<String>, sql: impl Into<String>) -> NewJob {
        NewJob {
            name: name.into(),
            sql: sql.into(),
            queue: 1,
            priority: 0,
            language: "sql".into(),
            run_as: None,
            user_login: None,
            run_after: None,
            max_attempts: 1,
            timeout: None,
            transactional: true,
            depends_on: Vec::new(),
            retry_on_crash: false,
        }
    }
}

/// Submits `job` through `broker_add_job` and returns its id. `client` may be a
/// [`postgres::Client`] or a [`postgres::Transaction`]: in a transaction, the job exists (and
/// a broker sees it) only once the transaction commits.
///
/// A refused job ([`Error::Submit`]) names the job and the server's SQLSTATE and message,
/// e.g. 22023 for empty SQL, 42501 for a `run_as` role the submitter may not use, 23503 for an
/// unknown `depends_on` id.
///
/// ```no_run
/// use pgsql_broker::{submit, DatabaseConfig, NewJob};
///
/// let mut client = DatabaseConfig::new("app").connect()?;
/// let mut tx = client.transaction()?;
/// tx.execute("UPDATE orders SET state = 'paid' WHERE id = $1", &[&42_i64])?;
/// let id = submit(&mut tx, &NewJob::new("ship-order-42", "CALL ship_order(42)"))?;
/// tx.commit()?; // the job and the update become visible together
/// println!("job {id} submitted");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn submit<C: GenericClient>(client: &mut C, job: &NewJob) -> Result<i64, Error> {
    add(client, job).map_err(|source| Error::Submit {
        job: job.name.clone(),
        source,
    })
}

/// `broker_add_job` with the job's arguments, as the server reports its errors.
pub(crate) fn add<C: GenericClient>(client: &mut C, job: &NewJob) -> Result<i64, postgres::Error> {
    let timeout_us = job
        .timeout
        .map(|t| i64::try_from(t.as_micros()).unwrap_or(i64::MAX));
    let depends_on = (!job.depends_on.is_empty()).then_some(&job.depends_on);
    let row = client.query_one(
        "SELECT broker_add_job(job_name => $1, execute_str => $2, job_queue => $3, \
         job_priority => $4, job_language => $5, run_as => $6::text::name, \
         user_login => $7, run_after => $8, max_attempts => $9, \
         timeout => $10::int8 * interval '1 microsecond', transactional => $11, \
         depends_on => $12, retry_on_crash => $13)",
        &[
            &job.name,
            &job.sql,
            &job.queue,
            &job.priority,
            &job.language,
            &job.run_as,
            &job.user_login,
            &job.run_after,
            &job.max_attempts,
            &timeout_us,
            &job.transactional,
            &depends_on,
            &job.retry_on_crash,
        ],
    )?;
    Ok(row.get(0))
}
