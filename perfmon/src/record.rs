//! What perfmon records: agent runs, their outcomes, pipeline reports and
//! bottlenecks. These are plain data, cheap to clone and serializable; the
//! JSON shape is part of the wire protocol (see `API.md`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::outcome::Outcome;

/// One finished run of one agent.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AgentRun {
    /// The agent's name (`perfmon.agent`).
    pub agent: String,
    /// The id of the pipeline the run belonged to; empty for a run outside any pipeline.
    pub pipeline: String,
    /// When the run's span was opened.
    #[serde(rename = "started_at_ms", serialize_with = "ser::unix_ms")]
    pub started_at: SystemTime,
    /// Wall time from span open to span close.
    #[serde(rename = "duration_ms", serialize_with = "ser::ms")]
    pub duration: Duration,
    /// Time spent being polled (sum of enter → exit), for futures and spans
    /// entered more than once; `None` for synchronous guards.
    #[serde(rename = "busy_ms", serialize_with = "ser::opt_ms")]
    pub busy: Option<Duration>,
    /// How the run ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When the run started, measured from the start of its pipeline.
    #[serde(rename = "offset_ms", serialize_with = "ser::ms")]
    pub offset: Duration,
    /// Index (in [`PipelineReport::agents`]) of the agent run this one was
    /// nested in, if any.
    pub parent: Option<usize>,
}

/// An agent that took more than the bottleneck threshold of its pipeline's time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Bottleneck {
    /// The agent's name.
    pub agent: String,
    /// The agent's summed wall time in the pipeline (or, fleet-wide, in the
    /// recent pipelines).
    #[serde(rename = "duration_ms", serialize_with = "ser::ms")]
    pub duration: Duration,
    /// `duration` / the pipeline's wall time. Runs that overlap (parallel runs
    /// of one agent, or an agent that encloses others) can make this exceed 1.
    pub share: f64,
}

/// Totals for runs of one agent that did not fit in [`PipelineReport::agents`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AggregatedRuns {
    /// The agent's name.
    pub agent: String,
    /// How many of its runs were aggregated.
    pub runs: u64,
    /// How many of those failed.
    pub failures: u64,
    /// Their summed wall time.
    #[serde(rename = "total_ms", serialize_with = "ser::ms")]
    pub total: Duration,
}

/// The record of one pipeline: its agent runs, bottlenecks and critical path.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PipelineReport {
    /// The id given to `start_pipeline` (`perfmon.pipeline`).
    pub id: String,
    /// A number unique within the monitor, telling apart pipelines that share an id.
    pub run: u64,
    /// When the pipeline's span was opened.
    #[serde(rename = "started_at_ms", serialize_with = "ser::unix_ms")]
    pub started_at: SystemTime,
    /// Wall time from start to finish (so far, for an active pipeline).
    #[serde(rename = "duration_ms", serialize_with = "ser::ms")]
    pub duration: Duration,
    /// How the pipeline ended ([`Outcome::Succeeded`] while it is still active).
    #[serde(flatten)]
    pub outcome: Outcome,
    /// `false` while the pipeline is still running.
    pub finished: bool,
    /// Its finished agent runs, in start order (at most the monitor's
    /// `max_runs_per_pipeline`; see [`PipelineReport::aggregated`]).
    pub agents: Vec<AgentRun>,
    /// Agents that took more than the threshold of the pipeline's time, largest share first.
    pub bottlenecks: Vec<Bottleneck>,
    /// The chain of agent runs that decided when the pipeline ended, in time
    /// order; a run that enclosed other runs is followed by the critical chain
    /// of its children. See [`PipelineReport::critical_runs`] for indices.
    pub critical_path: Vec<String>,
    /// The same chain as indices into [`PipelineReport::agents`].
    pub critical_runs: Vec<usize>,
    /// Runs beyond `max_runs_per_pipeline`, kept as per-agent totals only.
    /// They count in `bottlenecks`, not in `critical_path`.
    pub aggregated: Vec<AggregatedRuns>,
    /// Agents still running when the pipeline ended (their runs are not in `agents`).
    pub unfinished: Vec<String>,
}

impl PipelineReport {
    /// Total number of agent runs, stored and aggregated.
    pub fn total_runs(&self) -> u64 {
        self.agents.len() as u64 + self.aggregated.iter().map(|a| a.runs).sum::<u64>()
    }

    /// The bottleneck entry for `agent`, if it was flagged.
    pub fn bottleneck(&self, agent: &str) -> Option<&Bottleneck> {
        self.bottlenecks.iter().find(|b| b.agent == agent)
    }
}

impl fmt::Display for PipelineReport {
    /// A few readable lines: the outcome, each run, bottlenecks and the critical path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline {} (run {}) {} in {:.1?}, {} agent runs",
            self.id,
            self.run,
            self.outcome,
            self.duration,
            self.total_runs()
        )?;
        for run in &self.agents {
            let indent = if run.parent.is_some() { "    " } else { "  " };
            write!(
                f,
                "{indent}{:<14} +{:>8.1?} {:>9.1?}  {}",
                run.agent, run.offset, run.duration, run.outcome
            )?;
            if let Some(busy) = run.busy {
                write!(f, " (busy {busy:.1?})")?;
            }
            writeln!(f)?;
        }
        for agg in &self.aggregated {
            writeln!(
                f,
                "  {:<14} +{} more runs, {:.1?} in total (aggregated)",
                agg.agent, agg.runs, agg.total
            )?;
        }
        if !self.unfinished.is_empty() {
            writeln!(
                f,
                "  STILL RUNNING when it ended (not timed above): {}",
                self.unfinished.join(", ")
            )?;
        }
        if self.bottlenecks.is_empty() {
            writeln!(f, "  bottlenecks: none")?;
        }
        for b in &self.bottlenecks {
            writeln!(
                f,
                "  BOTTLENECK {} took {:.1?} = {:.0}% of the pipeline",
                b.agent,
                b.duration,
                b.share * 100.0
            )?;
        }
        write!(f, "  critical path: {}", self.critical_path.join(" -> "))
    }
}

/// A pipeline that is still running, as seen right now.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PipelineSnapshot {
    /// The pipeline's id.
    pub id: String,
    /// The monitor-unique run number (see [`PipelineReport::run`]).
    pub run: u64,
    /// When it started.
    #[serde(rename = "started_at_ms", serialize_with = "ser::unix_ms")]
    pub started_at: SystemTime,
    /// How long it has been running.
    #[serde(rename = "elapsed_ms", serialize_with = "ser::ms")]
    pub elapsed: Duration,
    /// The agents running in it now (one entry per open run).
    pub running_agents: Vec<String>,
    /// Agent runs finished so far.
    pub finished_runs: u64,
    /// The latest `perfmon::progress!` reported in it, if any.
    pub last_progress: Option<Progress>,
}

/// One `perfmon::progress!` report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Progress {
    /// The agent that reported it.
    pub agent: Arc<str>,
    /// Percent done (0–100), if given.
    pub percent: Option<f64>,
    /// The stage name, if given.
    pub stage: Option<String>,
    /// The formatted message, if any.
    pub message: Option<String>,
}

/// Serde helpers: durations as `f64` milliseconds, times as unix milliseconds.
pub(crate) mod ser {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::Serializer;

    pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1e3)
    }

    pub(crate) fn opt_ms<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => ms(d, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(unix_millis(*t))
    }

    pub(crate) fn unix_millis(t: SystemTime) -> f64 {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(before) => -before.duration().as_secs_f64() * 1e3,
        }
    }
}
