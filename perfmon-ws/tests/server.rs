//! The server over loopback: fan-out, rooms, filters, resume, limits, auth,
//! shutdown. Every test binds 127.0.0.1:0 and ends by itself.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use perfmon_ws::{Backend, BearerToken, Config, Priority, Reply, Server, ServerInfo, item};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct TestBackend;

impl Backend for TestBackend {
    fn snapshot(&self, topic: Option<&str>) -> Option<Value> {
        match topic {
            Some("known") | None => Some(json!({"state": "running"})),
            _ => None,
        }
    }

    fn get(&self, path: &str, _query: &str, info: &ServerInfo<'_>) -> Option<Reply> {
        (path == "/api/hello")
            .then(|| Reply::json(&json!({"hello": "world", "last_seq": info.last_seq})))
    }
}

fn start(config: Config) -> Server {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hub = Arc::new(perfmon_ws::Hub::new(config.ring_capacity));
    Server::start(listener, config, Arc::new(TestBackend), hub).unwrap()
}

async fn connect(server: &Server, path: &str) -> Ws {
    let url = format!("ws://{}{}", server.local_addr(), path);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect")
        .0
}

/// The next text message as JSON, skipping pings; panics after 5 s.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
            .expect("stream open")
            .expect("no error");
        match msg {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Events in arrival order, unpacking batches, until `n` were read.
async fn events(ws: &mut Ws, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("batch") => out.extend(v["events"].as_array().unwrap().iter().cloned()),
            Some("event") => out.push(v),
            other => panic!("expected events, got {other:?}: {v}"),
        }
    }
    out
}

fn publish(server: &Server, seq: u64, topic: &str, kind: &str, priority: Priority) {
    let body = json!({"type": "event", "seq": seq, "pipeline": topic, "kind": kind}).to_string();
    server.hub().publish(item(
        seq,
        Some(topic.into()),
        kind.into(),
        Some("agent-a".into()),
        priority,
        body,
    ));
}

async fn closed_with(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed within 5 s")
        {
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn welcome_then_fan_out_to_every_client_in_order() {
    let server = start(Config::default());
    let mut a = connect(&server, "/ws").await;
    let mut b = connect(&server, "/ws").await;
    for ws in [&mut a, &mut b] {
        let welcome = next_json(ws).await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["protocol"], "perfmon.v1");
        assert_eq!(welcome["last_seq"], 0);
    }
    for seq in 1..=100 {
        publish(&server, seq, "p1", "agent_completed", Priority::High);
    }
    for ws in [&mut a, &mut b] {
        let got = events(ws, 100).await;
        let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    }
    let status: Value = reqwest_get(&server, "/api/performance/websocket/status")
        .await
        .1;
    assert_eq!(status["connections_active"], 2);
    assert!(
        status["messages_out"].as_u64().unwrap() >= 4,
        "batched: fewer frames than events"
    );
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn rooms_are_isolated_and_start_with_a_snapshot() {
    let server = start(Config::default());
    let mut room = connect(&server, "/ws/known").await;
    assert_eq!(next_json(&mut room).await["type"], "welcome");
    let snapshot = next_json(&mut room).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["data"]["state"], "running");
    publish(&server, 1, "other", "agent_started", Priority::High);
    publish(&server, 2, "known", "agent_started", Priority::High);
    let got = events(&mut room, 1).await;
    assert_eq!(got[0]["seq"], 2, "only its own pipeline's events");
}

#[tokio::test]
async fn subscribe_filters_by_type_and_ping_answers() {
    let server = start(Config::default());
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    ws.send(Message::text(
        r#"{"type":"subscribe","types":["pipeline_completed"]}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    publish(&server, 1, "p", "agent_progress", Priority::Low);
    publish(&server, 2, "p", "pipeline_completed", Priority::High);
    assert_eq!(events(&mut ws, 1).await[0]["seq"], 2);
    ws.send(Message::text(r#"{"type":"ping","id":9}"#))
        .await
        .unwrap();
    let pong = next_json(&mut ws).await;
    assert_eq!(
        (pong["type"].as_str(), pong["id"].as_u64()),
        (Some("pong"), Some(9))
    );
}

#[tokio::test]
async fn resume_with_since_is_gap_free_and_says_when_it_cannot_be() {
    let config = Config::default().ring_capacity(50);
    let server = start(config);
    for seq in 1..=40 {
        publish(&server, seq, "p", "agent_completed", Priority::High);
    }
    // The client saw up to 30, was cut off, and comes back.
    let mut ws = connect(&server, "/ws?since=30").await;
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let resumed = next_json(&mut ws).await;
    assert_eq!(resumed["type"], "resumed");
    assert_eq!(resumed["recovered"], true);
    assert_eq!(resumed["replayed"], 10);
    publish(&server, 41, "p", "agent_completed", Priority::High);
    let seqs: Vec<u64> = events(&mut ws, 11)
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (31..=41).collect::<Vec<_>>(),
        "missed events, then live, no gap, no duplicate"
    );

    for seq in 42..=100 {
        publish(&server, seq, "p", "agent_completed", Priority::High);
    }
    let _ = events(&mut ws, 59).await;
    ws.send(Message::text(r#"{"type":"replay","since":5}"#))
        .await
        .unwrap();
    let replay = next_json(&mut ws).await;
    assert_eq!(replay["type"], "resumed");
    assert_eq!(
        replay["recovered"], false,
        "seq 6..50 fell out of the 50-event ring"
    );
    assert_eq!(replay["oldest_seq"], 51);
}

#[tokio::test]
async fn bad_input_gets_an_error_and_the_connection_stays() {
    let server = start(Config::default());
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    for bad in [
        "not json",
        r#"{"type":"launch"}"#,
        r#"[1,2]"#,
        r#"{"type":"replay"}"#,
    ] {
        ws.send(Message::text(bad)).await.unwrap();
        let reply = next_json(&mut ws).await;
        assert_eq!(reply["type"], "error", "{bad}");
        assert_eq!(reply["code"], "bad_message");
    }
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "binary_not_supported");
    ws.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    assert_eq!(next_json(&mut ws).await["type"], "pong", "still served");
    ws.send(Message::text(
        r#"{"type":"get_snapshot","pipeline":"nope"}"#,
    ))
    .await
    .unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "not_found");
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let server = start(Config::default());
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    let _ = ws.send(Message::text("x".repeat(65 * 1024))).await;
    assert_eq!(closed_with(&mut ws).await, 1009);
    // The server is alive for others.
    let mut other = connect(&server, "/ws").await;
    assert_eq!(next_json(&mut other).await["type"], "welcome");
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_closed_with_1008() {
    let config = Config::default().rate_per_second(10.0).rate_burst(20);
    let server = start(config);
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    for _ in 0..60 {
        if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() {
            break;
        }
    }
    let mut saw_rate_limited = false;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answer")
        {
            Some(Ok(Message::Text(t))) => saw_rate_limited |= t.contains("rate_limited"),
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(saw_rate_limited, "an error before the close");
    assert_eq!(code, 1008);
}

async fn reqwest_get(server: &Server, path_and_query: &str) -> (u16, Value) {
    raw_get(server, path_and_query, &[]).await
}

/// A minimal HTTP/1.1 GET over loopback (no HTTP client dependency).
async fn raw_get(server: &Server, path_and_query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(server.local_addr()).await.unwrap();
    let mut req =
        format!("GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

#[tokio::test]
async fn tokens_and_origins_are_checked_before_the_upgrade() {
    let config = Config::default()
        .authorizer(BearerToken::new("s3cret"))
        .allowed_origins(Some(vec!["http://127.0.0.1:3000".into()]));
    let server = start(config);
    let url = format!("ws://{}/ws", server.local_addr());
    let err = tokio_tungstenite::connect_async(&url)
        .await
        .expect_err("no token");
    assert!(err.to_string().contains("401"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("{url}?token=wrong"))
        .await
        .expect_err("bad token");
    assert!(err.to_string().contains("401"), "{err}");
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}?token=s3cret"))
        .await
        .expect("query token");
    assert_eq!(next_json(&mut ws).await["type"], "welcome");
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", "Bearer s3cret".parse().unwrap());
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("bad origin");
    assert!(err.to_string().contains("403"), "{err}");

    assert_eq!(raw_get(&server, "/api/hello", &[]).await.0, 401);
    let (status, body) =
        raw_get(&server, "/api/hello", &[("Authorization", "Bearer s3cret")]).await;
    assert_eq!((status, body["hello"].as_str()), (200, Some("world")));
    assert_eq!(
        raw_get(&server, "/healthz", &[]).await.0,
        200,
        "health checks need no token"
    );
    assert_eq!(
        raw_get(
            &server,
            "/api/nothing",
            &[("Authorization", "Bearer s3cret")]
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    let server = start(Config::default().max_connections(2));
    let mut a = connect(&server, "/ws").await;
    let mut b = connect(&server, "/ws").await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let err = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.local_addr()))
        .await
        .expect_err("full");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_loses_low_priority_first_and_others_get_everything() {
    let config = Config::default().queue_capacity(256);
    let server = start(config);
    // The stalled client never reads; the kernel buffers fill, then its queue.
    let mut stalled = connect(&server, "/ws").await;
    let mut reader = connect(&server, "/ws").await;
    next_json(&mut reader).await;
    let total = 2_000u64;
    let big = "x".repeat(8_000);
    let reading = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            n += events(&mut reader, 1).await.len() as u64;
        }
        n
    });
    for seq in 1..=total {
        let priority = if seq % 10 == 0 {
            Priority::High
        } else {
            Priority::Low
        };
        let body = json!({"type": "event", "seq": seq, "pad": big}).to_string();
        server.hub().publish(item(
            seq,
            Some("p".into()),
            "e".into(),
            None,
            priority,
            body,
        ));
        if seq % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    let got = tokio::time::timeout(Duration::from_secs(20), reading)
        .await
        .expect("reader done")
        .unwrap();
    assert!(got >= total, "the reader that keeps up lost nothing");
    let status = reqwest_get(&server, "/api/performance/websocket/status")
        .await
        .1;
    // Its writer is blocked on the full socket: nothing is shed yet, but
    // the server shows it is behind.
    assert_eq!(
        status["connections_behind"], 1,
        "the stalled client is behind: {status}"
    );
    // Now drain the stalled client: a `dropped` notice, and the high-priority
    // events survived better than the low ones.
    let mut saw_dropped = false;
    let mut high = 0;
    let mut low = 0;
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(500), stalled.next()).await
    {
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["type"].as_str() {
            Some("dropped") => {
                saw_dropped = true;
                assert!(v["count"].as_u64().unwrap() > 0);
            }
            Some("batch") | Some("event") => {
                let list = if v["type"] == "batch" {
                    v["events"].as_array().unwrap().clone()
                } else {
                    vec![v]
                };
                for e in list {
                    if e["seq"].as_u64().unwrap() % 10 == 0 {
                        high += 1
                    } else {
                        low += 1
                    }
                }
            }
            _ => {}
        }
    }
    assert!(saw_dropped, "the stalled client is told");
    let status = reqwest_get(&server, "/api/performance/websocket/status")
        .await
        .1;
    assert!(
        status["dropped"].as_u64().unwrap() > 0,
        "what it lost is counted: {status}"
    );
    assert_eq!(status["connections_behind"], 0, "{status}");
    assert!(
        high * 9 > low,
        "high-priority events are kept first (high {high}, low {low})"
    );
}

#[tokio::test]
async fn shutdown_closes_every_client_with_1001() {
    let server = start(Config::default());
    let mut a = connect(&server, "/ws").await;
    let mut b = connect(&server, "/ws/known").await;
    next_json(&mut a).await;
    next_json(&mut b).await;
    let shutdown = tokio::spawn(server.shutdown(Duration::from_secs(2)));
    assert_eq!(closed_with(&mut a).await, 1001);
    assert_eq!(closed_with(&mut b).await, 1001);
    shutdown.await.unwrap();
}

#[tokio::test]
async fn a_silent_client_is_closed_with_4001() {
    let server = start(Config::default().idle_timeout(Duration::from_millis(300)));
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    // Send nothing: no command, no pong (the server's pings are 30 s apart).
    assert_eq!(closed_with(&mut ws).await, 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_counted() {
    let config = Config::default()
        .queue_capacity(16)
        .stall_limit(Duration::from_millis(300));
    let server = start(config);
    let mut ws = connect(&server, "/ws").await;
    next_json(&mut ws).await;
    let big = "y".repeat(16_000);
    // Never read: socket buffers fill, the queue sheds, the stall limit passes.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seq = 0;
    loop {
        let status = reqwest_get(&server, "/api/performance/websocket/status")
            .await
            .1;
        if status["slow_disconnects"].as_u64().unwrap() >= 1 {
            // The close completes right after the count.
            let mut active = status["connections_active"].as_u64().unwrap();
            for _ in 0..100 {
                if active == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                active = reqwest_get(&server, "/api/performance/websocket/status")
                    .await
                    .1["connections_active"]
                    .as_u64()
                    .unwrap();
            }
            assert_eq!(active, 0, "the connection is gone");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never cut off: {status}"
        );
        for _ in 0..200 {
            seq += 1;
            let body = json!({"type": "event", "seq": seq, "pad": big}).to_string();
            server
                .hub()
                .publish(item(seq, None, "e".into(), None, Priority::Low, body));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reading now: whatever was buffered, then the end (a 4000 close frame,
    // or a reset if the socket was too full to send one).
    let mut ended = false;
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 4000);
                ended = true;
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                ended = true;
                break;
            }
        }
    }
    assert!(ended, "the connection ended");
}

/// A handshake asking for the compressed subprotocol only.
fn deflate_request(server: &Server) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{}/ws", server.local_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "perfmon.v1.deflate".parse().unwrap(),
    );
    req
}

/// Reads frames for `window`, returning (wire bytes, decoded JSON texts).
async fn drain_frames(ws: &mut Ws, window: Duration) -> (usize, Vec<String>) {
    use std::io::Read as _;
    let mut wire = 0;
    let mut texts = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(window, ws.next()).await {
        match msg {
            Message::Text(t) => {
                wire += t.len();
                texts.push(t.to_string());
            }
            Message::Binary(b) => {
                wire += b.len();
                let mut text = String::new();
                flate2::read::ZlibDecoder::new(&b[..])
                    .read_to_string(&mut text)
                    .expect("valid zlib");
                texts.push(text);
            }
            _ => {}
        }
    }
    (wire, texts)
}

fn seqs_of(texts: &[String]) -> Vec<u64> {
    let mut seqs = Vec::new();
    for t in texts {
        let v: Value = serde_json::from_str(t).unwrap();
        match v["type"].as_str() {
            Some("batch") => seqs.extend(
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["seq"].as_u64().unwrap()),
            ),
            Some("welcome") => {}
            _ => seqs.push(v["seq"].as_u64().unwrap()),
        }
    }
    seqs
}

#[tokio::test]
async fn compressed_frames_carry_the_same_events_in_fewer_bytes() {
    let server = start(Config::default().compression(true));
    let mut plain = connect(&server, "/ws").await;
    let req = deflate_request(&server);
    let (mut deflated, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "perfmon.v1.deflate"
    );
    // A realistic stream: a pipeline's progress and completions, as perfmon sends them.
    let agents = ["planner", "geometry", "physics", "materials", "codegen"];
    for seq in 1..=500u64 {
        let agent = agents[(seq % 5) as usize];
        let body = if seq % 4 == 0 {
            json!({"type":"agent_completed","seq":seq,"ts":1.7953e12 + seq as f64,"pipeline":"proj_42",
                   "data":{"agent":agent,"duration_ms":412.7 + seq as f64,"busy_ms":0.31,"outcome":"succeeded","run":42}})
        } else {
            json!({"type":"agent_progress","seq":seq,"ts":1.7953e12 + seq as f64,"pipeline":"proj_42",
                   "data":{"agent":agent,"percent":(seq % 100) as f64,"stage":"meshing","message":null}})
        };
        server.hub().publish(item(
            seq,
            Some("proj_42".into()),
            "agent_progress".into(),
            None,
            Priority::High,
            body.to_string(),
        ));
        if seq % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
    let (plain_bytes, plain_texts) = drain_frames(&mut plain, Duration::from_millis(500)).await;
    let (deflated_bytes, deflated_texts) =
        drain_frames(&mut deflated, Duration::from_millis(500)).await;
    assert_eq!(seqs_of(&plain_texts), (1..=500).collect::<Vec<_>>());
    assert_eq!(
        seqs_of(&deflated_texts),
        (1..=500).collect::<Vec<_>>(),
        "the same events"
    );
    let ratio = deflated_bytes as f64 / plain_bytes as f64;
    println!(
        "perfmon.v1.deflate: {deflated_bytes} bytes vs {plain_bytes} plain = {:.1}%",
        ratio * 100.0
    );
    assert!(
        ratio < 0.5,
        "compression should at least halve a batched JSON stream: {ratio}"
    );
}

#[tokio::test]
async fn compression_is_off_unless_configured() {
    let server = start(Config::default());
    let req = deflate_request(&server);
    // The server does not offer it: the handshake fails, as a client asking
    // for only that subprotocol must expect (RFC 6455 §4.1).
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
}
