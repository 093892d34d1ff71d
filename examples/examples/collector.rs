//! The fleet's collector: reads the Redis stream that workers publish to
//! (`demo --redis URL --source NAME`, or `perfmon::fleet::Publisher`) and
//! serves one dashboard, REST, `/metrics` and WebSocket stream for all.
//!
//! ```text
//! redis-server --port 6379 &
//! cargo run --example demo -- --redis redis://127.0.0.1:6379 --source worker-1 &
//! cargo run --example demo -- --redis redis://127.0.0.1:6379 --source worker-2 --bind 127.0.0.1:0 &
//! cargo run --example collector -- --redis redis://127.0.0.1:6379 --bind 127.0.0.1:9465
//! ```

use std::process::ExitCode;
use std::time::Duration;

/// Serve a fleet of perfmon workers from their Redis stream.
#[derive(clap::Parser)]
struct Args {
    /// The Redis the workers publish to.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Where to serve the fleet's dashboard.
    #[arg(long, value_name = "ADDR", default_value = perfmon::ws::DEFAULT_BIND)]
    bind: String,
    /// The stream's key.
    #[arg(long, value_name = "KEY", default_value = perfmon::fleet::DEFAULT_STREAM)]
    stream: String,
    /// Require this token on every request but the page and /healthz.
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "S")]
    seconds: Option<u64>,
}

fn main() -> ExitCode {
    let args: Args = clap::Parser::parse();
    let mut server = perfmon::ws::Sidecar::builder().bind(&args.bind);
    if let Some(token) = &args.token {
        server = server.token(token);
    }
    let started = std::time::Instant::now();
    let collector = match perfmon::fleet::Collector::builder(&args.redis)
        .stream(&args.stream)
        .server(server)
        .serve()
    {
        Ok(collector) => collector,
        Err(err) => {
            eprintln!("collector: {err}");
            return ExitCode::from(1);
        }
    };
    let read = collector.broker().read;
    println!(
        "perfmon collector: {} entries of {} read in {:.2?} ({} malformed)",
        read.entries,
        args.stream,
        started.elapsed(),
        read.malformed
    );
    println!("Dashboard: {}", collector.url());
    println!(
        "Sources:   curl -s {}api/performance/sources",
        collector.url()
    );
    let deadline = args.seconds.map(|s| started + Duration::from_secs(s));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stop = std::sync::Arc::clone(&stop);
        let _ = std::thread::Builder::new().spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let _ = tokio::signal::ctrl_c().await;
                });
                stop.store(true, std::sync::atomic::Ordering::Release);
            }
        });
    }
    let mut last_print = std::time::Instant::now();
    while !stop.load(std::sync::atomic::Ordering::Acquire)
        && deadline.is_none_or(|d| std::time::Instant::now() < d)
    {
        std::thread::sleep(Duration::from_millis(200));
        if last_print.elapsed() >= Duration::from_secs(10) {
            last_print = std::time::Instant::now();
            for s in collector.sources() {
                println!(
                    "  {:<16} {:<6?} {:>8.1} events/s  lag {:>5} ms  dropped {}",
                    s.name, s.state, s.events_per_sec, s.lag_ms, s.dropped
                );
            }
        }
    }
    collector.shutdown();
    ExitCode::SUCCESS
}
