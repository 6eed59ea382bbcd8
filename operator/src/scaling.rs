//! The lag-to-replicas policy, as one pure function: [`decide`].
//!
//! Everything that varies over time (recommendations within the scale-down window, how long
//! each partition's committed offset has stood still) is explicit state: it goes in as a
//! [`StageHistory`] and a new one comes out. No clock, no I/O, so every rule is table-tested.
//!
//! Differences from KEDA's Kafka scaler plus the HPA, on purpose:
//! - the partition cap is the partition count itself, not `partitions + 1` (KEDA #4483);
//! - lag on a partition whose consumer is alive but whose committed offset is stuck (a poison
//!   record, a hung sink) is reported and adds at most one replica above what the moving lag
//!   asks for (KEDA #7516);
//! - a fresh history holds the current replicas for one window, so an operator restart never
//!   scales down on an empty history.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::crd::{ScalingMode, ScalingSpec};

/// Polls a partition's committed offset may stand still, with lag and a live consumer,
/// before its lag counts as persistent.
pub const PERSISTENT_LAG_POLLS: u32 = 5;

/// The knobs of one stage, from its `ScalingSpec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScalingPolicy {
    pub mode: ScalingMode,
    /// `scaling.replicas`, what the scale subresource writes; used in manual mode.
    pub manual_replicas: Option<i32>,
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_threshold: i64,
    pub activation_lag_threshold: i64,
    pub scale_down_stabilization: Duration,
    /// Cap at the number of partitions that have lag rather than all partitions.
    pub limit_to_partitions_with_lag: bool,
    pub persistent_lag_polls: u32,
}

impl ScalingPolicy {
    pub fn from_spec(spec: &ScalingSpec) -> Self {
        Self {
            mode: spec.mode,
            manual_replicas: spec.replicas,
            min_replicas: spec.min_replicas.max(0),
            max_replicas: spec.max_replicas.max(spec.min_replicas.max(0)),
            lag_threshold: spec.lag_threshold.max(1),
            activation_lag_threshold: spec.activation_lag_threshold.max(0),
            scale_down_stabilization: spec.scale_down_stabilization.as_duration(),
            limit_to_partitions_with_lag: false,
            persistent_lag_polls: PERSISTENT_LAG_POLLS,
        }
    }
}

/// Desired replicas per stage of one Pipeline, by stage name, as the autoscaler publishes
/// them and the reconcile applies them. Plain data, so `build` takes it as an argument and
/// a test can pass any count without an autoscaler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredReplicas(pub BTreeMap<String, i32>);

impl DesiredReplicas {
    pub fn get(&self, stage: &str) -> Option<i32> {
        self.0.get(stage).copied()
    }
}

impl<S: Into<String>> FromIterator<(S, i32)> for DesiredReplicas {
    fn from_iter<I: IntoIterator<Item = (S, i32)>>(iter: I) -> Self {
        Self(iter.into_iter().map(|(s, n)| (s.into(), n)).collect())
    }
}

/// One partition as the lag reader saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// Records the group still has to consume; never negative.
    pub lag: i64,
    /// The group's committed offset; `None` when it never committed on this partition.
    pub committed: Option<i64>,
    /// A live member of the group owns this partition.
    pub consumer_alive: bool,
}

/// What one poll of the consumer group's lag saw, over every partition of the topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub partitions: Vec<PartitionLag>,
}

impl Observation {
    pub fn total_lag(&self) -> i64 {
        self.partitions
            .iter()
            .fold(0_i64, |sum, p| sum.saturating_add(p.lag.max(0)))
    }
}

/// The inputs of one decision besides the policy and the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleInput {
    pub paused: bool,
    /// The Deployment's `spec.replicas` as last applied.
    pub current_replicas: i32,
    /// `None` in manual mode or while paused, where lag doesn't matter.
    pub observation: Option<Observation>,
    pub now: Instant,
}

/// Where a partition's committed offset stood, and for how many polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stall {
    committed: i64,
    unchanged_polls: u32,
}

/// Per-stage state carried from one decision to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageHistory {
    /// Time-stamped recommendations no older than the scale-down window.
    recommendations: VecDeque<(Instant, i32)>,
    /// When this history started; until a whole window has passed it can't justify a scale-down.
    tracked_since: Option<Instant>,
    stalls: BTreeMap<i32, Stall>,
}

impl StageHistory {
    pub fn recommendations(&self) -> impl Iterator<Item = &(Instant, i32)> {
        self.recommendations.iter()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    Paused,
    Manual,
    /// Lag asks for more replicas: applied at once.
    ScaleUp,
    /// The highest recommendation within the window is below the current replicas.
    ScaleDown,
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Replicas the Deployment should have now.
    pub desired: i32,
    /// What this poll alone asks for, before stabilization.
    pub recommendation: i32,
    pub lag: i64,
    /// Partitions whose lag is persistent: reported, and capped in effect.
    pub persistent_partitions: Vec<i32>,
    pub why: Why,
}

/// The policy: from a stage's knobs, its history and one observation, the replicas it should
/// run and the history to pass next time.
pub fn decide(
    policy: &ScalingPolicy,
    history: &StageHistory,
    input: &ScaleInput,
) -> (Decision, StageHistory) {
    let fixed = |desired: i32, why: Why| {
        let decision = Decision {
            desired,
            recommendation: desired,
            lag: input.observation.as_ref().map_or(0, Observation::total_lag),
            persistent_partitions: Vec::new(),
            why,
        };
        // Lag history from before a pause or a manual spell says nothing about afterwards.
        (decision, StageHistory::default())
    };
    if input.paused {
        return fixed(0, Why::Paused);
    }
    let observation = match (policy.mode, &input.observation) {
        (ScalingMode::Manual, _) => {
            return fixed(
                policy.manual_replicas.unwrap_or(policy.min_replicas).max(0),
                Why::Manual,
            );
        }
        // No lag known: keep what runs, within bounds.
        (ScalingMode::Auto, None) => {
            let held = input
                .current_replicas
                .clamp(policy.min_replicas, policy.max_replicas);
            return (
                Decision {
                    desired: held,
                    recommendation: held,
                    lag: 0,
                    persistent_partitions: Vec::new(),
                    why: Why::Hold,
                },
                history.clone(),
            );
        }
        (ScalingMode::Auto, Some(observation)) => observation,
    };

    let mut next = history.clone();
    let tracked_since = *next.tracked_since.get_or_insert(input.now);
    let persistent = track_stalls(policy, &mut next.stalls, observation);

    let total_lag = observation.total_lag();
    let moving_lag = observation
        .partitions
        .iter()
        .filter(|p| !persistent.contains(&p.partition))
        .fold(0_i64, |sum, p| sum.saturating_add(p.lag.max(0)));
    let by_moving_lag = replicas_for(moving_lag, policy.lag_threshold);
    let by_total_lag = replicas_for(total_lag, policy.lag_threshold);
    // Persistent lag may add one replica (a rebalance can unstick a hung consumer) but no
    // more: more consumers can't read past a record that won't commit.
    let mut raw = by_total_lag.min(by_moving_lag.saturating_add(1));
    if persistent.is_empty() {
        raw = by_total_lag;
    }

    let partition_cap = if policy.limit_to_partitions_with_lag {
        observation.partitions.iter().filter(|p| p.lag > 0).count()
    } else {
        observation.partitions.len()
    };
    raw = raw.min(i32::try_from(partition_cap).unwrap_or(i32::MAX));
    if input.current_replicas == 0 && total_lag <= policy.activation_lag_threshold {
        raw = 0;
    }
    // minReplicas wins over the partition cap: the user asked for standbys explicitly.
    let recommendation = raw.clamp(policy.min_replicas, policy.max_replicas);

    let window = policy.scale_down_stabilization;
    next.recommendations.push_back((input.now, recommendation));
    while next
        .recommendations
        .front()
        .is_some_and(|(at, _)| input.now.saturating_duration_since(*at) > window)
    {
        next.recommendations.pop_front();
    }

    let current = input.current_replicas;
    let (desired, why) = if recommendation > current {
        (recommendation, Why::ScaleUp)
    } else {
        let mut highest = next
            .recommendations
            .iter()
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(recommendation);
        if input.now.saturating_duration_since(tracked_since) < window {
            highest = highest.max(current);
        }
        // A lowered maxReplicas takes effect at once.
        let desired = highest.min(current).min(policy.max_replicas);
        if desired < current {
            (desired, Why::ScaleDown)
        } else {
            (current, Why::Hold)
        }
    };

    (
        Decision {
            desired,
            recommendation,
            lag: total_lag,
            persistent_partitions: persistent,
            why,
        },
        next,
    )
}

/// `ceil(lag / threshold)`, never negative, saturating at `i32::MAX`.
pub fn replicas_for(lag: i64, threshold: i64) -> i32 {
    let lag = lag.max(0);
    let threshold = threshold.max(1);
    let replicas = lag / threshold + i64::from(lag % threshold != 0);
    i32::try_from(replicas).unwrap_or(i32::MAX)
}

/// Updates each partition's stall count and returns the partitions whose lag is persistent.
fn track_stalls(
    policy: &ScalingPolicy,
    stalls: &mut BTreeMap<i32, Stall>,
    observation: &Observation,
) -> Vec<i32> {
    let mut persistent = Vec::new();
    let mut seen = BTreeMap::new();
    for p in &observation.partitions {
        let Some(committed) = p.committed.filter(|_| p.lag > 0 && p.consumer_alive) else {
            continue;
        };
        let stall = match stalls.get(&p.partition) {
            Some(before) if before.committed == committed => Stall {
                committed,
                unchanged_polls: before.unchanged_polls.saturating_add(1),
            },
            _ => Stall {
                committed,
                unchanged_polls: 0,
            },
        };
        if policy.persistent_lag_polls > 0 && stall.unchanged_polls >= policy.persistent_lag_polls {
            persistent.push(p.partition);
        }
        seen.insert(p.partition, stall);
    }
    *stalls = seen;
    persistent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalingPolicy {
        ScalingPolicy {
            mode: ScalingMode::Auto,
            manual_replicas: None,
            min_replicas: 1,
            max_replicas: 10,
            lag_threshold: 100,
            activation_lag_threshold: 0,
            scale_down_stabilization: Duration::from_secs(60),
            limit_to_partitions_with_lag: false,
            persistent_lag_polls: 3,
        }
    }

    /// `partitions` partitions; the lags given go on the first ones, the rest have none.
    /// Committed offsets differ per call (`tick`) so nothing looks stuck.
    fn observe(partitions: usize, lags: &[i64], tick: i64) -> Observation {
        Observation {
            partitions: (0..partitions)
                .map(|i| PartitionLag {
                    partition: i32::try_from(i).unwrap(),
                    lag: lags.get(i).copied().unwrap_or(0),
                    committed: Some(tick * 1000),
                    consumer_alive: true,
                })
                .collect(),
        }
    }

    fn input(current: i32, observation: Observation, now: Instant) -> ScaleInput {
        ScaleInput {
            paused: false,
            current_replicas: current,
            observation: Some(observation),
            now,
        }
    }

    /// Lag spread over 12 partitions so the partition cap doesn't interfere.
    fn spread(lag: i64) -> Observation {
        let per = lag / 12;
        let mut lags = vec![per; 12];
        lags[0] += lag - per * 12;
        observe(12, &lags, 0)
    }

    struct Case {
        name: &'static str,
        policy: ScalingPolicy,
        current: i32,
        observation: Observation,
        paused: bool,
        want: i32,
    }

    fn case(name: &'static str, current: i32, observation: Observation, want: i32) -> Case {
        Case {
            name,
            policy: policy(),
            current,
            observation,
            paused: false,
            want,
        }
    }

    /// One decision on a fresh history whose window has already passed, so scale-down is allowed.
    #[test]
    fn single_decisions_table() {
        let with = |f: fn(&mut ScalingPolicy)| {
            let mut p = policy();
            f(&mut p);
            p
        };
        let cases = vec![
            case("no lag stays at min", 1, spread(0), 1),
            case("lag below threshold needs one", 1, spread(50), 1),
            case("lag equal to threshold needs one", 1, spread(100), 1),
            case("one record over the threshold needs two", 1, spread(101), 2),
            case("ceil of lag over threshold", 1, spread(450), 5),
            case("clamped to max", 1, spread(5_000), 10),
            Case {
                policy: with(|p| p.min_replicas = 3),
                ..case("clamped up to min", 3, spread(0), 3)
            },
            Case {
                policy: with(|p| p.min_replicas = 3),
                ..case("below min scales up to min at once", 1, spread(0), 3)
            },
            case(
                "capped at the partition count, not partitions + 1",
                1,
                observe(3, &[1_000, 1_000, 1_000], 0),
                3,
            ),
            case(
                "one hot partition still caps at the partition count",
                1,
                observe(4, &[10_000], 0),
                4,
            ),
            Case {
                policy: with(|p| p.limit_to_partitions_with_lag = true),
                ..case(
                    "capped at partitions with lag when asked",
                    1,
                    observe(6, &[1_000, 1_000], 0),
                    2,
                )
            },
            Case {
                policy: with(|p| p.min_replicas = 4),
                ..case(
                    "min wins over the partition cap",
                    4,
                    observe(2, &[1_000, 1_000], 0),
                    4,
                )
            },
            Case {
                policy: with(|p| p.min_replicas = 0),
                ..case("from zero, no lag stays at zero", 0, spread(0), 0)
            },
            Case {
                policy: with(|p| {
                    p.min_replicas = 0;
                    p.activation_lag_threshold = 50;
                }),
                ..case(
                    "from zero, lag at activation stays at zero",
                    0,
                    spread(50),
                    0,
                )
            },
            Case {
                policy: with(|p| {
                    p.min_replicas = 0;
                    p.activation_lag_threshold = 50;
                }),
                ..case(
                    "from zero, lag above activation wakes one",
                    0,
                    spread(51),
                    1,
                )
            },
            Case {
                policy: with(|p| {
                    p.min_replicas = 0;
                    p.activation_lag_threshold = 50;
                }),
                ..case(
                    "from zero, a burst goes straight to its size",
                    0,
                    spread(700),
                    7,
                )
            },
            Case {
                policy: with(|p| {
                    p.min_replicas = 0;
                    p.activation_lag_threshold = 50;
                }),
                ..case(
                    "activation matters only at zero: small lag keeps one",
                    1,
                    spread(10),
                    1,
                )
            },
            Case {
                policy: with(|p| p.min_replicas = 2),
                ..case(
                    "activation does not hold a Deployment at zero below min",
                    0,
                    spread(0),
                    2,
                )
            },
            Case {
                paused: true,
                ..case("paused wins over lag", 5, spread(5_000), 0)
            },
            Case {
                paused: true,
                policy: with(|p| p.min_replicas = 3),
                ..case("paused wins over min", 3, spread(0), 0)
            },
            Case {
                policy: with(|p| {
                    p.mode = ScalingMode::Manual;
                    p.manual_replicas = Some(7);
                }),
                ..case("manual takes scaling.replicas", 1, spread(5_000), 7)
            },
            Case {
                policy: with(|p| {
                    p.mode = ScalingMode::Manual;
                    p.manual_replicas = Some(0);
                }),
                ..case("manual can scale to zero despite lag", 2, spread(5_000), 0)
            },
            Case {
                policy: with(|p| {
                    p.mode = ScalingMode::Manual;
                    p.min_replicas = 2;
                }),
                ..case("manual without replicas falls back to min", 5, spread(0), 2)
            },
            Case {
                policy: with(|p| p.max_replicas = 3),
                ..case("a lowered max applies at once", 8, spread(5_000), 3)
            },
            Case {
                policy: with(|p| p.scale_down_stabilization = Duration::ZERO),
                ..case("zero window scales down at once", 6, spread(150), 2)
            },
            case(
                "a topic with no partitions yet keeps min",
                1,
                Observation::default(),
                1,
            ),
            case(
                "negative lag from a racing read counts as none",
                2,
                observe(3, &[-5, 0, 0], 0),
                1,
            ),
        ];
        assert!(cases.len() >= 25, "{} cases", cases.len());
        let t0 = Instant::now();
        for c in cases {
            // A history that started a whole window ago, with no recommendation in it.
            let history = StageHistory {
                tracked_since: Some(t0),
                ..StageHistory::default()
            };
            let now = t0 + c.policy.scale_down_stabilization + Duration::from_secs(1);
            let mut input = input(c.current, c.observation, now);
            input.paused = c.paused;
            let (decision, _) = decide(&c.policy, &history, &input);
            assert_eq!(decision.desired, c.want, "case {:?}: {decision:?}", c.name);
        }
    }

    #[test]
    fn replicas_for_rounds_up_and_saturates() {
        assert_eq!(replicas_for(0, 100), 0);
        assert_eq!(replicas_for(1, 100), 1);
        assert_eq!(replicas_for(200, 100), 2);
        assert_eq!(replicas_for(201, 100), 3);
        assert_eq!(replicas_for(-3, 100), 0);
        assert_eq!(replicas_for(5, 0), 5);
        assert_eq!(replicas_for(i64::MAX, 1), i32::MAX);
    }

    /// Runs a sequence of polls (seconds since start, lag, observation tweak) and returns the
    /// desired replicas after each, feeding the decision back as the current replicas.
    fn run(policy: &ScalingPolicy, start: i32, polls: &[(u64, Observation)]) -> Vec<i32> {
        let t0 = Instant::now();
        let mut history = StageHistory::default();
        let mut current = start;
        polls
            .iter()
            .map(|(at, observation)| {
                let (decision, next) = decide(
                    policy,
                    &history,
                    &input(current, observation.clone(), t0 + Duration::from_secs(*at)),
                );
                history = next;
                current = decision.desired;
                current
            })
            .collect()
    }

    #[test]
    fn scale_up_is_immediate_and_scale_down_waits_for_the_window() {
        let p = policy();
        let polls = [
            (0, spread(0)),
            (2, spread(500)),  // up to 5 at once
            (4, spread(900)),  // up to 9 at once
            (6, spread(100)),  // recommendation 1, held by the window
            (30, spread(0)),   // still within 60 s of the 9
            (65, spread(0)),   // the 9 at t=4 left the window, 1 at t=6 and t=30 remain
            (67, spread(300)), // up to 3 at once
        ];
        assert_eq!(run(&p, 1, &polls), vec![1, 5, 9, 9, 9, 1, 3]);
    }

    #[test]
    fn scale_down_takes_the_highest_recommendation_in_the_window() {
        let p = policy();
        let polls = [
            (0, spread(800)), // 8
            (10, spread(500)),
            (20, spread(300)),
            (61, spread(100)), // window (1..61]: 5, 3, 1 → 5
            (71, spread(100)), // window (11..71]: 3, 1, 1 → 3
            (81, spread(100)), // 1
        ];
        assert_eq!(run(&p, 1, &polls), vec![8, 8, 8, 5, 3, 1]);
    }

    #[test]
    fn a_fresh_history_does_not_scale_down_before_one_window() {
        // The operator restarted with 6 replicas running and no lag.
        let p = policy();
        let polls = [
            (0, spread(0)),
            (30, spread(0)),
            (59, spread(0)),
            (61, spread(0)),
        ];
        assert_eq!(run(&p, 6, &polls), vec![6, 6, 6, 1]);
    }

    #[test]
    fn scale_to_zero_needs_zero_lag_for_the_whole_window() {
        let mut p = policy();
        p.min_replicas = 0;
        p.activation_lag_threshold = 20;
        let polls = [
            (0, spread(50)), // wakes: 1
            (10, spread(0)),
            (50, spread(5)), // a little lag inside the window keeps one
            (70, spread(0)), // 60 s after t=10 but the lag at t=50 is in the window
            (111, spread(0)),
            (115, spread(15)), // at zero, below activation: stays at zero
            (120, spread(25)), // above activation: one
        ];
        assert_eq!(run(&p, 0, &polls), vec![1, 1, 1, 1, 0, 0, 1]);
    }

    fn stuck(partitions: usize, moving_lag: i64, stuck_lag: i64, tick: i64) -> Observation {
        // Partition 0 is stuck at committed offset 42; the others move every poll.
        let mut observation = observe(partitions, &[], tick);
        observation.partitions[0].lag = stuck_lag;
        observation.partitions[0].committed = Some(42);
        let others = i64::try_from(partitions - 1).unwrap();
        for p in observation.partitions.iter_mut().skip(1) {
            p.lag = moving_lag / others;
        }
        observation
    }

    #[test]
    fn persistent_lag_is_reported_and_adds_at_most_one_replica() {
        let mut p = policy(); // persistent after 3 unchanged polls
        p.scale_down_stabilization = Duration::ZERO;
        let t0 = Instant::now();
        let mut history = StageHistory::default();
        let mut current = 1;
        let mut got = Vec::new();
        for tick in 0..6 {
            let observation = stuck(12, 0, 100_000, tick);
            let now = t0 + Duration::from_secs(u64::try_from(tick).unwrap() * 2);
            let (decision, next) = decide(&p, &history, &input(current, observation, now));
            history = next;
            current = decision.desired;
            got.push((current, decision.persistent_partitions.clone()));
        }
        // Until the stall is recognised the lag looks real and scales up; once partition 0 is
        // known stuck, its 100 000 records hold one replica and no more.
        assert_eq!(
            got,
            vec![
                (10, vec![]),
                (10, vec![]),
                (10, vec![]),
                (1, vec![0]),
                (1, vec![0]),
                (1, vec![0]),
            ]
        );
    }

    #[test]
    fn persistent_lag_keeps_one_replica_above_the_moving_lag() {
        let mut p = policy();
        p.persistent_lag_polls = 1;
        p.scale_down_stabilization = Duration::ZERO;
        let t0 = Instant::now();
        let mut history = StageHistory::default();
        let mut current = 1;
        let mut got = Vec::new();
        for tick in 0..4 {
            let moving = if tick < 2 { 0 } else { 770 };
            let observation = stuck(12, moving, 5_000, tick);
            let now = t0 + Duration::from_secs(u64::try_from(tick).unwrap() * 2);
            let (decision, next) = decide(&p, &history, &input(current, observation, now));
            history = next;
            current = decision.desired;
            got.push(current);
        }
        // Poll 0 can't know yet (5 000 → 10, capped at max); from poll 1 the stuck lag adds
        // one to nothing; then 770 moving records ask for 8, plus one.
        assert_eq!(got, vec![10, 1, 9, 9]);
    }

    #[test]
    fn a_stall_without_a_live_consumer_is_not_persistent() {
        let mut p = policy();
        p.persistent_lag_polls = 1;
        p.scale_down_stabilization = Duration::ZERO;
        let t0 = Instant::now();
        let mut history = StageHistory::default();
        let mut last = None;
        for tick in 0..4 {
            let mut observation = stuck(3, 0, 500, tick);
            observation.partitions[0].consumer_alive = false;
            let now = t0 + Duration::from_secs(u64::try_from(tick).unwrap());
            let (decision, next) = decide(&p, &history, &input(1, observation, now));
            history = next;
            last = Some(decision);
        }
        let last = last.unwrap();
        assert!(last.persistent_partitions.is_empty(), "{last:?}");
        assert_eq!(last.desired, 3, "capped by 3 partitions");
    }

    #[test]
    fn pausing_clears_the_history() {
        let p = policy();
        let t0 = Instant::now();
        let (_, history) = decide(&p, &StageHistory::default(), &input(1, spread(900), t0));
        assert_eq!(history.recommendations().count(), 1);
        let mut paused = input(9, spread(900), t0 + Duration::from_secs(2));
        paused.paused = true;
        let (decision, history) = decide(&p, &history, &paused);
        assert_eq!(decision.why, Why::Paused);
        assert_eq!(history, StageHistory::default());
    }

    #[test]
    fn unknown_lag_holds_within_bounds() {
        let p = policy();
        let mut no_lag = input(4, Observation::default(), Instant::now());
        no_lag.observation = None;
        let (decision, _) = decide(&p, &StageHistory::default(), &no_lag);
        assert_eq!((decision.desired, decision.why), (4, Why::Hold));
        no_lag.current_replicas = 40;
        let (decision, _) = decide(&p, &StageHistory::default(), &no_lag);
        assert_eq!(decision.desired, 10);
    }

    #[test]
    fn from_spec_uses_the_crd_defaults() {
        let p = ScalingPolicy::from_spec(&ScalingSpec::default());
        assert_eq!(p.min_replicas, 1);
        assert_eq!(p.max_replicas, 10);
        assert_eq!(p.lag_threshold, 1000);
        assert_eq!(p.scale_down_stabilization, Duration::from_secs(60));
        assert!(!p.limit_to_partitions_with_lag);
    }
}
