//! `__perfmon_span!`: how every perfmon span is declared, by the guards and
//! by the attribute macros' expansions. With feature `otel`, the spans also
//! carry the OpenTelemetry GenAI attributes from the moment they are
//! created, for `tracing-opentelemetry` to export; without it, only
//! perfmon's own fields (nothing more to record, nothing more to pay).
//!
//! Not public API: the macros expand to it by path.

/// `__perfmon_span!(agent | tool | pipeline, "span name", name_or_id; more fields,)`.
#[cfg(not(feature = "otel"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __perfmon_span {
    (agent, $span:literal, $name:expr; $($fields:tt)*) => {
        $crate::__private::tracing::span!(
            target: "perfmon",
            $crate::__private::tracing::Level::INFO,
            $span,
            perfmon.agent = $name,
            perfmon.outcome = $crate::__private::tracing::field::Empty,
            perfmon.error = $crate::__private::tracing::field::Empty,
            $($fields)*
        )
    };
    (tool, $span:literal, $name:expr; $($fields:tt)*) => {
        $crate::__private::tracing::span!(
            target: "perfmon",
            $crate::__private::tracing::Level::INFO,
            $span,
            perfmon.tool = $name,
            perfmon.outcome = $crate::__private::tracing::field::Empty,
            perfmon.error = $crate::__private::tracing::field::Empty,
            $($fields)*
        )
    };
    (pipeline, $span:literal, $id:expr; $($fields:tt)*) => {
        $crate::__private::tracing::span!(
            target: "perfmon",
            $crate::__private::tracing::Level::INFO,
            $span,
            perfmon.pipeline = $crate::__private::tracing::field::display(&$id),
            perfmon.outcome = $crate::__private::tracing::field::Empty,
            perfmon.error = $crate::__private::tracing::field::Empty,
            $($fields)*
        )
    };
}

/// `__perfmon_span!(agent | tool | pipeline, "span name", name_or_id; more fields,)`,
/// with the OpenTelemetry GenAI attributes (feature `otel`).
#[cfg(feature = "otel")]
#[doc(hidden)]
#[macro_export]
macro_rules! __perfmon_span {
    (agent, $span:literal, $name:expr; $($fields:tt)*) => {
        $crate::__perfmon_span!(@run $span, $name, perfmon.agent, "invoke_agent",
            gen_ai.agent.name, "AGENT"; $($fields)*)
    };
    (tool, $span:literal, $name:expr; $($fields:tt)*) => {
        $crate::__perfmon_span!(@run $span, $name, perfmon.tool, "execute_tool",
            gen_ai.tool.name, "TOOL"; $($fields)*)
    };
    (@run $span:literal, $name:expr, $($field:ident).+, $op:literal, $($gen_ai:ident).+, $kind:literal; $($fields:tt)*) => {
        match $name {
            __perfmon_name => $crate::__private::tracing::span!(
                target: "perfmon",
                $crate::__private::tracing::Level::INFO,
                $span,
                $($field).+ = __perfmon_name,
                perfmon.outcome = $crate::__private::tracing::field::Empty,
                perfmon.error = $crate::__private::tracing::field::Empty,
                otel.name = $crate::__private::tracing::field::display(
                    ::core::format_args!("{} {}", $op, __perfmon_name)
                ),
                gen_ai.operation.name = $op,
                $($gen_ai).+ = __perfmon_name,
                openinference.span.kind = $kind,
                otel.status_description = $crate::__private::tracing::field::Empty,
                "error.type" = $crate::__private::tracing::field::Empty,
                gen_ai.usage.input_tokens = $crate::__private::tracing::field::Empty,
                gen_ai.usage.output_tokens = $crate::__private::tracing::field::Empty,
                gen_ai.request.model = $crate::__private::tracing::field::Empty,
                $($fields)*
            ),
        }
    };
    (pipeline, $span:literal, $id:expr; $($fields:tt)*) => {
        match &$id {
            __perfmon_id => $crate::__private::tracing::span!(
                target: "perfmon",
                $crate::__private::tracing::Level::INFO,
                $span,
                perfmon.pipeline = $crate::__private::tracing::field::display(__perfmon_id),
                perfmon.outcome = $crate::__private::tracing::field::Empty,
                perfmon.error = $crate::__private::tracing::field::Empty,
                otel.name = $crate::__private::tracing::field::display(
                    ::core::format_args!("invoke_workflow {}", __perfmon_id)
                ),
                gen_ai.operation.name = "invoke_workflow",
                openinference.span.kind = "CHAIN",
                otel.status_description = $crate::__private::tracing::field::Empty,
                "error.type" = $crate::__private::tracing::field::Empty,
                $($fields)*
            ),
        }
    };
}
