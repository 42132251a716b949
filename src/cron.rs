//! Cron expressions and their fire times in an IANA time zone. Pure logic: no clock, no database.
//!
//! Accepted: five fields `minute hour day-of-month month day-of-week`, or six with a leading
//! `second`; each field a list of `*`, `N`, `A-B`, with an optional `/STEP` (`*/15`, `5-20/5`,
//! `10/20` = from 10 to the end in steps of 20); month names `JAN`-`DEC`, weekday names
//! `SUN`-`SAT` (any case), weekday `7` = Sunday, `?` = `*` in the day fields. Macros: `@hourly`,
//! `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`, and `@every <duration>`
//! (`90s`, `5m`, `1h30m`; at least one second).
//!
//! Semantics (ours; the tests pin them down):
//! - Day-of-month and day-of-week: as in Vixie cron, when both fields are restricted a day
//!   matches if EITHER matches (`0 0 13 * 5`: every 13th and every Friday). A field that begins
//!   with `*` (also `*/2`) counts as unrestricted, and then both must match.
//! - Fire times are wall-clock times in the schedule's zone. A wall time that does not exist
//!   (the spring-forward gap) is skipped: no fire for that slot. A wall time that occurs twice
//!   (fall back) fires once, at its first occurrence.
//! - `@every` is a fixed interval of real time anchored at the previous fire time (the first
//!   fire is one interval after the anchor); DST does not affect it.
//! - Every fire time is strictly after the instant asked about.

use std::fmt;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone,
    Timelike, Utc,
};
use chrono_tz::Tz;

/// How far ahead a search for the next fire time looks before it calls the expression
/// impossible. Ten years covers every satisfiable expression, including 29 February across a
/// century year that is not a leap year (2096 → 2104).
const SEARCH_YEARS: i32 = 10;

/// Why an expression, a zone or a search was refused; the message names the field or value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

/// A parsed schedule expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    text: String,
    spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Spec {
    Fields(Fields),
    Every(Duration),
}

/// One bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fields {
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// The day-of-month field began with `*` or `?` (Vixie cron's DOM_STAR).
    days_star: bool,
    /// The day-of-week field began with `*` or `?` (DOW_STAR).
    weekdays_star: bool,
}

/// The range and spelling of one field.
struct FieldKind {
    name: &'static str,
    min: u32,
    max: u32,
    /// Names for the values `names_from`, `names_from + 1`, ...
    names: &'static [&'static str],
    names_from: u32,
}

const SECOND: FieldKind = FieldKind {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const MINUTE: FieldKind = FieldKind {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: FieldKind = FieldKind {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DAY: FieldKind = FieldKind {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 0,
};
const MONTH: FieldKind = FieldKind {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
    names_from: 1,
};
/// 0 and 7 are both Sunday; parsing folds 7 into 0.
const WEEKDAY: FieldKind = FieldKind {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
    names_from: 0,
};

impl Cron {
    /// Parses an expression; the error names the field and the problem.
    pub fn parse(expr: &str) -> Result<Cron, CronError> {
        let text = expr.trim();
        if text.is_empty() {
            return Err(CronError("empty cron expression".into()));
        }
        let spec = if let Some(rest) = text.strip_prefix('@') {
            parse_macro(rest)?
        } else {
            Spec::Fields(parse_fields(text)?)
        };
        Ok(Cron {
            text: text.to_string(),
            spec,
        })
    }

    /// True for `@every`, whose fire times depend on an anchor rather than the calendar.
    #[cfg(test)]
    pub fn is_interval(&self) -> bool {
        matches!(self.spec, Spec::Every(_))
    }

    /// The first fire time strictly after `after`. For `@every`, `after` is the anchor: the
    /// result is one interval later.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Result<DateTime<Tz>, CronError> {
        match &self.spec {
            Spec::Every(d) => Ok((after + self.delta(*d)?).with_timezone(&tz)),
            Spec::Fields(f) => self.next_calendar(f, after, tz),
        }
    }

    /// The next `count` fire times after `after`, as `schedule next` lists them.
    pub fn upcoming(
        &self,
        after: DateTime<Utc>,
        tz: Tz,
        count: usize,
    ) -> Result<Vec<DateTime<Tz>>, CronError> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut t = after;
        for _ in 0..count {
            let next = self.next_after(t, tz)?;
            t = next.with_timezone(&Utc);
            out.push(next);
        }
        Ok(out)
    }

    /// The first fire time strictly after `now` of the series that fired at `anchor`: this is
    /// what the scheduler stores as `next_run`, so after downtime it fires once, not once per
    /// missed slot. For a calendar expression the anchor does not matter; for `@every` it is
    /// `anchor + k * interval` with the smallest k >= 1 that lands after `now`.
    pub fn next_since(
        &self,
        anchor: DateTime<Utc>,
        now: DateTime<Utc>,
        tz: Tz,
    ) -> Result<DateTime<Tz>, CronError> {
        let Spec::Every(d) = &self.spec else {
            return self.next_after(now, tz);
        };
        let out_of_range = || self.error("the next fire time is out of range");
        let step_ns = i128::from(self.delta(*d)?.num_nanoseconds().ok_or_else(out_of_range)?);
        let behind_ns = i128::from((now - anchor).num_nanoseconds().ok_or_else(out_of_range)?);
        // k intervals after the anchor, k >= 1, the first past `now`.
        let k = if behind_ns < 0 {
            1
        } else {
            behind_ns / step_ns.max(1) + 1
        };
        let offset = k
            .checked_mul(step_ns)
            .and_then(|ns| i64::try_from(ns).ok())
            .map(TimeDelta::nanoseconds)
            .ok_or_else(out_of_range)?;
        anchor
            .checked_add_signed(offset)
            .map(|t| t.with_timezone(&tz))
            .ok_or_else(|| self.error("the next fire time is out of range"))
    }

    fn delta(&self, d: Duration) -> Result<TimeDelta, CronError> {
        TimeDelta::from_std(d).map_err(|_| self.error("the interval is too large"))
    }

    fn error(&self, what: &str) -> CronError {
        CronError(format!("cron expression {:?}: {what}", self.text))
    }

    /// Walks matching wall times in order and maps each to an instant, skipping the ones in a
    /// DST gap and the second occurrence of repeated ones.
    fn next_calendar(
        &self,
        f: &Fields,
        after: DateTime<Utc>,
        tz: Tz,
    ) -> Result<DateTime<Tz>, CronError> {
        let local = after.with_timezone(&tz).naive_local();
        let whole = local.with_nanosecond(0).unwrap_or(local);
        let limit_year = whole.year().saturating_add(SEARCH_YEARS);
        let mut start = add_second(whole);
        loop {
            let Some(candidate) = start.and_then(|s| f.next_match(s, limit_year)) else {
                return Err(self.error(&format!(
                    "no fire time in the {SEARCH_YEARS} years after {}",
                    after.with_timezone(&tz).to_rfc3339()
                )));
            };
            match tz.from_local_datetime(&candidate) {
                LocalResult::Single(t) if t.with_timezone(&Utc) > after => return Ok(t),
                // Only the first occurrence fires; if it is already past, so is this slot.
                LocalResult::Ambiguous(first, _) if first.with_timezone(&Utc) > after => {
                    return Ok(first)
                }
                // In a gap (or already past): this slot does not fire.
                _ => {}
            }
            start = add_second(candidate);
        }
    }
}

impl fmt::Display for Cron {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses an IANA zone name such as `Europe/Amsterdam` (exact spelling first, then ignoring
/// case, as PostgreSQL does).
pub fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    let name = name.trim();
    if let Ok(tz) = name.parse::<Tz>() {
        return Ok(tz);
    }
    chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            CronError(format!(
                "unknown time zone {name:?} (use an IANA name such as UTC or Europe/Amsterdam)"
            ))
        })
}

/// Parses an instant as `schedule next --after` takes it: RFC 3339 with an offset
/// (`2026-03-29T01:00:00Z`, `2026-03-29 03:00:00+02:00`), or a wall time in `tz`
/// (`2026-03-29T01:30`, `2026-03-29 01:30:00`, `2026-03-29` for midnight). A wall time in a DST
/// gap is refused; a repeated one means its first occurrence.
pub fn parse_instant(text: &str, tz: Tz) -> Result<DateTime<Utc>, CronError> {
    let s = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(s, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    let naive = [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .or_else(|| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| d.and_time(NaiveTime::MIN))
    })
    .ok_or_else(|| {
        CronError(format!(
            "bad time {text:?} (write e.g. 2026-03-29T01:00:00Z, 2026-03-29T03:00:00+02:00 or a wall time in the zone such as 2026-03-29 01:00)"
        ))
    })?;
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => Ok(t.with_timezone(&Utc)),
        LocalResult::None => Err(CronError(format!(
            "time {text:?} does not exist in {} (it falls in a daylight-saving gap)",
            tz.name()
        ))),
    }
}

/// A fire time as `schedule next` prints it: RFC 3339 with the zone's offset, fractions of a
/// second only when there are any.
pub fn format_time(t: &DateTime<Tz>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

fn add_second(t: NaiveDateTime) -> Option<NaiveDateTime> {
    t.checked_add_signed(TimeDelta::seconds(1))
}

fn parse_macro(rest: &str) -> Result<Spec, CronError> {
    let (word, arg) = match rest.split_once(char::is_whitespace) {
        Some((w, a)) => (w, a.trim()),
        None => (rest, ""),
    };
    let word_lc = word.to_ascii_lowercase();
    if word_lc == "every" {
        if arg.is_empty() {
            return Err(CronError(
                "@every needs an interval, e.g. @every 90s, @every 5m or @every 1h30m".into(),
            ));
        }
        let d = crate::config::parse_duration(arg)
            .map_err(|e| CronError(format!("@every interval: {e}")))?;
        if d < Duration::from_secs(1) {
            return Err(CronError(format!(
                "@every interval {arg:?} is shorter than one second"
            )));
        }
        return Ok(Spec::Every(d));
    }
    let fields = match word_lc.as_str() {
        "yearly" | "annually" => "0 0 0 1 1 *",
        "monthly" => "0 0 0 1 * *",
        "weekly" => "0 0 0 * * 0",
        "daily" | "midnight" => "0 0 0 * * *",
        "hourly" => "0 0 * * * *",
        _ => {
            return Err(CronError(format!(
                "unknown macro @{word} (use @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <interval>)"
            )))
        }
    };
    if !arg.is_empty() {
        return Err(CronError(format!(
            "@{word} takes no argument, found {arg:?}"
        )));
    }
    parse_fields(fields).map(Spec::Fields)
}

fn parse_fields(text: &str) -> Result<Fields, CronError> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (second, rest) = match parts.len() {
        5 => ("0", &parts[..]),
        6 => (parts[0], &parts[1..]),
        n => {
            return Err(CronError(format!(
                "cron expression {text:?} has {n} field(s); expected 5 (minute hour day-of-month month day-of-week) or 6 (with a leading second)"
            )))
        }
    };
    let is_star = |s: &str| s.starts_with('*') || s.starts_with('?');
    let fields = Fields {
        seconds: parse_field(&SECOND, second)?,
        minutes: parse_field(&MINUTE, rest[0])?,
        hours: parse_field(&HOUR, rest[1])?,
        days: parse_field(&DAY, rest[2])?,
        months: parse_field(&MONTH, rest[3])?,
        weekdays: parse_field(&WEEKDAY, rest[4])?,
        days_star: is_star(rest[2]),
        weekdays_star: is_star(rest[4]),
    };
    // Caught here rather than after a ten-year search: e.g. `0 0 30 2 *`.
    if fields.and_rule() && !fields.some_day_exists() {
        return Err(CronError(format!(
            "day-of-month field {:?} never occurs in the months of the month field {:?}",
            rest[2], rest[3]
        )));
    }
    Ok(fields)
}

/// Parses one field into a bit set of its allowed values.
fn parse_field(kind: &FieldKind, text: &str) -> Result<u64, CronError> {
    let bad = |why: String| CronError(format!("{} field {text:?}: {why}", kind.name));
    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(bad("empty list item".into()));
        }
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| bad(format!("step {s:?} is not a number")))?;
                if step == 0 || step > kind.max {
                    return Err(bad(format!("step {step} is out of range 1-{}", kind.max)));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let day_field = kind.name == DAY.name || kind.name == WEEKDAY.name;
        if range == "?" && !day_field {
            return Err(bad("? is only allowed in the day fields".into()));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (kind.min, kind.max)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = parse_value(kind, a).map_err(bad)?;
            let mut hi = parse_value(kind, b).map_err(bad)?;
            // `FRI-SUN`: Sunday as the end of a weekday range is day 7.
            if kind.name == WEEKDAY.name && hi == 0 && lo > 0 {
                hi = 7;
            }
            if lo > hi {
                return Err(bad(format!("range {range} runs backwards")));
            }
            (lo, hi)
        } else {
            let v = parse_value(kind, range).map_err(bad)?;
            // `10/20` means from 10 to the end of the range in steps of 20.
            (v, if step.is_some() { kind.max } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    if kind.name == WEEKDAY.name && bits & (1 << 7) != 0 {
        bits = (bits & !(1 << 7)) | 1;
    }
    Ok(bits)
}

/// One number or name of a field, checked against the field's range.
fn parse_value(kind: &FieldKind, text: &str) -> Result<u32, String> {
    if text.is_empty() {
        return Err("missing value".into());
    }
    if let Ok(v) = text.parse::<u32>() {
        if v < kind.min || v > kind.max {
            return Err(format!("{v} is out of range {}-{}", kind.min, kind.max));
        }
        return Ok(v);
    }
    kind.names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
        .map(|i| i as u32 + kind.names_from)
        .ok_or_else(|| {
            if kind.names.is_empty() {
                format!("{text:?} is not a number")
            } else {
                format!(
                    "{text:?} is neither a number nor one of {}",
                    kind.names.join(",")
                )
            }
        })
}

fn has(bits: u64, v: u32) -> bool {
    bits & (1 << v) != 0
}

/// The smallest allowed value >= `from`, if any.
fn next_bit(bits: u64, from: u32) -> Option<u32> {
    let masked = bits & !((1u64 << from) - 1);
    (masked != 0).then(|| masked.trailing_zeros())
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    };
    next.and_then(|d| d.pred_opt()).map_or(28, |d| d.day())
}

fn midnight(year: i32, month: u32, day: u32) -> Option<NaiveDateTime> {
    NaiveDate::from_ymd_opt(year, month, day).map(|d| d.and_time(NaiveTime::MIN))
}

impl Fields {
    /// Both day fields must match (one of them began with `*`), rather than either.
    fn and_rule(&self) -> bool {
        self.days_star || self.weekdays_star
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let dom = has(self.days, date.day());
        let dow = has(self.weekdays, date.weekday().num_days_from_sunday());
        if self.and_rule() {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether some allowed month has some allowed day of month (29 February counts).
    fn some_day_exists(&self) -> bool {
        (1..=12).any(|m| {
            // 2024 is a leap year: each month at its longest.
            has(self.months, m) && (1..=days_in_month(2024, m)).any(|d| has(self.days, d))
        })
    }

    /// The first wall time >= `t` that matches every field, or None past `limit_year`.
    /// Steps field by field (month, day, hour, minute, second), never second by second.
    fn next_match(&self, mut t: NaiveDateTime, limit_year: i32) -> Option<NaiveDateTime> {
        loop {
            if t.year() > limit_year {
                return None;
            }
            match next_bit(self.months, t.month()) {
                Some(m) if m == t.month() => {}
                Some(m) => {
                    t = midnight(t.year(), m, 1)?;
                    continue;
                }
                None => {
                    t = midnight(t.year() + 1, 1, 1)?;
                    continue;
                }
            }
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_time(NaiveTime::MIN);
                continue;
            }
            match next_bit(self.hours, t.hour()) {
                Some(h) if h == t.hour() => {}
                Some(h) => {
                    t = t.date().and_hms_opt(h, 0, 0)?;
                    continue;
                }
                None => {
                    t = t.date().succ_opt()?.and_time(NaiveTime::MIN);
                    continue;
                }
            }
            match next_bit(self.minutes, t.minute()) {
                Some(m) if m == t.minute() => {}
                Some(m) => {
                    t = t.date().and_hms_opt(t.hour(), m, 0)?;
                    continue;
                }
                None => {
                    t = t
                        .date()
                        .and_hms_opt(t.hour(), 0, 0)?
                        .checked_add_signed(TimeDelta::hours(1))?;
                    continue;
                }
            }
            match next_bit(self.seconds, t.second()) {
                Some(s) => return t.date().and_hms_opt(t.hour(), t.minute(), s),
                None => {
                    t = t
                        .date()
                        .and_hms_opt(t.hour(), t.minute(), 0)?
                        .checked_add_signed(TimeDelta::minutes(1))?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .with_timezone(&Utc)
    }

    fn next_n(expr: &str, tz: &str, after: &str, n: usize) -> Vec<String> {
        let cron = Cron::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let tz = parse_timezone(tz).unwrap_or_else(|e| panic!("{e}"));
        cron.upcoming(utc(after), tz, n)
            .unwrap_or_else(|e| panic!("{expr}: {e}"))
            .iter()
            .map(format_time)
            .collect()
    }

    /// Hand-checked fire times: (expression, zone, after, expected next ones).
    /// Calendar facts used: 2026-01-01 is a Thursday; Europe/Amsterdam leaves CET for CEST on
    /// 2026-03-29 at 02:00 (→ 03:00) and returns on 2026-10-25 at 03:00 (→ 02:00);
    /// America/New_York leaves EST on 2026-03-08 at 02:00 (→ 03:00) and returns on
    /// 2026-11-01 at 02:00 (→ 01:00).
    const CASES: &[(&str, &str, &str, &[&str])] = &[
        // --- Europe/Amsterdam, spring forward: 02:00-02:59 does not exist on 2026-03-29.
        (
            "30 2 * * *",
            "Europe/Amsterdam",
            "2026-03-28T12:00:00Z",
            &["2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"],
        ),
        (
            "0 * * * *",
            "Europe/Amsterdam",
            "2026-03-29T00:30:00Z", // 01:30 CET
            &["2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
        ),
        (
            "0 30 2 * * *",
            "Europe/Amsterdam",
            "2026-03-29T00:59:59Z", // 01:59:59 CET
            &["2026-03-30T02:30:00+02:00"],
        ),
        (
            "59 59 1 * * *",
            "Europe/Amsterdam",
            "2026-03-29T00:00:00Z", // the last second before the gap exists
            &["2026-03-29T01:59:59+01:00", "2026-03-30T01:59:59+02:00"],
        ),
        // --- Europe/Amsterdam, fall back: 02:00-02:59 occurs twice on 2026-10-25; fires once.
        (
            "30 2 * * *",
            "Europe/Amsterdam",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
        ),
        (
            "0,30 * * * *",
            "Europe/Amsterdam",
            "2026-10-24T23:45:00Z", // 01:45 CEST
            &[
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:30:00+01:00",
            ],
        ),
        (
            // Asked from inside the repeated hour (second pass): its slots already fired.
            "*/20 * * * *",
            "Europe/Amsterdam",
            "2026-10-25T01:10:00Z", // 02:10 CET, the second 02:10
            &["2026-10-25T03:00:00+01:00", "2026-10-25T03:20:00+01:00"],
        ),
        (
            "@daily",
            "Europe/Amsterdam",
            "2026-10-24T12:00:00Z",
            &["2026-10-25T00:00:00+02:00", "2026-10-26T00:00:00+01:00"],
        ),
        // --- America/New_York, spring forward on 2026-03-08: 02:00-02:59 does not exist.
        (
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T12:00:00Z",
            &["2026-03-09T02:30:00-04:00"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-03-08T06:30:00Z", // 01:30 EST
            &["2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"],
        ),
        // --- America/New_York, fall back on 2026-11-01: 01:00-01:59 occurs twice; fires once.
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            &["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
        ),
        (
            "0 * * * *",
            "America/New_York",
            "2026-11-01T04:30:00Z", // 00:30 EDT
            &[
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T03:00:00-05:00",
            ],
        ),
        // --- 29 February: only leap years.
        (
            "0 0 29 2 *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"],
        ),
        (
            // 2100 is not a leap year: eight years between two 29 Februaries.
            "0 0 29 2 *",
            "UTC",
            "2096-03-01T00:00:00Z",
            &["2104-02-29T00:00:00+00:00"],
        ),
        // --- Day-of-month 31 skips the shorter months.
        (
            "0 12 31 * *",
            "UTC",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-31T12:00:00+00:00",
                "2026-03-31T12:00:00+00:00",
                "2026-05-31T12:00:00+00:00",
                "2026-07-31T12:00:00+00:00",
                "2026-08-31T12:00:00+00:00",
                "2026-10-31T12:00:00+00:00",
                "2026-12-31T12:00:00+00:00",
            ],
        ),
        // --- Both day fields restricted: the 13th OR a Friday.
        (
            "0 0 13 * 5",
            "UTC",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-02T00:00:00+00:00", // Friday
                "2026-01-09T00:00:00+00:00", // Friday
                "2026-01-13T00:00:00+00:00", // Tuesday the 13th
                "2026-01-16T00:00:00+00:00",
                "2026-01-23T00:00:00+00:00",
                "2026-01-30T00:00:00+00:00",
                "2026-02-06T00:00:00+00:00",
                "2026-02-13T00:00:00+00:00", // Friday the 13th, once
                "2026-02-20T00:00:00+00:00",
            ],
        ),
        (
            // A day field beginning with `*` is unrestricted: both must match (1st, 11th,
            // 21st or 31st that is a Friday).
            "0 0 */10 * FRI",
            "UTC",
            "2026-01-01T00:00:00Z",
            &[
                "2026-05-01T00:00:00+00:00",
                "2026-07-31T00:00:00+00:00",
                "2026-08-21T00:00:00+00:00",
                "2026-09-11T00:00:00+00:00",
            ],
        ),
        (
            // Only the day-of-week restricted: Sundays (7 = 0 = SUN).
            "0 0 * * 7",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
        ),
        // --- Steps, lists, ranges, names.
        (
            "*/10 * * * * *",
            "UTC",
            "2026-05-01T12:00:05Z",
            &[
                "2026-05-01T12:00:10+00:00",
                "2026-05-01T12:00:20+00:00",
                "2026-05-01T12:00:30+00:00",
            ],
        ),
        (
            "5-20/5 9-17/4 * * *",
            "UTC",
            "2026-05-01T09:12:00Z",
            &[
                "2026-05-01T09:15:00+00:00",
                "2026-05-01T09:20:00+00:00",
                "2026-05-01T13:05:00+00:00",
                "2026-05-01T13:10:00+00:00",
            ],
        ),
        (
            "10/20 * * * *",
            "UTC",
            "2026-05-01T09:12:00Z",
            &[
                "2026-05-01T09:30:00+00:00",
                "2026-05-01T09:50:00+00:00",
                "2026-05-01T10:10:00+00:00",
            ],
        ),
        (
            "0 9 * jan,JUL Mon-Fri",
            "UTC",
            "2026-01-29T10:00:00Z", // Thursday
            &[
                "2026-01-30T09:00:00+00:00", // Friday
                "2026-07-01T09:00:00+00:00", // Wednesday
                "2026-07-02T09:00:00+00:00",
                "2026-07-03T09:00:00+00:00",
                "2026-07-06T09:00:00+00:00", // Monday
            ],
        ),
        (
            "0 0 * * FRI-SUN",
            "UTC",
            "2026-01-01T00:00:00Z",
            &[
                "2026-01-02T00:00:00+00:00",
                "2026-01-03T00:00:00+00:00",
                "2026-01-04T00:00:00+00:00",
                "2026-01-09T00:00:00+00:00",
            ],
        ),
        (
            "0 0 1 */3 *",
            "UTC",
            "2026-01-01T00:00:00Z", // strictly after: not 2026-01-01 itself
            &["2026-04-01T00:00:00+00:00", "2026-07-01T00:00:00+00:00"],
        ),
        // --- Macros.
        (
            "@hourly",
            "UTC",
            "2026-05-01T10:15:00Z",
            &["2026-05-01T11:00:00+00:00", "2026-05-01T12:00:00+00:00"],
        ),
        (
            "@midnight",
            "Asia/Kolkata",
            "2026-05-01T10:15:00Z",
            &["2026-05-02T00:00:00+05:30"],
        ),
        (
            "@weekly",
            "UTC",
            "2026-01-01T00:00:00Z",
            &["2026-01-04T00:00:00+00:00", "2026-01-11T00:00:00+00:00"],
        ),
        (
            "@monthly",
            "UTC",
            "2026-01-15T00:00:00Z",
            &["2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00"],
        ),
        (
            "@yearly",
            "UTC",
            "2026-01-15T00:00:00Z",
            &["2027-01-01T00:00:00+00:00"],
        ),
        (
            "@annually",
            "America/New_York",
            "2026-01-15T00:00:00Z",
            &["2027-01-01T00:00:00-05:00"],
        ),
        // --- @every: fixed real-time interval from the anchor, blind to DST.
        (
            "@every 90s",
            "UTC",
            "2026-05-01T10:00:00Z",
            &[
                "2026-05-01T10:01:30+00:00",
                "2026-05-01T10:03:00+00:00",
                "2026-05-01T10:04:30+00:00",
            ],
        ),
        (
            "@every 1h",
            "Europe/Amsterdam",
            "2026-03-29T00:30:00Z", // 01:30 CET
            &["2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"],
        ),
        (
            "@every 1h30m",
            "UTC",
            "2026-05-01T10:00:00Z",
            &["2026-05-01T11:30:00+00:00", "2026-05-01T13:00:00+00:00"],
        ),
        // --- Fractions of a second in `after`: still the next whole matching second.
        (
            "* * * * * *",
            "UTC",
            "2026-05-01T10:00:00.500Z",
            &["2026-05-01T10:00:01+00:00", "2026-05-01T10:00:02+00:00"],
        ),
    ];

    #[test]
    fn hand_checked_fire_times() {
        let mut failures = Vec::new();
        for (expr, tz, after, expected) in CASES {
            let got = next_n(expr, tz, after, expected.len());
            if got != *expected {
                failures.push(format!(
                    "{expr:?} in {tz} after {after}:\n  expected {expected:?}\n  got      {got:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn every_second_across_the_repeated_hour_fires_once_per_wall_second() {
        // From 02:59:58 CEST the wall clock goes 02:59:59 CEST, then (an hour of repeated
        // wall times that already fired) 03:00:00 CET.
        let got = next_n("* * * * * *", "Europe/Amsterdam", "2026-10-25T00:59:58Z", 3);
        assert_eq!(
            got,
            [
                "2026-10-25T02:59:59+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T03:00:01+01:00"
            ]
        );
    }

    #[test]
    fn every_is_anchored_at_the_previous_fire() {
        let cron = Cron::parse("@every 1m").unwrap();
        let anchor = utc("2026-05-01T10:00:00Z");
        let tz = Tz::UTC;
        // Downtime: several intervals missed; the next one is the first after now, once.
        let next = cron
            .next_since(anchor, utc("2026-05-01T10:05:10Z"), tz)
            .unwrap();
        assert_eq!(next.with_timezone(&Utc), utc("2026-05-01T10:06:00Z"));
        // Exactly on a slot: strictly after.
        let next = cron
            .next_since(anchor, utc("2026-05-01T10:06:00Z"), tz)
            .unwrap();
        assert_eq!(next.with_timezone(&Utc), utc("2026-05-01T10:07:00Z"));
        // Anchor in the future (clock moved back): one interval after the anchor.
        let next = cron
            .next_since(anchor, utc("2026-05-01T09:00:00Z"), tz)
            .unwrap();
        assert_eq!(next.with_timezone(&Utc), utc("2026-05-01T10:01:00Z"));
        assert!(cron.is_interval());
        // Anchor centuries away: an error, not an overflow.
        let e = cron
            .next_since(utc("1700-01-01T00:00:00Z"), utc("2026-05-01T10:00:00Z"), tz)
            .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn calendar_next_since_ignores_the_anchor() {
        let cron = Cron::parse("0 * * * *").unwrap();
        let next = cron
            .next_since(
                utc("2020-01-01T00:00:00Z"),
                utc("2026-05-01T10:05:00Z"),
                Tz::UTC,
            )
            .unwrap();
        assert_eq!(next.with_timezone(&Utc), utc("2026-05-01T11:00:00Z"));
        assert!(!cron.is_interval());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("", "empty"),
            ("61 * * * *", "minute field \"61\": 61 is out of range 0-59"),
            ("60 * * * * *", "second field \"60\""),
            ("* 24 * * *", "hour field \"24\""),
            ("* * 0 * *", "day-of-month field \"0\""),
            ("* * 32 * *", "day-of-month field \"32\""),
            ("* * * 13 *", "month field \"13\""),
            (
                "* * * FOO *",
                "month field \"FOO\": \"FOO\" is neither a number nor one of JAN",
            ),
            ("* * * * 8", "day-of-week field \"8\""),
            ("* * * * Funday", "day-of-week field \"Funday\""),
            ("*/0 * * * *", "minute field \"*/0\": step 0"),
            (
                "*/x * * * *",
                "minute field \"*/x\": step \"x\" is not a number",
            ),
            (
                "5-2 * * * *",
                "minute field \"5-2\": range 5-2 runs backwards",
            ),
            ("1,,2 * * * *", "minute field \"1,,2\": empty list item"),
            ("? * * * *", "minute field \"?\": ? is only allowed"),
            ("1 2 3", "has 3 field(s); expected 5"),
            ("1 2 3 4 5 6 7", "has 7 field(s)"),
            ("0 0 30 2 *", "day-of-month field \"30\" never occurs"),
            (
                "0 0 31 4,6,9,11 *",
                "day-of-month field \"31\" never occurs",
            ),
            ("@every", "@every needs an interval"),
            ("@every 0s", "shorter than one second"),
            ("@every 5 parsecs", "@every interval: bad duration"),
            ("@reboot", "unknown macro @reboot"),
            ("@daily 5", "@daily takes no argument"),
        ];
        for (expr, needle) in cases {
            match Cron::parse(expr) {
                Ok(c) => panic!("{expr:?} parsed as {c:?}"),
                Err(e) => assert!(
                    e.to_string().contains(needle),
                    "{expr:?}: error {e:?} does not contain {needle:?}"
                ),
            }
        }
    }

    #[test]
    fn impossible_with_both_day_fields_is_found_by_the_bounded_search() {
        // 29 February that is a Sunday (`*/7` is Sunday only, and its `*` means AND): 2032,
        // then not until 2060. Parse cannot see such rarity; the search gives up after
        // SEARCH_YEARS with a clear error.
        let cron = Cron::parse("0 0 29 2 */7").unwrap();
        let next = cron
            .next_after(utc("2026-01-01T00:00:00Z"), Tz::UTC)
            .unwrap();
        assert_eq!(next.with_timezone(&Utc), utc("2032-02-29T00:00:00Z"));
        let e = cron
            .next_after(utc("2033-01-01T00:00:00Z"), Tz::UTC)
            .unwrap_err();
        assert!(
            e.to_string().contains("no fire time in the 10 years"),
            "{e}"
        );
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            parse_timezone("Europe/Amsterdam").unwrap(),
            Tz::Europe__Amsterdam
        );
        assert_eq!(
            parse_timezone("europe/amsterdam").unwrap(),
            Tz::Europe__Amsterdam
        );
        assert_eq!(parse_timezone("UTC").unwrap(), Tz::UTC);
        let e = parse_timezone("Mars/Olympus").unwrap_err();
        assert!(e.to_string().contains("unknown time zone \"Mars/Olympus\""));
    }

    #[test]
    fn instants() {
        let ams = Tz::Europe__Amsterdam;
        for (text, expected) in [
            ("2026-03-29T01:00:00Z", "2026-03-29T01:00:00Z"),
            ("2026-03-29T03:00:00+02:00", "2026-03-29T01:00:00Z"),
            ("2026-03-29 03:00:00+02:00", "2026-03-29T01:00:00Z"),
            ("2026-03-29 03:00:00+02", "2026-03-29T01:00:00Z"),
            ("2026-03-29 01:30", "2026-03-29T00:30:00Z"),
            ("2026-03-29T01:30:15.5", "2026-03-29T00:30:15.5Z"),
            ("2026-03-29", "2026-03-28T23:00:00Z"),
            // Repeated wall time: its first occurrence (CEST).
            ("2026-10-25 02:30", "2026-10-25T00:30:00Z"),
        ] {
            assert_eq!(parse_instant(text, ams).unwrap(), utc(expected), "{text}");
        }
        let e = parse_instant("2026-03-29 02:30", ams).unwrap_err();
        assert!(e.to_string().contains("daylight-saving gap"), "{e}");
        let e = parse_instant("yesterday", ams).unwrap_err();
        assert!(e.to_string().contains("bad time \"yesterday\""), "{e}");
    }

    #[test]
    fn whitespace_and_case() {
        assert_eq!(
            next_n("  0   12  *  *  sun ", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-04T12:00:00+00:00"]
        );
        assert_eq!(
            next_n("@Every 2m", "UTC", "2026-01-01T00:00:00Z", 1),
            ["2026-01-01T00:02:00+00:00"]
        );
    }
}
