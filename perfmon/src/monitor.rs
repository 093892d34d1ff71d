//! [`Monitor`]: the handle users keep. It installs the layer, starts
//! pipelines, answers questions, and owns the background threads (event
//! dispatcher, exporters, sampler), which stop when the last handle drops.
//!
//! Above the recorder, the layer and the guards in the crate's dependency
//! order; construction is in `builder.rs`, which sits above this file.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::analysis;
use crate::events::Subscription;
use crate::exporter::{self, Control, Exporter, ExporterHandle};
use crate::guard::{PipelineGuard, TrackedPipeline};
use crate::layer::PerfmonLayer;
use crate::record::{Bottleneck, PipelineReport, PipelineSnapshot};
use crate::recorder::Recorder;
#[cfg(feature = "process")]
use crate::sampler::Sampler;
use crate::stats::{AgentStats, Overview, ProcessSample};
use crate::sync::lock;

/// How long dropping the last monitor waits for each exporter to finish.
const EXPORTER_GRACE: Duration = Duration::from_secs(2);
/// How long [`Monitor::flush`] waits for each exporter.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Collects timings from [`PerfmonLayer`] and answers questions about them.
///
/// Cheap to clone (an `Arc` inside), `Send` and `Sync`. Install its layer
/// with [`Monitor::layer`] (or use [`crate::init`]), then read with
/// [`overview`](Monitor::overview), [`agents`](Monitor::agents),
/// [`pipeline`](Monitor::pipeline), [`subscribe`](Monitor::subscribe), …
///
/// # Pipelines that share an id
///
/// Every pipeline gets a monitor-unique `run` number. Two pipelines running
/// at once with the same id are recorded apart (each its own runs, report
/// and bottlenecks); [`Monitor::pipeline`] returns the one started last, and
/// [`Monitor::pipeline_run`] finds either by its run number.
///
/// # Dropping the last handle
///
/// Stops and joins every thread the monitor started: the process sampler,
/// the event dispatcher (after it sends what is queued; subscriptions then
/// end) and the exporters (after a last flush, each within 2 s); and, if no
/// other monitor is alive in the process, the thread that counts finished
/// runs in the statistics (`perfmon-runs`, after a last pass). A layer
/// still installed keeps recording statistics, with no one left to read them.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

/// What every clone of a monitor shares; dropped with the last clone.
struct Shared {
    recorder: Arc<Recorder>,
    /// This monitor's share of the thread that applies finished runs.
    _collector: Option<crate::pending::CollectorUse>,
    exporters: Mutex<Vec<Arc<Control>>>,
    #[cfg(feature = "process")]
    sampler: Mutex<Option<Sampler>>,
    /// The sidecar's replay ring, kept across sidecar restarts (feature `ws`).
    #[cfg(feature = "ws")]
    ws_hub: std::sync::OnceLock<Arc<perfmon_ws::Hub>>,
    /// The history file this monitor writes (feature `history`).
    #[cfg(feature = "history")]
    history: Option<crate::history::History>,
    /// The alert rules' states, and the evaluator's thread (feature `alerts`).
    #[cfg(feature = "alerts")]
    alerts: Option<(Arc<crate::alerts::Board>, std::sync::OnceLock<Arc<Control>>)>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Every run closed so far reaches the statistics and `metrics`.
        crate::pending::flush();
        #[cfg(feature = "process")]
        if let Some(sampler) = lock(&self.sampler).take() {
            sampler.stop();
        }
        self.recorder.bus.close();
        for control in lock(&self.exporters).drain(..) {
            control.stop_and_join(EXPORTER_GRACE);
        }
    }
}

// Recording keeps its state consistent across panics (poisoned locks are
// recovered, counters are atomics), so a monitor may be used inside and
// after `catch_unwind`.
impl std::panic::UnwindSafe for Monitor {}
impl std::panic::RefUnwindSafe for Monitor {}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.shared.recorder.config)
            .field("overview", &self.overview())
            .finish_non_exhaustive()
    }
}

impl Monitor {
    /// A monitor around `recorder`, owning the sampler if one was started.
    pub(crate) fn from_recorder(
        recorder: Arc<Recorder>,
        #[cfg(feature = "process")] sampler: Option<Sampler>,
        #[cfg(feature = "history")] history: Option<crate::history::History>,
        #[cfg(feature = "alerts")] alerts: Option<(
            crate::alerts::Evaluator,
            Arc<crate::alerts::Board>,
        )>,
    ) -> Self {
        #[cfg(feature = "alerts")]
        let (evaluator, board) = match alerts {
            Some((e, b)) => (Some(e), Some(b)),
            None => (None, None),
        };
        // Without it, runs are still counted exactly (by the threads that
        // close them and by every read), but `metrics` may lag.
        let collector = crate::pending::CollectorUse::acquire()
            .inspect_err(|_| {
                recorder
                    .counters
                    .thread_failures
                    .fetch_add(1, Ordering::Relaxed);
            })
            .ok();
        let monitor = Monitor {
            shared: Arc::new(Shared {
                recorder,
                _collector: collector,
                exporters: Mutex::new(Vec::new()),
                #[cfg(feature = "process")]
                sampler: Mutex::new(sampler),
                #[cfg(feature = "ws")]
                ws_hub: std::sync::OnceLock::new(),
                #[cfg(feature = "history")]
                history,
                #[cfg(feature = "alerts")]
                alerts: board.map(|b| (b, std::sync::OnceLock::new())),
            }),
        };
        #[cfg(feature = "history")]
        monitor.start_history_writer();
        #[cfg(feature = "alerts")]
        if let Some(evaluator) = evaluator {
            monitor.start_alert_evaluator(evaluator);
        }
        monitor
    }

    /// Starts the alert evaluator on an exporter thread of its own; one
    /// that cannot start is counted in `Overview::thread_failures`.
    #[cfg(feature = "alerts")]
    fn start_alert_evaluator(&self, evaluator: crate::alerts::Evaluator) {
        match self.add_boxed_exporter(Box::new(evaluator), "perfmon::alerts".into()) {
            Ok(handle) => {
                if let Some((_, control)) = &self.shared.alerts {
                    let _ = control.set(handle.control());
                }
            }
            Err(_) => self.recorder().bus.count_thread_failure(),
        }
    }

    /// Every alert rule's state ([`MonitorBuilder::alert`](crate::MonitorBuilder::alert)),
    /// judged now on everything recorded before the call (feature `alerts`).
    /// Empty without rules.
    #[cfg(feature = "alerts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
    pub fn alerts(&self) -> Vec<crate::Alert> {
        let Some((board, control)) = &self.shared.alerts else {
            return Vec::new();
        };
        if let Some(control) = control.get() {
            // A stopped or slow evaluator leaves its last judgement.
            let _ = exporter::flush(control, FLUSH_TIMEOUT);
        }
        board.alerts()
    }

    /// What each alert webhook delivered and failed to (feature `alerts`).
    #[cfg(feature = "alerts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
    pub fn alert_webhooks(&self) -> Vec<crate::WebhookStats> {
        self.shared
            .alerts
            .as_ref()
            .map(|(board, _)| board.webhooks())
            .unwrap_or_default()
    }

    /// Starts the history writer on an exporter thread of its own.
    #[cfg(feature = "history")]
    fn start_history_writer(&self) {
        let Some(history) = &self.shared.history else {
            return;
        };
        let Some(writer) = history.take_writer(self.recorder()) else {
            history.count_failure("another monitor already writes this History");
            return;
        };
        // Pipeline-level events only: runs publish nothing for the writer.
        let subscription = Subscription::reports_only(&self.recorder().bus);
        if self
            .add_exporter_with(writer, subscription, "perfmon::History".into())
            .is_err()
        {
            history.count_failure("its thread could not be spawned");
        }
    }

    /// The history this monitor writes and reads (feature `history`, with
    /// [`MonitorBuilder::history`](crate::MonitorBuilder::history)).
    #[cfg(feature = "history")]
    #[cfg_attr(docsrs, doc(cfg(feature = "history")))]
    pub fn history(&self) -> Option<&crate::history::History> {
        self.shared.history.as_ref()
    }

    /// Counts every run closed so far in its agent's statistics (and the
    /// `metrics` recorder), then waits until every exporter (the history
    /// writer among them) has handled every event published before this
    /// call and flushed, for at most 5 s each: after it returns `Ok`, the
    /// history file holds every pipeline finished before the call.
    ///
    /// Reads ([`agents`](Self::agents), [`overview`](Self::overview),
    /// reports) count closed runs by themselves: runs are applied in
    /// batches off the closing thread, and every read applies what is
    /// pending first.
    ///
    /// # Errors
    ///
    /// The first exporter that did not get there: [`ExporterError::Timeout`](crate::ExporterError)
    /// (it is blocked or slower than the stream). A stopped exporter is skipped.
    pub fn flush(&self) -> Result<(), crate::ExporterError> {
        crate::pending::flush();
        let controls: Vec<Arc<Control>> = lock(&self.shared.exporters).clone();
        for control in controls {
            match exporter::flush(&control, FLUSH_TIMEOUT) {
                Ok(()) | Err(crate::ExporterError::Stopped) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn recorder(&self) -> &Arc<Recorder> {
        &self.shared.recorder
    }

    /// Whether this monitor exports through the `metrics` facade.
    #[cfg(feature = "ws")]
    pub(crate) fn metrics_enabled(&self) -> bool {
        self.recorder().config.metrics
    }

    /// The sidecar's hub slot (feature `ws`).
    #[cfg(feature = "ws")]
    pub(crate) fn ws_hub(&self) -> &std::sync::OnceLock<Arc<perfmon_ws::Hub>> {
        &self.shared.ws_hub
    }

    /// The tracing layer that records into this monitor. Add it to a
    /// `tracing_subscriber::registry()` once; each layer you add records
    /// every span again. The layers of several monitors can share one
    /// subscriber: each monitor sees every span and keeps its own state.
    #[must_use = "the layer records nothing until it is added to a subscriber: registry().with(monitor.layer())"]
    pub fn layer<S>(&self) -> PerfmonLayer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        PerfmonLayer::new(Arc::clone(self.recorder()))
    }

    /// Opens a pipeline span named `id` and enters it on this thread: agents
    /// started while the guard lives belong to the pipeline. See [`PipelineGuard`].
    ///
    /// Pipelines are recorded by whichever [`PerfmonLayer`] is installed in
    /// the current subscriber (normally this monitor's).
    pub fn start_pipeline(&self, id: impl Into<String>) -> PipelineGuard {
        PipelineGuard::start(Arc::clone(self.recorder()), id.into())
    }

    /// Runs `future` as a pipeline named `id`, for async code: the future is
    /// polled inside the pipeline's span, so agents it starts, and tracked
    /// futures it spawns, belong to the pipeline. Resolves to the future's
    /// output and the pipeline's report. Dropped early: `cancelled`.
    ///
    /// ```
    /// # use tracing_subscriber::prelude::*;
    /// # let monitor = perfmon::Monitor::new();
    /// # let _s = tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()));
    /// use perfmon::TrackAgentExt;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let (answer, report) = monitor
    ///     .track_pipeline("proj_7", async { async { 42 }.track_agent("physics").await })
    ///     .await;
    /// assert_eq!(answer, 42);
    /// assert_eq!(report.agents[0].agent, "physics");
    /// # });
    /// ```
    pub fn track_pipeline<F: Future>(
        &self,
        id: impl Into<String>,
        future: F,
    ) -> TrackedPipeline<F> {
        TrackedPipeline::new(Arc::clone(self.recorder()), id.into(), future, |_| None)
    }

    /// Like [`track_pipeline`](Monitor::track_pipeline); an `Err` output
    /// marks the pipeline failed with the error's `Display` text.
    pub fn track_pipeline_result<F, T, E>(
        &self,
        id: impl Into<String>,
        future: F,
    ) -> TrackedPipeline<F>
    where
        F: Future<Output = Result<T, E>>,
        E: fmt::Display,
    {
        TrackedPipeline::new(Arc::clone(self.recorder()), id.into(), future, |out| {
            out.as_ref().err().map(ToString::to_string)
        })
    }

    /// Totals across the monitor.
    pub fn overview(&self) -> Overview {
        let recorder = self.recorder();
        let c = &recorder.counters;
        let finished = c.pipelines_finished.load(Ordering::Relaxed);
        // Summed per agent here (cold path) rather than kept in global
        // counters that every run on every thread would have to bump.
        let (agent_runs_total, agent_failures_total) = recorder
            .entries()
            .iter()
            .map(|e| e.counts())
            .fold((0, 0), |(r, f), (er, ef)| (r + er, f + ef));
        let total_ns = c.pipeline_nanos_total.load(Ordering::Relaxed);
        let mut usage = *crate::sync::lock(&c.usage_outside_runs);
        for entry in recorder.entries() {
            usage.add(entry.usage());
        }
        Overview {
            uptime: recorder.uptime(),
            pipelines_total: c.pipelines_total.load(Ordering::Relaxed),
            pipelines_active: recorder.active_count() as u64,
            pipelines_failed: c.pipelines_failed.load(Ordering::Relaxed),
            agent_runs_total,
            agent_failures_total,
            avg_pipeline_duration: Duration::from_nanos(
                total_ns.checked_div(finished).unwrap_or(0),
            ),
            agents: recorder.agents.len() as u64,
            agents_overflowed: c.agents_overflowed.load(Ordering::Relaxed),
            events_published: recorder.bus.published(),
            events_dropped: recorder.bus.dropped(),
            thread_failures: c.thread_failures.load(Ordering::Relaxed)
                + recorder.bus.thread_failures(),
            spans_filtered: crate::unseen::disabled_spans(),
            runs_outside_pipeline: c.runs_outside_pipeline.load(Ordering::Relaxed),
            usage: usage.to_usage(),
            output_lines: c.output_lines.load(Ordering::Relaxed),
            output_lines_cut: c.output_lines_cut.load(Ordering::Relaxed),
            output_lines_dropped: c.output_lines_dropped.load(Ordering::Relaxed),
        }
    }

    /// Finished pipelines' durations by outcome, in the order of
    /// `Outcome::as_str`'s names, for the Prometheus exposition.
    #[cfg(feature = "ws")]
    pub(crate) fn pipeline_histograms(&self) -> [crate::stats::OutcomeCell; 4] {
        self.recorder().pipeline_durations()
    }

    /// Pipelines running now, oldest first.
    pub fn active_pipelines(&self) -> Vec<PipelineSnapshot> {
        let recorder = self.recorder();
        let now = recorder.now();
        recorder
            .active_pipelines()
            .iter()
            .map(|p| p.snapshot(now))
            .collect()
    }

    /// Up to `n` finished pipelines, newest first. With a history
    /// (feature `history`), pipelines that are no longer in memory (from
    /// before a restart, or older than `recent_capacity`) follow from the file.
    pub fn recent_pipelines(&self, n: usize) -> Vec<PipelineReport> {
        #[allow(unused_mut)]
        let mut list: Vec<PipelineReport> = self
            .recorder()
            .recent(n)
            .iter()
            .map(|r| PipelineReport::clone(r))
            .collect();
        #[cfg(feature = "history")]
        if let Some(history) = self.history()
            && list.len() < n
        {
            let in_memory: Vec<u64> = self
                .recorder()
                .recent(usize::MAX)
                .iter()
                .map(|r| r.run)
                .collect();
            list.extend(history.recent_except(n - list.len(), &in_memory));
        }
        list
    }

    /// The pipeline with this id: the newest active one (its report so far,
    /// `finished == false`), else the newest finished one still kept (in
    /// memory, then in the history file if there is one).
    pub fn pipeline(&self, id: &str) -> Option<PipelineReport> {
        let recorder = self.recorder();
        let active = recorder
            .active_pipelines()
            .into_iter()
            .rev()
            .find(|p| &*p.id == id);
        if let Some(state) = active {
            return Some(PipelineReport::clone(&recorder.report_so_far(&state)));
        }
        let found = recorder
            .find_recent(|r| r.id == id)
            .map(|r| PipelineReport::clone(&r));
        #[cfg(feature = "history")]
        if found.is_none()
            && let Some(history) = self.history()
        {
            return history.stored_pipeline(id);
        }
        found
    }

    /// The pipeline with this run number (see [`PipelineReport::run`]).
    pub fn pipeline_run(&self, run: u64) -> Option<PipelineReport> {
        let recorder = self.recorder();
        if let Some(state) = recorder.active_run(run) {
            return Some(PipelineReport::clone(&recorder.report_so_far(&state)));
        }
        recorder
            .find_recent(|r| r.run == run)
            .map(|r| PipelineReport::clone(&r))
    }

    /// Statistics of every agent seen, by name.
    pub fn agents(&self) -> Vec<AgentStats> {
        let mut list: Vec<AgentStats> = self
            .recorder()
            .entries()
            .iter()
            .map(|e| e.stats())
            .collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        list
    }

    /// Statistics of one agent, by name.
    pub fn agent_stats(&self, name: &str) -> Option<AgentStats> {
        self.recorder()
            .entries()
            .iter()
            .find(|e| &*e.name == name)
            .map(|e| e.stats())
    }

    /// Statistics of one agent.
    #[deprecated(
        since = "0.2.0",
        note = "renamed to `agent_stats`: `perfmon::agent()` starts a run, this reads statistics"
    )]
    pub fn agent(&self, name: &str) -> Option<AgentStats> {
        self.agent_stats(name)
    }

    /// Per-agent, per-outcome histograms, for the Prometheus exposition.
    #[cfg(feature = "ws")]
    pub(crate) fn agent_histograms(&self) -> Vec<(Arc<str>, [crate::stats::OutcomeCell; 4])> {
        let mut list: Vec<_> = self
            .recorder()
            .entries()
            .iter()
            .map(|e| (Arc::clone(&e.name), e.by_outcome()))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// Per-agent usage (agents that reported some), for the Prometheus exposition.
    #[cfg(feature = "ws")]
    pub(crate) fn agent_usages(&self) -> Vec<(Arc<str>, crate::usage::UsageSum)> {
        let mut list: Vec<_> = self
            .recorder()
            .entries()
            .iter()
            .map(|e| (Arc::clone(&e.name), e.usage()))
            .filter(|(_, u)| !u.is_zero())
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }

    /// The `n` agents with the highest mean wall time, slowest first.
    pub fn slowest_agents(&self, n: usize) -> Vec<AgentStats> {
        let mut list = self.agents();
        list.retain(|a| a.runs > 0);
        list.sort_by(|a, b| b.mean.cmp(&a.mean).then_with(|| a.agent.cmp(&b.agent)));
        list.truncate(n);
        list
    }

    /// Fleet-wide bottlenecks: agents whose summed time (on the monitor's
    /// [`BottleneckBasis`](crate::BottleneckBasis)) across the kept recent
    /// pipelines exceeds the threshold × those pipelines' summed wall time.
    pub fn fleet_bottlenecks(&self) -> Vec<Bottleneck> {
        let recent = self.recorder().recent(usize::MAX);
        let mut per_agent: HashMap<&str, (Duration, Duration)> = HashMap::new();
        let mut wall = Duration::ZERO;
        for report in &recent {
            wall += report.duration;
            for run in &report.agents {
                let t = per_agent.entry(&run.agent).or_default();
                t.0 += run.duration;
                t.1 += run.self_time;
            }
            for agg in &report.aggregated {
                let t = per_agent.entry(&agg.agent).or_default();
                t.0 += agg.total;
                t.1 += agg.self_time;
            }
        }
        analysis::bottlenecks(
            per_agent.into_iter().map(|(a, (w, s))| (a, w, s)),
            wall,
            self.recorder().config.rule,
        )
    }

    /// The process sampler's latest reading (feature `process`, with
    /// [`MonitorBuilder::process_sampler`](crate::MonitorBuilder)); `None`
    /// before the first sample or without a sampler.
    pub fn process_sample(&self) -> Option<ProcessSample> {
        self.recorder().last_sample()
    }

    /// A live feed of events. It never slows the recorder: see [`Subscription`].
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(&self.recorder().bus)
    }

    /// Runs `exporter` on its own thread, fed with every event from now on.
    /// The handle flushes or removes it; dropping the handle leaves it
    /// running until the last `Monitor` is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Thread`](crate::Error::Thread): the exporter thread could not be spawned.
    pub fn add_exporter<E: Exporter>(&self, exporter: E) -> Result<ExporterHandle, crate::Error> {
        self.add_boxed_exporter(Box::new(exporter), std::any::type_name::<E>().to_owned())
    }

    fn add_boxed_exporter(
        &self,
        exporter: Box<dyn Exporter>,
        name: String,
    ) -> Result<ExporterHandle, crate::Error> {
        self.add_exporter_with(exporter, self.subscribe(), name)
    }

    fn add_exporter_with(
        &self,
        exporter: Box<dyn Exporter>,
        subscription: Subscription,
        name: String,
    ) -> Result<ExporterHandle, crate::Error> {
        let bus = &self.recorder().bus;
        let handle =
            exporter::spawn(bus, subscription, exporter, name).map_err(crate::Error::Thread)?;
        let mut exporters = lock(&self.shared.exporters);
        exporters.retain(|c| !c.has_exited());
        exporters.push(handle.control());
        Ok(handle)
    }

    /// The bottleneck threshold this monitor uses.
    pub fn bottleneck_threshold(&self) -> f64 {
        self.recorder().config.rule.threshold
    }

    /// Which time this monitor judges bottlenecks on.
    pub fn bottleneck_basis(&self) -> crate::BottleneckBasis {
        self.recorder().config.rule.basis
    }
}
