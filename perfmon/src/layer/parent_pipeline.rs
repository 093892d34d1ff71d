//! The pipeline a thread's runs last opened directly in, remembered per
//! thread: a run opening right inside a pipeline's span (the usual shape:
//! the pipeline entered, agents run in it) finds the pipeline's state
//! without looking the span up in the registry or locking its extensions.
//!
//! The entry is keyed by (layer id, span id) and holds the state weakly.
//! It is used only while the pipeline has not ended: a span id is unique
//! among open spans, and a pipeline ends at the latest when its span closes,
//! so a later span reusing the id never gets the old pipeline.

use std::cell::RefCell;
use std::sync::{Arc, Weak};

use crate::pipeline::PipelineState;

/// The last pipeline span a run opened directly in, on this thread.
struct Remembered {
    layer: u64,
    span: u64,
    state: Weak<PipelineState>,
}

thread_local! {
    static LAST: RefCell<Option<Remembered>> = const { RefCell::new(None) };
}

/// The state of the pipeline whose span is `span` (of the layer `layer`),
/// if this thread remembers it and it has not ended.
#[inline]
pub(super) fn find(layer: u64, span: u64) -> Option<Arc<PipelineState>> {
    LAST.try_with(|last| {
        let last = last.try_borrow().ok()?;
        let last = last.as_ref()?;
        if last.layer != layer || last.span != span {
            return None;
        }
        let state = last.state.upgrade()?;
        (!state.has_ended()).then_some(state)
    })
    .ok()
    .flatten()
}

/// Remembers that `span` (of the layer `layer`) is the pipeline `state`.
pub(super) fn remember(layer: u64, span: u64, state: &Arc<PipelineState>) {
    let _ = LAST.try_with(|last| {
        if let Ok(mut last) = last.try_borrow_mut() {
            *last = Some(Remembered {
                layer,
                span,
                state: Arc::downgrade(state),
            });
        }
    });
}
