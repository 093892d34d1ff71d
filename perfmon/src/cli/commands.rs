//! `perfmon tail`, `report` and `agents`: print once (or stream) and exit,
//! with `--json` for scripts. Above `rest` and `stream`.

use std::io::Write;

use serde_json::{Value, json};

use super::model::{Link, SortKey};
use super::rest::{CliError, Rest};
use super::stream::{self, Input};
use crate::record::PipelineReport;

/// `println!` that ends quietly when stdout is gone (`| head`), instead
/// of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        if writeln!(out, $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// `perfmon report [PIPELINE]`: the newest report when none is given.
///
/// # Errors
///
/// Unreachable, refused, no such pipeline (or none finished yet).
pub fn report(rest: &Rest, pipeline: Option<&str>, as_json: bool) -> Result<(), CliError> {
    let value = match pipeline {
        Some(id) => rest.get(&format!(
            "/api/performance/pipeline/{}",
            perfmon_ws::percent_encode(id)
        ))?,
        None => rest
            .get("/api/performance/pipelines/recent?limit=1")?
            .as_array()
            .and_then(|a| a.first().cloned())
            .ok_or_else(|| CliError::NotFound {
                what: "no pipeline has finished yet".into(),
            })?,
    };
    if as_json {
        say!("{value}");
        return Ok(());
    }
    let report: PipelineReport =
        serde_json::from_value(value.clone()).map_err(|e| CliError::Decode {
            url: rest.base().to_owned(),
            reason: e.to_string(),
        })?;
    if let Some(source) = value["source"].as_str() {
        say!("source {source}");
    }
    say!("{report}");
    Ok(())
}

/// `perfmon agents`: the agents table once.
///
/// # Errors
///
/// Unreachable or refused.
pub fn agents(rest: &Rest, sort: SortKey, limit: usize, as_json: bool) -> Result<(), CliError> {
    let mut list = rest
        .get("/api/performance/agents")?
        .as_array()
        .cloned()
        .unwrap_or_default();
    list.sort_by(|a, b| sort.of(b).total_cmp(&sort.of(a)));
    list.truncate(limit);
    if as_json {
        say!("{}", Value::Array(list));
        return Ok(());
    }
    say!(
        "{:<24} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "agent",
        "runs",
        "fail%",
        "p50",
        "p90",
        "p99",
        "max",
        "tokens",
        "cost"
    );
    for a in &list {
        let ms = |k: &str| format!("{:.1}ms", a[k].as_f64().unwrap_or(0.0));
        let u = &a["usage"];
        say!(
            "{:<24} {:>7} {:>6.1} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9}",
            a["agent"].as_str().unwrap_or("?"),
            a["runs"].as_u64().unwrap_or(0),
            a["failure_rate"].as_f64().unwrap_or(0.0) * 100.0,
            ms("p50_ms"),
            ms("p90_ms"),
            ms("p99_ms"),
            ms("max_ms"),
            u["input_tokens"].as_u64().unwrap_or(0) + u["output_tokens"].as_u64().unwrap_or(0),
            format!("${:.4}", u["cost_usd"].as_f64().unwrap_or(0.0)),
        );
    }
    Ok(())
}

/// What `perfmon tail` keeps.
#[derive(Debug, Default)]
pub struct TailFilter {
    /// `--pipeline`.
    pub pipelines: Vec<String>,
    /// `--type`.
    pub types: Vec<String>,
    /// `--agent`.
    pub agents: Vec<String>,
    /// `--since`.
    pub since: Option<u64>,
}

/// `perfmon tail`: events as they happen, filtered by the server, until
/// Ctrl-C (exit 0) or the server refuses (exit 1).
///
/// # Errors
///
/// Unreachable or refused at the start (a REST probe), or offline for good.
pub fn tail(
    rest: &Rest,
    token: Option<String>,
    filter: &TailFilter,
    as_json: bool,
) -> Result<(), CliError> {
    rest.get("/api/performance/overview")?;
    let mut commands = vec![json!({
        "type": "subscribe",
        "pipelines": filter.pipelines,
        "types": filter.types,
        "agents": filter.agents,
    })];
    if let Some(since) = filter.since {
        commands.push(json!({"type": "replay", "since": since}));
    }
    let inputs = stream::start(rest.ws_url(), token, commands);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = std::sync::Arc::clone(&stop);
        let _ = std::thread::Builder::new()
            .name("perfmon-cli-signal".into())
            .spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        let _ = tokio::signal::ctrl_c().await;
                    });
                    stop.store(true, std::sync::atomic::Ordering::Release);
                }
            });
    }
    let mut out = std::io::stdout().lock();
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let input = match inputs.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(input) => input,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let line = match input {
            Input::Event(e) if as_json => e,
            Input::Event(e) => match serde_json::from_str::<Value>(&e) {
                Ok(v) => event_line(&v),
                Err(_) => continue,
            },
            Input::Gap(what) if as_json => json!({"type": "gap", "message": what}).to_string(),
            Input::Gap(what) => format!("-- gap: {what}"),
            Input::Link(Link::Offline(e)) => {
                return Err(CliError::Unreachable {
                    url: rest.base().to_owned(),
                    reason: e,
                });
            }
            Input::Link(Link::Reconnecting { attempt }) => {
                eprintln!("-- reconnecting (attempt {attempt}); will resume where it stopped");
                continue;
            }
            Input::Link(_) => continue,
        };
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            // stdout closed (`| head`): done.
            break;
        }
    }
    Ok(())
}

/// One readable line per event.
pub fn event_line(e: &Value) -> String {
    let d = &e["data"];
    let kind = e["type"].as_str().unwrap_or("?");
    let pipeline = e["pipeline"].as_str().unwrap_or("-");
    let source = e["source"]
        .as_str()
        .map(|s| format!("{s} "))
        .unwrap_or_default();
    let agent = d["agent"].as_str().unwrap_or("");
    let detail = match kind {
        "agent_completed" | "tool_completed" => format!(
            "{:.1}ms {}{}",
            d["duration_ms"].as_f64().unwrap_or(0.0),
            d["outcome"].as_str().unwrap_or(""),
            d["error"]
                .as_str()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ),
        "agent_progress" => format!(
            "{}% {}",
            d["percent"]
                .as_f64()
                .map_or("?".into(), |p| format!("{p:.0}")),
            d["stage"].as_str().unwrap_or("")
        ),
        "thought" => d["text"].as_str().unwrap_or("").to_owned(),
        "tool_output" => format!(
            "{}> {}",
            d["stream"].as_str().unwrap_or(""),
            d["line"].as_str().unwrap_or("")
        ),
        "pipeline_completed" => format!(
            "{} in {:.1}ms",
            d["outcome"].as_str().unwrap_or(""),
            d["duration_ms"].as_f64().unwrap_or(0.0)
        ),
        "error" | "alert_fired" | "alert_resolved" => {
            d["message"].as_str().unwrap_or("").to_owned()
        }
        _ => String::new(),
    };
    format!(
        "{:>6} {source}{kind:<18} {pipeline:<14} {agent:<12} {detail}",
        e["seq"].as_u64().unwrap_or(0)
    )
    .trim_end()
    .to_owned()
}
