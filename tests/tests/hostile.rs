//! The sidecar against hostile clients, on loopback, bounded: each test
//! does one bad thing, checks the answer, then checks that a well-behaved
//! client still receives events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use perfmon::Monitor;
use perfmon::ws::Sidecar;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing_subscriber::layer::SubscriberExt;

mod wire;

use wire::{raw_get, raw_ws, read_until};

/// A WebSocket upgrade with extra headers: `Ok` with the first message's
/// type, or the HTTP status it was refused with.
async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<String, String> {
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            let first = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .expect("a first message in time")
                .unwrap()
                .unwrap();
            let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
            Ok(v["type"].as_str().unwrap_or_default().to_owned())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            Err(resp.status().as_u16().to_string())
        }
        Err(other) => Err(other.to_string()),
    }
}

/// A well-behaved client connects and receives the events of a pipeline run now.
async fn a_good_client_still_gets_events(monitor: &Monitor, addr: SocketAddr, token: Option<&str>) {
    let url = match token {
        Some(t) => format!("ws://{addr}/ws?token={t}"),
        None => format!("ws://{addr}/ws"),
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("a good client connects");
    // After `welcome` the connection is attached to the hub: what is
    // published from now on reaches it.
    read_until(&mut ws, "welcome").await;
    run_pipeline(monitor, "after-the-attack");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the pipeline's events in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = msg
            && text.contains("pipeline_completed")
            && text.contains("after-the-attack")
        {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_and_hosts_are_refused_by_default() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    let own_origin = format!("http://{addr}");
    let host = addr.to_string();

    // Cross-site WebSocket hijacking: a page elsewhere opens the stream.
    assert_eq!(
        ws_connect(addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Err("403".into())
    );
    // ... or reads the REST API.
    let (status, body) = raw_get(
        addr,
        "/api/performance/overview",
        &[("Host", &host), ("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("allowed_origins"),
        "the refusal says what to set: {body}"
    );
    // DNS rebinding: the attacker's name resolves to 127.0.0.1.
    let (status, body) = raw_get(
        addr,
        "/api/performance/overview",
        &[("Host", "rebind.evil.example:9464")],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("allowed_hosts"), "{body}");
    assert_eq!(
        raw_get(addr, "/", &[("Host", "rebind.evil.example")])
            .await
            .0,
        403
    );

    // The sidecar's own page, and clients that are not browsers, get in.
    assert_eq!(
        ws_connect(addr, "/ws", &[("Origin", &own_origin)]).await,
        Ok("welcome".into())
    );
    assert_eq!(
        raw_get(addr, "/api/performance/overview", &[("Host", &host)])
            .await
            .0,
        200
    );
    assert_eq!(
        raw_get(
            addr,
            "/api/performance/overview",
            &[("Host", &format!("localhost:{}", addr.port()))]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        raw_get(addr, "/api/performance/overview", &[]).await.0,
        200,
        "no Host: not a browser"
    );
    assert_eq!(
        raw_get(addr, "/healthz", &[("Host", "anything")]).await.0,
        200
    );

    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();

    // What the allow-lists open, and only that.
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .allowed_origins(["https://grafana.example"])
        .allowed_hosts(["perfmon.internal"])
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    assert_eq!(
        ws_connect(addr, "/ws", &[("Origin", "https://grafana.example")]).await,
        Ok("welcome".into())
    );
    assert_eq!(
        ws_connect(addr, "/ws", &[("Origin", "http://evil.example")]).await,
        Err("403".into())
    );
    assert_eq!(
        raw_get(
            addr,
            "/api/performance/overview",
            &[("Host", "perfmon.internal")]
        )
        .await
        .0,
        200
    );
    assert_eq!(
        raw_get(
            addr,
            "/api/performance/overview",
            &[("Host", "other.internal")]
        )
        .await
        .0,
        403
    );
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_scheme_is_case_insensitive() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .token("s3cret")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let auth = format!("{scheme} s3cret");
        let (status, body) = raw_get(
            addr,
            "/api/performance/overview",
            &[("Authorization", &auth)],
        )
        .await;
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    for wrong in ["Basic czNjcmV0", "bearer wrong", "bearer"] {
        assert_eq!(
            raw_get(
                addr,
                "/api/performance/overview",
                &[("Authorization", wrong)]
            )
            .await
            .0,
            401,
            "{wrong}"
        );
    }
    assert_eq!(
        ws_connect(addr, "/ws", &[("Authorization", "bearer s3cret")]).await,
        Ok("welcome".into())
    );
    a_good_client_still_gets_events(&monitor, addr, Some("s3cret")).await;
    sidecar.shutdown();
}

/// Runs one small pipeline on a thread of its own, recorded by `monitor`.
fn run_pipeline(monitor: &Monitor, id: &'static str) {
    let monitor = monitor.clone();
    std::thread::spawn(move || {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
        tracing::dispatcher::with_default(&dispatch, || {
            let pipeline = monitor.start_pipeline(id);
            perfmon::agent("physics").succeed();
            pipeline.finish();
        });
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_resumed_events_do_not_count_as_latency() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    run_pipeline(&monitor, "old-news");
    // Old enough that counting them would put p99 above two seconds.
    tokio::time::sleep(Duration::from_millis(2_100)).await;

    // One client resumes from the start, another asks for a replay.
    let (mut resumed, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?since=0"))
        .await
        .unwrap();
    read_until(&mut resumed, "old-news").await;
    let (mut replayer, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    read_until(&mut replayer, "welcome").await;
    replayer
        .send(Message::Text(r#"{"type":"replay","since":0}"#.into()))
        .await
        .unwrap();
    read_until(&mut replayer, "old-news").await;

    // Live events are what the figure is about.
    run_pipeline(&monitor, "live");
    read_until(&mut resumed, "live").await;
    read_until(&mut replayer, "live").await;
    let (status, body) = raw_get(addr, "/api/performance/websocket/status", &[]).await;
    assert_eq!(status, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    let p99 = status["latency_p99_ms"].as_f64().unwrap();
    assert!(p99 > 0.0, "live events were measured: {status}");
    assert!(
        p99 < 2_000.0,
        "replayed events counted as latency: {status}"
    );
    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deflate_only_client_is_refused_when_compression_is_off() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    assert_eq!(
        ws_connect(
            addr,
            "/ws",
            &[("Sec-WebSocket-Protocol", "perfmon.v1.deflate")]
        )
        .await,
        Err("400".into()),
        "PROTOCOL.md: refused, rather than answered in plain text it did not ask for"
    );
    let (status, body) = raw_get(
        addr,
        "/ws",
        &[
            ("Host", &addr.to_string()),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Protocol", "perfmon.v1.deflate"),
        ],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("compression is off"), "{body}");
    // Falling back works, and so does a client that names no subprotocol.
    assert_eq!(
        ws_connect(
            addr,
            "/ws",
            &[("Sec-WebSocket-Protocol", "perfmon.v1.deflate, perfmon.v1")]
        )
        .await,
        Ok("welcome".into())
    );
    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8000_name_filter_update_is_answered_and_others_are_unaffected() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    read_until(&mut ws, "welcome").await;
    // Short names, so that the list fits in one 64 KiB message.
    let names: Vec<String> = (0..8_000).map(|i| format!("{i:x}")).collect();
    let list = serde_json::to_string(&names).unwrap();
    let started = std::time::Instant::now();
    ws.send(Message::Text(
        format!(r#"{{"type":"subscribe","pipelines":{list}}}"#).into(),
    ))
    .await
    .unwrap();
    let subscribed = next_of_type(&mut ws, "subscribed").await;
    assert_eq!(subscribed["pipelines"].as_array().unwrap().len(), 8_000);
    // Remove all but one, sent in reverse order (a list scan per name
    // would be 8,000 × 8,000 comparisons).
    let mut gone: Vec<&String> = names.iter().skip(1).collect();
    gone.reverse();
    let gone = serde_json::to_string(&gone).unwrap();
    ws.send(Message::Text(
        format!(r#"{{"type":"unsubscribe","pipelines":{gone}}}"#).into(),
    ))
    .await
    .unwrap();
    let subscribed = next_of_type(&mut ws, "subscribed").await;
    assert_eq!(subscribed["pipelines"], serde_json::json!(["0"]));
    println!(
        "subscribe + unsubscribe of 8,000 names answered in {:?}",
        started.elapsed()
    );
    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

/// The next message of `kind`, skipping others.
async fn next_of_type(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    kind: &str,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("a {kind} in time"))
            .unwrap()
            .unwrap();
        if let Ok(text) = msg.to_text()
            && let Ok(v) = serde_json::from_str::<Value>(text)
            && v["type"] == kind
        {
            return v;
        }
    }
}

/// Reads from `stream` until the server closes it; `Err` if it is still
/// open after `limit`.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Result<(), String> {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(format!("still open after {limit:?}")),
            Ok(Ok(0) | Err(_)) => return Ok(()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_slow_and_idle_requests_are_cut_off_before_they_cost_anything() {
    let monitor = Monitor::builder().metrics(false).build();
    let config = perfmon::ws::Config::default()
        .header_timeout(Duration::from_secs(1))
        .max_pending_connections(20);
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .config(config)
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();

    // A 100 KiB header value: 431, not a 101 or a 400 KiB buffer.
    let big = "x".repeat(100 * 1024);
    let (status, _) = raw_get(addr, "/ws", &[("X-Big", &big)]).await;
    assert_eq!(status, 431);

    // Connections that send nothing are closed at the header timeout.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Slowloris: a header trickled one byte at a time never completes.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let trickle = tokio::spawn(async move {
        for b in b"GET /api/performance/overview HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " {
            if slow.write_all(&[*b]).await.is_err() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        closed_within(&mut slow, Duration::from_secs(5)).await
    });
    // The pending cap: 10 idle + 1 slow + these 9 fill it; the next is closed at once.
    for _ in 0..9 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    closed_within(&mut over, Duration::from_millis(900))
        .await
        .expect("a connection over the pending cap is closed at once");
    for stream in &mut idle {
        closed_within(stream, Duration::from_secs(5))
            .await
            .expect("an idle connection is closed at the header timeout");
    }
    trickle
        .await
        .unwrap()
        .expect("a slowloris connection is closed at the header timeout");

    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_cannot_pile_up_one_is_sent_at_a_time() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    // About 5,000 events in the ring: 1,250 pipelines of four events.
    let m = monitor.clone();
    std::thread::spawn(move || {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(m.layer()));
        tracing::dispatcher::with_default(&dispatch, || {
            for _ in 0..1_250 {
                let pipeline = m.start_pipeline("ring-filler");
                perfmon::agent("physics").succeed();
                pipeline.finish();
            }
        });
    })
    .join()
    .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    read_until(&mut ws, "welcome").await;
    // 150 replays of the whole ring, sent without reading (within the rate
    // limit's burst): 750,000 events if each were queued.
    for _ in 0..150 {
        ws.send(Message::Text(r#"{"type":"replay","since":0}"#.into()))
            .await
            .unwrap();
    }
    let (mut events, mut busy, mut resumed) = (0u64, 0u64, 0u64);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        let Ok(text) = msg.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap();
        match v["type"].as_str() {
            Some("batch") => events += v["events"].as_array().unwrap().len() as u64,
            Some("resumed") => resumed += 1,
            Some("error") if v["code"] == "replay_busy" => busy += 1,
            Some(_) => events += 1,
            None => {}
        }
    }
    println!("{resumed} replays served ({events} events), {busy} refused as busy");
    assert_eq!(resumed + busy, 150, "every replay got an answer");
    assert!(
        busy >= 100,
        "replays piled up: {resumed} served, {busy} refused"
    );
    assert!(
        events <= resumed * 5_100,
        "{events} events for {resumed} replays"
    );
    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

/// A client frame: FIN + `first` bits and opcode in one byte, masked payload.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n < 65_536 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads server frames until the connection ends; returns the close code
/// the server sent, if a close frame arrived whole.
async fn close_code(stream: &mut tokio::net::TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    // Server frames are unmasked: walk them.
    let mut at = 0;
    while at + 2 <= buf.len() {
        let opcode = buf[at] & 0x0f;
        let (len, header) = match buf[at + 1] & 0x7f {
            126 if at + 4 <= buf.len() => {
                (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
            }
            127 if at + 10 <= buf.len() => (
                u64::from_be_bytes(buf[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n if n < 126 => (n as usize, 2),
            _ => return None,
        };
        let body = buf.get(at + header..at + header + len)?;
        if opcode == 0x8 {
            return body.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
        at += header + len;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_get_their_close_code() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();
    let cases: [(&str, Vec<u8>, u16); 6] = [
        (
            "invalid UTF-8 in a text frame",
            frame(0x81, &[0xff, 0xfe, 0xfd], true),
            1007,
        ),
        (
            "an unmasked client frame",
            frame(0x81, br#"{"type":"ping"}"#, false),
            1002,
        ),
        (
            "RSV bits set",
            frame(0x81 | 0x40, br#"{"type":"ping"}"#, true),
            1002,
        ),
        ("a reserved opcode", frame(0x83, b"x", true), 1002),
        (
            "a 126-byte control frame",
            frame(0x89, &[0u8; 126], true),
            1002,
        ),
        ("a stray continuation", frame(0x80, b"x", true), 1002),
    ];
    for (what, bytes, code) in cases {
        let mut ws = raw_ws(addr).await;
        ws.write_all(&bytes).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(code), "{what}");
    }
    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_arrive_at_clients_that_keep_sending() {
    let monitor = Monitor::builder().metrics(false).build();
    let sidecar = Sidecar::builder()
        .bind("127.0.0.1:0")
        .serve(&monitor)
        .unwrap();
    let addr = sidecar.local_addr();

    // A flood: 5,000 pings written without reading. The server answers
    // some, then closes with 1008; the close must arrive, not a reset.
    let mut ws = raw_ws(addr).await;
    let ping = frame(0x81, br#"{"type":"ping"}"#, true);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 5_000)
        .collect();
    let _ = ws.write_all(&flood).await;
    assert_eq!(close_code(&mut ws).await, Some(1008), "flood");

    // An oversized message (1 MiB, over the 64 KiB limit), still being
    // written when the server closes with 1009.
    let mut ws = raw_ws(addr).await;
    let _ = ws
        .write_all(&frame(0x81, &vec![b'a'; 1024 * 1024], true))
        .await;
    assert_eq!(close_code(&mut ws).await, Some(1009), "too big");

    // A clean close handshake: the client's 1000 is answered.
    let mut ws = raw_ws(addr).await;
    ws.write_all(&frame(0x88, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        Some(1000),
        "a client's close is answered"
    );

    a_good_client_still_gets_events(&monitor, addr, None).await;
    sidecar.shutdown();
}
