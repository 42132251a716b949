//! Embeds the broker in another program through the library API.
//!
//! Run with PostgreSQL at 127.0.0.1:5432 (user postgres):
//!
//! ```text
//! cargo run --example embedded
//! BROKER_DATABASE=app BROKER_QUEUES=8 cargo run --example embedded
//! ```
//!
//! Settings come from `BROKER_HOST`, `BROKER_PORT`, `BROKER_USER`, `BROKER_PASSWORD`,
//! `BROKER_DATABASE` and `BROKER_QUEUES`, with the defaults below. SIGTERM or Ctrl-C drains
//! the running jobs and exits; a second signal exits at once.

use std::process::ExitCode;
use std::str::FromStr;

use pgsql_broker::config::Secret;
use pgsql_broker::{Broker, Config, DatabaseConfig};

/// `name` from the environment, or `default` when it is unset or empty.
fn setting(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// A numeric setting; a value that does not parse is an error naming the variable.
fn number<T: FromStr>(name: &str, default: &str) -> Result<T, String> {
    let text = setting(name, default);
    text.parse()
        .map_err(|_| format!("{name}: {text:?} is not a valid number"))
}

fn config() -> Result<Config, String> {
    let mut db = DatabaseConfig::new(setting("BROKER_DATABASE", "postgres"));
    db.host = setting("BROKER_HOST", "127.0.0.1");
    db.port = number("BROKER_PORT", "5432")?;
    db.user = setting("BROKER_USER", "postgres");
    db.password = std::env::var("BROKER_PASSWORD").ok().map(Secret::new);
    db.queue_count = number("BROKER_QUEUES", "4")?;

    let mut config = Config::new(vec![db]);
    config.broker.name = "embedded-example".into();
    config.broker.shutdown_timeout_sec = 10;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

fn main() -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("embedded: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = pgsql_broker::logging::init(&config.logging, false) {
        eprintln!("embedded: {e}");
        return ExitCode::from(1);
    }
    // Installs the schema if it is missing, registers the instance, starts listener and workers.
    let broker = match Broker::start(config) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("embedded: {e}");
            return ExitCode::from(e.exit_code().clamp(1, 255) as u8);
        }
    };
    if let Err(e) = pgsql_broker::shutdown::install(broker.stop_handle()) {
        eprintln!("embedded: cannot install signal handlers: {e}");
        broker.stop();
        // Already failing; the drain's own error would add nothing.
        let _ = broker.wait();
        return ExitCode::from(1);
    }
    log::info!("embedded broker running; send SIGTERM or press Ctrl-C to stop");
    match broker.wait() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embedded: {e}");
            ExitCode::from(1)
        }
    }
}
