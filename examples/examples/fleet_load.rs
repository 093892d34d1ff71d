//! Fleet load: publisher processes → Redis → a collector process → WebSocket
//! clients, on loopback, bounded in time; and a collector's catch-up time on
//! a long retained stream.
//!
//! ```text
//! cargo build --release --example fleet_load --example collector
//! target/release/examples/fleet_load run --publishers 8 --rate 1000 --clients 100 --seconds 30
//! target/release/examples/fleet_load catchup --events 1000000
//! ```
//!
//! Each starts its own `redis-server` (Debian's package) on a free loopback
//! port in a temporary directory, and stops it. `run` spawns the
//! publishers (this program, `publisher` mode: pipelines of one agent run,
//! four events each, paced to `--rate` events/s) and the collector (the
//! `collector` example next to this binary), connects the clients in this
//! process, and reports: delivered, lost and duplicated per client; publish
//! → receive latency (the event's `ts`, stamped by the publisher's monitor,
//! to the client's clock); the collector's CPU and RSS; Redis's memory.

#![allow(clippy::expect_used)] // a measuring program: a panic is the right report

#[path = "support/proc_usage.rs"]
mod proc_usage;

use proc_usage::usage_of;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;
use tracing_subscriber::prelude::*;

/// Fleet load: publishers → Redis → collector → WebSocket clients.
#[derive(clap::Parser)]
enum What {
    /// The whole chain, for `--seconds`.
    Run {
        /// Publisher processes.
        #[arg(long, default_value_t = 8)]
        publishers: u32,
        /// Events per second, per publisher.
        #[arg(long, default_value_t = 1_000)]
        rate: u64,
        /// WebSocket clients of the collector.
        #[arg(long, default_value_t = 100)]
        clients: u32,
        /// How long the publishers publish.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Fill a stream with `--events`, then time a collector reading it all.
    Catchup {
        /// Events retained in the stream.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
    },
    /// One publisher (a child of `run`).
    Publisher {
        #[arg(long)]
        redis: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        rate: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = perfmon::fleet::DEFAULT_MAXLEN)]
        maxlen: u64,
    },
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(16379)
}

/// A `redis-server` in a temporary directory, killed when dropped.
struct Redis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("perfmon-fleet-load-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                eprintln!("cannot start redis-server ({e}): apt-get install redis-server");
                std::process::exit(1)
            });
        let redis = Redis { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    fn used_memory(&self) -> String {
        self.cli(&["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory_human:"))
            .unwrap_or("?")
            .trim()
            .to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// `publisher` mode: pipelines of one run (four events), paced to `rate` events/s.
fn publisher(redis: &str, source: &str, rate: u64, seconds: u64, maxlen: u64) {
    let monitor = perfmon::Monitor::builder().metrics(false).build();
    let publisher = match perfmon::fleet::Publisher::builder(redis)
        .source(source)
        .maxlen(maxlen)
        .start(&monitor)
    {
        Ok(p) => p,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1);
        }
    };
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    let pipelines_per_tick = (rate / 4).max(1) as f64 / 100.0;
    let start = Instant::now();
    let mut done = 0u64;
    tracing::dispatcher::with_default(&dispatch, || {
        for tick in 0..seconds * 100 {
            let due = ((tick + 1) as f64 * pipelines_per_tick) as u64;
            while done < due {
                let p = monitor.start_pipeline(format!("{source}-{done}"));
                drop(perfmon::agent("physics"));
                drop(p);
                done += 1;
            }
            let at = start + Duration::from_millis(10 * (tick + 1));
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
    });
    let _ = monitor.flush();
    let deadline = Instant::now() + Duration::from_secs(30);
    while publisher.stats().buffered > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = publisher.stats();
    println!(
        "{}",
        serde_json::json!({
            "pipelines": done,
            "events": done * 4 + 1,
            "published": s.published,
            "dropped": s.dropped,
            "buffered": s.buffered,
        })
    );
}

/// This program in `publisher` mode, its report on a pipe.
fn spawn_publisher(redis: &Redis, source: &str, rate: u64, seconds: u64, maxlen: u64) -> Child {
    Command::new(std::env::current_exe().expect("this program"))
        .args(["publisher", "--redis", &redis.url(), "--source", source])
        .args([
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ])
        .args(["--maxlen", &maxlen.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("a publisher")
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    events: u64,
    duplicates: u64,
    gaps: u64,
    shed: u64,
    last: u64,
    latencies: Vec<f64>,
}

async fn client(url: String, stop: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen::default();
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return seen;
    };
    loop {
        let msg = tokio::time::timeout(Duration::from_millis(500), ws.next()).await;
        let target = stop.load(Ordering::Acquire);
        let Ok(Some(Ok(Message::Text(text)))) = msg else {
            if target > 0 && seen.last >= target {
                return seen;
            }
            if matches!(msg, Ok(None) | Ok(Some(Err(_)))) {
                return seen;
            }
            continue;
        };
        // Scanned, not parsed: 100 clients parsing every event would
        // measure the clients. Each event has `"seq":N` and `"ts":T`;
        // `dropped` has `"count":N`.
        let now = now_ms();
        if text.starts_with(r#"{"type":"dropped""#) {
            seen.shed += number_after(&text, r#""count":"#).unwrap_or(0.0) as u64;
            continue;
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find(r#""seq":"#) {
            rest = &rest[at..];
            let seq = number_after(rest, r#""seq":"#).unwrap_or(0.0) as u64;
            let ts = number_after(rest, r#""ts":"#);
            rest = &rest[6..];
            if seen.last > 0 && seq <= seen.last {
                seen.duplicates += 1;
                continue;
            }
            if seen.last > 0 && seq > seen.last + 1 {
                seen.gaps += seq - seen.last - 1;
            }
            seen.last = seq;
            seen.events += 1;
            if seq.is_multiple_of(8)
                && let Some(ts) = ts
            {
                seen.latencies.push(now - ts);
            }
        }
        if target > 0 && seen.last >= target {
            return seen;
        }
    }
}

/// The number right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<f64> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().unwrap_or(Path::new(".")).join(name)
}

fn get_json(addr: &str, path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return serde_json::Value::Null;
    };
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or_default()
}

fn run(publishers: u32, rate: u64, clients: u32, seconds: u64) {
    let redis = Redis::start();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut collector = Command::new(sibling("collector"))
        .args(["--redis", &redis.url(), "--bind", &addr])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            eprintln!(
                "cannot start the collector ({e}): cargo build --release --example collector"
            );
            std::process::exit(1)
        });
    let mut out = std::io::BufReader::new(collector.stdout.take().expect("piped"));
    let mut line = String::new();
    while !line.starts_with("Dashboard:") {
        line.clear();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            eprintln!("the collector ended");
            std::process::exit(1);
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let stop = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..clients)
        .map(|_| runtime.spawn(client(format!("ws://{addr}/ws"), Arc::clone(&stop))))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let (cpu0, _) = usage_of(collector.id());
    let started = Instant::now();
    let children: Vec<Child> = (0..publishers)
        .map(|i| spawn_publisher(&redis, &format!("worker-{i}"), rate, seconds, 1_000_000))
        .collect();
    let mut rss_max = 0;
    let mut published = BTreeMap::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("a publisher's report");
        let (_, rss) = usage_of(collector.id());
        rss_max = rss_max.max(rss);
        published.insert(i, String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let publish_time = started.elapsed();
    // The publishers flushed before they exited: the stream's counter is
    // the last seq. Wait for the collector to have read it.
    let last: u64 = redis
        .cli(&["GET", "perfmon:events:seq"])
        .trim()
        .parse()
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&addr, "/api/performance/sources")["broker"]["read"]["last_seq"]
        .as_u64()
        .unwrap_or(0)
        < last
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(last, Ordering::Release);
    let seen: Vec<Seen> = runtime.block_on(async {
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.unwrap_or_default());
        }
        all
    });
    let (cpu1, rss_end) = usage_of(collector.id());
    rss_max = rss_max.max(rss_end);
    let collector_cpu = cpu1 - cpu0;
    let sources = get_json(&addr, "/api/performance/sources");
    let _ = collector.kill();
    let _ = collector.wait();

    let mut latencies: Vec<f64> = seen
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let delivered: u64 = seen.iter().map(|s| s.events).sum();
    let expected = last * u64::from(clients);
    println!(
        "fleet_load run: {publishers} publishers x {rate} events/s for {seconds} s, {clients} clients"
    );
    for (i, p) in &published {
        println!("  publisher {i}: {p}");
    }
    println!(
        "  stream: {last} events (fleet seq), malformed {}, trimmed unread {}",
        sources["broker"]["read"]["malformed"], sources["broker"]["read"]["trimmed_unread"]
    );
    println!(
        "  clients: delivered {delivered} of {expected} ({:.4}%), lost {} (shed by the server {}), duplicated {}, clients that reached the end {}/{clients}",
        100.0 * delivered as f64 / expected.max(1) as f64,
        seen.iter()
            .map(|s| s.gaps + last.saturating_sub(s.last))
            .sum::<u64>(),
        seen.iter().map(|s| s.shed).sum::<u64>(),
        seen.iter().map(|s| s.duplicates).sum::<u64>(),
        seen.iter().filter(|s| s.last >= last).count(),
    );
    println!(
        "  publish -> receive: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN),
        latencies.len()
    );
    println!(
        "  collector: CPU {:.1}% of a core over {:.1} s, RSS max {:.1} MiB; Redis used_memory {}",
        100.0 * collector_cpu.as_secs_f64() / publish_time.as_secs_f64(),
        publish_time.as_secs_f64(),
        rss_max as f64 / 1048576.0,
        redis.used_memory()
    );
}

fn catchup(events: u64) {
    let redis = Redis::start();
    // Fill: 4 publishers at 25,000 events/s each until `events` are in.
    let per = 4;
    let rate = 25_000;
    let seconds = events.div_ceil(per * rate).max(1);
    let fill = Instant::now();
    let children: Vec<Child> = (0..per)
        .map(|i| {
            spawn_publisher(
                &redis,
                &format!("filler-{i}"),
                rate,
                seconds,
                events + events / 10,
            )
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("a publisher's report");
        println!("  filler: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    let len = redis.cli(&["XLEN", "perfmon:events"]);
    println!(
        "fleet_load catchup: {} entries retained (filled in {:.1?}), Redis used_memory {}",
        len.trim(),
        fill.elapsed(),
        redis.used_memory()
    );
    let started = Instant::now();
    let collector = match perfmon::fleet::Collector::builder(redis.url())
        .bind("127.0.0.1:0")
        .serve()
    {
        Ok(c) => c,
        Err(err) => {
            eprintln!("{err}");
            std::process::exit(1);
        }
    };
    let took = started.elapsed();
    let read = collector.broker().read;
    println!(
        "  a new collector read {} entries ({} events) and served after {took:.2?}: {:.0} entries/s",
        read.entries,
        read.events,
        read.entries as f64 / took.as_secs_f64()
    );
    collector.shutdown();
}

fn main() {
    match clap::Parser::parse() {
        What::Run {
            publishers,
            rate,
            clients,
            seconds,
        } => run(publishers, rate, clients, seconds.min(600)),
        What::Catchup { events } => catchup(events),
        What::Publisher {
            redis,
            source,
            rate,
            seconds,
            maxlen,
        } => publisher(&redis, &source, rate, seconds.min(600), maxlen),
    }
}
