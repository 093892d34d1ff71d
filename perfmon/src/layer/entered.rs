//! The spans a layer saw entered on this thread, innermost last: the
//! current span's id without asking the registry (which looks the span up
//! in its slab for its metadata, the dearest step of opening a run inside
//! a pipeline or another run).
//!
//! It mirrors the registry's own stack of entered spans: an enter pushes,
//! an exit removes the last entry of that id (spans may exit out of
//! order), and a span entered again while already entered is a duplicate,
//! skipped when asking for the current span, as the registry does.
//!
//! Every span of the program is entered and exited through here, so it is
//! kept to a few instructions: a fixed array of [`DEPTH`] ids in plain
//! thread-local cells (no lazy initialisation, no destructor, no borrow
//! flag), for one layer per thread at a time (the first to enter a span
//! while nothing is tracked). What it cannot follow it says: spans nested
//! deeper than [`DEPTH`], or entered through another layer while the
//! first holds spans, make [`current`] answer [`Current::Unknown`] (the
//! layer then asks the registry) until they exit.
//!
//! Under a per-layer filter the layer sees only the spans its filter
//! enables: the current span is then the innermost *enabled* span entered
//! on this thread, which is what a run opening there belongs to in that
//! layer's view (the registry's own current span may be one the filter
//! hides, which the layer could not look up).
//!
//! Imports nothing from the crate.

use std::cell::Cell;

/// Spans followed per thread; deeper ones are counted, not followed.
pub(super) const DEPTH: usize = 16;

/// One thread's entered spans, for the layer `layer`.
struct Stack {
    /// The layer followed (0: none yet).
    layer: Cell<u64>,
    /// Entries in use in `spans`.
    len: Cell<usize>,
    spans: [Cell<u64>; DEPTH],
    /// Bit `i`: `spans[i]` was entered while already entered below.
    duplicate: Cell<u16>,
    /// Spans entered past [`DEPTH`], or through other layers, and not
    /// exited yet: while any is, the current span is not known here.
    untracked: Cell<usize>,
}

thread_local! {
    static STACK: Stack = const {
        Stack {
            layer: Cell::new(0),
            len: Cell::new(0),
            spans: [const { Cell::new(0) }; DEPTH],
            duplicate: Cell::new(0),
            untracked: Cell::new(0),
        }
    };
}

/// What this thread's stack says about the current span of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Current {
    /// The innermost span entered (its id).
    Span(u64),
    /// No span of this layer is entered on this thread.
    None,
    /// Not known here: ask the registry.
    Unknown,
}

/// `span` (of the layer `layer`, never 0) was entered on this thread.
#[inline]
pub(super) fn enter(layer: u64, span: u64) {
    STACK.with(|s| {
        let len = s.len.get();
        if s.layer.get() != layer {
            if len == 0 && s.untracked.get() == 0 {
                s.layer.set(layer);
            } else {
                s.untracked.set(s.untracked.get() + 1);
                return;
            }
        }
        if len == DEPTH {
            s.untracked.set(s.untracked.get() + 1);
            return;
        }
        if s.spans[..len].iter().any(|e| e.get() == span) {
            s.duplicate.set(s.duplicate.get() | (1 << len));
        }
        s.spans[len].set(span);
        s.len.set(len + 1);
    });
}

/// `span` (of the layer `layer`) was exited on this thread.
#[inline]
pub(super) fn exit(layer: u64, span: u64) {
    STACK.with(|s| {
        let len = s.len.get();
        if s.layer.get() == layer && len > 0 {
            // The innermost span nearly always exits first.
            if s.spans[len - 1].get() == span {
                s.duplicate.set(s.duplicate.get() & !(1 << (len - 1)));
                s.len.set(len - 1);
                return;
            }
            if let Some(i) = s.spans[..len].iter().rposition(|e| e.get() == span) {
                return remove(s, i);
            }
        }
        // One that was not followed (or never entered: nothing changes).
        s.untracked.set(s.untracked.get().saturating_sub(1));
    });
}

/// Removes entry `i` (not the last), keeping the order of the others.
#[cold]
fn remove(s: &Stack, i: usize) {
    let len = s.len.get();
    for j in i..len - 1 {
        s.spans[j].set(s.spans[j + 1].get());
    }
    let mask = s.duplicate.get();
    let below = mask & ((1u16 << i) - 1);
    let above = (mask >> (i + 1)) << i;
    s.duplicate.set(below | above);
    s.len.set(len - 1);
}

/// The current span of the layer `layer` on this thread.
#[inline]
pub(super) fn current(layer: u64) -> Current {
    STACK.with(|s| {
        let len = s.len.get();
        if s.untracked.get() > 0 || (s.layer.get() != layer && len > 0) {
            return Current::Unknown;
        }
        if s.layer.get() != layer {
            // Nothing followed here and nothing untracked: this thread has
            // no span entered, through any layer.
            return Current::None;
        }
        let duplicate = s.duplicate.get();
        (0..len)
            .rev()
            .find(|&i| duplicate & (1 << i) == 0)
            .map_or(Current::None, |i| Current::Span(s.spans[i].get()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_span_follows_enters_exits_and_duplicates_like_the_registry() {
        assert_eq!(current(1), Current::None);
        enter(1, 10);
        enter(1, 11);
        assert_eq!(current(1), Current::Span(11));
        // Entered again while entered: a duplicate, skipped.
        enter(1, 10);
        assert_eq!(current(1), Current::Span(11));
        // Out of order: the last entry of that id goes.
        exit(1, 11);
        assert_eq!(current(1), Current::Span(10));
        exit(1, 10);
        assert_eq!(current(1), Current::Span(10));
        exit(1, 10);
        assert_eq!(current(1), Current::None);
    }

    #[test]
    fn what_is_not_followed_makes_the_current_span_unknown_until_it_exits() {
        enter(1, 10);
        // Another layer's span while the first holds one.
        enter(2, 20);
        assert_eq!(current(1), Current::Unknown);
        assert_eq!(current(2), Current::Unknown);
        exit(2, 20);
        assert_eq!(current(1), Current::Span(10));
        assert_eq!(current(2), Current::Unknown);
        // Deeper than the stack holds.
        for span in 11..11 + DEPTH as u64 {
            enter(1, span);
        }
        assert_eq!(current(1), Current::Unknown);
        exit(1, 10 + DEPTH as u64);
        assert_eq!(current(1), Current::Span(10 + DEPTH as u64 - 1));
        for span in (10..10 + DEPTH as u64).rev() {
            exit(1, span);
        }
        assert_eq!(current(1), Current::None);
        // Nothing held: the next layer to enter is followed.
        enter(2, 20);
        assert_eq!(current(2), Current::Span(20));
        exit(2, 20);
        assert_eq!(current(1), Current::None);
    }

    #[test]
    fn an_out_of_order_exit_keeps_the_duplicates_in_place() {
        enter(1, 5);
        enter(1, 6);
        enter(1, 5); // duplicate at 2
        enter(1, 7);
        exit(1, 6); // removes index 1: the duplicate moves to 1
        assert_eq!(current(1), Current::Span(7));
        exit(1, 7);
        assert_eq!(current(1), Current::Span(5));
        exit(1, 5);
        assert_eq!(current(1), Current::Span(5));
        exit(1, 5);
        assert_eq!(current(1), Current::None);
    }
}
