//! [`PerfmonLayer`]: the `tracing_subscriber::Layer` that does the timing.
//!
//! Which spans and events matter is decided once per callsite, in
//! `register_callsite`, and kept in a fixed lock-free table
//! ([`callsites`]). A synchronous run's state lives on its thread's stack
//! of open runs ([`open_runs`]): opening it needs no registry lookup of the
//! new span and no extension, closing it none at all. Other runs (futures,
//! which may close on any thread) and pipelines keep theirs in the span's
//! extensions, one entry per monitor ([`per_layer`]); the state itself is
//! in [`state`]. A guard offers the
//! layer its run's agent entry (`agent_table`), so the span's fields are
//! not visited; the current span comes from the layer's own record of
//! the spans entered on this thread ([`entered`]), and a run opening right
//! inside a pipeline's span finds the pipeline this thread's runs last
//! opened in ([`parent_pipeline`]): neither is a registry lookup. A span
//! that is not perfmon's closes without a lookup ([`held`]). A closed run
//! goes to the thread's buffer (`pending`); the statistics and the
//! pipeline are updated in batches. The only locks on
//! the way of a span are the thread's own stack and buffer, the span's
//! extensions lock (futures, pipelines) and its pipeline's mutex (when it
//! opens in one): none is shared by all spans.
//!
//! Writes into the [`Recorder`]; imports nothing above it (not the guards,
//! not the monitor). The guards reach pipeline state through
//! the hooks in [`hooks`], found on the dispatcher.

mod callsites;
mod entered;
mod held;
mod hooks;
mod open_runs;
mod parent_pipeline;
mod per_layer;
pub(crate) mod runs;
mod state;
mod visitors;

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Metadata, Subscriber};
use tracing_core::subscriber::Interest;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, SpanRef};

use self::callsites::{Callsites, Kind};
use self::held::Held;
#[cfg(feature = "otel")]
pub(crate) use self::hooks::{RunUsage, WithRunUsage};
pub(crate) use self::hooks::{WithBusy, WithPipeline};
use self::open_runs::{Local, Stacks};
use self::state::{AgentData, Busy, Hidden, Nearest, NearestMut, PipelineData, Placement};
use self::visitors::{AgentVisitor, ErrorVisitor, NameVisitor, OutcomeVisitor, ProgressVisitor};
use crate::busy;
use crate::events::EventKind;
use crate::fields::PIPELINE_FIELD;
use crate::outcome::{Outcome, UnknownOutcome};
use crate::pending::{self, Finished};
use crate::pipeline::{PipelineState, Ticket, Timing};
use crate::record::{Progress, RunKind};
use crate::recorder::Recorder;
use crate::sync::lock;

/// Every thread's open synchronous runs.
static OPEN_RUNS: Stacks<AgentData> = Stacks::new();

thread_local! {
    /// This thread's open synchronous runs.
    static LOCAL_RUNS: Local<AgentData> = OPEN_RUNS.register();
}

/// Source of [`PerfmonLayer`] ids: the open runs of two layers (two
/// registries, whose span ids may coincide) never mix.
static NEXT_LAYER: AtomicU64 = AtomicU64::new(1);

/// `f` applied to the run `(layer, span)` if this thread holds it open.
#[inline]
fn local_run<R>(layer: u64, span: &Id, f: impl FnOnce(&mut AgentData) -> R) -> Option<R> {
    let mut f = Some(f);
    LOCAL_RUNS
        .try_with(|local| local.with(layer, span.into_u64(), |run| f.take().map(|f| f(run))))
        .ok()
        .flatten()
        .flatten()
}

/// The `tracing_subscriber::Layer` that times perfmon spans; from [`crate::Monitor::layer`].
///
/// A span is an agent run if it has a `perfmon.agent` field, a pipeline if it
/// has `perfmon.pipeline`, whoever made it: perfmon's guards and macros, or
/// `#[tracing::instrument(fields(perfmon.agent = "x"))]`.
pub struct PerfmonLayer<S> {
    /// Process-unique: keys this layer's runs on the threads' stacks.
    id: u64,
    /// Its monitor's: keys its state in spans' extensions (`per_layer`).
    key: usize,
    recorder: Arc<Recorder>,
    callsites: Callsites,
    /// Its open perfmon spans, counted per bucket of ids: other spans close
    /// without a lookup.
    held: Held,
    /// Open agent spans whose busy time is tracked. While it is zero,
    /// `on_enter`/`on_exit` return before looking the span up, so sync
    /// agents and unrelated spans pay nothing for busy tracking.
    busy_open: AtomicUsize,
    with_pipeline: WithPipeline,
    with_busy: WithBusy,
    #[cfg(feature = "otel")]
    with_run_usage: WithRunUsage,
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
    pub(crate) fn new(recorder: Arc<Recorder>) -> Self {
        PerfmonLayer {
            id: NEXT_LAYER.fetch_add(1, Ordering::Relaxed),
            key: Arc::as_ptr(&recorder) as usize,
            recorder,
            callsites: Callsites::new(),
            held: Held::new(),
            busy_open: AtomicUsize::new(0),
            with_pipeline: WithPipeline(Self::pipeline_of),
            with_busy: WithBusy {
                now: Self::now_of,
                set: Self::set_busy,
            },
            #[cfg(feature = "otel")]
            with_run_usage: WithRunUsage(Self::run_usage),
            _subscriber: PhantomData,
        }
    }

    fn pipeline_of(dispatch: &Dispatch, id: &Id, key: usize) -> Option<Arc<PipelineState>> {
        let subscriber = dispatch.downcast_ref::<S>()?;
        let span = subscriber.span(id)?;
        let ext = span.extensions();
        per_layer::get::<PipelineData>(&ext, key).map(|p| Arc::clone(&p.state))
    }

    fn now_of(dispatch: &Dispatch) -> Option<quanta::Instant> {
        Some(dispatch.downcast_ref::<Self>()?.recorder.now())
    }

    fn set_busy(dispatch: &Dispatch, id: &Id, busy_ns: Option<u64>) {
        let Some(subscriber) = dispatch.downcast_ref::<S>() else {
            return;
        };
        let Some(span) = subscriber.span(id) else {
            return;
        };
        per_layer::for_each_mut::<AgentData>(&mut span.extensions_mut(), |run| {
            if let Some(busy) = &mut run.busy {
                busy.set_total(busy_ns);
            }
        });
    }

    /// The one walk up the span tree: from `first` up through its
    /// ancestors, to the first span that is an agent run or a pipeline;
    /// `read` takes what it needs from it. One registry lookup per step
    /// (`SpanRef::scope` would look `first` up a second time).
    fn nearest<R>(
        &self,
        first: Option<SpanRef<'_, S>>,
        mut read: impl FnMut(Nearest<'_>) -> R,
    ) -> Option<R> {
        self.nearest_mut(first, |n| read(n.as_ref()))
    }

    /// Like [`nearest`](Self::nearest), with the span's state mutable.
    fn nearest_mut<R>(
        &self,
        first: Option<SpanRef<'_, S>>,
        mut change: impl FnMut(NearestMut<'_>) -> R,
    ) -> Option<R> {
        let mut next = first;
        while let Some(span) = next {
            if let Some(found) = self.state_of(&span, &mut change) {
                return Some(found);
            }
            next = span.parent();
        }
        None
    }

    /// Where the run `id`, opening with `attrs`, goes: in its explicit
    /// parent, or in the current span (from this thread's own record,
    /// [`entered`]).
    fn placement(&self, attrs: &Attributes<'_>, id: &Id, ctx: &Context<'_, S>) -> Placement {
        let parent = if let Some(parent) = attrs.parent() {
            parent.into_u64()
        } else if attrs.is_contextual() {
            match entered::current(self.id) {
                entered::Current::Span(parent) => parent,
                entered::Current::None => return Placement::default(),
                entered::Current::Unknown => match ctx.current_span().id() {
                    Some(parent) => parent.into_u64(),
                    None => return Placement::default(),
                },
            }
        } else {
            return Placement::default();
        };
        match self.placement_in(ctx, parent) {
            Ok(placement) => placement.unwrap_or_default(),
            Err(Hidden) => self.placement_past_hidden(id, ctx),
        }
    }

    /// Where the run `id` goes when its parent is a span this layer's
    /// filter hides: the registry's filtered walk from the new span finds
    /// the nearest one it does not.
    #[cold]
    fn placement_past_hidden(&self, id: &Id, ctx: &Context<'_, S>) -> Placement {
        self.nearest(ctx.span(id).and_then(|span| span.parent()), |n| {
            n.placement()
        })
        .unwrap_or_default()
    }

    /// Where a run opening right inside the span `span` goes. Without a
    /// registry lookup when `span` is the pipeline this thread remembers
    /// or a synchronous run open on this thread (nearly always).
    fn placement_in(&self, ctx: &Context<'_, S>, span: u64) -> Result<Option<Placement>, Hidden> {
        if let Some(state) = parent_pipeline::find(self.id, span) {
            return Ok(Some(Placement {
                pipeline: Some(state),
                slot: None,
                parent: None,
            }));
        }
        // Never zero: it came from an `Id`.
        let Some(id) = std::num::NonZeroU64::new(span).map(Id::from_non_zero_u64) else {
            return Ok(None);
        };
        if let Some(found) = local_run(self.id, &id, |run| Nearest::Agent(run).placement()) {
            return Ok(Some(found));
        }
        let span_ref = ctx.span(&id).ok_or(Hidden)?;
        let is_pipeline = self.kind(span_ref.metadata()) == Some(Kind::Pipeline);
        let placement = self.nearest(Some(span_ref), |n| n.placement());
        if is_pipeline && let Some(state) = placement.as_ref().and_then(|p| p.pipeline.as_ref()) {
            parent_pipeline::remember(self.id, span, state);
        }
        Ok(placement)
    }

    /// `change` applied to the state of `span`, if it is a run or a pipeline.
    fn state_of<R>(
        &self,
        span: &SpanRef<'_, S>,
        change: &mut impl FnMut(NearestMut<'_>) -> R,
    ) -> Option<R> {
        match self.kind(span.metadata())? {
            Kind::AgentSync => self.with_sync_run(span, |run| change(NearestMut::Agent(run))),
            Kind::Agent => {
                let mut ext = span.extensions_mut();
                let run = per_layer::get_mut::<AgentData>(&mut ext, self.key)?;
                Some(change(NearestMut::Agent(run)))
            }
            Kind::Pipeline => {
                let mut ext = span.extensions_mut();
                let pipeline = per_layer::get_mut::<PipelineData>(&mut ext, self.key)?;
                Some(change(NearestMut::Pipeline(pipeline)))
            }
            Kind::Progress | Kind::Thought | Kind::Output | Kind::Usage => None,
        }
    }

    /// `f` applied to the state of the synchronous run `span`: on this
    /// thread's stack (almost always), in its extensions (opened while this
    /// thread's stack was gone, at its exit), or on another thread's stack.
    fn with_sync_run<R>(
        &self,
        span: &SpanRef<'_, S>,
        f: impl FnOnce(&mut AgentData) -> R,
    ) -> Option<R> {
        let id = span.id();
        let mut f = Some(f);
        if let Some(found) = local_run(self.id, &id, |run| f.take().map(|f| f(run))) {
            return found;
        }
        {
            let mut ext = span.extensions_mut();
            if let Some(run) = per_layer::get_mut::<AgentData>(&mut ext, self.key) {
                return f.take().map(|f| f(run));
            }
        }
        OPEN_RUNS
            .with_any(self.id, id.into_u64(), |run| f.take().map(|f| f(run)))
            .flatten()
    }

    /// `f` applied to the state of the run `span` (of kind `kind`), wherever it is kept.
    fn with_run<R>(
        &self,
        span: &SpanRef<'_, S>,
        kind: Kind,
        f: impl FnOnce(&mut AgentData) -> R,
    ) -> Option<R> {
        match kind {
            Kind::AgentSync => self.with_sync_run(span, f),
            Kind::Agent => {
                per_layer::get_mut::<AgentData>(&mut span.extensions_mut(), self.key).map(f)
            }
            _ => None,
        }
    }

    /// Runs `f` on the busy-time state of the async agent span `id`, with
    /// the recorder (for its clock). Returns at once, before any lookup, while no busy-tracked
    /// agent is open.
    #[inline]
    fn with_busy(&self, id: &Id, ctx: &Context<'_, S>, f: impl FnOnce(&mut Busy, &Recorder)) {
        if self.busy_open.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.with_busy_span(id, ctx, f);
    }

    /// [`with_busy`](Self::with_busy) past its first check: out of line,
    /// so that entering a span that needs none of it stays small.
    #[inline(never)]
    fn with_busy_span(&self, id: &Id, ctx: &Context<'_, S>, f: impl FnOnce(&mut Busy, &Recorder)) {
        let Some(span) = ctx.span(id) else { return };
        if self.kind(span.metadata()) != Some(Kind::Agent) {
            return;
        }
        let mut ext = span.extensions_mut();
        if let Some(busy) = per_layer::get_mut::<AgentData>(&mut ext, self.key)
            .and_then(|d| d.busy.as_mut())
            .filter(|b| !b.self_timed)
        {
            f(busy, &self.recorder);
        }
    }

    /// The `usage!` hook for `downcast_raw`, if `id` asks for it.
    #[allow(clippy::unused_self)]
    fn run_usage_hook(&self, id: TypeId) -> Option<*const ()> {
        #[cfg(feature = "otel")]
        if id == TypeId::of::<WithRunUsage>() {
            return Some(&self.with_run_usage as *const WithRunUsage as *const ());
        }
        let _ = id;
        None
    }

    fn kind(&self, meta: &'static Metadata<'static>) -> Option<Kind> {
        self.callsites.get(meta)
    }

    /// The state of a run that opens with `attrs` at `placement`.
    /// `self_timed`: a future that times its own polls (`busy`).
    fn open_agent(
        &self,
        attrs: &Attributes<'_>,
        placement: Placement,
        sync: bool,
        self_timed: bool,
    ) -> AgentData {
        let recorder = &self.recorder;
        // A guard's span: the guard offered the entry (no field visit).
        let (entry, kind) = match recorder.agents.take_hint(attrs.metadata()) {
            Some(hinted) => hinted,
            None => {
                let mut name =
                    AgentVisitor::new(&recorder.agents, &recorder.counters.agents_overflowed);
                attrs.record(&mut name);
                name.into_entry()
            }
        };
        let start = recorder.now();
        let Placement {
            pipeline,
            slot,
            parent,
        } = placement;
        let (ticket, lost) = match &pipeline {
            Some(p) => (p.open_run(&entry.name, kind, slot, start), false),
            None => (Ticket::Late, recorder.active_count() > 0),
        };
        entry.run_started();
        if !sync && !self_timed {
            self.busy_open.fetch_add(1, Ordering::Relaxed);
        }
        recorder.publish(pipeline.as_ref().map(|p| Arc::clone(&p.id)), start, || {
            let agent = Arc::clone(&entry.name);
            let run = pipeline.as_ref().map(|p| p.run);
            let parent = parent.as_ref().map(|c| Arc::clone(&c.agent));
            match kind {
                RunKind::Tool => EventKind::ToolStarted { agent, run, parent },
                RunKind::Agent => EventKind::AgentStarted { agent, run, parent },
            }
        });
        AgentData {
            entry,
            kind,
            extras: None,
            pipeline,
            ticket,
            start,
            busy: (!sync).then_some(Busy {
                total_ns: 0,
                entered_at: start,
                depth: 0,
                entered: false,
                self_timed,
            }),
            outcome: None,
            children: OnceLock::new(),
            parent,
            lost,
        }
    }

    fn open_pipeline(&self, attrs: &Attributes<'_>, span: &SpanRef<'_, S>) {
        let mut id = NameVisitor::new(PIPELINE_FIELD);
        attrs.record(&mut id);
        let state = self
            .recorder
            .pipeline_started(Arc::from(id.value()), self.recorder.now());
        let data = PipelineData { state, error: None };
        per_layer::insert(&mut span.extensions_mut(), self.key, data);
    }

    fn close_agent(&self, data: AgentData) {
        let recorder = &self.recorder;
        let end = recorder.now();
        let duration = end.saturating_duration_since(data.start);
        let busy_tracked = data.busy.is_some();
        if data.busy.as_ref().is_some_and(|b| !b.self_timed) {
            self.busy_open.fetch_sub(1, Ordering::Relaxed);
        }
        let busy = data
            .busy
            .and_then(|b| b.entered.then_some(Duration::from_nanos(b.total_ns)));
        // Self time: wall minus what the runs nested in it covered (those
        // that finished before it did); then this run covers part of its parent.
        let self_time = match data.children.get() {
            Some(children) => duration.saturating_sub(lock(&children.cover).within(duration)),
            None => duration,
        };
        if let Some(parent) = &data.parent {
            lock(&parent.cover).add(
                data.start.saturating_duration_since(parent.start),
                end.saturating_duration_since(parent.start),
            );
        }
        let timing = Timing {
            wall: duration,
            self_time,
            busy,
        };
        let kind = data.kind;
        if data.pipeline.is_none() && (data.lost || recorder.active_count() > 0) {
            self.lost_run(&data.entry.name);
        }
        if recorder.bus.is_active() {
            let pipeline_id = data.pipeline.as_ref().map(|p| Arc::clone(&p.id));
            let run = data.pipeline.as_ref().map(|p| p.run);
            let agent = Arc::clone(&data.entry.name);
            let usage = data
                .extras
                .as_ref()
                .map(|e| e.usage)
                .filter(|u| !u.is_zero())
                .map(|u| u.to_usage());
            let outcome = data.outcome.as_deref().cloned().unwrap_or_default();
            recorder.publish(pipeline_id, end, || match kind {
                RunKind::Tool => EventKind::ToolCompleted {
                    agent,
                    duration,
                    self_time,
                    busy,
                    outcome,
                    run,
                    usage,
                },
                RunKind::Agent => EventKind::AgentCompleted {
                    agent,
                    duration,
                    self_time,
                    busy,
                    outcome,
                    run,
                    usage,
                },
            });
        }
        let finished = Finished {
            entry: data.entry,
            pipeline: data.pipeline.map(|p| (p, data.ticket)),
            timing,
            outcome: data.outcome,
            extras: data.extras,
        };
        if busy_tracked {
            // A future's run: counted now. Measured, the buffer costs a
            // future more than it saves (BENCHMARKS.md, issue 16).
            finished.apply();
            return;
        }
        // Counted in the agent's statistics and the pipeline in a batch
        // (`pending`); every read flushes first.
        if recorder.config.metrics {
            let has_usage = finished.extras.as_ref().is_some_and(|e| !e.usage.is_zero());
            let outcome = finished.outcome.as_deref().unwrap_or(&Outcome::Succeeded);
            finished.entry.prepare_metrics(outcome, has_usage);
        }
        pending::push(finished);
    }

    /// A run that ended outside any pipeline while one was active: counted,
    /// and warned about once per monitor with the fix.
    #[cold]
    fn lost_run(&self, agent: &str) {
        let c = &self.recorder.counters;
        c.runs_outside_pipeline.fetch_add(1, Ordering::Relaxed);
        if c.warned_outside.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            target: "perfmon",
            agent,
            "agent `{agent}` ran outside any pipeline while a pipeline was active, so no \
             pipeline report counts it. If it belongs to one, carry the span into the work: \
             `tokio::spawn(fut.in_current_span())` (tracing::Instrument), \
             `let span = Span::current(); spawn_blocking(move || span.in_scope(f))`, or \
             `fut.track_agent(name)` made before the spawn. Overview::runs_outside_pipeline \
             counts such runs; this warning is printed once."
        );
    }

    /// An unknown `perfmon.outcome` value: the run fails with a text that
    /// says what to record instead, and an `error` event says so live.
    fn unknown_outcome(
        &self,
        err: &UnknownOutcome,
        agent: Option<Arc<str>>,
        pipeline: Option<Arc<str>>,
    ) -> Outcome {
        let message = err.to_string();
        self.recorder
            .publish(pipeline, self.recorder.now(), || EventKind::Error {
                agent,
                message: message.clone(),
            });
        Outcome::Failed { error: message }
    }
}

impl<S> Layer<S> for PerfmonLayer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        self.callsites.insert(meta, Kind::classify(meta));
        // Never filter anything out for the other layers.
        Interest::always()
    }

    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(kind) = self.kind(attrs.metadata()) else {
            return;
        };
        if kind.is_span() {
            self.held.add(id.into_u64());
        }
        match kind {
            Kind::AgentSync => {
                // Kept on this thread's stack of open runs: no registry
                // lookup of the new span, no extension.
                let placement = self.placement(attrs, id, &ctx);
                let mut run = Some(self.open_agent(attrs, placement, true, false));
                let _ = LOCAL_RUNS.try_with(|local| {
                    if let Some(run) = run.take() {
                        local.push(self.id, id.into_u64(), run);
                    }
                });
                // This thread is exiting (its stack is gone): the extensions.
                if let Some(run) = run
                    && let Some(span) = ctx.span(id)
                {
                    per_layer::insert(&mut span.extensions_mut(), self.key, run);
                }
            }
            Kind::Agent => {
                let Some(span) = ctx.span(id) else { return };
                let placement = self.placement(attrs, id, &ctx);
                let self_timed = crate::site::is_timed(attrs.metadata());
                let run = self.open_agent(attrs, placement, false, self_timed);
                per_layer::insert(&mut span.extensions_mut(), self.key, run);
            }
            Kind::Pipeline => {
                let Some(span) = ctx.span(id) else { return };
                self.open_pipeline(attrs, &span);
            }
            Kind::Progress | Kind::Thought | Kind::Output | Kind::Usage => {}
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(kind) = self.kind(span.metadata()) else {
            return;
        };
        let mut visitor = OutcomeVisitor::default();
        values.record(&mut visitor);
        if visitor.is_empty() {
            return;
        }
        match kind {
            Kind::Agent | Kind::AgentSync => {
                let unknown = self.with_run(&span, kind, |data| {
                    match visitor.agent_outcome(data.outcome.take().map(|o| *o)) {
                        Ok(outcome) => {
                            data.outcome = outcome.map(Box::new);
                            None
                        }
                        Err(err) => Some((
                            err,
                            Arc::clone(&data.entry.name),
                            data.pipeline.as_ref().map(|p| Arc::clone(&p.id)),
                        )),
                    }
                });
                // Published outside the run's lock: nothing runs under it.
                if let Some(Some((err, agent, pipeline))) = unknown {
                    let outcome = self.unknown_outcome(&err, Some(agent), pipeline);
                    self.with_run(&span, kind, |data| data.outcome = Some(Box::new(outcome)));
                }
            }
            Kind::Pipeline => {
                let mut ext = span.extensions_mut();
                let Some(data) = per_layer::get_mut::<PipelineData>(&mut ext, self.key) else {
                    return;
                };
                if let Some(error) = visitor.error.take() {
                    data.error = Some(error);
                }
                // Recording an outcome ends the pipeline now, even if spans
                // that still hold it open (detached tasks) close later.
                if let Some(value) = visitor.outcome.take() {
                    let state = Arc::clone(&data.state);
                    let outcome = OutcomeVisitor::pipeline_outcome(&value, data.error.take());
                    drop(ext);
                    let outcome = outcome.unwrap_or_else(|err| {
                        self.unknown_outcome(&err, None, Some(Arc::clone(&state.id)))
                    });
                    self.recorder.finish_pipeline(&state, outcome);
                }
            }
            Kind::Progress | Kind::Thought | Kind::Output | Kind::Usage => {}
        }
    }

    fn on_follows_from(&self, id: &Id, follows: &Id, ctx: Context<'_, S>) {
        // An agent opened outside any pipeline that declares it follows from
        // a span inside one joins that pipeline.
        let (Some(span), Some(cause)) = (ctx.span(id), ctx.span(follows)) else {
            return;
        };
        let Some(kind) = self.kind(span.metadata()).filter(|k| k.is_agent()) else {
            return;
        };
        let Some((Some(pipeline), slot)) = self.nearest(Some(cause), |n| n.pipeline_and_slot())
        else {
            return;
        };
        self.with_run(&span, kind, |data| {
            if data.pipeline.is_some() {
                return;
            }
            data.ticket = pipeline.open_run(&data.entry.name, data.kind, slot, data.start);
            data.pipeline = Some(pipeline);
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        entered::enter(self.id, id.into_u64());
        self.with_busy(id, &ctx, |busy, recorder| {
            if busy.depth == 0 {
                busy.entered_at = recorder.now();
            }
            busy.depth += 1;
            busy.entered = true;
        });
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        entered::exit(self.id, id.into_u64());
        self.with_busy(id, &ctx, |busy, recorder| {
            if busy.depth == 0 {
                return;
            }
            busy.depth -= 1;
            if busy.depth == 0 {
                let spent = recorder.now().saturating_duration_since(busy.entered_at);
                busy.total_ns = busy
                    .total_ns
                    .saturating_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX));
            }
        });
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let kind = self.kind(meta);
        let is_error = *meta.level() == Level::ERROR;
        match kind {
            None if !is_error => return,
            Some(Kind::Output) => return self.output(event, &ctx),
            Some(Kind::Usage) => return self.usage(event, &ctx),
            _ => {}
        }
        let Some((agent, pipeline)) =
            self.nearest(ctx.event_span(event), |n| n.agent_and_pipeline())
        else {
            return;
        };
        let recorder = &self.recorder;
        let at = recorder.now();
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
                recorder.publish(pipeline_id, at, || EventKind::AgentProgress {
                    agent,
                    percent: progress.percent,
                    stage: progress.stage,
                    message: progress.message,
                });
            }
            Some(Kind::Thought) => {
                let Some(agent) = agent else { return };
                if !recorder.bus.is_active() {
                    return;
                }
                let mut v = ProgressVisitor::default();
                event.record(&mut v);
                recorder.publish(pipeline_id, at, || EventKind::Thought {
                    agent,
                    text: v.message.unwrap_or_default(),
                });
            }
            _ => {
                // An ERROR event directly inside an agent span marks the
                // run failed only in the shape `#[instrument(err)]` emits.
                let mut v = ErrorVisitor::default();
                event.record(&mut v);
                if let Some(error) = v.run_error()
                    && let Some(span) = ctx.event_span(event)
                    && let Some(kind) = self.kind(span.metadata())
                {
                    self.with_run(&span, kind, |data| {
                        if data.outcome.is_none() {
                            data.outcome = Some(Box::new(Outcome::Failed {
                                error: error.clone(),
                            }));
                        }
                    });
                }
                recorder.publish(pipeline_id, at, || EventKind::Error {
                    agent,
                    message: v.into_message(),
                });
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        // A synchronous run closing on the thread that opened it (nearly
        // all of them): no registry lookup.
        if let Ok(Some(run)) = LOCAL_RUNS.try_with(|local| local.take(self.id, id.into_u64())) {
            self.held.remove(id.into_u64());
            return self.close_agent(run);
        }
        // Not perfmon's (no open perfmon span shares its bucket): no lookup.
        if !self.held.may_hold(id.into_u64()) {
            return;
        }
        let Some(span) = ctx.span(&id) else { return };
        let Some(kind) = self.kind(span.metadata()) else {
            return;
        };
        if kind.is_span() {
            self.held.remove(id.into_u64());
        }
        let mut ext = span.extensions_mut();
        match kind {
            Kind::Agent | Kind::AgentSync => {
                let run = per_layer::remove::<AgentData>(&mut ext, self.key);
                drop(ext);
                let run = match run {
                    Some(run) => Some(run),
                    // Closed on another thread than its own.
                    None if kind == Kind::AgentSync => OPEN_RUNS.take_any(self.id, id.into_u64()),
                    None => None,
                };
                if let Some(mut run) = run {
                    // A future that timed itself is being dropped: its total.
                    if let Some(busy) = &mut run.busy
                        && busy.self_timed
                        && let Some(offered) = busy::offered(id.into_u64())
                    {
                        busy.set_total(offered);
                    }
                    self.close_agent(run);
                }
            }
            Kind::Pipeline => {
                if let Some(data) = per_layer::remove::<PipelineData>(&mut ext, self.key) {
                    drop(ext);
                    let outcome = data
                        .error
                        .map_or(Outcome::Succeeded, |error| Outcome::Failed { error });
                    self.recorder.finish_pipeline(&data.state, outcome);
                }
            }
            Kind::Progress | Kind::Thought | Kind::Output | Kind::Usage => {}
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
        } else if id == TypeId::of::<WithBusy>() {
            Some(&self.with_busy as *const WithBusy as *const ())
        } else {
            self.run_usage_hook(id)
        }
    }
}
