//! A soak and chaos run of the sidecar, on loopback, bounded in time.
//!
//! ```text
//! cargo run --release --example ws_soak -- --minutes 10 --clients 200 --rate 2000 --restarts 2
//! ```
//!
//! A host thread publishes about `--rate` events/s (agent runs in
//! pipelines). `--clients` WebSocket clients join, read, stall, replay,
//! leave and resume at random; the sidecar is shut down and started again on
//! the same port `--restarts` times. Every client checks what it receives:
//! no duplicates, and no gap that the server did not announce (a `dropped`
//! notice, or `recovered: false` on resume). Every 10 s the process's RSS and
//! open file descriptors are sampled; at the end the run prints them and
//! their growth over the last half of the run.
//!
//! Exits with 1 if a client saw a duplicate or an unannounced gap, or if
//! RSS or the fd count grew more than 2% over the last half of the run
//! (clients and server share the process, so the figures include both).
//! The restarts happen in the first half; the second half is the steady
//! state. `SOAK_DEBUG=1` prints the first duplicates a client sees.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use perfmon::Monitor;
use perfmon::ws::Sidecar;
use tokio_tungstenite::tungstenite::Message;
use tracing_subscriber::prelude::*;

/// A soak and chaos run of the sidecar (loopback, bounded).
#[derive(clap::Parser)]
struct Args {
    /// How long to run, in minutes (0.1 to 30).
    #[arg(long, default_value_t = 10.0, value_parser = minutes)]
    minutes: f64,
    /// WebSocket clients (1 to 1000).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..=1_000))]
    clients: u16,
    /// Events per second the host publishes (1 to 20000).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    rate: u64,
    /// Sidecar restarts in the first half of the run (at most 10).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    restarts: u32,
}

fn minutes(text: &str) -> Result<f64, String> {
    let m: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.1..=30.0).contains(&m) {
        Ok(m)
    } else {
        Err("bounded: 0.1 to 30 minutes".into())
    }
}

/// What all clients saw, summed.
#[derive(Default)]
struct Totals {
    events: AtomicU64,
    connects: AtomicU64,
    duplicates: AtomicU64,
    unannounced_gaps: AtomicU64,
    told_not_recovered: AtomicU64,
    dropped_notices: AtomicU64,
    replays: AtomicU64,
    replay_busy: AtomicU64,
    closed_by_server: AtomicU64,
}

/// Every `"seq":N` in a frame, in order (events, alone or in a batch).
fn seqs(text: &str) -> impl Iterator<Item = u64> + '_ {
    text.match_indices("\"seq\":").filter_map(move |(i, m)| {
        let rest = &text[i + m.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

/// One client's view of the stream: the highest seq it has accounted for.
struct View {
    last: Option<u64>,
    /// Seqs up to here may be missing: a `dropped` notice or a resume that
    /// could not recover covered them.
    excused_until: u64,
    /// After a `replay`: items at or below this are the replay, not duplicates.
    replay_hi: u64,
}

impl View {
    fn event(&mut self, seq: u64, totals: &Totals) {
        totals.events.fetch_add(1, Ordering::Relaxed);
        match self.last {
            None => self.last = Some(seq),
            Some(last) if seq <= last => {
                if seq > self.replay_hi {
                    if std::env::var_os("SOAK_DEBUG").is_some()
                        && totals.duplicates.load(Ordering::Relaxed) < 5
                    {
                        eprintln!(
                            "dup seq {seq} last {last} replay_hi {} excused {}",
                            self.replay_hi, self.excused_until
                        );
                    }
                    totals.duplicates.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(last) => {
                if seq > last + 1 && seq - 1 > self.excused_until {
                    totals.unannounced_gaps.fetch_add(1, Ordering::Relaxed);
                }
                self.last = Some(seq);
            }
        }
    }

    fn control(&mut self, v: &serde_json::Value, totals: &Totals) {
        match v["type"].as_str() {
            Some("dropped") => {
                totals.dropped_notices.fetch_add(1, Ordering::Relaxed);
                let to = v["last_seq"].as_u64().unwrap_or(0);
                self.excused_until = self.excused_until.max(to);
            }
            Some("resumed") => {
                // A replay re-sends these seqs: up to what the server had when
                // it answered, which can be past what this client has seen.
                let since = v["since"].as_u64().unwrap_or(0);
                let oldest = v["oldest_seq"].as_u64().unwrap_or(0);
                let replayed = v["replayed"].as_u64().unwrap_or(0);
                if replayed > 0 {
                    let start = oldest.max(since + 1);
                    self.replay_hi = self.replay_hi.max(start + replayed - 1);
                }
                if v["recovered"] == false {
                    totals.told_not_recovered.fetch_add(1, Ordering::Relaxed);
                    let oldest = v["oldest_seq"].as_u64().unwrap_or(0);
                    self.excused_until = self.excused_until.max(oldest.saturating_sub(1));
                }
            }
            Some("error") if v["code"] == "replay_busy" => {
                totals.replay_busy.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// One client: connect (resuming), then act at random until `stop`.
async fn client(addr: std::net::SocketAddr, totals: Arc<Totals>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut view = View {
        last: None,
        excused_until: 0,
        replay_hi: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let url = match view.last {
            Some(last) => format!("ws://{addr}/ws?since={last}"),
            None => format!("ws://{addr}/ws"),
        };
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
            // The sidecar is restarting: try again shortly.
            tokio::time::sleep(Duration::from_millis(100 + rng.u64(0..400))).await;
            continue;
        };
        totals.connects.fetch_add(1, Ordering::Relaxed);
        // One connection: a few actions, then leave (or be closed).
        let actions = rng.u32(1..6);
        let mut open = true;
        for _ in 0..actions {
            if !open || stop.load(Ordering::Relaxed) {
                break;
            }
            match rng.u32(0..10) {
                // Stall: stop reading for a while (may be shed, or closed with 4000).
                0 => tokio::time::sleep(Duration::from_millis(rng.u64(500..15_000))).await,
                // Replay the last few hundred events.
                1 => {
                    if let Some(last) = view.last {
                        let since = last.saturating_sub(rng.u64(1..500));
                        let msg = format!(r#"{{"type":"replay","since":{since}}}"#);
                        if ws.send(Message::Text(msg.into())).await.is_ok() {
                            totals.replays.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Read for a while.
                _ => {
                    let until = Instant::now() + Duration::from_millis(rng.u64(1_000..20_000));
                    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                        match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                            Err(_) => {}
                            Ok(Some(Ok(Message::Text(text)))) => {
                                // Events (alone or batched) carry `"seq":`; the
                                // server's own messages do not.
                                if text.contains(r#""seq":"#) {
                                    for seq in seqs(&text) {
                                        view.event(seq, &totals);
                                    }
                                } else if let Ok(v) =
                                    serde_json::from_str::<serde_json::Value>(&text)
                                {
                                    view.control(&v, &totals);
                                }
                            }
                            Ok(Some(Ok(Message::Close(_))) | None | Some(Err(_))) => {
                                totals.closed_by_server.fetch_add(1, Ordering::Relaxed);
                                open = false;
                                break;
                            }
                            Ok(Some(Ok(_))) => {}
                        }
                    }
                }
            }
        }
        if open {
            let _ = ws.close(None).await;
        }
        // Away for a moment, then resume from `last`.
        tokio::time::sleep(Duration::from_millis(rng.u64(200..3_000))).await;
    }
}

/// (RSS bytes, open fds) of this process (Linux).
fn sample() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, fds)
}

fn growth(series: &[(u64, u64)], pick: impl Fn(&(u64, u64)) -> u64) -> f64 {
    let half = &series[series.len() / 2..];
    let base = half.first().map(&pick).unwrap_or(0) as f64;
    let max = half.iter().map(&pick).max().unwrap_or(0) as f64;
    if base == 0.0 {
        0.0
    } else {
        (max / base - 1.0) * 100.0
    }
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let monitor = Monitor::builder().metrics(false).build();
    tracing_subscriber::registry().with(monitor.layer()).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("no runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));

    // The host: about `rate` events/s (a pipeline of 8 agents = 18 events).
    let host = {
        let (monitor, stop, rate) = (monitor.clone(), Arc::clone(&stop), args.rate);
        std::thread::spawn(move || {
            let per_tick = 18u64;
            let tick = Duration::from_secs_f64(per_tick as f64 / rate as f64);
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let pipeline = monitor.start_pipeline(format!("soak_{}", n % 1000));
                for _ in 0..8 {
                    perfmon::agent("worker").succeed();
                }
                pipeline.finish();
                std::thread::sleep((start + tick * n).saturating_duration_since(Instant::now()));
            }
        })
    };

    let summary = runtime.block_on(async {
        let mut sidecar = match Sidecar::builder().bind("127.0.0.1:0").serve(&monitor) {
            Ok(s) => s,
            Err(e) => return Err(format!("sidecar: {e}")),
        };
        let addr = sidecar.local_addr();
        println!(
            "ws_soak: {} clients, ~{} events/s, {:.1} min, {} restarts, sidecar on {addr}",
            args.clients, args.rate, args.minutes, args.restarts
        );
        let totals = Arc::new(Totals::default());
        let clients: Vec<_> = (0..args.clients)
            .map(|i| {
                tokio::spawn(client(
                    addr,
                    Arc::clone(&totals),
                    Arc::clone(&stop),
                    i as u64 + 1,
                ))
            })
            .collect();
        let start = Instant::now();
        let mut series = Vec::new();
        let mut restarts_done = 0;
        while start.elapsed() < duration {
            tokio::time::sleep(
                Duration::from_secs(10).min(duration.saturating_sub(start.elapsed())),
            )
            .await;
            let at = start.elapsed();
            // Restarts in the first half of the run, evenly spaced; the
            // second half is the steady state the growth is measured on.
            let due = (0..args.restarts)
                .filter(|k| {
                    at >= duration.mul_f64(f64::from(k + 1) / (2.0 * f64::from(args.restarts + 1)))
                })
                .count() as u32;
            if restarts_done < due {
                sidecar.shutdown();
                loop {
                    match Sidecar::builder().bind(addr.to_string()).serve(&monitor) {
                        Ok(s) => break sidecar = s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                restarts_done += 1;
                println!(
                    "{:>6.0} s  sidecar restarted ({restarts_done})",
                    at.as_secs_f64()
                );
            }
            let (rss, fds) = sample();
            series.push((rss, fds));
            println!(
                "{:>6.0} s  RSS {:>6.1} MiB  fds {:>5}  events to clients {:>10}  connects {:>6}",
                at.as_secs_f64(),
                rss as f64 / 1048576.0,
                fds,
                totals.events.load(Ordering::Relaxed),
                totals.connects.load(Ordering::Relaxed)
            );
        }
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = tokio::time::timeout(Duration::from_secs(25), c).await;
        }
        sidecar.shutdown();
        Ok((totals, series, restarts_done))
    });
    let _ = host.join();
    let (totals, series, restarts) = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (rss_growth, fd_growth) = (growth(&series, |s| s.0), growth(&series, |s| s.1));
    println!(
        "\n{} events published; clients received {} events over {} connections; {} restarts\n\
         duplicates {}, unannounced gaps {}; told `recovered: false` {} times, `dropped` {} times; \
         {} replays ({} refused as busy); {} connections closed by the server\n\
         over the last half: RSS growth {rss_growth:.1}%, fd growth {fd_growth:.1}%",
        monitor.overview().events_published,
        g(&totals.events),
        g(&totals.connects),
        restarts,
        g(&totals.duplicates),
        g(&totals.unannounced_gaps),
        g(&totals.told_not_recovered),
        g(&totals.dropped_notices),
        g(&totals.replays),
        g(&totals.replay_busy),
        g(&totals.closed_by_server),
    );
    if g(&totals.duplicates) > 0
        || g(&totals.unannounced_gaps) > 0
        || rss_growth > 2.0
        || fd_growth > 2.0
    {
        println!("FAILED");
        return ExitCode::from(1);
    }
    println!("passed");
    ExitCode::SUCCESS
}
