//! How the commands print: aligned tables, times, durations, and JSON values of them.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// A time as RFC 3339 in UTC with milliseconds, for JSON.
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time for a table: UTC to the second, e.g. `2026-03-29 01:00:00Z`.
pub fn short_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%d %H:%M:%SZ")
        .to_string()
}

/// An optional time for JSON: RFC 3339 or null.
pub fn json_time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// Seconds for JSON, to the millisecond.
pub fn json_secs(s: Option<f64>) -> Value {
    s.map_or(Value::Null, |s| Value::from((s * 1000.0).round() / 1000.0))
}

/// A duration for people: `850ms`, `12.5s`, `5m03s`, `2h05m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    if secs < 60.0 {
        return format!("{:.1}s", secs);
    }
    let whole = secs.round() as u64;
    let (d, h, m, s) = (
        whole / 86_400,
        whole / 3600 % 24,
        whole / 60 % 60,
        whole % 60,
    );
    if whole < 3600 {
        format!("{m}m{s:02}s")
    } else if whole < 86_400 {
        format!("{h}h{m:02}m")
    } else {
        format!("{d}d{h:02}h")
    }
}

/// The first line of `text`, at most `max` characters (an ellipsis marks a cut).
pub fn excerpt(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let cut = line.chars().count() > max || text.lines().nth(1).is_some();
    if !cut {
        return line.to_string();
    }
    let kept: String = line.chars().take(max.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// A table: the header row, then the rows, columns separated by two spaces and padded to the
/// widest cell (the last column is not padded).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if i < last {
                line.push_str(&" ".repeat(w.saturating_sub(cell.chars().count())));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0.25), "250ms");
        assert_eq!(duration(12.34), "12.3s");
        assert_eq!(duration(303.0), "5m03s");
        assert_eq!(duration(7500.0), "2h05m");
        assert_eq!(duration(273_600.0), "3d04h");
        assert_eq!(duration(-1.0), "0ms");
    }

    #[test]
    fn excerpts_keep_the_first_line() {
        assert_eq!(excerpt("short", 10), "short");
        assert_eq!(excerpt("0123456789abc", 10), "012345678…");
        assert_eq!(excerpt("one\ntwo", 10), "one…");
        assert_eq!(excerpt("", 10), "");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["ID", "NAME", "NOTE"],
            &[
                vec!["1".into(), "a".into(), "x".into()],
                vec!["100".into(), "long name".into(), String::new()],
            ],
        );
        assert_eq!(
            t,
            "ID   NAME       NOTE\n1    a          x\n100  long name\n"
        );
    }

    #[test]
    fn times_are_utc() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.500Z");
        assert_eq!(short_time(t), "1970-01-01 00:00:01Z");
    }
}
