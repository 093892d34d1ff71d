//! Alert rules on a mock clock: fire, stay, resolve without flapping, the
//! window and minimum runs, pending time, their events, and webhooks to a
//! loopback receiver (retried, given up and counted, never delaying others).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{install, ms};
use perfmon::{AlertRule, AlertState, EventKind, MockClock, Monitor, MonitorBuilder};

fn run(clock: &MockClock, agent: &str, took: Duration, fail: bool) {
    let a = perfmon::agent(agent);
    clock.advance(took);
    if fail {
        a.fail("boom");
    }
}

fn state(monitor: &Monitor, rule: &str) -> perfmon::Alert {
    monitor
        .alerts()
        .into_iter()
        .find(|a| a.rule == rule)
        .expect("the rule is listed")
}

fn mocked(builder: MonitorBuilder) -> (Monitor, MockClock, tracing::subscriber::DefaultGuard) {
    let clock = MockClock::new();
    let (monitor, guard) = install(builder.mock_clock(&clock));
    (monitor, clock, guard)
}

#[test]
fn a_p99_rule_fires_stays_and_resolves_only_below_its_hysteresis() {
    let rule = AlertRule::agent_p99_above("physics", ms(100))
        .named("physics slow")
        .window(Duration::from_secs(60))
        .min_runs(3);
    let (monitor, clock, _g) = mocked(Monitor::builder().alert(rule));
    let mut events = monitor.subscribe();

    for _ in 0..5 {
        run(&clock, "physics", ms(50), false);
    }
    assert_eq!(state(&monitor, "physics slow").state, AlertState::Inactive);

    for _ in 0..5 {
        run(&clock, "physics", ms(150), false);
    }
    let firing = state(&monitor, "physics slow");
    assert_eq!(firing.state, AlertState::Firing, "{firing:?}");
    assert_eq!(firing.value, Some(150.0));
    assert_eq!(firing.runs, 10);
    assert!(firing.message.contains("150.0 ms"), "{}", firing.message);

    // The slow runs leave the window; the new ones hover just under the
    // line but above its hysteresis (90 ms): still firing, no flap.
    clock.advance(Duration::from_secs(61));
    for _ in 0..5 {
        run(&clock, "physics", ms(95), false);
    }
    let hovering = state(&monitor, "physics slow");
    assert_eq!(hovering.state, AlertState::Firing, "{hovering:?}");
    assert_eq!(hovering.value, Some(95.0));

    clock.advance(Duration::from_secs(61));
    for _ in 0..5 {
        run(&clock, "physics", ms(60), false);
    }
    assert_eq!(state(&monitor, "physics slow").state, AlertState::Resolved);

    monitor.flush().unwrap();
    let kinds: Vec<&'static str> = std::iter::from_fn(|| events.try_recv())
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::AlertFired(_) | EventKind::AlertResolved(_)
            )
        })
        .map(|e| e.type_name())
        .collect();
    assert_eq!(
        kinds,
        ["alert_fired", "alert_resolved"],
        "one of each: no flapping"
    );
}

#[test]
fn too_few_runs_are_not_judged_and_a_pending_rule_fires_only_after_its_time() {
    let rule = AlertRule::failure_rate_above("codegen", 0.2)
        .named("codegen failing")
        .min_runs(4)
        .for_at_least(Duration::from_secs(30));
    let (monitor, clock, _g) = mocked(Monitor::builder().alert(rule));
    for _ in 0..3 {
        run(&clock, "codegen", ms(5), true);
    }
    let early = state(&monitor, "codegen failing");
    assert_eq!(
        early.state,
        AlertState::Inactive,
        "3 runs < min_runs: {early:?}"
    );
    run(&clock, "codegen", ms(5), false);
    let pending = state(&monitor, "codegen failing");
    assert_eq!(pending.state, AlertState::Pending, "{pending:?}");
    assert_eq!(pending.value, Some(0.75));
    clock.advance(Duration::from_secs(31));
    assert_eq!(state(&monitor, "codegen failing").state, AlertState::Firing);
    // The window empties: the alert resolves rather than firing forever.
    clock.advance(Duration::from_secs(301));
    let gone = state(&monitor, "codegen failing");
    assert_eq!(gone.state, AlertState::Resolved, "{gone:?}");
    assert!(gone.message.contains("no runs"), "{}", gone.message);
}

#[test]
fn pipeline_silence_and_slow_pipeline_rules_fire() {
    let (monitor, clock, _g) = mocked(
        Monitor::builder()
            .alert(AlertRule::no_pipeline_for(Duration::from_secs(120)).named("stalled"))
            .alert(
                AlertRule::pipeline_duration_above(Duration::from_secs(2)).named("slow pipeline"),
            )
            .alert(
                AlertRule::bottleneck_share_above("physics", 0.5)
                    .named("physics bottleneck")
                    .min_runs(2),
            ),
    );
    for _ in 0..2 {
        let _p = monitor.start_pipeline("proj");
        run(&clock, "physics", Duration::from_secs(3), false);
    }
    assert_eq!(state(&monitor, "stalled").state, AlertState::Inactive);
    assert_eq!(state(&monitor, "slow pipeline").state, AlertState::Firing);
    let share = state(&monitor, "physics bottleneck");
    assert_eq!((share.state, share.value), (AlertState::Firing, Some(1.0)));
    clock.advance(Duration::from_secs(121));
    let stalled = state(&monitor, "stalled");
    assert_eq!(stalled.state, AlertState::Firing, "{stalled:?}");
    assert_eq!(stalled.unit, "s");
}

#[test]
fn dropped_events_fire_their_rule() {
    let (monitor, clock, _g) = mocked(
        Monitor::builder()
            .event_queue_capacity(1)
            .alert(AlertRule::events_dropped_above(10).named("dropping")),
    );
    let _events = monitor.subscribe();
    for _ in 0..200 {
        run(&clock, "physics", ms(1), false);
    }
    assert!(monitor.overview().events_dropped > 10);
    assert_eq!(state(&monitor, "dropping").state, AlertState::Firing);
}

/// A loopback HTTP receiver answering with the scripted statuses in turn
/// (the last one forever); `None` never answers.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    connections: Arc<Mutex<u32>>,
}

fn receiver(script: Vec<Option<u16>>) -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (b, c) = (Arc::clone(&bodies), Arc::clone(&connections));
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { return };
            *c.lock().unwrap() += 1;
            let status = script[i.min(script.len() - 1)];
            match status {
                None => held.push(stream),
                Some(status) => answer(stream, status, &b),
            }
        }
    });
    Receiver {
        url,
        bodies,
        connections,
    }
}

fn answer(stream: TcpStream, status: u16, bodies: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    if status == 200 {
        bodies
            .lock()
            .unwrap()
            .push(String::from_utf8(body).unwrap());
    }
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(ms(20));
    }
}

#[test]
fn webhooks_are_retried_after_a_500_given_up_after_their_limit_and_a_dead_one_delays_nothing() {
    let flaky = receiver(vec![Some(500), Some(200)]);
    let broken = receiver(vec![Some(503)]);
    let dead = receiver(vec![None]);
    let (monitor, clock, _g) = mocked(
        Monitor::builder()
            .alert(
                AlertRule::agent_mean_above("physics", ms(10))
                    .named("first")
                    .min_runs(1),
            )
            .alert(
                AlertRule::agent_mean_above("codegen", ms(10))
                    .named("second")
                    .min_runs(1),
            )
            .alert_webhook(&flaky.url)
            .alert_webhook(&broken.url)
            .alert_webhook(&dead.url)
            .alert_webhook_timeout(Duration::from_secs(60)),
    );
    run(&clock, "physics", ms(50), false);
    assert_eq!(state(&monitor, "first").state, AlertState::Firing);
    run(&clock, "codegen", ms(50), false);
    assert_eq!(state(&monitor, "second").state, AlertState::Firing);

    // The flaky receiver gets both alerts (the first after one retry)
    // while the dead one still holds its first request unanswered.
    wait_for("both alerts at the flaky webhook", || {
        flaky.bodies.lock().unwrap().len() == 2
    });
    let bodies = flaky.bodies.lock().unwrap().clone();
    let first: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(first["event"], "alert_fired");
    assert_eq!(first["alert"]["rule"], "first");
    assert_eq!(first["alert"]["state"], "firing");
    assert_eq!(
        *dead.connections.lock().unwrap(),
        1,
        "still on its first attempt"
    );

    wait_for("the broken webhook to give up on both", || {
        monitor.alert_webhooks()[1].failed == 2
    });
    let stats = monitor.alert_webhooks();
    assert_eq!(
        (stats[0].delivered, stats[0].retries, stats[0].failed),
        (2, 1, 0),
        "{stats:?}"
    );
    assert_eq!((stats[1].delivered, stats[1].retries), (0, 6), "{stats:?}");
    assert!(
        stats[1].last_error.as_deref().unwrap().contains("503"),
        "{stats:?}"
    );
    assert_eq!((stats[2].delivered, stats[2].failed), (0, 0), "{stats:?}");
    assert_eq!(
        *broken.connections.lock().unwrap(),
        8,
        "4 attempts for each alert"
    );
}
