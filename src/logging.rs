//! Logging through the `log` facade: simplelog for text, a small JSON-lines logger for machines
//! (simplelog has no JSON output). Both write to stderr, which systemd's journal collects.

use std::io::Write;
use std::time::SystemTime;

use log::{LevelFilter, Log, Metadata, Record};

use crate::config::{LogFormat, LogLevel, LoggingConfig};

/// The database driver (`tokio_postgres`, and `postgres` for server notices) logs every
/// statement with its parameters at debug level, and notices at info: job SQL and user data do not belong in the broker's log, so it is muted.
const DRIVER_TARGETS: [&str; 2] = ["tokio_postgres", "postgres"];

/// Installs the process-wide logger. `debug` (the config's `enable_debug`) raises the level to
/// at least debug.
pub fn init(config: &LoggingConfig, debug: bool) -> Result<(), String> {
    let mut level = match config.level {
        LogLevel::Error => LevelFilter::Error,
        LogLevel::Warn => LevelFilter::Warn,
        LogLevel::Info => LevelFilter::Info,
        LogLevel::Debug => LevelFilter::Debug,
        LogLevel::Trace => LevelFilter::Trace,
    };
    if debug {
        level = level.max(LevelFilter::Debug);
    }
    let result = match config.format {
        LogFormat::Text => {
            let cfg = simplelog::ConfigBuilder::new()
                .set_time_format_rfc3339()
                .set_target_level(LevelFilter::Off)
                .set_thread_level(LevelFilter::Off)
                .add_filter_ignore_str(DRIVER_TARGETS[0])
                .add_filter_ignore_str(DRIVER_TARGETS[1])
                .build();
            let inner = simplelog::WriteLogger::new(level, cfg, std::io::stderr());
            log::set_max_level(level);
            log::set_boxed_logger(Box::new(OneLine(inner))).map_err(|e| e.to_string())
        }
        LogFormat::Json => {
            log::set_max_level(level);
            log::set_boxed_logger(Box::new(JsonLogger { level })).map_err(|e| e.to_string())
        }
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// The text logger, one event per line: control characters in a message (a job's error text
/// may hold newlines) are escaped, so no message can forge a line of its own.
struct OneLine(Box<simplelog::WriteLogger<std::io::Stderr>>);

impl Log for OneLine {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        let message = record.args().to_string();
        if !message.contains(char::is_control) {
            return self.0.log(record);
        }
        let escaped = escape_controls(&message);
        self.0.log(
            &Record::builder()
                .args(format_args!("{escaped}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Newline, carriage return and tab as `\n`, `\r`, `\t`; other control characters as `\u{..}`.
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Writes one JSON object per line: `{"ts":..,"level":..,"target":..,"msg":..}`.
struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
            && !DRIVER_TARGETS
                .iter()
                .any(|t| metadata.target().starts_with(t))
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format!(
            "{{\"ts\":\"{}\",\"level\":\"{}\",\"target\":{},\"msg\":{}}}\n",
            utc_timestamp(SystemTime::now()),
            record.level(),
            json_string(record.target()),
            json_string(&record.args().to_string())
        );
        // One write per line keeps lines whole when threads log at once.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// A JSON string literal for `s`.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// RFC 3339 UTC time with milliseconds, e.g. `2026-11-25T08:51:00.123Z`.
fn utc_timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_000 + 45_296_789);
        assert_eq!(utc_timestamp(t), "2000-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_651_200);
        assert_eq!(utc_timestamp(t), "2026-11-26T00:00:00.000Z");
    }

    #[test]
    fn text_lines_escape_control_characters() {
        assert_eq!(super::escape_controls("plain é"), "plain é");
        assert_eq!(
            super::escape_controls("boom\n2026 [INFO] forged\r\t\u{1b}[31m"),
            "boom\\n2026 [INFO] forged\\r\\t\\u{1b}[31m"
        );
    }

    #[test]
    fn json_strings_escape_what_they_must() {
        assert_eq!(
            json_string("a\"b\\c\nd\u{1}é"),
            "\"a\\\"b\\\\c\\nd\\u0001é\""
        );
    }
}
