//! Alert rules (feature `alerts`): [`AlertRule`], evaluated over a sliding
//! window on a thread of their own (`eval.rs`), with webhooks
//! (`webhook.rs`).
//!
//! Above the event stream and the recorder in the crate's dependency
//! order, below the monitor: the evaluator reads events like any exporter
//! and publishes `alert_fired` / `alert_resolved` back onto the stream.

mod eval;
mod webhook;

use std::fmt;
use std::time::Duration;

pub(crate) use eval::{Board, Evaluator};
pub(crate) use webhook::Webhook;
pub use webhook::WebhookStats;

/// Default of [`AlertRule::window`].
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
/// Default of [`AlertRule::min_runs`].
pub const DEFAULT_MIN_RUNS: u64 = 5;
/// Default of [`AlertRule::hysteresis`].
pub const DEFAULT_HYSTERESIS: f64 = 0.1;

/// Default of [`MonitorBuilder::alert_webhook_timeout`](crate::MonitorBuilder::alert_webhook_timeout).
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// What a rule measures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Condition {
    AgentP99 { agent: String, limit: Duration },
    AgentMean { agent: String, limit: Duration },
    FailureRate { agent: Option<String>, share: f64 },
    PipelineDuration { limit: Duration },
    BottleneckShare { agent: String, share: f64 },
    EventsDropped { count: u64 },
    NoPipeline { silence: Duration },
}

impl Condition {
    /// The threshold, in the unit of the measured value.
    pub(crate) fn threshold(&self) -> f64 {
        match self {
            Condition::AgentP99 { limit, .. }
            | Condition::AgentMean { limit, .. }
            | Condition::PipelineDuration { limit } => limit.as_secs_f64() * 1e3,
            Condition::FailureRate { share, .. } | Condition::BottleneckShare { share, .. } => {
                *share
            }
            Condition::EventsDropped { count } => *count as f64,
            Condition::NoPipeline { silence } => silence.as_secs_f64(),
        }
    }

    pub(crate) fn unit(&self) -> &'static str {
        match self {
            Condition::AgentP99 { .. }
            | Condition::AgentMean { .. }
            | Condition::PipelineDuration { .. } => "ms",
            Condition::FailureRate { .. } | Condition::BottleneckShare { .. } => "share",
            Condition::EventsDropped { .. } => "events",
            Condition::NoPipeline { .. } => "s",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::AgentP99 { agent, limit } => write!(f, "{agent} p99 above {limit:?}"),
            Condition::AgentMean { agent, limit } => write!(f, "{agent} mean above {limit:?}"),
            Condition::FailureRate {
                agent: Some(a),
                share,
            } => {
                write!(f, "{a} failure rate above {:.0}%", share * 100.0)
            }
            Condition::FailureRate { agent: None, share } => {
                write!(f, "pipeline failure rate above {:.0}%", share * 100.0)
            }
            Condition::PipelineDuration { limit } => write!(f, "a pipeline took over {limit:?}"),
            Condition::BottleneckShare { agent, share } => write!(
                f,
                "{agent} a bottleneck in over {:.0}% of pipelines",
                share * 100.0
            ),
            Condition::EventsDropped { count } => write!(f, "over {count} events dropped"),
            Condition::NoPipeline { silence } => {
                write!(f, "no pipeline completed for {silence:?}")
            }
        }
    }
}

/// A line that, when crossed over a sliding window, fires an alert.
///
/// ```
/// use std::time::Duration;
/// use perfmon::AlertRule;
///
/// let monitor = perfmon::Monitor::builder()
///     .alert(AlertRule::agent_p99_above("physics", Duration::from_millis(800)))
///     .alert(
///         AlertRule::failure_rate_above("codegen", 0.2)
///             .window(Duration::from_secs(600))
///             .min_runs(10),
///     )
///     .build();
/// # drop(monitor);
/// ```
///
/// Each rule is judged over its last [`window`](Self::window) (5 min by
/// default), only with at least [`min_runs`](Self::min_runs) runs in it (5).
/// Crossing makes it *pending*; staying crossed for
/// [`for_at_least`](Self::for_at_least) (0 by default) makes it *firing*,
/// which sends `alert_fired`. It resolves (`alert_resolved`) only once the
/// figure is [`hysteresis`](Self::hysteresis) (10%) below the line, or the
/// window has no runs at all, so a figure hovering at the line does not flap.
#[derive(Debug, Clone, PartialEq)]
#[must_use = "a rule does nothing until given to MonitorBuilder::alert"]
pub struct AlertRule {
    pub(crate) name: String,
    pub(crate) condition: Condition,
    pub(crate) window: Duration,
    pub(crate) min_runs: u64,
    pub(crate) pending_for: Duration,
    pub(crate) hysteresis: f64,
}

impl AlertRule {
    fn new(condition: Condition) -> Self {
        let min_runs = match condition {
            Condition::EventsDropped { .. } | Condition::NoPipeline { .. } => 0,
            _ => DEFAULT_MIN_RUNS,
        };
        AlertRule {
            name: condition.to_string(),
            condition,
            window: DEFAULT_WINDOW,
            min_runs,
            pending_for: Duration::ZERO,
            hysteresis: DEFAULT_HYSTERESIS,
        }
    }

    /// The agent's (or tool's) 99th percentile wall time over the window is above `limit`.
    pub fn agent_p99_above(agent: impl Into<String>, limit: Duration) -> Self {
        AlertRule::new(Condition::AgentP99 {
            agent: agent.into(),
            limit,
        })
    }

    /// The agent's mean wall time over the window is above `limit`.
    pub fn agent_mean_above(agent: impl Into<String>, limit: Duration) -> Self {
        AlertRule::new(Condition::AgentMean {
            agent: agent.into(),
            limit,
        })
    }

    /// More than `share` (0–1) of the agent's runs in the window failed.
    ///
    /// # Panics
    ///
    /// If `share` is not in `[0, 1)`.
    #[track_caller]
    pub fn failure_rate_above(agent: impl Into<String>, share: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&share),
            "share must be in [0, 1), got {share}"
        );
        AlertRule::new(Condition::FailureRate {
            agent: Some(agent.into()),
            share,
        })
    }

    /// More than `share` (0–1) of the pipelines that finished in the window failed.
    ///
    /// # Panics
    ///
    /// If `share` is not in `[0, 1)`.
    #[track_caller]
    pub fn pipeline_failure_rate_above(share: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&share),
            "share must be in [0, 1), got {share}"
        );
        AlertRule::new(Condition::FailureRate { agent: None, share })
    }

    /// A pipeline that finished in the window took longer than `limit`.
    /// Fires from the first such pipeline (its `min_runs` is 1).
    pub fn pipeline_duration_above(limit: Duration) -> Self {
        AlertRule::new(Condition::PipelineDuration { limit }).min_runs(1)
    }

    /// The agent was a bottleneck in more than `share` (0–1) of the
    /// pipelines it ran in during the window.
    ///
    /// # Panics
    ///
    /// If `share` is not in `[0, 1)`.
    #[track_caller]
    pub fn bottleneck_share_above(agent: impl Into<String>, share: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&share),
            "share must be in [0, 1), got {share}"
        );
        AlertRule::new(Condition::BottleneckShare {
            agent: agent.into(),
            share,
        })
    }

    /// More than `count` events were dropped (the event queue was full:
    /// `Overview::events_dropped`) during the window.
    pub fn events_dropped_above(count: u64) -> Self {
        AlertRule::new(Condition::EventsDropped { count })
    }

    /// No pipeline completed for longer than `silence`: the program is
    /// stalled, or stopped getting work.
    pub fn no_pipeline_for(silence: Duration) -> Self {
        AlertRule::new(Condition::NoPipeline { silence })
    }

    /// Names the rule (default: what it checks, e.g. `physics p99 above 800ms`).
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The sliding window the figure is measured over. Default 5 min.
    ///
    /// # Panics
    ///
    /// If `window` is zero.
    #[track_caller]
    pub fn window(mut self, window: Duration) -> Self {
        assert!(!window.is_zero(), "an alert window must not be zero");
        self.window = window;
        self
    }

    /// Runs the window must hold before the rule is judged. Default 5
    /// (1 for pipeline duration, 0 for dropped events and silence).
    pub fn min_runs(mut self, runs: u64) -> Self {
        self.min_runs = runs;
        self
    }

    /// How long the line must stay crossed before the alert fires (the
    /// state is `pending` meanwhile). Default 0: it fires when crossed.
    pub fn for_at_least(mut self, duration: Duration) -> Self {
        self.pending_for = duration;
        self
    }

    /// How far below the line (a share of it) the figure must fall before
    /// a firing alert resolves. Default 0.1.
    ///
    /// # Panics
    ///
    /// If `share` is not in `[0, 1)`.
    #[track_caller]
    pub fn hysteresis(mut self, share: f64) -> Self {
        assert!(
            (0.0..1.0).contains(&share),
            "hysteresis must be in [0, 1), got {share}"
        );
        self.hysteresis = share;
        self
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
