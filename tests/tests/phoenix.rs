//! End to end against a real OpenTelemetry backend: Arize Phoenix (PyPI
//! `arize-phoenix`), started here on loopback in a temporary directory.
//! perfmon's OTLP exporter sends it two pipelines over HTTP and one over
//! gRPC; Phoenix's REST API must show each as one trace with the expected
//! span names, kinds, parents and token counts.
//!
//! Needs `phoenix` (set `PHOENIX` to its path, or have it on `PATH`, or in
//! `/opt/phoenix/bin`). Skips without it, unless `PERFMON_PHOENIX_TESTS=require`
//! (as `.ci/run` sets).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use perfmon::Monitor;
use perfmon::otel::OtelExporter;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

fn phoenix_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PHOENIX") {
        return Some(PathBuf::from(path));
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("phoenix"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/opt/phoenix/bin/phoenix")])
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The Phoenix server, stopped (and its directory removed) when dropped.
struct Phoenix {
    child: Child,
    dir: PathBuf,
    port: u16,
    grpc: u16,
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A GET on Phoenix over a plain socket: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Some((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn start_phoenix() -> Option<Phoenix> {
    let Some(binary) = phoenix_binary() else {
        assert!(
            std::env::var("PERFMON_PHOENIX_TESTS").as_deref() != Ok("require"),
            "PERFMON_PHOENIX_TESTS=require, but no phoenix: python3 -m venv /opt/phoenix && \
             /opt/phoenix/bin/pip install arize-phoenix"
        );
        eprintln!(
            "skipped: no phoenix (python3 -m venv /opt/phoenix && /opt/phoenix/bin/pip install arize-phoenix)"
        );
        return None;
    };
    let dir = std::env::temp_dir().join(format!("perfmon-phoenix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, grpc) = (free_port(), free_port());
    let child = Command::new(&binary)
        .arg("serve")
        .env("PHOENIX_WORKING_DIR", &dir)
        .env("PHOENIX_HOST", "127.0.0.1")
        .env("PHOENIX_PORT", port.to_string())
        .env("PHOENIX_GRPC_PORT", grpc.to_string())
        .env("PHOENIX_TELEMETRY_ENABLED", "false")
        .env("DO_NOT_TRACK", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("phoenix.log")).unwrap(),
        ))
        .spawn()
        .expect("phoenix starts");
    let phoenix = Phoenix {
        child,
        dir,
        port,
        grpc,
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while get(port, "/healthz").map(|(s, _)| s) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "phoenix did not answer /healthz in 180 s; its log: {}",
            std::fs::read_to_string(phoenix.dir.join("phoenix.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    Some(phoenix)
}

#[test]
fn phoenix_shows_each_pipeline_as_one_trace_with_agents_tools_and_tokens() {
    let Some(phoenix) = start_phoenix() else {
        return;
    };
    let project = format!("perfmon-e2e-{}", std::process::id());
    let monitor = Monitor::builder().metrics(false).build();
    let exporter = OtelExporter::otlp_http(
        &format!("http://127.0.0.1:{}/v1/traces", phoenix.port),
        &project,
    )
    .unwrap();
    let sent = exporter.stats();
    let handle = monitor.add_exporter(exporter).unwrap();
    let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
    tracing::dispatcher::with_default(&dispatch, || {
        for n in 1..=2 {
            let pipeline = monitor.start_pipeline(format!("proj_{n}"));
            {
                let _planner = perfmon::agent("planner");
                perfmon::usage!(
                    model = "gpt-4.1",
                    input_tokens = 1000 * n,
                    output_tokens = 100 * n,
                    cost_usd = 0.004
                );
            }
            {
                let codegen = perfmon::agent("codegen");
                let compile = perfmon::tool("compile");
                perfmon::output!(stream = "stdout", "Compiling proj_{n}");
                if n == 2 {
                    compile.fail("exit status 1");
                    codegen.fail("did not compile");
                }
            }
            pipeline.finish();
        }
    });
    handle.flush(Duration::from_secs(30)).unwrap();

    // Phoenix ingests asynchronously: poll until the 8 spans are there.
    let deadline = Instant::now() + Duration::from_secs(60);
    let spans: Vec<Value> = loop {
        let path = format!("/v1/projects/{project}/spans?limit=100");
        if let Some((200, body)) = get(phoenix.port, &path) {
            let v: Value = serde_json::from_str(&body).unwrap();
            let spans = v["data"].as_array().cloned().unwrap_or_default();
            if spans.len() >= 8 {
                break spans;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Phoenix did not show 8 spans for {project} in 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        spans.len(),
        8,
        "2 workflows, 2 planners, 2 codegens, 2 compiles"
    );
    assert_eq!((sent.spans_exported(), sent.spans_failed()), (8, 0));

    let mut traces: HashMap<String, Vec<&Value>> = HashMap::new();
    for span in &spans {
        let trace = span["context"]["trace_id"].as_str().unwrap().to_owned();
        traces.entry(trace).or_default().push(span);
    }
    assert_eq!(traces.len(), 2, "one trace per pipeline");
    for spans in traces.values() {
        let by_name: HashMap<&str, &Value> = spans
            .iter()
            .map(|s| (s["name"].as_str().unwrap(), *s))
            .collect();
        let root = by_name
            .iter()
            .find(|(name, _)| name.starts_with("invoke_workflow proj_"))
            .map(|(_, s)| *s)
            .expect("a workflow span");
        assert!(root["parent_id"].is_null(), "{root}");
        let id = |s: &Value| s["context"]["span_id"].as_str().unwrap().to_owned();
        let planner = by_name["invoke_agent planner"];
        let codegen = by_name["invoke_agent codegen"];
        let compile = by_name["execute_tool compile"];
        assert_eq!(planner["parent_id"].as_str(), Some(id(root).as_str()));
        assert_eq!(codegen["parent_id"].as_str(), Some(id(root).as_str()));
        assert_eq!(compile["parent_id"].as_str(), Some(id(codegen).as_str()));
        for (span, kind) in [
            (root, "CHAIN"),
            (planner, "AGENT"),
            (codegen, "AGENT"),
            (compile, "TOOL"),
        ] {
            // Phoenix reads `openinference.span.kind` into its span kind.
            assert_eq!(span["span_kind"].as_str(), Some(kind), "{span}");
        }
        let n: u64 = root["name"]
            .as_str()
            .unwrap()
            .trim_start_matches("invoke_workflow proj_")
            .parse()
            .unwrap();
        assert_eq!(
            planner["attributes"]["gen_ai.usage.input_tokens"].as_u64(),
            Some(1000 * n),
            "{planner}"
        );
        assert_eq!(
            planner["attributes"]["llm.token_count.total"].as_u64(),
            Some(1100 * n)
        );
        let failed = n == 2;
        assert_eq!(
            compile["status_code"].as_str(),
            Some(if failed { "ERROR" } else { "OK" }),
            "{compile}"
        );
    }

    // The same exporter over gRPC, to Phoenix's OTLP gRPC port.
    let grpc_project = format!("perfmon-e2e-grpc-{}", std::process::id());
    let exporter =
        OtelExporter::otlp_grpc(&format!("http://127.0.0.1:{}", phoenix.grpc), &grpc_project)
            .unwrap();
    let handle = monitor.add_exporter(exporter).unwrap();
    tracing::dispatcher::with_default(&dispatch, || {
        let pipeline = monitor.start_pipeline("over_grpc");
        {
            let _agent = perfmon::agent("planner");
            let _tool = perfmon::tool("search");
        }
        pipeline.finish();
    });
    handle.flush(Duration::from_secs(30)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let names: Vec<String> = loop {
        let path = format!("/v1/projects/{grpc_project}/spans?limit=100");
        if let Some((200, body)) = get(phoenix.port, &path) {
            let v: Value = serde_json::from_str(&body).unwrap();
            let spans = v["data"].as_array().cloned().unwrap_or_default();
            if spans.len() >= 3 {
                let mut names: Vec<String> = spans
                    .iter()
                    .map(|s| s["name"].as_str().unwrap().to_owned())
                    .collect();
                names.sort();
                break names;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Phoenix did not show the gRPC pipeline in 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        names,
        [
            "execute_tool search",
            "invoke_agent planner",
            "invoke_workflow over_grpc"
        ]
    );
}
