//! What perfmon could not see: perfmon spans that came out disabled (a
//! filter rejected them, or no subscriber was installed). Counted
//! process-wide, because a disabled span never reaches any monitor, and
//! warned about once, with the fix.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tracing::Span;

static DISABLED_SPANS: AtomicU64 = AtomicU64::new(0);
static WARNED: AtomicBool = AtomicBool::new(false);

/// The filter directive that enables every span and event perfmon makes.
pub const FILTER_DIRECTIVE: &str = "perfmon=info";

/// Counts `span` if no subscriber enabled it. One branch when it is enabled.
#[inline]
pub(crate) fn check(span: &Span) {
    if span.is_disabled() {
        disabled(span);
    }
}

#[cold]
#[inline(never)]
fn disabled(span: &Span) {
    DISABLED_SPANS.fetch_add(1, Ordering::Relaxed);
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
