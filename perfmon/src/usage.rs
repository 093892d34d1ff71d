//! Token usage and cost: [`Usage`], what `perfmon::usage!` adds to a run,
//! and [`UsageSum`], the exact accumulator behind every total.
//!
//! Bottom of the crate's dependency order, beside `outcome`: it imports
//! nothing from the crate.

use serde::{Deserialize, Serialize};

/// Tokens and cost, of one run or summed over many.
///
/// Sums are exact: tokens are integers, and costs are kept internally as
/// whole nano-dollars (1e-9 USD; each `usage!` call's `cost_usd` is rounded
/// to that once), so a pipeline's usage is exactly the sum of its runs',
/// whatever the order in which threads add them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
    /// Cost in US dollars, to the nano-dollar.
    pub cost_usd: f64,
}

impl Usage {
    /// A usage of `input_tokens`, `output_tokens` and `cost_usd`.
    pub fn new(input_tokens: u64, output_tokens: u64, cost_usd: f64) -> Self {
        UsageSum::of(input_tokens, output_tokens, cost_usd).to_usage()
    }

    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Whether nothing was used.
    pub fn is_zero(&self) -> bool {
        self.input_tokens == 0 && self.output_tokens == 0 && self.cost_usd == 0.0
    }
}

impl std::fmt::Display for Usage {
    /// `1500 tokens in, 310 out, $0.0061`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} tokens in, {} out, ${:.4}",
            self.input_tokens, self.output_tokens, self.cost_usd
        )
    }
}

/// Nano-dollars per dollar.
const NANOS_PER_USD: f64 = 1e9;

/// An exact sum of usages (integers only; saturating).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UsageSum {
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cost_nano_usd: u64,
}

impl UsageSum {
    /// One usage; a negative, NaN or infinite cost counts as 0 (a cost over
    /// about 18 billion dollars saturates).
    pub(crate) fn of(input_tokens: u64, output_tokens: u64, cost_usd: f64) -> Self {
        let nanos = (cost_usd * NANOS_PER_USD).round();
        UsageSum {
            input_tokens,
            output_tokens,
            // `as` saturates at the bounds and maps NaN to 0.
            cost_nano_usd: if nanos > 0.0 { nanos as u64 } else { 0 },
        }
    }

    pub(crate) fn add(&mut self, other: UsageSum) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(other.cost_nano_usd);
    }

    pub(crate) fn is_zero(&self) -> bool {
        *self == UsageSum::default()
    }

    pub(crate) fn to_usage(self) -> Usage {
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cost_usd: self.cost_nano_usd as f64 / NANOS_PER_USD,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_add_up_exactly_in_nano_dollars() {
        let mut sum = UsageSum::default();
        for _ in 0..10 {
            sum.add(UsageSum::of(1, 2, 0.1));
        }
        // 0.1 added ten times in f64 is 0.9999999999999999; here it is 1.
        assert_eq!(sum.to_usage(), Usage::new(10, 20, 1.0));
        assert_eq!(sum.cost_nano_usd, 1_000_000_000);
    }

    #[test]
    fn nonsense_costs_count_as_zero() {
        for cost in [-1.0, f64::NAN, f64::NEG_INFINITY] {
            assert_eq!(UsageSum::of(0, 0, cost).cost_nano_usd, 0, "{cost}");
        }
        assert_eq!(UsageSum::of(0, 0, f64::INFINITY).cost_nano_usd, u64::MAX);
    }
}
