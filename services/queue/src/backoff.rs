//! Exponential backoff: the delay before a job's next attempt, and between reconnects.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// `initial × multiplier^(n−1)`, capped at `max`, for the n-th failure (n ≥ 1).
///
/// Deterministic on purpose: the RabbitMQ backend turns every distinct delay into a delay queue
/// with that message TTL, so the delays must be a fixed, small set. Reconnects add jitter on top
/// with [`Backoff::jittered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub multiplier: u32,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, multiplier: u32, max: Duration) -> Backoff {
        Backoff {
            initial,
            multiplier,
            max,
        }
    }

    /// The delay after the `n`-th failure; `n = 0` is treated as 1. Never exceeds `max` and
    /// never overflows.
    pub fn delay(&self, n: u32) -> Duration {
        let exponent = n.max(1) - 1;
        let factor = self.multiplier.max(1).checked_pow(exponent);
        let delay = factor.and_then(|f| self.initial.checked_mul(f));
        match delay {
            Some(d) => d.min(self.max),
            None => self.max,
        }
    }

    /// [`Backoff::delay`] scaled by a random factor in [0.5, 1.0): spreads the reconnects of many
    /// clients that lost the same broker at the same moment.
    pub fn jittered(&self, n: u32) -> Duration {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let fraction = 0.5 + (random % 1_000) as f64 / 2_000.0;
        self.delay(n).mul_f64(fraction)
    }
}

/// How often a job is tried and how long to wait between tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included: a job whose attempt `max_attempts` fails is
    /// dead-lettered instead of retried. At least 1.
    pub max_attempts: u32,
    /// The delay before attempt n+1 is `backoff.delay(n)`.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// 5 attempts, waiting 10 s, 40 s, 160 s and 640 s (capped at 15 min) between them.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_secs(10), 4, Duration::from_secs(15 * 60)),
        }
    }
}

impl RetryPolicy {
    /// The delay before retrying a job whose `attempt` just failed, or `None` when that was
    /// the last attempt.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        (attempt.max(1) < self.max_attempts).then(|| self.backoff.delay(attempt))
    }

    /// Every distinct delay a retry can wait, ascending (the AMQP delay queues to declare).
    pub fn distinct_delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts)
            .map(|n| self.backoff.delay(n))
            .collect();
        delays.sort();
        delays.dedup();
        delays
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_geometrically_then_caps() {
        let b = Backoff::new(100 * MS, 2, 1_000 * MS);
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn attempt_zero_is_the_first() {
        let b = Backoff::new(100 * MS, 3, Duration::from_secs(60));
        assert_eq!(b.delay(0), b.delay(1));
        assert_eq!(b.delay(2), 300 * MS);
    }

    #[test]
    fn huge_attempts_saturate_at_max() {
        let b = Backoff::new(Duration::from_secs(1), 10, Duration::from_secs(3600));
        assert_eq!(b.delay(30), Duration::from_secs(3600));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(3600));
        let huge = Backoff::new(Duration::MAX, 2, Duration::MAX);
        assert_eq!(huge.delay(5), Duration::MAX);
    }

    #[test]
    fn multiplier_zero_or_one_is_constant() {
        for m in [0, 1] {
            let b = Backoff::new(250 * MS, m, Duration::from_secs(1));
            assert!((1..10).all(|n| b.delay(n) == 250 * MS));
        }
    }

    #[test]
    fn jitter_stays_within_half_to_full_delay() {
        let b = Backoff::new(Duration::from_secs(1), 2, Duration::from_secs(8));
        for n in 1..=5 {
            for _ in 0..50 {
                let j = b.jittered(n);
                assert!(j >= b.delay(n) / 2 && j < b.delay(n), "{j:?} for {n}");
            }
        }
    }

    #[test]
    fn retry_policy_stops_at_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::new(10 * MS, 2, Duration::from_secs(1)),
        };
        assert_eq!(p.delay_after(1), Some(10 * MS));
        assert_eq!(p.delay_after(2), Some(20 * MS));
        assert_eq!(p.delay_after(3), None);
        assert_eq!(p.delay_after(7), None);
        assert_eq!(p.distinct_delays(), [10 * MS, 20 * MS]);
    }

    #[test]
    fn distinct_delays_dedups_the_cap() {
        let p = RetryPolicy {
            max_attempts: 6,
            backoff: Backoff::new(10 * MS, 10, 100 * MS),
        };
        assert_eq!(p.distinct_delays(), [10 * MS, 100 * MS]);
        let single = RetryPolicy {
            max_attempts: 1,
            ..p
        };
        assert_eq!(single.delay_after(1), None);
        assert!(single.distinct_delays().is_empty());
    }

    #[test]
    fn default_policy() {
        let p = RetryPolicy::default();
        let secs: Vec<u64> = p.distinct_delays().iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs, [10, 40, 160, 640]);
    }
}
