//! `#[track_agent]` and `#[track_pipeline]` on every supported shape, checked
//! through the Monitor API.
#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{mocked, ms};
use perfmon::{MockClock, Outcome, PipelineReport};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Debug)]
struct MeshError(&'static str);

impl fmt::Display for MeshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mesh error: {}", self.0)
    }
}

#[perfmon::track_agent]
fn planner(clock: &MockClock) -> u32 {
    clock.advance(ms(10));
    3
}

#[perfmon::track_agent(name = "geo")]
fn geometry(clock: &MockClock, ok: bool) -> Result<u32, MeshError> {
    clock.advance(ms(20));
    if !ok {
        return Err(MeshError("did not converge"));
    }
    Ok(7)
}

#[perfmon::track_agent]
fn generic_len<T: AsRef<[u8]>>(data: T) -> usize {
    data.as_ref().len()
}

#[perfmon::track_agent]
fn evens(n: u32) -> impl Iterator<Item = u32> {
    (0..n).filter(|x| x % 2 == 0)
}

#[perfmon::track_agent]
fn fragile() {
    panic!("fragile agent");
}

#[perfmon::track_agent]
fn question_mark(input: &str) -> Result<u32, std::num::ParseIntError> {
    let n: u32 = input.parse()?;
    Ok(n * 2)
}

type Outcome2 = Result<(), String>;

#[perfmon::track_agent(err)]
fn aliased(fail: bool) -> Outcome2 {
    if fail {
        Err("alias failure".into())
    } else {
        Ok(())
    }
}

#[perfmon::track_agent]
async fn physics(clock: MockClock, x: u32) -> Result<f64, MeshError> {
    clock.advance(ms(30));
    tokio::task::yield_now().await;
    if x == 0 {
        Err(MeshError("zero"))
    } else {
        Ok(f64::from(x) * 1.5)
    }
}

#[perfmon::track_agent]
async fn never_finishes() {
    std::future::pending::<()>().await;
}

struct Solver {
    calls: u32,
}

impl Solver {
    #[perfmon::track_agent]
    fn by_ref(&self) -> u32 {
        self.calls
    }

    #[perfmon::track_agent(name = "solver_mut")]
    fn by_mut(&mut self) -> u32 {
        self.calls += 1;
        self.calls
    }

    #[perfmon::track_agent]
    async fn by_arc(self: Arc<Self>) -> u32 {
        self.calls * 10
    }

    #[perfmon::track_agent]
    fn by_value(mut self) -> u32 {
        self.calls += 100;
        self.calls
    }
}

#[async_trait::async_trait]
trait Agent {
    async fn run(&self, input: u32) -> Result<u32, MeshError>;
}

struct Codegen;

#[async_trait::async_trait]
impl Agent for Codegen {
    #[perfmon::track_agent(name = "codegen")]
    async fn run(&self, input: u32) -> Result<u32, MeshError> {
        tokio::task::yield_now().await;
        if input > 10 {
            Err(MeshError("too big"))
        } else {
            Ok(input + 1)
        }
    }
}

struct Project {
    id: String,
}

#[perfmon::track_pipeline(id = project.id.clone())]
fn run_sync(project: &Project, clock: &MockClock) -> u32 {
    planner(clock) + geometry(clock, true).unwrap_or(0)
}

#[perfmon::track_pipeline(id = format!("async-{}", project.id))]
async fn run_async(project: &Project, clock: MockClock, x: u32) -> Result<f64, MeshError> {
    let _ = project;
    physics(clock, x).await
}

fn outcomes(report: &PipelineReport) -> Vec<(&str, Outcome)> {
    report
        .agents
        .iter()
        .map(|r| (r.agent.as_str(), r.outcome.clone()))
        .collect()
}

#[test]
fn sync_functions_are_timed_named_and_failed_on_err() {
    let (monitor, clock, _g) = mocked();
    let pipeline = monitor.start_pipeline("sync");
    assert_eq!(planner(&clock), 3);
    assert_eq!(geometry(&clock, true).ok(), Some(7));
    assert!(geometry(&clock, false).is_err());
    assert_eq!(generic_len(vec![1u8, 2, 3]), 3);
    assert_eq!(generic_len("four"), 4);
    assert_eq!(evens(5).collect::<Vec<_>>(), [0, 2, 4]);
    assert_eq!(question_mark("21").ok(), Some(42));
    assert!(question_mark("x").is_err());
    assert!(aliased(true).is_err());
    let report = pipeline.finish();
    assert_eq!(
        outcomes(&report),
        [
            ("planner", Outcome::Succeeded),
            ("geo", Outcome::Succeeded),
            (
                "geo",
                Outcome::Failed {
                    error: "mesh error: did not converge".into()
                }
            ),
            ("generic_len", Outcome::Succeeded),
            ("generic_len", Outcome::Succeeded),
            ("evens", Outcome::Succeeded),
            ("question_mark", Outcome::Succeeded),
            (
                "question_mark",
                Outcome::Failed {
                    error: "invalid digit found in string".into()
                }
            ),
            (
                "aliased",
                Outcome::Failed {
                    error: "alias failure".into()
                }
            ),
        ]
    );
    assert_eq!(report.agents[0].duration, ms(10));
    assert_eq!(report.agents[1].duration, ms(20));
    assert_eq!(
        report.agents[0].busy, None,
        "sync functions report no busy time"
    );
    assert_eq!(
        monitor.agent_stats("geo").map(|s| (s.runs, s.failures)),
        Some((2, 1))
    );
}

#[test]
fn a_panicking_function_is_panicked() {
    let (monitor, _clock, _g) = mocked();
    assert!(std::panic::catch_unwind(fragile).is_err());
    let stats = monitor.agent_stats("fragile").expect("recorded");
    assert_eq!((stats.runs, stats.failures), (1, 1));
}

#[test]
fn methods_on_every_receiver() {
    let (monitor, _clock, _g) = mocked();
    let mut solver = Solver { calls: 0 };
    assert_eq!(solver.by_ref(), 0);
    assert_eq!(solver.by_mut(), 1);
    assert_eq!(solver.by_value(), 101);
    let arc = Arc::new(Solver { calls: 2 });
    let out = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(arc.by_arc());
    assert_eq!(out, 20);
    for agent in ["by_ref", "solver_mut", "by_value", "by_arc"] {
        assert_eq!(
            monitor.agent_stats(agent).map(|s| s.runs),
            Some(1),
            "{agent}"
        );
    }
}

#[tokio::test]
async fn async_functions_ok_err_and_cancelled() {
    let (monitor, clock, _g) = mocked();
    let work = async {
        let ok = physics(clock.clone(), 2).await;
        let err = physics(clock.clone(), 0).await;
        let cancelled = tokio::time::timeout(Duration::from_millis(5), never_finishes()).await;
        assert!(cancelled.is_err());
        (ok, err)
    };
    let ((ok, err), report) = monitor.track_pipeline("async", work).await;
    assert_eq!(ok.ok(), Some(3.0));
    assert!(err.is_err());
    assert_eq!(
        outcomes(&report),
        [
            ("physics", Outcome::Succeeded),
            (
                "physics",
                Outcome::Failed {
                    error: "mesh error: zero".into()
                }
            ),
            ("never_finishes", Outcome::Cancelled),
        ]
    );
    assert_eq!(report.agents[0].duration, ms(30));
    assert_eq!(
        report.agents[0].busy,
        Some(ms(30)),
        "all of it was spent being polled"
    );
}

#[tokio::test]
async fn under_async_trait() {
    let (monitor, _clock, _g) = mocked();
    let agent: Box<dyn Agent + Send + Sync> = Box::new(Codegen);
    assert_eq!(agent.run(1).await.ok(), Some(2));
    assert!(agent.run(11).await.is_err());
    let stats = monitor.agent_stats("codegen").expect("recorded");
    assert_eq!((stats.runs, stats.failures), (2, 1));
}

#[test]
fn track_pipeline_on_a_sync_function() {
    let (monitor, clock, _g) = mocked();
    let project = Project {
        id: "proj_42".into(),
    };
    assert_eq!(run_sync(&project, &clock), 10);
    let report = monitor
        .pipeline("proj_42")
        .expect("the pipeline was recorded under its id");
    assert!(report.finished);
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.duration, ms(30));
    let names: Vec<_> = report.agents.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(names, ["planner", "geo"]);
    assert_eq!(report.bottleneck("geo").map(|b| b.duration), Some(ms(20)));
}

#[tokio::test]
async fn track_pipeline_on_an_async_function_fails_on_err() {
    let (monitor, clock, _g) = mocked();
    let project = Project { id: "p".into() };
    assert!(run_async(&project, clock.clone(), 4).await.is_ok());
    assert!(run_async(&project, clock.clone(), 0).await.is_err());
    let recent = monitor.recent_pipelines(2);
    assert_eq!(recent[0].id, "async-p");
    assert_eq!(
        recent[0].outcome,
        Outcome::Failed {
            error: "mesh error: zero".into()
        }
    );
    assert_eq!(recent[1].outcome, Outcome::Succeeded);
    assert_eq!(recent[1].agents[0].agent, "physics");
}

/// Collects the fields of new spans, to check what the macros record.
#[derive(Clone, Default)]
struct Fields(Arc<Mutex<Vec<(String, String)>>>);

struct Collect<'a>(&'a mut Vec<(String, String)>);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Fields {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        attrs.record(&mut Collect(&mut self.0.lock().expect("not poisoned")));
    }
}

#[perfmon::track_agent]
fn records_nothing(input: Vec<u8>, level: u8) -> usize {
    input.len() + usize::from(level)
}

#[perfmon::track_agent(skip(input), fields(cells = input.len(), shape = %"cube", dbg = ?level))]
fn records_some(input: Vec<u8>, level: u8) -> usize {
    input.len() + usize::from(level)
}

#[test]
fn arguments_are_recorded_only_when_asked() {
    let fields = Fields::default();
    let monitor = perfmon::Monitor::builder().metrics(false).build();
    let subscriber = tracing_subscriber::registry()
        .with(monitor.layer())
        .with(fields.clone());
    tracing::subscriber::with_default(subscriber, || {
        records_nothing(vec![0; 9], 1);
        let first: Vec<String> = fields
            .0
            .lock()
            .expect("not poisoned")
            .drain(..)
            .map(|(k, _)| k)
            // Feature `otel` (on in this crate) adds the GenAI attributes.
            .filter(|k| {
                !["otel.", "gen_ai.", "openinference."]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .collect();
        assert_eq!(first, ["perfmon.agent"], "no argument by default");
        records_some(vec![0; 9], 2);
    });
    let got = fields.0.lock().expect("not poisoned").clone();
    let expect = |k: &str, v: &str| {
        assert!(
            got.contains(&(k.to_owned(), v.to_owned())),
            "{k}={v} missing from {got:?}"
        );
    };
    expect("cells", "9");
    expect("shape", "cube");
    expect("dbg", "2");
    expect("level", "2");
    assert!(!got.iter().any(|(k, _)| k == "input"), "skipped: {got:?}");
    assert_eq!(monitor.agent_stats("records_some").map(|s| s.runs), Some(1));
}
