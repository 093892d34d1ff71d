//! The `tracing` field visitors of the layer: each reads the few fields one
//! kind of span or event carries, and ignores the rest.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tracing::field::{Field, Visit};

use crate::agent_table::AgentTable;
use crate::fields::{
    AGENT_FIELD, COST_FIELD, ERROR_FIELD, EVENT_ERROR_FIELD, INPUT_TOKENS_FIELD, MESSAGE_FIELD,
    MODEL_FIELD, OUTCOME_FIELD, OUTPUT_TOKENS_FIELD, PERCENT_FIELD, STAGE_FIELD, STREAM_FIELD,
    TOOL_FIELD, UNNAMED,
};
use crate::outcome::{Outcome, UnknownOutcome};
use crate::record::RunKind;
use crate::stats::AgentEntry;
use crate::usage::UsageSum;

/// Resolves the agent (or tool) named by `perfmon.agent` (`perfmon.tool`)
/// without copying the name.
pub(crate) struct AgentVisitor<'a> {
    agents: &'a AgentTable,
    overflowed: &'a AtomicU64,
    pub(crate) entry: Option<Arc<AgentEntry>>,
    /// `Tool` once a `perfmon.tool` field was seen.
    pub(crate) kind: RunKind,
}

impl<'a> AgentVisitor<'a> {
    pub(crate) fn new(agents: &'a AgentTable, overflowed: &'a AtomicU64) -> Self {
        AgentVisitor {
            agents,
            overflowed,
            entry: None,
            kind: RunKind::Agent,
        }
    }

    /// The entry found, or the `"(unnamed)"` one, and the run's kind.
    pub(crate) fn into_entry(self) -> (Arc<AgentEntry>, RunKind) {
        let entry = match self.entry {
            Some(entry) => entry,
            None => self
                .agents
                .get_or_insert(UNNAMED, self.kind, self.overflowed),
        };
        (entry, self.kind)
    }
}

impl Visit for AgentVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let kind = match field.name() {
            AGENT_FIELD => RunKind::Agent,
            TOOL_FIELD => RunKind::Tool,
            _ => return,
        };
        self.kind = kind;
        self.entry = Some(self.agents.get_or_insert(value, kind, self.overflowed));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if matches!(field.name(), AGENT_FIELD | TOOL_FIELD) {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

/// Reads the `stream` and the message of an output event.
#[derive(Debug, Default)]
pub(crate) struct OutputVisitor {
    pub(crate) stream: Option<String>,
    pub(crate) line: Option<String>,
}

impl Visit for OutputVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            STREAM_FIELD => self.stream = Some(value.to_owned()),
            MESSAGE_FIELD => self.line = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            STREAM_FIELD => self.stream = Some(format!("{value:?}")),
            MESSAGE_FIELD => self.line = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Reads `model`, `input_tokens`, `output_tokens` and `cost_usd` of a usage
/// event; numbers of any type (negative ones count as 0).
#[derive(Debug, Default)]
pub(crate) struct UsageVisitor {
    pub(crate) model: Option<String>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl UsageVisitor {
    pub(crate) fn usage(&self) -> UsageSum {
        UsageSum::of(self.input_tokens, self.output_tokens, self.cost_usd)
    }
}

impl Visit for UsageVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            INPUT_TOKENS_FIELD => self.input_tokens = value,
            OUTPUT_TOKENS_FIELD => self.output_tokens = value,
            COST_FIELD => self.cost_usd = value as f64,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        match field.name() {
            COST_FIELD => self.cost_usd = value,
            // Token counts given as floats: whole tokens, negatives as 0.
            INPUT_TOKENS_FIELD | OUTPUT_TOKENS_FIELD => {
                self.record_u64(field, if value > 0.0 { value as u64 } else { 0 });
            }
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == MODEL_FIELD {
            self.model = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == MODEL_FIELD {
            self.model = Some(format!("{value:?}"));
        }
    }
}

/// Reads one string-valued field (the pipeline id).
pub(crate) struct NameVisitor {
    field: &'static str,
    value: Option<String>,
}

impl NameVisitor {
    pub(crate) fn new(field: &'static str) -> Self {
        NameVisitor { field, value: None }
    }

    /// The value read, or `"(unnamed)"`.
    pub(crate) fn value(&self) -> &str {
        self.value.as_deref().unwrap_or(UNNAMED)
    }
}

impl Visit for NameVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == self.field {
            self.value = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == self.field {
            let mut s = String::new();
            let _ = write!(s, "{value:?}");
            self.value = Some(s);
        }
    }
}

/// Reads `perfmon.outcome` and `perfmon.error` from a record, in any order.
#[derive(Debug, Default)]
pub(crate) struct OutcomeVisitor {
    pub(crate) outcome: Option<String>,
    pub(crate) error: Option<String>,
}

impl OutcomeVisitor {
    /// Whether the record set either field.
    pub(crate) fn is_empty(&self) -> bool {
        self.outcome.is_none() && self.error.is_none()
    }

    /// An agent run's outcome after this record: an error fails the run;
    /// else a recorded outcome sets it; else it stays `previous`.
    ///
    /// # Errors
    ///
    /// An outcome value that is none of the four names.
    pub(crate) fn agent_outcome(
        self,
        previous: Option<Outcome>,
    ) -> Result<Option<Outcome>, UnknownOutcome> {
        match (self.outcome, self.error) {
            (_, Some(error)) => Ok(Some(Outcome::Failed { error })),
            (Some(outcome), None) => Outcome::parse(&outcome, None).map(Some),
            (None, None) => Ok(previous),
        }
    }

    /// A pipeline's final outcome when `value` is recorded on it, given the
    /// error recorded on it so far: an error turns `succeeded`/`failed` into
    /// `failed` with that text; `panicked` and `cancelled` stay.
    pub(crate) fn pipeline_outcome(
        value: &str,
        error: Option<String>,
    ) -> Result<Outcome, UnknownOutcome> {
        let outcome = Outcome::parse(value, error.as_deref())?;
        Ok(match (outcome, error) {
            (Outcome::Succeeded, Some(error)) => Outcome::Failed { error },
            (outcome, _) => outcome,
        })
    }
}

impl Visit for OutcomeVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            OUTCOME_FIELD => self.outcome = Some(value.to_owned()),
            ERROR_FIELD => self.error = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            OUTCOME_FIELD => self.outcome = Some(format!("{value:?}")),
            ERROR_FIELD => self.error = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Reads `percent`, `stage` and the message of a progress or thought event.
#[derive(Debug, Default)]
pub(crate) struct ProgressVisitor {
    pub(crate) percent: Option<f64>,
    pub(crate) stage: Option<String>,
    pub(crate) message: Option<String>,
}

impl Visit for ProgressVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == PERCENT_FIELD {
            self.percent = Some(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_f64(field, value as f64);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.record_f64(field, value as f64);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            STAGE_FIELD => self.stage = Some(value.to_owned()),
            MESSAGE_FIELD => self.message = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            STAGE_FIELD => self.stage = Some(format!("{value:?}")),
            MESSAGE_FIELD => self.message = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

/// Collects an ERROR event's `error` field and a one-line rendering of it.
#[derive(Debug, Default)]
pub(crate) struct ErrorVisitor {
    pub(crate) error: Option<String>,
    message: String,
    rest: String,
    /// Fields other than the message.
    fields: u32,
}

impl ErrorVisitor {
    /// The error, if the event has exactly the shape `#[instrument(err)]`
    /// emits: one field, `error`, and no message. An `error!` with a
    /// message ("recovered, retrying") or other fields is a log line, not
    /// the run's outcome.
    pub(crate) fn run_error(&self) -> Option<&String> {
        (self.message.is_empty() && self.fields == 1)
            .then_some(self.error.as_ref())
            .flatten()
    }

    /// `message field=value ...`, on one line.
    pub(crate) fn into_message(self) -> String {
        match (self.message.is_empty(), self.rest.is_empty()) {
            (false, false) => format!("{} {}", self.message, self.rest),
            (false, true) => self.message,
            (true, _) => self.rest,
        }
    }
}

impl Visit for ErrorVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            MESSAGE_FIELD => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                self.fields += 1;
                if name == EVENT_ERROR_FIELD {
                    self.error = Some(format!("{value:?}"));
                }
                if !self.rest.is_empty() {
                    self.rest.push(' ');
                }
                let _ = write!(self.rest, "{name}={value:?}");
            }
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == EVENT_ERROR_FIELD {
            self.error = Some(value.to_owned());
        }
        self.record_debug(field, &DisplayStr(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if field.name() == EVENT_ERROR_FIELD {
            self.error = Some(value.to_string());
        }
        self.record_debug(field, &DisplayStr(&value.to_string()));
    }
}

/// Debug-formats as the bare string, without quotes.
struct DisplayStr<'a>(&'a str);

impl fmt::Debug for DisplayStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tracing::span::{Attributes, Id, Record};
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// A layer that runs a visitor over every record and event, and keeps
    /// what `read` makes of it.
    struct Visiting<V, T> {
        read: fn(V) -> T,
        seen: Arc<Mutex<Vec<T>>>,
    }

    impl<S, V, T> Layer<S> for Visiting<V, T>
    where
        S: tracing::Subscriber,
        V: Visit + Default + 'static,
        T: Send + 'static,
    {
        fn on_new_span(&self, _: &Attributes<'_>, _: &Id, _: Context<'_, S>) {}

        fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut v = V::default();
            values.record(&mut v);
            self.seen.lock().unwrap().push((self.read)(v));
        }

        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut v = V::default();
            event.record(&mut v);
            self.seen.lock().unwrap().push((self.read)(v));
        }
    }

    fn visit<V: Visit + Default + 'static, T: Send + 'static>(
        read: fn(V) -> T,
        emit: impl FnOnce(),
    ) -> Vec<T> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let layer = Visiting {
            read,
            seen: Arc::clone(&seen),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), emit);
        Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap()
    }

    fn agent_span() -> tracing::Span {
        tracing::info_span!(
            "a",
            perfmon.agent = "x",
            perfmon.outcome = tracing::field::Empty,
            perfmon.error = tracing::field::Empty
        )
    }

    #[test]
    fn outcomes_are_read_whatever_the_order_and_unknown_ones_are_errors() {
        let seen = visit(
            |v: OutcomeVisitor| v.agent_outcome(None),
            || {
                let span = agent_span();
                span.record("perfmon.outcome", "cancelled");
                span.record("perfmon.error", "mesh did not converge");
                span.record("perfmon.outcome", "sucess");
            },
        );
        assert_eq!(
            seen,
            vec![
                Ok(Some(Outcome::Cancelled)),
                Ok(Some(Outcome::Failed {
                    error: "mesh did not converge".into()
                })),
                Err(UnknownOutcome("sucess".into())),
            ]
        );
    }

    #[test]
    fn a_pipeline_error_turns_success_into_failure_but_not_a_panic() {
        assert_eq!(
            OutcomeVisitor::pipeline_outcome("succeeded", Some("late".into())),
            Ok(Outcome::Failed {
                error: "late".into()
            })
        );
        assert_eq!(
            OutcomeVisitor::pipeline_outcome("panicked", Some("late".into())),
            Ok(Outcome::Panicked)
        );
        assert!(OutcomeVisitor::pipeline_outcome("done", None).is_err());
    }

    #[test]
    fn progress_reads_percent_of_any_number_type_stage_and_message() {
        let seen = visit(
            |v: ProgressVisitor| (v.percent, v.stage, v.message),
            || {
                tracing::info!(percent = 40.0, stage = "meshing", "cells {}", 1200);
                tracing::info!(percent = 7_u64);
            },
        );
        assert_eq!(
            seen,
            vec![
                (
                    Some(40.0),
                    Some("meshing".into()),
                    Some("cells 1200".into())
                ),
                (Some(7.0), None, None),
            ]
        );
    }

    #[test]
    fn usage_reads_numbers_of_any_type_and_the_model() {
        let seen = visit(
            |v: UsageVisitor| (v.model.clone(), v.usage()),
            || {
                tracing::info!(
                    model = "m",
                    input_tokens = 10,
                    output_tokens = 2_u64,
                    cost_usd = 0.5
                );
                tracing::info!(input_tokens = -3, output_tokens = 4.0, cost_usd = 1);
            },
        );
        assert_eq!(
            seen,
            vec![
                (Some("m".into()), UsageSum::of(10, 2, 0.5)),
                (None, UsageSum::of(0, 4, 1.0)),
            ]
        );
    }

    #[test]
    fn output_reads_the_stream_and_the_line() {
        let seen = visit(
            |v: OutputVisitor| (v.stream, v.line),
            || {
                tracing::info!(stream = "stderr", "error[E0308]: {}", "mismatched types");
                tracing::info!("plain");
            },
        );
        assert_eq!(
            seen,
            vec![
                (
                    Some("stderr".into()),
                    Some("error[E0308]: mismatched types".into())
                ),
                (None, Some("plain".into())),
            ]
        );
    }

    #[test]
    fn error_events_keep_the_error_field_and_one_line_of_text() {
        let seen = visit(
            |v: ErrorVisitor| (v.run_error().is_some(), v.error.clone(), v.into_message()),
            || {
                let err = std::io::Error::other("disk full");
                tracing::error!(
                    error = &err as &(dyn std::error::Error + 'static),
                    attempt = 3,
                    "write failed"
                );
                tracing::error!("no error field");
                tracing::error!(error = %err);
                tracing::error!(error = %err, "recovered, retrying");
            },
        );
        assert_eq!(
            seen,
            vec![
                (
                    false,
                    Some("disk full".into()),
                    "write failed error=disk full attempt=3".into()
                ),
                (false, None, "no error field".into()),
                (true, Some("disk full".into()), "error=disk full".into()),
                (
                    false,
                    Some("disk full".into()),
                    "recovered, retrying error=disk full".into()
                ),
            ]
        );
    }
}
