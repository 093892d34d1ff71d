//! Load for `perfmon top`: a sidecar streaming about `--rate` events/s over
//! `--agents` agent names, `perfmon top` on it in a detached tmux session
//! (200×50), and its CPU and resident memory sampled every 10 s.
//!
//! ```text
//! cargo build --release --example top_load && cargo build --release -p perfmon --features cli --bin perfmon
//! target/release/examples/top_load --agents 1000 --rate 10000 --seconds 600
//! ```

#![allow(clippy::expect_used)] // a measuring program: a panic is the right report

#[path = "support/proc_usage.rs"]
mod proc_usage;

use proc_usage::usage_of;
use std::process::Command;
use std::time::{Duration, Instant};

use tracing_subscriber::prelude::*;

/// Load for `perfmon top`: a busy sidecar, the view on it, its CPU and memory.
#[derive(clap::Parser)]
struct Args {
    /// Distinct agent names.
    #[arg(long, default_value_t = 1_000)]
    agents: usize,
    /// Events per second the sidecar streams (pipelines of ten runs: 22 events each).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// How long to run.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The `perfmon` binary (default: next to this program's directory).
    #[arg(long)]
    perfmon: Option<std::path::PathBuf>,
}

fn main() {
    let args: Args = clap::Parser::parse();
    let perfmon = args.perfmon.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("this program");
        exe.parent()
            .and_then(|p| p.parent())
            .expect("target/release")
            .join("perfmon")
    });
    let monitor = perfmon::Monitor::builder().metrics(false).build();
    let sidecar = perfmon::ws::Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .expect("a sidecar");
    let session = format!("perfmon-top-load-{}", std::process::id());
    let status = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "200", "-y", "50"])
        .arg(format!("{} top {}", perfmon.display(), sidecar.url()))
        .status()
        .expect("tmux (apt-get install tmux)");
    assert!(status.success(), "tmux new-session failed");
    std::thread::sleep(Duration::from_secs(1));
    let pid: u32 = String::from_utf8_lossy(
        &Command::new("tmux")
            .args(["display-message", "-p", "-t", &session, "#{pane_pid}"])
            .output()
            .expect("tmux")
            .stdout,
    )
    .trim()
    .parse()
    .expect("the pane's pid");

    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let names: Vec<String> = (0..args.agents).map(|i| format!("agent_{i:04}")).collect();
    let per_tick = args.rate as f64 / 22.0 / 100.0;
    let start = Instant::now();
    let (mut cpu_before, _) = usage_of(pid);
    let mut sampled = Instant::now();
    let mut done = 0u64;
    println!(
        "top_load: {} agents, ~{} events/s, {} s; perfmon top pid {pid}",
        args.agents, args.rate, args.seconds
    );
    tracing::dispatcher::with_default(&dispatch, || {
        for tick in 0..args.seconds * 100 {
            let due = ((tick + 1) as f64 * per_tick) as u64;
            while done < due {
                let p = monitor.start_pipeline(format!("p{}", done % 500));
                for k in 0..10 {
                    drop(perfmon::agent(
                        &names[(done as usize * 10 + k) % names.len()],
                    ));
                }
                drop(p);
                done += 1;
            }
            if sampled.elapsed() >= Duration::from_secs(10) {
                let (cpu, rss) = usage_of(pid);
                println!(
                    "  t={:>4.0}s  perfmon top: CPU {:>5.1}% of a core, RSS {:>6.1} MiB; events so far {}",
                    start.elapsed().as_secs_f64(),
                    100.0 * (cpu - cpu_before).as_secs_f64() / sampled.elapsed().as_secs_f64(),
                    rss as f64 / 1_048_576.0,
                    monitor.overview().events_published
                );
                cpu_before = cpu;
                sampled = Instant::now();
            }
            let at = start + Duration::from_millis(10 * (tick + 1));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
    });
    let rate = monitor.overview().events_published as f64 / start.elapsed().as_secs_f64();
    println!("  {:.0} events/s streamed", rate);
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    sidecar.shutdown();
}
