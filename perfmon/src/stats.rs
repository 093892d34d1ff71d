//! Per-agent statistics and the monitor-wide overview.
//!
//! Each agent has one [`AgentEntry`], created the first time a span names it
//! and found again through the agent table (`agent_table`). An entry's
//! counters and histogram sit behind the entry's own mutex, held for a few
//! nanoseconds per finished run: runs of different agents never contend,
//! and no lock is shared by all spans.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::metrics::AgentMetrics;
use crate::outcome::Outcome;
use crate::record::{RunKind, ser};
use crate::sync::lock;
use crate::usage::{Usage, UsageSum};

/// Durations above this are clamped in the histogram (min, max, mean and
/// total stay exact).
const HISTOGRAM_MAX: Duration = Duration::from_secs(6 * 3600);

/// Statistics of one agent across every run the monitor has seen.
///
/// `min`, `max`, `mean` and `total` are exact; the percentiles come from an
/// HDR histogram with two significant digits (at most 1% off).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AgentStats {
    /// The agent's (or tool's) name.
    pub agent: String,
    /// Whether the name is an agent's or a tool's (the kind of its first
    /// run: agents and tools share one namespace of names).
    pub kind: RunKind,
    /// Finished runs.
    pub runs: u64,
    /// Runs whose outcome was not `succeeded` (failed, panicked or cancelled).
    pub failures: u64,
    /// `failures / runs` (0 when there were no runs).
    pub failure_rate: f64,
    /// Shortest run.
    #[serde(rename = "min_ms", serialize_with = "ser::ms")]
    pub min: Duration,
    /// Longest run.
    #[serde(rename = "max_ms", serialize_with = "ser::ms")]
    pub max: Duration,
    /// Mean wall time.
    #[serde(rename = "mean_ms", serialize_with = "ser::ms")]
    pub mean: Duration,
    /// Median wall time.
    #[serde(rename = "p50_ms", serialize_with = "ser::ms")]
    pub p50: Duration,
    /// 90th percentile wall time.
    #[serde(rename = "p90_ms", serialize_with = "ser::ms")]
    pub p90: Duration,
    /// 99th percentile wall time.
    #[serde(rename = "p99_ms", serialize_with = "ser::ms")]
    pub p99: Duration,
    /// Summed wall time of all runs.
    #[serde(rename = "total_ms", serialize_with = "ser::ms")]
    pub total: Duration,
    /// Mean self time (wall minus the runs nested in it; see
    /// [`AgentRun::self_time`](crate::AgentRun::self_time)).
    #[serde(rename = "self_mean_ms", serialize_with = "ser::ms")]
    pub self_mean: Duration,
    /// Median self time.
    #[serde(rename = "self_p50_ms", serialize_with = "ser::ms")]
    pub self_p50: Duration,
    /// 90th percentile self time.
    #[serde(rename = "self_p90_ms", serialize_with = "ser::ms")]
    pub self_p90: Duration,
    /// 99th percentile self time.
    #[serde(rename = "self_p99_ms", serialize_with = "ser::ms")]
    pub self_p99: Duration,
    /// Summed self time of all runs.
    #[serde(rename = "self_total_ms", serialize_with = "ser::ms")]
    pub self_total: Duration,
    /// Runs open right now.
    pub running: u64,
    /// Finished runs by outcome; `failures` is the sum of all but `succeeded`.
    pub outcomes: OutcomeCounts,
    /// Tokens and cost reported in its finished runs (`usage!`), exactly summed.
    pub usage: Usage,
}

/// Counts of finished runs by [`Outcome`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OutcomeCounts {
    /// Ran to completion without an error.
    pub succeeded: u64,
    /// Reported an error.
    pub failed: u64,
    /// Unwound from a panic.
    pub panicked: u64,
    /// Dropped before completion (futures).
    pub cancelled: u64,
}

impl OutcomeCounts {
    fn from_array(counts: [u64; 4]) -> Self {
        let [succeeded, failed, panicked, cancelled] = counts;
        OutcomeCounts {
            succeeded,
            failed,
            panicked,
            cancelled,
        }
    }
}

/// Totals across the whole monitor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// Time since the monitor was built.
    #[serde(rename = "uptime_ms", serialize_with = "ser::ms")]
    pub uptime: Duration,
    /// Pipelines started.
    pub pipelines_total: u64,
    /// Pipelines running now.
    pub pipelines_active: u64,
    /// Finished pipelines whose outcome was not `succeeded`.
    pub pipelines_failed: u64,
    /// Agent runs finished, inside pipelines or not.
    pub agent_runs_total: u64,
    /// Of those, runs that did not succeed.
    pub agent_failures_total: u64,
    /// Mean wall time of finished pipelines.
    #[serde(rename = "avg_pipeline_duration_ms", serialize_with = "ser::ms")]
    pub avg_pipeline_duration: Duration,
    /// Distinct agents seen.
    pub agents: u64,
    /// Runs recorded under the overflow agent `"(other)"` because the
    /// monitor already tracked `max_agents` distinct names.
    pub agents_overflowed: u64,
    /// Events sent to subscribers so far (the last `seq`).
    pub events_published: u64,
    /// Events the recorder could not queue because the event queue was full
    /// (subscribers too slow to drain it). Per-subscriber losses are in
    /// `Subscription::missed`.
    pub events_dropped: u64,
    /// perfmon background threads that failed: an event dispatcher or a
    /// process sampler that could not be started (the process is out of
    /// threads or memory), or an exporter that panicked. While it is above
    /// 0, live events, process samples or an exporter's output may be missing.
    pub thread_failures: u64,
    /// perfmon spans (agents and pipelines, from guards, futures and the
    /// macros) that a filter disabled, or that were made with no subscriber
    /// installed, in this whole process: perfmon recorded nothing for them.
    /// Threads add to it in batches of 64 (each thread's first at once), so it
    /// can lag by up to 63 per thread; it is never 0 after one happened.
    /// Above 0, enable [`FILTER_DIRECTIVE`](crate::FILTER_DIRECTIVE) in
    /// your filter (a `WARN` event from target `perfmon` said so once).
    pub spans_filtered: u64,
    /// Agent runs that finished outside any pipeline while a pipeline was
    /// active: usually work that lost its pipeline (a task spawned without
    /// `.in_current_span()`, a blocking call without the span). They count
    /// in the agent's statistics but in no pipeline report.
    pub runs_outside_pipeline: u64,
    /// Tokens and cost of every finished run, plus what `usage!` reported
    /// outside any run (exactly summed).
    pub usage: Usage,
    /// Lines of output (`output!`) written in runs.
    pub output_lines: u64,
    /// Of those, lines longer than `max_output_line_bytes`, cut (marked
    /// `cut` in events and reports).
    pub output_lines_cut: u64,
    /// Lines no report keeps: beyond a run's last `max_output_lines` (they
    /// were still streamed as events).
    pub output_lines_dropped: u64,
}

/// One reading of the process by the sampler (feature `process`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ProcessSample {
    /// CPU use, percent of one core.
    pub cpu_percent: f64,
    /// Resident memory, bytes.
    pub rss_bytes: u64,
    /// Threads in the process.
    pub threads: u64,
}

/// Monitor-wide counters, updated with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) pipelines_total: AtomicU64,
    pub(crate) pipelines_finished: AtomicU64,
    pub(crate) pipelines_failed: AtomicU64,
    pub(crate) pipeline_nanos_total: AtomicU64,
    pub(crate) agents_overflowed: AtomicU64,
    /// Background threads that could not be spawned.
    pub(crate) thread_failures: AtomicU64,
    /// Runs that ended outside any pipeline while one was active.
    pub(crate) runs_outside_pipeline: AtomicU64,
    /// Whether the warning about such runs was given.
    pub(crate) warned_outside: std::sync::atomic::AtomicBool,
    /// `output!` lines: all, cut, dropped from run tails.
    pub(crate) output_lines: AtomicU64,
    pub(crate) output_lines_cut: AtomicU64,
    pub(crate) output_lines_dropped: AtomicU64,
    /// `usage!` outside any run.
    pub(crate) usage_outside_runs: Mutex<UsageSum>,
}

/// Everything the monitor knows about one agent name.
#[derive(Debug)]
pub(crate) struct AgentEntry {
    pub(crate) name: Arc<str>,
    pub(crate) kind: RunKind,
    cell: Mutex<StatsCell>,
    running: AtomicU64,
    metrics: AgentMetrics,
}

#[derive(Debug)]
struct StatsCell {
    runs: u64,
    failures: u64,
    total_ns: u128,
    min_ns: u64,
    max_ns: u64,
    /// One histogram per outcome, in [`Outcome::index`] order: merged for
    /// the percentiles, apart for `/metrics` (a histogram per label set).
    by_outcome: [OutcomeCell; 4],
    /// Runs with nested runs (self time below wall time): their wall times
    /// and their self times. Self-time figures are the wall-time ones with
    /// these wall times swapped for these self times, so a run with nothing
    /// nested in it (most runs) records one value, not two.
    nested_wall: OutcomeCell,
    nested_self: OutcomeCell,
    /// Exact extremes of `nested_self`, to bound the self-time percentiles.
    nested_self_min_ns: u64,
    nested_self_max_ns: u64,
    usage: UsageSum,
}

/// One finished run, as the statistics take it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FinishedRun<'a> {
    pub(crate) wall: Duration,
    pub(crate) self_time: Duration,
    pub(crate) outcome: &'a Outcome,
    pub(crate) usage: Option<UsageSum>,
}

impl StatsCell {
    fn record(&mut self, run: &FinishedRun<'_>) {
        let ns = u64::try_from(run.wall.as_nanos()).unwrap_or(u64::MAX);
        let self_ns = u64::try_from(run.self_time.as_nanos()).unwrap_or(u64::MAX);
        self.runs += 1;
        self.failures += u64::from(run.outcome.is_failure());
        self.total_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        self.by_outcome[run.outcome.index()].record(ns);
        if self_ns != ns {
            self.nested_wall.record(ns);
            self.nested_self.record(self_ns);
            self.nested_self_min_ns = self.nested_self_min_ns.min(self_ns);
            self.nested_self_max_ns = self.nested_self_max_ns.max(self_ns);
        }
        if let Some(usage) = run.usage {
            self.usage.add(usage);
        }
    }
}

/// Runs of one agent that ended with one outcome.
#[derive(Debug, Clone)]
pub(crate) struct OutcomeCell {
    pub(crate) runs: u64,
    pub(crate) total_ns: u128,
    /// Nanoseconds, clamped to `1..=HISTOGRAM_MAX`.
    pub(crate) histogram: Histogram<u64>,
}

impl OutcomeCell {
    /// Counts one value of `ns` nanoseconds.
    pub(crate) fn record(&mut self, ns: u64) {
        self.runs += 1;
        self.total_ns += u128::from(ns);
        // Auto-resizing: grows to cover the value. It can only fail on
        // allocation failure, and then losing one sample is the right call.
        let _ = self
            .histogram
            .record(ns.clamp(1, HISTOGRAM_MAX.as_nanos() as u64));
    }

    pub(crate) fn new() -> Self {
        OutcomeCell {
            runs: 0,
            total_ns: 0,
            // Auto-resizing histogram: it only grows as far as the
            // largest value recorded (bounded by HISTOGRAM_MAX).
            // UNWRAP: 2 significant figures is always a valid precision.
            #[allow(clippy::unwrap_used)]
            histogram: Histogram::new(2).unwrap(),
        }
    }
}

impl AgentEntry {
    pub(crate) fn new(name: Arc<str>, kind: RunKind, metrics_enabled: bool) -> Self {
        let metrics = AgentMetrics::new(&name, metrics_enabled);
        AgentEntry {
            cell: Mutex::new(StatsCell {
                runs: 0,
                failures: 0,
                total_ns: 0,
                min_ns: u64::MAX,
                max_ns: 0,
                by_outcome: std::array::from_fn(|_| OutcomeCell::new()),
                nested_wall: OutcomeCell::new(),
                nested_self: OutcomeCell::new(),
                nested_self_min_ns: u64::MAX,
                nested_self_max_ns: 0,
                usage: UsageSum::default(),
            }),
            running: AtomicU64::new(0),
            metrics,
            name,
            kind,
        }
    }

    /// Registers this run's `metrics` handles on the closing thread (see
    /// `AgentMetrics::prepare`), before the run is recorded in a batch.
    #[inline]
    pub(crate) fn prepare_metrics(&self, outcome: &Outcome, usage: bool) {
        self.metrics.prepare(outcome, usage);
    }

    pub(crate) fn run_started(&self) {
        self.running.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one finished run, with the usage it reported (the fleet's
    /// state; the layer's runs come in batches: `runs_finished`).
    #[cfg_attr(not(any(feature = "fleet", test)), allow(dead_code))]
    pub(crate) fn run_finished(
        &self,
        duration: Duration,
        self_time: Duration,
        outcome: &Outcome,
        usage: Option<UsageSum>,
    ) {
        self.runs_finished(&[FinishedRun {
            wall: duration,
            self_time,
            outcome,
            usage,
        }]);
    }

    /// Records a batch of finished runs of this agent: one lock, one
    /// update of the running count.
    pub(crate) fn runs_finished(&self, runs: &[FinishedRun<'_>]) {
        self.running.fetch_sub(runs.len() as u64, Ordering::Relaxed);
        {
            let mut cell = lock(&self.cell);
            for run in runs {
                cell.record(run);
            }
        }
        for run in runs {
            self.metrics.record(run.wall, run.outcome);
            if let Some(usage) = run.usage {
                self.metrics.record_usage(usage);
            }
        }
    }

    /// Tokens and cost so far.
    pub(crate) fn usage(&self) -> UsageSum {
        lock(&self.cell).usage
    }

    /// (runs, failures) so far.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let cell = lock(&self.cell);
        (cell.runs, cell.failures)
    }

    /// Per-outcome runs, totals and histograms (a copy, for `/metrics`).
    #[cfg_attr(not(feature = "ws"), allow(dead_code))]
    pub(crate) fn by_outcome(&self) -> [OutcomeCell; 4] {
        lock(&self.cell).by_outcome.clone()
    }

    pub(crate) fn stats(&self) -> AgentStats {
        let cell = lock(&self.cell);
        let runs = cell.runs;
        let mut merged = cell.by_outcome[0].histogram.clone();
        for other in &cell.by_outcome[1..] {
            // Same precision and auto-resize: adding cannot fail but on
            // allocation failure, where the percentiles lose those samples.
            let _ = merged.add(&other.histogram);
        }
        let at = |h: &Histogram<u64>, q: f64, min: u64, max: u64| {
            if runs == 0 {
                Duration::ZERO
            } else {
                // The histogram answers with the top of a bucket; clamp it
                // into the exact [min, max] range so that p99 never exceeds max.
                Duration::from_nanos(h.value_at_quantile(q).clamp(min, max))
            }
        };
        let mut self_hist = merged.clone();
        // Every value in `nested_wall` was also recorded (clamped the same
        // way) in `merged`, so the subtraction cannot underflow; both can
        // only fail on allocation failure, where the self-time percentiles
        // lose those samples.
        let _ = self_hist.subtract(&cell.nested_wall.histogram);
        let _ = self_hist.add(&cell.nested_self.histogram);
        let self_total_ns = cell.total_ns - cell.nested_wall.total_ns + cell.nested_self.total_ns;
        let q = |q: f64| at(&merged, q, cell.min_ns, cell.max_ns);
        // Bounds that hold the exact self times: the smallest is a leaf's
        // wall time (at least the smallest wall time) or a nested self time;
        // the largest is at most the largest wall time, and exactly the
        // largest nested self time when every run had nested runs.
        let self_min = cell.min_ns.min(cell.nested_self_min_ns);
        let self_max = if cell.nested_wall.runs == runs {
            cell.nested_self_max_ns
        } else {
            cell.max_ns
        };
        let self_q = |q: f64| at(&self_hist, q, self_min, self_max);
        let mean = |total: u128| {
            if runs == 0 {
                Duration::ZERO
            } else {
                nanos_to_duration(total / u128::from(runs))
            }
        };
        AgentStats {
            agent: self.name.to_string(),
            kind: self.kind,
            usage: cell.usage.to_usage(),
            runs,
            failures: cell.failures,
            failure_rate: if runs == 0 {
                0.0
            } else {
                cell.failures as f64 / runs as f64
            },
            min: if runs == 0 {
                Duration::ZERO
            } else {
                Duration::from_nanos(cell.min_ns)
            },
            max: Duration::from_nanos(cell.max_ns),
            mean: mean(cell.total_ns),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            total: nanos_to_duration(cell.total_ns),
            self_mean: mean(self_total_ns),
            self_p50: self_q(0.50),
            self_p90: self_q(0.90),
            self_p99: self_q(0.99),
            self_total: nanos_to_duration(self_total_ns),
            running: self.running.load(Ordering::Relaxed),
            outcomes: OutcomeCounts::from_array(cell.by_outcome.each_ref().map(|c| c.runs)),
        }
    }
}

fn nanos_to_duration(ns: u128) -> Duration {
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    Duration::new(secs, (ns % 1_000_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Self-time figures, derived from the wall-time histograms with
        /// the nested runs' values swapped, match the self times directly:
        /// the total exactly, the percentiles within the histogram's 1%.
        #[test]
        fn self_time_percentiles_match_the_self_times(
            runs in prop::collection::vec((1u64..1_000_000, 0u64..=100), 1..200),
        ) {
            let entry = AgentEntry::new(Arc::from("a"), RunKind::Agent, false);
            let mut selfs = Vec::new();
            for &(wall_us, self_pct) in &runs {
                // Half the runs have nothing nested (self = wall).
                let self_us = if self_pct % 2 == 0 { wall_us } else { wall_us * self_pct / 100 };
                entry.run_started();
                entry.run_finished(
                    Duration::from_micros(wall_us),
                    Duration::from_micros(self_us),
                    &Outcome::Succeeded,
                    None,
                );
                selfs.push(Duration::from_micros(self_us));
            }
            let stats = entry.stats();
            prop_assert_eq!(stats.self_total, selfs.iter().sum::<Duration>());
            selfs.sort();
            for (q, got) in [(0.5, stats.self_p50), (0.9, stats.self_p90), (0.99, stats.self_p99)] {
                let rank = ((q * selfs.len() as f64).ceil() as usize).clamp(1, selfs.len());
                let exact = selfs[rank - 1].as_secs_f64();
                let got = got.as_secs_f64();
                prop_assert!(
                    (got - exact).abs() <= exact * 0.01 + 1e-9,
                    "q{} got {} exact {}", q, got, exact
                );
            }
        }
    }
}
