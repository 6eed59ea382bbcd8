//! The operator's one retry schedule, built on `backon`: a failed reconcile is requeued
//! after 2 s, then 4 s, 8 s, … up to 5 minutes. No jitter: the controller's bounded queue
//! already spreads retries of many Pipelines, and a fixed schedule is what the tests pin.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

pub const FIRST_DELAY: Duration = Duration::from_secs(2);
pub const MAX_DELAY: Duration = Duration::from_secs(300);

const SCHEDULE: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(FIRST_DELAY)
    .with_factor(2.0)
    .with_max_delay(MAX_DELAY)
    .without_max_times();

/// How long to wait before retry number `attempt` (1 for the first retry).
pub fn delay(attempt: u32) -> Duration {
    // Past 16 doublings of 2 s the cap has long been reached.
    let step = usize::try_from(attempt.clamp(1, 16)).unwrap_or(16);
    SCHEDULE.build().nth(step - 1).unwrap_or(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_two_seconds_and_caps_at_five_minutes() {
        assert_eq!(delay(0), Duration::from_secs(2));
        assert_eq!(delay(1), Duration::from_secs(2));
        assert_eq!(delay(2), Duration::from_secs(4));
        assert_eq!(delay(5), Duration::from_secs(32));
        assert_eq!(delay(9), MAX_DELAY);
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }
}
