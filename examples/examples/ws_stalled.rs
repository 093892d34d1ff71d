//! What stalled WebSocket clients cost the instrumented program: the host's
//! tracked-call time with N connected clients that never read, against the
//! same program with none, measured in alternating rounds of one run.
//! Loopback only; bounded in clients, calls and rounds; stops by itself.
//!
//! ```text
//! cargo run --release --example ws_stalled -- --clients 1000 --calls 300000 --rounds 3
//! ```
//!
//! The host thread runs `--calls` agent runs (`perfmon::agent`, in pipelines
//! of 8) per round, with the perfmon layer and the sidecar on its own thread,
//! as in a real program. A stalled client connects with a 4 KiB receive
//! buffer and then never reads: its socket fills, the server sheds its
//! queue and stops writing to it. The sidecar's stall limit is raised past
//! the run so the clients stay connected and stalled throughout (by default
//! they would be closed with 4000 after 10 s). See BENCHMARKS.md.

#![allow(clippy::expect_used)] // a measuring program: a panic is the right report

use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use tracing_subscriber::prelude::*;

/// What stalled WebSocket clients cost the instrumented program.
#[derive(clap::Parser)]
struct Args {
    /// Clients that connect and never read (at most 5000).
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u16).range(0..=5_000))]
    clients: u16,
    /// Tracked calls per round (at most 10,000,000).
    #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    calls: u32,
    /// Rounds each way (1 to 20).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Microseconds of work per agent run (0: a tight loop).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    work_us: u64,
}

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Busy-waits `us` microseconds: an agent's own work.
fn work(us: u64) {
    if us > 0 {
        let until = Instant::now() + Duration::from_micros(us);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
}

/// Time per tracked call in one round: wall and this thread's CPU, in ns.
#[derive(Clone, Copy)]
struct PerCall {
    wall: f64,
    cpu: f64,
}

/// One round of host work.
fn host_round(monitor: &perfmon::Monitor, calls: u32, round: u32, work_us: u64) -> PerCall {
    let started = Instant::now();
    let cpu = thread_cpu_ns();
    let mut done = 0;
    let mut n = 0;
    while done < calls {
        let pipeline = monitor.start_pipeline(format!("round{round}-{n}"));
        for agent in ["planner", "geometry", "physics", "materials"] {
            for _ in 0..2 {
                let guard = black_box(perfmon::agent(agent));
                work(work_us);
                drop(guard);
                done += 1;
            }
        }
        drop(pipeline);
        n += 1;
    }
    PerCall {
        wall: started.elapsed().as_nanos() as f64 / f64::from(done),
        cpu: thread_cpu_ns().saturating_sub(cpu) as f64 / f64::from(done),
    }
}

/// Connects `n` clients that never read, on `runtime`; dropping the
/// returned value disconnects them.
fn stall(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    n: usize,
) -> Vec<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>> {
    runtime.block_on(async {
        let mut clients = Vec::with_capacity(n);
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("small buffer");
            let stream = socket.connect(addr).await.expect("connect");
            let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
                .await
                .expect("upgrade");
            clients.push(ws);
        }
        clients
    })
}

/// `GET path` over plain HTTP/1.1 on loopback; the body.
fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
        .split_once("\r\n\r\n")
        .map_or(response.clone(), |(_, body)| body.to_owned())
}

fn field(json: &str, key: &str) -> u64 {
    let value: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    value[key].as_u64().unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> std::process::ExitCode {
    let args = <Args as clap::Parser>::parse();
    let monitor = perfmon::Monitor::builder().metrics(false).build();
    let config = perfmon_ws::Config::default()
        .stall_limit(Duration::from_secs(3_600))
        .max_connections(20_000);
    let sidecar = perfmon::ws::Sidecar::builder()
        .bind("127.0.0.1:0")
        .config(config)
        .serve(&monitor)
        .expect("sidecar on loopback");
    let addr = sidecar.local_addr();
    let clients_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let _layer = tracing_subscriber::registry()
        .with(monitor.layer())
        .set_default();

    println!(
        "ws_stalled: {} calls a round, {} rounds each way, {} stalled clients, sidecar on {addr}",
        args.calls, args.rounds, args.clients
    );
    // Warm up caches, agent table and histograms.
    host_round(&monitor, args.calls / 4, 0, args.work_us);

    let (mut none, mut stalled) = (Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let ns = host_round(&monitor, args.calls, round, args.work_us);
        println!(
            "round {round}: no clients            {:>7.0} ns per call, host thread CPU {:>7.0} ns",
            ns.wall, ns.cpu
        );
        none.push(ns);

        let clients = stall(&clients_rt, addr, usize::from(args.clients));
        // Let the sockets fill and the queues reach their limit first.
        host_round(&monitor, args.calls / 4, round, args.work_us);
        std::thread::sleep(Duration::from_millis(300));
        let ns = host_round(&monitor, args.calls, round, args.work_us);
        let status = http_get(addr, "/api/performance/websocket/status");
        println!(
            "round {round}: {} stalled clients {:>7.0} ns per call, host thread CPU {:>7.0} ns \
             (connected {}, shed so far {})",
            args.clients,
            ns.wall,
            ns.cpu,
            field(&status, "connections_active"),
            field(&status, "dropped"),
        );
        stalled.push(ns);
        drop(clients);
        std::thread::sleep(Duration::from_millis(300));
    }
    for (what, pick) in [
        ("wall", (|p: &PerCall| p.wall) as fn(&PerCall) -> f64),
        ("host thread CPU", |p: &PerCall| p.cpu),
    ] {
        let a = median(none.iter().map(pick).collect());
        let b = median(stalled.iter().map(pick).collect());
        println!(
            "median {what}: no clients {a:.0} ns, {} stalled clients {b:.0} ns: {:.2}x",
            args.clients,
            b / a
        );
    }
    println!(
        "events the monitor dropped at its own queue: {}",
        monitor.overview().events_dropped
    );
    sidecar.shutdown();
    std::process::ExitCode::SUCCESS
}
