//! [`PerfmonLayer`]: the `tracing_subscriber::Layer` that does the timing.
//!
//! Which spans and events matter is decided once per callsite, in
//! `register_callsite`, and kept in a fixed lock-free table keyed by the
//! callsite's `&'static Metadata`. Per-span state lives in the span's
//! extensions. The only locks on the way of a span are the span's own
//! extensions lock (from the registry), its agent's statistics mutex and its
//! pipeline's mutex: none is shared by all spans.

use std::any::TypeId;
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_core::subscriber::Interest;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use crate::events::EventKind;
use crate::monitor::Inner;
use crate::pipeline::{PipelineState, Ticket};
use crate::record::{Outcome, Progress};
use crate::stats::AgentEntry;

/// Field that makes a span an agent run; its value is the agent's name.
pub const AGENT_FIELD: &str = "perfmon.agent";
/// Field that makes a span a pipeline; its value is the pipeline's id.
pub const PIPELINE_FIELD: &str = "perfmon.pipeline";
/// Record it on an agent or pipeline span to mark it failed with that error.
pub const ERROR_FIELD: &str = "perfmon.error";
/// Record `"panicked"`, `"cancelled"`, `"failed"` or `"succeeded"` on a span
/// to set its outcome. On a pipeline span it also ends the pipeline.
pub const OUTCOME_FIELD: &str = "perfmon.outcome";
/// Declared (never recorded) by perfmon's synchronous guards: such spans are
/// entered exactly once, so busy time is not tracked for them.
pub const SYNC_FIELD: &str = "perfmon.sync";
/// Target of `perfmon::progress!` events.
pub const PROGRESS_TARGET: &str = "perfmon::progress";
/// Target of `perfmon::thought!` events.
pub const THOUGHT_TARGET: &str = "perfmon::thought";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
enum Kind {
    Pipeline = 1,
    Agent = 2,
    AgentSync = 3,
    Progress = 4,
    Thought = 5,
}

impl Kind {
    fn from_bits(bits: usize) -> Option<Kind> {
        Some(match bits {
            1 => Kind::Pipeline,
            2 => Kind::Agent,
            3 => Kind::AgentSync,
            4 => Kind::Progress,
            5 => Kind::Thought,
            _ => return None,
        })
    }

    /// What a callsite is to perfmon, from its metadata alone.
    fn classify(meta: &Metadata<'_>) -> Option<Kind> {
        if meta.is_span() {
            let fields = meta.fields();
            if fields.field(PIPELINE_FIELD).is_some() {
                Some(Kind::Pipeline)
            } else if fields.field(AGENT_FIELD).is_some() {
                Some(if fields.field(SYNC_FIELD).is_some() {
                    Kind::AgentSync
                } else {
                    Kind::Agent
                })
            } else {
                None
            }
        } else if meta.target() == PROGRESS_TARGET {
            Some(Kind::Progress)
        } else if meta.target() == THOUGHT_TARGET {
            Some(Kind::Thought)
        } else {
            None
        }
    }
}

/// Open-addressing table of the callsites perfmon cares about, keyed by the
/// address of their `'static` metadata, with the kind packed in the low bits
/// (metadata is 8-byte aligned). Writes happen in `register_callsite` only;
/// a lookup is a hash and an atomic load or two. If it ever fills up,
/// lookups that miss fall back to classifying the metadata directly.
struct Callsites {
    slots: Box<[AtomicUsize]>,
    full: AtomicBool,
}

const CALLSITE_SLOTS: usize = 1 << 12;
const KIND_MASK: usize = 0b111;

impl Callsites {
    fn new() -> Self {
        Callsites {
            slots: (0..CALLSITE_SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            full: AtomicBool::new(false),
        }
    }

    fn key(meta: &'static Metadata<'static>) -> usize {
        meta as *const Metadata<'static> as usize
    }

    fn start(key: usize) -> usize {
        // Fibonacci hashing of the address.
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - CALLSITE_SLOTS.trailing_zeros()))
            & (CALLSITE_SLOTS - 1)
    }

    fn insert(&self, meta: &'static Metadata<'static>, kind: Kind) {
        let key = Self::key(meta);
        debug_assert_eq!(key & KIND_MASK, 0, "metadata is at least 8-byte aligned");
        let packed = key | kind as usize;
        let start = Self::start(key);
        for i in 0..CALLSITE_SLOTS {
            let slot = &self.slots[(start + i) & (CALLSITE_SLOTS - 1)];
            match slot.compare_exchange(0, packed, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(existing) if existing & !KIND_MASK == key => return,
                Err(_) => {}
            }
        }
        self.full.store(true, Ordering::Release);
    }

    #[inline]
    fn get(&self, meta: &'static Metadata<'static>) -> Option<Kind> {
        let key = Self::key(meta);
        let start = Self::start(key);
        for i in 0..CALLSITE_SLOTS {
            let packed = self.slots[(start + i) & (CALLSITE_SLOTS - 1)].load(Ordering::Acquire);
            if packed == 0 {
                break;
            }
            if packed & !KIND_MASK == key {
                return Kind::from_bits(packed & KIND_MASK);
            }
        }
        if self.full.load(Ordering::Acquire) {
            Kind::classify(meta)
        } else {
            None
        }
    }
}

/// Per-span state of an agent run, in the span's extensions.
struct AgentData {
    entry: Arc<AgentEntry>,
    pipeline: Option<Arc<PipelineState>>,
    ticket: Ticket,
    start: quanta::Instant,
    busy: Option<Busy>,
    outcome: Option<Outcome>,
}

#[derive(Default)]
struct Busy {
    total: Duration,
    entered_at: Option<quanta::Instant>,
    depth: u32,
    entered: bool,
}

/// The agent (if any) and pipeline (if any) around an event.
type EventScope = (Option<Arc<str>>, Option<Arc<PipelineState>>);

/// Per-span state of a pipeline, in the span's extensions.
struct PipelineData {
    state: Arc<PipelineState>,
    error: Option<String>,
}

/// Lets code holding a span (the guards) reach perfmon's state for it
/// through the dispatcher, whatever the subscriber stack looks like.
/// Found with `Dispatch::downcast_ref`, the way `tracing-error` finds its layer.
#[derive(Clone, Copy)]
pub(crate) struct WithPipeline(fn(&Dispatch, &Id) -> Option<Arc<PipelineState>>);

impl WithPipeline {
    /// The pipeline state behind the span `id`, if it is a pipeline span
    /// recorded by a `PerfmonLayer` in `dispatch`.
    pub(crate) fn lookup(dispatch: &Dispatch, id: &Id) -> Option<Arc<PipelineState>> {
        let this = dispatch.downcast_ref::<WithPipeline>()?;
        (this.0)(dispatch, id)
    }
}

/// The `tracing_subscriber::Layer` that times perfmon spans; from [`crate::Monitor::layer`].
///
/// A span is an agent run if it has a `perfmon.agent` field, a pipeline if it
/// has `perfmon.pipeline`, whoever made it: perfmon's guards and macros, or
/// `#[tracing::instrument(fields(perfmon.agent = "x"))]`.
pub struct PerfmonLayer<S> {
    inner: Arc<Inner>,
    callsites: Callsites,
    /// Open agent spans whose busy time is tracked. While it is zero,
    /// `on_enter`/`on_exit` return before looking the span up, so sync
    /// agents and unrelated spans pay nothing for busy tracking.
    busy_open: AtomicUsize,
    with_pipeline: WithPipeline,
    _subscriber: PhantomData<fn(S)>,
}

impl<S> fmt::Debug for PerfmonLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerfmonLayer").finish_non_exhaustive()
    }
}

impl<S> PerfmonLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        PerfmonLayer {
            inner,
            callsites: Callsites::new(),
            busy_open: AtomicUsize::new(0),
            with_pipeline: WithPipeline(Self::pipeline_of),
            _subscriber: PhantomData,
        }
    }

    fn pipeline_of(dispatch: &Dispatch, id: &Id) -> Option<Arc<PipelineState>> {
        let subscriber = dispatch.downcast_ref::<S>()?;
        let span = subscriber.span(id)?;
        let ext = span.extensions();
        ext.get::<PipelineData>().map(|p| Arc::clone(&p.state))
    }

    /// Nearest perfmon ancestor of `span`: the pipeline it belongs to and
    /// the enclosing agent run's slot in it.
    fn context_of(span: &SpanRef<'_, S>) -> (Option<Arc<PipelineState>>, Option<u32>) {
        // `parent()` per step: one registry lookup per ancestor.
        let mut next = span.parent();
        while let Some(ancestor) = next {
            {
                let ext = ancestor.extensions();
                if let Some(agent) = ext.get::<AgentData>() {
                    let slot = match agent.ticket {
                        Ticket::Slot(i) => Some(i),
                        _ => None,
                    };
                    return (agent.pipeline.clone(), slot);
                }
                if let Some(pipeline) = ext.get::<PipelineData>() {
                    return (Some(Arc::clone(&pipeline.state)), None);
                }
            }
            next = ancestor.parent();
        }
        (None, None)
    }

    fn kind(&self, meta: &'static Metadata<'static>) -> Option<Kind> {
        self.callsites.get(meta)
    }

    fn open_agent(&self, attrs: &Attributes<'_>, span: &SpanRef<'_, S>, sync: bool) {
        let inner = &self.inner;
        let mut name = AgentVisitor { inner, entry: None };
        attrs.record(&mut name);
        let entry = match name.entry {
            Some(entry) => entry,
            None => inner
                .agents
                .get_or_insert("(unnamed)", &inner.counters.agents_overflowed),
        };
        let start = inner.now();
        let (pipeline, parent) = Self::context_of(span);
        let ticket = match &pipeline {
            Some(p) => p.open_run(&entry.name, parent, start, inner.system_time(start)),
            None => Ticket::Late,
        };
        entry.run_started();
        if !sync {
            self.busy_open.fetch_add(1, Ordering::Relaxed);
        }
        inner.publish(pipeline.as_ref().map(|p| Arc::clone(&p.id)), start, || {
            EventKind::AgentStarted {
                agent: Arc::clone(&entry.name),
                run: pipeline.as_ref().map(|p| p.run),
            }
        });
        span.extensions_mut().insert(AgentData {
            entry,
            pipeline,
            ticket,
            start,
            busy: if sync { None } else { Some(Busy::default()) },
            outcome: None,
        });
    }

    fn open_pipeline(&self, attrs: &Attributes<'_>, span: &SpanRef<'_, S>) {
        let mut id = NameVisitor::new(PIPELINE_FIELD);
        attrs.record(&mut id);
        let state = self
            .inner
            .pipeline_started(Arc::from(id.value()), self.inner.now());
        span.extensions_mut()
            .insert(PipelineData { state, error: None });
    }

    fn close_agent(&self, data: AgentData) {
        let inner = &self.inner;
        let end = inner.now();
        let duration = end.saturating_duration_since(data.start);
        if data.busy.is_some() {
            self.busy_open.fetch_sub(1, Ordering::Relaxed);
        }
        let busy = data.busy.and_then(|b| b.entered.then_some(b.total));
        let outcome = data.outcome.unwrap_or_default();
        data.entry.run_finished(duration, &outcome);
        if let Some(pipeline) = &data.pipeline {
            pipeline.close_run(data.ticket, &data.entry.name, duration, busy, &outcome);
        }
        let pipeline_id = data.pipeline.as_ref().map(|p| Arc::clone(&p.id));
        let run = data.pipeline.as_ref().map(|p| p.run);
        inner.publish(pipeline_id, end, || EventKind::AgentCompleted {
            agent: Arc::clone(&data.entry.name),
            duration,
            busy,
            outcome,
            run,
        });
    }

    /// The nearest agent (and its pipeline) enclosing an event.
    fn event_scope(&self, event: &Event<'_>, ctx: &Context<'_, S>) -> Option<EventScope> {
        let span = ctx.event_span(event)?;
        for ancestor in span.scope() {
            let ext = ancestor.extensions();
            if let Some(agent) = ext.get::<AgentData>() {
                return Some((Some(Arc::clone(&agent.entry.name)), agent.pipeline.clone()));
            }
            if let Some(pipeline) = ext.get::<PipelineData>() {
                return Some((None, Some(Arc::clone(&pipeline.state))));
            }
        }
        None
    }
}

impl<S> Layer<S> for PerfmonLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if let Some(kind) = Kind::classify(meta) {
            self.callsites.insert(meta, kind);
        }
        // Never filter anything out for the other layers.
        Interest::always()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(kind) = self.kind(attrs.metadata()) else {
            return;
        };
        let Some(span) = ctx.span(id) else { return };
        match kind {
            Kind::Agent => self.open_agent(attrs, &span, false),
            Kind::AgentSync => self.open_agent(attrs, &span, true),
            Kind::Pipeline => self.open_pipeline(attrs, &span),
            Kind::Progress | Kind::Thought => {}
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(kind) = self.kind(span.metadata()) else {
            return;
        };
        let mut visitor = OutcomeVisitor::default();
        values.record(&mut visitor);
        if visitor.error.is_none() && visitor.outcome.is_none() {
            return;
        }
        let mut ext = span.extensions_mut();
        match kind {
            Kind::Agent | Kind::AgentSync => {
                if let Some(data) = ext.get_mut::<AgentData>() {
                    data.outcome = visitor.merge(data.outcome.take());
                }
            }
            Kind::Pipeline => {
                let Some(data) = ext.get_mut::<PipelineData>() else {
                    return;
                };
                if let Some(error) = visitor.error.take() {
                    data.error = Some(error);
                }
                // Recording an outcome ends the pipeline now, even if spans
                // that still hold it open (detached tasks) close later.
                if let Some(outcome) = visitor.outcome.take() {
                    let outcome = match (outcome, data.error.take()) {
                        (Outcome::Failed { error }, None) => Outcome::Failed { error },
                        (Outcome::Succeeded | Outcome::Failed { .. }, Some(error)) => {
                            Outcome::Failed { error }
                        }
                        (other, _) => other,
                    };
                    let state = Arc::clone(&data.state);
                    drop(ext);
                    self.inner.finish_pipeline(&state, outcome);
                }
            }
            Kind::Progress | Kind::Thought => {}
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        // An agent opened outside any pipeline that declares it follows from
        // a span inside one joins that pipeline.
        let (Some(span), Some(cause)) = (ctx.span(id), ctx.span(follows)) else {
            return;
        };
        if !matches!(
            self.kind(span.metadata()),
            Some(Kind::Agent | Kind::AgentSync)
        ) {
            return;
        }
        let (pipeline, parent) = {
            let ext = cause.extensions();
            if let Some(p) = ext.get::<PipelineData>() {
                (Some(Arc::clone(&p.state)), None)
            } else if let Some(a) = ext.get::<AgentData>() {
                (
                    a.pipeline.clone(),
                    match a.ticket {
                        Ticket::Slot(i) => Some(i),
                        _ => None,
                    },
                )
            } else {
                drop(ext);
                Self::context_of(&cause)
            }
        };
        let Some(pipeline) = pipeline else { return };
        let mut ext = span.extensions_mut();
        let Some(data) = ext.get_mut::<AgentData>() else {
            return;
        };
        if data.pipeline.is_none() {
            data.ticket = pipeline.open_run(
                &data.entry.name,
                parent,
                data.start,
                self.inner.system_time(data.start),
            );
            data.pipeline = Some(pipeline);
        }
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        if self.busy_open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if self.kind(span.metadata()) != Some(Kind::Agent) {
            return;
        }
        let mut ext = span.extensions_mut();
        if let Some(busy) = ext.get_mut::<AgentData>().and_then(|d| d.busy.as_mut()) {
            if busy.depth == 0 {
                busy.entered_at = Some(self.inner.now());
            }
            busy.depth += 1;
            busy.entered = true;
        }
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        if self.busy_open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        if self.kind(span.metadata()) != Some(Kind::Agent) {
            return;
        }
        let mut ext = span.extensions_mut();
        if let Some(busy) = ext.get_mut::<AgentData>().and_then(|d| d.busy.as_mut()) {
            busy.depth = busy.depth.saturating_sub(1);
            if busy.depth == 0
                && let Some(at) = busy.entered_at.take()
            {
                busy.total += self.inner.now().saturating_duration_since(at);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let kind = self.kind(meta);
        let is_error = *meta.level() == Level::ERROR;
        if kind.is_none() && !is_error {
            return;
        }
        let Some((agent, pipeline)) = self.event_scope(event, &ctx) else {
            return;
        };
        let inner = &self.inner;
        let at = inner.now();
        let pipeline_id = pipeline.as_ref().map(|p| Arc::clone(&p.id));
        match kind {
            Some(Kind::Progress) => {
                let Some(agent) = agent else { return };
                let mut v = ProgressVisitor::default();
                event.record(&mut v);
                let progress = Progress {
                    agent: Arc::clone(&agent),
                    percent: v.percent,
                    stage: v.stage,
                    message: v.message,
                };
                if let Some(p) = &pipeline {
                    p.set_progress(progress.clone());
                }
                inner.publish(pipeline_id, at, || EventKind::AgentProgress {
                    agent,
                    percent: progress.percent,
                    stage: progress.stage,
                    message: progress.message,
                });
            }
            Some(Kind::Thought) => {
                let Some(agent) = agent else { return };
                if !inner.bus.is_active() {
                    return;
                }
                let mut v = ProgressVisitor::default();
                event.record(&mut v);
                inner.publish(pipeline_id, at, || EventKind::Thought {
                    agent,
                    text: v.message.unwrap_or_default(),
                });
            }
            _ => {
                // An ERROR event with an `error` field directly inside an
                // agent span marks the run failed: what `#[instrument(err)]` emits.
                let mut v = ErrorVisitor::default();
                event.record(&mut v);
                if let Some(error) = &v.error
                    && let Some(span) = ctx.event_span(event)
                {
                    let mut ext = span.extensions_mut();
                    if let Some(data) = ext.get_mut::<AgentData>()
                        && data.outcome.is_none()
                    {
                        data.outcome = Some(Outcome::Failed {
                            error: error.clone(),
                        });
                    }
                }
                inner.publish(pipeline_id, at, || EventKind::Error {
                    agent,
                    message: v.into_message(),
                });
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(kind) = self.kind(span.metadata()) else {
            return;
        };
        let mut ext = span.extensions_mut();
        match kind {
            Kind::Agent | Kind::AgentSync => {
                if let Some(data) = ext.remove::<AgentData>() {
                    drop(ext);
                    self.close_agent(data);
                }
            }
            Kind::Pipeline => {
                if let Some(data) = ext.remove::<PipelineData>() {
                    drop(ext);
                    let outcome = data
                        .error
                        .map_or(Outcome::Succeeded, |error| Outcome::Failed { error });
                    self.inner.finish_pipeline(&data.state, outcome);
                }
            }
            Kind::Progress | Kind::Thought => {}
        }
    }

    // SAFETY: each pointer returned points to a value of exactly the type
    // whose `TypeId` was asked for, owned by `self` and so valid as long as
    // the subscriber is (the contract of `downcast_raw`); tracing-error's
    // `ErrorLayer` hands out its `WithContext` the same way.
    #[allow(unsafe_code)]
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(self as *const Self as *const ())
        } else if id == TypeId::of::<WithPipeline>() {
            Some(&self.with_pipeline as *const WithPipeline as *const ())
        } else {
            None
        }
    }
}

/// Resolves the agent named by `perfmon.agent` without copying the name.
struct AgentVisitor<'a> {
    inner: &'a Inner,
    entry: Option<Arc<AgentEntry>>,
}

impl Visit for AgentVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == AGENT_FIELD {
            self.entry = Some(
                self.inner
                    .agents
                    .get_or_insert(value, &self.inner.counters.agents_overflowed),
            );
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == AGENT_FIELD {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Reads one string-valued field (the pipeline id).
struct NameVisitor {
    field: &'static str,
    value: Option<String>,
}

impl NameVisitor {
    fn new(field: &'static str) -> Self {
        NameVisitor { field, value: None }
    }

    fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("(unnamed)")
    }
}

impl Visit for NameVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.field {
            self.value = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == self.field {
            let mut s = String::new();
            let _ = write!(s, "{value:?}");
            self.value = Some(s);
        }
    }
}

/// Reads `perfmon.outcome` and `perfmon.error` from a record.
#[derive(Default)]
struct OutcomeVisitor {
    outcome: Option<Outcome>,
    error: Option<String>,
}

impl OutcomeVisitor {
    fn merge(self, previous: Option<Outcome>) -> Option<Outcome> {
        match (self.outcome, self.error) {
            (_, Some(error)) => Some(Outcome::Failed { error }),
            (Some(outcome), None) => Some(outcome),
            (None, None) => previous,
        }
    }

    fn set_outcome(&mut self, value: &str) {
        self.outcome = Some(match value {
            "failed" => Outcome::Failed {
                error: self.error.clone().unwrap_or_else(|| "failed".into()),
            },
            "panicked" => Outcome::Panicked,
            "cancelled" => Outcome::Cancelled,
            _ => Outcome::Succeeded,
        });
    }
}

impl Visit for OutcomeVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            OUTCOME_FIELD => self.set_outcome(value),
            ERROR_FIELD => self.error = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            OUTCOME_FIELD => self.set_outcome(&format!("{value:?}")),
            ERROR_FIELD => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Reads `percent`, `stage` and the message of a progress or thought event.
#[derive(Default)]
struct ProgressVisitor {
    percent: Option<f64>,
    stage: Option<String>,
    message: Option<String>,
}

impl Visit for ProgressVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "percent" {
            self.percent = Some(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_f64(field, value as f64);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_f64(field, value as f64);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "stage" => self.stage = Some(value.to_owned()),
            "message" => self.message = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "stage" => self.stage = Some(format!("{value:?}")),
            "message" => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Collects an ERROR event's `error` field and a one-line rendering of it.
#[derive(Default)]
struct ErrorVisitor {
    error: Option<String>,
    message: String,
    rest: String,
}

impl ErrorVisitor {
    fn into_message(self) -> String {
        match (self.message.is_empty(), self.rest.is_empty()) {
            (false, false) => format!("{} {}", self.message, self.rest),
            (false, true) => self.message,
            (true, _) => self.rest,
        }
    }
}

impl Visit for ErrorVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                if name == "error" {
                    self.error = Some(format!("{value:?}"));
                }
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "error" {
            self.error = Some(value.to_owned());
        }
        self.record_debug(field, &DisplayStr(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if field.name() == "error" {
            self.error = Some(value.to_string());
        }
        self.record_debug(field, &DisplayStr(&value.to_string()));
    }
}

struct DisplayStr<'a>(&'a str);

impl fmt::Debug for DisplayStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
