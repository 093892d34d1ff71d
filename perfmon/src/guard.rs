//! Guards that open perfmon spans: [`PipelineGuard`], [`AgentGuard`],
//! [`ToolGuard`], and [`TrackAgentExt`] for futures.
//!
//! Guards only make spans and record outcomes on them; all timing happens in
//! [`PerfmonLayer`](crate::PerfmonLayer). Without a subscriber that enables
//! the spans, a guard costs about as much as a disabled `tracing` span.
//!
//! Above the recorder and the layer in the crate's dependency order: a
//! pipeline guard holds the recorder (for its clock and its report), and
//! finds its pipeline's state through the layer's `WithPipeline`. The
//! `Monitor` methods that make guards live in `monitor.rs`.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use pin_project_lite::pin_project;
use tracing::Span;
use tracing::field::Empty;
use tracing::span::EnteredSpan;

use crate::agent_table::Offer;
use crate::busy;
use crate::fields::{ERROR_FIELD, OUTCOME_FIELD};
use crate::layer::{WithBusy, WithPipeline};
use crate::outcome::Outcome;
use crate::pipeline::PipelineState;
use crate::record::{PipelineReport, RunKind};
use crate::recorder::Recorder;
use crate::site::HintSite;
use crate::unseen;

/// The error text of an `Err`: what fails a tracked `Result`.
#[inline]
pub(crate) fn error_text<T, E: fmt::Display>(result: &Result<T, E>) -> Option<String> {
    result.as_ref().err().map(ToString::to_string)
}

/// The outcome of something dropped before it completed: `panicked` while
/// the thread unwinds, else `otherwise`.
fn dropped_outcome(otherwise: Outcome) -> Outcome {
    if std::thread::panicking() {
        Outcome::Panicked
    } else {
        otherwise
    }
}

/// Records `outcome` on `span`: the error text first (if failed), then the
/// outcome's name, which ends a pipeline in the layer.
fn record_outcome(span: &Span, outcome: &Outcome) {
    if let Some(error) = outcome.error() {
        span.record(ERROR_FIELD, error);
    }
    otel_status(span, outcome);
    span.record(OUTCOME_FIELD, outcome.as_str());
}

/// With feature `otel`: a run or pipeline that did not succeed gets the
/// OpenTelemetry error status (`otel.status_description`, read by
/// `tracing-opentelemetry`) and `error.type` = its outcome. Without it,
/// nothing.
#[inline]
pub(crate) fn otel_status(span: &Span, outcome: &Outcome) {
    #[cfg(feature = "otel")]
    if outcome.is_failure() {
        span.record("error.type", outcome.as_str());
        span.record(
            "otel.status_description",
            outcome.error().unwrap_or(outcome.as_str()),
        );
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, outcome);
}

/// Starts an agent run named `name`, as a child of the current span, and
/// enters it on this thread until the guard is dropped.
///
/// The run belongs to the pipeline whose span encloses it, if any. Drop the
/// guard (or call [`AgentGuard::succeed`]) when the work is done, or call
/// [`AgentGuard::fail`]; a guard dropped while panicking records `panicked`.
///
/// The span has target `perfmon`, level `INFO`, name `agent`, and the field
/// `perfmon.agent = name`.
///
/// ```
/// let monitor = perfmon::Monitor::new();
/// # let _s = tracing::subscriber::set_default(
/// #     tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), monitor.layer()));
/// let pipeline = monitor.start_pipeline("proj_1");
/// {
///     let _agent = perfmon::agent("geometry");
///     // ... the agent's work ...
/// }
/// let report = pipeline.finish();
/// assert_eq!(report.agents[0].agent, "geometry");
/// ```
///
/// A guard is `!Send`, like `tracing`'s `EnteredSpan`: it must be dropped on
/// the thread that made it, because exiting a span elsewhere would corrupt
/// both threads' span stacks.
///
/// ```compile_fail
/// let guard = perfmon::agent("geometry");
/// std::thread::spawn(move || drop(guard)); // error: `AgentGuard` cannot be sent between threads
/// ```
#[inline]
pub fn agent(name: &str) -> AgentGuard {
    /// The one callsite of both paths below.
    #[inline(always)]
    fn make(name: &str) -> Span {
        crate::__perfmon_span!(agent, "agent", name; perfmon.sync = Empty,)
    }
    static SITE: HintSite = HintSite::new();
    if !tracing::level_enabled!(tracing::Level::INFO) {
        // The span comes out disabled: no layer to offer anything to.
        return AgentGuard::enter(make(name));
    }
    let offer = Offer::new(&SITE, name, RunKind::Agent);
    AgentGuard::enter(offer.made(make(name)))
}

/// Starts a tool run named `name` (a compiler, a search, a shell command),
/// as a child of the current span, and enters it on this thread until the
/// guard is dropped: [`agent()`] for tools.
///
/// A tool run is a run of kind [`RunKind::Tool`](crate::RunKind::Tool),
/// nested in the agent run that called it, with the same timing, outcomes
/// and statistics as an agent's; it streams `tool_started` and
/// `tool_completed`. Lines written with [`output!`](crate::output) while it
/// runs are its output.
///
/// The span has target `perfmon`, level `INFO`, name `tool`, and the field
/// `perfmon.tool = name`.
///
/// ```
/// let monitor = perfmon::Monitor::new();
/// # let _s = tracing::subscriber::set_default(
/// #     tracing_subscriber::layer::SubscriberExt::with(tracing_subscriber::registry(), monitor.layer()));
/// let pipeline = monitor.start_pipeline("proj_1");
/// {
///     let _agent = perfmon::agent("codegen");
///     let tool = perfmon::tool("cargo-test");
///     perfmon::output!(stream = "stdout", "running 3 tests");
///     tool.fail("1 test failed");
/// }
/// let report = pipeline.finish();
/// let test = &report.agents[1];
/// assert_eq!((test.agent.as_str(), test.kind), ("cargo-test", perfmon::RunKind::Tool));
/// assert_eq!(test.parent, Some(0)); // called by codegen
/// assert_eq!(test.output[0].line, "running 3 tests");
/// ```
#[inline]
pub fn tool(name: &str) -> ToolGuard {
    /// The one callsite of both paths below.
    #[inline(always)]
    fn make(name: &str) -> Span {
        crate::__perfmon_span!(tool, "tool", name; perfmon.sync = Empty,)
    }
    static SITE: HintSite = HintSite::new();
    if !tracing::level_enabled!(tracing::Level::INFO) {
        // The span comes out disabled: no layer to offer anything to.
        return ToolGuard(AgentGuard::enter(make(name)));
    }
    let offer = Offer::new(&SITE, name, RunKind::Tool);
    ToolGuard(AgentGuard::enter(offer.made(make(name))))
}

/// A tool run in progress on this thread; from [`tool()`]. Ends as
/// [`AgentGuard`] does: dropped (succeeded), [`fail`](ToolGuard::fail), or
/// `panicked` when dropped while panicking. `!Send`, like [`AgentGuard`].
#[must_use = "a tool run ends when its guard is dropped: bind it with `let _tool = ...`"]
#[derive(Debug)]
pub struct ToolGuard(AgentGuard);

impl ToolGuard {
    /// Ends the run as succeeded (the same as dropping the guard).
    #[inline]
    pub fn succeed(self) {
        self.0.succeed();
    }

    /// Ends the run as failed, keeping `error`'s `Display` text.
    pub fn fail(self, error: impl fmt::Display) {
        self.0.fail(error);
    }

    /// The run's span.
    pub fn span(&self) -> &Span {
        self.0.span()
    }
}

/// An agent run in progress on this thread; from [`agent()`].
#[must_use = "an agent run ends when its guard is dropped: bind it with `let _agent = ...`"]
pub struct AgentGuard {
    span: EnteredSpan,
    done: bool,
    _not_send: NotSend,
}

/// Makes the guards `!Send` with a type name that says what to do:
/// holding a guard across `.await` in a future that must be `Send`
/// (`tokio::spawn`) fails with "the trait `Send` is not implemented for
/// `*const (dyn UseTrackAgentOrTrackPipelineForFuturesNotAGuardAcrossAwait ...)`",
/// where rustc would otherwise name only an internal pointer. (The guard's
/// entered span is `!Send` already; this only names the reason.)
type NotSend = PhantomData<*const dyn UseTrackAgentOrTrackPipelineForFuturesNotAGuardAcrossAwait>;

/// Never implemented: its name is the hint rustc prints (see [`NotSend`]).
trait UseTrackAgentOrTrackPipelineForFuturesNotAGuardAcrossAwait {}

impl fmt::Debug for AgentGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentGuard")
            .field("span", &self.span)
            .finish()
    }
}

impl AgentGuard {
    #[inline]
    fn enter(span: Span) -> Self {
        unseen::check(&span);
        AgentGuard {
            span: span.entered(),
            done: false,
            _not_send: PhantomData,
        }
    }

    /// Ends the run as succeeded (the same as dropping the guard).
    #[inline]
    pub fn succeed(mut self) {
        self.done = true;
    }

    /// Ends the run as failed, keeping `error`'s `Display` text.
    pub fn fail(mut self, error: impl fmt::Display) {
        // The text is made once, by the layer, unless `otel` also needs it.
        #[cfg(not(feature = "otel"))]
        self.span
            .record(ERROR_FIELD, tracing::field::display(error));
        #[cfg(feature = "otel")]
        {
            let error = error.to_string();
            self.span.record(ERROR_FIELD, error.as_str());
            otel_status(&self.span, &Outcome::Failed { error });
        }
        self.done = true;
    }

    /// The run's span.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

impl Drop for AgentGuard {
    #[inline]
    fn drop(&mut self) {
        if !self.done && !self.span.is_disabled() && std::thread::panicking() {
            otel_status(&self.span, &Outcome::Panicked);
            self.span.record(OUTCOME_FIELD, Outcome::Panicked.as_str());
        }
    }
}

/// A pipeline in progress, entered on this thread; from [`Monitor::start_pipeline`](crate::Monitor::start_pipeline).
///
/// Agents started on this thread while the guard lives belong to the
/// pipeline, and so do agents on other threads or tasks whose spans descend
/// from [`PipelineGuard::span`] (pass it along with `Instrument::instrument`
/// or `Span::in_scope`, or create the tracked future here and spawn it:
/// [`TrackAgentExt::track_agent`] captures the current span).
///
/// [`finish`](PipelineGuard::finish) or [`fail`](PipelineGuard::fail) end the
/// pipeline and return its report; dropping the guard finishes it too
/// (`panicked` if the thread is panicking). Like [`AgentGuard`] it is
/// `!Send`: in async code use [`Monitor::track_pipeline`](crate::Monitor::track_pipeline) instead of holding
/// a guard across `.await`.
#[must_use = "a pipeline ends when its guard is dropped: bind it with `let pipeline = ...`"]
pub struct PipelineGuard {
    span: EnteredSpan,
    recorder: PipelineRecorder,
    done: bool,
    _not_send: NotSend,
}

impl fmt::Debug for PipelineGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineGuard")
            .field("id", &self.recorder.id)
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

/// What a pipeline's guard or future needs to end it and fetch its report.
struct PipelineRecorder {
    state: Option<Arc<PipelineState>>,
    recorder: Arc<Recorder>,
    id: String,
    start: quanta::Instant,
    started_at: SystemTime,
}

impl PipelineRecorder {
    /// Opens the pipeline's span (not entered).
    fn open(recorder: Arc<Recorder>, id: String) -> (Span, Self) {
        let start = recorder.now();
        let span = crate::__perfmon_span!(pipeline, "pipeline", id.as_str(););
        unseen::check(&span);
        let state = span
            .with_subscriber(|(id, dispatch)| WithPipeline::lookup(dispatch, id, &recorder))
            .flatten();
        let recorder = PipelineRecorder {
            state,
            started_at: recorder.system_time(start),
            recorder,
            id,
            start,
        };
        (span, recorder)
    }

    fn end(&self, span: &Span, outcome: Outcome) -> PipelineReport {
        record_outcome(span, &outcome);
        match self.state.as_ref().and_then(|s| s.report()) {
            Some(report) => PipelineReport::clone(&report),
            None => self.unrecorded(outcome, true),
        }
    }

    fn report_so_far(&self) -> PipelineReport {
        match &self.state {
            Some(state) => PipelineReport::clone(&self.recorder.report_so_far(state)),
            None => self.unrecorded(Outcome::Succeeded, false),
        }
    }

    /// The report of a pipeline no layer recorded: its id and duration only.
    fn unrecorded(&self, outcome: Outcome, finished: bool) -> PipelineReport {
        PipelineReport {
            id: self.id.clone(),
            run: 0,
            started_at: self.started_at,
            duration: self.recorder.now().saturating_duration_since(self.start),
            outcome,
            finished,
            agents: Vec::new(),
            bottlenecks: Vec::new(),
            critical_path: Vec::new(),
            critical_runs: Vec::new(),
            aggregated: Vec::new(),
            unfinished: Vec::new(),
            usage: crate::Usage::default(),
        }
    }
}

impl PipelineGuard {
    pub(crate) fn start(recorder: Arc<Recorder>, id: String) -> Self {
        let (span, recorder) = PipelineRecorder::open(recorder, id);
        PipelineGuard {
            span: span.entered(),
            recorder,
            done: false,
            _not_send: PhantomData,
        }
    }

    /// The pipeline's span, to parent work on other threads or tasks.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The pipeline's id.
    pub fn id(&self) -> &str {
        &self.recorder.id
    }

    /// The pipeline's monitor-unique run number, if a `PerfmonLayer` records it.
    pub fn run(&self) -> Option<u64> {
        self.recorder.state.as_ref().map(|s| s.run)
    }

    /// The report so far (`finished == false`).
    pub fn report_so_far(&self) -> PipelineReport {
        self.recorder.report_so_far()
    }

    /// Ends the pipeline as succeeded and returns its report.
    pub fn finish(mut self) -> PipelineReport {
        self.done = true;
        self.recorder.end(&self.span, Outcome::Succeeded)
    }

    /// Ends the pipeline as failed with `error`'s `Display` text and returns its report.
    pub fn fail(mut self, error: impl fmt::Display) -> PipelineReport {
        self.done = true;
        self.recorder.end(
            &self.span,
            Outcome::Failed {
                error: error.to_string(),
            },
        )
    }
}

impl Drop for PipelineGuard {
    fn drop(&mut self) {
        if !self.done {
            record_outcome(&self.span, &dropped_outcome(Outcome::Succeeded));
        }
    }
}

pin_project! {
    /// A future run as a pipeline; from [`Monitor::track_pipeline`](crate::Monitor::track_pipeline).
    #[must_use = "futures do nothing unless polled"]
    pub struct TrackedPipeline<F: Future> {
        // `None` once complete or while being dropped: either way it is
        // dropped inside its span (see `poll` and `drop`).
        #[pin]
        inner: Option<F>,
        span: Span,
        recorder: PipelineRecorder,
        error_of: fn(&F::Output) -> Option<String>,
        done: bool,
    }

    impl<F: Future> PinnedDrop for TrackedPipeline<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // A future dropped before completion is dropped inside its span,
            // so what it does while cancelled is attributed to it.
            if this.inner.is_some() {
                let _entered = this.span.enter();
                this.inner.set(None);
            }
            if !*this.done {
                record_outcome(this.span, &dropped_outcome(Outcome::Cancelled));
            }
        }
    }
}

impl<F: Future> fmt::Debug for TrackedPipeline<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedPipeline")
            .field("id", &self.recorder.id)
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<F: Future> TrackedPipeline<F> {
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        id: String,
        inner: F,
        error_of: fn(&F::Output) -> Option<String>,
    ) -> Self {
        let (span, recorder) = PipelineRecorder::open(recorder, id);
        TrackedPipeline {
            inner: Some(inner),
            span,
            recorder,
            error_of,
            done: false,
        }
    }

    /// The pipeline's span.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

impl<F: Future> Future for TrackedPipeline<F> {
    type Output = (F::Output, PipelineReport);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let output = {
            let _entered = this.span.enter();
            // `None` once complete: polled again, it stays pending.
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            let output = std::task::ready!(inner.poll(cx));
            // Dropped here, inside the span already entered, so that
            // `drop` has nothing left to enter the span for.
            this.inner.set(None);
            output
        };
        *this.done = true;
        let outcome = match (this.error_of)(&output) {
            Some(error) => Outcome::Failed { error },
            None => Outcome::Succeeded,
        };
        let report = this.recorder.end(this.span, outcome);
        Poll::Ready((output, report))
    }
}

/// Times futures as agent runs.
///
/// ```
/// use perfmon::TrackAgentExt;
/// # async fn retrieve() -> u32 { 7 }
/// # async fn run() {
/// let docs = retrieve().track_agent("retrieval").await;
/// # }
/// ```
pub trait TrackAgentExt: Future + Sized {
    /// Wraps the future in an agent span named `name`, a child of the
    /// current span (so it belongs to the current pipeline even when
    /// spawned). Busy time is the time spent being polled. Dropped before
    /// completion: `cancelled`; panicked while polled: `panicked`.
    fn track_agent(self, name: &str) -> TrackedAgent<Self> {
        TrackedAgent::new(self, name, |_| None)
    }

    /// Like [`track_agent`](TrackAgentExt::track_agent), and an `Err` output
    /// marks the run failed with the error's `Display` text.
    fn track_agent_result<T, E>(self, name: &str) -> TrackedAgent<Self>
    where
        Self: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        TrackedAgent::new(self, name, error_text)
    }

    /// Wraps the future in a tool span named `name`: like
    /// [`track_agent`](TrackAgentExt::track_agent), for a tool the current
    /// agent calls (`search(q).track_tool("web-search").await`).
    fn track_tool(self, name: &str) -> TrackedAgent<Self> {
        TrackedAgent::new_tool(self, name, |_| None)
    }

    /// Like [`track_tool`](TrackAgentExt::track_tool), and an `Err` output
    /// marks the run failed with the error's `Display` text.
    fn track_tool_result<T, E>(self, name: &str) -> TrackedAgent<Self>
    where
        Self: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        TrackedAgent::new_tool(self, name, error_text)
    }
}

impl<F: Future> TrackAgentExt for F {}

pin_project! {
    /// A future timed as an agent run; from [`TrackAgentExt`].
    #[must_use = "futures do nothing unless polled"]
    pub struct TrackedAgent<F: Future> {
        // `None` once complete or while being dropped: see `TrackedPipeline`.
        #[pin]
        inner: Option<F>,
        span: Span,
        error_of: fn(&F::Output) -> Option<String>,
        // Set for the pipeline futures of `#[track_pipeline]`: completing
        // records an outcome, which ends the pipeline in the layer.
        ends_pipeline: bool,
        done: bool,
        // `track_agent`'s and `track_tool`'s futures time their own polls
        // (`busy`): the layer's hooks, and the time polled so far.
        timing: Option<WithBusy>,
        busy_ns: u64,
        polled: bool,
    }

    impl<F: Future> PinnedDrop for TrackedAgent<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // A future dropped before completion is dropped inside its span,
            // so what it does while cancelled is attributed to it.
            if this.inner.is_some() {
                let _entered = this.span.enter();
                let start = this.timing.and_then(|t| t.now(this.span));
                this.inner.set(None);
                add_busy(this.timing, this.span, start, this.busy_ns, this.polled);
            }
            if !*this.done {
                let outcome = dropped_outcome(Outcome::Cancelled);
                otel_status(this.span, &outcome);
                this.span.record(OUTCOME_FIELD, outcome.as_str());
            }
            if let Some(timing) = *this.timing {
                hand_busy(timing, this.span, this.polled.then_some(*this.busy_ns));
            }
        }
    }
}

impl<F: Future> fmt::Debug for TrackedAgent<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedAgent")
            .field("span", &self.span)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<F: Future> TrackedAgent<F> {
    fn new(inner: F, name: &str, error_of: fn(&F::Output) -> Option<String>) -> Self {
        let offer = Offer::new(&busy::AGENT_SITE, name, RunKind::Agent);
        let span = crate::__perfmon_span!(agent, "agent", name;);
        let span = offer.made(span);
        Self::self_timed(span, inner, error_of)
    }

    fn new_tool(inner: F, name: &str, error_of: fn(&F::Output) -> Option<String>) -> Self {
        let offer = Offer::new(&busy::TOOL_SITE, name, RunKind::Tool);
        let span = crate::__perfmon_span!(tool, "tool", name;);
        let span = offer.made(span);
        Self::self_timed(span, inner, error_of)
    }

    /// A future of `track_agent`, `track_tool` or a tracked `async fn`: it
    /// times its own polls (its span's callsite is a `HintSite::timed()`).
    pub(crate) fn self_timed(
        span: Span,
        inner: F,
        error_of: fn(&F::Output) -> Option<String>,
    ) -> Self {
        let mut tracked = Self::from_span(span, inner, error_of, false);
        tracked.timing = WithBusy::of(&tracked.span);
        tracked
    }

    pub(crate) fn from_span(
        span: Span,
        inner: F,
        error_of: fn(&F::Output) -> Option<String>,
        ends_pipeline: bool,
    ) -> Self {
        unseen::check(&span);
        TrackedAgent {
            inner: Some(inner),
            span,
            error_of,
            ends_pipeline,
            done: false,
            timing: None,
            busy_ns: 0,
            polled: false,
        }
    }

    /// The run's span.
    pub fn span(&self) -> &Span {
        &self.span
    }
}

/// Adds the time since `start` to a self-timing future's busy time.
#[inline]
fn add_busy(
    timing: &Option<WithBusy>,
    span: &Span,
    start: Option<quanta::Instant>,
    busy_ns: &mut u64,
    polled: &mut bool,
) {
    let (Some(timing), Some(start)) = (timing, start) else {
        return;
    };
    if let Some(end) = timing.now(span) {
        let spent = end.saturating_duration_since(start);
        *busy_ns = busy_ns.saturating_add(u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX));
    }
    *polled = true;
}

/// Hands a self-timing future's busy time to the layer as its span is
/// dropped (the layer's `on_close` takes it), or through the dispatcher if
/// the span stays open (a clone or a child still holds it).
fn hand_busy(timing: WithBusy, span: &mut Span, busy_ns: Option<u64>) {
    let Some((id, dispatch)) =
        span.with_subscriber(|(id, dispatch)| (id.clone(), dispatch.clone()))
    else {
        return;
    };
    let owned = std::mem::replace(span, Span::none());
    if !busy::at_close(id.into_u64(), busy_ns, || drop(owned)) {
        timing.set(&dispatch, &id, busy_ns);
    }
}

impl<F: Future> Future for TrackedAgent<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let output = {
            let _entered = this.span.enter();
            // `None` once complete: polled again, it stays pending.
            let Some(inner) = this.inner.as_mut().as_pin_mut() else {
                return Poll::Pending;
            };
            let start = this.timing.and_then(|t| t.now(this.span));
            let Poll::Ready(output) = inner.poll(cx) else {
                add_busy(this.timing, this.span, start, this.busy_ns, this.polled);
                return Poll::Pending;
            };
            // Dropped here, inside the span already entered, so that
            // `drop` has nothing left to enter the span for.
            this.inner.set(None);
            add_busy(this.timing, this.span, start, this.busy_ns, this.polled);
            output
        };
        *this.done = true;
        let error = (this.error_of)(&output);
        if let Some(error) = &error {
            this.span.record(ERROR_FIELD, error.as_str());
            #[cfg(feature = "otel")]
            otel_status(
                this.span,
                &Outcome::Failed {
                    error: error.clone(),
                },
            );
        }
        if *this.ends_pipeline {
            let outcome = match error {
                Some(error) => Outcome::Failed { error },
                None => Outcome::Succeeded,
            };
            this.span.record(OUTCOME_FIELD, outcome.as_str());
        }
        Poll::Ready(output)
    }
}
