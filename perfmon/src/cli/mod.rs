//! The `perfmon` command line (feature `cli`): `perfmon top` (a live
//! terminal view, as tokio-console gives for tasks), `tail`, `report` and
//! `agents`, against any sidecar or fleet collector, through its REST API
//! and the Rust WebSocket client (which reconnects and resumes).
//!
//! ```text
//! cargo install --path perfmon --features cli
//! perfmon top                                  # http://127.0.0.1:9464
//! perfmon tail --type agent_completed --json | jq .data.duration_ms
//! perfmon report proj_7
//! perfmon agents --sort p99 --limit 5
//! ```
//!
//! Dependency order, bottom to top: rest → model → view, stream → top,
//! commands → this file (the flags).

pub mod commands;
pub mod model;
pub mod rest;
pub mod stream;
pub mod top;
pub mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use model::{Model, SortKey};
pub use rest::{CliError, Rest};
pub use view::{Theme, render};

/// The default server.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9464";

/// perfmon: watch the agent pipelines a sidecar (or a fleet's collector) sees.
#[derive(Debug, Parser)]
#[command(name = "perfmon", version, about, long_about = None)]
struct Cli {
    /// The sidecar's token (or set PERFMON_TOKEN).
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The live view: pipelines with their running agents, the agents table,
    /// failures, a log; Enter on a pipeline shows its timeline. `?` for keys.
    #[command(
        after_help = "Examples:\n  perfmon top\n  perfmon top http://10.0.0.5:9464 --token s3cret\n  NO_COLOR=1 perfmon top"
    )]
    Top {
        /// The sidecar or collector.
        #[arg(default_value = DEFAULT_URL)]
        url: String,
    },
    /// Events as they happen, one line each (or JSON lines); resumes across
    /// disconnects; Ctrl-C ends it (exit 0).
    #[command(
        after_help = "Examples:\n  perfmon tail\n  perfmon tail --pipeline proj_7 --type agent_completed\n  perfmon tail --agent physics --json | jq .data.duration_ms\n  perfmon tail --since 1200"
    )]
    Tail {
        /// The sidecar or collector.
        #[arg(default_value = DEFAULT_URL)]
        url: String,
        /// Only this pipeline's events (repeat for more).
        #[arg(long, value_name = "ID")]
        pipeline: Vec<String>,
        /// Only events of this type, e.g. agent_completed (repeat for more).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Vec<String>,
        /// Only this agent's events (repeat for more).
        #[arg(long, value_name = "NAME")]
        agent: Vec<String>,
        /// First replay what came after this seq (what the server still has).
        #[arg(long, value_name = "SEQ")]
        since: Option<u64>,
        /// One JSON object per line: the events as the server sends them.
        #[arg(long)]
        json: bool,
    },
    /// A pipeline's report as the demo prints it (the newest when none is given).
    #[command(
        after_help = "Examples:\n  perfmon report\n  perfmon report proj_7\n  perfmon report proj_7 --json | jq .bottlenecks"
    )]
    Report {
        /// The sidecar or collector.
        #[arg(default_value = DEFAULT_URL)]
        url: String,
        /// The pipeline's id.
        pipeline: Option<String>,
        /// The report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A fleet's collector: reads the Redis stream its workers publish to and
    /// serves one dashboard for all (feature `fleet`).
    #[cfg(feature = "fleet")]
    #[command(
        after_help = "Examples:\n  perfmon collector --redis redis://127.0.0.1:6379 --bind 127.0.0.1:9465"
    )]
    Collector(CollectorArgs),
    /// The agents table, once.
    #[command(
        after_help = "Examples:\n  perfmon agents\n  perfmon agents --sort fail --limit 5\n  perfmon agents --json | jq '.[0].p99_ms'"
    )]
    Agents {
        /// The sidecar or collector.
        #[arg(default_value = DEFAULT_URL)]
        url: String,
        /// p99, p50, p90, max, runs, fail, tokens or cost (largest first).
        #[arg(long, default_value = "p99", value_parser = parse_sort)]
        sort: SortKey,
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// The agents as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(feature = "fleet")]
#[derive(Debug, clap::Args)]
struct CollectorArgs {
    /// The Redis the workers publish to.
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Where to serve the fleet's dashboard.
    #[arg(long, value_name = "ADDR", default_value = crate::ws::DEFAULT_BIND)]
    bind: String,
    /// The stream's key.
    #[arg(long, value_name = "KEY", default_value = crate::fleet::DEFAULT_STREAM)]
    stream: String,
}

/// `perfmon collector`: serves a fleet until Ctrl-C.
#[cfg(feature = "fleet")]
fn collector(args: &CollectorArgs, token: Option<String>) -> Result<(), CliError> {
    let mut server = crate::ws::Sidecar::builder().bind(&args.bind);
    if let Some(token) = token {
        server = server.token(token);
    }
    let collector = crate::fleet::Collector::builder(&args.redis)
        .stream(&args.stream)
        .server(server)
        .serve()
        .map_err(|e| CliError::Unreachable {
            url: args.redis.clone(),
            reason: e.to_string(),
        })?;
    println!("Dashboard: {}", collector.url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Unreachable {
            url: "a tokio runtime".into(),
            reason: e.to_string(),
        })?;
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    collector.shutdown();
    Ok(())
}

fn parse_sort(name: &str) -> Result<SortKey, String> {
    SortKey::parse(name)
        .ok_or_else(|| "one of p99, p50, p90, max, runs, fail, tokens, cost".to_owned())
}

/// The `perfmon` binary: parses the flags, runs the command, prints a
/// one-line error and returns 1 when it fails.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let token = cli.token.or_else(|| {
        std::env::var("PERFMON_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
    });
    let result = match cli.command {
        Command::Top { url } => {
            Rest::new(&url, token.clone()).and_then(|rest| top::run(&rest, token))
        }
        Command::Tail {
            url,
            pipeline,
            kind,
            agent,
            since,
            json,
        } => Rest::new(&url, token.clone()).and_then(|rest| {
            let filter = commands::TailFilter {
                pipelines: pipeline,
                types: kind,
                agents: agent,
                since,
            };
            commands::tail(&rest, token, &filter, json)
        }),
        Command::Report {
            url,
            pipeline,
            json,
        } => Rest::new(&url, token)
            .and_then(|rest| commands::report(&rest, pipeline.as_deref(), json)),
        #[cfg(feature = "fleet")]
        Command::Collector(args) => collector(&args, token),
        Command::Agents {
            url,
            sort,
            limit,
            json,
        } => Rest::new(&url, token)
            .and_then(|rest| commands::agents(&rest, sort, limit.max(1), json)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("perfmon: {err}");
            ExitCode::from(1)
        }
    }
}
