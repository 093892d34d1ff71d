//! Fan-out load generator for the WebSocket sidecar, with the naive
//! tokio-tungstenite broadcast (one frame per event, one unbounded channel
//! per peer) as the baseline, measured in the same run. Loopback only;
//! bounded in clients and seconds; stops by itself.
//!
//! ```text
//! ulimit -n 65536
//! cargo run --release --example ws_load -- --clients 1000 --rate 1000 --seconds 5
//! ```
//!
//! The clients run in a child process (this same program, `--role clients`),
//! so the server's memory and CPU are measured apart from theirs. For each
//! server: events delivered per second (all clients together), publish →
//! receive latency p50/p99 over every delivered event (wall clock, shared by
//! both processes), events not delivered, and the server process's resident
//! memory per idle connection. See BENCHMARKS.md.

#![allow(clippy::expect_used)] // a measuring program: a panic is the right report

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use perfmon_ws::{Backend, Config, Hub, Priority, Reply, Server, ServerInfo, item};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Fan-out load: perfmon's sidecar against a naive broadcast.
#[derive(clap::Parser)]
struct Args {
    /// WebSocket clients (1 to 10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    clients: u16,
    /// Events per second.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    rate: u64,
    /// Seconds of load (1 to 60).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=60))]
    seconds: u64,
    /// Bytes of payload per event.
    #[arg(long, default_value_t = 200)]
    payload: usize,
    /// Run only one server.
    #[arg(long, value_parser = ["perfmon", "naive"])]
    only: Option<String>,
    /// Set in the child process that plays the clients: the server's URL.
    #[arg(long, hide = true)]
    clients_of: Option<String>,
}

struct NoBackend;

impl Backend for NoBackend {
    fn snapshot(&self, _: Option<&str>) -> Option<serde_json::Value> {
        None
    }
    fn get(&self, _: &str, _: &str, _: &ServerInfo<'_>) -> Option<Reply> {
        None
    }
}

/// Totals across all clients.
#[derive(Default)]
struct Tally {
    connected: AtomicU64,
    delivered: AtomicU64,
    gaps: AtomicU64,
    latencies: std::sync::Mutex<Vec<u32>>, // microseconds, sampled
}

/// Reads `"key":<digits>` occurrences out of a frame without a JSON parser
/// (the clients must stay cheaper than the server under test).
fn numbers<'a>(text: &'a str, key: &'a str) -> impl Iterator<Item = u64> + 'a {
    text.match_indices(key).filter_map(move |(i, _)| {
        let rest = &text[i + key.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

/// Microseconds since the Unix epoch: the clock both processes share.
fn wall_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn client(url: String, tally: Arc<Tally>, stop: Arc<AtomicU64>) {
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        eprintln!("client could not connect to {url}");
        return;
    };
    tally.connected.fetch_add(1, Ordering::Relaxed);
    let mut last_seq = 0u64;
    let mut samples = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 {
        let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_millis(200), ws.next()).await
        else {
            continue;
        };
        let Message::Text(text) = msg else { continue };
        let now = wall_micros();
        for (seq, t) in numbers(&text, "\"seq\":").zip(numbers(&text, "\"t\":")) {
            if last_seq != 0 && seq > last_seq + 1 {
                tally.gaps.fetch_add(seq - last_seq - 1, Ordering::Relaxed);
            }
            last_seq = last_seq.max(seq);
            tally.delivered.fetch_add(1, Ordering::Relaxed);
            if samples.len() < 20_000 {
                samples.push(now.saturating_sub(t) as u32);
            }
        }
    }
    tally
        .latencies
        .lock()
        .expect("not poisoned")
        .extend(samples);
    let _ = ws.close(None).await;
}

/// The child process: connect every client, say `ready`, read until the
/// parent says `stop` (or closes stdin), then print one `result` line:
/// delivered, gaps, p50 and p99 in microseconds.
async fn play_clients(url: String, clients: usize) {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client(url.clone(), Arc::clone(&tally), Arc::clone(&stop))))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.connected.load(Ordering::Relaxed) < clients as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready {}", tally.connected.load(Ordering::Relaxed));
    // Wait for the parent's word; a closed stdin means the same.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    stop.store(1, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut lat = std::mem::take(&mut *tally.latencies.lock().expect("not poisoned"));
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "result {} {} {} {}",
        tally.delivered.load(Ordering::Relaxed),
        tally.gaps.load(Ordering::Relaxed),
        q(0.50),
        q(0.99)
    );
}

/// The baseline: accept, then per peer an unbounded channel and a task
/// sending one frame per event (the tokio-tungstenite example's pattern).
async fn naive_server(
    listener: tokio::net::TcpListener,
    peers: Arc<std::sync::Mutex<Vec<mpsc::UnboundedSender<Message>>>>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let peers = Arc::clone(&peers);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel();
            peers.lock().expect("not poisoned").push(tx);
            tokio::spawn(async move { while stream.next().await.is_some() {} });
            while let Some(msg) = rx.recv().await {
                if sink.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

struct Outcome {
    name: &'static str,
    connected: usize,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    lost: u64,
    kib_per_idle_conn: f64,
    written_p50_p99: Option<(f64, f64)>,
}

async fn run(args: &Args, naive: bool) -> Outcome {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = std_listener.local_addr().expect("address");
    let hub = Arc::new(Hub::new(10_000));
    let peers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut server = None;
    if naive {
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
        tokio::spawn(naive_server(listener, Arc::clone(&peers)));
    } else {
        let config = Config::default().max_connections(20_000);
        server = Some(
            Server::start(std_listener, config, Arc::new(NoBackend), Arc::clone(&hub))
                .expect("server"),
        );
    }

    let before = rss_bytes();
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .args(["--clients-of", &format!("ws://{addr}/ws")])
        .args(["--clients", &args.clients.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the clients' process");
    let mut to_child = child.stdin.take().expect("piped");
    let mut from_child = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let ready = from_child
        .next_line()
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let connected: usize = ready
        .strip_prefix("ready ")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // Let every connection settle, then measure the server's idle memory.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_bytes().saturating_sub(before);

    let pad = "x".repeat(args.payload);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let total = args.rate * args.seconds;
    let started = Instant::now();
    for seq in 1..=total {
        let t = wall_micros();
        let json = format!(
            r#"{{"type":"agent_progress","seq":{seq},"t":{t},"pipeline":"p","data":{{"pad":"{pad}"}}}}"#
        );
        if naive {
            let msg = Message::text(json);
            for peer in peers.lock().expect("not poisoned").iter() {
                let _ = peer.send(msg.clone());
            }
        } else {
            hub.publish(item(
                seq,
                Some("p".into()),
                "agent_progress".into(),
                None,
                Priority::High,
                json,
            ));
        }
        // Pace by the clock, in steps of 1 ms, so the rate holds on a busy machine.
        let due = started + interval.mul_f64(seq as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now())
            && wait > Duration::from_millis(1)
        {
            tokio::time::sleep(wait).await;
        }
    }
    // Give deliveries a moment to drain, then stop.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let _ = to_child.write_all(b"stop\n").await;
    let result = from_child
        .next_line()
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let _ = child.wait().await;
    // The server's own view: publish → written to the socket (perfmon-ws only).
    let written = (!naive).then(|| hub.stats_snapshot());
    if let Some(server) = server {
        server.shutdown(Duration::from_secs(2)).await;
    }
    let fields: Vec<u64> = result
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let [delivered, _gaps, p50_us, p99_us] = fields[..] else {
        panic!("the clients' process said {result:?}");
    };
    let expected = total * args.clients as u64;
    Outcome {
        name: if naive { "naive" } else { "perfmon-ws" },
        connected,
        delivered_per_s: delivered as f64 / elapsed,
        p50_ms: p50_us as f64 / 1e3,
        p99_ms: p99_us as f64 / 1e3,
        lost: expected.saturating_sub(delivered),
        kib_per_idle_conn: idle as f64 / 1024.0 / args.clients as f64,
        written_p50_p99: written.map(|w| (w.latency_p50_ms, w.latency_p99_ms)),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    if let Some(url) = args.clients_of {
        play_clients(url, usize::from(args.clients)).await;
        return std::process::ExitCode::SUCCESS;
    }
    println!(
        "ws_load: {} clients, {} events/s for {} s, {}-byte payload (loopback)",
        args.clients, args.rate, args.seconds, args.payload
    );
    println!(
        "{:<11} {:>9} {:>14} {:>9} {:>9} {:>12} {:>16} {:>22}",
        "server",
        "connected",
        "delivered/s",
        "p50 ms",
        "p99 ms",
        "not delivered",
        "KiB/idle conn",
        "written p50/p99 ms"
    );
    for naive in [false, true] {
        let name = if naive { "naive" } else { "perfmon" };
        if args.only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let o = run(&args, naive).await;
        println!(
            "{:<11} {:>9} {:>14.0} {:>9.1} {:>9.1} {:>12} {:>16.1} {:>22}",
            o.name,
            o.connected,
            o.delivered_per_s,
            o.p50_ms,
            o.p99_ms,
            o.lost,
            o.kib_per_idle_conn,
            o.written_p50_p99
                .map_or("-".to_string(), |(a, b)| format!("{a:.1} / {b:.1}"))
        );
    }
    std::process::ExitCode::SUCCESS
}
