//! Retry delays: exponential backoff with jitter, bounded, honouring `Retry-After`.

use std::time::Duration;

use crate::config::PromotionSettings;

/// Delay before attempt `failures + 1`, after `failures` failed attempts (`failures >= 1`).
///
/// The base doubles with each failure from `retry_initial_seconds` up to `retry_max_seconds`;
/// the delay is drawn uniformly from the upper half of the base ("equal jitter"), so that many
/// jobs failing together do not come back together, and never less than `retry_after` when the
/// server asked for a pause (429 / 503 with `Retry-After`).
pub fn delay(
    settings: &PromotionSettings,
    failures: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let initial = settings.retry_initial_seconds.max(1) as f64;
    let max = (settings.retry_max_seconds.max(1) as f64).max(initial);
    let exp = failures.saturating_sub(1).min(30);
    let base = (initial * f64::from(1u32 << exp.min(30))).min(max);
    let jitter = jitter.clamp(0.0, 1.0);
    let secs = base / 2.0 + base / 2.0 * jitter;
    let backoff = Duration::from_secs_f64(secs);
    match retry_after {
        // A server's explicit pause wins, but a hostile or absurd value is capped.
        Some(ra) => backoff.max(ra.min(Duration::from_secs(settings.retry_max_seconds.max(1) * 4))),
        None => backoff,
    }
}

/// [`delay`] with a random jitter.
pub fn delay_random(
    settings: &PromotionSettings,
    failures: u32,
    retry_after: Option<Duration>,
) -> Duration {
    delay(
        settings,
        failures,
        retry_after,
        rand::random_range(0.0..=1.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(initial: u64, max: u64) -> PromotionSettings {
        PromotionSettings {
            retry_initial_seconds: initial,
            retry_max_seconds: max,
            ..PromotionSettings::default()
        }
    }

    #[test]
    fn doubles_up_to_the_maximum() {
        let s = settings(2, 60);
        let full: Vec<u64> = (1..=8).map(|f| delay(&s, f, None, 1.0).as_secs()).collect();
        assert_eq!(full, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        let half: Vec<u64> = (1..=3).map(|f| delay(&s, f, None, 0.0).as_secs()).collect();
        assert_eq!(half, vec![1, 2, 4]);
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let s = settings(4, 300);
        for _ in 0..200 {
            let d = delay_random(&s, 3, None);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(16),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let s = settings(1, 10);
        assert_eq!(
            delay(&s, 1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            delay(&s, 1, Some(Duration::from_secs(100_000)), 0.0),
            Duration::from_secs(40)
        );
        // A short Retry-After does not shorten the backoff.
        assert_eq!(
            delay(&s, 4, Some(Duration::from_millis(10)), 1.0),
            Duration::from_secs(8)
        );
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let s = settings(2, 300);
        assert_eq!(delay(&s, u32::MAX, None, 1.0), Duration::from_secs(300));
    }
}
