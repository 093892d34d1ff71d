//! The names perfmon reads from `tracing` spans and events: the contract
//! between the code that makes spans (guards, macros, your own
//! `#[instrument]`) and [`PerfmonLayer`](crate::PerfmonLayer), which reads them.
//!
//! Bottom of the crate's dependency order, beside `outcome`: it imports
//! nothing from the crate.

/// Field that makes a span an agent run; its value is the agent's name.
pub const AGENT_FIELD: &str = "perfmon.agent";
/// Field that makes a span a pipeline; its value is the pipeline's id.
pub const PIPELINE_FIELD: &str = "perfmon.pipeline";
/// Record it on an agent or pipeline span to mark it failed with that error.
pub const ERROR_FIELD: &str = "perfmon.error";
/// Record `"panicked"`, `"cancelled"`, `"failed"` or `"succeeded"` on a span
/// to set its outcome. On a pipeline span it also ends the pipeline. Any
/// other value is reported as an `error` event and fails the run.
pub const OUTCOME_FIELD: &str = "perfmon.outcome";
/// Declared (never recorded) by perfmon's synchronous guards: such spans are
/// entered exactly once, so busy time is not tracked for them.
pub const SYNC_FIELD: &str = "perfmon.sync";
/// Target of `perfmon::progress!` events.
pub const PROGRESS_TARGET: &str = "perfmon::progress";
/// Target of `perfmon::thought!` events.
pub const THOUGHT_TARGET: &str = "perfmon::thought";

/// Field of progress events: percent done, 0–100.
pub(crate) const PERCENT_FIELD: &str = "percent";
/// Field of progress events: the stage's name.
pub(crate) const STAGE_FIELD: &str = "stage";
/// The formatted message of any `tracing` event.
pub(crate) const MESSAGE_FIELD: &str = "message";
/// The field `#[instrument(err)]` puts on its `ERROR` event.
pub(crate) const EVENT_ERROR_FIELD: &str = "error";

/// The agent name used when a span's `perfmon.agent` (or a pipeline's id)
/// has no value.
pub(crate) const UNNAMED: &str = "(unnamed)";
