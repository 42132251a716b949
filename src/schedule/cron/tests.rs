//! Unit tests of cron expressions; the module is declared under `#[cfg(test)]`.

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
