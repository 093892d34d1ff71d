//! [`MonitorBuilder`], and the constructors of [`Monitor`]: settings
//! checked once, then a recorder, its bus and its threads.
//!
//! Above `monitor` in the crate's dependency order (it builds one); the
//! monitor never names its builder's internals.

use std::sync::Arc;
#[cfg(any(feature = "process", feature = "alerts"))]
use std::time::Duration;

use crate::agent_table::AgentTable;
use crate::analysis::Rule;
use crate::clock::MockClock;
use crate::events::Bus;
use crate::monitor::Monitor;
use crate::record::BottleneckBasis;
use crate::recorder::{Recorder, RecorderConfig};

/// The default share of a pipeline's wall time above which an agent is a bottleneck.
pub const DEFAULT_BOTTLENECK_THRESHOLD: f64 = 0.30;

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
}

/// Default of [`MonitorBuilder::max_output_lines`].
pub const DEFAULT_MAX_OUTPUT_LINES: usize = 50;
/// Default of [`MonitorBuilder::max_output_line_bytes`].
pub const DEFAULT_MAX_OUTPUT_LINE_BYTES: usize = 1_024;

/// Builds a [`Monitor`]. Out-of-range values panic at the builder call,
/// naming the valid range, like `tokio::runtime::Builder`.
#[derive(Debug)]
#[must_use = "a builder does nothing until .build()"]
pub struct MonitorBuilder {
    config: RecorderConfig,
    event_queue_capacity: usize,
    subscriber_capacity: usize,
    max_agents: usize,
    clock: Option<quanta::Clock>,
    #[cfg(feature = "process")]
    sampler: Option<Duration>,
    #[cfg(feature = "history")]
    history: Option<crate::history::History>,
    #[cfg(feature = "alerts")]
    alert_rules: Vec<crate::alerts::AlertRule>,
    #[cfg(feature = "alerts")]
    webhooks: Vec<String>,
    #[cfg(feature = "alerts")]
    webhook_timeout: Duration,
}

impl Default for MonitorBuilder {
    fn default() -> Self {
        MonitorBuilder {
            config: RecorderConfig {
                rule: Rule {
                    threshold: DEFAULT_BOTTLENECK_THRESHOLD,
                    basis: BottleneckBasis::SelfTime,
                },
                recent_capacity: 1_000,
                max_runs_per_pipeline: 10_000,
                metrics: true,
                max_output_lines: DEFAULT_MAX_OUTPUT_LINES,
                max_output_line_bytes: DEFAULT_MAX_OUTPUT_LINE_BYTES,
            },
            event_queue_capacity: 8_192,
            subscriber_capacity: 4_096,
            max_agents: 1_000,
            clock: None,
            #[cfg(feature = "process")]
            sampler: None,
            #[cfg(feature = "history")]
            history: None,
            #[cfg(feature = "alerts")]
            alert_rules: Vec::new(),
            #[cfg(feature = "alerts")]
            webhooks: Vec::new(),
            #[cfg(feature = "alerts")]
            webhook_timeout: crate::alerts::DEFAULT_WEBHOOK_TIMEOUT,
        }
    }
}

impl MonitorBuilder {
    /// Share of a pipeline's wall time above which an agent is a bottleneck.
    /// Default 0.30. The share is of the agent's self time unless
    /// [`bottleneck_basis`](Self::bottleneck_basis) says otherwise.
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
        self.config.rule.threshold = share;
        self
    }

    /// Which time makes an agent a bottleneck: its self time (the default;
    /// a parent is not flagged for time its nested agents took) or its wall
    /// time, nested runs included. Both shares are in every
    /// [`Bottleneck`](crate::Bottleneck) either way.
    pub fn bottleneck_basis(mut self, basis: BottleneckBasis) -> Self {
        self.config.rule.basis = basis;
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

    /// How many lines of output (`perfmon::output!`) each run keeps in its
    /// report: its last `n` (`AgentRun::output`). Older lines still stream
    /// as `tool_output` events; the report counts them in
    /// `AgentRun::output_dropped`, the overview in `output_lines_dropped`.
    /// Default 50; 0 keeps none.
    pub fn max_output_lines(mut self, n: usize) -> Self {
        self.config.max_output_lines = n;
        self
    }

    /// Output lines longer than `bytes` are cut there (on a character
    /// boundary), marked `cut`, and counted in `Overview::output_lines_cut`.
    /// Default 1,024.
    ///
    /// # Panics
    ///
    /// If `bytes` is 0.
    #[track_caller]
    pub fn max_output_line_bytes(mut self, bytes: usize) -> Self {
        assert!(bytes > 0, "max_output_line_bytes must be at least 1, got 0");
        self.config.max_output_line_bytes = bytes;
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

    /// How many events a [`Subscription`](crate::Subscription) may fall behind before it starts
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
    #[cfg_attr(docsrs, doc(cfg(feature = "process")))]
    #[track_caller]
    pub fn process_sampler(mut self, interval: Duration) -> Self {
        assert!(
            interval >= Duration::from_millis(100),
            "process_sampler interval must be at least 100ms, got {interval:?}"
        );
        self.sampler = Some(interval);
        self
    }

    /// Keeps finished pipelines, per-agent rollups and alert transitions in
    /// `history` (an SQLite file; see [`History`](crate::History)), written
    /// on a thread of the monitor's own. Reports older than what is kept in
    /// memory, and those from before a restart, are then still answered by
    /// [`Monitor::recent_pipelines`] and [`Monitor::pipeline`].
    #[cfg(feature = "history")]
    #[cfg_attr(docsrs, doc(cfg(feature = "history")))]
    pub fn history(mut self, history: crate::history::History) -> Self {
        self.history = Some(history);
        self
    }

    /// Judges `rule` over its sliding window on a thread of the monitor's
    /// own; its transitions are `alert_fired` / `alert_resolved` events, a
    /// `tracing` line (WARN when it fires), the webhooks, and
    /// [`Monitor::alerts`]. See [`AlertRule`](crate::AlertRule).
    #[cfg(feature = "alerts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
    pub fn alert(mut self, rule: crate::alerts::AlertRule) -> Self {
        self.alert_rules.push(rule);
        self
    }

    /// POSTs every alert transition as JSON (`{"event": "alert_fired",
    /// "alert": {...}}`) to `url` (plain `http://`), from a thread and a
    /// bounded queue of its own: each attempt times out (default 5 s) and
    /// is retried three times with backoff; what fails is counted in
    /// [`Monitor::alert_webhooks`]. A dead webhook slows nothing else.
    ///
    /// # Panics
    ///
    /// If `url` does not start with `http://`.
    #[cfg(feature = "alerts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
    #[track_caller]
    pub fn alert_webhook(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        assert!(
            url.starts_with("http://"),
            "alert_webhook takes an http:// URL (https needs a TLS relay), got {url:?}"
        );
        self.webhooks.push(url);
        self
    }

    /// How long each webhook attempt may take. Default 5 s.
    #[cfg(feature = "alerts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "alerts")))]
    pub fn alert_webhook_timeout(mut self, timeout: Duration) -> Self {
        self.webhook_timeout = timeout;
        self
    }

    /// Builds the monitor. A process sampler that cannot start its thread
    /// is counted in `Overview::thread_failures`; the monitor works without it.
    pub fn build(self) -> Monitor {
        let clock = self.clock.unwrap_or_default();
        if self.config.metrics {
            crate::metrics::describe();
        }
        let recorder = Arc::new(Recorder::new(
            self.config.clone(),
            clock,
            AgentTable::new(self.max_agents, self.config.metrics),
            Bus::new(
                self.event_queue_capacity,
                self.subscriber_capacity,
                self.config.metrics,
            ),
        ));
        #[cfg(feature = "process")]
        let sampler =
            self.sampler.and_then(
                |interval| match crate::sampler::spawn(&recorder, interval) {
                    Ok(sampler) => Some(sampler),
                    Err(_) => {
                        recorder
                            .counters
                            .thread_failures
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        None
                    }
                },
            );
        #[cfg(feature = "alerts")]
        let alerts = (!self.alert_rules.is_empty()).then(|| {
            let webhooks = self
                .webhooks
                .into_iter()
                .map(|url| crate::alerts::Webhook::start(url, self.webhook_timeout))
                .collect();
            crate::alerts::Evaluator::new(Arc::clone(&recorder), self.alert_rules, webhooks)
        });
        Monitor::from_recorder(
            recorder,
            #[cfg(feature = "process")]
            sampler,
            #[cfg(feature = "history")]
            self.history,
            #[cfg(feature = "alerts")]
            alerts,
        )
    }
}
