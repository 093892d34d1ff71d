//! [`Model`]: what `perfmon top` shows, built from the REST snapshots and the
//! live events, bounded everywhere; and what the keys do to it. No terminal
//! here: [`view`](super::view) draws it. Above `rest`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::record::PipelineReport;

/// Recent reports kept.
const RECENT: usize = 200;
/// Failures, log lines and per-pipeline thoughts kept.
const FAILURES: usize = 100;
const LOG: usize = 500;
const THOUGHTS: usize = 50;
/// Active pipelines kept.
const ACTIVE: usize = 1_000;

/// The connection, as the header shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Link {
    /// The first attempt is under way.
    Connecting,
    /// Events are arriving.
    Live,
    /// Lost; trying again.
    Reconnecting {
        /// Attempts so far.
        attempt: u32,
    },
    /// Gave up, or refused: the error.
    Offline(String),
}

/// What the agents table is sorted by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SortKey {
    /// p99, slowest first (the default).
    P99,
    /// p50.
    P50,
    /// p90.
    P90,
    /// The slowest run.
    Max,
    /// Most runs.
    Runs,
    /// Highest failure rate.
    FailureRate,
    /// Most tokens.
    Tokens,
    /// Highest cost.
    Cost,
}

impl SortKey {
    const ALL: [SortKey; 8] = [
        SortKey::P99,
        SortKey::P50,
        SortKey::P90,
        SortKey::Max,
        SortKey::Runs,
        SortKey::FailureRate,
        SortKey::Tokens,
        SortKey::Cost,
    ];

    /// Its name, as `--sort` takes it and the table's title shows it.
    pub fn name(self) -> &'static str {
        match self {
            SortKey::P99 => "p99",
            SortKey::P50 => "p50",
            SortKey::P90 => "p90",
            SortKey::Max => "max",
            SortKey::Runs => "runs",
            SortKey::FailureRate => "fail",
            SortKey::Tokens => "tokens",
            SortKey::Cost => "cost",
        }
    }

    /// The key named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    fn next(self) -> Self {
        let at = Self::ALL.iter().position(|k| *k == self).unwrap_or(0);
        Self::ALL[(at + 1) % Self::ALL.len()]
    }

    /// The figure `agent` (an `AgentStats` as JSON) is sorted by, largest first.
    pub fn of(self, agent: &Value) -> f64 {
        let n = |k: &str| agent[k].as_f64().unwrap_or(0.0);
        let usage = &agent["usage"];
        match self {
            SortKey::P99 => n("p99_ms"),
            SortKey::P50 => n("p50_ms"),
            SortKey::P90 => n("p90_ms"),
            SortKey::Max => n("max_ms"),
            SortKey::Runs => n("runs"),
            SortKey::FailureRate => n("failure_rate"),
            SortKey::Tokens => {
                usage["input_tokens"].as_f64().unwrap_or(0.0)
                    + usage["output_tokens"].as_f64().unwrap_or(0.0)
            }
            SortKey::Cost => usage["cost_usd"].as_f64().unwrap_or(0.0),
        }
    }
}

/// One agent running in an active pipeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Running {
    /// Percent done, from `progress!`.
    pub percent: Option<f64>,
    /// The stage, from `progress!`.
    pub stage: Option<String>,
}

/// An active pipeline.
#[derive(Debug, Clone, Default)]
pub struct Active {
    /// When it started, unix ms.
    pub started_ms: f64,
    /// Its source (on a collector).
    pub source: Option<String>,
    /// Agents running now, by name.
    pub running: BTreeMap<String, Running>,
    /// Runs finished so far.
    pub finished: u64,
}

/// What [`Model::apply_json`] reads of an event, borrowed from its text.
#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    ts: Option<f64>,
    #[serde(borrow)]
    pipeline: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// The fields of the events' `data` the view uses (any event's).
#[derive(Deserialize, Default)]
#[serde(default)]
struct DataIn<'a> {
    #[serde(borrow)]
    agent: Option<Cow<'a, str>>,
    percent: Option<f64>,
    #[serde(borrow)]
    stage: Option<Cow<'a, str>>,
    #[serde(borrow)]
    outcome: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    cpu_percent: Option<f64>,
    rss_bytes: Option<f64>,
}

/// What the pipeline list needs of a report.
#[derive(Deserialize)]
struct ReportIn<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(default)]
    duration_ms: f64,
    #[serde(default)]
    started_at_ms: f64,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    bottlenecks: Vec<BottleneckIn<'a>>,
    #[serde(borrow, default)]
    agents: Vec<RunIn<'a>>,
}

#[derive(Deserialize)]
struct BottleneckIn<'a> {
    #[serde(borrow)]
    agent: Cow<'a, str>,
    #[serde(default)]
    share: f64,
}

#[derive(Deserialize)]
struct RunIn<'a> {
    #[serde(borrow)]
    agent: Cow<'a, str>,
    #[serde(borrow)]
    outcome: Cow<'a, str>,
    #[serde(borrow, default)]
    error: Option<Cow<'a, str>>,
    #[serde(default)]
    offset_ms: f64,
}

/// A finished pipeline, as the list shows it.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its id.
    pub id: String,
    /// `succeeded`, `failed`, ...
    pub outcome: String,
    /// Whether it failed.
    pub failed: bool,
    /// Its wall time, ms.
    pub duration_ms: f64,
    /// Its first bottleneck and share, if any.
    pub bottleneck: Option<(String, f64)>,
    /// The report's JSON, as the server sent it.
    pub report: String,
}

/// Where the keyboard goes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// The overview.
    Main,
    /// A pipeline's detail (Enter).
    Detail(String),
    /// Typing a filter (`/`).
    Filter,
    /// The help (`?`).
    Help,
}

/// Everything `perfmon top` shows.
#[derive(Debug)]
pub struct Model {
    /// The server's URL, for the header.
    pub url: String,
    /// The connection.
    pub link: Link,
    /// The newest seq seen.
    pub last_seq: u64,
    /// Arrival times of the last events, for events/s.
    arrivals: VecDeque<Instant>,
    /// The server's overview (`/api/performance/overview`).
    pub overview: Value,
    /// The agents (`/api/performance/agents`), sorted by [`Model::sort`].
    pub agents: Vec<Value>,
    /// Agents flagged a bottleneck in a recent pipeline.
    pub bottlenecks: BTreeMap<String, f64>,
    /// Active pipelines, by id.
    pub active: BTreeMap<String, Active>,
    /// Finished pipelines, newest first.
    pub recent: VecDeque<Finished>,
    /// Sources of the recent pipelines (on a collector), by id.
    pub sources: BTreeMap<String, String>,
    /// (time, pipeline, agent, error), newest first.
    pub failures: VecDeque<(f64, String, String, String)>,
    /// Thoughts, errors and notices, newest last.
    pub log: VecDeque<String>,
    /// Thoughts by pipeline.
    pub thoughts: BTreeMap<String, VecDeque<String>>,
    /// The server process's CPU % and resident bytes (from `state_update`).
    pub process: Option<(f64, f64)>,
    /// A notice shown under the header (a gap, a reload), if any.
    pub notice: Option<String>,
    /// The agents table's order.
    pub sort: SortKey,
    /// Only pipelines and agents containing this.
    pub filter: String,
    /// Paused: events still arrive, the screen does not change.
    pub paused: bool,
    /// Where the keys go.
    pub mode: Mode,
    /// The selected row of the pipeline list (active, then recent).
    pub selected: usize,
    /// Set when the view must reload from REST (a gap).
    pub reload: bool,
    /// Whether to quit.
    pub quit: bool,
}

fn ms(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

impl Model {
    /// An empty model for the server at `url`.
    pub fn new(url: &str) -> Self {
        Model {
            url: url.to_owned(),
            link: Link::Connecting,
            last_seq: 0,
            arrivals: VecDeque::new(),
            overview: Value::Null,
            agents: Vec::new(),
            bottlenecks: BTreeMap::new(),
            active: BTreeMap::new(),
            recent: VecDeque::new(),
            sources: BTreeMap::new(),
            failures: VecDeque::new(),
            log: VecDeque::new(),
            thoughts: BTreeMap::new(),
            process: None,
            notice: None,
            sort: SortKey::P99,
            filter: String::new(),
            paused: false,
            mode: Mode::Main,
            selected: 0,
            reload: false,
            quit: false,
        }
    }

    /// Events per second over the last 5 s.
    pub fn events_per_sec(&self) -> f64 {
        self.arrivals.len() as f64 / 5.0
    }

    fn log(&mut self, line: String) {
        if self.log.len() >= LOG {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Takes the overview and the agents from REST.
    pub fn set_stats(&mut self, overview: Value, agents: Value) {
        self.overview = overview;
        self.agents = match agents {
            Value::Array(list) => list,
            _ => Vec::new(),
        };
        self.sort_agents();
    }

    fn sort_agents(&mut self) {
        let key = self.sort;
        self.agents.sort_by(|a, b| {
            key.of(b)
                .total_cmp(&key.of(a))
                .then_with(|| a["agent"].as_str().cmp(&b["agent"].as_str()))
        });
    }

    /// Takes the active and recent pipelines from REST (start, or after a gap).
    pub fn set_pipelines(&mut self, active: &Value, recent: &Value) {
        self.active.clear();
        for a in active.as_array().into_iter().flatten() {
            let Some(id) = a["id"].as_str() else { continue };
            let mut entry = Active {
                started_ms: ms(&a["started_at_ms"]),
                source: a["source"].as_str().map(str::to_owned),
                finished: a["finished_runs"].as_u64().unwrap_or(0),
                ..Active::default()
            };
            for agent in a["running_agents"].as_array().into_iter().flatten() {
                if let Some(agent) = agent.as_str() {
                    entry.running.insert(agent.to_owned(), Running::default());
                }
            }
            if let Some(p) = a.get("last_progress").filter(|p| !p.is_null())
                && let Some(r) = p["agent"].as_str().and_then(|n| entry.running.get_mut(n))
            {
                r.percent = p["percent"].as_f64();
                r.stage = p["stage"].as_str().map(str::to_owned);
            }
            self.active.insert(id.to_owned(), entry);
        }
        self.recent.clear();
        for r in recent.as_array().into_iter().flatten().rev() {
            self.finished(&r.to_string(), None);
        }
    }

    /// A finished pipeline's report (an event's data or a REST answer, as
    /// JSON text): the list's figures are read from it, the whole report is
    /// parsed only to draw its timeline (hundreds a second arrive under load).
    fn finished(&mut self, json: &str, event_source: Option<&str>) {
        let Ok(r) = serde_json::from_str::<ReportIn<'_>>(json) else {
            return;
        };
        let id = r.id.into_owned();
        self.active.remove(&id);
        if let Some(source) = r.source.as_deref().or(event_source) {
            self.sources.insert(id.clone(), source.to_owned());
        }
        for b in &r.bottlenecks {
            self.bottlenecks.insert(b.agent.to_string(), b.share);
        }
        let bottleneck = r
            .bottlenecks
            .first()
            .map(|b| (b.agent.to_string(), b.share));
        for run in r.agents.iter().filter(|run| run.outcome != "succeeded") {
            let text = match &run.error {
                Some(e) if run.outcome == "failed" => format!("failed: {e}"),
                _ => run.outcome.to_string(),
            };
            self.push_failure(r.started_at_ms + run.offset_ms, &id, &run.agent, &text);
        }
        if self.recent.len() >= RECENT
            && let Some(gone) = self.recent.pop_back()
        {
            self.thoughts.remove(&gone.id);
            self.sources.remove(&gone.id);
        }
        self.recent.push_front(Finished {
            failed: r.outcome != "succeeded",
            outcome: r.outcome.into_owned(),
            duration_ms: r.duration_ms,
            bottleneck,
            id,
            report: json.to_owned(),
        });
    }

    fn push_failure(&mut self, ts: f64, pipeline: &str, agent: &str, error: &str) {
        if self
            .failures
            .iter()
            .any(|f| f.1 == pipeline && f.2 == agent && f.3 == error)
        {
            return;
        }
        if self.failures.len() >= FAILURES {
            self.failures.pop_back();
        }
        self.failures
            .push_front((ts, pipeline.to_owned(), agent.to_owned(), error.to_owned()));
    }

    /// One event from the stream, as a `Value`.
    pub fn apply(&mut self, event: &Value) {
        self.apply_json(&event.to_string());
    }

    /// One event from the stream, as the server sent it (decoded into
    /// borrowed types: no `Value` is built). Returns `false` for JSON that
    /// is not an event.
    pub fn apply_json(&mut self, json: &str) -> bool {
        let Ok(event) = serde_json::from_str::<EventIn<'_>>(json) else {
            return false;
        };
        let now = Instant::now();
        self.arrivals.push_back(now);
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t).as_secs() >= 5)
        {
            self.arrivals.pop_front();
        }
        if let Some(seq) = event.seq {
            self.last_seq = self.last_seq.max(seq);
        }
        let raw = event.data.map_or("{}", |d| d.get());
        if event.kind == "pipeline_completed" {
            self.finished(raw, event.source.as_deref());
            return true;
        }
        let data: DataIn<'_> = serde_json::from_str(raw).unwrap_or_default();
        let pipeline = event.pipeline.as_deref();
        let agent = data.agent.as_deref();
        let ts = event.ts.unwrap_or(0.0);
        match &*event.kind {
            "pipeline_started" => {
                if let Some(id) = pipeline
                    && (self.active.len() < ACTIVE || self.active.contains_key(id))
                {
                    self.active.insert(
                        id.to_owned(),
                        Active {
                            started_ms: ts,
                            source: event.source.as_deref().map(str::to_owned),
                            ..Active::default()
                        },
                    );
                }
            }
            "agent_started" | "tool_started" => {
                if let (Some(id), Some(agent)) = (pipeline, agent)
                    && let Some(a) = self.active.get_mut(id)
                {
                    a.running.insert(agent.to_owned(), Running::default());
                }
            }
            "agent_progress" => {
                if let (Some(id), Some(agent)) = (pipeline, agent)
                    && let Some(r) = self
                        .active
                        .get_mut(id)
                        .and_then(|a| a.running.get_mut(agent))
                {
                    r.percent = data.percent.or(r.percent);
                    r.stage = data.stage.as_deref().map(str::to_owned).or(r.stage.take());
                }
            }
            "agent_completed" | "tool_completed" => {
                if let (Some(id), Some(agent)) = (pipeline, agent)
                    && let Some(a) = self.active.get_mut(id)
                {
                    a.running.remove(agent);
                    a.finished += 1;
                }
                if let Some(outcome) = data.outcome.as_deref().filter(|o| *o != "succeeded") {
                    let text = match data.error.as_deref() {
                        Some(e) if outcome == "failed" => format!("failed: {e}"),
                        _ => outcome.to_owned(),
                    };
                    self.push_failure(
                        ts,
                        pipeline.unwrap_or("(no pipeline)"),
                        agent.unwrap_or("?"),
                        &text,
                    );
                }
            }
            "thought" => {
                let text = data.text.as_deref().unwrap_or_default();
                self.log(format!(
                    "{} {}: {text}",
                    pipeline.unwrap_or("-"),
                    agent.unwrap_or("?")
                ));
                if let Some(id) = pipeline {
                    let list = self.thoughts.entry(id.to_owned()).or_default();
                    if list.len() >= THOUGHTS {
                        list.pop_front();
                    }
                    list.push_back(format!("{}: {text}", agent.unwrap_or("?")));
                }
            }
            "error" => {
                let message = data.message.as_deref().unwrap_or_default();
                self.log(format!(
                    "ERROR {} {}: {message}",
                    pipeline.unwrap_or("-"),
                    agent.unwrap_or("-")
                ));
            }
            "state_update" => {
                self.process = Some((
                    data.cpu_percent.unwrap_or(0.0),
                    data.rss_bytes.unwrap_or(0.0),
                ));
            }
            "alert_fired" => {
                let message = data.message.as_deref().unwrap_or_default().to_owned();
                self.log(format!("ALERT {message}"));
            }
            "source_gone" => {
                self.log(format!(
                    "source {} gone: its open pipelines are lost",
                    event.source.as_deref().unwrap_or("?")
                ));
                self.reload = true;
            }
            _ => {}
        }
        true
    }

    /// The server shed events to this view (`dropped`) or a resume could not
    /// recover them: say so, and reload from REST.
    pub fn gap(&mut self, what: &str) {
        self.notice = Some(format!("{what}: reloaded from the server"));
        self.log(format!("notice: {what}"));
        self.reload = true;
    }

    /// Pipelines listed (filtered): active ones first, then recent ones.
    pub fn pipeline_ids(&self) -> Vec<(String, bool)> {
        let keep = |id: &str| self.filter.is_empty() || id.contains(&self.filter);
        self.active
            .keys()
            .filter(|id| keep(id))
            .map(|id| (id.clone(), true))
            .chain(
                self.recent
                    .iter()
                    .filter(|r| keep(&r.id))
                    .map(|r| (r.id.clone(), false)),
            )
            .collect()
    }

    /// The agents listed (filtered).
    pub fn agent_rows(&self) -> Vec<&Value> {
        self.agents
            .iter()
            .filter(|a| {
                self.filter.is_empty()
                    || a["agent"]
                        .as_str()
                        .is_some_and(|n| n.contains(&self.filter))
            })
            .collect()
    }

    /// The finished pipeline `id`, if listed.
    pub fn finished_pipeline(&self, id: &str) -> Option<&Finished> {
        self.recent.iter().find(|r| r.id == id)
    }

    /// The whole report of `id` (parsed now), if listed.
    pub fn report(&self, id: &str) -> Option<PipelineReport> {
        self.finished_pipeline(id)
            .and_then(|f| serde_json::from_str(&f.report).ok())
    }

    /// What a key does. `key` is a character, or `"Enter"`, `"Esc"`,
    /// `"Up"`, `"Down"`, `"Backspace"`.
    pub fn key(&mut self, key: &str) {
        match (&self.mode, key) {
            (Mode::Filter, "Enter") => self.mode = Mode::Main,
            (Mode::Filter, "Esc") => {
                self.filter.clear();
                self.mode = Mode::Main;
            }
            (Mode::Filter, "Backspace") => {
                self.filter.pop();
            }
            (Mode::Filter, c) if c.chars().count() == 1 => {
                if self.filter.len() < 64 {
                    self.filter.push_str(c);
                }
                self.selected = 0;
            }
            (Mode::Filter, _) => {}
            (Mode::Help, _) => self.mode = Mode::Main,
            (_, "q") => self.quit = true,
            (_, "?") => self.mode = Mode::Help,
            (_, "/") => self.mode = Mode::Filter,
            (_, "p") => self.paused = !self.paused,
            (_, "s") => {
                self.sort = self.sort.next();
                self.sort_agents();
            }
            (Mode::Detail(_), "Esc" | "Backspace") => self.mode = Mode::Main,
            (_, "Up" | "k") => self.selected = self.selected.saturating_sub(1),
            (_, "Down" | "j") => {
                let n = self.pipeline_ids().len();
                self.selected = (self.selected + 1).min(n.saturating_sub(1));
            }
            (Mode::Main, "Enter") => {
                if let Some((id, _)) = self.pipeline_ids().get(self.selected) {
                    self.mode = Mode::Detail(id.clone());
                }
            }
            (_, "Esc") => self.notice = None,
            _ => {}
        }
    }
}
