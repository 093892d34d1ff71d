//! The history endpoints, `/api/performance/history/...` (features `ws`
//! and `history`): pipeline search, trends, comparisons and the writer's
//! status, answered from the monitor's [`History`](crate::History).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use perfmon_ws::Reply;
use serde::Deserialize;

use crate::history::{Bucket, History, HistoryError, PipelineQuery};
use crate::monitor::Monitor;

/// The query string of every history endpoint; each uses what it needs.
#[derive(Debug, Default, Deserialize)]
struct Params {
    from: Option<String>,
    to: Option<String>,
    outcome: Option<String>,
    agent: Option<String>,
    pipeline: Option<String>,
    kind: Option<String>,
    bottleneck: Option<bool>,
    limit: Option<usize>,
    cursor: Option<String>,
    bucket: Option<String>,
    before_from: Option<String>,
    before_to: Option<String>,
    after_from: Option<String>,
    after_to: Option<String>,
}

/// A time in a query string: unix milliseconds or RFC 3339.
fn time(name: &str, value: Option<&str>) -> Result<Option<SystemTime>, Reply> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(Some(UNIX_EPOCH + Duration::from_millis(ms)));
    }
    humantime::parse_rfc3339_weak(value).map(Some).map_err(|_| {
        Reply::error(
            400,
            &format!("{name}={value:?} is not a time: give unix milliseconds or RFC 3339 (2026-11-23T08:00:00Z)"),
        )
    })
}

fn failed(e: &HistoryError) -> Reply {
    Reply::error(500, &format!("{e}"))
}

/// Answers `path` if it is a history endpoint.
pub(super) fn get(monitor: &Monitor, path: &str, query: &str) -> Option<Reply> {
    let rest = path.strip_prefix("/api/performance/history")?;
    let Some(history) = monitor.history() else {
        return Some(Reply::error(
            404,
            "history is off: build the monitor with .history(perfmon::History::open(path)?)",
        ));
    };
    let params: Params = match serde_urlencoded::from_str(query) {
        Ok(p) => p,
        Err(e) => return Some(Reply::error(400, &format!("bad query string: {e}"))),
    };
    Some(match answer(history, rest, &params) {
        Ok(reply) | Err(reply) => reply,
    })
}

fn answer(history: &History, rest: &str, p: &Params) -> Result<Reply, Reply> {
    let now = SystemTime::now();
    let from = time("from", p.from.as_deref())?;
    let to = time("to", p.to.as_deref())?;
    let bucket = match p.bucket.as_deref() {
        None => None,
        Some(name) => Some(Bucket::parse(name).ok_or_else(|| {
            Reply::error(400, &format!("bucket={name:?}: use minute, hour or day"))
        })?),
    };
    // A trend over `from..to` (default: the last 24 hours, by hour).
    let range = || {
        let to = to.unwrap_or(now);
        (from.unwrap_or(to - Duration::from_secs(86_400)), to)
    };
    match rest {
        "" | "/" | "/status" => Ok(Reply::json(&serde_json::json!({
            "path": history.path(),
            "session": history.session(),
            "session_started_ms": history.session_started().ok().map(crate::record::ser::unix_millis),
            "stats": history.stats(),
        }))),
        "/pipelines" => {
            let mut q = PipelineQuery::new().limit(p.limit.unwrap_or(20));
            q.from = from;
            q.to = to;
            q.outcome.clone_from(&p.outcome);
            q.pipeline.clone_from(&p.pipeline);
            q.agent.clone_from(&p.agent);
            q.bottleneck = p.bottleneck.unwrap_or(false);
            q.cursor.clone_from(&p.cursor);
            history
                .pipelines(&q)
                .map(|page| Reply::json(&page))
                .map_err(|e| failed(&e))
        }
        "/agents" => history
            .agents()
            .map(|a| Reply::json(&a))
            .map_err(|e| failed(&e)),
        "/alerts" => history
            .alerts(p.limit.unwrap_or(100))
            .map(|a| Reply::json(&a))
            .map_err(|e| failed(&e)),
        "/compare" => {
            let started = history.session_started().map_err(|e| failed(&e))?;
            // Default: since the last restart against the day before it.
            // "Until now", or until the newest stored run if a mock clock
            // put it later.
            let newest = history.newest().map_err(|e| failed(&e))?;
            let until = newest.map_or(now, |t| t.max(now) + Duration::from_millis(1));
            let after = (
                time("after_from", p.after_from.as_deref())?.unwrap_or(started),
                time("after_to", p.after_to.as_deref())?.unwrap_or(until),
            );
            let before = (
                time("before_from", p.before_from.as_deref())?
                    .unwrap_or(after.0 - Duration::from_secs(86_400)),
                time("before_to", p.before_to.as_deref())?.unwrap_or(after.0),
            );
            let result = match (&p.agent, &p.kind) {
                (Some(agent), None) => history.compare_agent(agent, before, after),
                (None, Some(kind)) => history.compare_pipeline(kind, before, after),
                _ => {
                    return Err(Reply::error(
                        400,
                        "give agent=NAME or kind=PIPELINE_KIND (a pipeline id without its number)",
                    ));
                }
            };
            result.map(|c| Reply::json(&c)).map_err(|e| failed(&e))
        }
        other => {
            let (from, to) = range();
            let bucket = bucket.unwrap_or(Bucket::Hour);
            let trend = if let Some(agent) = other.strip_prefix("/agents/") {
                let agent = perfmon_ws::percent_decode(agent);
                history.agent_trend(&agent, bucket, from, to)
            } else if let Some(kind) = other.strip_prefix("/kinds/") {
                let kind = perfmon_ws::percent_decode(kind);
                history.pipeline_trend(&kind, bucket, from, to)
            } else {
                return Err(Reply::error(404, &format!("no history endpoint {other:?}")));
            };
            trend.map(|t| Reply::json(&t)).map_err(|e| failed(&e))
        }
    }
}
