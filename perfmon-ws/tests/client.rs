//! The Rust client: reconnect with resume across a server restart, giving up,
//! commands queued while disconnected. Loopback only, bounded.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use perfmon_ws::{
    Backend, Client, Config, ConnectionState, Hub, Priority, Received, Reply, Server, ServerInfo,
    item,
};
use serde_json::{Value, json};

struct NoBackend;

impl Backend for NoBackend {
    fn snapshot(&self, _: Option<&str>) -> Option<Value> {
        None
    }
    fn get(&self, _: &str, _: &str, _: &ServerInfo<'_>) -> Option<Reply> {
        None
    }
}

fn serve(addr: &str, hub: &Arc<Hub>) -> Server {
    let listener = std::net::TcpListener::bind(addr).unwrap();
    Server::start(
        listener,
        Config::default(),
        Arc::new(NoBackend),
        Arc::clone(hub),
    )
    .unwrap()
}

fn publish(hub: &Hub, seq: u64) {
    let body = json!({"type": "agent_completed", "seq": seq}).to_string();
    hub.publish(item(
        seq,
        Some("p".into()),
        "agent_completed".into(),
        None,
        Priority::High,
        body,
    ));
}

async fn next_event(client: &mut Client) -> u64 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.recv())
            .await
            .expect("in time")
            .expect("running")
        {
            Received::Event { seq, .. } => return seq,
            Received::Resumed { recovered, .. } => assert!(recovered, "nothing should be lost"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_resumes_without_a_gap_across_a_server_restart() {
    let hub = Arc::new(Hub::new(1_000));
    let server = serve("127.0.0.1:0", &hub);
    let addr = server.local_addr();
    let mut client = Client::builder(format!("ws://{addr}/ws"))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect();
    let mut states = client.state();
    let welcome = tokio::time::timeout(Duration::from_secs(5), client.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(welcome, Received::Welcome { last_seq: 0, .. }),
        "{welcome:?}"
    );
    for seq in 1..=10 {
        publish(&hub, seq);
    }
    for want in 1..=10 {
        assert_eq!(next_event(&mut client).await, want);
    }
    server.shutdown(Duration::from_secs(2)).await;
    // Wait until the client noticed.
    tokio::time::timeout(
        Duration::from_secs(5),
        states.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
    )
    .await
    .expect("noticed the restart")
    .unwrap();
    for seq in 11..=20 {
        publish(&hub, seq); // while no server runs
    }
    let server = serve(&addr.to_string(), &hub);
    publish(&hub, 21);
    for want in 11..=21 {
        assert_eq!(
            next_event(&mut client).await,
            want,
            "gap-free, no duplicates"
        );
    }
    assert_eq!(*client.state().borrow(), ConnectionState::Connected);
    server.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn gives_up_after_the_attempts_allowed() {
    // A port with nobody listening: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::builder(format!("ws://127.0.0.1:{port}/ws"))
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .max_attempts(3)
        .connect();
    let mut states = client.state();
    let gave_up = tokio::time::timeout(
        Duration::from_secs(10),
        states.wait_for(|s| matches!(s, ConnectionState::GaveUp { .. })),
    )
    .await
    .expect("gave up in time");
    assert!(gave_up.is_ok());
    assert!(
        client.send(&json!({"type": "ping"})).is_err(),
        "a stopped client refuses commands"
    );
}

#[tokio::test]
async fn commands_sent_before_connecting_are_delivered() {
    let hub = Arc::new(Hub::new(100));
    let server = serve("127.0.0.1:0", &hub);
    let mut client = Client::builder(format!("ws://{}/ws", server.local_addr())).connect();
    client
        .send(&json!({"type": "subscribe", "types": ["pipeline_completed"]}))
        .unwrap();
    client.send(&json!({"type": "ping", "id": 5})).unwrap();
    let mut saw = Vec::new();
    while saw.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), client.recv())
            .await
            .unwrap()
            .unwrap()
        {
            Received::Welcome { .. } => saw.push("welcome".to_owned()),
            Received::Other(v) => saw.push(v["type"].as_str().unwrap().to_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(saw, ["welcome", "subscribed", "pong"]);
    server.shutdown(Duration::from_secs(1)).await;
}
