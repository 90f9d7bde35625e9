//! Reading a scrape in the Prometheus text format: what the soak's checks, `status` and the
//! tests read `/metrics` with (the encoder is the prometheus crate's, in [`crate::metrics`]).

/// One sample of a scrape in the Prometheus text format: `name{labels} value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    /// The metric name.
    pub name: &'a str,
    /// The labels as written, braces included (`{code="AA",route="lab"}`), or empty.
    pub labels: &'a str,
    /// The value.
    pub value: f64,
}

impl Sample<'_> {
    /// Whether the sample has label `key` with `value`.
    pub fn has(&self, key: &str, value: &str) -> bool {
        let inner = self.labels.trim_start_matches('{').trim_end_matches('}');
        inner.split(',').any(|pair| {
            pair.strip_prefix(key).and_then(|r| r.strip_prefix('='))
                == Some(&format!("\"{value}\""))
        })
    }
}

/// The samples of a scrape in the text format, comments skipped: the one reader of scrapes
/// (soak's checks and the tests).
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value = value.parse().ok()?;
            let (name, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            Some(Sample {
                name,
                labels,
                value,
            })
        })
}

/// The value of the series written exactly as `series` (`name{labels}`, labels in the
/// encoder's order), or `None` when the scrape has no such series.
pub fn sample_value(text: &str, series: &str) -> Option<f64> {
    samples(text)
        .find(|s| {
            s.name.len() + s.labels.len() == series.len()
                && series.starts_with(s.name)
                && series.ends_with(s.labels)
        })
        .map(|s| s.value)
}
