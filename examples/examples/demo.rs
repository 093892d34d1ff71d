//! A simulated AI-agent pipeline, monitored by perfmon.
//!
//! ```text
//! cargo run --example demo                  # until Ctrl-C
//! cargo run --example demo -- --pipelines 3 # stop after three pipelines
//! cargo run --example demo -- --otlp http://127.0.0.1:6006/v1/traces   # and to Phoenix
//! cargo run --example demo -- --no-history  # keep nothing between runs
//! cargo run --example demo -- --redis redis://127.0.0.1:6379 --source worker-1   # join a fleet
//! ```
//!
//! Fleet: with `--redis`, every event also goes to a Redis stream, tagged
//! `--source NAME`; `cargo run --example collector -- --redis URL --bind
//! 127.0.0.1:9465` serves every worker on one dashboard. The demo's own
//! sidecar keeps working.
//!
//! History: every finished pipeline, per-agent rollups and alert
//! transitions go to `target/perfmon-demo.db` (`--history PATH`), so a
//! second run shows the first run's pipelines in the History view and in
//! `/api/performance/history/...`. Two alert rules fire in a normal run
//! within a minute: physics' p99 above 1.2 s, and codegen failing more
//! than 10% of the time.
//!
//! Each pipeline: a `planner`, then `geometry`, `physics` (which runs a
//! `solver` inside it) and `materials` in parallel (`physics` is the clear
//! bottleneck, on its self time), then `codegen`, which calls the `compile`
//! tool (its output streams live; it fails now and then), and a `reviewer`.
//! The `planner` and the `reviewer` report token usage and cost, as
//! model-backed agents would. Every report is printed with its bottlenecks,
//! critical path and usage; every few pipelines, the slowest agents and
//! tools with their tokens and cost.
//!
//! Every fifth pipeline also starts an `indexer` task without carrying the
//! pipeline's span, on purpose: perfmon counts that run as outside any
//! pipeline, warns once on stderr (the WARN line) and the dashboard shows a
//! notice with the fix.

use std::process::ExitCode;
use std::time::Duration;

use perfmon::{AlertRule, Monitor, TrackAgentExt};
use tracing::Instrument;
use tracing_subscriber::prelude::*;

/// Simulated AI-agent pipelines, monitored by perfmon, with the live sidecar
/// and its dashboard.
#[derive(clap::Parser)]
struct Args {
    /// Stop after this many pipelines (default: run until Ctrl-C).
    #[arg(long, value_name = "N")]
    pipelines: Option<u64>,
    /// Where the sidecar listens (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value = perfmon::ws::DEFAULT_BIND)]
    bind: String,
    /// Also send every finished pipeline to an OpenTelemetry backend, as
    /// OTLP over HTTP to this URL (Phoenix: http://127.0.0.1:6006/v1/traces;
    /// an OpenTelemetry Collector or Jaeger: http://127.0.0.1:4318/v1/traces).
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// The same over OTLP/gRPC (Phoenix or a Collector: http://127.0.0.1:4317).
    #[cfg(feature = "otel")]
    #[arg(long, value_name = "URL", conflicts_with = "otlp")]
    otlp_grpc: Option<String>,
    /// Keep finished pipelines, trends and alerts in this SQLite file.
    #[arg(long, value_name = "PATH", default_value = "target/perfmon-demo.db")]
    history: std::path::PathBuf,
    /// Keep no history.
    #[arg(long, conflicts_with = "history")]
    no_history: bool,
    /// POST alerts as JSON to this http:// URL.
    #[arg(long, value_name = "URL")]
    alert_webhook: Option<String>,
    /// Also publish every event to this Redis (a fleet's stream), e.g.
    /// redis://127.0.0.1:6379; serve the fleet with the `collector` example.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// This worker's name in the fleet.
    #[arg(long, value_name = "NAME", default_value = "demo", requires = "redis")]
    source: String,
}

/// Opens the history file; the demo runs without one if it cannot.
fn open_history(args: &Args) -> Option<perfmon::History> {
    if args.no_history {
        return None;
    }
    if let Some(dir) = args.history.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    match perfmon::History::open(&args.history) {
        Ok(history) => Some(history),
        Err(err) => {
            eprintln!("History off: {err}");
            None
        }
    }
}

/// A small deterministic pseudo-random sequence, so runs differ a little.
struct Jitter(u64);

impl Jitter {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn ms(&mut self, base: u64, spread: u64) -> Duration {
        Duration::from_millis(base + self.next() % spread.max(1))
    }
}

/// Works in steps, reporting progress.
async fn work(stages: &[&str], total: Duration) {
    let step = total / stages.len() as u32;
    for (i, stage) in stages.iter().enumerate() {
        perfmon::progress!(
            percent = 100.0 * i as f64 / stages.len() as f64,
            stage = *stage
        );
        tokio::time::sleep(step).await;
    }
    perfmon::progress!(percent = 100.0, stage = "done");
}

/// Agents are plain functions with `#[perfmon::track_agent]`.
#[perfmon::track_agent]
async fn geometry(time: Duration) {
    work(&["parse", "mesh", "refine"], time).await;
}

#[perfmon::track_agent]
async fn physics() {
    perfmon::thought!("coarse mesh first, then refine where the residual is high");
    work(&["assemble", "iterate"], Duration::from_millis(800)).await;
    // A nested agent: its time counts in physics' wall time, not its self time.
    solver().await;
}

#[perfmon::track_agent]
async fn solver() {
    work(&["factorize", "solve"], Duration::from_millis(500)).await;
}

/// Background work started without the pipeline's span (see the module docs).
#[perfmon::track_agent]
async fn indexer() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[perfmon::track_agent]
async fn materials(time: Duration) {
    work(&["lookup", "fit"], time).await;
}

/// An `Err` marks the run failed, with the error's `Display` text. The
/// agent calls a tool, `compile`, whose output streams live.
#[perfmon::track_agent(name = "codegen")]
async fn generate_code(n: u64, time: Duration, fails: bool) -> Result<(), CodegenError> {
    work(&["emit"], time / 2).await;
    compile(n, time / 2, fails).await
}

/// A tool: a run of kind `tool` nested in the agent that called it, with
/// its own timing and statistics; `output!` lines are its live output.
#[perfmon::track_tool]
async fn compile(n: u64, time: Duration, fails: bool) -> Result<(), CodegenError> {
    let files = ["model.rs", "solver.rs", "mesh.rs", "main.rs"];
    for file in files {
        perfmon::output!(stream = "stdout", "   Compiling {file} (project {n})");
        tokio::time::sleep(time / files.len() as u32).await;
    }
    if fails {
        perfmon::output!(
            stream = "stderr",
            "error[E0308]: mismatched types --> solver.rs:42:17"
        );
        Err(CodegenError(n))
    } else {
        perfmon::output!(
            stream = "stdout",
            "    Finished release in {:.2}s",
            time.as_secs_f64()
        );
        Ok(())
    }
}

/// What a model-backed agent reports after each call: tokens and cost
/// (prices per million tokens of a made-up model).
fn report_usage(model: &str, input_tokens: u64, output_tokens: u64) {
    let cost_usd = (input_tokens as f64 * 2.0 + output_tokens as f64 * 8.0) / 1e6;
    perfmon::usage!(model = model, input_tokens, output_tokens, cost_usd);
}

#[derive(Debug)]
struct CodegenError(u64);

impl std::fmt::Display for CodegenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generated code failed to compile (attempt {})", self.0)
    }
}

async fn pipeline(n: u64, jitter: &mut Jitter) -> Result<(), CodegenError> {
    // A synchronous, CPU-bound agent on a blocking thread: a guard around a
    // block, parented to the pipeline by carrying its span across.
    let span = tracing::Span::current();
    let planning = jitter.ms(120, 60);
    let _ = tokio::task::spawn_blocking(move || {
        span.in_scope(|| {
            let _planner = perfmon::agent("planner");
            perfmon::thought!("splitting project {n} into geometry, physics and materials");
            std::thread::sleep(planning); // stands in for a model call
            report_usage("gpt-4.1", 1_200 + n % 7 * 40, 300 + n % 5 * 20);
        })
    })
    .await;

    // Parallel agents on other tasks. A tracked function's span is made when
    // its future is first polled (as with #[tracing::instrument]), so spawn
    // it `.in_current_span()` to keep it in this pipeline.
    let tasks = [
        tokio::spawn(geometry(jitter.ms(450, 150)).in_current_span()),
        tokio::spawn(physics().in_current_span()),
        tokio::spawn(materials(jitter.ms(300, 100)).in_current_span()),
    ];
    for task in tasks {
        let _ = task.await;
    }

    if n.is_multiple_of(5) {
        // Deliberately without `.in_current_span()`: this run loses its pipeline.
        let _ = tokio::spawn(indexer()).await;
    }

    let fails = jitter.next().is_multiple_of(4);
    generate_code(n, jitter.ms(250, 100), fails).await?;

    // The extension trait works on any future, without an attribute.
    let review = jitter.ms(150, 80);
    async move {
        work(&["review"], review).await;
        report_usage("gpt-4.1-mini", 2_400, 180);
    }
    .track_agent("reviewer")
    .await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let history = open_history(&args);
    let mut builder = Monitor::builder()
        .process_sampler(Duration::from_secs(1))
        // Two rules a normal run crosses within a minute.
        .alert(
            AlertRule::agent_p99_above("physics", Duration::from_millis(1_200))
                .named("physics p99 above 1.2s")
                .window(Duration::from_secs(60))
                .min_runs(3),
        )
        .alert(
            AlertRule::failure_rate_above("codegen", 0.1)
                .named("codegen failing over 10%")
                .window(Duration::from_secs(120))
                .min_runs(4),
        )
        .alert(AlertRule::no_pipeline_for(Duration::from_secs(30)).named("no pipeline for 30s"));
    if let Some(url) = &args.alert_webhook {
        builder = builder.alert_webhook(url);
    }
    if let Some(history) = history {
        builder = builder.history(history);
    }
    let monitor = builder.build();
    // perfmon's layer sees every span; the log (stderr) shows warnings only,
    // perfmon's own included, through a filter on the log layer alone.
    tracing_subscriber::registry()
        .with(monitor.layer())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .init();

    let sidecar = match perfmon::ws::Sidecar::builder()
        .bind(&args.bind)
        .serve(&monitor)
    {
        Ok(sidecar) => sidecar,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(1);
        }
    };
    // Kept alive for the whole run: dropping the handle leaves it running,
    // and the last Monitor flushes it when the demo ends.
    #[cfg(feature = "otel")]
    let _otel = match args.otlp.as_ref().or(args.otlp_grpc.as_ref()) {
        Some(url) => match if args.otlp.is_some() {
            perfmon::otel::OtelExporter::otlp_http(url, "perfmon-demo")
        } else {
            perfmon::otel::OtelExporter::otlp_grpc(url, "perfmon-demo")
        }
        .map_err(|e| e.to_string())
        .and_then(|otel| {
            let stats = otel.stats();
            let handle = monitor.add_exporter(otel).map_err(|e| e.to_string())?;
            Ok((handle, stats))
        }) {
            Ok(sent) => {
                println!(
                    "OpenTelemetry: every finished pipeline goes to {url} (service perfmon-demo)"
                );
                Some(sent)
            }
            Err(err) => {
                eprintln!("--otlp {url}: {err}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let publisher = match &args.redis {
        Some(url) => match perfmon::fleet::Publisher::builder(url)
            .source(&args.source)
            .start(&monitor)
        {
            Ok(publisher) => {
                println!(
                    "Fleet:     publishing to {url} as {:?} (stream {}); serve it with \
                     cargo run --example collector -- --redis {url} --bind 127.0.0.1:9465",
                    args.source,
                    perfmon::fleet::DEFAULT_STREAM
                );
                Some(publisher)
            }
            Err(err) => {
                eprintln!("--redis {url}: {err}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    println!("perfmon demo: simulated agent pipelines; Ctrl-C to stop");
    println!("Dashboard: {}", sidecar.url());
    println!(
        "Try:       curl -s {}api/performance/overview",
        sidecar.url()
    );
    println!(
        "Metrics:   curl -s {}metrics   (Prometheus: histograms by agent and outcome)",
        sidecar.url()
    );
    if let Some(history) = monitor.history() {
        let earlier = match history.pipelines(&perfmon::PipelineQuery::new().limit(1_000)) {
            Ok(page) if page.next.is_some() => "over 1000".to_string(),
            Ok(page) => page.pipelines.len().to_string(),
            Err(err) => format!("unreadable: {err}"),
        };
        println!(
            "History:   {} (session {}, {earlier} pipelines from earlier runs)",
            history.path().display(),
            history.session(),
        );
        println!(
            "           curl -s '{}api/performance/history/pipelines?outcome=failed&limit=5'",
            sidecar.url()
        );
        println!(
            "           curl -s '{}api/performance/history/agents/physics?bucket=minute'",
            sidecar.url()
        );
    }
    println!("Alerts:    curl -s {}api/performance/alerts", sidecar.url());
    let run = async {
        let mut jitter = Jitter(0x9E37_79B9_7F4A_7C15);
        let mut n = 0;
        while args.pipelines.is_none_or(|max| n < max) {
            n += 1;
            let (_, report) = monitor
                .track_pipeline_result(format!("proj_{n}"), pipeline(n, &mut jitter))
                .await;
            println!("\n{report}");
            if n.is_multiple_of(5) {
                print_slowest(&monitor);
            }
        }
    };
    tokio::select! {
        () = run => {}
        _ = tokio::signal::ctrl_c() => println!("\nstopping"),
    }
    print_slowest(&monitor);
    sidecar.shutdown();
    #[cfg(feature = "otel")]
    if let Some((handle, stats)) = &_otel {
        let _ = handle.flush(Duration::from_secs(10));
        println!(
            "OpenTelemetry: {} spans exported, {} lost in {} failed exports",
            stats.spans_exported(),
            stats.spans_failed(),
            stats.failed_exports()
        );
    }
    for alert in monitor.alerts() {
        println!("alert {:<9} {}", alert.state.as_str(), alert.message);
    }
    if let Some(publisher) = &publisher {
        let _ = monitor.flush();
        let s = publisher.stats();
        println!(
            "Fleet: {} entries published, {} events dropped, {} still buffered{}",
            s.published,
            s.dropped,
            s.buffered,
            s.last_error
                .as_ref()
                .filter(|_| !s.connected)
                .map(|e| format!("; Redis unreachable: {e}"))
                .unwrap_or_default()
        );
    }
    if let Some(history) = monitor.history() {
        let _ = monitor.flush();
        let stats = history.stats();
        println!(
            "History: {} pipelines stored in {} ({} lost, {} events missed){}",
            stats.pipelines_written,
            history.path().display(),
            stats.pipelines_lost,
            stats.events_missed,
            stats
                .last_error
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        );
    }
    let overview = monitor.overview();
    println!(
        "\n{} pipelines ({} failed), {} agent runs ({} outside any pipeline), mean pipeline {:.2?}; {}",
        overview.pipelines_total,
        overview.pipelines_failed,
        overview.agent_runs_total,
        overview.runs_outside_pipeline,
        overview.avg_pipeline_duration,
        overview.usage
    );
    ExitCode::SUCCESS
}

fn print_slowest(monitor: &Monitor) {
    println!(
        "\nslowest agents and tools  kind   runs  fail%      p50      p90      p99 self p50   tokens     cost"
    );
    for s in monitor.slowest_agents(8) {
        println!(
            "  {:<22} {:<5} {:>5} {:>5.1}% {:>8.1?} {:>8.1?} {:>8.1?} {:>8.1?} {:>8} {:>8}",
            s.agent,
            s.kind.as_str(),
            s.runs,
            s.failure_rate * 100.0,
            s.p50,
            s.p90,
            s.p99,
            s.self_p50,
            s.usage.total_tokens(),
            format!("${:.4}", s.usage.cost_usd)
        );
    }
}
