//! [`Recorder`]: the state every tracked span writes into. It is the core
//! that the layer, the guards and the sampler record into, and that
//! [`Monitor`](crate::Monitor) reads.
//!
//! Dependency order (no two modules import each other):
//!
//! ```text
//! outcome, fields, sync, coverage, unseen   names, encodings, small helpers
//!   → record, analysis, stats, pipeline, metrics, events   data and the event bus
//!   → pending                           finished runs on their way to stats and pipelines
//!   → recorder                          this file: the shared state
//!   → layer, guard, sampler             write into the recorder (hot path)
//!   → monitor, clock, builder, exporter read it, configure it, own its threads
//!   → ws                                the sidecar, on top of a Monitor
//! ```
//!
//! The hot path is `guard` → `layer` → `recorder` (plus the per-agent entry
//! in `stats` and the per-pipeline state in `pipeline`, reached through
//! the thread's buffer of finished runs in `pending`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::agent_table::AgentTable;
use crate::analysis::Rule;
use crate::events::{Bus, EventKind};
use crate::metrics;
use crate::outcome::Outcome;
use crate::pending;
use crate::pipeline::PipelineState;
use crate::record::PipelineReport;
use crate::stats::{AgentEntry, Counters, OutcomeCell, ProcessSample};
use crate::sync::lock;

/// Settings the recorder reads on the hot path.
#[derive(Debug, Clone)]
pub(crate) struct RecorderConfig {
    pub(crate) rule: Rule,
    pub(crate) recent_capacity: usize,
    pub(crate) max_runs_per_pipeline: usize,
    pub(crate) metrics: bool,
    /// Lines of output each run keeps for its report.
    pub(crate) max_output_lines: usize,
    /// Longer output lines are cut to this many bytes.
    pub(crate) max_output_line_bytes: usize,
}

/// The shared state behind a monitor and its layer.
#[derive(Debug)]
pub(crate) struct Recorder {
    pub(crate) config: RecorderConfig,
    clock: quanta::Clock,
    base: quanta::Instant,
    base_system: SystemTime,
    pub(crate) agents: AgentTable,
    pub(crate) counters: Counters,
    pub(crate) bus: Arc<Bus>,
    active: Mutex<HashMap<u64, Arc<PipelineState>>>,
    /// `active.len()`, readable without the lock (the hot path asks it
    /// for runs outside any pipeline).
    active_len: AtomicUsize,
    recent: Mutex<VecDeque<Arc<PipelineReport>>>,
    next_run: AtomicU64,
    /// The sampler's latest reading, if a sampler runs.
    last_sample: Mutex<Option<ProcessSample>>,
    /// Finished pipelines' durations by outcome (one update per pipeline).
    pipeline_durations: Mutex<[OutcomeCell; 4]>,
}

impl Recorder {
    pub(crate) fn new(
        config: RecorderConfig,
        clock: quanta::Clock,
        agents: AgentTable,
        bus: Bus,
    ) -> Self {
        Recorder {
            config,
            base: clock.now(),
            base_system: SystemTime::now(),
            clock,
            agents,
            counters: Counters::default(),
            bus: Arc::new(bus),
            active: Mutex::new(HashMap::new()),
            active_len: AtomicUsize::new(0),
            recent: Mutex::new(VecDeque::new()),
            next_run: AtomicU64::new(0),
            last_sample: Mutex::new(None),
            pipeline_durations: Mutex::new(std::array::from_fn(|_| OutcomeCell::new())),
        }
    }

    /// Wall-clock time of a monotonic instant, without reading the system clock.
    pub(crate) fn system_time(&self, at: quanta::Instant) -> SystemTime {
        self.base_system + at.saturating_duration_since(self.base)
    }

    pub(crate) fn now(&self) -> quanta::Instant {
        self.clock.now()
    }

    /// Keeps the sampler's latest reading.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn set_last_sample(&self, sample: ProcessSample) {
        *lock(&self.last_sample) = Some(sample);
    }

    /// Finished pipelines' durations by outcome, in `Outcome::index` order.
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn pipeline_durations(&self) -> [OutcomeCell; 4] {
        lock(&self.pipeline_durations).clone()
    }

    /// The sampler's latest reading.
    pub(crate) fn last_sample(&self) -> Option<ProcessSample> {
        *lock(&self.last_sample)
    }

    /// Time since the recorder was made.
    pub(crate) fn uptime(&self) -> Duration {
        self.now().saturating_duration_since(self.base)
    }

    /// Queues the event `kind()` builds, if anyone listens; never waits.
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

    /// Queues a pipeline-level event (a finished report, an alert) if
    /// anyone listens, reports-only subscribers included; never waits.
    pub(crate) fn publish_report(
        &self,
        pipeline: Option<Arc<str>>,
        at: quanta::Instant,
        kind: impl FnOnce() -> EventKind,
    ) {
        if self.bus.wants_reports() {
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
            self.active_len.store(active.len(), Ordering::Relaxed);
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
        // Every run that closed before this call is in the report.
        pending::flush();
        let Some(report) = state.finish(end, outcome, self.config.rule) else {
            return;
        };
        let active = {
            let mut active = lock(&self.active);
            active.remove(&state.run);
            self.active_len.store(active.len(), Ordering::Relaxed);
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
        lock(&self.pipeline_durations)[report.outcome.index()]
            .record(u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX));
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
        self.publish_report(Some(id), end, || EventKind::PipelineCompleted(report));
    }

    /// Every agent's entry, with every run closed so far counted in it.
    pub(crate) fn entries(&self) -> Vec<Arc<AgentEntry>> {
        pending::flush();
        self.agents.entries()
    }

    /// Pipelines running now, oldest first, with every run closed so far
    /// counted in them.
    pub(crate) fn active_pipelines(&self) -> Vec<Arc<PipelineState>> {
        pending::flush();
        let mut list: Vec<_> = lock(&self.active).values().cloned().collect();
        list.sort_by_key(|p| p.run);
        list
    }

    /// How many pipelines are running now; takes no lock.
    pub(crate) fn active_count(&self) -> usize {
        self.active_len.load(Ordering::Relaxed)
    }

    /// The running pipeline with this run number.
    pub(crate) fn active_run(&self, run: u64) -> Option<Arc<PipelineState>> {
        lock(&self.active).get(&run).cloned()
    }

    /// Up to `n` finished reports still kept, newest first.
    pub(crate) fn recent(&self, n: usize) -> Vec<Arc<PipelineReport>> {
        lock(&self.recent).iter().take(n).cloned().collect()
    }

    /// The newest kept report that `pred` accepts.
    pub(crate) fn find_recent(
        &self,
        pred: impl Fn(&PipelineReport) -> bool,
    ) -> Option<Arc<PipelineReport>> {
        lock(&self.recent).iter().find(|r| pred(r)).cloned()
    }

    /// The report of `state` so far, with the configured bottleneck rule.
    pub(crate) fn report_so_far(&self, state: &PipelineState) -> Arc<PipelineReport> {
        pending::flush();
        state.report_so_far(self.now(), self.config.rule)
    }
}
