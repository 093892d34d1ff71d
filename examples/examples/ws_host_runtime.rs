//! Does the sidecar starve the host's tokio runtime? The time a task the
//! host spawns waits before it runs, with no sidecar, with an idle sidecar,
//! and with the sidecar under attack, on the host's runtime and on its own
//! thread. Loopback only; bounded in time; stops by itself.
//!
//! ```text
//! cargo run --release --example ws_host_runtime -- --seconds 20 --rounds 2
//! ```
//!
//! The host: a 2-worker multi-thread runtime (`#[tokio::main]` on a 2-core
//! machine), a thread publishing about `--rate` events/s (agent runs in
//! pipelines), and a probe thread that spawns a task on the runtime every
//! millisecond and records how long it waited to start (the scheduling
//! delay every host task sees: a request handler, an agent's future).
//!
//! Phases, alternating for `--rounds` rounds:
//! - `none`: no sidecar (the monitor still runs);
//! - `idle`: the sidecar as `serve` starts it by default inside a runtime
//!   (on its own thread and runtime), no clients;
//! - `attack`: the same sidecar, attacked by a child process
//!   (started with `nice`, so the kernel favours the host): 300 stalled
//!   WebSockets, 5 readers, 4 clients subscribing and unsubscribing 8,000
//!   names, 10 replaying from seq 0, 4 REST loops, 200 idle sockets and 50
//!   slowloris headers;
//! - `attack-shared-rt`: the same attack, with the sidecar sharing the
//!   host's runtime (`SidecarBuilder::own_thread(false)`).
//!
//! Prints each phase's delay percentiles and their ratio to `none` in the
//! same round. See BENCHMARKS.md.

#![allow(clippy::expect_used)] // a measuring program: a panic is the right report

use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use perfmon::Monitor;
use perfmon::ws::Sidecar;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tracing_subscriber::prelude::*;

/// Does the sidecar starve the host's tokio runtime?
#[derive(clap::Parser)]
struct Args {
    /// Seconds per phase (2 to 600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=600))]
    seconds: u64,
    /// Rounds of the four phases (1 to 10).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
    rounds: u32,
    /// Events per second the host publishes (1 to 20000).
    #[arg(long, default_value_t = 6_000, value_parser = clap::value_parser!(u64).range(1..=20_000))]
    rate: u64,
    /// Set in the attacking child: the sidecar to attack.
    #[arg(long, hide = true)]
    attack: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    match args.attack {
        Some(addr) => attacker(addr, Duration::from_secs(args.seconds)),
        None => host(&args),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    None,
    Idle,
    Attack,
    AttackShared,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::None, Phase::Idle, Phase::Attack, Phase::AttackShared];

    fn name(self) -> &'static str {
        match self {
            Phase::None => "none",
            Phase::Idle => "idle",
            Phase::Attack => "attack",
            Phase::AttackShared => "attack-shared-rt",
        }
    }
}

/// Scheduling delays of one phase, in microseconds, sorted.
struct Delays(Vec<u64>);

impl Delays {
    fn quantile(&self, q: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        let i = ((self.0.len() - 1) as f64 * q).round() as usize;
        self.0[i]
    }
}

fn host(args: &Args) -> ExitCode {
    let monitor = Monitor::builder().metrics(false).build();
    tracing_subscriber::registry().with(monitor.layer()).init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let stop = Arc::new(AtomicBool::new(false));

    // The host's own work: about `rate` events/s (a pipeline of 8 agents
    // makes 18 events) on a plain thread.
    let publisher = {
        let (monitor, stop, rate) = (monitor.clone(), Arc::clone(&stop), args.rate);
        std::thread::spawn(move || {
            let tick = Duration::from_secs_f64(18.0 / rate as f64);
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let pipeline = monitor.start_pipeline(format!("host_{}", n % 1000));
                for _ in 0..8 {
                    perfmon::agent("worker").succeed();
                }
                pipeline.finish();
                std::thread::sleep((start + tick * n).saturating_duration_since(Instant::now()));
            }
        })
    };

    // The probe: a task spawned every millisecond records how long it
    // waited to run.
    let samples = Arc::new(Mutex::new(Vec::<u64>::with_capacity(1 << 16)));
    let probe = {
        let (handle, stop, samples) = (
            runtime.handle().clone(),
            Arc::clone(&stop),
            Arc::clone(&samples),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let samples = Arc::clone(&samples);
                handle.spawn(async move {
                    let waited = sent.elapsed().as_micros() as u64;
                    if let Ok(mut samples) = samples.lock() {
                        samples.push(waited);
                    }
                });
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };

    println!(
        "ws_host_runtime: {} rounds of {} s per phase, ~{} events/s published, 2 runtime workers, {} cores",
        args.rounds,
        args.seconds,
        args.rate,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<6} {:<18} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10}",
        "round", "phase", "samples", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "p99 ratio"
    );
    let phase_time = Duration::from_secs(args.seconds);
    for round in 1..=args.rounds {
        let mut baseline_p99 = 0u64;
        for phase in Phase::ALL {
            let delays = run_phase(&runtime, &monitor, phase, phase_time, &samples);
            let Some(delays) = delays else {
                return ExitCode::from(1);
            };
            let p99 = delays.quantile(0.99);
            if phase == Phase::None {
                baseline_p99 = p99.max(1);
            }
            println!(
                "{:<6} {:<18} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9.2}×",
                round,
                phase.name(),
                delays.0.len(),
                delays.quantile(0.5),
                p99,
                delays.quantile(0.999),
                delays.0.last().copied().unwrap_or(0),
                p99 as f64 / baseline_p99 as f64
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = publisher.join();
    let _ = probe.join();
    ExitCode::SUCCESS
}

/// Runs one phase; returns its delays (the first second, while the phase
/// starts, left out).
fn run_phase(
    runtime: &tokio::runtime::Runtime,
    monitor: &Monitor,
    phase: Phase,
    time: Duration,
    samples: &Mutex<Vec<u64>>,
) -> Option<Delays> {
    let sidecar = match phase {
        Phase::None => None,
        // Started from inside the host's runtime, as `#[tokio::main]` would.
        Phase::Idle | Phase::Attack => {
            let _enter = runtime.enter();
            Some(Sidecar::builder().bind("127.0.0.1:0").serve(monitor))
        }
        Phase::AttackShared => {
            let _enter = runtime.enter();
            Some(
                Sidecar::builder()
                    .bind("127.0.0.1:0")
                    .own_thread(false)
                    .serve(monitor),
            )
        }
    };
    let sidecar = match sidecar.transpose() {
        Ok(sidecar) => sidecar,
        Err(e) => {
            eprintln!("sidecar: {e}");
            return None;
        }
    };
    let mut child: Option<Child> = None;
    if let (Some(sidecar), Phase::Attack | Phase::AttackShared) = (&sidecar, phase) {
        let exe = std::env::current_exe().expect("the example's own path");
        let spawned = Command::new("nice")
            .args(["-n", "10"])
            .arg(exe)
            .args(["--attack", &sidecar.local_addr().to_string()])
            .args(["--seconds", &(time.as_secs() + 1).to_string()])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn();
        match spawned {
            Ok(c) => child = Some(c),
            Err(e) => {
                eprintln!("could not start the attacker (`nice` on PATH?): {e}");
                return None;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    if let Ok(mut samples) = samples.lock() {
        samples.clear();
    }
    std::thread::sleep(time);
    let mut delays = samples.lock().map(|s| s.clone()).unwrap_or_default();
    delays.sort_unstable();
    if let Some(mut child) = child {
        // It stops by itself about now; make sure.
        for _ in 0..50 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    if let Some(sidecar) = sidecar {
        runtime.block_on(sidecar.close());
    }
    Some(Delays(delays))
}

/// What the attacker did, for its one line of output.
#[derive(Default)]
struct Attacked {
    frames_read: AtomicU64,
    commands: AtomicU64,
    rest: AtomicU64,
    stalled_connects: AtomicU64,
}

/// The attacking child: every hostile client at once, for `time`.
fn attacker(addr: SocketAddr, time: Duration) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let counts = Arc::new(Attacked::default());
    runtime.block_on(async {
        let url = format!("ws://{addr}/ws");
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..300 {
            tasks.spawn(stalled(addr, Arc::clone(&counts)));
        }
        for _ in 0..5 {
            tasks.spawn(reader(url.clone(), Arc::clone(&counts)));
        }
        for _ in 0..4 {
            tasks.spawn(filter_churn(url.clone(), Arc::clone(&counts)));
        }
        for _ in 0..10 {
            tasks.spawn(replayer(url.clone(), Arc::clone(&counts)));
        }
        for path in [
            "/api/performance/agents",
            "/metrics",
            "/api/performance/pipelines",
            "/",
        ] {
            tasks.spawn(rest_loop(addr, path, Arc::clone(&counts)));
        }
        for _ in 0..200 {
            tasks.spawn(idle(addr));
        }
        for _ in 0..50 {
            tasks.spawn(slowloris(addr));
        }
        let _ =
            tokio::time::timeout(time, async { while tasks.join_next().await.is_some() {} }).await;
        tasks.abort_all();
    });
    println!(
        "  attacker: {} frames read, {} commands, {} REST answers, {} stalled connects",
        counts.frames_read.load(Ordering::Relaxed),
        counts.commands.load(Ordering::Relaxed),
        counts.rest.load(Ordering::Relaxed),
        counts.stalled_connects.load(Ordering::Relaxed),
    );
    ExitCode::SUCCESS
}

fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// Completes the handshake and never reads.
async fn stalled(addr: SocketAddr, counts: Arc<Attacked>) {
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if stream
            .write_all(upgrade_request(addr).as_bytes())
            .await
            .is_err()
        {
            continue;
        }
        counts.stalled_connects.fetch_add(1, Ordering::Relaxed);
        // Never read; the server closes a stalled client after its stall
        // limit (10 s): connect again a little after that.
        tokio::time::sleep(Duration::from_secs(11)).await;
        drop(stream);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    loop {
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads everything, as fast as it comes.
async fn reader(url: String, counts: Arc<Attacked>) {
    loop {
        let mut ws = connect(&url).await;
        while let Some(Ok(_)) = ws.next().await {
            counts.frames_read.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Subscribes to 8,000 pipeline names, unsubscribes them, again and again,
/// reading what comes back.
async fn filter_churn(url: String, counts: Arc<Attacked>) {
    let names: Vec<String> = (0..8_000).map(|i| format!("pipeline_{i}")).collect();
    let subscribe = serde_json::json!({"type": "subscribe", "pipelines": names}).to_string();
    let unsubscribe = serde_json::json!({"type": "unsubscribe", "pipelines": names}).to_string();
    loop {
        let (mut tx, mut rx) = connect(&url).await.split();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        loop {
            let sent = tx.send(Message::text(subscribe.clone())).await.is_ok()
                && tx.send(Message::text(unsubscribe.clone())).await.is_ok();
            if !sent {
                break;
            }
            counts.commands.fetch_add(2, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drain.abort();
    }
}

/// Asks for the whole ring again and again.
async fn replayer(url: String, counts: Arc<Attacked>) {
    let replay = serde_json::json!({"type": "replay", "since": 0}).to_string();
    loop {
        let (mut tx, mut rx) = connect(&url).await.split();
        let drain = tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        while tx.send(Message::text(replay.clone())).await.is_ok() {
            counts.commands.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drain.abort();
    }
}

/// GETs one path over and over on keep-alive connections.
async fn rest_loop(addr: SocketAddr, path: &str, counts: Arc<Attacked>) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut buf = vec![0u8; 1 << 16];
        'requests: loop {
            if stream.write_all(request.as_bytes()).await.is_err() {
                break;
            }
            // One response: the head, then Content-Length bytes of body.
            let mut got = Vec::new();
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break 'requests,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
                if let Some(rest) = complete_after(&got) {
                    if rest > 0 {
                        break 'requests; // pipelined bytes: start over
                    }
                    break;
                }
            }
            counts.rest.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When `buf` holds one whole response: how many bytes follow it.
fn complete_after(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let end = head_end + len;
    (buf.len() >= end).then(|| buf.len() - end)
}

/// Connects and sends nothing, again when the server closes it.
async fn idle(addr: SocketAddr) {
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut byte = [0u8; 1];
        let _ = stream.read(&mut byte).await;
    }
}

/// Sends a request's head one byte a second, again when cut off.
async fn slowloris(addr: SocketAddr) {
    let head = upgrade_request(addr);
    loop {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        for byte in head.as_bytes() {
            if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
