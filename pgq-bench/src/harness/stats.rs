//! Order statistics of a run's samples.

/// The median of sorted values (the mean of the middle two for an even count); NaN when empty.
pub(crate) fn median_of_sorted(values: &[f64]) -> f64 {
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The `per_cent` percentile of sorted values (nearest rank); NaN when empty.
pub(crate) fn percentile(sorted: &[f64], per_cent: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (per_cent * sorted.len()).div_ceil(100).max(1);
    sorted[rank.min(sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median_of_sorted(&[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(median_of_sorted(&[1.0, 2.0, 3.0, 4.0]), 2.5);
        assert!(median_of_sorted(&[]).is_nan());
    }

    #[test]
    fn percentiles() {
        let values: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&values, 99), 198.0);
        assert_eq!(percentile(&values, 50), 100.0);
        assert_eq!(percentile(&[3.0], 99), 3.0);
        assert!(percentile(&[], 50).is_nan());
    }
}
