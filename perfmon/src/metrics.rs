//! Export through the [`metrics`] facade.
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `perfmon_agent_duration_seconds` | histogram | `agent`, `outcome` |
//! | `perfmon_agent_runs_total` | counter | `agent`, `outcome` |
//! | `perfmon_pipeline_duration_seconds` | histogram | `outcome` |
//! | `perfmon_pipelines_active` | gauge | |
//!
//! With the `process` feature and a sampler running, also
//! `perfmon_process_cpu_percent`, `perfmon_process_resident_bytes` and
//! `perfmon_process_threads` (gauges).
//!
//! Per-agent handles are registered once per (agent, outcome), the first
//! time it happens, and then updated without any label lookup. Install your
//! recorder (for example `metrics-exporter-prometheus`) before the first
//! agent runs: handles registered while no recorder is installed stay no-ops.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::record::Outcome;

/// Name of the per-agent duration histogram.
pub const AGENT_DURATION: &str = "perfmon_agent_duration_seconds";
/// Name of the per-agent run counter.
pub const AGENT_RUNS: &str = "perfmon_agent_runs_total";
/// Name of the pipeline duration histogram.
pub const PIPELINE_DURATION: &str = "perfmon_pipeline_duration_seconds";
/// Name of the active pipelines gauge.
pub const PIPELINES_ACTIVE: &str = "perfmon_pipelines_active";
/// Name of the process CPU gauge (percent of one core).
pub const PROCESS_CPU: &str = "perfmon_process_cpu_percent";
/// Name of the process resident memory gauge (bytes).
pub const PROCESS_RSS: &str = "perfmon_process_resident_bytes";
/// Name of the process thread count gauge.
pub const PROCESS_THREADS: &str = "perfmon_process_threads";

/// Cached handles for one agent: one pair per outcome, registered the first
/// time that outcome happens (so no empty series for outcomes never seen),
/// then reused without any label lookup.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    agent: Option<Arc<str>>,
    handles: [OnceLock<(Histogram, Counter)>; 4],
}

impl AgentMetrics {
    pub(crate) fn new(agent: &Arc<str>, enabled: bool) -> Self {
        AgentMetrics {
            agent: enabled.then(|| Arc::clone(agent)),
            handles: Default::default(),
        }
    }

    pub(crate) fn record(&self, duration: Duration, outcome: &Outcome) {
        let Some(agent) = &self.agent else { return };
        let i = outcome.index();
        let (histogram, counter) = self.handles[i].get_or_init(|| {
            let labels = [
                ("agent", agent.to_string()),
                ("outcome", Outcome::NAMES[i].to_owned()),
            ];
            (
                metrics::histogram!(AGENT_DURATION, &labels),
                metrics::counter!(AGENT_RUNS, &labels),
            )
        });
        histogram.record(duration.as_secs_f64());
        counter.increment(1);
    }
}

/// Pipeline metrics are recorded once per pipeline (cold path), so they go
/// through the macros directly and always reach the current recorder.
pub(crate) fn pipeline_started(active: u64) {
    metrics::gauge!(PIPELINES_ACTIVE).set(active as f64);
}

pub(crate) fn pipeline_finished(duration: Duration, outcome: &Outcome, active: u64) {
    metrics::histogram!(PIPELINE_DURATION, "outcome" => outcome.as_str())
        .record(duration.as_secs_f64());
    metrics::gauge!(PIPELINES_ACTIVE).set(active as f64);
}
