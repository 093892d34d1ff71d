//! Pipeline analysis, run once when a pipeline ends: bottlenecks and the
//! critical path.

use std::time::Duration;

use crate::record::{AgentRun, Bottleneck};

/// Every agent whose summed wall time exceeds `threshold × pipeline`, largest
/// share first. `totals` holds each agent's summed wall time over all its
/// finished runs in the pipeline (stored and aggregated).
pub(crate) fn bottlenecks<'a>(
    totals: impl IntoIterator<Item = (&'a str, Duration)>,
    pipeline: Duration,
    threshold: f64,
) -> Vec<Bottleneck> {
    let wall = pipeline.as_secs_f64();
    if wall <= 0.0 {
        return Vec::new();
    }
    let mut flagged: Vec<Bottleneck> = totals
        .into_iter()
        .filter_map(|(agent, duration)| {
            let share = duration.as_secs_f64() / wall;
            (share > threshold).then(|| Bottleneck {
                agent: agent.to_owned(),
                duration,
                share,
            })
        })
        .collect();
    flagged.sort_by(|a, b| {
        b.share
            .total_cmp(&a.share)
            .then_with(|| a.agent.cmp(&b.agent))
    });
    flagged
}

/// The critical path through `runs` (start order, `offset` relative to the
/// pipeline start), as indices in time order.
///
/// Among sibling runs (same parent), walk backwards from the end of the
/// enclosing window: take the run that ended last, then the run that ended
/// last before that one started, and so on; that chain decided when the
/// window ended. Each run on the chain is followed by the chain of its own
/// children within it. Ties on the end time go to the run that started last.
///
/// O(n log n): siblings are sorted by end time once and each step is a
/// binary search.
pub(crate) fn critical_path(runs: &[AgentRun], pipeline: Duration) -> Vec<usize> {
    let n = runs.len();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); n + 1];
    for (i, run) in runs.iter().enumerate() {
        // Parents always come earlier in start order; anything else is a root.
        let slot = match run.parent {
            Some(p) if p < i => p,
            _ => n,
        };
        children[slot].push(i);
    }
    let end = |i: usize| runs[i].offset + runs[i].duration;
    for list in &mut children {
        list.sort_by_key(|&i| (end(i), runs[i].offset));
    }
    let mut out = Vec::new();
    // Explicit stack of (sibling group, window end) to keep deep nesting off the call stack.
    expand(&children, n, pipeline, &end, runs, &mut out);
    out
}

fn expand(
    children: &[Vec<usize>],
    group: usize,
    window_end: Duration,
    end: &impl Fn(usize) -> Duration,
    runs: &[AgentRun],
    out: &mut Vec<usize>,
) {
    // Iterative over groups: each frame is (group, window_end, chain, position).
    let mut stack = vec![(chain(&children[group], window_end, end, runs), 0usize)];
    while let Some((path, pos)) = stack.last_mut() {
        if *pos == path.len() {
            stack.pop();
            continue;
        }
        let run = path[*pos];
        *pos += 1;
        out.push(run);
        if !children[run].is_empty() {
            let sub = chain(&children[run], end(run), end, runs);
            stack.push((sub, 0));
        }
    }
}

/// The backward chain within one sibling group (sorted by end, then start).
fn chain(
    sorted: &[usize],
    window_end: Duration,
    end: &impl Fn(usize) -> Duration,
    runs: &[AgentRun],
) -> Vec<usize> {
    let mut path = Vec::new();
    let mut cursor = window_end;
    let mut limit = sorted.len();
    loop {
        let candidates = &sorted[..limit];
        let k = candidates.partition_point(|&i| end(i) <= cursor);
        if k == 0 {
            break;
        }
        let pick = candidates[k - 1];
        path.push(pick);
        cursor = runs[pick].offset;
        limit = k - 1;
    }
    path.reverse();
    path
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::record::Outcome;

    fn run(agent: &str, start_ms: u64, dur_ms: u64, parent: Option<usize>) -> AgentRun {
        AgentRun {
            agent: agent.into(),
            pipeline: "p".into(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(dur_ms),
            busy: None,
            outcome: Outcome::Succeeded,
            offset: Duration::from_millis(start_ms),
            parent,
        }
    }

    fn names(runs: &[AgentRun], path: &[usize]) -> Vec<String> {
        path.iter().map(|&i| runs[i].agent.clone()).collect()
    }

    #[test]
    fn sequential_runs_are_all_critical() {
        let runs = vec![
            run("a", 0, 10, None),
            run("b", 10, 20, None),
            run("c", 30, 5, None),
        ];
        let path = critical_path(&runs, Duration::from_millis(35));
        assert_eq!(names(&runs, &path), ["a", "b", "c"]);
    }

    #[test]
    fn fan_out_fan_in_takes_the_slowest_branch() {
        // plan -> (fast | slow) -> merge
        let runs = vec![
            run("plan", 0, 10, None),
            run("fast", 10, 5, None),
            run("slow", 10, 50, None),
            run("merge", 60, 10, None),
        ];
        let path = critical_path(&runs, Duration::from_millis(70));
        assert_eq!(names(&runs, &path), ["plan", "slow", "merge"]);
    }

    #[test]
    fn nested_runs_expand_inside_their_parent() {
        let runs = vec![
            run("orchestrator", 0, 100, None),
            run("geometry", 0, 30, Some(0)),
            run("physics", 30, 60, Some(0)),
            run("side", 30, 10, Some(0)),
        ];
        let path = critical_path(&runs, Duration::from_millis(100));
        assert_eq!(names(&runs, &path), ["orchestrator", "geometry", "physics"]);
    }

    #[test]
    fn zero_length_runs_terminate() {
        let runs = vec![run("a", 0, 0, None), run("b", 0, 0, None)];
        let path = critical_path(&runs, Duration::ZERO);
        assert_eq!(path.len(), 2);
    }

    #[test]
    fn threshold_is_strict() {
        let pipeline = Duration::from_millis(100);
        let got = bottlenecks(
            [
                ("a", Duration::from_millis(50)),
                ("b", Duration::from_millis(29)),
            ],
            pipeline,
            0.30,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].agent, "a");
        assert!((got[0].share - 0.5).abs() < 1e-12);
        let exactly = bottlenecks([("a", Duration::from_millis(30))], pipeline, 0.30);
        assert!(exactly.is_empty(), "30% is not more than 30%");
    }
}
