//! Metrics on the hot path cost a relaxed atomic add or two: [`Histogram`] has fixed buckets
//! and an integer sum, so observing a value takes no lock and allocates nothing. Rendering
//! ([`Text`]) writes the Prometheus text exposition format (version 0.0.4).

use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The content type of [`Text`].
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A histogram of integer values (e.g. microseconds) over fixed upper bounds.
#[derive(Debug)]
pub(crate) struct Histogram {
    /// Inclusive upper bounds, ascending; one more bucket (+Inf) follows them.
    bounds: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Per bucket (not cumulative), the +Inf bucket last.
    pub counts: Vec<u64>,
    pub sum: u64,
}

#[cfg(test)]
impl Snapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Histogram {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "ascending bounds");
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Counts `value` in the first bucket whose bound is at least `value`.
    #[inline]
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum.fetch_add(value, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: self.sum.load(Relaxed),
        }
    }

    pub fn bounds(&self) -> &'static [u64] {
        self.bounds
    }
}

/// A page of metrics in the Prometheus text format.
#[derive(Default)]
pub(crate) struct Text(String);

impl Text {
    /// `# HELP` and `# TYPE` of a metric family; its samples follow.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    /// One sample: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.0, " {value}");
    }

    /// The `_bucket`, `_sum` and `_count` samples of a histogram whose values are in units of
    /// `1 / scale` (1e6 for microseconds shown as seconds).
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &Histogram, scale: f64) {
        let snap = h.snapshot();
        let mut cumulative = 0;
        let bounds = h.bounds().iter().map(|&b| Some(b)).chain([None]);
        for (bound, count) in bounds.zip(&snap.counts) {
            cumulative += count;
            let le = bound.map_or("+Inf".to_string(), |b| (b as f64 / scale).to_string());
            let _ = write!(self.0, "{name}_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.0, " {cumulative}");
        }
        let _ = write!(self.0, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.0, " {}", snap.sum as f64 / scale);
        let _ = write!(self.0, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.0, " {cumulative}");
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.0.push('{');
        let all = labels.iter().copied().chain(le.map(|le| ("le", le)));
        for (i, (key, value)) in all.enumerate() {
            if i > 0 {
                self.0.push(',');
            }
            let _ = write!(self.0, "{key}=\"{}\"", escape_label(value));
        }
        self.0.push('}');
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text with `\` and newlines escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bucket_that_holds_them() {
        static BOUNDS: [u64; 3] = [10, 100, 1000];
        let h = Histogram::new(&BOUNDS);
        for v in [0, 10, 11, 100, 5000, 7] {
            h.observe(v);
        }
        assert_eq!(
            h.snapshot(),
            Snapshot {
                counts: vec![3, 2, 0, 1],
                sum: 5128
            }
        );
        assert_eq!(h.snapshot().count(), 6);
    }

    #[test]
    fn text_format() {
        static BOUNDS: [u64; 2] = [1000, 500_000];
        let h = Histogram::new(&BOUNDS);
        h.observe(250);
        h.observe(2_000_000);
        let mut t = Text::default();
        t.family("x_total", "counter", "Things.\nMore");
        t.sample("x_total", &[("database", "a\"b\\c\nd"), ("queue", "1")], 3);
        t.sample("y", &[], 1.5);
        t.family("d_seconds", "histogram", "Durations.");
        t.histogram("d_seconds", &[("database", "app")], &h, 1e6);
        assert_eq!(
            t.into_string(),
            "# HELP x_total Things.\\nMore\n\
             # TYPE x_total counter\n\
             x_total{database=\"a\\\"b\\\\c\\nd\",queue=\"1\"} 3\n\
             y 1.5\n\
             # HELP d_seconds Durations.\n\
             # TYPE d_seconds histogram\n\
             d_seconds_bucket{database=\"app\",le=\"0.001\"} 1\n\
             d_seconds_bucket{database=\"app\",le=\"0.5\"} 1\n\
             d_seconds_bucket{database=\"app\",le=\"+Inf\"} 2\n\
             d_seconds_sum{database=\"app\"} 2.00025\n\
             d_seconds_count{database=\"app\"} 2\n"
        );
    }
}
