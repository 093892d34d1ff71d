//! Rollups: per agent (or pipeline name) and per minute, hour and day, the
//! runs, failures, total and largest time, and the latency histogram they
//! merge into. The writer keeps the current buckets in memory and writes
//! them whole; a bucket begun before a restart is read back and merged.

use std::collections::HashMap;
use std::sync::Arc;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// The width of a trend's buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Bucket {
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day (UTC).
    Day,
}

impl Bucket {
    /// Every width, narrowest first.
    pub const ALL: [Bucket; 3] = [Bucket::Minute, Bucket::Hour, Bucket::Day];

    /// `"minute"`, `"hour"` or `"day"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucket::Minute => "minute",
            Bucket::Hour => "hour",
            Bucket::Day => "day",
        }
    }

    /// The width named `name`, if any.
    pub fn parse(name: &str) -> Option<Bucket> {
        Bucket::ALL.into_iter().find(|b| b.as_str() == name)
    }

    /// The width in milliseconds.
    pub fn millis(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// The start of the bucket holding `ms` (unix milliseconds).
    pub(crate) fn start(self, ms: i64) -> i64 {
        ms.div_euclid(self.millis()) * self.millis()
    }
}

/// What rollups are about: agents (and tools), or whole pipelines by name.
pub(crate) const AGENT: &str = "agent";
pub(crate) const PIPELINE: &str = "pipeline";

/// Names kept per subject; runs of further names roll up under [`OTHER`],
/// so memory and the file stay bounded whatever ids a program uses.
const MAX_NAMES: usize = 1_000;
/// Where runs of names past [`MAX_NAMES`] are counted.
pub(crate) const OTHER: &str = "(other)";

/// The kind of a pipeline: its id without a trailing number and the
/// separator before it (`proj_7` → `proj`, `ingest-2024` → `ingest`), so
/// that the runs of one kind of pipeline roll up together.
pub fn pipeline_kind(id: &str) -> &str {
    let stem = id.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() == id.len() || stem.is_empty() {
        return id;
    }
    let trimmed = stem.trim_end_matches(['_', '-', '#', ':', '/', '.', ' ']);
    if trimmed.is_empty() { stem } else { trimmed }
}

/// Latencies above this are counted at it (an hour, as in the agent table).
const MAX_NS: u64 = 3_600_000_000_000;

/// One bucket of one subject.
#[derive(Debug)]
pub(crate) struct Cell {
    pub(crate) runs: u64,
    pub(crate) failures: u64,
    pub(crate) total_ns: u64,
    pub(crate) max_ns: u64,
    pub(crate) histogram: Histogram<u64>,
}

impl Cell {
    pub(crate) fn new() -> Self {
        Cell {
            runs: 0,
            failures: 0,
            total_ns: 0,
            max_ns: 0,
            histogram: new_histogram(),
        }
    }

    pub(crate) fn record(&mut self, ns: u64, failed: bool) {
        self.runs += 1;
        self.failures += u64::from(failed);
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        // Auto-resizing: fails only when memory runs out, and then one
        // sample less in the percentiles is the right loss.
        let _ = self.histogram.record(ns.clamp(1, MAX_NS));
    }

    pub(crate) fn merge(&mut self, other: &Cell) {
        self.runs += other.runs;
        self.failures += other.failures;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        let _ = self.histogram.add(&other.histogram);
    }

    /// The `q` quantile in nanoseconds, never above the largest value seen.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.runs == 0 {
            0
        } else {
            self.histogram.value_at_quantile(q).min(self.max_ns)
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing into a Vec cannot fail but for a histogram too large to
        // describe, which a bounded one is not; an empty blob reads back
        // as an empty histogram.
        let _ = V2Serializer::new().serialize(&self.histogram, &mut out);
        out
    }

    fn decode(blob: &[u8]) -> Histogram<u64> {
        Deserializer::new()
            .deserialize(&mut &blob[..])
            .unwrap_or_else(|_| new_histogram())
    }
}

fn new_histogram() -> Histogram<u64> {
    // UNWRAP: 2 significant figures is always a valid precision.
    #[allow(clippy::unwrap_used)]
    let mut h = Histogram::new(2).unwrap();
    h.auto(true);
    h
}

type Key = (&'static str, Arc<str>, Bucket, i64);

/// A bucket being filled, and whether it holds what the file had.
#[derive(Debug)]
struct Open {
    cell: Cell,
    loaded: bool,
    dirty: bool,
}

/// The buckets the writer is filling.
#[derive(Debug, Default)]
pub(crate) struct Rollups {
    open: HashMap<Key, Open>,
    /// Names seen per subject (agent, pipeline), up to [`MAX_NAMES`] each.
    names: [std::collections::HashSet<Arc<str>>; 2],
}

impl Rollups {
    /// Counts one run of `name` that ended at `at_ms`, in each width.
    pub(crate) fn record(
        &mut self,
        subject: &'static str,
        name: &Arc<str>,
        at_ms: i64,
        ns: u64,
        failed: bool,
    ) {
        self.update(subject, name, at_ms, |cell| cell.record(ns, failed));
    }

    /// Adds `cell` (runs of `name` ending around `at_ms`) to each width.
    pub(crate) fn add(&mut self, subject: &'static str, name: &Arc<str>, at_ms: i64, cell: &Cell) {
        self.update(subject, name, at_ms, |open| open.merge(cell));
    }

    /// Applies `f` to the bucket of `at_ms` in each width, opening it if need be.
    fn update(
        &mut self,
        subject: &'static str,
        name: &Arc<str>,
        at_ms: i64,
        f: impl Fn(&mut Cell),
    ) {
        let name = &self.name(subject, name);
        for bucket in Bucket::ALL {
            let key = (subject, Arc::clone(name), bucket, bucket.start(at_ms));
            let open = self.open.entry(key).or_insert_with(|| Open {
                cell: Cell::new(),
                loaded: false,
                dirty: false,
            });
            f(&mut open.cell);
            open.dirty = true;
        }
    }

    /// `name`, or [`OTHER`] once the subject has [`MAX_NAMES`] names.
    fn name(&mut self, subject: &'static str, name: &Arc<str>) -> Arc<str> {
        let names = &mut self.names[usize::from(subject == PIPELINE)];
        if names.contains(name) || names.len() < MAX_NAMES {
            names.insert(Arc::clone(name));
            Arc::clone(name)
        } else {
            Arc::from(OTHER)
        }
    }

    /// How many buckets are open.
    pub(crate) fn len(&self) -> usize {
        self.open.len()
    }

    /// Writes every changed bucket (merged with what the file had for it,
    /// the first time) inside the caller's transaction.
    pub(crate) fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let mut read = conn.prepare_cached(
            "SELECT runs, failures, total_ns, max_ns, histogram FROM rollups
             WHERE subject = ?1 AND name = ?2 AND bucket = ?3 AND start_ms = ?4",
        )?;
        let mut write = conn.prepare_cached(
            "INSERT OR REPLACE INTO rollups
             (subject, name, bucket, start_ms, runs, failures, total_ns, max_ns, p50_ns, p90_ns, p99_ns, histogram)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for ((subject, name, bucket, start), open) in &mut self.open {
            if !open.dirty {
                continue;
            }
            let key = params![subject, &**name, bucket.as_str(), start];
            if !open.loaded {
                let before = read
                    .query_row(key, |r| {
                        Ok(Cell {
                            runs: r.get(0)?,
                            failures: r.get(1)?,
                            total_ns: r.get(2)?,
                            max_ns: r.get(3)?,
                            histogram: Cell::decode(&r.get::<_, Vec<u8>>(4)?),
                        })
                    })
                    .optional()?;
                if let Some(before) = before {
                    open.cell.merge(&before);
                }
                open.loaded = true;
            }
            let c = &open.cell;
            write.execute(params![
                subject,
                &**name,
                bucket.as_str(),
                start,
                c.runs,
                c.failures,
                c.total_ns,
                c.max_ns,
                c.quantile(0.5),
                c.quantile(0.9),
                c.quantile(0.99),
                c.encode(),
            ])?;
        }
        Ok(())
    }

    /// Forgets buckets that ended before `now_ms`'s previous one (no run
    /// lands in them any more, so memory stays bounded by the subjects),
    /// and, after a commit, marks the rest written.
    pub(crate) fn retain_current(&mut self, now_ms: i64, written: bool) {
        self.open.retain(|(_, _, bucket, start), open| {
            if written {
                open.dirty = false;
            }
            *start >= bucket.start(now_ms) - bucket.millis()
        });
    }
}

/// Reads a rollup row's histogram, for merging rows at query time.
pub(crate) fn cell_from_row(
    runs: u64,
    failures: u64,
    total_ns: u64,
    max_ns: u64,
    blob: &[u8],
) -> Cell {
    Cell {
        runs,
        failures,
        total_ns,
        max_ns,
        histogram: Cell::decode(blob),
    }
}

#[cfg(test)]
mod tests {
    use super::pipeline_kind;

    #[test]
    fn a_pipeline_kind_is_its_id_without_a_trailing_number() {
        assert_eq!(pipeline_kind("proj_7"), "proj");
        assert_eq!(pipeline_kind("ingest-2024"), "ingest");
        assert_eq!(pipeline_kind("batch42"), "batch");
        assert_eq!(pipeline_kind("nightly"), "nightly");
        assert_eq!(pipeline_kind("42"), "42");
        assert_eq!(pipeline_kind("_7"), "_");
    }
}
