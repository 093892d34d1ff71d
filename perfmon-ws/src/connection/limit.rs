//! The per-connection rate limit on client messages: a token bucket.

use std::time::Instant;

use crate::config::Config;

/// Token bucket for client messages.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    last: Instant,
    refused_in_a_row: u32,
}

/// What the limit says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it.
    Ok,
    /// Drop it; `tell` says whether to send a `rate_limited` error (the
    /// first refusal and every 50th, not each).
    Refused { tell: bool },
    /// Refused `rate_burst` times in a row: close with 1008.
    Flood,
}

impl RateLimit {
    /// A full bucket.
    pub(crate) fn new(config: &Config, now: Instant) -> Self {
        RateLimit {
            tokens: f64::from(config.rate_burst),
            last: now,
            refused_in_a_row: 0,
        }
    }

    /// Takes a token for a message arriving at `now`, if there is one.
    pub(crate) fn check(&mut self, config: &Config, now: Instant) -> Verdict {
        let burst = f64::from(config.rate_burst);
        self.tokens = (self.tokens
            + now.saturating_duration_since(self.last).as_secs_f64() * config.rate_per_second)
            .min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            Verdict::Ok
        } else {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row >= config.rate_burst {
                Verdict::Flood
            } else {
                Verdict::Refused {
                    tell: self.refused_in_a_row % 50 == 1,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_passes_then_refusals_are_told_sparingly_then_a_flood_closes() {
        let config = Config::default().rate_per_second(10.0).rate_burst(100);
        let t0 = Instant::now();
        let mut limit = RateLimit::new(&config, t0);
        for _ in 0..100 {
            assert_eq!(limit.check(&config, t0), Verdict::Ok);
        }
        let verdicts: Vec<_> = (0..100).map(|_| limit.check(&config, t0)).collect();
        assert_eq!(verdicts[0], Verdict::Refused { tell: true });
        assert_eq!(verdicts[1], Verdict::Refused { tell: false });
        assert_eq!(verdicts[50], Verdict::Refused { tell: true });
        assert_eq!(verdicts[99], Verdict::Flood);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let config = Config::default().rate_per_second(10.0).rate_burst(1);
        let t0 = Instant::now();
        let mut limit = RateLimit::new(&config, t0);
        assert_eq!(limit.check(&config, t0), Verdict::Ok);
        assert_ne!(limit.check(&config, t0), Verdict::Ok);
        assert_eq!(
            limit.check(&config, t0 + Duration::from_millis(150)),
            Verdict::Ok,
            "one token back after 100 ms at 10/s"
        );
    }
}
