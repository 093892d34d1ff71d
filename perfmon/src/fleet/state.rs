//! [`FleetState`]: what a collector knows, rebuilt from the stream's entries
//! alone (so every collector, and a restarted one, knows the same): sources,
//! fleet-wide and per-source agent statistics (histograms merged, not
//! averaged), active and recent pipelines with their source. Every map is
//! bounded; what does not fit is counted. Above `wire`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Map, Value};

use super::wire::{self, Heartbeat, Incoming, SourceInfo};
use crate::agent_table::AgentTable;
use crate::outcome::Outcome;
use crate::record::{PipelineSnapshot, Progress, RunKind};
use crate::stats::{AgentEntry, AgentStats};
use crate::usage::{Usage, UsageSum};

/// Sources kept at most (a fleet, not an open set).
pub(crate) const MAX_SOURCES: usize = 1_000;
/// Agent names per table (fleet-wide, and per source).
const MAX_AGENTS: usize = 1_000;
/// Active pipelines kept at most across the fleet.
const MAX_ACTIVE: usize = 10_000;
/// Recent reports kept.
const RECENT_CAPACITY: usize = 1_000;
/// The window events/s is measured over.
const RATE_WINDOW_MS: u64 = 10_000;

/// A source's state, by how long ago its last heartbeat was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SourceState {
    /// Heartbeating.
    Live,
    /// No heartbeat for longer than the silent limit (default 12 s).
    Silent,
    /// No heartbeat for longer than the gone limit (default 30 s): its open
    /// pipelines were closed as lost.
    Gone,
}

/// One source as `GET /api/performance/sources` lists it.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SourceView {
    /// Its name.
    pub name: String,
    /// Live, silent or gone.
    pub state: SourceState,
    /// Host, pid, version, start time and instance of its latest process.
    pub info: SourceInfo,
    /// Its last heartbeat, unix ms by the broker's clock.
    pub last_heartbeat_ms: u64,
    /// How long ago that was.
    pub since_heartbeat_ms: u64,
    /// How far behind the stream the collector read its last entry: the
    /// time between the broker storing it and the collector reading it.
    pub lag_ms: u64,
    /// Its events per second over the last 10 s.
    pub events_per_sec: f64,
    /// Its events read so far.
    pub events: u64,
    /// Entries its publisher appended (from its last heartbeat).
    pub published: u64,
    /// Events its publisher lost (from its last heartbeat).
    pub dropped: u64,
    /// Entries waiting in its publisher's buffer (from its last heartbeat).
    pub buffered: u64,
    /// Pipelines it has open now.
    pub pipelines_active: u64,
    /// Its pipelines closed as lost.
    pub pipelines_lost: u64,
}

/// The collector's counters of what it read.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct ReadStats {
    /// Entries read.
    pub entries: u64,
    /// Events forwarded.
    pub events: u64,
    /// Heartbeats read.
    pub heartbeats: u64,
    /// Entries skipped as malformed (missing fields, not JSON, unknown kind).
    pub malformed: u64,
    /// Events the stream trimmed before this collector read them (it fell
    /// more than the stream's MAXLEN behind).
    pub trimmed_unread: u64,
    /// Sources past 1,000, pipelines past 10,000 open, agent names past 1,000, whose
    /// entries still count in the totals but are not listed.
    pub overflowed: u64,
    /// The last fleet seq read.
    pub last_seq: u64,
}

/// An event as a collector forwards it: renumbered, tagged with its source.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) seq: u64,
    pub(crate) kind: Arc<str>,
    pub(crate) pipeline: Option<Arc<str>>,
    pub(crate) agent: Option<Arc<str>>,
    pub(crate) source: Arc<str>,
    pub(crate) json: String,
}

#[derive(Debug)]
struct Source {
    info: SourceInfo,
    last_heartbeat_ms: u64,
    last_lag_ms: u64,
    events: u64,
    /// (second, events) over the rate window.
    window: VecDeque<(u64, u64)>,
    published: u64,
    dropped: u64,
    buffered: u64,
    /// Instances a `source_gone` was read for.
    gone: Vec<String>,
    lost: u64,
    agents: AgentTable,
    totals: Totals,
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    pipelines: u64,
    failed: u64,
    finished: u64,
    duration_ns: u128,
    runs: u64,
    failures: u64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.pipelines += other.pipelines;
        self.failed += other.failed;
        self.finished += other.finished;
        self.duration_ns += other.duration_ns;
        self.runs += other.runs;
        self.failures += other.failures;
    }
}

#[derive(Debug)]
struct Active {
    instance: String,
    run: u64,
    started_ms: f64,
    running: Vec<String>,
    finished_runs: u64,
    progress: Option<Progress>,
}

#[derive(Debug)]
struct Recent {
    source: Arc<str>,
    id: String,
    report: Value,
}

/// Everything a collector knows; see the module docs.
#[derive(Debug)]
pub(crate) struct FleetState {
    sources: BTreeMap<Arc<str>, Source>,
    agents: AgentTable,
    active: BTreeMap<(Arc<str>, String), Active>,
    recent: VecDeque<Recent>,
    read: ReadStats,
    overflow_sink: AtomicU64,
    started: SystemTime,
}

impl Default for FleetState {
    fn default() -> Self {
        FleetState {
            sources: BTreeMap::new(),
            agents: AgentTable::new(MAX_AGENTS, false),
            active: BTreeMap::new(),
            recent: VecDeque::new(),
            read: ReadStats::default(),
            overflow_sink: AtomicU64::new(0),
            started: SystemTime::now(),
        }
    }
}

/// `value[key]` as text.
fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A `_ms` figure as a duration (0 for anything not a finite, positive number).
fn ms(value: &Value, key: &str) -> Duration {
    value
        .get(key)
        .and_then(Value::as_f64)
        .filter(|v| v.is_finite() && *v > 0.0)
        .map_or(Duration::ZERO, |v| Duration::from_secs_f64(v / 1000.0))
}

impl FleetState {
    /// Reads one entry; returns the event to forward, if it is one.
    /// `base` is added to the entry's seq (see the collector's epochs);
    /// `now_ms` is the broker's clock now, for lags.
    pub(crate) fn apply(&mut self, entry: &Incoming, base: u64, now_ms: u64) -> Option<Forward> {
        self.read.entries += 1;
        let (Some(kind), Some(source), Some(instance), Some(body)) = (
            entry.kind.as_deref(),
            entry.source.as_deref(),
            entry.instance.as_deref(),
            entry.body.as_deref(),
        ) else {
            self.read.malformed += 1;
            return None;
        };
        match kind {
            wire::KIND_HEARTBEAT => {
                let Ok(hb) = serde_json::from_str::<Heartbeat>(body) else {
                    self.read.malformed += 1;
                    return None;
                };
                self.read.heartbeats += 1;
                if let Some(s) = self.source(source, Some(&hb.info)) {
                    s.last_heartbeat_ms = s.last_heartbeat_ms.max(entry.stored_ms);
                    s.last_lag_ms = now_ms.saturating_sub(entry.stored_ms);
                    s.published = hb.published;
                    s.dropped = hb.dropped;
                    s.buffered = hb.buffered;
                    if s.info.instance != hb.info.instance {
                        s.info = hb.info;
                    }
                }
                None
            }
            wire::KIND_EVENT => {
                let (Some(seq), Ok(Value::Object(mut event))) =
                    (entry.seq, serde_json::from_str::<Value>(body))
                else {
                    self.read.malformed += 1;
                    return None;
                };
                let Some(kind) = event
                    .get("type")
                    .and_then(Value::as_str)
                    .map(Arc::<str>::from)
                else {
                    self.read.malformed += 1;
                    return None;
                };
                if self.read.last_seq > 0 && seq > self.read.last_seq + 1 {
                    self.read.trimmed_unread += seq - self.read.last_seq - 1;
                }
                self.read.last_seq = self.read.last_seq.max(seq);
                self.read.events += 1;
                let source: Arc<str> = Arc::from(source);
                self.event(&source, instance, &kind, &event, entry, now_ms);
                let pipeline = event.get("pipeline").and_then(Value::as_str).map(Arc::from);
                let agent = event
                    .get("data")
                    .and_then(|d| text(d, "agent"))
                    .map(Arc::from);
                let fleet_seq = base + seq;
                event.insert(
                    "source_seq".into(),
                    event.get("seq").cloned().unwrap_or(Value::Null),
                );
                event.insert("seq".into(), Value::from(fleet_seq));
                event.insert("source".into(), Value::from(&*source));
                let json = Value::Object(event).to_string();
                Some(Forward {
                    seq: fleet_seq,
                    kind,
                    pipeline,
                    agent,
                    source,
                    json,
                })
            }
            _ => {
                self.read.malformed += 1;
                None
            }
        }
    }

    /// The source `name`, created on first sight (bounded).
    fn source(&mut self, name: &str, info: Option<&SourceInfo>) -> Option<&mut Source> {
        if !self.sources.contains_key(name) {
            if self.sources.len() >= MAX_SOURCES {
                self.read.overflowed += 1;
                return None;
            }
            let info = info.cloned().unwrap_or_else(|| SourceInfo {
                name: name.to_owned(),
                host: String::new(),
                pid: 0,
                version: String::new(),
                started_at_ms: 0,
                instance: String::new(),
            });
            self.sources.insert(
                Arc::from(name),
                Source {
                    info,
                    last_heartbeat_ms: 0,
                    last_lag_ms: 0,
                    events: 0,
                    window: VecDeque::new(),
                    published: 0,
                    dropped: 0,
                    buffered: 0,
                    gone: Vec::new(),
                    lost: 0,
                    agents: AgentTable::new(MAX_AGENTS, false),
                    totals: Totals::default(),
                },
            );
        }
        self.sources.get_mut(name)
    }

    fn event(
        &mut self,
        source: &Arc<str>,
        instance: &str,
        kind: &str,
        event: &Map<String, Value>,
        entry: &Incoming,
        now_ms: u64,
    ) {
        let null = Value::Null;
        let data = event.get("data").unwrap_or(&null);
        let pipeline = event.get("pipeline").and_then(Value::as_str);
        let ts = event.get("ts").and_then(Value::as_f64).unwrap_or(0.0);
        if let Some(s) = self.source(source, None) {
            s.events += 1;
            s.last_lag_ms = now_ms.saturating_sub(entry.stored_ms);
            // Any entry says the process is there, heartbeat or not.
            s.last_heartbeat_ms = s.last_heartbeat_ms.max(entry.stored_ms);
            let second = entry.stored_ms / 1000;
            match s.window.back_mut() {
                Some((sec, n)) if *sec == second => *n += 1,
                _ => s.window.push_back((second, 1)),
            }
            while s
                .window
                .front()
                .is_some_and(|(sec, _)| sec * 1000 + RATE_WINDOW_MS < entry.stored_ms)
            {
                s.window.pop_front();
            }
        }
        match kind {
            wire::SOURCE_STARTED => {
                if let Ok(info) = serde_json::from_value::<SourceInfo>(data.clone()) {
                    let previous = self.sources.get(&**source).map(|s| s.info.instance.clone());
                    if let Some(previous) =
                        previous.filter(|p| !p.is_empty() && *p != info.instance)
                    {
                        self.close_lost(source, &previous, "restarted", entry.stored_ms);
                    }
                    if let Some(s) = self.source(source, Some(&info)) {
                        s.info = info;
                        s.gone.clear();
                    }
                }
            }
            wire::SOURCE_GONE => {
                let gone = text(data, "instance").unwrap_or(instance).to_owned();
                self.close_lost(source, &gone, "stopped heartbeating", entry.stored_ms);
                if let Some(s) = self.sources.get_mut(&**source) {
                    s.gone.push(gone);
                    if s.gone.len() > 16 {
                        s.gone.remove(0);
                    }
                }
            }
            "pipeline_started" => {
                let Some(id) = pipeline else { return };
                if self.active.len() >= MAX_ACTIVE {
                    self.read.overflowed += 1;
                } else {
                    self.active.insert(
                        (Arc::clone(source), id.to_owned()),
                        Active {
                            instance: instance.to_owned(),
                            run: data.get("run").and_then(Value::as_u64).unwrap_or(0),
                            started_ms: ts,
                            running: Vec::new(),
                            finished_runs: 0,
                            progress: None,
                        },
                    );
                }
                if let Some(s) = self.sources.get_mut(&**source) {
                    s.totals.pipelines += 1;
                }
            }
            "agent_started" | "tool_started" => {
                if let (Some(id), Some(agent)) = (pipeline, text(data, "agent"))
                    && let Some(a) = self.active.get_mut(&(Arc::clone(source), id.to_owned()))
                {
                    a.running.push(agent.to_owned());
                }
            }
            "agent_progress" => {
                if let (Some(id), Some(agent)) = (pipeline, text(data, "agent"))
                    && let Some(a) = self.active.get_mut(&(Arc::clone(source), id.to_owned()))
                {
                    a.progress = Some(Progress {
                        agent: Arc::from(agent),
                        percent: data.get("percent").and_then(Value::as_f64),
                        stage: text(data, "stage").map(str::to_owned),
                        message: text(data, "message").map(str::to_owned),
                    });
                }
            }
            "agent_completed" | "tool_completed" => {
                let Some(agent) = text(data, "agent") else {
                    return;
                };
                if let Some(id) = pipeline
                    && let Some(a) = self.active.get_mut(&(Arc::clone(source), id.to_owned()))
                {
                    if let Some(at) = a.running.iter().position(|r| r == agent) {
                        a.running.remove(at);
                    }
                    a.finished_runs += 1;
                }
                let run_kind = if kind == "tool_completed" {
                    RunKind::Tool
                } else {
                    RunKind::Agent
                };
                let outcome = Outcome::parse(
                    text(data, "outcome").unwrap_or("succeeded"),
                    text(data, "error"),
                )
                .unwrap_or(Outcome::Failed {
                    error: "unknown outcome".into(),
                });
                let usage = data
                    .get("usage")
                    .and_then(|u| serde_json::from_value::<Usage>(u.clone()).ok())
                    .map(|u| UsageSum::of(u.input_tokens, u.output_tokens, u.cost_usd));
                let duration = ms(data, "duration_ms");
                let self_time = if data.get("self_time_ms").is_some() {
                    ms(data, "self_time_ms")
                } else {
                    duration
                };
                let record = |entry: &AgentEntry| {
                    entry.run_started();
                    entry.run_finished(duration, self_time, &outcome, usage);
                };
                record(
                    &self
                        .agents
                        .get_or_insert(agent, run_kind, &self.overflow_sink),
                );
                if let Some(s) = self.sources.get_mut(&**source) {
                    record(&s.agents.get_or_insert(agent, run_kind, &self.overflow_sink));
                    s.totals.runs += 1;
                    s.totals.failures += u64::from(outcome.is_failure());
                }
            }
            "pipeline_completed" => {
                let Some(id) = pipeline.or_else(|| text(data, "id")) else {
                    return;
                };
                self.active.remove(&(Arc::clone(source), id.to_owned()));
                let failed = text(data, "outcome").is_some_and(|o| o != "succeeded");
                if let Some(s) = self.sources.get_mut(&**source) {
                    s.totals.finished += 1;
                    s.totals.failed += u64::from(failed);
                    s.totals.duration_ns += ms(data, "duration_ms").as_nanos();
                }
                let mut report = data.clone();
                if let Value::Object(map) = &mut report {
                    map.insert("source".into(), Value::from(&**source));
                }
                self.push_recent(Recent {
                    source: Arc::clone(source),
                    id: id.to_owned(),
                    report,
                });
            }
            _ => {}
        }
    }

    fn push_recent(&mut self, recent: Recent) {
        if self.recent.len() >= RECENT_CAPACITY {
            self.recent.pop_back();
        }
        self.recent.push_front(recent);
    }

    /// Closes every open pipeline of `instance` as lost.
    fn close_lost(&mut self, source: &Arc<str>, instance: &str, why: &str, at_ms: u64) {
        let lost: Vec<(Arc<str>, String)> = self
            .active
            .iter()
            .filter(|((s, _), a)| s == source && a.instance == instance)
            .map(|(k, _)| k.clone())
            .collect();
        for key in lost {
            let Some(a) = self.active.remove(&key) else {
                continue;
            };
            let duration_ms = (at_ms as f64 - a.started_ms).max(0.0);
            let error = format!(
                "lost: source {source} ({instance}) {why} while the pipeline was open; running: {}",
                if a.running.is_empty() {
                    "nothing".to_owned()
                } else {
                    a.running.join(", ")
                }
            );
            if let Some(s) = self.sources.get_mut(&**source) {
                s.lost += 1;
                s.totals.finished += 1;
                s.totals.failed += 1;
            }
            self.push_recent(Recent {
                source: Arc::clone(source),
                id: key.1.clone(),
                report: serde_json::json!({
                    "id": key.1,
                    "run": a.run,
                    "started_at_ms": a.started_ms,
                    "duration_ms": duration_ms,
                    "outcome": "failed",
                    "error": error,
                    "finished": false,
                    "lost": true,
                    "agents": [],
                    "bottlenecks": [],
                    "critical_path": [],
                    "source": source.as_ref(),
                }),
            });
        }
    }

    /// The instances that stopped heartbeating (last heartbeat before
    /// `now_ms - gone_after`) and have no `source_gone` yet.
    pub(crate) fn overdue(&self, now_ms: u64, gone_after: Duration) -> Vec<(String, String)> {
        let limit = u64::try_from(gone_after.as_millis()).unwrap_or(u64::MAX);
        self.sources
            .iter()
            .filter(|(_, s)| {
                s.last_heartbeat_ms > 0
                    && now_ms.saturating_sub(s.last_heartbeat_ms) > limit
                    && !s.gone.contains(&s.info.instance)
            })
            .map(|(name, s)| (name.to_string(), s.info.instance.clone()))
            .collect()
    }

    /// The stream's numbering starts again (a new epoch): gaps are counted
    /// from its first seq.
    pub(crate) fn restart_numbering(&mut self) {
        self.read.last_seq = 0;
    }

    /// What was read so far.
    pub(crate) fn read_stats(&self) -> ReadStats {
        let mut stats = self.read.clone();
        stats.overflowed += self
            .overflow_sink
            .load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    /// Every source, by name.
    pub(crate) fn sources(&self, now_ms: u64, silent: Duration, gone: Duration) -> Vec<SourceView> {
        let silent = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX);
        let gone_ms = u64::try_from(gone.as_millis()).unwrap_or(u64::MAX);
        self.sources
            .iter()
            .map(|(name, s)| {
                let since = now_ms.saturating_sub(s.last_heartbeat_ms);
                let state = if s.gone.contains(&s.info.instance) || since > gone_ms {
                    SourceState::Gone
                } else if since > silent {
                    SourceState::Silent
                } else {
                    SourceState::Live
                };
                let in_window: u64 = s
                    .window
                    .iter()
                    .filter(|(sec, _)| sec * 1000 + RATE_WINDOW_MS >= now_ms)
                    .map(|(_, n)| n)
                    .sum();
                SourceView {
                    name: name.to_string(),
                    state,
                    info: s.info.clone(),
                    last_heartbeat_ms: s.last_heartbeat_ms,
                    since_heartbeat_ms: since,
                    lag_ms: s.last_lag_ms,
                    events_per_sec: in_window as f64 / (RATE_WINDOW_MS as f64 / 1000.0),
                    events: s.events,
                    published: s.published,
                    dropped: s.dropped,
                    buffered: s.buffered,
                    pipelines_active: self.active.keys().filter(|(n, _)| n == name).count() as u64,
                    pipelines_lost: s.lost,
                }
            })
            .collect()
    }

    /// Agent statistics, fleet-wide or of one source, by name.
    pub(crate) fn agents(&self, source: Option<&str>) -> Vec<AgentStats> {
        let table = match source {
            None => &self.agents,
            Some(name) => match self.sources.get(name) {
                Some(s) => &s.agents,
                None => return Vec::new(),
            },
        };
        let mut list: Vec<AgentStats> = table.entries().iter().map(|e| e.stats()).collect();
        list.sort_by(|a, b| a.agent.cmp(&b.agent));
        list
    }

    /// Per source, per agent: the outcome histograms (for `/metrics`).
    pub(crate) fn agent_cells(&self) -> Vec<(Arc<str>, Arc<str>, [crate::stats::OutcomeCell; 4])> {
        let mut out = Vec::new();
        for (name, s) in &self.sources {
            for e in s.agents.entries() {
                out.push((Arc::clone(name), Arc::clone(&e.name), e.by_outcome()));
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Open pipelines (of one source), oldest first, each with its source.
    pub(crate) fn active(&self, source: Option<&str>, now_ms: f64) -> Vec<Value> {
        let mut list: Vec<(f64, Value)> = self
            .active
            .iter()
            .filter(|((s, _), _)| source.is_none_or(|want| &**s == want))
            .map(|((s, id), a)| {
                let snapshot = PipelineSnapshot {
                    id: id.clone(),
                    run: a.run,
                    started_at: UNIX_EPOCH
                        + Duration::from_secs_f64(a.started_ms.max(0.0) / 1000.0),
                    elapsed: Duration::from_secs_f64((now_ms - a.started_ms).max(0.0) / 1000.0),
                    running_agents: a.running.clone(),
                    finished_runs: a.finished_runs,
                    last_progress: a.progress.clone(),
                };
                let mut value = serde_json::to_value(snapshot).unwrap_or(Value::Null);
                if let Value::Object(map) = &mut value {
                    map.insert("source".into(), Value::from(&**s));
                }
                (a.started_ms, value)
            })
            .collect();
        list.sort_by(|a, b| a.0.total_cmp(&b.0));
        list.into_iter().map(|(_, v)| v).collect()
    }

    /// Recent reports (of one source), newest first.
    pub(crate) fn recent(&self, source: Option<&str>, limit: usize) -> Vec<Value> {
        self.recent
            .iter()
            .filter(|r| source.is_none_or(|want| &*r.source == want))
            .take(limit)
            .map(|r| r.report.clone())
            .collect()
    }

    /// The newest report of pipeline `id` (of one source).
    pub(crate) fn report(&self, id: &str, source: Option<&str>) -> Option<Value> {
        self.recent
            .iter()
            .find(|r| r.id == id && source.is_none_or(|want| &*r.source == want))
            .map(|r| r.report.clone())
    }

    /// The overview, fleet-wide or of one source, in the sidecar's shape.
    pub(crate) fn overview(&self, source: Option<&str>) -> crate::stats::Overview {
        let mut totals = Totals::default();
        let mut usage = UsageSum::default();
        let (mut events, mut dropped) = (0, 0);
        for (name, s) in &self.sources {
            if source.is_none_or(|want| &**name == want) {
                totals.add(&s.totals);
                events += s.events;
                dropped += s.dropped;
                for e in s.agents.entries() {
                    usage.add(e.usage());
                }
            }
        }
        let active = self
            .active
            .keys()
            .filter(|(s, _)| source.is_none_or(|want| &**s == want))
            .count() as u64;
        let avg = if totals.finished == 0 {
            Duration::ZERO
        } else {
            let ns = totals.duration_ns / u128::from(totals.finished);
            Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
        };
        crate::stats::Overview {
            uptime: self.started.elapsed().unwrap_or_default(),
            pipelines_total: totals.pipelines,
            pipelines_active: active,
            pipelines_failed: totals.failed,
            agent_runs_total: totals.runs,
            agent_failures_total: totals.failures,
            avg_pipeline_duration: avg,
            agents: self.agents.len() as u64,
            agents_overflowed: 0,
            events_published: events,
            events_dropped: dropped,
            thread_failures: 0,
            spans_filtered: 0,
            runs_outside_pipeline: 0,
            usage: usage.to_usage(),
            output_lines: 0,
            output_lines_cut: 0,
            output_lines_dropped: 0,
        }
    }
}
