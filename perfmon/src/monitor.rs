//! [`Monitor`]: the handle users keep, and its builder.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::events::{Bus, EventKind, Exporter, Subscription};
use crate::guard::PipelineGuard;
use crate::layer::PerfmonLayer;
use crate::pipeline::PipelineState;
use crate::record::{Bottleneck, Outcome, PipelineReport, PipelineSnapshot};
use crate::stats::{AgentStats, AgentTable, Counters, Overview};
use crate::{analysis, metrics};

/// The default share of a pipeline's wall time above which an agent is a bottleneck.
pub const DEFAULT_BOTTLENECK_THRESHOLD: f64 = 0.30;

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
#[derive(Clone)]
pub struct Monitor {
    pub(crate) inner: Arc<Inner>,
}

// Recording keeps its state consistent across panics (poisoned locks are
// recovered, counters are atomics), so a monitor may be used inside and
// after `catch_unwind`.
impl std::panic::UnwindSafe for Monitor {}
impl std::panic::RefUnwindSafe for Monitor {}

impl fmt::Debug for Monitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Monitor")
            .field("config", &self.inner.config)
            .field("overview", &self.overview())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) threshold: f64,
    pub(crate) recent_capacity: usize,
    pub(crate) max_runs_per_pipeline: usize,
    pub(crate) metrics: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) clock: quanta::Clock,
    base: quanta::Instant,
    base_system: SystemTime,
    pub(crate) agents: AgentTable,
    pub(crate) counters: Counters,
    pub(crate) bus: Arc<Bus>,
    active: Mutex<HashMap<u64, Arc<PipelineState>>>,
    recent: Mutex<VecDeque<Arc<PipelineReport>>>,
    next_run: AtomicU64,
    /// The sidecar's replay ring, kept across sidecar restarts (feature `ws`).
    #[cfg(feature = "ws")]
    pub(crate) ws_hub: std::sync::OnceLock<Arc<perfmon_ws::Hub>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// Wall-clock time of a monotonic instant, without reading the system clock.
    pub(crate) fn system_time(&self, at: quanta::Instant) -> SystemTime {
        self.base_system + at.saturating_duration_since(self.base)
    }

    pub(crate) fn now(&self) -> quanta::Instant {
        self.clock.now()
    }

    pub(crate) fn publish(
        &self,
        pipeline: Option<Arc<str>>,
        at: quanta::Instant,
        kind: impl FnOnce() -> EventKind,
    ) {
        if self.bus.is_active() {
            self.bus.publish(pipeline, self.system_time(at), kind());
        }
    }

    pub(crate) fn pipeline_started(&self, id: Arc<str>, at: quanta::Instant) -> Arc<PipelineState> {
        let run = self.next_run.fetch_add(1, Ordering::Relaxed) + 1;
        let state = Arc::new(PipelineState::new(
            Arc::clone(&id),
            run,
            at,
            self.system_time(at),
            self.config.max_runs_per_pipeline,
        ));
        self.counters
            .pipelines_total
            .fetch_add(1, Ordering::Relaxed);
        let active = {
            let mut active = lock(&self.active);
            active.insert(run, Arc::clone(&state));
            active.len() as u64
        };
        if self.config.metrics {
            metrics::pipeline_started(active);
        }
        self.publish(Some(id), at, || EventKind::PipelineStarted { run });
        state
    }

    /// Ends `state` (once) and files its report.
    pub(crate) fn finish_pipeline(&self, state: &PipelineState, outcome: Outcome) {
        let end = self.now();
        let Some(report) = state.finish(end, outcome, self.config.threshold) else {
            return;
        };
        let active = {
            let mut active = lock(&self.active);
            active.remove(&state.run);
            active.len() as u64
        };
        let c = &self.counters;
        c.pipelines_finished.fetch_add(1, Ordering::Relaxed);
        c.pipelines_failed
            .fetch_add(u64::from(report.outcome.is_failure()), Ordering::Relaxed);
        c.pipeline_nanos_total.fetch_add(
            u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if self.config.metrics {
            metrics::pipeline_finished(report.duration, &report.outcome, active);
        }
        {
            let mut recent = lock(&self.recent);
            if recent.len() >= self.config.recent_capacity {
                recent.pop_back();
            }
            recent.push_front(Arc::clone(&report));
        }
        let id = Arc::clone(&state.id);
        self.publish(Some(id), end, || EventKind::PipelineCompleted(report));
    }

    pub(crate) fn active_pipelines(&self) -> Vec<Arc<PipelineState>> {
        let mut list: Vec<_> = lock(&self.active).values().cloned().collect();
        list.sort_by_key(|p| p.run);
        list
    }
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    /// A monitor with default settings. See [`Monitor::builder`].
    pub fn new() -> Self {
        Monitor::builder().build()
    }

    /// Configures a monitor.
    pub fn builder() -> MonitorBuilder {
        MonitorBuilder::default()
    }

    /// The tracing layer that records into this monitor. Add it to a
    /// `tracing_subscriber::registry()` once; each layer you add records
    /// every span again.
    pub fn layer<S>(&self) -> PerfmonLayer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        PerfmonLayer::new(Arc::clone(&self.inner))
    }

    /// Opens a pipeline span named `id` and enters it on this thread: agents
    /// started while the guard lives belong to the pipeline. See [`PipelineGuard`].
    ///
    /// Pipelines are recorded by whichever [`PerfmonLayer`] is installed in
    /// the current subscriber (normally this monitor's).
    pub fn start_pipeline(&self, id: impl Into<String>) -> PipelineGuard {
        PipelineGuard::start(self.clone(), id.into())
    }

    /// Totals across the monitor.
    pub fn overview(&self) -> Overview {
        let inner = &self.inner;
        let c = &inner.counters;
        let finished = c.pipelines_finished.load(Ordering::Relaxed);
        // Summed per agent here (cold path) rather than kept in global
        // counters that every run on every thread would have to bump.
        let (agent_runs_total, agent_failures_total) = inner
            .agents
            .entries()
            .iter()
            .map(|e| e.counts())
            .fold((0, 0), |(r, f), (er, ef)| (r + er, f + ef));
        let total_ns = c.pipeline_nanos_total.load(Ordering::Relaxed);
        Overview {
            uptime: inner.now().saturating_duration_since(inner.base),
            pipelines_total: c.pipelines_total.load(Ordering::Relaxed),
            pipelines_active: lock(&inner.active).len() as u64,
            pipelines_failed: c.pipelines_failed.load(Ordering::Relaxed),
            agent_runs_total,
            agent_failures_total,
            avg_pipeline_duration: Duration::from_nanos(
                total_ns.checked_div(finished).unwrap_or(0),
            ),
            agents: inner.agents.len() as u64,
            agents_overflowed: c.agents_overflowed.load(Ordering::Relaxed),
            events_published: inner.bus.published(),
            events_dropped: inner.bus.dropped(),
        }
    }

    /// Pipelines running now, oldest first.
    pub fn active_pipelines(&self) -> Vec<PipelineSnapshot> {
        let now = self.inner.now();
        self.inner
            .active_pipelines()
            .iter()
            .map(|p| p.snapshot(now))
            .collect()
    }

    /// Up to `n` finished pipelines, newest first.
    pub fn recent_pipelines(&self, n: usize) -> Vec<PipelineReport> {
        lock(&self.inner.recent)
            .iter()
            .take(n)
            .map(|r| PipelineReport::clone(r))
            .collect()
    }

    /// The pipeline with this id: the newest active one (its report so far,
    /// `finished == false`), else the newest finished one still kept.
    pub fn pipeline(&self, id: &str) -> Option<PipelineReport> {
        let inner = &self.inner;
        let active = inner
            .active_pipelines()
            .into_iter()
            .rev()
            .find(|p| &*p.id == id);
        if let Some(state) = active {
            return Some(PipelineReport::clone(
                &state.report_so_far(inner.now(), inner.config.threshold),
            ));
        }
        lock(&inner.recent)
            .iter()
            .find(|r| r.id == id)
            .map(|r| PipelineReport::clone(r))
    }

    /// The pipeline with this run number (see [`PipelineReport::run`]).
    pub fn pipeline_run(&self, run: u64) -> Option<PipelineReport> {
        let inner = &self.inner;
        let active = lock(&inner.active).get(&run).cloned();
        if let Some(state) = active {
            return Some(PipelineReport::clone(
                &state.report_so_far(inner.now(), inner.config.threshold),
            ));
        }
        lock(&inner.recent)
            .iter()
            .find(|r| r.run == run)
            .map(|r| PipelineReport::clone(r))
    }

    /// Statistics of every agent seen, by name.
    pub fn agents(&self) -> Vec<AgentStats> {
        let mut list: Vec<AgentStats> = self
            .inner
            .agents
            .entries()
            .iter()
            .map(|e| e.stats())
            .collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        list
    }

    /// Statistics of one agent.
    pub fn agent(&self, name: &str) -> Option<AgentStats> {
        self.inner
            .agents
            .entries()
            .iter()
            .find(|e| &*e.name == name)
            .map(|e| e.stats())
    }

    /// The `n` agents with the highest mean wall time, slowest first.
    pub fn slowest_agents(&self, n: usize) -> Vec<AgentStats> {
        let mut list = self.agents();
        list.retain(|a| a.runs > 0);
        list.sort_by(|a, b| b.mean.cmp(&a.mean).then_with(|| a.agent.cmp(&b.agent)));
        list.truncate(n);
        list
    }

    /// Fleet-wide bottlenecks: agents whose summed wall time across the kept
    /// recent pipelines exceeds the threshold × those pipelines' summed wall time.
    pub fn fleet_bottlenecks(&self) -> Vec<Bottleneck> {
        let recent = lock(&self.inner.recent);
        let mut per_agent: HashMap<&str, Duration> = HashMap::new();
        let mut wall = Duration::ZERO;
        for report in recent.iter() {
            wall += report.duration;
            for run in &report.agents {
                *per_agent.entry(&run.agent).or_default() += run.duration;
            }
            for agg in &report.aggregated {
                *per_agent.entry(&agg.agent).or_default() += agg.total;
            }
        }
        analysis::bottlenecks(per_agent, wall, self.inner.config.threshold)
    }

    /// A live feed of events. It never slows the recorder: see [`Subscription`].
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(&self.inner.bus)
    }

    /// Runs `exporter` on its own thread, fed with every event.
    ///
    /// # Errors
    ///
    /// The exporter thread could not be spawned.
    pub fn add_exporter(&self, exporter: impl Exporter) -> Result<(), crate::Error> {
        crate::events::spawn_exporter(self.subscribe(), Box::new(exporter))
            .map_err(crate::Error::Thread)
    }

    /// The bottleneck threshold this monitor uses.
    pub fn bottleneck_threshold(&self) -> f64 {
        self.inner.config.threshold
    }
}

/// Builds a [`Monitor`]. Out-of-range values panic at the builder call,
/// naming the valid range, like `tokio::runtime::Builder`.
#[derive(Debug)]
pub struct MonitorBuilder {
    config: Config,
    event_queue_capacity: usize,
    subscriber_capacity: usize,
    max_agents: usize,
    clock: Option<quanta::Clock>,
    #[cfg(feature = "process")]
    sampler: Option<Duration>,
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        MonitorBuilder {
            config: Config {
                threshold: DEFAULT_BOTTLENECK_THRESHOLD,
                recent_capacity: 1_000,
                max_runs_per_pipeline: 10_000,
                metrics: true,
            },
            event_queue_capacity: 8_192,
            subscriber_capacity: 4_096,
            max_agents: 1_000,
            clock: None,
            #[cfg(feature = "process")]
            sampler: None,
        }
    }
}

impl MonitorBuilder {
    /// Share of a pipeline's wall time above which an agent is a bottleneck.
    /// Default 0.30.
    ///
    /// # Panics
    ///
    /// If `share` is not in `(0, 1]`.
    #[track_caller]
    pub fn bottleneck_threshold(mut self, share: f64) -> Self {
        assert!(
            share > 0.0 && share <= 1.0,
            "bottleneck_threshold must be in (0, 1] (a share of the pipeline's time), got {share}"
        );
        self.config.threshold = share;
        self
    }

    /// How many finished pipeline reports to keep. Default 1,000.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn recent_capacity(mut self, n: usize) -> Self {
        assert!(n > 0, "recent_capacity must be at least 1, got 0");
        self.config.recent_capacity = n;
        self
    }

    /// How many agent runs a pipeline report keeps individually; runs past
    /// that are aggregated per agent (see `PipelineReport::aggregated`).
    /// Default 10,000.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn max_runs_per_pipeline(mut self, n: usize) -> Self {
        assert!(n > 0, "max_runs_per_pipeline must be at least 1, got 0");
        self.config.max_runs_per_pipeline = n;
        self
    }

    /// How many distinct agent names to track; runs of further names are
    /// counted under one more entry, `"(other)"`, and in
    /// `Overview::agents_overflowed`. Default 1,000.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn max_agents(mut self, n: usize) -> Self {
        assert!(n > 0, "max_agents must be at least 1, got 0");
        self.max_agents = n;
        self
    }

    /// Capacity of the queue between the recorder and the event dispatcher.
    /// When full, new events are dropped and counted in
    /// `Overview::events_dropped`. Default 8,192.
    ///
    /// # Panics
    ///
    /// If `n` is 0.
    #[track_caller]
    pub fn event_queue_capacity(mut self, n: usize) -> Self {
        assert!(n > 0, "event_queue_capacity must be at least 1, got 0");
        self.event_queue_capacity = n;
        self
    }

    /// How many events a [`Subscription`] may fall behind before it starts
    /// missing them. Default 4,096.
    ///
    /// # Panics
    ///
    /// If `n` is 0 or above `usize::MAX / 2`.
    #[track_caller]
    pub fn subscriber_capacity(mut self, n: usize) -> Self {
        assert!(
            n > 0 && n <= usize::MAX / 2,
            "subscriber_capacity must be in 1..={}, got {n}",
            usize::MAX / 2
        );
        self.subscriber_capacity = n;
        self
    }

    /// Whether to export through the `metrics` facade. Default `true`.
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.config.metrics = enabled;
        self
    }

    /// Uses a clock you advance by hand, for exact timings in tests.
    pub fn mock_clock(mut self, clock: &MockClock) -> Self {
        self.clock = Some(clock.clock.clone());
        self
    }

    /// Samples the process's CPU, memory and thread count every `interval`
    /// on a background thread, as `state_update` events and gauges.
    ///
    /// # Panics
    ///
    /// If `interval` is shorter than 100 ms.
    #[cfg(feature = "process")]
    #[track_caller]
    pub fn process_sampler(mut self, interval: Duration) -> Self {
        assert!(
            interval >= Duration::from_millis(100),
            "process_sampler interval must be at least 100ms, got {interval:?}"
        );
        self.sampler = Some(interval);
        self
    }

    /// Builds the monitor.
    pub fn build(self) -> Monitor {
        let clock = self.clock.unwrap_or_default();
        let base = clock.now();
        let inner = Arc::new(Inner {
            agents: AgentTable::new(self.max_agents, self.config.metrics),
            config: self.config,
            base,
            base_system: SystemTime::now(),
            clock,
            counters: Counters::default(),
            bus: Arc::new(Bus::new(
                self.event_queue_capacity,
                self.subscriber_capacity,
            )),
            active: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            next_run: AtomicU64::new(0),
            #[cfg(feature = "ws")]
            ws_hub: std::sync::OnceLock::new(),
        });
        let monitor = Monitor { inner };
        #[cfg(feature = "process")]
        if let Some(interval) = self.sampler {
            crate::sampler::spawn(&monitor, interval);
        }
        monitor
    }
}

/// A clock that only moves when told to, for tests with exact timings.
///
/// ```
/// use std::time::Duration;
/// let clock = perfmon::MockClock::new();
/// let monitor = perfmon::Monitor::builder().mock_clock(&clock).build();
/// clock.advance(Duration::from_millis(5));
/// # let _ = monitor;
/// ```
#[derive(Clone)]
pub struct MockClock {
    clock: quanta::Clock,
    mock: Arc<quanta::Mock>,
}

impl fmt::Debug for MockClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockClock")
            .field("now_ns", &self.mock.value())
            .finish()
    }
}

impl Default for MockClock {
    fn default() -> Self {
        MockClock::new()
    }
}

impl MockClock {
    /// A mock clock at zero.
    pub fn new() -> Self {
        let (clock, mock) = quanta::Clock::mock();
        MockClock { clock, mock }
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.mock.increment(by);
    }
}
