//! The sidecar's `GET /metrics`: Prometheus text rendered from the
//! monitor's own numbers, with the families, kinds, units and help texts of
//! [`crate::metrics::FAMILIES`], the same ones the `metrics` facade gets.
//! Built from small pure functions, one per line shape.

use std::fmt::Write as _;

use perfmon_ws::StatsSnapshot;

use crate::metrics::{self, Family};
use crate::monitor::Monitor;
use crate::outcome::Outcome;
use crate::stats::OutcomeCell;

/// `Content-Type` of the text exposition format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The duration histograms' bucket bounds, shared with the facade's users.
const BUCKETS_SECONDS: [f64; 16] = crate::metrics::DURATION_BUCKETS;

/// The whole exposition: every perfmon family with its samples. Families
/// with no samples yet (no runs, no sampler) are left out.
pub(super) fn render(monitor: &Monitor, ws: &StatsSnapshot) -> String {
    let mut out = String::with_capacity(4096);
    let agents = monitor.agent_histograms();

    let mut runs = Vec::new();
    let mut durations = Vec::new();
    for (agent, cells) in &agents {
        for (cell, outcome) in cells.iter().zip(Outcome::NAMES) {
            if cell.runs == 0 {
                continue;
            }
            let labels = [("agent", &**agent), ("outcome", outcome)];
            runs.push(sample(metrics::AGENT_RUNS, &labels, cell.runs as f64));
            durations.push(histogram(metrics::AGENT_DURATION, &labels, cell));
        }
    }
    write_family(&mut out, metrics::AGENT_DURATION, &durations.concat());
    write_family(&mut out, metrics::AGENT_RUNS, &runs.concat());

    let mut tokens = Vec::new();
    let mut cost = Vec::new();
    for (agent, usage) in monitor.agent_usages() {
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
        ] {
            tokens.push(sample(
                metrics::TOKENS,
                &[("agent", &agent), ("type", kind)],
                n as f64,
            ));
        }
        cost.push(sample(
            metrics::COST,
            &[("agent", &agent)],
            usage.to_usage().cost_usd,
        ));
    }
    write_family(&mut out, metrics::TOKENS, &tokens.concat());
    write_family(&mut out, metrics::COST, &cost.concat());

    let pipelines: String = monitor
        .pipeline_histograms()
        .iter()
        .zip(Outcome::NAMES)
        .filter(|(cell, _)| cell.runs > 0)
        .map(|(cell, outcome)| histogram(metrics::PIPELINE_DURATION, &[("outcome", outcome)], cell))
        .collect();
    write_family(&mut out, metrics::PIPELINE_DURATION, &pipelines);

    let o = monitor.overview();
    for (name, value) in [
        (metrics::PIPELINES_TOTAL, o.pipelines_total),
        (metrics::PIPELINES_ACTIVE, o.pipelines_active),
        (metrics::EVENTS_DROPPED, o.events_dropped),
        (metrics::SPANS_FILTERED, o.spans_filtered),
        (metrics::RUNS_OUTSIDE_PIPELINE, o.runs_outside_pipeline),
    ] {
        write_family(&mut out, name, &sample(name, &[], value as f64));
    }
    if let Some(p) = monitor.process_sample() {
        for (name, value) in [
            (metrics::PROCESS_CPU, p.cpu_percent),
            (metrics::PROCESS_RSS, p.rss_bytes as f64),
            (metrics::PROCESS_THREADS, p.threads as f64),
        ] {
            write_family(&mut out, name, &sample(name, &[], value));
        }
    }
    for (name, value) in sidecar_series(ws) {
        write_family(&mut out, name, &sample(name, &[], value as f64));
    }
    out
}

/// The sidecar's own series, by metric name: rendered here, and mirrored
/// into the `metrics` facade by the bridge.
pub(crate) fn sidecar_series(ws: &StatsSnapshot) -> [(&'static str, u64); 8] {
    [
        (metrics::WS_CONNECTIONS_ACTIVE, ws.connections_active),
        (metrics::WS_CONNECTIONS_TOTAL, ws.connections_total),
        (metrics::WS_MESSAGES_OUT, ws.messages_out),
        (metrics::WS_BYTES_OUT, ws.bytes_out),
        (metrics::WS_MESSAGES_IN, ws.messages_in),
        (metrics::WS_DROPPED, ws.dropped),
        (metrics::WS_RATE_LIMITED, ws.rate_limited),
        (metrics::WS_ERRORS, ws.errors),
    ]
}

/// `# HELP` and `# TYPE` of the family `name`, then its `samples`; nothing
/// if there are none.
pub(crate) fn write_family(out: &mut String, name: &str, samples: &str) {
    if samples.is_empty() {
        return;
    }
    if let Some(family) = metrics::family_of(name) {
        write_header(out, family);
    }
    out.push_str(samples);
}

fn write_header(out: &mut String, family: &Family) {
    let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
    let _ = writeln!(
        out,
        "# TYPE {} {}",
        family.name,
        family.kind.prometheus_type()
    );
}

/// One sample line: `name{a="x",b="y"} value`.
pub(crate) fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> String {
    let mut line = String::with_capacity(name.len() + 32);
    line.push_str(name);
    write_labels(&mut line, labels, None);
    let _ = writeln!(line, " {}", format_value(value));
    line
}

/// The `_bucket` lines (cumulative, ending with `+Inf`), `_sum` and
/// `_count` of one histogram series. Bucket counts come from the HDR
/// histogram (two significant digits), sum and count are exact.
pub(crate) fn histogram(name: &str, labels: &[(&str, &str)], cell: &OutcomeCell) -> String {
    let mut out = String::new();
    let bucket = format!("{name}_bucket");
    for le in BUCKETS_SECONDS {
        let count = cell
            .histogram
            .count_between(0, (le * 1e9) as u64)
            .min(cell.runs);
        out.push_str(&bucket);
        write_labels(&mut out, labels, Some(&format_value(le)));
        let _ = writeln!(out, " {count}");
    }
    out.push_str(&bucket);
    write_labels(&mut out, labels, Some("+Inf"));
    let _ = writeln!(out, " {}", cell.runs);
    out.push_str(name);
    out.push_str("_sum");
    write_labels(&mut out, labels, None);
    let _ = writeln!(out, " {}", format_value(cell.total_ns as f64 / 1e9));
    out.push_str(name);
    out.push_str("_count");
    write_labels(&mut out, labels, None);
    let _ = writeln!(out, " {}", cell.runs);
    out
}

/// `{a="x",le="0.5"}`, or nothing for no labels.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let le = le.map(|le| ("le", le));
    for (i, (key, value)) in labels.iter().copied().chain(le).enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{key}=\"{}\"", escape_label_value(value));
    }
    out.push('}');
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A help text with `\` and newlines escaped.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A number as Prometheus reads it: integers without a fraction.
fn format_value(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_escape_label_values() {
        assert_eq!(
            sample("m", &[("agent", "a\"b\\c\nd")], 3.0),
            "m{agent=\"a\\\"b\\\\c\\nd\"} 3\n"
        );
        assert_eq!(sample("m", &[], 0.5), "m 0.5\n");
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        let mut cell = OutcomeCell::new();
        for ms in [3, 40, 40, 2_000] {
            cell.record(ms * 1_000_000);
        }
        let text = histogram("d", &[("outcome", "failed")], &cell);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), BUCKETS_SECONDS.len() + 3);
        assert_eq!(lines[0], "d_bucket{outcome=\"failed\",le=\"0.005\"} 1");
        assert!(
            lines.contains(&"d_bucket{outcome=\"failed\",le=\"0.05\"} 3"),
            "{text}"
        );
        assert!(
            lines.contains(&"d_bucket{outcome=\"failed\",le=\"2.5\"} 4"),
            "{text}"
        );
        assert!(
            lines.contains(&"d_bucket{outcome=\"failed\",le=\"+Inf\"} 4"),
            "{text}"
        );
        assert!(lines.contains(&"d_sum{outcome=\"failed\"} 2.083"), "{text}");
        assert_eq!(lines.last(), Some(&"d_count{outcome=\"failed\"} 4"));
        let counts: Vec<u64> = lines[..BUCKETS_SECONDS.len()]
            .iter()
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect();
        assert!(
            counts.windows(2).all(|w| w[0] <= w[1]),
            "cumulative: {counts:?}"
        );
    }

    #[test]
    fn families_have_help_and_type_and_empty_ones_are_left_out() {
        let mut out = String::new();
        write_family(&mut out, metrics::AGENT_RUNS, "");
        assert!(out.is_empty());
        write_family(
            &mut out,
            metrics::AGENT_RUNS,
            "perfmon_agent_runs_total 1\n",
        );
        assert_eq!(
            out,
            "# HELP perfmon_agent_runs_total Finished agent runs, by agent and outcome.\n\
             # TYPE perfmon_agent_runs_total counter\n\
             perfmon_agent_runs_total 1\n"
        );
    }
}
