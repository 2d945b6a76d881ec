//! Reading a sample back from Prometheus' text format, as a scrape would.

/// The value of the sample `name` (a counter, gauge or untyped; `*_count` and `*_sum` of a
/// histogram too) whose labels include every one of `labels`, in the Prometheus text `text`.
///
/// # Errors
///
/// Text that does not parse; no such sample (the error shows the text).
pub fn prometheus_value(text: &str, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))?;
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .ok_or_else(|| anyhow::anyhow!("no sample {name} {labels:?} in:\n{text}"))?;
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => Ok(v),
        ref other => anyhow::bail!("{name} {labels:?} is not a single value: {other:?}"),
    }
}
