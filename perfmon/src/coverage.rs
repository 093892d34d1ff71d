//! How much of a run its nested runs covered: the union of their intervals,
//! so that a run's self time (wall minus that union) counts parallel
//! children once, by the time they covered.
//!
//! Bounded: at most [`MAX_PIECES`] disjoint pieces are kept. Past that, the
//! two pieces with the smallest gap between them are joined, so the gap
//! counts as covered and self time can come out lower by at most the sum
//! of the smallest gaps; runs with that many separate children are rare.

use std::time::Duration;

use smallvec::SmallVec;

/// Disjoint pieces kept before the smallest gap is bridged.
pub(crate) const MAX_PIECES: usize = 64;

/// Pieces kept inline, before the first allocation: a run with up to this
/// many separate stretches of nested work allocates nothing for them.
const INLINE_PIECES: usize = 4;

/// A union of half-open intervals `[start, end)`, as offsets from the start
/// of the enclosing run.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    /// Disjoint, sorted, non-adjacent.
    pieces: SmallVec<[(Duration, Duration); INLINE_PIECES]>,
    /// The pieces' summed length.
    total: Duration,
}

impl Coverage {
    /// Adds `[start, end)`; empty intervals add nothing.
    pub(crate) fn add(&mut self, start: Duration, end: Duration) {
        if end <= start {
            return;
        }
        // Fast path: children that ran one after another arrive in order.
        if self.pieces.last().is_none_or(|&(_, e)| e < start) {
            self.pieces.push((start, end));
            self.total += end - start;
            if self.pieces.len() > MAX_PIECES {
                self.bridge_smallest_gap();
            }
            return;
        }
        // First piece that ends at or after `start` (may merge), and first
        // piece that starts after `end` (may not).
        let first = self.pieces.partition_point(|&(_, e)| e < start);
        let last = self.pieces.partition_point(|&(s, _)| s <= end);
        let (mut lo, mut hi) = (start, end);
        if first < last {
            lo = lo.min(self.pieces[first].0);
            hi = hi.max(self.pieces[last - 1].1);
        }
        let replaced: Duration = self.pieces[first..last].iter().map(|&(s, e)| e - s).sum();
        self.total = self.total - replaced + (hi - lo);
        if first == last {
            self.pieces.insert(first, (lo, hi));
        } else {
            self.pieces[first] = (lo, hi);
            self.pieces.drain(first + 1..last);
        }
        if self.pieces.len() > MAX_PIECES {
            self.bridge_smallest_gap();
        }
    }

    fn bridge_smallest_gap(&mut self) {
        let Some(i) = (0..self.pieces.len() - 1)
            .min_by_key(|&i| self.pieces[i + 1].0.saturating_sub(self.pieces[i].1))
        else {
            return;
        };
        self.total += self.pieces[i + 1].0 - self.pieces[i].1;
        self.pieces[i].1 = self.pieces[i + 1].1;
        self.pieces.remove(i + 1);
    }

    /// The time covered within `[0, limit)`.
    pub(crate) fn within(&self, limit: Duration) -> Duration {
        // Fast path: every piece ended within the limit (children that
        // finished before their parent).
        if self.pieces.last().is_none_or(|&(_, e)| e <= limit) {
            return self.total;
        }
        self.pieces
            .iter()
            .take_while(|&&(s, _)| s < limit)
            .map(|&(s, e)| e.min(limit) - s)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn parallel_children_count_once_and_sequential_ones_add_up() {
        let mut c = Coverage::default();
        c.add(ms(10), ms(50));
        c.add(ms(20), ms(60)); // overlaps the first
        c.add(ms(70), ms(80));
        assert_eq!(c.within(ms(100)), ms(60));
        assert_eq!(c.within(ms(75)), ms(55), "clipped at the limit");
        c.add(ms(60), ms(70)); // fills the gap exactly
        assert_eq!(c.pieces.as_slice(), [(ms(10), ms(80))]);
    }

    proptest! {
        /// Equal to a brute-force count of covered milliseconds while under
        /// the piece limit; never below it past the limit.
        #[test]
        fn union_matches_brute_force(
            intervals in prop::collection::vec((0u64..400, 0u64..60), 0..120),
        ) {
            let mut c = Coverage::default();
            let mut covered = [false; 460];
            for &(s, len) in &intervals {
                c.add(ms(s), ms(s + len));
                for slot in &mut covered[s as usize..(s + len) as usize] {
                    *slot = true;
                }
            }
            let brute = ms(covered.iter().filter(|&&b| b).count() as u64);
            prop_assert!(c.pieces.len() <= MAX_PIECES);
            prop_assert!(c.pieces.windows(2).all(|w| w[0].1 < w[1].0));
            if intervals.len() <= MAX_PIECES {
                prop_assert_eq!(c.within(ms(1_000)), brute);
            } else {
                prop_assert!(c.within(ms(1_000)) >= brute);
            }
        }
    }
}
