//! The alert evaluator: an exporter that keeps each rule's sliding window
//! of samples from the event stream, judges every rule when it wakes (at
//! least every 100 ms, and at each flush), and sends the transitions: an
//! event on the stream, a `tracing` line, and the webhooks' queues.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{AlertRule, Condition, Webhook, WebhookStats};
use crate::alert_state::{Alert, AlertState};
use crate::events::{Event, EventKind};
use crate::exporter::Exporter;
use crate::recorder::Recorder;
use crate::sync::lock;

/// How often rules are judged while events flow (and at each flush).
const EVALUATE_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
/// Samples a rule keeps at most: its window's newest runs.
const MAX_SAMPLES: usize = 10_000;

/// What `Monitor::alerts` reads: every rule's latest state.
#[derive(Debug, Default)]
pub(crate) struct Board {
    alerts: Mutex<Vec<Alert>>,
    webhooks: Mutex<Vec<Arc<super::webhook::Shared>>>,
}

impl Board {
    pub(crate) fn alerts(&self) -> Vec<Alert> {
        lock(&self.alerts).clone()
    }

    pub(crate) fn webhooks(&self) -> Vec<WebhookStats> {
        lock(&self.webhooks).iter().map(|w| w.stats()).collect()
    }
}

/// One sample: when, the figure (ms, or 1/0 for a flag), whether it failed.
type Sample = (i64, f64, bool);

struct RuleState {
    rule: AlertRule,
    samples: VecDeque<Sample>,
    alert: Alert,
}

pub(crate) struct Evaluator {
    recorder: Arc<Recorder>,
    rules: Vec<RuleState>,
    board: Arc<Board>,
    webhooks: Vec<Webhook>,
    started_ms: i64,
    last_pipeline_ms: Option<i64>,
    /// The bus's drop count over time, for `events_dropped_above`.
    dropped: VecDeque<(i64, u64)>,
    evaluated: std::time::Instant,
}

impl std::fmt::Debug for Evaluator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertEvaluator")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

fn ms(t: SystemTime) -> i64 {
    crate::record::ser::unix_millis(t) as i64
}

impl Evaluator {
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        rules: Vec<AlertRule>,
        webhooks: Vec<Webhook>,
    ) -> (Self, Arc<Board>) {
        let now = recorder.system_time(recorder.now());
        let rules: Vec<RuleState> = rules
            .into_iter()
            .map(|rule| RuleState {
                alert: Alert {
                    rule: rule.name.clone(),
                    state: AlertState::Inactive,
                    value: None,
                    threshold: rule.condition.threshold(),
                    unit: rule.condition.unit(),
                    runs: 0,
                    message: format!("{}: not judged yet", rule.name),
                    since: now,
                },
                rule,
                samples: VecDeque::new(),
            })
            .collect();
        let board = Arc::new(Board {
            alerts: Mutex::new(rules.iter().map(|r| r.alert.clone()).collect()),
            webhooks: Mutex::new(webhooks.iter().map(Webhook::shared).collect()),
        });
        let evaluator = Evaluator {
            recorder,
            rules,
            board: Arc::clone(&board),
            webhooks,
            started_ms: ms(now),
            last_pipeline_ms: None,
            // Drops are counted from the monitor's start.
            dropped: VecDeque::from([(ms(now), 0)]),
            evaluated: std::time::Instant::now(),
        };
        (evaluator, board)
    }

    fn now(&self) -> SystemTime {
        self.recorder.system_time(self.recorder.now())
    }

    fn evaluate(&mut self) {
        self.evaluated = std::time::Instant::now();
        let now = self.now();
        let now_ms = ms(now);
        let dropped_total = self.recorder.bus.dropped();
        self.dropped.push_back((now_ms, dropped_total));
        let longest = self
            .rules
            .iter()
            .map(|r| r.rule.window)
            .max()
            .unwrap_or_default();
        let longest_ms = i64::try_from(longest.as_millis()).unwrap_or(i64::MAX);
        while self.dropped.len() > 1 && self.dropped[0].0 < now_ms.saturating_sub(longest_ms) {
            self.dropped.pop_front();
        }
        let mut changed = Vec::new();
        for state in &mut self.rules {
            let window_ms = i64::try_from(state.rule.window.as_millis()).unwrap_or(i64::MAX);
            let since = now_ms.saturating_sub(window_ms);
            while state.samples.front().is_some_and(|s| s.0 < since) {
                state.samples.pop_front();
            }
            let (value, runs) = measure(
                &state.rule.condition,
                &state.samples,
                &self.dropped,
                since,
                now_ms,
                self.last_pipeline_ms.unwrap_or(self.started_ms),
            );
            if let Some(next) = step(&state.rule, &state.alert, value, runs, now) {
                state.alert = next;
                if matches!(state.alert.state, AlertState::Firing | AlertState::Resolved) {
                    changed.push(state.alert.clone());
                }
            } else {
                state.alert.message =
                    describe(&state.rule, &state.alert, state.alert.state, value, runs);
                state.alert.value = value;
                state.alert.runs = runs;
            }
        }
        *lock(&self.board.alerts) = self.rules.iter().map(|r| r.alert.clone()).collect();
        for alert in changed {
            self.announce(alert);
        }
    }

    fn announce(&self, alert: Alert) {
        let fired = alert.state == AlertState::Firing;
        if fired {
            tracing::warn!(target: "perfmon::alerts", rule = %alert.rule, "ALERT {}", alert.message);
        } else {
            tracing::info!(target: "perfmon::alerts", rule = %alert.rule, "resolved: {}", alert.message);
        }
        let alert = Arc::new(alert);
        for webhook in &self.webhooks {
            webhook.send(&alert);
        }
        let at = self.recorder.now();
        self.recorder.publish_report(None, at, || {
            if fired {
                EventKind::AlertFired(alert)
            } else {
                EventKind::AlertResolved(alert)
            }
        });
    }
}

/// The rule's figure over its window, and the runs behind it; `None` when
/// there is nothing to judge.
fn measure(
    condition: &Condition,
    samples: &VecDeque<Sample>,
    dropped: &VecDeque<(i64, u64)>,
    since: i64,
    now: i64,
    last_pipeline: i64,
) -> (Option<f64>, u64) {
    let n = samples.len() as u64;
    let mean = || samples.iter().map(|s| s.1).sum::<f64>() / samples.len() as f64;
    let value = match condition {
        _ if matches!(condition, Condition::EventsDropped { .. }) => {
            let first = dropped
                .iter()
                .find(|d| d.0 >= since)
                .or(dropped.front())
                .map_or(0, |d| d.1);
            let last = dropped.back().map_or(0, |d| d.1);
            let count = last - first.min(last);
            return (Some(count as f64), count);
        }
        Condition::NoPipeline { .. } => {
            return (Some((now - last_pipeline).max(0) as f64 / 1e3), 0);
        }
        _ if samples.is_empty() => None,
        Condition::AgentP99 { .. } => {
            let mut values: Vec<f64> = samples.iter().map(|s| s.1).collect();
            values.sort_by(f64::total_cmp);
            // Nearest rank: the smallest value with 99% of runs at or below it.
            let rank = ((values.len() as f64) * 0.99).ceil() as usize;
            values.get(rank.saturating_sub(1)).copied()
        }
        Condition::AgentMean { .. } | Condition::BottleneckShare { .. } => Some(mean()),
        Condition::FailureRate { .. } => {
            Some(samples.iter().filter(|s| s.2).count() as f64 / samples.len() as f64)
        }
        Condition::PipelineDuration { .. } => samples.iter().map(|s| s.1).reduce(f64::max),
        Condition::EventsDropped { .. } => None,
    };
    (value, n)
}

/// One readable line: the figure against the line, and the runs behind it.
fn describe(
    rule: &AlertRule,
    alert: &Alert,
    state: AlertState,
    value: Option<f64>,
    runs: u64,
) -> String {
    let shown = |v: f64| match alert.unit {
        "share" => format!("{:.0}%", v * 100.0),
        "ms" => format!("{v:.1} ms"),
        "s" => format!("{v:.0} s"),
        _ => format!("{v:.0}"),
    };
    match (state, value) {
        (AlertState::Resolved, None) => {
            format!("{}: no runs in the last {:?}", rule.name, rule.window)
        }
        (_, Some(v)) if runs < rule.min_runs => format!(
            "{}: {} over {} runs, fewer than the {} it needs to judge",
            rule.name,
            shown(v),
            runs,
            rule.min_runs
        ),
        (_, Some(v)) => format!(
            "{}: {} (line {}, {} in the last {:?})",
            rule.name,
            shown(v),
            shown(alert.threshold),
            runs,
            rule.window
        ),
        (_, None) => format!("{}: no runs in the last {:?}", rule.name, rule.window),
    }
}

/// The rule's next state, if it changes.
fn step(
    rule: &AlertRule,
    alert: &Alert,
    value: Option<f64>,
    runs: u64,
    now: SystemTime,
) -> Option<Alert> {
    let threshold = alert.threshold;
    let crossed = value.is_some_and(|v| v > threshold) && runs >= rule.min_runs;
    let cleared = match value {
        // An empty window resolves; too few runs to judge holds the state.
        None => runs == 0,
        Some(v) => runs >= rule.min_runs && v < threshold * (1.0 - rule.hysteresis),
    };
    let held = now.duration_since(alert.since).unwrap_or_default();
    let next = match alert.state {
        AlertState::Inactive | AlertState::Resolved if crossed => {
            if rule.pending_for.is_zero() {
                AlertState::Firing
            } else {
                AlertState::Pending
            }
        }
        AlertState::Pending if crossed && held >= rule.pending_for => AlertState::Firing,
        AlertState::Pending if !crossed => AlertState::Inactive,
        AlertState::Firing if cleared => AlertState::Resolved,
        _ => return None,
    };
    let message = describe(rule, alert, next, value, runs);
    Some(Alert {
        rule: alert.rule.clone(),
        state: next,
        value,
        threshold,
        unit: alert.unit,
        runs,
        message,
        since: now,
    })
}

impl Exporter for Evaluator {
    fn export(&mut self, events: &[Event]) {
        for event in events {
            let at = ms(event.ts);
            if let EventKind::PipelineCompleted(_) = &event.kind {
                self.last_pipeline_ms = Some(self.last_pipeline_ms.map_or(at, |l| l.max(at)));
            }
            for state in &mut self.rules {
                if let Some(sample) = sample(&state.rule.condition, event, at) {
                    if state.samples.len() == MAX_SAMPLES {
                        state.samples.pop_front();
                    }
                    state.samples.push_back(sample);
                }
            }
        }
    }

    fn flush(&mut self) {
        self.evaluate();
    }

    fn idle(&mut self) {
        if self.evaluated.elapsed() >= EVALUATE_EVERY {
            self.evaluate();
        }
    }
}

/// The sample `event` gives the rule, if any.
fn sample(condition: &Condition, event: &Event, at: i64) -> Option<Sample> {
    match (&event.kind, condition) {
        (
            EventKind::AgentCompleted {
                agent,
                duration,
                outcome,
                ..
            }
            | EventKind::ToolCompleted {
                agent,
                duration,
                outcome,
                ..
            },
            Condition::AgentP99 { agent: want, .. }
            | Condition::AgentMean { agent: want, .. }
            | Condition::FailureRate {
                agent: Some(want), ..
            },
        ) if **agent == **want => Some((at, duration.as_secs_f64() * 1e3, outcome.is_failure())),
        (EventKind::PipelineCompleted(report), Condition::FailureRate { agent: None, .. }) => {
            Some((at, 0.0, report.outcome.is_failure()))
        }
        (EventKind::PipelineCompleted(report), Condition::PipelineDuration { .. }) => {
            Some((at, report.duration.as_secs_f64() * 1e3, false))
        }
        (EventKind::PipelineCompleted(report), Condition::BottleneckShare { agent, .. }) => {
            let ran = report.agents.iter().any(|r| r.agent == *agent)
                || report.aggregated.iter().any(|a| a.agent == *agent);
            ran.then(|| {
                (
                    at,
                    f64::from(u8::from(report.bottleneck(agent).is_some())),
                    false,
                )
            })
        }
        _ => None,
    }
}
