//! The schema: ordered migrations embedded from `sql/`, applied in one transaction per database.

use postgres::Client;

use crate::config::DatabaseConfig;
use crate::error::Error;

/// Schema files in order; file `i` (0-based) brings the schema to version `i + 1`. They hold
/// tables, indexes, roles and policies. Never edit a released one: add the next file instead.
pub const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/001_schema.sql"),
    include_str!("../../sql/002_job_execution.sql"),
];

/// Every function and trigger, re-applied by each install after the migrations (all of it is
/// idempotent), so each function has exactly one definition in the source.
pub const FUNCTIONS_SQL: &str = include_str!("../../sql/functions.sql");

/// The schema version this binary runs with.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Tables and functions a usable schema has; `--verify-only` checks each.
const TABLES: &[&str] = &[
    "broker_schema_version",
    "broker_jobs",
    "broker_queueinstance",
    "broker_schedule",
    "broker_job_dependencies",
    "broker_cancel_requests",
    "broker_settings",
];
const FUNCTIONS: &[&str] = &[
    "broker_add_job",
    "broker_get",
    "broker_run",
    "broker_set",
    "broker_register_instance",
    "broker_ping_instance",
    "broker_shutdown_instance",
    "broker_recover",
    "broker_holds_instance_lock",
    "broker_job_for_caller",
    "broker_cancel_job",
    "broker_retry_job",
    "broker_cancel_requested",
    "broker_promote_delayed",
    "broker_purge",
    "broker_add_schedule",
    "broker_remove_schedule",
    "broker_enable_schedule",
    "broker_disable_schedule",
    "broker_fire_schedule",
    "broker_prepare_runner",
    "broker_reset_session",
    "broker_complete",
];

/// Serializes concurrent installers on one database.
const INSTALL_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtextextended('pgsql-broker install', 0))";

/// What `install` did.
#[derive(Debug, PartialEq, Eq)]
pub struct Installed {
    /// Schema version before and after.
    pub from: i32,
    pub to: i32,
    /// Whether functions.sql was (re)applied: new install, or functions of another build.
    pub functions_replaced: bool,
}

/// The installed schema version; 0 when nothing is installed.
pub fn installed_version(c: &mut Client) -> Result<i32, postgres::Error> {
    let row = c.query_one(
        "SELECT to_regclass('broker_schema_version') IS NOT NULL",
        &[],
    )?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = c.query_one(
        "SELECT coalesce(max(version), 0) FROM broker_schema_version",
        &[],
    )?;
    Ok(row.get(0))
}

/// True when the installed functions are this binary's functions.sql.
fn functions_current(c: &mut impl postgres::GenericClient) -> Result<bool, postgres::Error> {
    let row = c.query_one(
        "SELECT EXISTS (SELECT 1 FROM broker_schema_version
                         WHERE version = (SELECT max(version) FROM broker_schema_version)
                           AND functions_digest = md5($1))",
        &[&FUNCTIONS_SQL],
    )?;
    Ok(row.get(0))
}

/// Applies the missing migrations and, if they differ, this build's functions, in one
/// transaction. Running it again changes nothing.
pub fn install(c: &mut Client, db: &DatabaseConfig) -> Result<Installed, Error> {
    let sql_err = |action| {
        move |source| Error::Sql {
            database: db.name.clone(),
            action,
            source,
        }
    };
    let mut tx = c.transaction().map_err(sql_err("install"))?;
    tx.batch_execute(INSTALL_LOCK)
        .map_err(sql_err("taking the install lock"))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS broker_schema_version (
             version          integer PRIMARY KEY,
             installed_at     timestamptz NOT NULL DEFAULT now(),
             functions_digest text);
         REVOKE ALL ON broker_schema_version FROM PUBLIC",
    )
    .map_err(sql_err("creating broker_schema_version"))?;
    let from: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM broker_schema_version",
            &[],
        )
        .map_err(sql_err("reading the schema version"))?
        .get(0);
    if from > SCHEMA_VERSION {
        return Err(newer_schema(db, from));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = i as i32 + 1;
        tx.batch_execute(sql)
            .map_err(sql_err("applying a schema file"))?;
        tx.execute(
            "INSERT INTO broker_schema_version (version) VALUES ($1)",
            &[&version],
        )
        .map_err(sql_err("recording the schema version"))?;
    }
    let functions_replaced =
        !functions_current(&mut tx).map_err(sql_err("reading the functions digest"))?;
    if functions_replaced {
        tx.batch_execute(FUNCTIONS_SQL)
            .map_err(sql_err("applying functions.sql"))?;
        tx.execute(
            "UPDATE broker_schema_version SET functions_digest = md5($1) WHERE version = $2",
            &[&FUNCTIONS_SQL, &SCHEMA_VERSION],
        )
        .map_err(sql_err("recording the functions digest"))?;
    }
    tx.commit().map_err(sql_err("committing the install"))?;
    Ok(Installed {
        from,
        to: SCHEMA_VERSION,
        functions_replaced,
    })
}

/// Lists what is missing or outdated; empty means the schema is ready.
pub fn verify(c: &mut Client, db: &DatabaseConfig) -> Result<Vec<String>, Error> {
    let sql_err = |source| Error::Sql {
        database: db.name.clone(),
        action: "verifying the schema",
        source,
    };
    let mut problems = Vec::new();
    for table in TABLES {
        let row = c
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[table])
            .map_err(sql_err)?;
        if !row.get::<_, bool>(0) {
            problems.push(format!("missing table {table}"));
        }
    }
    for function in FUNCTIONS {
        let row = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_proc
                                 WHERE proname = $1 AND pg_function_is_visible(oid))",
                &[function],
            )
            .map_err(sql_err)?;
        if !row.get::<_, bool>(0) {
            problems.push(format!("missing function {function}"));
        }
    }
    let version = installed_version(c).map_err(sql_err)?;
    if version != SCHEMA_VERSION {
        problems.push(format!(
            "schema version is {version}, this binary needs {SCHEMA_VERSION}"
        ));
    } else if !functions_current(c).map_err(sql_err)? {
        problems.push(
            "functions are not this build's (installed by another pgsql-broker version)".into(),
        );
    }
    Ok(problems)
}

/// What `start` does: installs a schema that is absent, refuses one that is outdated or broken
/// (an upgrade is an operator's decision: `pgsql-broker install`).
pub fn ensure(c: &mut Client, db: &DatabaseConfig) -> Result<(), Error> {
    let version = installed_version(c).map_err(|source| Error::Sql {
        database: db.name.clone(),
        action: "reading the schema version",
        source,
    })?;
    if version == 0 {
        log::info!(
            "database {}: no broker schema found, installing version {SCHEMA_VERSION}",
            db.name
        );
        install(c, db)?;
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(newer_schema(db, version));
    }
    let problems = verify(c, db)?;
    if problems.is_empty() {
        Ok(())
    } else {
        let mut problems = problems;
        problems.push("run `pgsql-broker install` to install or upgrade it".into());
        Err(Error::Schema {
            database: db.name.clone(),
            problems,
        })
    }
}

fn newer_schema(db: &DatabaseConfig, found: i32) -> Error {
    Error::Schema {
        database: db.name.clone(),
        problems: vec![format!(
            "schema version {found} is newer than this binary's {SCHEMA_VERSION}; upgrade pgsql-broker"
        )],
    }
}
