//! The history file's schema and its forward migrations, numbered by
//! `PRAGMA user_version`.
//!
//! Migrations are append-only: a released step is never edited, so a file
//! written by any earlier perfmon opens by running the steps after its
//! version, in one transaction. A file from a newer perfmon is refused.

use rusqlite::{Connection, TransactionBehavior};

/// Each step takes the file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: pipelines with their reports, the agents that ran in each, and
    // per-minute/hour/day rollups.
    "
    CREATE TABLE sessions (
        id          INTEGER PRIMARY KEY,
        started_ms  INTEGER NOT NULL,
        pid         INTEGER NOT NULL,
        version     TEXT NOT NULL
    );
    CREATE TABLE pipelines (
        id           INTEGER PRIMARY KEY,
        session      INTEGER NOT NULL REFERENCES sessions(id),
        run          INTEGER NOT NULL,
        pipeline     TEXT NOT NULL,
        started_ms   INTEGER NOT NULL,
        finished_ms  INTEGER NOT NULL,
        duration_ns  INTEGER NOT NULL,
        outcome      TEXT NOT NULL,
        error        TEXT,
        runs         INTEGER NOT NULL,
        bottlenecks  TEXT NOT NULL,
        report       TEXT NOT NULL
    );
    CREATE UNIQUE INDEX pipelines_by_run ON pipelines(session, run);
    CREATE INDEX pipelines_by_finish ON pipelines(finished_ms);
    CREATE INDEX pipelines_by_name ON pipelines(pipeline, id);
    CREATE TABLE pipeline_agents (
        pipeline     INTEGER NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
        agent        TEXT NOT NULL,
        finished_ms  INTEGER NOT NULL,
        runs         INTEGER NOT NULL,
        bottleneck   INTEGER NOT NULL,
        share        REAL NOT NULL,
        PRIMARY KEY (agent, pipeline)
    ) WITHOUT ROWID;
    CREATE INDEX pipeline_agents_by_pipeline ON pipeline_agents(pipeline);
    CREATE TABLE rollups (
        subject     TEXT NOT NULL,
        name        TEXT NOT NULL,
        bucket      TEXT NOT NULL,
        start_ms    INTEGER NOT NULL,
        runs        INTEGER NOT NULL,
        failures    INTEGER NOT NULL,
        total_ns    INTEGER NOT NULL,
        max_ns      INTEGER NOT NULL,
        p50_ns      INTEGER NOT NULL,
        p90_ns      INTEGER NOT NULL,
        p99_ns      INTEGER NOT NULL,
        histogram   BLOB NOT NULL,
        PRIMARY KEY (subject, name, bucket, start_ms)
    ) WITHOUT ROWID;
    ",
    // 2: token usage and cost per pipeline, alert transitions, the index
    // that pages an agent's pipelines by time, and the one the retention
    // deletes old rollups by.
    "
    ALTER TABLE pipelines ADD COLUMN input_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pipelines ADD COLUMN output_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE pipelines ADD COLUMN cost_usd REAL NOT NULL DEFAULT 0;
    CREATE TABLE alerts (
        id         INTEGER PRIMARY KEY,
        session    INTEGER NOT NULL,
        at_ms      INTEGER NOT NULL,
        rule       TEXT NOT NULL,
        state      TEXT NOT NULL,
        value      REAL,
        message    TEXT NOT NULL
    );
    CREATE INDEX alerts_by_time ON alerts(at_ms);
    CREATE INDEX pipeline_agents_by_time ON pipeline_agents(agent, finished_ms, pipeline, bottleneck);
    CREATE INDEX rollups_by_time ON rollups(start_ms);
    ",
];

/// The version this perfmon writes.
pub(crate) const VERSION: u32 = MIGRATIONS.len() as u32;

/// Why a file's schema cannot be used.
#[derive(Debug)]
pub(crate) enum SchemaError {
    /// The file says it was written by a newer perfmon.
    Newer(u32),
    /// SQLite refused a step.
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// Brings `conn`'s file up to [`VERSION`] (or up to `target`, for tests of
/// old files). A new file is created in incremental auto-vacuum mode, so
/// the size cap can give space back.
pub(crate) fn migrate(conn: &mut Connection, target: u32) -> Result<u32, SchemaError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > VERSION {
        return Err(SchemaError::Newer(version));
    }
    for (i, step) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target as usize)
        .skip(version as usize)
    {
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as u32 + 1)?;
    }
    tx.commit()?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_runs_in_order_and_a_newer_file_is_refused() {
        let mut conn = Connection::open_in_memory().unwrap();
        assert_eq!(migrate(&mut conn, 1).unwrap(), 0);
        assert_eq!(migrate(&mut conn, VERSION).unwrap(), 1);
        let version: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, VERSION);
        conn.pragma_update(None, "user_version", VERSION + 1)
            .unwrap();
        assert!(matches!(
            migrate(&mut conn, VERSION),
            Err(SchemaError::Newer(v)) if v == VERSION + 1
        ));
    }
}
