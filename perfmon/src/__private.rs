//! Support for the expansions of `#[track_agent]` and `#[track_pipeline]`.
//! Not public API: names here may change in any release.

use std::fmt::Display;
use std::future::Future;

pub use tracing;
use tracing::Span;
use tracing::span::EnteredSpan;

use crate::agent_table::Offer;
use crate::fields::{ERROR_FIELD, OUTCOME_FIELD};
use crate::guard::{TrackedAgent, otel_status};
use crate::outcome::Outcome;
pub use crate::site::HintSite;

/// Offers the layer the entry of a tracked function's agent (or tool) while
/// its span is made (see `agent_table::Offer`).
#[must_use = "the offer is withdrawn when dropped: make the span, then call `made`"]
pub struct NameOffer(Offer<'static>);

impl NameOffer {
    /// Offers `name`'s entry for the span about to be made at `site`.
    #[inline]
    pub fn new(site: &'static HintSite, name: &str, kind: crate::RunKind) -> Self {
        NameOffer(Offer::new(site, name, kind))
    }

    /// The span was made: the offer ends. Gives the span back.
    #[inline(always)]
    pub fn made(self, span: Span) -> Span {
        self.0.made(span)
    }
}

impl std::fmt::Debug for NameOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NameOffer").finish_non_exhaustive()
    }
}

/// The error text of an `Err`, for `Result`-returning functions.
#[inline]
pub fn err_text<T, E: Display>(result: &Result<T, E>) -> Option<String> {
    crate::guard::error_text(result)
}

/// For functions whose output is not a `Result`: never an error.
#[inline]
pub fn no_err<T>(_: &T) -> Option<String> {
    None
}

/// Drives an `async fn` body inside its agent (or pipeline) span.
#[inline]
pub fn track_future<F: Future>(
    span: Span,
    future: F,
    error_of: fn(&F::Output) -> Option<String>,
    ends_pipeline: bool,
) -> TrackedAgent<F> {
    if ends_pipeline {
        TrackedAgent::from_span(span, future, error_of, true)
    } else {
        // An agent's or tool's: made at a `HintSite::timed()`, it times
        // its own polls.
        TrackedAgent::self_timed(span, future, error_of)
    }
}

/// A synchronous function's span, entered for the duration of the call.
#[derive(Debug)]
#[must_use = "the scope ends the run when dropped"]
pub struct SyncScope {
    span: EnteredSpan,
    ends_pipeline: bool,
    done: bool,
}

impl SyncScope {
    /// Enters `span`.
    #[inline]
    pub fn enter(span: Span, ends_pipeline: bool) -> Self {
        crate::unseen::check(&span);
        SyncScope {
            span: span.entered(),
            ends_pipeline,
            done: false,
        }
    }

    /// Records the outcome of the call's output, through `error_of`.
    #[inline]
    pub fn finish<T>(mut self, output: &T, error_of: fn(&T) -> Option<String>) {
        self.done = true;
        if self.span.is_disabled() {
            return;
        }
        let error = error_of(output);
        if let Some(error) = &error {
            self.span.record(ERROR_FIELD, error.as_str());
            #[cfg(feature = "otel")]
            otel_status(
                &self.span,
                &Outcome::Failed {
                    error: error.clone(),
                },
            );
        }
        if self.ends_pipeline {
            let outcome = if error.is_some() {
                Outcome::Failed {
                    error: String::new(),
                }
            } else {
                Outcome::Succeeded
            };
            self.span.record(OUTCOME_FIELD, outcome.as_str());
        }
    }
}

impl Drop for SyncScope {
    #[inline]
    fn drop(&mut self) {
        if self.done || self.span.is_disabled() {
            return;
        }
        if std::thread::panicking() {
            otel_status(&self.span, &Outcome::Panicked);
            self.span.record(OUTCOME_FIELD, Outcome::Panicked.as_str());
        } else if self.ends_pipeline {
            self.span.record(OUTCOME_FIELD, Outcome::Succeeded.as_str());
        }
    }
}

/// After a `usage!` event: with feature `otel`, records the current run's
/// usage totals and model on its span (see `perfmon::usage!`).
#[inline]
pub fn usage_reported() {
    #[cfg(feature = "otel")]
    crate::layer::runs::record_usage_on_run_span();
}
