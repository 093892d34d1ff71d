//! [`FleetBackend`]: the collector's REST answers, snapshots and `/metrics`,
//! in the sidecar's shapes, each listing with its `source` and a
//! `?source=NAME` filter, plus `GET /api/performance/sources`. Above `shared`.

use std::fmt::Write as _;
use std::sync::Arc;

use perfmon_ws::{Backend, Reply, ServerInfo};
use serde::Deserialize;

use super::shared::Shared;
use crate::metrics;
use crate::outcome::Outcome;
use crate::stats::AgentStats;
use crate::sync::lock;
use crate::ws::exposition;

/// Default and largest `?limit=` of the list endpoints.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_000;

/// Answers for a collector's server.
#[derive(Debug)]
pub(crate) struct FleetBackend {
    pub(crate) shared: Arc<Shared>,
}

/// `?limit=N&source=NAME`.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    source: Option<String>,
}

fn parse(query: &str) -> (usize, Option<String>) {
    let q = serde_urlencoded::from_str::<ListQuery>(query).unwrap_or_default();
    (
        q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        q.source.filter(|s| !s.is_empty()),
    )
}

impl FleetBackend {
    fn now_ms(&self) -> f64 {
        self.shared.broker_now_ms() as f64
    }

    fn slowest(&self, source: Option<&str>, limit: usize) -> Vec<AgentStats> {
        let mut list = lock(&self.shared.state).agents(source);
        list.sort_by_key(|a| std::cmp::Reverse(a.mean));
        list.truncate(limit);
        list
    }

    fn sources(&self) -> serde_json::Value {
        let s = &self.shared;
        let sources = lock(&s.state).sources(s.broker_now_ms(), s.silent_after, s.gone_after);
        serde_json::json!({
            "sources": sources,
            "broker": s.broker_status(),
            "silent_after_ms": s.silent_after.as_millis() as u64,
            "gone_after_ms": s.gone_after.as_millis() as u64,
        })
    }

    fn metrics(&self, server: &ServerInfo<'_>) -> String {
        let mut out = String::with_capacity(4096);
        let (cells, overview, sources) = {
            let s = &self.shared;
            let state = lock(&s.state);
            (
                state.agent_cells(),
                state.overview(None),
                state.sources(s.broker_now_ms(), s.silent_after, s.gone_after),
            )
        };
        let mut runs = String::new();
        let mut durations = String::new();
        for (source, agent, by_outcome) in &cells {
            for (cell, outcome) in by_outcome.iter().zip(Outcome::NAMES) {
                if cell.runs == 0 {
                    continue;
                }
                let labels = [
                    ("source", &**source),
                    ("agent", &**agent),
                    ("outcome", outcome),
                ];
                runs.push_str(&exposition::sample(
                    metrics::AGENT_RUNS,
                    &labels,
                    cell.runs as f64,
                ));
                durations.push_str(&exposition::histogram(
                    metrics::AGENT_DURATION,
                    &labels,
                    cell,
                ));
            }
        }
        exposition::write_family(&mut out, metrics::AGENT_DURATION, &durations);
        exposition::write_family(&mut out, metrics::AGENT_RUNS, &runs);
        for (name, value) in [
            (metrics::PIPELINES_TOTAL, overview.pipelines_total),
            (metrics::PIPELINES_ACTIVE, overview.pipelines_active),
            (metrics::EVENTS_DROPPED, overview.events_dropped),
        ] {
            exposition::write_family(&mut out, name, &exposition::sample(name, &[], value as f64));
        }
        let _ = writeln!(
            out,
            "# HELP perfmon_fleet_source_up 1 while a source heartbeats (live), 0 when silent or gone."
        );
        let _ = writeln!(out, "# TYPE perfmon_fleet_source_up gauge");
        for s in &sources {
            let up = matches!(s.state, super::SourceState::Live);
            out.push_str(&exposition::sample(
                "perfmon_fleet_source_up",
                &[("source", &s.name)],
                f64::from(u8::from(up)),
            ));
        }
        let read = self.shared.broker_status().read;
        let _ = writeln!(
            out,
            "# HELP perfmon_fleet_entries_malformed_total Stream entries the collector skipped as malformed."
        );
        let _ = writeln!(out, "# TYPE perfmon_fleet_entries_malformed_total counter");
        out.push_str(&exposition::sample(
            "perfmon_fleet_entries_malformed_total",
            &[],
            read.malformed as f64,
        ));
        for (name, value) in exposition::sidecar_series(&server.stats.snapshot()) {
            exposition::write_family(&mut out, name, &exposition::sample(name, &[], value as f64));
        }
        out
    }
}

impl Backend for FleetBackend {
    fn snapshot(&self, topic: Option<&str>) -> Option<serde_json::Value> {
        let state = lock(&self.shared.state);
        match topic {
            Some(id) => state.report(id, None),
            None => Some(serde_json::json!({
                "overview": state.overview(None),
                "active": state.active(None, self.now_ms()),
                "recent": state.recent(None, DEFAULT_LIMIT),
                "agents": state.agents(None),
            })),
        }
    }

    fn get(&self, path: &str, query: &str, server: &ServerInfo<'_>) -> Option<Reply> {
        let (limit, source) = parse(query);
        let source = source.as_deref();
        let reply = match path.trim_end_matches('/') {
            "/api/performance/sources" => Reply::json(&self.sources()),
            "/api/performance/overview" => Reply::json(&lock(&self.shared.state).overview(source)),
            "/api/performance/pipelines/active" => {
                Reply::json(&lock(&self.shared.state).active(source, self.now_ms()))
            }
            "/api/performance/pipelines/recent" => {
                Reply::json(&lock(&self.shared.state).recent(source, limit))
            }
            "/api/performance/agents" => Reply::json(&lock(&self.shared.state).agents(source)),
            "/api/performance/agents/slowest" => Reply::json(&self.slowest(source, limit)),
            "/metrics" => Reply::text(exposition::CONTENT_TYPE, self.metrics(server)),
            other => {
                let id = other.strip_prefix("/api/performance/pipeline/")?;
                let id = perfmon_ws::percent_decode(id);
                match lock(&self.shared.state).report(&id, source) {
                    Some(report) => Reply::json(&report),
                    None => Reply::error(
                        404,
                        &format!(
                            "no finished pipeline {id:?} in the fleet: it is still running, \
                             unknown, or fell out of the recent ring"
                        ),
                    ),
                }
            }
        };
        Some(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_give_limit_and_source() {
        assert_eq!(parse("limit=5&source=w1"), (5, Some("w1".into())));
        assert_eq!(parse("source="), (DEFAULT_LIMIT, None));
        assert_eq!(parse("limit=0"), (1, None));
    }
}
