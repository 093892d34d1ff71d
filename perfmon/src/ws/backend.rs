//! REST answers and snapshots from a [`Monitor`], for the sidecar's server.

use perfmon_ws::{Backend, Reply, ServerInfo};
use serde::Deserialize;

use super::exposition;
use crate::monitor::Monitor;

/// Default and largest `?limit=` of the list endpoints.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_000;

/// Answers snapshots and REST requests from a [`Monitor`].
pub(super) struct MonitorBackend {
    monitor: Monitor,
}

impl MonitorBackend {
    pub(super) fn new(monitor: Monitor) -> Self {
        MonitorBackend { monitor }
    }
}

/// The query of the list endpoints, parsed the way axum's `Query` does.
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// `?limit=N`, clamped to `1..=1000`; 20 when absent or not a number.
fn limit(query: &str) -> usize {
    serde_urlencoded::from_str::<ListQuery>(query)
        .ok()
        .and_then(|q| q.limit)
        .unwrap_or(DEFAULT_LIMIT)
        .clamp(1, MAX_LIMIT)
}

impl Backend for MonitorBackend {
    fn snapshot(&self, topic: Option<&str>) -> Option<serde_json::Value> {
        let m = &self.monitor;
        match topic {
            Some(id) => m.pipeline(id).and_then(|r| serde_json::to_value(r).ok()),
            None => Some(serde_json::json!({
                "overview": m.overview(),
                "active": m.active_pipelines(),
                "recent": m.recent_pipelines(DEFAULT_LIMIT),
                "agents": m.agents(),
            })),
        }
    }

    fn get(&self, path: &str, query: &str, server: &ServerInfo<'_>) -> Option<Reply> {
        let m = &self.monitor;
        #[cfg(feature = "history")]
        if let Some(reply) = super::history_routes::get(m, path.trim_end_matches('/'), query) {
            return Some(reply);
        }
        let reply = match path.trim_end_matches('/') {
            "/api/performance/overview" => Reply::json(&m.overview()),
            "/api/performance/pipelines/active" => Reply::json(&m.active_pipelines()),
            "/api/performance/pipelines/recent" => Reply::json(&m.recent_pipelines(limit(query))),
            "/api/performance/agents" => Reply::json(&m.agents()),
            #[cfg(feature = "alerts")]
            "/api/performance/alerts" => Reply::json(&serde_json::json!({
                "alerts": m.alerts(),
                "webhooks": m.alert_webhooks(),
            })),
            "/api/performance/agents/slowest" => Reply::json(&m.slowest_agents(limit(query))),
            "/metrics" => Reply::text(
                exposition::CONTENT_TYPE,
                exposition::render(m, &server.stats.snapshot()),
            ),
            other => {
                let id = other.strip_prefix("/api/performance/pipeline/")?;
                let id = perfmon_ws::percent_decode(id);
                match m.pipeline(&id) {
                    Some(report) => Reply::json(&report),
                    None => Reply::error(
                        404,
                        &format!(
                            "no pipeline {id:?}: it is unknown or fell out of the recent ring"
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
    fn limits_are_parsed_clamped_and_defaulted() {
        assert_eq!(limit("limit=5"), 5);
        assert_eq!(limit("x=1&limit=7"), 7);
        assert_eq!(limit("limit=0"), 1);
        assert_eq!(limit("limit=99999"), MAX_LIMIT);
        assert_eq!(limit("limit=ten"), DEFAULT_LIMIT);
        assert_eq!(limit(""), DEFAULT_LIMIT);
    }
}
