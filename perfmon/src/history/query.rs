//! The history's questions and answers: pipeline search with cursor paging,
//! trends per bucket, and the comparison of two periods. Each function runs
//! on a reading connection; none touches the writer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use serde::Serialize;

use super::rollup::{self, Bucket, Cell};
use crate::record::{PipelineReport, ser};

/// Largest page of [`PipelineQuery`].
pub const MAX_PAGE: usize = 1_000;

/// Which stored pipelines to list: newest first (by finish time), filtered,
/// one page at a time.
///
/// ```
/// # use std::time::{Duration, SystemTime};
/// let query = perfmon::PipelineQuery::new()
///     .from(SystemTime::now() - Duration::from_secs(86_400))
///     .outcome("failed")
///     .agent("physics")
///     .limit(50);
/// # let _ = query;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineQuery {
    /// Finished at or after this time.
    pub from: Option<SystemTime>,
    /// Finished before this time.
    pub to: Option<SystemTime>,
    /// Ended this way (`"succeeded"`, `"failed"`, `"panicked"`, `"cancelled"`).
    pub outcome: Option<String>,
    /// With this pipeline id.
    pub pipeline: Option<String>,
    /// In which this agent (or tool) ran.
    pub agent: Option<String>,
    /// With `agent` set: only pipelines in which it was a bottleneck.
    pub bottleneck: bool,
    /// Page size, `1..=1000`; default 20.
    pub limit: usize,
    /// The `next` cursor of the previous page.
    pub cursor: Option<String>,
}

impl Default for PipelineQuery {
    fn default() -> Self {
        PipelineQuery {
            from: None,
            to: None,
            outcome: None,
            pipeline: None,
            agent: None,
            bottleneck: false,
            limit: 20,
            cursor: None,
        }
    }
}

impl PipelineQuery {
    /// Every stored pipeline, newest first, 20 a page.
    pub fn new() -> Self {
        PipelineQuery::default()
    }
    /// Finished at or after `t`.
    pub fn from(mut self, t: SystemTime) -> Self {
        self.from = Some(t);
        self
    }
    /// Finished before `t`.
    pub fn to(mut self, t: SystemTime) -> Self {
        self.to = Some(t);
        self
    }
    /// Ended with `outcome` (its name).
    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = Some(outcome.into());
        self
    }
    /// With the pipeline id `id`.
    pub fn pipeline(mut self, id: impl Into<String>) -> Self {
        self.pipeline = Some(id.into());
        self
    }
    /// In which `agent` ran.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self
    }
    /// In which `agent` was a bottleneck.
    pub fn bottleneck(mut self, agent: impl Into<String>) -> Self {
        self.agent = Some(agent.into());
        self.bottleneck = true;
        self
    }
    /// At most `n` a page (clamped to `1..=1000`).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = n.clamp(1, MAX_PAGE);
        self
    }
    /// The page after the one whose `next` was `cursor`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.cursor = Some(cursor.into());
        self
    }
}

/// One stored pipeline: its report, exactly as it was when it finished.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StoredPipeline {
    /// Its key in the history file (also the paging order).
    pub key: u64,
    /// The process run (session) that recorded it; see [`History::session`](super::History::session).
    pub session: u64,
    /// The report.
    pub report: PipelineReport,
}

/// A page of [`StoredPipeline`]s, newest first (by finish time).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct PipelinePage {
    /// The pipelines.
    pub pipelines: Vec<StoredPipeline>,
    /// Pass to [`PipelineQuery::after`] for the next page; `None` on the
    /// last. Opaque (today `FINISHED_MS.KEY`): pages stay consistent while
    /// new pipelines are stored.
    pub next: Option<String>,
}

/// One bucket of a trend.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct TrendPoint {
    /// The bucket's start.
    #[serde(rename = "start_ms", serialize_with = "ser::unix_ms")]
    pub start: SystemTime,
    /// Runs that ended in it.
    pub runs: u64,
    /// Of which failed (any outcome but succeeded).
    pub failures: u64,
    /// `failures / runs`.
    pub failure_rate: f64,
    /// Mean wall time.
    #[serde(rename = "mean_ms", serialize_with = "ser::ms")]
    pub mean: Duration,
    /// Median.
    #[serde(rename = "p50_ms", serialize_with = "ser::ms")]
    pub p50: Duration,
    /// 90th percentile.
    #[serde(rename = "p90_ms", serialize_with = "ser::ms")]
    pub p90: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", serialize_with = "ser::ms")]
    pub p99: Duration,
    /// Largest.
    #[serde(rename = "max_ms", serialize_with = "ser::ms")]
    pub max: Duration,
}

/// Figures of one period, for [`Comparison`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Period {
    /// Start (inclusive).
    #[serde(rename = "from_ms", serialize_with = "ser::unix_ms")]
    pub from: SystemTime,
    /// End (exclusive).
    #[serde(rename = "to_ms", serialize_with = "ser::unix_ms")]
    pub to: SystemTime,
    /// Runs behind the figures below.
    pub runs: u64,
    /// Failed runs.
    pub failures: u64,
    /// `failures / runs` (0 without runs).
    pub failure_rate: f64,
    /// Median.
    #[serde(rename = "p50_ms", serialize_with = "ser::ms")]
    pub p50: Duration,
    /// 99th percentile.
    #[serde(rename = "p99_ms", serialize_with = "ser::ms")]
    pub p99: Duration,
    /// For an agent: pipelines it ran in.
    pub pipelines: u64,
    /// For an agent: of those, the pipelines in which it was a bottleneck.
    pub bottleneck_pipelines: u64,
    /// `bottleneck_pipelines / pipelines` (0 without pipelines).
    pub bottleneck_share: f64,
}

/// Two periods of one agent or one pipeline id, side by side.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Comparison {
    /// `"agent"` or `"pipeline"`.
    pub subject: &'static str,
    /// The agent's name or the pipeline id.
    pub name: String,
    /// The earlier period.
    pub before: Period,
    /// The later period.
    pub after: Period,
    /// `after.p50 / before.p50` (`None` when either has no runs).
    pub p50_ratio: Option<f64>,
    /// `after.p99 / before.p99` (`None` when either has no runs).
    pub p99_ratio: Option<f64>,
    /// `after.failure_rate - before.failure_rate`.
    pub failure_rate_change: f64,
    /// `after.bottleneck_share - before.bottleneck_share`.
    pub bottleneck_share_change: f64,
    /// A regression: with at least [`REGRESSION_MIN_RUNS`] runs in each
    /// period, p50 or p99 grew by more than a fifth, or the failure rate
    /// or bottleneck share by more than five points.
    pub regression: bool,
}

/// Runs each period needs before a change is called a regression.
pub const REGRESSION_MIN_RUNS: u64 = 10;

/// What an agent has done over everything stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct AgentHistory {
    /// The agent's (or tool's) name.
    pub agent: String,
    /// Its first stored run's day.
    #[serde(rename = "since_ms", serialize_with = "ser::unix_ms")]
    pub since: SystemTime,
    /// Runs stored.
    pub runs: u64,
    /// Failed runs stored.
    pub failures: u64,
    /// Median over them.
    #[serde(rename = "p50_ms", serialize_with = "ser::ms")]
    pub p50: Duration,
    /// 99th percentile over them.
    #[serde(rename = "p99_ms", serialize_with = "ser::ms")]
    pub p99: Duration,
}

pub(crate) fn ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn system_time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A stored report's JSON, read back.
pub(crate) fn report(json: &str) -> rusqlite::Result<PipelineReport> {
    serde_json::from_str(json).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A cursor's position: after (older than) this finish time and key.
fn position(cursor: Option<&str>) -> (i64, i64) {
    cursor
        .and_then(|c| c.split_once('.'))
        .and_then(|(f, k)| Some((f.parse().ok()?, k.parse().ok()?)))
        .unwrap_or((i64::MAX, i64::MAX))
}

pub(crate) fn pipelines(conn: &Connection, q: &PipelineQuery) -> rusqlite::Result<PipelinePage> {
    let limit = q.limit.clamp(1, MAX_PAGE);
    // Walked newest first down an index that holds the finish time: with
    // an agent, (agent, finished_ms, pipeline), so a rare agent costs no
    // scan of the others' pipelines; without, (finished_ms). A time range
    // is a range of the index; a page stops at `limit` rows.
    let mut sql = String::from(if q.agent.is_some() {
        "SELECT p.id, p.session, p.report, p.finished_ms FROM pipeline_agents a
         JOIN pipelines p ON p.id = a.pipeline
         WHERE a.agent = ?6 AND (a.finished_ms, a.pipeline) < (?1, ?2) AND a.finished_ms >= ?3"
    } else {
        "SELECT p.id, p.session, p.report, p.finished_ms FROM pipelines p
         WHERE (p.finished_ms, p.id) < (?1, ?2) AND p.finished_ms >= ?3"
    });
    if q.outcome.is_some() {
        sql.push_str(" AND p.outcome = ?5");
    }
    if q.pipeline.is_some() {
        sql.push_str(" AND p.pipeline = ?7");
    }
    if q.agent.is_some() && q.bottleneck {
        sql.push_str(" AND a.bottleneck = 1");
    }
    sql.push_str(if q.agent.is_some() {
        " ORDER BY a.finished_ms DESC, a.pipeline DESC LIMIT ?8"
    } else {
        " ORDER BY p.finished_ms DESC, p.id DESC LIMIT ?8"
    });
    let mut stmt = conn.prepare_cached(&sql)?;
    // The cursor and `to` make one upper bound, so the index walk starts
    // there rather than at the newest row: `finished_ms < to` is
    // `(finished_ms, key) < (to, MIN)`.
    let upper =
        position(q.cursor.as_deref()).min(q.to.map_or((i64::MAX, i64::MAX), |t| (ms(t), i64::MIN)));
    let rows = stmt.query_map(
        params![
            upper.0,
            upper.1,
            q.from.map_or(i64::MIN, ms),
            None::<i64>,
            q.outcome,
            q.agent,
            q.pipeline,
            limit as i64 + 1,
        ],
        |r| {
            Ok((
                StoredPipeline {
                    key: r.get(0)?,
                    session: r.get(1)?,
                    report: report(&r.get::<_, String>(2)?)?,
                },
                r.get::<_, i64>(3)?,
            ))
        },
    )?;
    let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last()
            .map(|(p, finished)| format!("{finished}.{}", p.key))
    } else {
        None
    };
    Ok(PipelinePage {
        pipelines: rows.into_iter().map(|(p, _)| p).collect(),
        next,
    })
}

pub(crate) fn pipeline_by_key(
    conn: &Connection,
    key: u64,
) -> rusqlite::Result<Option<StoredPipeline>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached("SELECT id, session, report FROM pipelines WHERE id = ?1")?
        .query_row([key], |r| {
            Ok(StoredPipeline {
                key: r.get(0)?,
                session: r.get(1)?,
                report: report(&r.get::<_, String>(2)?)?,
            })
        })
        .optional()
}

fn cells(
    conn: &Connection,
    subject: &str,
    name: &str,
    bucket: Bucket,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<(i64, Cell)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT start_ms, runs, failures, total_ns, max_ns, histogram FROM rollups
         WHERE subject = ?1 AND name = ?2 AND bucket = ?3 AND start_ms >= ?4 AND start_ms < ?5
         ORDER BY start_ms",
    )?;
    let rows = stmt.query_map(
        params![subject, name, bucket.as_str(), bucket.start(from), to],
        |r| {
            let blob: Vec<u8> = r.get(5)?;
            Ok((
                r.get(0)?,
                rollup::cell_from_row(r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, &blob),
            ))
        },
    )?;
    rows.collect()
}

pub(crate) fn trend(
    conn: &Connection,
    subject: &str,
    name: &str,
    bucket: Bucket,
    from: SystemTime,
    to: SystemTime,
) -> rusqlite::Result<Vec<TrendPoint>> {
    // Each row holds its percentiles already: no histogram to merge.
    let mut stmt = conn.prepare_cached(
        "SELECT start_ms, runs, failures, total_ns, max_ns, p50_ns, p90_ns, p99_ns FROM rollups
         WHERE subject = ?1 AND name = ?2 AND bucket = ?3 AND start_ms >= ?4 AND start_ms < ?5
         ORDER BY start_ms",
    )?;
    let rows = stmt.query_map(
        params![
            subject,
            name,
            bucket.as_str(),
            bucket.start(ms(from)),
            ms(to)
        ],
        |r| {
            let runs: u64 = r.get(1)?;
            let failures: u64 = r.get(2)?;
            let total: u64 = r.get(3)?;
            Ok(TrendPoint {
                start: system_time(r.get(0)?),
                runs,
                failures,
                failure_rate: rate(failures, runs),
                mean: Duration::from_nanos(total.checked_div(runs).unwrap_or(0)),
                max: Duration::from_nanos(r.get(4)?),
                p50: Duration::from_nanos(r.get(5)?),
                p90: Duration::from_nanos(r.get(6)?),
                p99: Duration::from_nanos(r.get(7)?),
            })
        },
    )?;
    rows.collect()
}

fn period(
    conn: &Connection,
    subject: &'static str,
    name: &str,
    from: SystemTime,
    to: SystemTime,
) -> rusqlite::Result<Period> {
    let (from_ms, to_ms) = (ms(from), ms(to));
    // Whole hours inside the period from hour buckets, the edges from
    // minute buckets: exact to the minute, and at most 120 minute rows
    // plus one row per hour to merge.
    let hour = Bucket::Hour.millis();
    let inner = (
        Bucket::Hour.start(from_ms.saturating_add(hour - 1)),
        Bucket::Hour.start(to_ms),
    );
    let mut parts = vec![(Bucket::Minute, from_ms, to_ms)];
    if inner.0 < inner.1 {
        parts = vec![
            (Bucket::Minute, from_ms, inner.0),
            (Bucket::Hour, inner.0, inner.1),
            (Bucket::Minute, inner.1, to_ms),
        ];
    }
    let mut merged = Cell::new();
    for (bucket, from, to) in parts {
        // A bucket counts in the period its start falls in.
        for (start, cell) in cells(conn, subject, name, bucket, from, to)? {
            if start >= from {
                merged.merge(&cell);
            }
        }
    }
    let (pipelines, bottleneck_pipelines) = if subject == rollup::AGENT {
        conn.prepare_cached(
            "SELECT count(*), coalesce(sum(bottleneck), 0) FROM pipeline_agents
             WHERE agent = ?1 AND finished_ms >= ?2 AND finished_ms < ?3",
        )?
        .query_row(params![name, from_ms, to_ms], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
    } else {
        (0, 0)
    };
    Ok(Period {
        from,
        to,
        runs: merged.runs,
        failures: merged.failures,
        failure_rate: rate(merged.failures, merged.runs),
        p50: Duration::from_nanos(merged.quantile(0.5)),
        p99: Duration::from_nanos(merged.quantile(0.99)),
        pipelines,
        bottleneck_pipelines,
        bottleneck_share: rate(bottleneck_pipelines, pipelines),
    })
}

pub(crate) fn compare(
    conn: &Connection,
    subject: &'static str,
    name: &str,
    before: (SystemTime, SystemTime),
    after: (SystemTime, SystemTime),
) -> rusqlite::Result<Comparison> {
    let before = period(conn, subject, name, before.0, before.1)?;
    let after = period(conn, subject, name, after.0, after.1)?;
    let ratio = |a: Duration, b: Duration| {
        (before.runs > 0 && after.runs > 0 && !b.is_zero())
            .then(|| a.as_secs_f64() / b.as_secs_f64())
    };
    let p50_ratio = ratio(after.p50, before.p50);
    let p99_ratio = ratio(after.p99, before.p99);
    let failure_rate_change = after.failure_rate - before.failure_rate;
    let bottleneck_share_change = after.bottleneck_share - before.bottleneck_share;
    let enough = before.runs >= REGRESSION_MIN_RUNS && after.runs >= REGRESSION_MIN_RUNS;
    let regression = enough
        && (p50_ratio.is_some_and(|r| r > 1.2)
            || p99_ratio.is_some_and(|r| r > 1.2)
            || failure_rate_change > 0.05
            || bottleneck_share_change > 0.05);
    Ok(Comparison {
        subject,
        name: name.to_owned(),
        before,
        after,
        p50_ratio,
        p99_ratio,
        failure_rate_change,
        bottleneck_share_change,
        regression,
    })
}

/// One stored alert transition.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct StoredAlert {
    /// When it happened.
    #[serde(rename = "at_ms", serialize_with = "ser::unix_ms")]
    pub at: SystemTime,
    /// The session (process run) it happened in.
    pub session: u64,
    /// The rule's name.
    pub rule: String,
    /// `"firing"` or `"resolved"`.
    pub state: String,
    /// The figure that crossed the line, if any.
    pub value: Option<f64>,
    /// The alert's message.
    pub message: String,
}

pub(crate) fn alerts(conn: &Connection, limit: usize) -> rusqlite::Result<Vec<StoredAlert>> {
    let mut stmt = conn.prepare_cached(
        "SELECT at_ms, session, rule, state, value, message FROM alerts ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit.clamp(1, MAX_PAGE) as i64], |r| {
        Ok(StoredAlert {
            at: system_time(r.get(0)?),
            session: r.get(1)?,
            rule: r.get(2)?,
            state: r.get(3)?,
            value: r.get(4)?,
            message: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// When the newest stored pipeline finished.
pub(crate) fn newest(conn: &Connection) -> rusqlite::Result<Option<SystemTime>> {
    conn.query_row("SELECT max(finished_ms) FROM pipelines", [], |r| {
        Ok(r.get::<_, Option<i64>>(0)?.map(system_time))
    })
}

pub(crate) fn agents(conn: &Connection) -> rusqlite::Result<Vec<AgentHistory>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, start_ms, runs, failures, total_ns, max_ns, histogram FROM rollups
         WHERE subject = 'agent' AND bucket = 'day' ORDER BY name, start_ms",
    )?;
    let mut out: Vec<(String, i64, Cell)> = Vec::new();
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        let blob: Vec<u8> = r.get(6)?;
        let cell = rollup::cell_from_row(r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, &blob);
        match out.last_mut() {
            Some((last, _, merged)) if *last == name => merged.merge(&cell),
            _ => out.push((name, r.get(1)?, cell)),
        }
    }
    Ok(out
        .into_iter()
        .map(|(agent, since, c)| AgentHistory {
            agent,
            since: system_time(since),
            runs: c.runs,
            failures: c.failures,
            p50: Duration::from_nanos(c.quantile(0.5)),
            p99: Duration::from_nanos(c.quantile(0.99)),
        })
        .collect())
}
