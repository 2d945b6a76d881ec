//! What a scenario measured, and its markdown form.

use std::fmt;

use serde::Serialize;

use crate::harness::median_of_sorted;

/// One scenario's results: a series of timed blocks per variant, and ratios of their medians;
/// or figures other than throughput (times, CPU shares) with their upper limits.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name (`produce`, `ticker`).
    pub scenario: &'static str,
    /// How the figures were made, one sentence each.
    pub notes: Vec<String>,
    /// One entry per variant and shape, in the order they were measured within each run.
    pub series: Vec<Series>,
    /// Ratios of median throughputs (or of other medians), some with a target.
    pub ratios: Vec<Ratio>,
    /// Figures that are not throughputs, one sample per run.
    pub measures: Vec<Measure>,
    /// Medians of [`Report::measures`] held against an upper limit.
    pub limits: Vec<Limit>,
}

/// One figure that is not a throughput (a time, a CPU share), measured once per run.
#[derive(Debug, Clone, Serialize)]
pub struct Measure {
    /// What was measured (`ticker pass, 1,000 queues, all tick`).
    pub what: String,
    /// Whose it is (`ours`, `reference`).
    pub variant: &'static str,
    /// The figure and its unit (`server total ms`, `% of one core`).
    pub metric: &'static str,
    /// One value per run, in run order.
    pub samples: Vec<f64>,
}

/// A median that must stay at or below a limit.
#[derive(Debug, Clone, Serialize)]
pub struct Limit {
    /// What is limited.
    pub label: String,
    /// The median; `None` when it was not measured.
    pub value: Option<f64>,
    /// The highest acceptable value.
    pub max: f64,
    /// Whether the limit is met; `None` without a value.
    pub met: Option<bool>,
}

/// The timed blocks of one variant in one shape.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The shape of the work (`round trip`, `server`).
    pub shape: &'static str,
    /// What was measured (`ours insert_event`, `plain INSERT`, ...).
    pub variant: &'static str,
    /// Repetitions per timed block.
    pub reps: u32,
    /// Events each repetition inserts.
    pub events_per_rep: u64,
    /// One sample per run, in run order.
    pub samples: Vec<Sample>,
}

/// One timed block.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// The run it belongs to, from 1.
    pub run: u32,
    /// Events inserted in the block.
    pub events: u64,
    /// Wall-clock time of the block.
    pub seconds: f64,
    /// `events / seconds`.
    pub events_per_sec: f64,
}

/// The ratio of two series' median throughputs.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// What is divided by what.
    pub label: String,
    /// The ratio; `None` when a side was not measured (the reference is missing).
    pub value: Option<f64>,
    /// The lowest acceptable value, when there is one.
    pub target: Option<f64>,
    /// Whether the target is met; `None` without a target or a value.
    pub met: Option<bool>,
}

impl Sample {
    /// `events` in `seconds`, in run `run`.
    pub(crate) fn new(run: u32, events: u64, seconds: f64) -> Sample {
        Sample {
            run,
            events,
            seconds,
            events_per_sec: events as f64 / seconds,
        }
    }
}

impl Series {
    /// The slowest block's events per second.
    pub fn min(&self) -> f64 {
        self.rates().first().copied().unwrap_or(f64::NAN)
    }

    /// The median block's events per second (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        median_of_sorted(&self.rates())
    }

    /// The fastest block's events per second.
    pub fn max(&self) -> f64 {
        self.rates().last().copied().unwrap_or(f64::NAN)
    }

    fn rates(&self) -> Vec<f64> {
        let mut rates: Vec<f64> = self.samples.iter().map(|s| s.events_per_sec).collect();
        rates.sort_by(f64::total_cmp);
        rates
    }
}

impl Measure {
    /// The smallest, median (the mean of the middle two for an even count) and largest sample.
    pub fn stats(&self) -> (f64, f64, f64) {
        let mut values = self.samples.clone();
        values.sort_by(f64::total_cmp);
        (
            values.first().copied().unwrap_or(f64::NAN),
            median_of_sorted(&values),
            values.last().copied().unwrap_or(f64::NAN),
        )
    }

    /// The median sample.
    pub fn median(&self) -> f64 {
        self.stats().1
    }
}

/// Measures collected run by run, in first-measured order.
#[derive(Debug, Default)]
pub(crate) struct Measures(Vec<Measure>);

impl Measures {
    /// Appends `value` to the measure of `what`, `variant` and `metric`, creating it first.
    pub(crate) fn push(
        &mut self,
        what: &str,
        variant: &'static str,
        metric: &'static str,
        value: f64,
    ) {
        match self
            .0
            .iter_mut()
            .find(|m| m.what == what && m.variant == variant && m.metric == metric)
        {
            Some(m) => m.samples.push(value),
            None => self.0.push(Measure {
                what: what.to_owned(),
                variant,
                metric,
                samples: vec![value],
            }),
        }
    }

    pub(crate) fn into_vec(self) -> Vec<Measure> {
        self.0
    }
}

impl Limit {
    /// `measure`'s median held against `max`; `None` when it was not measured.
    pub(crate) fn of(label: impl Into<String>, measure: Option<&Measure>, max: f64) -> Limit {
        let value = measure.map(Measure::median).filter(|v| v.is_finite());
        Limit {
            label: label.into(),
            value,
            max,
            met: value.map(|v| v <= max),
        }
    }
}

impl Ratio {
    /// `numerator`'s median over `denominator`'s, when both were measured.
    pub(crate) fn of(
        label: impl Into<String>,
        numerator: Option<&Series>,
        denominator: Option<&Series>,
        target: Option<f64>,
    ) -> Ratio {
        Ratio::of_values(
            label,
            numerator.map(Series::median),
            denominator.map(Series::median),
            target,
        )
    }

    /// `numerator` over `denominator`, when both were measured.
    pub(crate) fn of_values(
        label: impl Into<String>,
        numerator: Option<f64>,
        denominator: Option<f64>,
        target: Option<f64>,
    ) -> Ratio {
        let value = numerator.zip(denominator).map(|(n, d)| n / d);
        Ratio {
            label: label.into(),
            value,
            target,
            met: value.zip(target).map(|(v, t)| v >= t),
        }
    }
}

impl fmt::Display for Report {
    /// A markdown section: notes, then the tables that have rows: throughputs, other figures,
    /// ratios, limits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "## {}\n", self.scenario)?;
        for note in &self.notes {
            writeln!(f, "- {note}")?;
        }
        if !self.series.is_empty() {
            writeln!(
                f,
                "\n| shape | variant | reps × events | min events/s | median events/s | max events/s |"
            )?;
            writeln!(f, "|---|---|---:|---:|---:|---:|")?;
            for s in &self.series {
                writeln!(
                    f,
                    "| {} | {} | {} × {} | {} | {} | {} |",
                    s.shape,
                    s.variant,
                    s.reps,
                    thousands(s.events_per_rep as f64),
                    thousands(s.min()),
                    thousands(s.median()),
                    thousands(s.max())
                )?;
            }
        }
        if !self.measures.is_empty() {
            writeln!(f, "\n| measured | variant | figure | min | median | max |")?;
            writeln!(f, "|---|---|---|---:|---:|---:|")?;
            for m in &self.measures {
                let (min, median, max) = m.stats();
                writeln!(
                    f,
                    "| {} | {} | {} | {} | {} | {} |",
                    m.what,
                    m.variant,
                    m.metric,
                    figure(min),
                    figure(median),
                    figure(max)
                )?;
            }
        }
        if !self.ratios.is_empty() {
            writeln!(f, "\n| ratio of medians | value | target | verdict |")?;
            writeln!(f, "|---|---:|---:|---|")?;
            for r in &self.ratios {
                let value = r
                    .value
                    .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}"));
                let target = r
                    .target
                    .map_or_else(String::new, |t| format!("≥ {}", target(t)));
                let verdict = match r.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None if r.target.is_some() => "not measured",
                    None => "",
                };
                writeln!(f, "| {} | {value} | {target} | {verdict} |", r.label)?;
            }
        }
        if !self.limits.is_empty() {
            writeln!(f, "\n| median | value | target | verdict |")?;
            writeln!(f, "|---|---:|---:|---|")?;
            for l in &self.limits {
                let value = l.value.map_or_else(|| "n/a".to_owned(), figure);
                let verdict = match l.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "not measured",
                };
                writeln!(
                    f,
                    "| {} | {value} | ≤ {} | {verdict} |",
                    l.label,
                    figure(l.max)
                )?;
            }
        }
        Ok(())
    }
}

/// A figure with three significant digits (at least none after the point for large values).
pub(crate) fn figure(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let magnitude = x.abs();
    if magnitude >= 100.0 {
        format!("{x:.0}")
    } else if magnitude >= 10.0 {
        format!("{x:.1}")
    } else if magnitude >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A ratio's target as written: one decimal, or two where the second counts (`0.8`, `0.95`).
pub(crate) fn target(t: f64) -> String {
    let one = format!("{t:.1}");
    let two = format!("{t:.2}");
    if two.ends_with('0') {
        one
    } else {
        two
    }
}

/// A non-negative figure rounded to a whole number, with `,` between thousands.
pub(crate) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let digits = format!("{x:.0}");
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in MiB.
pub(crate) fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A series of one block of 1,000 events per rate, one run each.
#[cfg(test)]
pub(crate) fn series(shape: &'static str, variant: &'static str, rates: &[f64]) -> Series {
    Series {
        shape,
        variant,
        reps: 1,
        events_per_rep: 1000,
        samples: rates
            .iter()
            .zip(1..)
            .map(|(&r, run)| Sample {
                run,
                events: 1000,
                seconds: 1000.0 / r,
                events_per_sec: r,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rates: &[f64]) -> Series {
        super::series("server", "v", rates)
    }

    #[test]
    fn statistics() {
        let s = series(&[30.0, 10.0, 20.0]);
        assert_eq!((s.min(), s.median(), s.max()), (10.0, 20.0, 30.0));
        assert_eq!(series(&[4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        assert!(series(&[]).median().is_nan());
    }

    #[test]
    fn ratios_and_verdicts() {
        let (a, b) = (series(&[90.0]), series(&[100.0]));
        let met = Ratio::of("a / b", Some(&a), Some(&b), Some(0.8));
        assert_eq!((met.value, met.met), (Some(0.9), Some(true)));
        let missed = Ratio::of("a / b", Some(&a), Some(&b), Some(1.0));
        assert_eq!(missed.met, Some(false));
        let absent = Ratio::of("a / b", Some(&a), None, Some(0.5));
        assert_eq!((absent.value, absent.met), (None, None));
        let report = Report {
            scenario: "x",
            notes: vec!["n".to_owned()],
            series: vec![a],
            ratios: vec![met, missed, absent],
            measures: Vec::new(),
            limits: Vec::new(),
        };
        let text = report.to_string();
        assert!(
            text.contains("| server | v | 1 × 1,000 | 90 | 90 | 90 |"),
            "{text}"
        );
        assert!(text.contains("| a / b | 0.90 | ≥ 0.8 | met |"), "{text}");
        assert!(
            text.contains("| a / b | 0.90 | ≥ 1.0 | **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("| a / b | n/a | ≥ 0.5 | not measured |"),
            "{text}"
        );
    }

    #[test]
    fn measures_and_limits() {
        let m = Measure {
            what: "pass".to_owned(),
            variant: "ours",
            metric: "ms",
            samples: vec![3.0, 1.0, 2.0],
        };
        assert_eq!(m.stats(), (1.0, 2.0, 3.0));
        let met = Limit::of("pass ms", Some(&m), 2.5);
        assert_eq!((met.value, met.met), (Some(2.0), Some(true)));
        let missed = Limit::of("pass ms", Some(&m), 1.5);
        assert_eq!(missed.met, Some(false));
        let absent = Limit::of("pass ms", None, 1.0);
        assert_eq!((absent.value, absent.met), (None, None));
        let report = Report {
            scenario: "x",
            notes: Vec::new(),
            series: Vec::new(),
            ratios: Vec::new(),
            measures: vec![m],
            limits: vec![met, missed, absent],
        };
        let text = report.to_string();
        assert!(!text.contains("events/s"), "{text}");
        assert!(
            text.contains("| pass | ours | ms | 1.00 | 2.00 | 3.00 |"),
            "{text}"
        );
        assert!(text.contains("| pass ms | 2.00 | ≤ 2.50 | met |"), "{text}");
        assert!(
            text.contains("| pass ms | 2.00 | ≤ 1.50 | **missed** |"),
            "{text}"
        );
        assert!(
            text.contains("| pass ms | n/a | ≤ 1.00 | not measured |"),
            "{text}"
        );
    }

    #[test]
    fn targets() {
        assert_eq!(target(0.8), "0.8");
        assert_eq!(target(1.0), "1.0");
        assert_eq!(target(0.95), "0.95");
    }

    #[test]
    fn figures() {
        assert_eq!(figure(139.4), "139");
        assert_eq!(figure(33.26), "33.3");
        assert_eq!(figure(0.0123), "0.012");
        assert_eq!(figure(f64::NAN), "n/a");
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1234.6), "1,235");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(f64::NAN), "n/a");
    }
}
