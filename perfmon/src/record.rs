//! What perfmon records: agent runs, their outcomes, pipeline reports and
//! bottlenecks. These are plain data, cheap to clone and serializable; the
//! JSON shape is part of the wire protocol (see `API.md`). Reading the JSON
//! back gives the same value, so writing it again gives the same bytes
//! (the history store and the command line rely on it).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::usage::Usage;

/// What kind of run: an agent, or a tool an agent called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunKind {
    /// A `perfmon.agent` span: `#[track_agent]`, [`agent()`](crate::agent), `track_agent`.
    #[default]
    Agent,
    /// A `perfmon.tool` span: `#[track_tool]`, [`tool()`](crate::tool), `track_tool`.
    Tool,
}

impl RunKind {
    /// `"agent"` or `"tool"`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Agent => "agent",
            RunKind::Tool => "tool",
        }
    }
}

/// One line of a run's output (`perfmon::output!`), as kept in its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutputLine {
    /// The stream it was written to (`stdout`, `stderr`, ...; `"out"` if not given).
    pub stream: String,
    /// The line, cut at the monitor's `max_output_line_bytes` (on a
    /// character boundary) if it was longer.
    pub line: String,
    /// Whether the line was cut.
    pub cut: bool,
}

/// One finished run of one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AgentRun {
    /// The agent's name (`perfmon.agent`), or the tool's (`perfmon.tool`).
    pub agent: String,
    /// An agent's run or a tool's.
    pub kind: RunKind,
    /// The id of the pipeline the run belonged to; empty for a run outside any pipeline.
    pub pipeline: String,
    /// When the run's span was opened.
    #[serde(
        rename = "started_at_ms",
        serialize_with = "ser::unix_ms",
        deserialize_with = "ser::de_unix_ms"
    )]
    pub started_at: SystemTime,
    /// Wall time from span open to span close.
    #[serde(
        rename = "duration_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub duration: Duration,
    /// Wall time minus the time covered by the runs nested in it (their
    /// union: parallel children count once, by the time they covered). Only
    /// nested runs that finished before this one count. Equal to `duration`
    /// for a run with no nested runs.
    #[serde(
        rename = "self_time_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub self_time: Duration,
    /// Time spent being polled (sum of enter → exit), for futures and spans
    /// entered more than once; `None` for synchronous guards.
    #[serde(
        rename = "busy_ms",
        serialize_with = "ser::opt_ms",
        deserialize_with = "ser::de_opt_ms"
    )]
    pub busy: Option<Duration>,
    /// How the run ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When the run started, measured from the start of its pipeline.
    #[serde(
        rename = "offset_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub offset: Duration,
    /// Index (in [`PipelineReport::agents`]) of the agent run this one was
    /// nested in, if any: for a tool run, the run that called it.
    pub parent: Option<usize>,
    /// Tokens and cost reported in this run (`perfmon::usage!`), not
    /// counting the runs nested in it.
    pub usage: Usage,
    /// The model named by the run's last `usage!`, if any.
    pub model: Option<String>,
    /// The run's last lines of output (`perfmon::output!`), at most the
    /// monitor's `max_output_lines`, oldest first.
    pub output: Vec<OutputLine>,
    /// Lines of output the run wrote beyond those kept in `output`.
    pub output_dropped: u64,
}

/// An agent that took more than the bottleneck threshold of its pipeline's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Bottleneck {
    /// The agent's name.
    pub agent: String,
    /// The agent's summed wall time in the pipeline (or, fleet-wide, in the
    /// recent pipelines), its nested runs included.
    #[serde(
        rename = "duration_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub duration: Duration,
    /// `duration` / the pipeline's wall time: the inclusive share. Runs that
    /// overlap (parallel runs of one agent, or an agent that encloses
    /// others) can make this exceed 1.
    pub share: f64,
    /// The agent's summed self time ([`AgentRun::self_time`]).
    #[serde(
        rename = "self_time_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub self_time: Duration,
    /// `self_time` / the pipeline's wall time.
    pub self_share: f64,
    /// Which share was judged against the threshold.
    pub basis: BottleneckBasis,
}

impl Bottleneck {
    /// The share the threshold was applied to: `self_share` or `share`,
    /// by [`Bottleneck::basis`].
    pub fn judged_share(&self) -> f64 {
        match self.basis {
            BottleneckBasis::SelfTime => self.self_share,
            BottleneckBasis::Wall => self.share,
        }
    }
}

/// Which time makes an agent a bottleneck; set with
/// [`MonitorBuilder::bottleneck_basis`](crate::MonitorBuilder::bottleneck_basis).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BottleneckBasis {
    /// Self time (the default): an agent that only waits on agents nested
    /// in it is not flagged for their time, and nested agents do not count twice.
    #[default]
    SelfTime,
    /// Wall time, nested runs included (perfmon 0.1's rule).
    Wall,
}

/// Totals for runs of one agent that did not fit in [`PipelineReport::agents`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AggregatedRuns {
    /// The agent's name.
    pub agent: String,
    /// How many of its runs were aggregated.
    pub runs: u64,
    /// How many of those failed.
    pub failures: u64,
    /// Their summed wall time.
    #[serde(
        rename = "total_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub total: Duration,
    /// Their summed self time.
    #[serde(
        rename = "self_time_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
    pub self_time: Duration,
}

/// The record of one pipeline: its agent runs, bottlenecks and critical path.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PipelineReport {
    /// The id given to `start_pipeline` (`perfmon.pipeline`).
    pub id: String,
    /// A number unique within the monitor, telling apart pipelines that share an id.
    pub run: u64,
    /// When the pipeline's span was opened.
    #[serde(
        rename = "started_at_ms",
        serialize_with = "ser::unix_ms",
        deserialize_with = "ser::de_unix_ms"
    )]
    pub started_at: SystemTime,
    /// Wall time from start to finish (so far, for an active pipeline).
    #[serde(
        rename = "duration_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
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
    /// Tokens and cost of the whole pipeline: exactly the sum of its
    /// finished runs' (stored and aggregated), plus what `usage!` reported
    /// inside the pipeline but outside any run.
    pub usage: Usage,
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
        for (run, depth) in self.tree_order() {
            // Nested runs are indented under the run they ran inside.
            let indent = 2 + 2 * depth;
            let width = 14usize.saturating_sub(2 * depth);
            write!(
                f,
                "{:indent$}{:<width$} +{:>8.1?} {:>9.1?}  {}",
                "", run.agent, run.offset, run.duration, run.outcome
            )?;
            if run.self_time != run.duration {
                write!(f, " (self {:.1?})", run.self_time)?;
            }
            if let Some(busy) = run.busy {
                write!(f, " (busy {busy:.1?})")?;
            }
            if run.kind == RunKind::Tool {
                write!(f, " [tool]")?;
            }
            if !run.usage.is_zero() {
                write!(f, " [{}]", run.usage)?;
            }
            writeln!(f)?;
            // A failed run's last line of output usually says why.
            if run.outcome.is_failure()
                && let Some(last) = run.output.last()
            {
                writeln!(f, "{:indent$}  {}> {}", "", last.stream, last.line)?;
            }
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
            // The judged figure first, the other one after it when it differs.
            let (judged, judged_share, other, other_share, note) = match b.basis {
                BottleneckBasis::SelfTime => (
                    b.self_time,
                    b.self_share,
                    b.duration,
                    b.share,
                    "with nested runs",
                ),
                BottleneckBasis::Wall => (b.duration, b.share, b.self_time, b.self_share, "self"),
            };
            write!(
                f,
                "  BOTTLENECK {} took {judged:.1?} = {:.0}% of the pipeline",
                b.agent,
                judged_share * 100.0,
            )?;
            if other != judged {
                write!(f, " ({note}: {other:.1?} = {:.0}%)", other_share * 100.0)?;
            }
            writeln!(f)?;
        }
        if !self.usage.is_zero() {
            writeln!(f, "  usage: {}", self.usage)?;
        }
        write!(f, "  critical path: {}", self.nested_critical_path())
    }
}

impl PipelineReport {
    /// The stored runs with their nesting depth, each followed by the runs
    /// nested in it (in start order), so that indentation shows nesting
    /// even when parallel runs started in between.
    pub(crate) fn tree_order(&self) -> Vec<(&AgentRun, usize)> {
        let n = self.agents.len();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
        for (i, run) in self.agents.iter().enumerate() {
            // Parents come earlier in start order; anything else is a root.
            let slot = match run.parent {
                Some(p) if p < i => p,
                _ => n,
            };
            children[slot].push(i);
        }
        let mut out = Vec::with_capacity(n);
        // An explicit stack keeps deep nesting off the call stack.
        let mut stack: Vec<(usize, usize)> = children[n].iter().rev().map(|&i| (i, 0)).collect();
        while let Some((i, depth)) = stack.pop() {
            out.push((&self.agents[i], depth));
            stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
        }
        out
    }

    /// The critical path with nesting shown: runs inside a run are in
    /// braces after it, so `planner { retrieval } -> coder` says retrieval
    /// ran inside planner, then coder ran.
    pub fn nested_critical_path(&self) -> String {
        let mut out = String::new();
        // Runs on the path whose children may follow, and whether their
        // brace is open.
        let mut open: Vec<(usize, bool)> = Vec::new();
        for &i in &self.critical_runs {
            let Some(run) = self.agents.get(i) else {
                continue;
            };
            while let Some(&(top, opened)) = open.last() {
                if run.parent == Some(top) {
                    break;
                }
                open.pop();
                if opened {
                    out.push_str(" }");
                }
            }
            match open.last_mut() {
                Some((_, opened)) if !*opened => {
                    *opened = true;
                    out.push_str(" { ");
                }
                _ if !out.is_empty() => out.push_str(" -> "),
                _ => {}
            }
            out.push_str(&run.agent);
            open.push((i, false));
        }
        for (_, opened) in open.into_iter().rev() {
            if opened {
                out.push_str(" }");
            }
        }
        out
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
    #[serde(
        rename = "started_at_ms",
        serialize_with = "ser::unix_ms",
        deserialize_with = "ser::de_unix_ms"
    )]
    pub started_at: SystemTime,
    /// How long it has been running.
    #[serde(
        rename = "elapsed_ms",
        serialize_with = "ser::ms",
        deserialize_with = "ser::de_ms"
    )]
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

/// Serde helpers: durations as `f64` milliseconds, times as unix
/// milliseconds, and their exact inverses: reading back a figure these
/// wrote gives a value that writes the same figure again.
pub(crate) mod ser {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(millis(*d))
    }

    fn millis(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
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

    /// The duration whose [`millis`] is `x`: a float cannot hold every
    /// nanosecond, so several durations may write `x`; any of them is
    /// exact for the wire. `millis` never decreases as nanoseconds grow,
    /// so a binary search around the estimate finds one.
    pub(crate) fn duration_of_millis(x: f64) -> Option<Duration> {
        if !x.is_finite() || x < 0.0 {
            return None;
        }
        let estimate = (x * 1e6).round();
        if estimate >= u64::MAX as f64 {
            return None;
        }
        let estimate = estimate as u64;
        // The estimate is off by the float's rounding: at most a few
        // hundred nanoseconds for times a century from 1970.
        let slack = 4_096;
        let (mut lo, mut hi) = (
            estimate.saturating_sub(slack),
            estimate.saturating_add(slack),
        );
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if millis(Duration::from_nanos(mid)) < x {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let found = Duration::from_nanos(lo);
        (millis(found) == x).then_some(found)
    }

    fn exact<'de, D: Deserializer<'de>>(x: f64) -> Result<Duration, D::Error> {
        duration_of_millis(x).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "{x} is not a duration in milliseconds that perfmon wrote"
            ))
        })
    }

    pub(crate) fn de_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        exact::<D>(f64::deserialize(d)?)
    }

    pub(crate) fn de_opt_ms<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(x) => exact::<D>(x).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) fn de_unix_ms<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let x = f64::deserialize(d)?;
        if x >= 0.0 {
            Ok(UNIX_EPOCH + exact::<D>(x)?)
        } else {
            Ok(UNIX_EPOCH - exact::<D>(-x)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;

    fn run(agent: &str, nanos: u64, started: SystemTime, outcome: Outcome) -> AgentRun {
        AgentRun {
            agent: agent.into(),
            kind: RunKind::Tool,
            pipeline: "p".into(),
            started_at: started,
            duration: Duration::from_nanos(nanos),
            self_time: Duration::from_nanos(nanos / 3),
            busy: nanos
                .is_multiple_of(2)
                .then(|| Duration::from_nanos(nanos / 7)),
            outcome,
            offset: Duration::from_nanos(nanos / 5),
            parent: nanos.is_multiple_of(3).then_some(0),
            usage: Usage::new(nanos % 1000, 7, 0.000_123),
            model: Some("m".into()),
            output: vec![OutputLine {
                stream: "stderr".into(),
                line: "error[E0382]".into(),
                cut: true,
            }],
            output_dropped: 3,
        }
    }

    proptest! {
        /// Reading back a report's JSON and writing it again gives the same
        /// bytes, for any durations and times perfmon can write.
        #[test]
        fn a_report_written_read_and_written_again_is_byte_equal(
            nanos in 0u64..1_000_000_000_000_000,
            since_epoch in 0u64..4_000_000_000_000_000_000,
            error in ".{0,20}",
        ) {
            let started = UNIX_EPOCH + Duration::from_nanos(since_epoch);
            let report = PipelineReport {
                id: "proj_7".into(),
                run: 42,
                started_at: started,
                duration: Duration::from_nanos(nanos),
                outcome: Outcome::Failed { error: error.clone() },
                finished: true,
                agents: vec![
                    run("physics", nanos, started, Outcome::Succeeded),
                    run("compile", nanos / 11 + 1, started, Outcome::Failed { error }),
                    run("slow", nanos / 13, started, Outcome::Cancelled),
                ],
                bottlenecks: vec![Bottleneck {
                    agent: "physics".into(),
                    duration: Duration::from_nanos(nanos),
                    share: 0.7,
                    self_time: Duration::from_nanos(nanos / 3),
                    self_share: 1.0 / 3.0,
                    basis: BottleneckBasis::Wall,
                }],
                critical_path: vec!["physics".into()],
                critical_runs: vec![0],
                aggregated: vec![AggregatedRuns {
                    agent: "slow".into(),
                    runs: 9,
                    failures: 2,
                    total: Duration::from_nanos(nanos / 2),
                    self_time: Duration::from_nanos(nanos / 4),
                }],
                unfinished: vec!["late".into()],
                usage: Usage::new(1, 2, 0.5),
            };
            let json = serde_json::to_string(&report).unwrap();
            let back: PipelineReport = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(serde_json::to_string(&back).unwrap(), json);
        }

        #[test]
        fn a_figure_perfmon_did_not_write_is_an_error_not_a_guess(x in -1e6f64..-1e-9) {
            prop_assert!(ser::duration_of_millis(x).is_none());
        }
    }
}
