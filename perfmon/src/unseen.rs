//! What perfmon could not see: perfmon spans that came out disabled (a
//! filter rejected them, or no subscriber was installed). Counted
//! process-wide, because a disabled span never reaches any monitor, and
//! warned about once, with the fix.
//!
//! A program that filters perfmon out on purpose makes every perfmon span
//! disabled, on every thread: counting each in one shared atomic would make
//! the threads fight over its cache line. Each thread counts in a
//! thread-local and adds to the shared count in batches of [`BATCH`]; each
//! thread's first disabled span is added at once, so the count is never 0
//! after one happened. It can lag by up to `BATCH - 1` per thread.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::Span;

static DISABLED_SPANS: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

/// Disabled spans a thread counts before adding them to the shared count.
const BATCH: u64 = 64;

thread_local! {
    /// (disabled spans not yet added, how many to add at once): 1 until
    /// the thread's first is added, then [`BATCH`]. Read without touching
    /// the shared count.
    static UNCOUNTED: Cell<(u64, u64)> = const { Cell::new((0, 1)) };
}

/// The filter directive that enables every span and event perfmon makes.
pub const FILTER_DIRECTIVE: &str = "perfmon=info";

/// Counts `span` if no subscriber enabled it. One branch when it is
/// enabled; a thread-local update when it is not (the shared count is
/// touched once per [`BATCH`]).
#[inline]
pub(crate) fn check(span: &Span) {
    if !span.is_disabled() {
        return;
    }
    // After thread exit (a span made in a thread-local's destructor) the
    // local is gone: count it directly.
    let pending = UNCOUNTED
        .try_with(|n| {
            let (uncounted, batch) = n.get();
            let pending = uncounted + 1;
            if pending >= batch {
                n.set((0, BATCH));
                pending
            } else {
                n.set((pending, batch));
                0
            }
        })
        .unwrap_or(1);
    if pending != 0 {
        add(pending, span);
    }
}

/// Adds `pending` disabled spans to the shared count, and warns once.
#[cold]
#[inline(never)]
fn add(pending: u64, span: &Span) {
    DISABLED_SPANS.fetch_add(pending, Ordering::Relaxed);
    // A load first: after the warning, no write to the shared flag.
    if WARNED.load(Ordering::Relaxed) || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    let (name, target) = span
        .metadata()
        .map_or(("?", "?"), |m| (m.name(), m.target()));
    tracing::warn!(
        target: "perfmon",
        span = name,
        span_target = target,
        "perfmon records nothing for spans that are filtered out, and the span \
         `{name}` (target `{target}`) was: add `{FILTER_DIRECTIVE}` to your filter \
         (RUST_LOG=warn,{FILTER_DIRECTIVE}), or put the filter on your log layer only \
         (fmt::layer().with_filter(filter)) so that perfmon's layer sees every span. \
         Overview::spans_filtered counts such spans; this warning is printed once."
    );
}

/// perfmon spans disabled so far in this process.
pub(crate) fn disabled_spans() -> u64 {
    DISABLED_SPANS.load(Ordering::Relaxed)
}
