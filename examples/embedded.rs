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
//!
//! The program brings its own logger (simplelog here; any `log` implementation will do) and its
//! own signal handling, which stops the broker through a `StopHandle` from another thread.

use std::process::ExitCode;
use std::str::FromStr;

use pgsql_broker::{Broker, Config, DatabaseConfig, Secret, StopHandle};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

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

/// The broker logs through the `log` facade; the driver's own targets are left out, as they
/// would log every statement with its parameters.
fn init_logging() -> Result<(), log::SetLoggerError> {
    let config = simplelog::ConfigBuilder::new()
        .add_filter_ignore_str("tokio_postgres")
        .add_filter_ignore_str("postgres")
        .build();
    simplelog::SimpleLogger::init(log::LevelFilter::Info, config)
}

/// The first SIGTERM or SIGINT drains the broker; a second one exits at once.
fn stop_on_signals(stop: StopHandle) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if stop.is_stopped() {
                log::warn!("signal {signal} during shutdown: exiting now");
                std::process::exit(1);
            }
            log::info!("signal {signal}: draining (a second signal exits at once)");
            stop.stop();
        }
    });
    Ok(())
}

fn main() -> ExitCode {
    let config = match config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("embedded: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = init_logging() {
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
    if let Err(e) = stop_on_signals(broker.stop_handle()) {
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
