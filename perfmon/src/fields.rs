//! The names perfmon reads from `tracing` spans and events: the contract
//! between the code that makes spans (guards, macros, your own
//! `#[instrument]`) and [`PerfmonLayer`](crate::PerfmonLayer), which reads them.
//!
//! Bottom of the crate's dependency order, beside `outcome`: it imports
//! nothing from the crate.

/// Field that makes a span an agent run; its value is the agent's name.
pub const AGENT_FIELD: &str = "perfmon.agent";
/// Field that makes a span a tool run (a run of kind `tool`: a compiler, a
/// search, a shell command an agent calls); its value is the tool's name.
pub const TOOL_FIELD: &str = "perfmon.tool";
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

/// Target of `perfmon::output!` events: one line of a run's live output.
pub const OUTPUT_TARGET: &str = "perfmon::output";
/// Target of `perfmon::usage!` events: tokens and cost of the current run.
pub const USAGE_TARGET: &str = "perfmon::usage";

/// Field of output events: the stream (`stdout`, `stderr`, ...).
pub(crate) const STREAM_FIELD: &str = "stream";
/// Field of usage events: the model's name.
pub(crate) const MODEL_FIELD: &str = "model";
/// Field of usage events: input (prompt) tokens.
pub(crate) const INPUT_TOKENS_FIELD: &str = "input_tokens";
/// Field of usage events: output (completion) tokens.
pub(crate) const OUTPUT_TOKENS_FIELD: &str = "output_tokens";
/// Field of usage events: cost in US dollars.
pub(crate) const COST_FIELD: &str = "cost_usd";

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
