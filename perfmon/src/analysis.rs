//! Pipeline analysis, run once when a pipeline ends: bottlenecks and the
//! critical path.

use std::time::Duration;

use crate::record::{AgentRun, Bottleneck, BottleneckBasis};

/// When an agent is a bottleneck: its share of the pipeline's time, on
/// `basis`, above `threshold`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rule {
    pub(crate) threshold: f64,
    pub(crate) basis: BottleneckBasis,
}

/// Every agent whose summed time on the rule's basis exceeds `threshold ×
/// pipeline`, largest judged share first. `totals` holds each agent's summed
/// wall time and self time over all its finished runs in the pipeline
/// (stored and aggregated).
pub(crate) fn bottlenecks<'a>(
    totals: impl IntoIterator<Item = (&'a str, Duration, Duration)>,
    pipeline: Duration,
    rule: Rule,
) -> Vec<Bottleneck> {
    let wall = pipeline.as_secs_f64();
    if wall <= 0.0 {
        return Vec::new();
    }
    let mut flagged: Vec<Bottleneck> = totals
        .into_iter()
        .filter_map(|(agent, duration, self_time)| {
            let b = Bottleneck {
                agent: agent.to_owned(),
                duration,
                share: duration.as_secs_f64() / wall,
                self_time,
                self_share: self_time.as_secs_f64() / wall,
                basis: rule.basis,
            };
            (b.judged_share() > rule.threshold).then_some(b)
        })
        .collect();
    flagged.sort_by(|a, b| {
        b.judged_share()
            .total_cmp(&a.judged_share())
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
    use crate::outcome::Outcome;

    fn run(agent: &str, start_ms: u64, dur_ms: u64, parent: Option<usize>) -> AgentRun {
        AgentRun {
            agent: agent.into(),
            pipeline: "p".into(),
            started_at: SystemTime::UNIX_EPOCH,
            duration: Duration::from_millis(dur_ms),
            self_time: Duration::from_millis(dur_ms),
            busy: None,
            outcome: Outcome::Succeeded,
            offset: Duration::from_millis(start_ms),
            parent,
            kind: crate::record::RunKind::Agent,
            usage: crate::usage::Usage::default(),
            model: None,
            output: Vec::new(),
            output_dropped: 0,
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

    const SELF: Rule = Rule {
        threshold: 0.30,
        basis: BottleneckBasis::SelfTime,
    };

    #[test]
    fn threshold_is_strict() {
        let pipeline = Duration::from_millis(100);
        let ms = Duration::from_millis;
        let got = bottlenecks(
            [("a", ms(50), ms(50)), ("b", ms(29), ms(29))],
            pipeline,
            SELF,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].agent, "a");
        assert!((got[0].share - 0.5).abs() < 1e-12);
        let exactly = bottlenecks([("a", ms(30), ms(30))], pipeline, SELF);
        assert!(exactly.is_empty(), "30% is not more than 30%");
    }

    #[test]
    fn the_basis_decides_which_share_is_judged() {
        let ms = Duration::from_millis;
        // A parent that spent 90 ms around a child that took 80 of them.
        let totals = [("parent", ms(90), ms(10)), ("child", ms(80), ms(80))];
        let on_self = bottlenecks(totals, ms(100), SELF);
        assert_eq!(on_self.len(), 1);
        assert_eq!(on_self[0].agent, "child");
        let wall = Rule {
            basis: BottleneckBasis::Wall,
            ..SELF
        };
        let on_wall = bottlenecks(totals, ms(100), wall);
        let names: Vec<_> = on_wall.iter().map(|b| b.agent.as_str()).collect();
        assert_eq!(names, ["parent", "child"]);
        assert!(
            (on_wall[0].self_share - 0.1).abs() < 1e-12,
            "self share still shown"
        );
    }
}

#[cfg(test)]
mod properties {
    use std::time::{Duration, SystemTime};

    use proptest::prelude::*;

    use super::*;
    use crate::outcome::Outcome;

    fn runs_from(intervals: &[(u64, u64)]) -> Vec<AgentRun> {
        let mut runs: Vec<AgentRun> = intervals
            .iter()
            .enumerate()
            .map(|(i, &(start, len))| AgentRun {
                agent: format!("a{i}"),
                pipeline: "p".into(),
                started_at: SystemTime::UNIX_EPOCH,
                duration: Duration::from_micros(len),
                self_time: Duration::from_micros(len),
                busy: None,
                outcome: Outcome::Succeeded,
                offset: Duration::from_micros(start),
                parent: None,
                kind: crate::record::RunKind::Agent,
                usage: crate::usage::Usage::default(),
                model: None,
                output: Vec::new(),
                output_dropped: 0,
            })
            .collect();
        runs.sort_by_key(|r| r.offset); // reports list runs in start order
        runs
    }

    fn end(r: &AgentRun) -> Duration {
        r.offset + r.duration
    }

    proptest! {
        /// For parallel, unnested runs the path is a chain that ends with
        /// the last run to finish, never overlaps itself, and at each step
        /// takes the run that ended last before the next one started.
        #[test]
        fn critical_path_is_the_latest_ending_chain(
            intervals in prop::collection::vec((0u64..1_000, 0u64..500), 1..40)
        ) {
            let runs = runs_from(&intervals);
            let pipeline = runs.iter().map(end).max().unwrap_or_default();
            let path = critical_path(&runs, pipeline);
            prop_assert!(!path.is_empty());
            let last = &runs[*path.last().unwrap_or(&0)];
            prop_assert_eq!(end(last), pipeline);
            for pair in path.windows(2) {
                let (a, b) = (&runs[pair[0]], &runs[pair[1]]);
                prop_assert!(end(a) <= b.offset, "chain overlaps");
                // No other run ended later than `a` while still before `b` started.
                for (i, c) in runs.iter().enumerate() {
                    if i != pair[0] && i != pair[1] && end(c) <= b.offset {
                        prop_assert!(end(c) <= end(a));
                    }
                }
            }
        }

        /// Back-to-back runs are all on the path, in order.
        #[test]
        fn sequential_runs_are_all_critical_prop(lens in prop::collection::vec(1u64..1_000, 1..40)) {
            let mut t = 0;
            let intervals: Vec<(u64, u64)> = lens.iter().map(|&len| { let s = t; t += len; (s, len) }).collect();
            let runs = runs_from(&intervals);
            let path = critical_path(&runs, Duration::from_micros(t));
            prop_assert_eq!(path, (0..runs.len()).collect::<Vec<_>>());
        }

        /// Exactly the agents above the threshold are flagged.
        #[test]
        fn bottlenecks_are_exactly_those_above_the_threshold(
            totals in prop::collection::vec(0u64..1_000, 1..20),
            threshold in 0.01f64..=1.0,
        ) {
            let pipeline = Duration::from_millis(1_000);
            let named: Vec<(String, Duration)> =
                totals.iter().enumerate().map(|(i, &ms)| (format!("a{i}"), Duration::from_millis(ms))).collect();
            let rule = Rule { threshold, basis: BottleneckBasis::SelfTime };
            let flagged = bottlenecks(named.iter().map(|(a, d)| (a.as_str(), *d, *d)), pipeline, rule);
            for (agent, d) in &named {
                let share = d.as_secs_f64() / pipeline.as_secs_f64();
                let hit = flagged.iter().any(|b| &b.agent == agent);
                prop_assert_eq!(hit, share > threshold, "{} share {} threshold {}", agent, share, threshold);
            }
            prop_assert!(flagged.windows(2).all(|w| w[0].share >= w[1].share));
        }
    }
}
