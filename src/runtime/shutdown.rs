//! Signals: the first SIGTERM or SIGINT starts a graceful drain, a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Asks a broker to drain; cheap to clone and safe to call from a signal thread.
#[derive(Clone, Debug, Default)]
pub struct StopHandle(Arc<AtomicBool>);

impl StopHandle {
    /// Begins the broker's drain (no new claims; running jobs get `shutdown_timeout_sec`).
    /// Calling it again does nothing more.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// True once [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Exit code when a second signal cuts the drain short.
pub const EXIT_FORCED: i32 = 1;

/// Starts the signal thread for `stop`.
pub fn install(stop: StopHandle) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if stop.is_stopped() {
                    log::warn!(
                        "signal {signal} during shutdown: exiting now; running jobs roll back"
                    );
                    std::process::exit(EXIT_FORCED);
                }
                log::info!("signal {signal}: draining (a second signal exits at once)");
                stop.stop();
            }
        })?;
    Ok(())
}
