//! [`History`]: finished pipelines, per-agent rollups and alert transitions
//! kept in an embedded SQLite file across restarts, and the queries over
//! them (feature `history`).
//!
//! Writing happens on the monitor's history exporter thread only (see
//! `writer.rs`); reading happens on the caller's thread through a
//! connection of its own (WAL mode: readers never wait for the writer).
//! Below `monitor` in the crate's dependency order: it knows records and
//! events, never the monitor.

mod query;
mod rollup;
mod schema;
mod stats;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use query::{
    AgentHistory, Comparison, MAX_PAGE, Period, PipelinePage, PipelineQuery, REGRESSION_MIN_RUNS,
    StoredAlert, StoredPipeline, TrendPoint,
};
pub use rollup::{Bucket, pipeline_kind};
pub use stats::HistoryStats;

use crate::exporter::Exporter;
use crate::record::PipelineReport;
use crate::recorder::Recorder;
use crate::sync::lock;
use stats::Counters;

/// Default of [`HistoryBuilder::retention`]: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);
/// Default of [`HistoryBuilder::max_bytes`]: 1 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// How long opening waits for another process's lock on the file.
const OPEN_BUSY_WAIT: Duration = Duration::from_secs(2);

/// Why a history file could not be opened or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// The file (or a new one in its directory) could not be opened: the
    /// directory is missing or read-only, or the path is a directory.
    #[error(
        "cannot open the history file {path}: {source}; check that its directory exists and is writable"
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's answer.
        #[source]
        source: rusqlite::Error,
    },
    /// The file exists and is not an SQLite database.
    #[error(
        "{path} is not a perfmon history file (not an SQLite database); move it away or choose another path"
    )]
    NotADatabase {
        /// The file.
        path: PathBuf,
    },
    /// The file is damaged.
    #[error(
        "the history file {path} is corrupt ({source}); move it away (perfmon starts a new one) or repair it with `sqlite3 .recover`"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's answer.
        #[source]
        source: rusqlite::Error,
    },
    /// Another process holds a lock on the file.
    #[error(
        "the history file {path} is locked by another process; stop it, or give each process its own file"
    )]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by a newer perfmon, with schema `found`.
    #[error(
        "the history file {path} has schema version {found}, newer than this perfmon's {supported}; upgrade perfmon or use another file"
    )]
    NewerSchema {
        /// The file.
        path: PathBuf,
        /// The file's `PRAGMA user_version`.
        found: u32,
        /// The newest version this perfmon knows.
        supported: u32,
    },
    /// The disk (or the process's file size limit) is full.
    #[error("the disk holding {path} is full; free space or lower HistoryBuilder::max_bytes")]
    Full {
        /// The file.
        path: PathBuf,
    },
    /// A query failed.
    #[error("history query failed: {0}")]
    Query(#[source] rusqlite::Error),
    /// A stored report could not be read back.
    #[error("a stored report could not be read back: {0}")]
    Report(#[source] serde_json::Error),
}

impl HistoryError {
    fn classify(path: &Path, source: rusqlite::Error) -> HistoryError {
        let path = path.to_owned();
        match source.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => HistoryError::NotADatabase { path },
            Some(ErrorCode::DatabaseCorrupt) => HistoryError::Corrupt { path, source },
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                HistoryError::Locked { path }
            }
            Some(ErrorCode::DiskFull) => HistoryError::Full { path },
            _ => HistoryError::Open { path, source },
        }
    }
}

/// Settings of a history file; from [`History::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .open()"]
pub struct HistoryBuilder {
    path: PathBuf,
    retention: Duration,
    max_bytes: u64,
}

impl HistoryBuilder {
    /// Deletes what is older than `retention` (default 30 days), every
    /// minute and at each flush.
    ///
    /// # Panics
    ///
    /// If `retention` is under a minute.
    #[track_caller]
    pub fn retention(mut self, retention: Duration) -> Self {
        assert!(
            retention >= Duration::from_secs(60),
            "retention must be at least a minute, got {retention:?}"
        );
        self.retention = retention;
        self
    }

    /// Keeps the file under `bytes` (default 1 GiB) by deleting the oldest
    /// pipelines, every minute and at each flush. Rollups stay.
    ///
    /// # Panics
    ///
    /// If `bytes` is under 64 KiB.
    #[track_caller]
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        assert!(
            bytes >= 64 * 1024,
            "max_bytes must be at least 64 KiB, got {bytes}"
        );
        self.max_bytes = bytes;
        self
    }

    /// Opens (or creates) the file, brings its schema up to date, and
    /// starts a new session in it.
    ///
    /// # Errors
    ///
    /// [`HistoryError`]: the directory is not writable, the file is not a
    /// database or is corrupt, is locked by another process, or is newer.
    pub fn open(self) -> Result<History, HistoryError> {
        let path = self.path.clone();
        let err = |e| HistoryError::classify(&path, e);
        let mut conn = Connection::open(&path).map_err(err)?;
        conn.busy_timeout(OPEN_BUSY_WAIT).map_err(err)?;
        // Reading the header finds a file that is not a database.
        let tables: u32 = conn
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
            .map_err(err)?;
        if tables == 0 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(err)?;
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(HistoryError::Open {
                path,
                source: rusqlite::Error::InvalidQuery,
            });
        }
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(err)?;
        match schema::migrate(&mut conn, schema::VERSION) {
            Ok(_) => {}
            Err(schema::SchemaError::Newer(found)) => {
                return Err(HistoryError::NewerSchema {
                    path,
                    found,
                    supported: schema::VERSION,
                });
            }
            Err(schema::SchemaError::Sql(e)) => return Err(err(e)),
        }
        // A quick check reads every page once: a damaged file is refused
        // here, not found out by the writer later.
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(err)?;
        if check != "ok" {
            return Err(HistoryError::Corrupt {
                path,
                source: rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                    Some(check),
                ),
            });
        }
        conn.execute(
            "INSERT INTO sessions (started_ms, pid, version) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                query::ms(SystemTime::now()),
                std::process::id(),
                env!("CARGO_PKG_VERSION")
            ],
        )
        .map_err(err)?;
        let session = conn.last_insert_rowid();
        let read = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        read.busy_timeout(OPEN_BUSY_WAIT).map_err(err)?;
        Ok(History {
            inner: Arc::new(Inner {
                path: self.path,
                session,
                limits: writer::Limits {
                    retention: self.retention,
                    max_bytes: self.max_bytes,
                },
                writer: Mutex::new(Some(conn)),
                read: Mutex::new(read),
                counters: Arc::new(Counters::default()),
            }),
        })
    }
}

/// Pipelines, rollups and alerts kept in an SQLite file across restarts.
///
/// ```no_run
/// # fn main() -> Result<(), perfmon::HistoryError> {
/// let monitor = perfmon::Monitor::builder()
///     .history(perfmon::History::open("perfmon.db")?)
///     .build();
/// // ... after a restart, what ran before is still there:
/// let history = monitor.history().expect("history is on");
/// let failed = history.pipelines(&perfmon::PipelineQuery::new().outcome("failed"))?;
/// # let _ = failed;
/// # Ok(()) }
/// ```
///
/// Cheap to clone. Only the monitor it is given to writes to it (on its
/// history thread); every clone can query.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    session: i64,
    limits: writer::Limits,
    /// Taken by the monitor that writes.
    writer: Mutex<Option<Connection>>,
    read: Mutex<Connection>,
    counters: Arc<Counters>,
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("path", &self.inner.path)
            .field("session", &self.inner.session)
            .field("stats", &self.stats())
            .finish()
    }
}

impl History {
    /// Opens (or creates) `path` with the default retention (30 days) and
    /// size cap (1 GiB). See [`History::builder`] for other settings.
    ///
    /// # Errors
    ///
    /// See [`HistoryBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<History, HistoryError> {
        History::builder(path).open()
    }

    /// Settings for `path`.
    pub fn builder(path: impl AsRef<Path>) -> HistoryBuilder {
        HistoryBuilder {
            path: path.as_ref().to_owned(),
            retention: DEFAULT_RETENTION,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// This process's session number in the file (one per `open`).
    pub fn session(&self) -> u64 {
        self.inner.session as u64
    }

    /// When this session started (the last restart).
    pub fn session_started(&self) -> Result<SystemTime, HistoryError> {
        self.read(|c| {
            c.query_row(
                "SELECT started_ms FROM sessions WHERE id = ?1",
                [self.inner.session],
                |r| Ok(query::system_time(r.get(0)?)),
            )
        })
    }

    /// What the writer did and failed to do.
    pub fn stats(&self) -> HistoryStats {
        self.inner.counters.snapshot()
    }

    /// Stored pipelines, newest first (by finish time), one page.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn pipelines(&self, query: &PipelineQuery) -> Result<PipelinePage, HistoryError> {
        self.read(|c| query::pipelines(c, query))
    }

    /// The newest stored pipeline with this id.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn pipeline(&self, id: &str) -> Result<Option<StoredPipeline>, HistoryError> {
        let page = self.pipelines(&PipelineQuery::new().pipeline(id).limit(1))?;
        Ok(page.pipelines.into_iter().next())
    }

    /// The stored pipeline with this key ([`StoredPipeline::key`]).
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn pipeline_by_key(&self, key: u64) -> Result<Option<StoredPipeline>, HistoryError> {
        self.read(|c| query::pipeline_by_key(c, key))
    }

    /// An agent's (or tool's) runs per bucket between `from` and `to`:
    /// runs, failure rate, mean, p50/p90/p99, max. Buckets without runs
    /// are left out.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn agent_trend(
        &self,
        agent: &str,
        bucket: Bucket,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<TrendPoint>, HistoryError> {
        self.read(|c| query::trend(c, rollup::AGENT, agent, bucket, from, to))
    }

    /// The same for whole pipelines of one kind ([`pipeline_kind`]: the
    /// id without its trailing number, `proj_7` → `proj`).
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn pipeline_trend(
        &self,
        kind: &str,
        bucket: Bucket,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<Vec<TrendPoint>, HistoryError> {
        self.read(|c| query::trend(c, rollup::PIPELINE, kind, bucket, from, to))
    }

    /// An agent in two periods: p50, p99, failure rate and bottleneck
    /// share, with the runs behind each, and whether it regressed. Each
    /// period is merged from hour buckets for its whole hours and minute
    /// buckets at its edges: exact to the minute (a minute counts in the
    /// period its start falls in).
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn compare_agent(
        &self,
        agent: &str,
        before: (SystemTime, SystemTime),
        after: (SystemTime, SystemTime),
    ) -> Result<Comparison, HistoryError> {
        self.read(|c| query::compare(c, rollup::AGENT, agent, before, after))
    }

    /// Whole pipelines of one kind ([`pipeline_kind`]) in two periods (as
    /// [`History::compare_agent`]).
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn compare_pipeline(
        &self,
        kind: &str,
        before: (SystemTime, SystemTime),
        after: (SystemTime, SystemTime),
    ) -> Result<Comparison, HistoryError> {
        self.read(|c| query::compare(c, rollup::PIPELINE, kind, before, after))
    }

    /// The newest `limit` alert transitions stored (fired and resolved), newest first.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn alerts(&self, limit: usize) -> Result<Vec<StoredAlert>, HistoryError> {
        self.read(|c| query::alerts(c, limit))
    }

    /// When the newest stored pipeline finished; `None` when none is stored.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn newest(&self) -> Result<Option<SystemTime>, HistoryError> {
        self.read(query::newest)
    }

    /// Every agent stored, with its totals since its first stored run.
    ///
    /// # Errors
    ///
    /// [`HistoryError::Query`] if SQLite fails to answer.
    pub fn agents(&self) -> Result<Vec<AgentHistory>, HistoryError> {
        self.read(query::agents)
    }

    /// Up to `n` stored pipelines, newest first, skipping this session's
    /// runs listed in `skip` (those the monitor still has in memory). A
    /// failure is counted in `read_failures` and gives none.
    pub(crate) fn recent_except(&self, n: usize, skip: &[u64]) -> Vec<PipelineReport> {
        let query = PipelineQuery::new().limit((n + skip.len()).min(MAX_PAGE));
        match self.pipelines(&query) {
            Ok(page) => page
                .pipelines
                .into_iter()
                .filter(|p| !(p.session == self.session() && skip.contains(&p.report.run)))
                .take(n)
                .map(|p| p.report)
                .collect(),
            Err(e) => {
                Counters::add(&self.inner.counters.read_failures, 1);
                self.inner.counters.fail("read failed", &e);
                Vec::new()
            }
        }
    }

    /// The newest stored report with this id; a failure is counted in
    /// `read_failures` and gives none.
    pub(crate) fn stored_pipeline(&self, id: &str) -> Option<PipelineReport> {
        match self.pipeline(id) {
            Ok(found) => found.map(|p| p.report),
            Err(e) => {
                Counters::add(&self.inner.counters.read_failures, 1);
                self.inner.counters.fail("read failed", &e);
                None
            }
        }
    }

    /// The writer, for the monitor that takes it; `None` if another did.
    pub(crate) fn take_writer(&self, recorder: &Arc<Recorder>) -> Option<Box<dyn Exporter>> {
        let conn = lock(&self.inner.writer).take()?;
        Some(Box::new(writer::Writer::new(
            Arc::clone(recorder),
            conn,
            self.inner.session,
            Arc::clone(&self.inner.counters),
            self.inner.limits,
        )))
    }

    /// Counts a writer that could not start.
    pub(crate) fn count_failure(&self, what: &str) {
        Counters::add(&self.inner.counters.write_failures, 1);
        self.inner.counters.fail(what, &"nothing will be written");
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, HistoryError> {
        let conn = lock(&self.inner.read);
        f(&conn).map_err(|e| match e {
            rusqlite::Error::FromSqlConversionFailure(_, _, inner) => {
                match inner.downcast::<serde_json::Error>() {
                    Ok(json) => HistoryError::Report(*json),
                    Err(other) => HistoryError::Query(rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        other,
                    )),
                }
            }
            other => HistoryError::Query(other),
        })
    }
}
