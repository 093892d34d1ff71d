//! Which spans a layer may hold state for, answered without a registry
//! lookup: a counting filter over span ids. A span that is not perfmon's
//! (most of a program's spans) closes without the layer looking it up to
//! learn what it is.
//!
//! Each perfmon span counts one in its id's bucket while open; a bucket at
//! zero means no open span with an id there is perfmon's. Two ids may share
//! a bucket (the answer is then "maybe", and the layer looks the span up as
//! before), never the other way round: a span counted is always found.
//!
//! The counts are exact at every point of their modification order (each
//! span is added when it opens and removed once when it closes, and its
//! close comes after its opening), so a bucket never reads zero while one
//! of its spans is open, whichever thread reads it.
//!
//! Imports nothing from the crate.

use std::sync::atomic::{AtomicU32, Ordering};

/// log2 of the number of buckets: 4096 counters, 16 KiB per layer.
const BITS: u32 = 12;

/// Open perfmon spans of one layer, counted per bucket of span ids.
pub(super) struct Held {
    counts: Box<[AtomicU32]>,
}

impl Held {
    pub(super) fn new() -> Self {
        Held {
            counts: (0..1usize << BITS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The bucket of `span`: the id's bits mixed (the registry's ids are
    /// small, and threads' ids differ in their high bits).
    #[inline]
    fn bucket(&self, span: u64) -> &AtomicU32 {
        let mixed = span.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS);
        // Below 2^BITS by construction: the index is always in bounds.
        &self.counts[usize::try_from(mixed).unwrap_or(0) & ((1 << BITS) - 1)]
    }

    /// `span` opened, and the layer keeps state for it.
    #[inline]
    pub(super) fn add(&self, span: u64) {
        self.bucket(span).fetch_add(1, Ordering::Relaxed);
    }

    /// `span`, which [`add`](Self::add) counted, closed.
    #[inline]
    pub(super) fn remove(&self, span: u64) {
        self.bucket(span).fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `span` may be one the layer keeps state for (false: it is not).
    #[inline]
    pub(super) fn may_hold(&self, span: u64) -> bool {
        self.bucket(span).load(Ordering::Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counted_span_is_always_maybe_and_others_mostly_not() {
        let held = Held::new();
        for span in 1..=100 {
            held.add(span);
        }
        assert!((1..=100).all(|span| held.may_hold(span)));
        // Ids sharing a bucket with a counted one answer "maybe"; the
        // rest (nearly all of them) "no".
        let maybe = (1_000..11_000).filter(|&span| held.may_hold(span)).count();
        assert!(maybe < 1_000, "{maybe} of 10,000 uncounted ids say maybe");
        for span in 1..=100 {
            held.remove(span);
        }
        assert!((1..=11_000).all(|span| !held.may_hold(span)));
    }
}
