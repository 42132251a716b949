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
mod tests;
