//! What runs report besides their timing, read from events: `output!`
//! lines and `usage!` totals, kept in the nearest run's extras; and, with
//! feature `otel`, those totals written onto the run's live span for
//! `tracing-opentelemetry`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

#[cfg(feature = "otel")]
use tracing::Dispatch;
use tracing::Event;
#[cfg(feature = "otel")]
use tracing::span::{Id, Record};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::visitors::{OutputVisitor, UsageVisitor};
use super::{NearestMut, PerfmonLayer};
#[cfg(feature = "otel")]
use super::{RunUsage, WithRunUsage};
use crate::events::EventKind;
use crate::output;
use crate::record::OutputLine;
use crate::sync::lock;

/// Records the current run's usage totals and model on its span as
/// `gen_ai.usage.*` and `gen_ai.request.model` (fields that
/// `__perfmon_span!` declares with feature `otel`), so that
/// `tracing-opentelemetry` exports them. Called by `usage!` after its
/// event, outside any subscriber callback.
#[cfg(feature = "otel")]
pub(crate) fn record_usage_on_run_span() {
    use tracing::field::Value;
    tracing::dispatcher::get_default(|dispatch| {
        let Some(current) = dispatch.current_span().id().cloned() else {
            return;
        };
        let Some(hook) = dispatch.downcast_ref::<WithRunUsage>() else {
            return;
        };
        let Some(run) = (hook.0)(dispatch, &current) else {
            return;
        };
        let fields = run.meta.fields();
        let (Some(input), Some(output)) = (
            fields.field("gen_ai.usage.input_tokens"),
            fields.field("gen_ai.usage.output_tokens"),
        ) else {
            return;
        };
        let (tokens_in, tokens_out) = (run.usage.input_tokens, run.usage.output_tokens);
        match (fields.field("gen_ai.request.model"), run.model.as_deref()) {
            (Some(field), Some(model)) => {
                let values = [
                    (&input, Some(&tokens_in as &dyn Value)),
                    (&output, Some(&tokens_out as &dyn Value)),
                    (&field, Some(&model as &dyn Value)),
                ];
                dispatch.record(&run.id, &Record::new(&fields.value_set(&values)));
            }
            _ => {
                let values = [
                    (&input, Some(&tokens_in as &dyn Value)),
                    (&output, Some(&tokens_out as &dyn Value)),
                ];
                dispatch.record(&run.id, &Record::new(&fields.value_set(&values)));
            }
        }
    });
}

impl<S> PerfmonLayer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    /// The nearest run at or above span `id`, with its usage so far.
    #[cfg(feature = "otel")]
    pub(super) fn run_usage(dispatch: &Dispatch, id: &Id) -> Option<RunUsage> {
        let subscriber = dispatch.downcast_ref::<S>()?;
        let layer = dispatch.downcast_ref::<Self>()?;
        let mut next = subscriber.span(id);
        while let Some(span) = next {
            let mut usage_of = |nearest: NearestMut<'_>| match nearest {
                NearestMut::Agent(run) => Some(
                    run.extras
                        .as_ref()
                        .map(|extras| (extras.usage, extras.model.clone())),
                ),
                NearestMut::Pipeline(_) => None,
            };
            if let Some(found) = layer.state_of(&span, &mut usage_of) {
                let (usage, model) = found??;
                return Some(RunUsage {
                    id: span.id(),
                    meta: span.metadata(),
                    usage,
                    model,
                });
            }
            next = span.parent();
        }
        None
    }

    /// `perfmon::output!`: the line goes into the nearest run's tail and
    /// out as a `tool_output` event. Outside any run: nothing.
    pub(super) fn output(&self, event: &Event<'_>, ctx: &Context<'_, S>) {
        let recorder = &self.recorder;
        let config = &recorder.config;
        let mut v = OutputVisitor::default();
        event.record(&mut v);
        let (line, cut) = output::cut(v.line.unwrap_or_default(), config.max_output_line_bytes);
        let stream: Arc<str> = Arc::from(v.stream.as_deref().unwrap_or("out"));
        let found = self.nearest_mut(ctx.event_span(event), |nearest| {
            let NearestMut::Agent(run) = nearest else {
                return None;
            };
            let extras = run.extras.get_or_insert_with(Box::default);
            let dropped = extras.output.push(
                OutputLine {
                    stream: stream.to_string(),
                    line: line.clone(),
                    cut,
                },
                config.max_output_lines,
            );
            Some((
                Arc::clone(&run.entry.name),
                run.pipeline.as_ref().map(|p| Arc::clone(&p.id)),
                dropped,
            ))
        });
        let Some(Some((agent, pipeline, dropped))) = found else {
            return;
        };
        let c = &recorder.counters;
        c.output_lines.fetch_add(1, Ordering::Relaxed);
        if cut {
            c.output_lines_cut.fetch_add(1, Ordering::Relaxed);
        }
        if dropped {
            c.output_lines_dropped.fetch_add(1, Ordering::Relaxed);
        }
        recorder.publish(pipeline, recorder.now(), || EventKind::ToolOutput {
            agent,
            stream,
            line,
            cut,
        });
    }

    /// `perfmon::usage!`: added to the nearest run, else to the pipeline,
    /// else to the monitor's usage outside runs.
    pub(super) fn usage(&self, event: &Event<'_>, ctx: &Context<'_, S>) {
        let mut v = UsageVisitor::default();
        event.record(&mut v);
        let usage = v.usage();
        let mut model = v.model;
        let found = self.nearest_mut(ctx.event_span(event), |nearest| match nearest {
            NearestMut::Agent(run) => {
                let extras = run.extras.get_or_insert_with(Box::default);
                extras.usage.add(usage);
                if let Some(model) = model.take() {
                    extras.model = Some(Arc::from(model));
                }
            }
            NearestMut::Pipeline(pipeline) => {
                pipeline.state.add_usage(usage);
                // Outside any run: no agent's statistics count it.
                lock(&self.recorder.counters.usage_outside_runs).add(usage);
            }
        });
        if found.is_none() {
            lock(&self.recorder.counters.usage_outside_runs).add(usage);
        }
    }
}
