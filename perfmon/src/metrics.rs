//! Export through the [`metrics`] facade, and the one table of perfmon's
//! metric names, kinds, units and help texts ([`FAMILIES`]).
//!
//! | metric | kind | labels |
//! | --- | --- | --- |
//! | `perfmon_agent_duration_seconds` | histogram | `agent`, `outcome` |
//! | `perfmon_agent_runs_total` | counter | `agent`, `outcome` |
//! | `perfmon_pipeline_duration_seconds` | histogram | `outcome` |
//! | `perfmon_pipelines_total` | counter | |
//! | `perfmon_pipelines_active` | gauge | |
//! | `perfmon_tokens_total` | counter | `agent`, `type` (`input`, `output`) |
//! | `perfmon_cost_usd` | gauge (only rises) | `agent` |
//!
//! `perfmon_cost_usd` is the running total cost in US dollars: a gauge
//! because the facade's counters take whole numbers only; it never goes down.
//!
//! With the `process` feature and a sampler running, also
//! `perfmon_process_cpu_percent`, `perfmon_process_resident_bytes` and
//! `perfmon_process_threads` (gauges). With the `ws` sidecar running, its
//! own `perfmon_ws_*` counters. `outcome` is one of `succeeded`, `failed`,
//! `panicked`, `cancelled`.
//!
//! Per-agent handles are registered once per (agent, outcome), the first
//! time it happens, and then updated without any label lookup. Install your
//! recorder (for example `metrics-exporter-prometheus`) before the first
//! agent runs: handles registered while no recorder is installed stay
//! no-ops. Units and help texts are described to the recorder when a
//! monitor is built and when a series first appears; call [`describe`]
//! after installing a recorder late.
//!
//! The sidecar's `GET /metrics` renders the same families from the
//! monitor's own numbers, so it needs no recorder.
//!
//! Below the recorder in the crate's dependency order: imports only `outcome`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::outcome::Outcome;
use crate::usage::UsageSum;

/// Name of the per-agent duration histogram.
pub const AGENT_DURATION: &str = "perfmon_agent_duration_seconds";

/// Upper bounds, in seconds, of the buckets of the duration histograms the
/// sidecar's `/metrics` serves: agent runs and pipelines take from
/// milliseconds (a tool call) to minutes (an LLM chain). Give the same to
/// `metrics_exporter_prometheus::PrometheusBuilder::set_buckets` so the
/// facade's render has the same buckets (histograms, which aggregate across
/// processes, rather than summaries, which do not).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Name of the per-agent run counter.
pub const AGENT_RUNS: &str = "perfmon_agent_runs_total";
/// Name of the pipeline duration histogram.
pub const PIPELINE_DURATION: &str = "perfmon_pipeline_duration_seconds";
/// Name of the counter of pipelines started.
pub const PIPELINES_TOTAL: &str = "perfmon_pipelines_total";
/// Name of the active pipelines gauge.
pub const PIPELINES_ACTIVE: &str = "perfmon_pipelines_active";
/// Name of the per-agent token counter (`type` = `input` or `output`).
pub const TOKENS: &str = "perfmon_tokens_total";
/// Name of the per-agent running cost total, US dollars (a gauge that only
/// rises: the facade's counters are integers).
pub const COST: &str = "perfmon_cost_usd";
/// Name of the process CPU gauge (percent of one core).
pub const PROCESS_CPU: &str = "perfmon_process_cpu_percent";
/// Name of the process resident memory gauge (bytes).
pub const PROCESS_RSS: &str = "perfmon_process_resident_bytes";
/// Name of the process thread count gauge.
pub const PROCESS_THREADS: &str = "perfmon_process_threads";
/// Name of the counter of events the recorder could not queue.
pub const EVENTS_DROPPED: &str = "perfmon_events_dropped_total";
/// Name of the counter of perfmon spans a filter disabled (process-wide;
/// `Overview::spans_filtered`). Rendered by the sidecar's `/metrics`.
pub const SPANS_FILTERED: &str = "perfmon_spans_filtered_total";
/// Name of the counter of runs that ended outside any pipeline while one
/// was active (`Overview::runs_outside_pipeline`). Rendered by the sidecar's `/metrics`.
pub const RUNS_OUTSIDE_PIPELINE: &str = "perfmon_runs_outside_pipeline_total";
/// Name of the sidecar's open connections gauge.
pub const WS_CONNECTIONS_ACTIVE: &str = "perfmon_ws_connections_active";
/// Name of the sidecar's accepted connections counter.
pub const WS_CONNECTIONS_TOTAL: &str = "perfmon_ws_connections_total";
/// Name of the sidecar's sent frames counter.
pub const WS_MESSAGES_OUT: &str = "perfmon_ws_messages_out_total";
/// Name of the sidecar's sent bytes counter.
pub const WS_BYTES_OUT: &str = "perfmon_ws_bytes_out_total";
/// Name of the sidecar's received messages counter.
pub const WS_MESSAGES_IN: &str = "perfmon_ws_messages_in_total";
/// Name of the sidecar's shed events counter.
pub const WS_DROPPED: &str = "perfmon_ws_dropped_total";
/// Name of the sidecar's rate-limited messages counter.
pub const WS_RATE_LIMITED: &str = "perfmon_ws_rate_limited_total";
/// Name of the sidecar's protocol errors counter.
pub const WS_ERRORS: &str = "perfmon_ws_errors_total";

/// The kind of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of values (Prometheus `histogram`, with buckets).
    Histogram,
}

impl Kind {
    /// The Prometheus `# TYPE` word.
    pub fn prometheus_type(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric family: its name, kind, unit and help text.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// Its unit, for `describe_*`.
    pub unit: Unit,
    /// One line saying what it measures (the `# HELP` text).
    pub help: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: Unit, help: &'static str) -> Family {
    Family {
        name,
        kind,
        unit,
        help,
    }
}

/// Every metric perfmon exports, once. The facade's descriptions and the
/// sidecar's `/metrics` both come from here.
pub const FAMILIES: &[Family] = &[
    family(
        AGENT_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Wall time of finished agent runs, by agent and outcome.",
    ),
    family(
        AGENT_RUNS,
        Kind::Counter,
        Unit::Count,
        "Finished agent runs, by agent and outcome.",
    ),
    family(
        PIPELINE_DURATION,
        Kind::Histogram,
        Unit::Seconds,
        "Wall time of finished pipelines, by outcome.",
    ),
    family(
        PIPELINES_TOTAL,
        Kind::Counter,
        Unit::Count,
        "Pipelines started.",
    ),
    family(
        PIPELINES_ACTIVE,
        Kind::Gauge,
        Unit::Count,
        "Pipelines running now.",
    ),
    family(
        TOKENS,
        Kind::Counter,
        Unit::Count,
        "Tokens reported by finished runs (perfmon::usage!), by agent and type (input, output).",
    ),
    family(
        COST,
        Kind::Gauge,
        Unit::Count,
        "Total cost reported by finished runs (perfmon::usage!), US dollars, by agent; only rises.",
    ),
    family(
        PROCESS_CPU,
        Kind::Gauge,
        Unit::Percent,
        "CPU use of the process, percent of one core (process sampler).",
    ),
    family(
        PROCESS_RSS,
        Kind::Gauge,
        Unit::Bytes,
        "Resident memory of the process (process sampler).",
    ),
    family(
        PROCESS_THREADS,
        Kind::Gauge,
        Unit::Count,
        "Threads in the process (process sampler).",
    ),
    family(
        EVENTS_DROPPED,
        Kind::Counter,
        Unit::Count,
        "Events the recorder could not queue because the event queue was full.",
    ),
    family(
        SPANS_FILTERED,
        Kind::Counter,
        Unit::Count,
        "perfmon spans a filter disabled (or made with no subscriber), process-wide: not recorded. Enable perfmon=info.",
    ),
    family(
        RUNS_OUTSIDE_PIPELINE,
        Kind::Counter,
        Unit::Count,
        "Agent runs that ended outside any pipeline while one was active (lost their pipeline).",
    ),
    family(
        WS_CONNECTIONS_ACTIVE,
        Kind::Gauge,
        Unit::Count,
        "Open WebSocket connections to the sidecar.",
    ),
    family(
        WS_CONNECTIONS_TOTAL,
        Kind::Counter,
        Unit::Count,
        "WebSocket connections the sidecar accepted.",
    ),
    family(
        WS_MESSAGES_OUT,
        Kind::Counter,
        Unit::Count,
        "Frames the sidecar sent to clients.",
    ),
    family(
        WS_BYTES_OUT,
        Kind::Counter,
        Unit::Bytes,
        "Bytes the sidecar sent to clients.",
    ),
    family(
        WS_MESSAGES_IN,
        Kind::Counter,
        Unit::Count,
        "Messages the sidecar received from clients.",
    ),
    family(
        WS_DROPPED,
        Kind::Counter,
        Unit::Count,
        "Events shed from slow clients' queues.",
    ),
    family(
        WS_RATE_LIMITED,
        Kind::Counter,
        Unit::Count,
        "Client messages refused by the rate limit.",
    ),
    family(
        WS_ERRORS,
        Kind::Counter,
        Unit::Count,
        "Malformed client messages and protocol errors.",
    ),
];

/// The family named `name`.
pub fn family_of(name: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.name == name)
}

/// Describes every family (unit and help) to the installed `metrics`
/// recorder. perfmon calls it when a monitor is built and when a series
/// first appears; call it yourself after installing a recorder late.
pub fn describe() {
    for f in FAMILIES {
        match f.kind {
            Kind::Counter => metrics::describe_counter!(f.name, f.unit, f.help),
            Kind::Gauge => metrics::describe_gauge!(f.name, f.unit, f.help),
            Kind::Histogram => metrics::describe_histogram!(f.name, f.unit, f.help),
        }
    }
}

/// Cached handles for one agent: one pair per outcome, registered the first
/// time that outcome happens (so no empty series for outcomes never seen),
/// then reused without any label lookup.
#[derive(Debug)]
pub(crate) struct AgentMetrics {
    agent: Option<Arc<str>>,
    handles: [OnceLock<(Histogram, Counter)>; 4],
    /// Input tokens, output tokens, cost: registered at the first usage.
    usage: OnceLock<(Counter, Counter, Gauge)>,
}

impl AgentMetrics {
    pub(crate) fn new(agent: &Arc<str>, enabled: bool) -> Self {
        AgentMetrics {
            agent: enabled.then(|| Arc::clone(agent)),
            handles: Default::default(),
            usage: OnceLock::new(),
        }
    }

    /// Registers, on the calling thread, the handles that a run with
    /// `outcome` (and usage, if `usage`) will record into. Runs are recorded
    /// in batches, possibly on another thread (`pending`); the handles must
    /// come from the recorder of the thread that ran them (the global one,
    /// or `metrics::with_local_recorder`'s). Once registered: one load.
    #[inline]
    pub(crate) fn prepare(&self, outcome: &Outcome, usage: bool) {
        if self.agent.is_some() {
            let _ = self.run_handles(outcome);
            if usage {
                let _ = self.usage_handles();
            }
        }
    }

    fn usage_handles(&self) -> Option<&(Counter, Counter, Gauge)> {
        let agent = self.agent.as_ref()?;
        Some(self.usage.get_or_init(|| {
            describe();
            let agent = agent.to_string();
            (
                metrics::counter!(TOKENS, "agent" => agent.clone(), "type" => "input"),
                metrics::counter!(TOKENS, "agent" => agent.clone(), "type" => "output"),
                metrics::gauge!(COST, "agent" => agent),
            )
        }))
    }

    fn run_handles(&self, outcome: &Outcome) -> Option<&(Histogram, Counter)> {
        let agent = self.agent.as_ref()?;
        Some(self.handles[outcome.index()].get_or_init(|| {
            describe();
            let labels = [
                ("agent", agent.to_string()),
                ("outcome", outcome.as_str().to_owned()),
            ];
            (
                metrics::histogram!(AGENT_DURATION, &labels),
                metrics::counter!(AGENT_RUNS, &labels),
            )
        }))
    }

    /// Adds one run's usage (called only for runs that reported some).
    pub(crate) fn record_usage(&self, usage: UsageSum) {
        let Some((input, output, cost)) = self.usage_handles() else {
            return;
        };
        input.increment(usage.input_tokens);
        output.increment(usage.output_tokens);
        cost.increment(usage.to_usage().cost_usd);
    }

    pub(crate) fn record(&self, duration: Duration, outcome: &Outcome) {
        let Some((histogram, counter)) = self.run_handles(outcome) else {
            return;
        };
        histogram.record(duration.as_secs_f64());
        counter.increment(1);
    }
}

/// Pipeline metrics are recorded once per pipeline (cold path), so they go
/// through the macros directly and always reach the current recorder.
pub(crate) fn pipeline_started(active: u64) {
    metrics::counter!(PIPELINES_TOTAL).increment(1);
    metrics::gauge!(PIPELINES_ACTIVE).set(active as f64);
}

pub(crate) fn pipeline_finished(duration: Duration, outcome: &Outcome, active: u64) {
    metrics::histogram!(PIPELINE_DURATION, "outcome" => outcome.as_str())
        .record(duration.as_secs_f64());
    metrics::gauge!(PIPELINES_ACTIVE).set(active as f64);
}

/// Mirrors a monotonic total kept elsewhere (cold path, e.g. once a second).
pub(crate) fn set_total(name: &'static str, value: u64) {
    metrics::counter!(name).absolute(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_in_the_table_once() {
        let mut names: Vec<_> = FAMILIES.iter().map(|f| f.name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a family is listed twice");
        for name in [
            AGENT_DURATION,
            AGENT_RUNS,
            PIPELINE_DURATION,
            PIPELINES_ACTIVE,
            EVENTS_DROPPED,
        ] {
            assert!(family_of(name).is_some(), "{name}");
        }
        for f in FAMILIES {
            assert!(
                f.name.starts_with("perfmon_") && !f.help.is_empty(),
                "{f:?}"
            );
            if f.kind == Kind::Counter {
                assert!(
                    f.name.ends_with("_total"),
                    "a counter's name ends in _total: {}",
                    f.name
                );
            }
        }
    }
}
