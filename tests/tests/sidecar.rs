//! The `ws` sidecar end to end over loopback: REST answers match the
//! monitor, the live stream, rooms, and resume across a full restart.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::ms;
use futures_util::StreamExt;
use perfmon::ws::Sidecar;
use perfmon::{MockClock, Monitor};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tracing_subscriber::layer::SubscriberExt;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn dispatch(monitor: &Monitor) -> tracing::Dispatch {
    tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()))
}

/// One finished pipeline with a 50% bottleneck, run on a mock clock.
fn run_pipeline(monitor: &Monitor, clock: &MockClock, id: &str) {
    tracing::dispatcher::with_default(&dispatch(monitor), || {
        let pipeline = monitor.start_pipeline(id);
        {
            let _a = perfmon::agent("physics");
            clock.advance(ms(50));
        }
        perfmon::agent("codegen").fail("did not compile");
        clock.advance(ms(50));
        pipeline.finish();
    });
}

async fn get(sidecar: &Sidecar, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(sidecar.local_addr())
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text[9..12].parse().unwrap();
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned(),
    )
}

async fn get_json(sidecar: &Sidecar, path: &str) -> Value {
    let (status, body) = get(sidecar, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Events (batches unpacked) until one satisfies `stop`.
async fn events_until(ws: &mut Ws, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let v = next_json(ws).await;
        let list = match v["type"].as_str() {
            Some("batch") => v["events"].as_array().unwrap().clone(),
            Some("welcome" | "snapshot" | "resumed") => continue,
            _ => vec![v],
        };
        for e in list {
            let done = stop(&e);
            out.push(e);
            if done {
                return out;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_endpoints_return_what_the_monitor_says() {
    let clock = MockClock::new();
    let monitor = Monitor::builder().mock_clock(&clock).metrics(false).build();
    run_pipeline(&monitor, &clock, "proj_1");
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    assert_ne!(sidecar.local_addr().port(), 0, "the real port");

    // Compared as text: the very bytes the monitor's own serialization gives
    // (parsing floats back may be off by an ulp).
    let (status, body) = get(&sidecar, "/api/performance/overview").await;
    assert_eq!(
        (status, body),
        (200, serde_json::to_string(&monitor.overview()).unwrap())
    );
    let overview = get_json(&sidecar, "/api/performance/overview").await;
    assert_eq!(overview["pipelines_total"], 1);
    assert_eq!(overview["agent_failures_total"], 1);
    let recent = get_json(&sidecar, "/api/performance/pipelines/recent?limit=5").await;
    assert_eq!(recent[0]["id"], "proj_1");
    let (status, body) = get(&sidecar, "/api/performance/pipeline/proj_1").await;
    assert_eq!(
        (status, body),
        (
            200,
            serde_json::to_string(&monitor.pipeline("proj_1").unwrap()).unwrap()
        )
    );
    let report = get_json(&sidecar, "/api/performance/pipeline/proj_1").await;
    assert_eq!(report["bottlenecks"][0]["agent"], "physics");
    assert_eq!(report["bottlenecks"][0]["share"], 0.5);
    assert_eq!(get(&sidecar, "/api/performance/pipeline/nope").await.0, 404);
    let slowest = get_json(&sidecar, "/api/performance/agents/slowest?limit=1").await;
    assert_eq!(slowest.as_array().unwrap().len(), 1);
    assert_eq!(slowest[0]["agent"], "physics");
    assert_eq!(
        get_json(&sidecar, "/api/performance/agents")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        get_json(&sidecar, "/api/performance/pipelines/active").await,
        Value::Array(vec![])
    );
    let status = get_json(&sidecar, "/api/performance/websocket/status").await;
    assert_eq!(status["connections_active"], 0);
    let (code, metrics) = get(&sidecar, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"perfmon_agent_runs_total{agent="codegen",outcome="failed"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("perfmon_pipelines_total 1"), "{metrics}");
    assert_eq!(get(&sidecar, "/healthz").await.0, 200);
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_live_and_resume_across_a_sidecar_restart() {
    let clock = MockClock::new();
    let monitor = Monitor::builder().mock_clock(&clock).metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let url = format!("ws://{}/ws", sidecar.local_addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");

    run_pipeline(&monitor, &clock, "first");
    let got = events_until(&mut ws, |e| e["type"] == "pipeline_completed").await;
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    let last_seen = *seqs.last().unwrap();
    assert_eq!(
        got.last().unwrap()["data"]["bottlenecks"][0]["agent"],
        "physics"
    );

    // A full restart: the sidecar goes away (clients get 1001), work goes on,
    // a new sidecar starts on the same monitor, the client resumes.
    let port = sidecar.local_addr().port();
    sidecar.shutdown();
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("expected close, got {other:?}"),
        }
    };
    assert_eq!(closed, 1001);
    run_pipeline(&monitor, &clock, "while_down");
    let sidecar = Sidecar::builder()
        .bind(format!("127.0.0.1:{port}"))
        .serve(&monitor)
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://{}/ws?since={last_seen}",
        sidecar.local_addr()
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let resumed = next_json(&mut ws).await;
    assert_eq!(
        (resumed["type"].as_str(), resumed["recovered"].as_bool()),
        (Some("resumed"), Some(true))
    );
    let got = events_until(&mut ws, |e| e["type"] == "pipeline_completed").await;
    assert_eq!(
        got[0]["seq"].as_u64(),
        Some(last_seen + 1),
        "nothing missed across the restart"
    );
    assert_eq!(got.last().unwrap()["pipeline"], "while_down");

    // A room: only its pipeline, after a snapshot of it.
    let (mut room, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/while_down", sidecar.local_addr()))
            .await
            .unwrap();
    assert_eq!(next_json(&mut room).await["type"], "welcome");
    let snapshot = next_json(&mut room).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["id"], "while_down");
    sidecar.shutdown();
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let monitor = Monitor::new();
    let first = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let err = Sidecar::builder()
        .bind(first.local_addr().to_string())
        .serve(&monitor)
        .unwrap_err();
    assert!(err.to_string().contains("could not listen"), "{err}");
    let err = Sidecar::builder()
        .bind("not an address")
        .serve(&monitor)
        .unwrap_err();
    assert!(err.to_string().contains("is not a socket address"), "{err}");
}

/// `(name, sorted labels)` of one series.
type Series = (String, Vec<(String, String)>);

/// The series of a Prometheus text page, with histogram lines folded into
/// their family (`_bucket`, `_sum`, `_count` and the `le` label dropped).
fn exposed_series(text: &str) -> BTreeSet<Series> {
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, _value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|family| histograms.contains(family))
                })
                .unwrap_or(name);
            let mut labels: Vec<(String, String)> = labels
                .trim_end_matches('}')
                .split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .filter(|(k, _)| k != "le")
                .collect();
            labels.sort();
            (name.to_owned(), labels)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_has_the_facades_families_label_sets_and_every_outcome() {
    // metrics-exporter-prometheus renders what the `metrics` facade got from
    // the same runs; the sidecar's page must say the same, family by family.
    let exporter = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&perfmon::metrics::DURATION_BUCKETS)
        .unwrap()
        .build_recorder();
    let handle = exporter.handle();
    let clock = MockClock::new();
    let monitor = Monitor::builder().mock_clock(&clock).build();
    metrics::with_local_recorder(&exporter, || {
        tracing::dispatcher::with_default(&dispatch(&monitor), || {
            let pipeline = monitor.start_pipeline("m");
            {
                let _a = perfmon::agent("physics");
                perfmon::usage!(input_tokens = 100, output_tokens = 20, cost_usd = 0.25);
                clock.advance(ms(40));
            }
            perfmon::agent("codegen").fail("did not compile");
            let crashed = std::panic::catch_unwind(|| {
                let _a = perfmon::agent("crashy");
                panic!("boom");
            });
            assert!(crashed.is_err());
            pipeline.finish();
            let cancelled = monitor.start_pipeline("c");
            drop(perfmon::TrackAgentExt::track_agent(
                std::future::pending::<()>(),
                "cancelled-agent",
            ));
            cancelled.fail("gave up");
        });
    });
    let rendered = handle.render();
    let ours = |name: &str| {
        [
            "perfmon_agent_",
            "perfmon_pipeline",
            "perfmon_tokens_",
            "perfmon_cost_",
        ]
        .iter()
        .any(|p| name.starts_with(p))
    };
    let facade: BTreeSet<Series> = exposed_series(&rendered)
        .into_iter()
        .filter(|(name, _)| ours(name))
        .collect();
    assert!(facade.len() >= 8, "the facade saw the runs: {rendered}");
    let types = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter(|l| ours(l))
            .map(str::to_owned)
            .collect()
    };

    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let (code, text) = get(&sidecar, "/metrics").await;
    sidecar.shutdown();
    assert_eq!(code, 200);
    let families: BTreeSet<&str> = facade.iter().map(|(name, _)| name.as_str()).collect();
    let exposed: BTreeSet<Series> = exposed_series(&text)
        .into_iter()
        .filter(|(name, _)| families.contains(name.as_str()))
        .collect();
    assert_eq!(
        exposed, facade,
        "/metrics and metrics-exporter-prometheus disagree on families or label sets\n{text}\n---\n{rendered}"
    );
    let facade_types = types(&rendered);
    let exposed_types: BTreeSet<String> = types(&text)
        .into_iter()
        .filter(|l| {
            facade_types
                .iter()
                .any(|t| t.split(' ').next() == l.split(' ').next())
        })
        .collect();
    assert_eq!(exposed_types, facade_types, "# TYPE lines differ");
    for line in [
        "# TYPE perfmon_agent_duration_seconds histogram",
        "# TYPE perfmon_pipeline_duration_seconds histogram",
        "# TYPE perfmon_agent_runs_total counter",
        "# HELP perfmon_agent_runs_total Finished agent runs, by agent and outcome.",
        r#"perfmon_agent_runs_total{agent="crashy",outcome="panicked"} 1"#,
        r#"perfmon_agent_runs_total{agent="cancelled-agent",outcome="cancelled"} 1"#,
        r#"perfmon_agent_runs_total{agent="codegen",outcome="failed"} 1"#,
        r#"perfmon_agent_duration_seconds_bucket{agent="physics",outcome="succeeded",le="0.05"} 1"#,
        r#"perfmon_pipeline_duration_seconds_count{outcome="failed"} 1"#,
        "# TYPE perfmon_spans_filtered_total counter",
        "perfmon_runs_outside_pipeline_total 0",
        "# TYPE perfmon_tokens_total counter",
        r#"perfmon_tokens_total{agent="physics",type="input"} 100"#,
        r#"perfmon_tokens_total{agent="physics",type="output"} 20"#,
        "# TYPE perfmon_cost_usd gauge",
        r#"perfmon_cost_usd{agent="physics"} 0.25"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing from\n{text}"
        );
    }
}

/// Connects from a thread of its own, says when the welcome arrived, then
/// returns the close code the server sent (`None`: the connection just ended).
fn client_until_close(
    addr: std::net::SocketAddr,
    connected: std::sync::mpsc::Sender<()>,
) -> std::thread::JoinHandle<Option<u16>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
                .await
                .unwrap();
            let welcome = ws.next().await.unwrap().unwrap();
            assert!(welcome.to_text().unwrap().contains("welcome"));
            connected.send(()).unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
                    Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) | Err(_) => return None,
                }
            }
        })
    })
}

/// What `#[tokio::main]` does: the runtime ends as soon as `main` returns.
/// For the sidecar on its own thread (the default) and on the host's runtime.
#[test]
fn clients_get_1001_when_main_returns_right_after_shutdown() {
    for own_thread in [true, false] {
        main_returns_right_after_shutdown(own_thread);
    }
}

fn main_returns_right_after_shutdown(own_thread: bool) {
    let monitor = Monitor::builder().metrics(false).build();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let client = runtime.block_on(async {
        let sidecar = Sidecar::builder()
            .bind("127.0.0.1:0")
            .own_thread(own_thread)
            .serve(&monitor)
            .unwrap();
        let client = client_until_close(sidecar.local_addr(), connected_tx);
        tokio::task::block_in_place(|| connected.recv_timeout(Duration::from_secs(10)).unwrap());
        sidecar.shutdown();
        client
    });
    drop(runtime);
    assert_eq!(
        client.join().unwrap(),
        Some(1001),
        "going away, resume with ?since= (own thread: {own_thread})"
    );
}

/// On a current-thread runtime, `close().await` is the form that waits.
#[test]
fn close_awaits_the_close_frames_on_a_current_thread_runtime() {
    for own_thread in [true, false] {
        close_awaits_on_a_current_thread_runtime(own_thread);
    }
}

fn close_awaits_on_a_current_thread_runtime(own_thread: bool) {
    let monitor = Monitor::builder().metrics(false).build();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (connected_tx, connected) = std::sync::mpsc::channel();
    let client = runtime.block_on(async {
        let sidecar = Sidecar::builder()
            .bind("127.0.0.1:0")
            .own_thread(own_thread)
            .serve(&monitor)
            .unwrap();
        let client = client_until_close(sidecar.local_addr(), connected_tx);
        while connected.try_recv().is_err() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        sidecar.close().await;
        client
    });
    drop(runtime);
    assert_eq!(
        client.join().unwrap(),
        Some(1001),
        "own thread: {own_thread}"
    );
}

/// By default the sidecar serves from its own thread even when started
/// inside a runtime: a host whose runtime is busy (here: its only worker
/// blocked) still gets its dashboard answered, and nothing the sidecar's
/// clients do runs on the host's workers. With `own_thread(false)` it shares
/// the host's runtime and the same request waits for the host.
#[test]
fn the_sidecar_serves_from_its_own_thread_unless_told_to_share_the_runtime() {
    for own_thread in [true, false] {
        let monitor = Monitor::builder().metrics(false).build();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answered = runtime.block_on(async {
            let sidecar = Sidecar::builder()
                .bind("127.0.0.1:0")
                .own_thread(own_thread)
                .serve(&monitor)
                .unwrap();
            let addr = sidecar.local_addr();
            let (tx, rx) = std::sync::mpsc::channel();
            let asker = std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(addr).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_millis(1500)))
                    .unwrap();
                std::io::Write::write_all(
                    &mut stream,
                    format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                let mut buf = [0u8; 64];
                let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
                tx.send(buf[..n].starts_with(b"HTTP/1.1 200")).unwrap();
            });
            // The host's one worker is busy (blocked) while the request is made.
            let answered = rx.recv_timeout(Duration::from_secs(3)).unwrap_or(false);
            asker.join().unwrap();
            sidecar.close().await;
            answered
        });
        assert_eq!(
            answered, own_thread,
            "answered while the host's runtime was blocked (own thread: {own_thread})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_alert_endpoints_answer_from_the_file_and_the_rules() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("perfmon.db");
    // One pipeline before a restart...
    {
        let clock = MockClock::new();
        let history = perfmon::History::open(&path).unwrap();
        let monitor = Monitor::builder()
            .mock_clock(&clock)
            .metrics(false)
            .history(history)
            .build();
        run_pipeline(&monitor, &clock, "proj_1");
    }
    // ...and one after.
    let clock = MockClock::new();
    let monitor = Monitor::builder()
        .mock_clock(&clock)
        .metrics(false)
        .history(perfmon::History::open(&path).unwrap())
        .alert(
            perfmon::AlertRule::failure_rate_above("codegen", 0.5)
                .named("codegen")
                .min_runs(1),
        )
        .build();
    run_pipeline(&monitor, &clock, "proj_2");
    monitor.flush().unwrap();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();

    let page = get_json(
        &sidecar,
        "/api/performance/history/pipelines?agent=physics&limit=1",
    )
    .await;
    assert_eq!(page["pipelines"][0]["report"]["id"], "proj_2");
    let next = page["next"].as_str().expect("a second page");
    let older = get_json(
        &sidecar,
        &format!("/api/performance/history/pipelines?agent=physics&cursor={next}"),
    )
    .await;
    assert_eq!(
        older["pipelines"][0]["report"]["id"], "proj_1",
        "from before the restart"
    );
    assert_eq!(older["pipelines"][0]["session"], 1);
    assert_eq!(older["next"], Value::Null);
    let failed = get_json(
        &sidecar,
        "/api/performance/history/pipelines?outcome=failed",
    )
    .await;
    assert_eq!(failed["pipelines"], Value::Array(vec![]));
    // The recent list and the pipeline endpoint reach back into the file.
    let recent = get_json(&sidecar, "/api/performance/pipelines/recent?limit=5").await;
    let ids: Vec<&str> = recent
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["proj_2", "proj_1"]);
    assert_eq!(
        get_json(&sidecar, "/api/performance/pipeline/proj_1").await["id"],
        "proj_1"
    );

    let trend = get_json(
        &sidecar,
        "/api/performance/history/agents/physics?bucket=minute",
    )
    .await;
    let runs: u64 = trend
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["runs"].as_u64().unwrap())
        .sum();
    assert_eq!(runs, 2);
    // Percentiles come from the histograms: within their 1% precision.
    let p50 = trend[0]["p50_ms"].as_f64().unwrap();
    assert!((p50 - 50.0).abs() <= 0.5, "{trend}");
    let kind = get_json(&sidecar, "/api/performance/history/kinds/proj?bucket=day").await;
    assert_eq!(kind[0]["runs"], 2);
    let agents = get_json(&sidecar, "/api/performance/history/agents").await;
    assert_eq!(agents.as_array().unwrap().len(), 2);
    let cmp = get_json(&sidecar, "/api/performance/history/compare?agent=physics").await;
    assert_eq!(cmp["subject"], "agent");
    assert!(cmp["after"]["runs"].as_u64().is_some(), "{cmp}");
    let status = get_json(&sidecar, "/api/performance/history/status").await;
    assert_eq!(status["session"], 2);
    assert_eq!(status["stats"]["pipelines_written"], 1);

    let (code, body) = get(
        &sidecar,
        "/api/performance/history/pipelines?from=yesterday",
    )
    .await;
    assert_eq!(code, 400);
    assert!(body.contains("RFC 3339"), "{body}");
    let rfc = get_json(
        &sidecar,
        "/api/performance/history/pipelines?from=2000-01-01T00:00:00Z",
    )
    .await;
    assert_eq!(rfc["pipelines"].as_array().unwrap().len(), 2);
    let (code, body) = get(&sidecar, "/api/performance/history/compare").await;
    assert_eq!(code, 400, "{body}");

    let alerts = get_json(&sidecar, "/api/performance/alerts").await;
    assert_eq!(alerts["alerts"][0]["rule"], "codegen");
    assert_eq!(alerts["alerts"][0]["state"], "firing");
    assert_eq!(alerts["webhooks"], Value::Array(vec![]));
    monitor.flush().unwrap();
    let stored = get_json(&sidecar, "/api/performance/history/alerts").await;
    assert_eq!(stored[0]["rule"], "codegen");
    assert_eq!(stored[0]["state"], "firing");
    assert_eq!(stored[0]["session"], 2);
    sidecar.shutdown();

    // Without a history the endpoints say how to turn it on.
    let plain = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&plain)
        .unwrap();
    let (code, body) = get(&sidecar, "/api/performance/history/pipelines").await;
    assert_eq!(code, 404);
    assert!(body.contains(".history("), "{body}");
    sidecar.shutdown();
}
