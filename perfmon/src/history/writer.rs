//! The history writer: an [`Exporter`] on its own thread that stores
//! finished pipelines, per-bucket rollups and alert transitions in batched
//! transactions, and enforces the retention and the size cap.
//!
//! Its queue is its event subscription (bounded; what it misses is
//! counted), to pipeline-level events only: agent and tool runs publish no
//! event for it. Their rollups come from the agents' statistics instead:
//! at each minute's end (within the thread's 100 ms wake-up) and at each
//! flush, the writer takes the difference of every agent's histogram and
//! counts since its last look, and adds it to the current buckets.
//!
//! A batch SQLite refuses is counted and dropped, never retried forever:
//! memory stays bounded whatever the disk does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use rusqlite::{Connection, Transaction, params};

use super::query::ms;
use super::rollup::{self, Bucket, Cell, Rollups};
use super::stats::Counters;
use crate::alert_state::Alert;
use crate::events::{Event, EventKind};
use crate::exporter::Exporter;
use crate::record::PipelineReport;
use crate::recorder::Recorder;

/// Pipelines held before a commit is forced.
const BATCH_PIPELINES: usize = 2_048;
/// Longest a finished pipeline waits before it is committed.
const COMMIT_EVERY: Duration = Duration::from_millis(500);
/// How often the retention and the size cap are enforced.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);
/// Pipelines deleted per statement while pruning.
const PRUNE_CHUNK: i64 = 1_000;

/// Where to stop keeping things.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) retention: Duration,
    pub(crate) max_bytes: u64,
}

/// An agent's statistics at the writer's last look.
struct Seen {
    runs: u64,
    failures: u64,
    total_ns: u128,
    histogram: Histogram<u64>,
}

pub(crate) struct Writer {
    recorder: Arc<Recorder>,
    seen: HashMap<Arc<str>, Seen>,
    /// The minute of the last look at the agents' statistics.
    looked_minute: i64,
    conn: Connection,
    session: i64,
    counters: Arc<Counters>,
    limits: Limits,
    pipelines: Vec<Arc<PipelineReport>>,
    alerts: Vec<(i64, Arc<Alert>)>,
    rollups: Rollups,
    dirty_since: Option<Instant>,
    maintained: Instant,
    newest_ms: i64,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("session", &self.session)
            .field("pending", &self.pipelines.len())
            .finish_non_exhaustive()
    }
}

impl Writer {
    pub(crate) fn new(
        recorder: Arc<Recorder>,
        conn: Connection,
        session: i64,
        counters: Arc<Counters>,
        limits: Limits,
    ) -> Self {
        let now = ms(recorder.system_time(recorder.now()));
        Writer {
            recorder,
            seen: HashMap::new(),
            looked_minute: Bucket::Minute.start(now),
            conn,
            session,
            counters,
            limits,
            pipelines: Vec::new(),
            alerts: Vec::new(),
            rollups: Rollups::default(),
            dirty_since: None,
            maintained: Instant::now(),
            newest_ms: now,
        }
    }

    /// At the first sight of a new minute (by the clock, or by an event's
    /// time): the runs since the last look ran (mostly) in the minute that
    /// just ended, so they count there.
    fn look_at_minute_end(&mut self, now_ms: i64) {
        let minute = Bucket::Minute.start(now_ms);
        if minute > self.looked_minute {
            self.look_at_agents(minute - 1, now_ms);
        }
    }

    fn now_ms(&self) -> i64 {
        ms(self.recorder.system_time(self.recorder.now()))
    }

    /// Adds what every agent ran since the last look to the buckets of
    /// `at_ms`; `now_ms` is when the look happens.
    fn look_at_agents(&mut self, at_ms: i64, now_ms: i64) {
        self.looked_minute = Bucket::Minute.start(now_ms);
        for entry in self.recorder.entries() {
            let cells = entry.by_outcome();
            let runs: u64 = cells.iter().map(|c| c.runs).sum();
            let seen = self
                .seen
                .entry(Arc::clone(&entry.name))
                .or_insert_with(|| Seen {
                    runs: 0,
                    failures: 0,
                    total_ns: 0,
                    histogram: Cell::new().histogram,
                });
            if runs == seen.runs {
                continue;
            }
            // Index 0 is `succeeded`; every other outcome is a failure.
            let failures: u64 = cells[1..].iter().map(|c| c.runs).sum();
            let total_ns: u128 = cells.iter().map(|c| c.total_ns).sum();
            let mut histogram = cells[0].histogram.clone();
            for cell in &cells[1..] {
                // Same precision, auto-resizing: fails only without memory.
                let _ = histogram.add(&cell.histogram);
            }
            let mut delta = histogram.clone();
            // Every value seen before is still counted: no underflow.
            let _ = delta.subtract(&seen.histogram);
            let cell = Cell {
                runs: runs - seen.runs,
                failures: failures.saturating_sub(seen.failures),
                total_ns: u64::try_from(total_ns - seen.total_ns.min(total_ns)).unwrap_or(u64::MAX),
                max_ns: delta.max(),
                histogram: delta,
            };
            *seen = Seen {
                runs,
                failures,
                total_ns,
                histogram,
            };
            self.rollups.add(rollup::AGENT, &entry.name, at_ms, &cell);
            self.newest_ms = self.newest_ms.max(at_ms);
            self.dirty_since.get_or_insert_with(Instant::now);
        }
    }

    fn commit(&mut self) {
        if self.dirty_since.take().is_none() {
            return;
        }
        let result = self.conn.transaction().and_then(|tx| {
            insert_pipelines(&tx, self.session, &self.pipelines)?;
            insert_alerts(&tx, self.session, &self.alerts)?;
            self.rollups.write(&tx)?;
            tx.commit()
        });
        let stored = self.pipelines.len() as u64;
        match result {
            Ok(()) => {
                let runs = self.pipelines.iter().map(|p| p.total_runs()).sum();
                Counters::add(&self.counters.pipelines_written, stored);
                Counters::add(&self.counters.runs_written, runs);
                Counters::add(&self.counters.alerts_written, self.alerts.len() as u64);
                Counters::add(&self.counters.batches, 1);
                self.rollups.retain_current(self.newest_ms, true);
            }
            Err(e) => {
                Counters::add(&self.counters.write_failures, 1);
                Counters::add(&self.counters.pipelines_lost, stored);
                self.counters.fail("write failed", &e);
                // Buckets still current stay dirty and are tried again;
                // older ones are given up so memory stays bounded.
                self.rollups.retain_current(self.newest_ms, false);
                if self.rollups.len() > 0 {
                    self.dirty_since = Some(Instant::now());
                }
            }
        }
        self.pipelines.clear();
        self.alerts.clear();
    }

    /// Deletes what is older than the retention, then the oldest pipelines
    /// while the file is above its cap, and measures the file.
    fn maintain(&mut self) {
        self.maintained = Instant::now();
        let now = ms(SystemTime::now()).max(self.newest_ms);
        let cutoff = now
            .saturating_sub(i64::try_from(self.limits.retention.as_millis()).unwrap_or(i64::MAX));
        let result = prune(&self.conn, cutoff, self.limits.max_bytes);
        match result {
            Ok((pruned, bytes)) => {
                Counters::add(&self.counters.pipelines_pruned, pruned);
                self.counters
                    .file_bytes
                    .store(bytes, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                Counters::add(&self.counters.write_failures, 1);
                self.counters.fail("pruning failed", &e);
            }
        }
    }
}

impl Exporter for Writer {
    fn export(&mut self, events: &[Event]) {
        for event in events {
            let at = ms(event.ts);
            self.look_at_minute_end(at);
            match &event.kind {
                EventKind::PipelineCompleted(report) => {
                    let ns = u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX);
                    let name: Arc<str> = Arc::from(rollup::pipeline_kind(&report.id));
                    self.rollups.record(
                        rollup::PIPELINE,
                        &name,
                        at,
                        ns,
                        report.outcome.is_failure(),
                    );
                    self.pipelines.push(Arc::clone(report));
                }
                EventKind::AlertFired(alert) | EventKind::AlertResolved(alert) => {
                    self.alerts.push((at, Arc::clone(alert)));
                }
                _ => continue,
            }
            self.newest_ms = self.newest_ms.max(at);
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        if self.pipelines.len() >= BATCH_PIPELINES {
            self.commit();
        }
    }

    fn missed(&mut self, count: u64) {
        Counters::add(&self.counters.events_missed, count);
        self.counters.fail(
            "writer fell behind the event stream",
            &format_args!("{count} events missed"),
        );
    }

    fn flush(&mut self) {
        let now = self.now_ms();
        self.look_at_agents(now, now);
        self.commit();
        self.maintain();
    }

    fn idle(&mut self) {
        let now = self.now_ms();
        self.look_at_minute_end(now);
        if self
            .dirty_since
            .is_some_and(|t| t.elapsed() >= COMMIT_EVERY)
        {
            self.commit();
        }
        if self.maintained.elapsed() >= MAINTAIN_EVERY {
            self.maintain();
        }
    }
}

fn insert_pipelines(
    tx: &Transaction<'_>,
    session: i64,
    reports: &[Arc<PipelineReport>],
) -> rusqlite::Result<()> {
    let mut pipeline = tx.prepare_cached(
        "INSERT INTO pipelines (session, run, pipeline, started_ms, finished_ms, duration_ns,
         outcome, error, runs, bottlenecks, report, input_tokens, output_tokens, cost_usd)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    let mut agent = tx.prepare_cached(
        "INSERT INTO pipeline_agents (pipeline, agent, finished_ms, runs, bottleneck, share)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (agent, pipeline) DO UPDATE SET runs = runs + excluded.runs",
    )?;
    for report in reports {
        let json = serde_json::to_string(&**report)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let finished = ms(report.started_at + report.duration);
        let bottlenecks = report
            .bottlenecks
            .iter()
            .map(|b| b.agent.as_str())
            .collect::<Vec<_>>()
            .join(",");
        pipeline.execute(params![
            session,
            report.run,
            report.id,
            ms(report.started_at),
            finished,
            u64::try_from(report.duration.as_nanos()).unwrap_or(u64::MAX),
            report.outcome.as_str(),
            report.outcome.error(),
            report.total_runs(),
            bottlenecks,
            json,
            report.usage.input_tokens,
            report.usage.output_tokens,
            report.usage.cost_usd,
        ])?;
        let key = tx.last_insert_rowid();
        let runs = report
            .agents
            .iter()
            .map(|r| (r.agent.as_str(), 1))
            .chain(report.aggregated.iter().map(|a| (a.agent.as_str(), a.runs)));
        for (name, count) in runs {
            let flagged = report.bottleneck(name);
            agent.execute(params![
                key,
                name,
                finished,
                count,
                flagged.is_some(),
                flagged.map_or(0.0, |b| b.judged_share()),
            ])?;
        }
    }
    Ok(())
}

fn insert_alerts(
    tx: &Transaction<'_>,
    session: i64,
    alerts: &[(i64, Arc<Alert>)],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO alerts (session, at_ms, rule, state, value, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (at, alert) in alerts {
        stmt.execute(params![
            session,
            at,
            alert.rule,
            alert.state.as_str(),
            alert.value,
            alert.message
        ])?;
    }
    Ok(())
}

/// Returns the pipelines pruned and the file's size after.
fn prune(conn: &Connection, cutoff_ms: i64, max_bytes: u64) -> rusqlite::Result<(u64, u64)> {
    let mut pruned = 0u64;
    loop {
        let n = conn.execute(
            // By the finish-time index: no scan of the reports.
            "DELETE FROM pipelines WHERE id IN
             (SELECT id FROM pipelines WHERE finished_ms < ?1 LIMIT ?2)",
            params![cutoff_ms, PRUNE_CHUNK],
        )?;
        pruned += n as u64;
        if n == 0 {
            break;
        }
    }
    conn.execute(
        "DELETE FROM rollups WHERE start_ms < ?1",
        params![cutoff_ms],
    )?;
    conn.execute("DELETE FROM alerts WHERE at_ms < ?1", params![cutoff_ms])?;
    let used = |conn: &Connection| -> rusqlite::Result<u64> {
        let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: u64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok((pages - free.min(pages)) * size)
    };
    // Over the cap: down to nine tenths of it, so that pruning does not
    // run on every check once the file is full.
    if used(conn)? > max_bytes {
        while used(conn)? > max_bytes / 10 * 9 {
            let n = conn.execute(
                "DELETE FROM pipelines WHERE id IN (SELECT id FROM pipelines ORDER BY id LIMIT 100)",
                [],
            )?;
            pruned += n as u64;
            if n == 0 {
                break;
            }
        }
    }
    if pruned > 0 {
        // Each step of incremental_vacuum frees one page: run it to the end.
        conn.prepare("PRAGMA incremental_vacuum")?
            .query_map([], |_| Ok(()))?
            .for_each(drop);
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    }
    let pages: u64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let size: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok((pruned, pages * size))
}
