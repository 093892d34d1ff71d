//! [`Alert`] and [`AlertState`]: what an alert rule says right now, as
//! returned by `Monitor::alerts` and carried by the `alert_fired` and
//! `alert_resolved` events.
//!
//! Plain data near the bottom of the crate's dependency order (beside
//! `record`), so the event stream can carry it; the rules and their
//! evaluation live in `alerts`, above the stream.

use std::time::SystemTime;

use serde::Serialize;

use crate::record::ser;

/// Where an alert rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AlertState {
    /// Not crossed (or not enough runs in its window to judge).
    Inactive,
    /// Crossed, for less than the rule's `for` duration.
    Pending,
    /// Crossed for at least the `for` duration: `alert_fired` was sent.
    Firing,
    /// Was firing; back below the line (with hysteresis): `alert_resolved`
    /// was sent. Becomes `Pending` again if it crosses once more.
    Resolved,
}

impl AlertState {
    /// `"inactive"`, `"pending"`, `"firing"` or `"resolved"`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One rule's state, with the figure behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Alert {
    /// The rule's name.
    pub rule: String,
    /// Where it stands.
    pub state: AlertState,
    /// The figure measured over the rule's window, in `unit`; `None` when
    /// the window had too few runs to judge.
    pub value: Option<f64>,
    /// The line the figure is compared with, in `unit`.
    pub threshold: f64,
    /// `"ms"`, `"share"`, `"events"` or `"s"`.
    pub unit: &'static str,
    /// Runs (or pipelines, or events) in the window behind `value`.
    pub runs: u64,
    /// One readable line: what crossed which line.
    pub message: String,
    /// When it entered this state.
    #[serde(rename = "since_ms", serialize_with = "ser::unix_ms")]
    pub since: SystemTime,
}
