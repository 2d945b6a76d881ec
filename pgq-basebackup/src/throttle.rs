//! `--max-rate`: one budget shared by all jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Paces fetches so the bytes requested since the start stay under a rate.
#[derive(Debug)]
pub(crate) struct Throttle {
    rate: u64,
    start: Instant,
    granted: AtomicU64,
}

impl Throttle {
    /// A budget of `rate` bytes per second (at least 1).
    pub(crate) fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate.max(1),
            start: Instant::now(),
            granted: AtomicU64::new(0),
        }
    }

    /// Waits until `bytes` more fit in the budget.
    pub(crate) async fn acquire(&self, bytes: u64) {
        let before = self.granted.fetch_add(bytes, Ordering::Relaxed);
        let due = Duration::from_secs_f64(before as f64 / self.rate as f64);
        tokio::time::sleep_until(self.start + due).await;
    }
}

/// Parses a rate as `pg_basebackup --max-rate` does (also used for sizes): a number of
/// kB(/s), or with a suffix `k` or `M` (1024-based).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&text[..i], text[i..].trim()),
        None => (text, ""),
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid rate {text:?}: expected e.g. 500k or 20M"))?;
    let factor = match unit {
        "" | "k" | "K" | "kB" => 1024,
        "M" | "MB" => 1024 * 1024,
        _ => return Err(format!("invalid rate unit {unit:?}: use k or M")),
    };
    match number.checked_mul(factor) {
        Some(0) | None => Err(format!("rate {text:?} out of range")),
        Some(rate) => Ok(rate),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("32"), Ok(32 * 1024));
        assert_eq!(parse_rate("500k"), Ok(500 * 1024));
        assert_eq!(parse_rate("20M"), Ok(20 * 1024 * 1024));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("3G").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn paces_requests() {
        let throttle = Throttle::new(1000);
        let start = Instant::now();
        for _ in 0..4 {
            throttle.acquire(500).await;
        }
        // The fourth request starts once 1500 bytes have had their 1.5 s.
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }
}
