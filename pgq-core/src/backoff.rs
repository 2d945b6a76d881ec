//! Capped exponential backoff with jitter, for reconnecting and retrying.

use std::hash::{BuildHasher as _, RandomState};
use std::time::Duration;

/// Waits that double from `min` up to `max`; each is drawn between half and all of the nominal
/// wait, so many clients that lost one server do not come back in step.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits starting at `min`, never longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let nominal = self.next;
        self.next = (self.next * 2).min(self.max);
        nominal.mul_f64(0.5 + 0.5 * unit_random())
    }

    /// Starts over at `min` (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A number in [0, 1) from the standard library's randomly keyed hasher; plenty for jitter.
fn unit_random() -> f64 {
    // 53 random bits: exactly representable in an f64.
    let bits = RandomState::new().hash_one(std::time::Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter() {
        let min = Duration::from_millis(100);
        let max = Duration::from_millis(1000);
        let mut backoff = Backoff::new(min, max);
        let nominal = [100, 200, 400, 800, 1000, 1000];
        for n in nominal {
            let wait = backoff.next_wait();
            let n = Duration::from_millis(n);
            assert!(
                wait <= n && wait >= n / 2,
                "{wait:?} not within [{:?}, {n:?}]",
                n / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_wait() <= min);
    }

    #[test]
    fn random_numbers_stay_in_range() {
        for _ in 0..1000 {
            let x = unit_random();
            assert!((0.0..1.0).contains(&x));
        }
    }
}
