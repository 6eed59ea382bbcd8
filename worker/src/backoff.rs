//! Capped exponential backoff with jitter, for retrying Redis and Kafka through outages.
//!
//! Pure: the caller supplies the jitter, so the schedule is testable. The delay of attempt
//! `n` (from 0) is drawn from `[ceiling/2, ceiling)` where `ceiling = min(max, initial·2ⁿ)`
//! ("equal jitter"): never less than half the ceiling, so retries do not hammer a
//! recovering server, and spread, so many workers do not retry in lockstep.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Redis and Kafka retries: quick first retry, at most 5 s between attempts.
    pub const DEFAULT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Failed attempts since the last success.
    pub const fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the delay after `attempt` failures.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |delay| delay.min(self.max))
    }

    /// The next delay; `jitter` in `[0, 1)` picks where it falls in `[ceiling/2, ceiling)`.
    /// Values outside that range are clamped.
    pub fn next_delay_with(&mut self, jitter: f64) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let half = ceiling / 2;
        half + half.mul_f64(jitter)
    }

    /// The next delay with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }

    /// Call after a success: the next failure starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let backoff = Backoff::new(ms(100), ms(1_000));
        let ceilings: Vec<_> = (0..6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]
        );
        assert_eq!(backoff.ceiling(u32::MAX), ms(1_000));
    }

    #[test]
    fn jitter_stays_between_half_and_full_ceiling() {
        let mut backoff = Backoff::new(ms(100), ms(1_000));
        assert_eq!(backoff.next_delay_with(0.0), ms(50));
        assert_eq!(backoff.next_delay_with(0.5), ms(150));
        assert_eq!(backoff.next_delay_with(1.0), ms(400));
        assert_eq!(backoff.next_delay_with(f64::NAN), ms(400));
        assert_eq!(backoff.next_delay_with(-3.0), ms(500));
        assert_eq!(backoff.attempts(), 5);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::new(ms(10), ms(80));
        for _ in 0..10 {
            backoff.next_delay_with(0.99);
        }
        assert!(backoff.next_delay_with(0.0) >= ms(40));
        backoff.reset();
        assert_eq!(backoff.attempts(), 0);
        assert_eq!(backoff.next_delay_with(0.0), ms(5));
    }

    #[test]
    fn never_overflows() {
        let mut backoff = Backoff::new(Duration::from_secs(u64::MAX / 2), Duration::MAX);
        for _ in 0..100 {
            backoff.next_delay_with(0.7);
        }
        assert_eq!(backoff.ceiling(3), Duration::MAX);
    }
}
