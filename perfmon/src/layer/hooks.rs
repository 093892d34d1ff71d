//! The hooks code holding a span (the guards, `usage!`) finds on the
//! dispatcher to reach perfmon's state for it, whatever the subscriber stack
//! looks like: found with `Dispatch::downcast_ref`, the way `tracing-error`
//! finds its layer. The layer fills them with its own functions.

use std::sync::Arc;

#[cfg(feature = "otel")]
use tracing::Metadata;
use tracing::span::Id;
use tracing::{Dispatch, Span};

use crate::pipeline::PipelineState;
use crate::recorder::Recorder;

/// Lets code holding a span (the guards) reach perfmon's state for it
/// through the dispatcher, whatever the subscriber stack looks like.
/// Found with `Dispatch::downcast_ref`, the way `tracing-error` finds its layer.
#[derive(Clone, Copy)]
pub(crate) struct WithPipeline(pub(super) fn(&Dispatch, &Id, usize) -> Option<Arc<PipelineState>>);

impl WithPipeline {
    /// The pipeline state behind the span `id`, if it is a pipeline span
    /// recorded for `recorder`'s monitor by a `PerfmonLayer` in `dispatch`.
    pub(crate) fn lookup(
        dispatch: &Dispatch,
        id: &Id,
        recorder: &Arc<Recorder>,
    ) -> Option<Arc<PipelineState>> {
        let this = dispatch.downcast_ref::<WithPipeline>()?;
        (this.0)(dispatch, id, Arc::as_ptr(recorder) as usize)
    }
}

/// Lets perfmon's own futures time their polls on the monitor's clock and
/// hand the layer their busy time (`busy`), found on the dispatcher like
/// [`WithPipeline`].
#[derive(Clone, Copy)]
pub(crate) struct WithBusy {
    pub(super) now: fn(&Dispatch) -> Option<quanta::Instant>,
    pub(super) set: fn(&Dispatch, &Id, Option<u64>),
}

impl WithBusy {
    /// The hooks of the layer in `span`'s subscriber, if there is one.
    pub(crate) fn of(span: &Span) -> Option<WithBusy> {
        span.with_subscriber(|(_, dispatch)| dispatch.downcast_ref::<WithBusy>().copied())
            .flatten()
    }

    /// Now, on the clock of the monitor recording `span`.
    #[inline]
    pub(crate) fn now(self, span: &Span) -> Option<quanta::Instant> {
        span.with_subscriber(|(_, dispatch)| (self.now)(dispatch))
            .flatten()
    }

    /// Hands the busy time of the span `id` to the layers in `dispatch`
    /// (when its span did not close as the future was dropped).
    pub(crate) fn set(self, dispatch: &Dispatch, id: &Id, busy_ns: Option<u64>) {
        (self.set)(dispatch, id, busy_ns);
    }
}

/// Lets `usage!` (feature `otel`) find the current run's usage totals
/// through the dispatcher, to record them on the run's span.
#[cfg(feature = "otel")]
#[derive(Clone, Copy)]
pub(crate) struct WithRunUsage(pub(super) fn(&Dispatch, &Id) -> Option<RunUsage>);

/// A run's span, and the usage it reported so far.
#[cfg(feature = "otel")]
pub(crate) struct RunUsage {
    pub(super) id: Id,
    pub(super) meta: &'static Metadata<'static>,
    pub(super) usage: crate::usage::UsageSum,
    pub(super) model: Option<Arc<str>>,
}
