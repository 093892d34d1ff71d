//! History load: the host's cost per run with history on and off, the
//! sustained write rate, and query times over a large file. Writes only to
//! a temporary directory (or the `--db` given); bounded; stops by itself.
//!
//! ```text
//! cargo run --release --example history_load -- cost --rounds 5
//! cargo run --release --example history_load -- rate --rate 50000 --seconds 10
//! cargo run --release --example history_load -- fill --runs 10000000 --db /tmp/h.db
//! cargo run --release --example history_load -- query --db /tmp/h.db
//! ```
//!
//! `cost` times pipelines of ten agent runs on the host thread, alternating
//! rounds with the history off and on in one process (ratios, not absolute
//! times: the machine is shared). `rate` paces pipelines to a target number
//! of agent runs per second and reports what was stored, missed and lost.
//! `fill` writes a file of N runs spread over seven days (a mock clock, so
//! it takes minutes, not days); `query` times a 7-day trend, pipeline
//! search pages and a comparison on it, and the bytes per stored run.

#![allow(clippy::expect_used, clippy::unwrap_used)] // a measuring program: a panic is the right report

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use perfmon::{Bucket, History, MockClock, Monitor, PipelineQuery};
use tracing_subscriber::prelude::*;

/// History load: host cost, write rate, query times.
#[derive(clap::Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Host cost per tracked run, history off against on, same process.
    Cost {
        /// Rounds of each (alternating).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=50))]
        rounds: u64,
        /// Pipelines per round (ten runs each).
        #[arg(long, default_value_t = 20_000)]
        pipelines: u64,
    },
    /// Sustained rate: agent runs per second stored, with none missed.
    Rate {
        /// Agent runs per second to produce.
        #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..=2_000_000))]
        rate: u64,
        /// Seconds (1 to 120).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=120))]
        seconds: u64,
    },
    /// Writes a file of `runs` agent runs (ten per pipeline) over seven days.
    Fill {
        /// Agent runs to store.
        #[arg(long, default_value_t = 1_000_000)]
        runs: u64,
        /// The file (created; must not exist).
        #[arg(long)]
        db: PathBuf,
    },
    /// Times queries on a file written by `fill`.
    Query {
        /// The file.
        #[arg(long)]
        db: PathBuf,
        /// Repetitions of each query.
        #[arg(long, default_value_t = 20)]
        reps: usize,
    },
}

const AGENTS: [&str; 10] = [
    "planner",
    "geometry",
    "physics",
    "solver",
    "materials",
    "codegen",
    "compile",
    "reviewer",
    "retrieval",
    "summarizer",
];

/// One pipeline of ten runs; on a mock clock when given one.
fn pipeline(monitor: &Monitor, n: u64, clock: Option<&MockClock>) {
    let p = monitor.start_pipeline(format!("proj_{n}"));
    for (i, agent) in AGENTS.iter().enumerate() {
        let a = perfmon::agent(agent);
        if let Some(clock) = clock {
            let base = if *agent == "physics" { 400 } else { 20 };
            clock.advance(Duration::from_millis(base + (n * 7 + i as u64 * 13) % 40));
        }
        if (n + i as u64).is_multiple_of(23) {
            a.fail("simulated failure");
        }
    }
    if n.is_multiple_of(17) {
        p.fail("simulated pipeline failure");
    }
}

fn install(monitor: &Monitor) -> tracing::subscriber::DefaultGuard {
    tracing::subscriber::set_default(tracing_subscriber::registry().with(monitor.layer()))
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_db(name: &str) -> (PathBuf, TempDir) {
    let dir = std::env::temp_dir().join(format!(
        "perfmon-history-load-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    (dir.join("perfmon.db"), TempDir(dir))
}

/// This thread's time on a CPU (Linux: `/proc/thread-self/schedstat`).
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// The process's CPU time, every thread together (`/proc/self/stat`, in ticks of 10 ms).
fn process_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = text
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|t| t.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

fn cost(rounds: u64, pipelines: u64) {
    let mut off = Vec::new();
    let mut on = Vec::new();
    for round in 0..rounds {
        for history in [false, true] {
            let (path, _cleanup) = temp_db(&format!("cost{round}{history}"));
            let mut builder = Monitor::builder().metrics(true);
            if history {
                builder = builder.history(History::open(&path).unwrap());
            }
            let monitor = builder.build();
            let _guard = install(&monitor);
            let runs = (pipelines * AGENTS.len() as u64) as u32;
            let (start, all) = (Instant::now(), process_cpu());
            let mut host = Duration::ZERO;
            for batch in 0..pipelines / 100 {
                // Paced at 50,000 runs/s (a busy agent program), in
                // batches of 100 pipelines: the host thread's CPU time is
                // summed over the batches only, sleep excluded.
                let cpu = thread_cpu();
                for n in batch * 100..(batch + 1) * 100 {
                    pipeline(&monitor, n, None);
                }
                host += thread_cpu() - cpu;
                let due = start + Duration::from_millis(20) * (batch as u32 + 1);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            let host = host / runs;
            if history {
                monitor.flush().unwrap();
            }
            let every = (process_cpu() - all) / runs;
            if history {
                let stats = monitor.history().unwrap().stats();
                println!(
                    "round {round} history on : host thread {host:?} per run, all threads {every:?} (stored {}, missed events {}, lost {})",
                    stats.pipelines_written, stats.events_missed, stats.pipelines_lost
                );
                on.push(host);
            } else {
                println!(
                    "round {round} history off: host thread {host:?} per run, all threads {every:?}"
                );
                off.push(host);
            }
        }
    }
    off.sort();
    on.sort();
    let (a, b) = (off[off.len() / 2], on[on.len() / 2]);
    println!(
        "median per run: off {a:?}, on {b:?}: on/off = {:.3}",
        b.as_secs_f64() / a.as_secs_f64()
    );
}

fn rate(rate: u64, seconds: u64) {
    let (path, _cleanup) = temp_db("rate");
    let monitor = Monitor::builder()
        .metrics(false)
        .history(History::open(&path).unwrap())
        .build();
    let _guard = install(&monitor);
    let per_pipeline = Duration::from_secs_f64(AGENTS.len() as f64 / rate as f64);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut n = 0;
    while Instant::now() < end {
        pipeline(&monitor, n, None);
        n += 1;
        // Paced: the n-th pipeline starts no earlier than n × its share.
        let due = start + per_pipeline * n as u32;
        while Instant::now() < due {
            std::hint::spin_loop();
        }
    }
    let produced = start.elapsed();
    let flush = Instant::now();
    monitor.flush().unwrap();
    let stats = monitor.history().unwrap().stats();
    let runs = n * AGENTS.len() as u64;
    println!(
        "produced {runs} agent runs in {n} pipelines over {produced:.2?} ({:.0} runs/s); flushed in {:.2?}",
        runs as f64 / produced.as_secs_f64(),
        flush.elapsed()
    );
    println!(
        "stored {} pipelines ({} runs) in {} transactions; events missed {}, pipelines lost {}, write failures {}",
        stats.pipelines_written,
        stats.runs_written,
        stats.batches,
        stats.events_missed,
        stats.pipelines_lost,
        stats.write_failures
    );
    println!(
        "events dropped before the writer (queue full): {}",
        monitor.overview().events_dropped
    );
}

fn fill(runs: u64, db: &Path) {
    assert!(!db.exists(), "{} exists: give a new path", db.display());
    let clock = MockClock::new();
    // The mock clock starts now and runs seven days ahead: the file holds a
    // week of runs (timestamped in the future, which queries do not mind).
    let monitor = Monitor::builder()
        .metrics(false)
        .mock_clock(&clock)
        .subscriber_capacity(1 << 16)
        .history(
            History::builder(db)
                .max_bytes(64 << 30)
                .retention(Duration::from_secs(400 * 86_400))
                .open()
                .unwrap(),
        )
        .build();
    let _guard = install(&monitor);
    let pipelines = runs / AGENTS.len() as u64;
    // Each pipeline takes ~0.8 s of mock time; spread them over 7 days.
    let gap = Duration::from_secs(7 * 86_400).as_secs_f64() / pipelines as f64;
    let start = Instant::now();
    for n in 0..pipelines {
        pipeline(&monitor, n, Some(&clock));
        clock.advance(Duration::from_secs_f64((gap - 0.8).max(0.0)));
        // Waits for the writer every 75 pipelines (about a minute of mock
        // time): it never falls behind, and every minute gets its rollups,
        // as it would with a real clock.
        if n % 75 == 74 {
            monitor.flush().unwrap();
        }
        if n % 100_000 == 99_999 {
            let stats = monitor.history().unwrap().stats();
            println!(
                "{} pipelines in {:.1?}; stored {}, missed {}",
                n + 1,
                start.elapsed(),
                stats.pipelines_written,
                stats.events_missed
            );
        }
    }
    monitor.flush().unwrap();
    let stats = monitor.history().unwrap().stats();
    println!(
        "filled {} in {:.1?}: {} pipelines, {} runs stored, {} events missed",
        db.display(),
        start.elapsed(),
        stats.pipelines_written,
        stats.runs_written,
        stats.events_missed
    );
}

fn median(mut f: impl FnMut(), reps: usize) -> Duration {
    f(); // warm the page cache and the statement cache
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn query(db: &Path, reps: usize) {
    let history = History::open(db).unwrap();
    let newest = history.newest().unwrap().expect("a filled file");
    let week = (newest - Duration::from_secs(7 * 86_400), newest);
    let mut points = 0;
    let trend_hour = median(
        || {
            points = history
                .agent_trend("physics", Bucket::Hour, week.0, week.1)
                .unwrap()
                .len()
        },
        reps,
    );
    println!("7-day trend of physics by hour: {points} points, median {trend_hour:?}");
    let trend_minute = median(
        || {
            points = history
                .agent_trend("physics", Bucket::Minute, week.0, week.1)
                .unwrap()
                .len()
        },
        reps,
    );
    println!("7-day trend of physics by minute: {points} points, median {trend_minute:?}");
    let mut found = 0;
    let first = median(
        || {
            found = history
                .pipelines(&PipelineQuery::new().limit(20))
                .unwrap()
                .pipelines
                .len()
        },
        reps,
    );
    println!("pipeline search, first page of 20, no filter: {found}, median {first:?}");
    let failed = median(
        || {
            found = history
                .pipelines(
                    &PipelineQuery::new()
                        .outcome("failed")
                        .agent("physics")
                        .limit(20),
                )
                .unwrap()
                .pipelines
                .len()
        },
        reps,
    );
    println!("pipeline search, failed with physics, first page: {found}, median {failed:?}");
    let middle = newest - Duration::from_secs(3 * 86_400 + 3_600);
    let deep = median(
        || {
            found = history
                .pipelines(
                    &PipelineQuery::new()
                        .to(middle)
                        .bottleneck("physics")
                        .limit(20),
                )
                .unwrap()
                .pipelines
                .len()
        },
        reps,
    );
    println!("pipeline search, physics a bottleneck, 3.5 days back: {found}, median {deep:?}");
    let mut cursor = None;
    let mut pages = 0;
    let paging = median(
        || {
            let mut q = PipelineQuery::new().agent("codegen").limit(100);
            if let Some(c) = cursor.take() {
                q = q.after(c);
            }
            cursor = history.pipelines(&q).unwrap().next;
            pages += 1;
        },
        reps,
    );
    println!("paging with the cursor, 100 a page ({pages} pages): median {paging:?}");
    let day = Duration::from_secs(86_400);
    let cmp = median(
        || {
            history
                .compare_agent(
                    "physics",
                    (newest - 2 * day, newest - day),
                    (newest - day, newest),
                )
                .unwrap();
        },
        reps,
    );
    println!("compare physics, one day against the day before: median {cmp:?}");
    let bytes = std::fs::metadata(db).unwrap().len();
    let pipelines = history
        .pipelines(&PipelineQuery::new().limit(1))
        .unwrap()
        .pipelines[0]
        .key;
    let runs = pipelines * AGENTS.len() as u64;
    println!(
        "file {bytes} bytes for ~{runs} runs ({pipelines} pipelines): {:.0} bytes per stored run",
        bytes as f64 / runs as f64
    );
}

fn main() {
    match <Args as clap::Parser>::parse().what {
        What::Cost { rounds, pipelines } => cost(rounds, pipelines),
        What::Rate { rate: r, seconds } => rate(r, seconds),
        What::Fill { runs, db } => fill(runs, &db),
        What::Query { db, reps } => query(&db, reps),
    }
}
