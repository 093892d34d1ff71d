//! The `perfmon` command against a live sidecar: `top` in a real terminal
//! (a detached tmux session, driven with `send-keys`, read with
//! `capture-pane`), and `tail`, `report`, `agents` with their output and
//! exit codes.
//!
//! Needs tmux (Debian's package) for the terminal test: skips without it,
//! unless `PERFMON_TMUX_TESTS=require` (as `.ci/run` sets).
#![cfg(feature = "cli")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use perfmon::Monitor;
use perfmon::ws::Sidecar;
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

const PERFMON: &str = env!("CARGO_BIN_EXE_perfmon");

/// Pipelines every 200 ms until stopped: planner, physics (slow, with
/// progress: the bottleneck), codegen (fails every third pipeline).
fn scripted(monitor: &Monitor, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let monitor = monitor.clone();
    std::thread::spawn(move || {
        let dispatch = tracing::Dispatch::new(tracing_subscriber::registry().with(monitor.layer()));
        tracing::dispatcher::with_default(&dispatch, || {
            let mut n = 0;
            while !stop.load(Ordering::Acquire) {
                let p = monitor.start_pipeline(format!("job_{n}"));
                drop(perfmon::agent("planner"));
                {
                    let _physics = perfmon::agent("physics");
                    perfmon::progress!(percent = 50.0, stage = "meshing");
                    perfmon::thought!("coarse mesh first");
                    std::thread::sleep(Duration::from_millis(120));
                }
                let codegen = perfmon::agent("codegen");
                if n % 3 == 0 {
                    codegen.fail("rustc: mismatched types");
                } else {
                    drop(codegen);
                }
                let _ = p.finish();
                n += 1;
                std::thread::sleep(Duration::from_millis(80));
            }
        });
    })
}

fn serve(monitor: &Monitor, bind: &str, token: Option<&str>) -> Sidecar {
    let mut b = Sidecar::builder().bind(bind);
    if let Some(t) = token {
        b = b.token(t);
    }
    b.serve(monitor).unwrap()
}

fn perfmon(args: &[&str]) -> Output {
    Command::new(PERFMON)
        .args(args)
        .env_remove("PERFMON_TOKEN")
        .output()
        .unwrap()
}

/// `perfmon tail ARGS --token s3cret` for `run`, then Ctrl-C (SIGINT).
fn tail_for(args: &[&str], run: Duration) -> Output {
    let child = Command::new(PERFMON)
        .arg("tail")
        .args(args)
        .args(["--token", "s3cret"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(run);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls the pane until `want` holds, for up to 20 s.
fn pane_until(session: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if want(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the pane shows:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn keys(session: &str, keys: &[&str]) {
    for k in keys {
        tmux(&["send-keys", "-t", session, k]);
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[test]
fn top_in_a_real_terminal_selects_sorts_filters_and_goes_live_again_after_a_restart() {
    let have_tmux = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_tmux {
        assert!(
            std::env::var("PERFMON_TMUX_TESTS").as_deref() != Ok("require"),
            "PERFMON_TMUX_TESTS=require, but no tmux: apt-get install tmux"
        );
        eprintln!("skipped: no tmux (apt-get install tmux)");
        return;
    }
    let monitor = Monitor::new();
    let stop = Arc::new(AtomicBool::new(false));
    let script = scripted(&monitor, Arc::clone(&stop));
    let sidecar = serve(&monitor, "127.0.0.1:0", None);
    let addr: SocketAddr = sidecar.local_addr();
    let session = format!("perfmon-top-{}", std::process::id());
    let command = format!("{PERFMON} top http://{addr}");
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "120",
        "-y",
        "36",
        &command,
    ]);

    let screen = pane_until(&session, "the live view with a finished pipeline", |s| {
        s.contains("● live") && s.contains("◆ physics") && s.contains("succeeded")
    });
    assert!(screen.contains("agents by p99"), "{screen}");
    pane_until(&session, "the failures pane", |s| {
        s.contains("rustc: mismatched types")
    });

    // Select a finished pipeline, open its timeline.
    keys(&session, &["Down", "Down", "Enter"]);
    let screen = pane_until(&session, "a pipeline's timeline", |s| {
        s.contains("critical path:")
    });
    assert!(screen.contains("BOTTLENECK"), "{screen}");
    assert!(screen.contains("*physics"), "{screen}");
    keys(&session, &["Escape", "s"]);
    pane_until(&session, "sorted by p50", |s| s.contains("agents by p50"));
    keys(&session, &["/", "c", "o", "d", "Enter"]);
    let screen = pane_until(&session, "the filter", |s| s.contains("[cod]"));
    assert!(!screen.contains("  physics "), "filtered out: {screen}");
    keys(&session, &["/", "Escape"]);

    // The sidecar restarts on the same port: the view reconnects, resumes
    // from the monitor's ring, and shows no gap notice.
    sidecar.shutdown();
    pane_until(&session, "the view noticing", |s| s.contains("connecting"));
    let sidecar = serve(&monitor, &addr.to_string(), None);
    let screen = pane_until(&session, "live again", |s| s.contains("● live"));
    std::thread::sleep(Duration::from_millis(1500));
    let later = tmux(&["capture-pane", "-p", "-t", &session]);
    assert!(
        !later.contains("reloaded from the server"),
        "no gap notice: {screen}\n{later}"
    );

    keys(&session, &["q"]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Command::new("tmux")
        .args(["has-session", "-t", &session])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(Instant::now() < deadline, "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    script.join().unwrap();
    sidecar.shutdown();
}

#[test]
fn tail_report_and_agents_print_and_exit_as_scripts_expect() {
    let monitor = Monitor::new();
    // The sidecar first: its replay ring then holds every event from seq 1.
    let sidecar = serve(&monitor, "127.0.0.1:0", Some("s3cret"));
    let stop = Arc::new(AtomicBool::new(false));
    let script = scripted(&monitor, Arc::clone(&stop));
    let url = format!("http://{}", sidecar.local_addr());
    // Wait for a finished pipeline.
    let deadline = Instant::now() + Duration::from_secs(20);
    while monitor.recent_pipelines(2).len() < 2 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }

    let out = perfmon(&[
        "agents", &url, "--token", "s3cret", "--json", "--sort", "p99",
    ]);
    assert!(out.status.success(), "{out:?}");
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents[0]["agent"], "physics", "slowest p99 first: {agents}");
    let out = perfmon(&["agents", &url, "--token", "s3cret", "--limit", "2"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "a header and two rows: {text}");

    let out = perfmon(&["report", &url, "--token", "s3cret"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("pipeline job_"), "{text}");
    assert!(text.contains("critical path:"), "{text}");
    let out = perfmon(&["report", &url, "job_1", "--token", "s3cret", "--json"]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["id"], "job_1");
    assert_eq!(report["outcome"], "succeeded");

    // Clear one-line errors and exit 1.
    let out = perfmon(&["report", &url, "no_such", "--token", "s3cret"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no pipeline \"no_such\""),
        "{out:?}"
    );
    let out = perfmon(&["agents", &url, "--token", "wrong"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the token") && err.lines().count() == 1,
        "{err}"
    );
    let out = perfmon(&["agents", "http://127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach"),
        "{out:?}"
    );
    // PERFMON_TOKEN works like --token.
    let out = Command::new(PERFMON)
        .args(["agents", &url])
        .env("PERFMON_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // tail: server-side filters, JSON lines, exit 0 on Ctrl-C (SIGINT).
    let out = tail_for(
        &[
            &url,
            "--type",
            "agent_completed",
            "--agent",
            "codegen",
            "--json",
        ],
        Duration::from_millis(1500),
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|e| e["type"] == "agent_completed" && e["data"]["agent"] == "codegen"),
        "{lines:?}"
    );
    // --since replays what the server still has.
    let out = tail_for(
        &[&url, "--since", "0", "--type", "pipeline_started"],
        Duration::from_millis(1000),
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("pipeline_started") && l.contains("job_0")),
        "{text}"
    );

    stop.store(true, Ordering::Release);
    script.join().unwrap();
    sidecar.shutdown();
}
