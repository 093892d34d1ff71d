//! Busy time of perfmon's own futures (`track_agent`, `track_tool`, and
//! `async fn`s under `#[track_agent]`/`#[track_tool]`), timed by the
//! futures themselves around each poll, instead of by the layer on every
//! enter and exit of their span (two registry lookups per poll).
//!
//! The layer knows such a span by its callsite (`site`: learned, like the
//! name offer's, from the first enabled span each site made, and kept in
//! the set of self-timing callsites). When the future is
//! dropped it offers its total for the span about to close
//! ([`at_close`]): the layer's `on_close`, on this thread, takes it. If the
//! span does not close then (a clone or a child keeps it open), the future
//! hands the total to the layer through the dispatcher instead.

use std::cell::Cell;

use crate::site::HintSite;

/// The callsite of `track_agent`'s spans.
pub(crate) static AGENT_SITE: HintSite = HintSite::timed();
/// The callsite of `track_tool`'s spans.
pub(crate) static TOOL_SITE: HintSite = HintSite::timed();

/// A future's busy time, offered for its span while the span is dropped.
#[derive(Clone, Copy)]
struct Offered {
    span: u64,
    /// Nanoseconds polled, or `None` if it never was.
    busy_ns: Option<u64>,
    taken: bool,
}

thread_local! {
    static AT_CLOSE: Cell<Option<Offered>> = const { Cell::new(None) };
}

/// Runs `drop_span` (which drops the span `span`) with `busy_ns` offered to
/// the layer's `on_close`. Returns whether a layer took it; if not, the span
/// is still open elsewhere.
pub(crate) fn at_close(span: u64, busy_ns: Option<u64>, drop_span: impl FnOnce()) -> bool {
    let offered = Offered {
        span,
        busy_ns,
        taken: false,
    };
    let previous = AT_CLOSE.try_with(|cell| cell.replace(Some(offered))).ok();
    drop_span();
    let left = AT_CLOSE
        .try_with(|cell| cell.replace(previous.flatten()))
        .ok()
        .flatten();
    left.is_some_and(|left| left.taken)
}

/// The busy time offered for the span `span` closing now, if any (every
/// monitor's layer reads it).
#[inline]
pub(crate) fn offered(span: u64) -> Option<Option<u64>> {
    AT_CLOSE
        .try_with(|cell| {
            let mut offered = cell.get()?;
            if offered.span != span {
                return None;
            }
            offered.taken = true;
            cell.set(Some(offered));
            Some(offered.busy_ns)
        })
        .ok()
        .flatten()
}
