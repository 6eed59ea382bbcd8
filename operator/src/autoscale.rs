//! The autoscaler: for every Pipeline stage it polls the consumer group's lag at the stage's
//! `pollInterval`, runs the [`scaling`](crate::scaling) policy and, when the desired replicas
//! change, has the controller reconcile that Pipeline.
//!
//! A peer of the controller, not part of it: it imports nothing from `controller`. The two
//! meet in [`Autoscaler`]. The reconcile hands it each stage's [`StageTarget`] (what to read,
//! how to scale) and gets back the [`DesiredReplicas`] it publishes, which `build` takes as
//! an argument; the reconcile also reads the lag it publishes ([`Autoscaler::lags`]) for the
//! status. The autoscaler's loop ([`run`]) polls and, when a stage's desired count changes,
//! asks the controller for a reconcile of that Pipeline.
//!
//! Why through the reconcile rather than patching `spec.replicas` itself: both write the
//! Deployment with server-side apply as `ferry-operator`, and an apply that carries only
//! `spec.replicas` under that manager would drop every other field the manager owns. So the
//! reconcile applies the whole Deployment at the published count, and one manager stays the
//! single writer. The trigger goes through `Controller::reconcile_on`, which also keeps
//! reconciles of one Pipeline from overlapping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::crd::{Pipeline, ScalingMode};
use crate::events;
use crate::lag::{ClusterConfig, GroupLag, LagError, LagQuery, LagReader};
use crate::metrics::{Metrics, StageLabels};
use crate::scaling::{self, DesiredReplicas, ScaleInput, ScalingPolicy, StageHistory, Why};

/// The `action` of the autoscaler's Events.
const SCALE_ACTION: &str = "Scale";

/// How often the loop looks for stages whose poll is due.
const TICK: Duration = Duration::from_millis(100);
/// Lag alone (no replica change) refreshes a Pipeline's status at most this often.
const STATUS_REFRESH: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageKey {
    pub namespace: String,
    pub pipeline: String,
    pub stage: String,
}

impl StageKey {
    fn labels(&self) -> StageLabels {
        StageLabels {
            namespace: self.namespace.clone(),
            pipeline: self.pipeline.clone(),
            stage: self.stage.clone(),
        }
    }

    fn pipeline_key(&self) -> (String, String) {
        (self.namespace.clone(), self.pipeline.clone())
    }

    fn pipeline_ref(&self) -> ObjectRef<Pipeline> {
        ObjectRef::new(&self.pipeline).within(&self.namespace)
    }
}

/// What a stage reads and how it scales, as the last reconcile validated it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageTarget {
    pub stage: String,
    pub cluster: ClusterConfig,
    pub query: LagQuery,
    pub policy: ScalingPolicy,
    pub poll_interval: Duration,
    pub paused: bool,
    /// Why lag can't be read for this stage, e.g. SASL credentials the operator doesn't hold.
    pub unsupported: Option<&'static str>,
    /// The replicas without the autoscaler (0 paused, the manual count, minReplicas).
    pub replicas: i32,
    /// What the Pipeline's status last recorded, for a stage first seen after a restart.
    pub recorded_replicas: Option<i32>,
    pub recorded_lag: Option<i64>,
}

impl StageTarget {
    fn autoscaled(&self) -> bool {
        !self.paused && self.policy.mode == ScalingMode::Auto
    }
}

#[derive(Debug)]
struct StageEntry {
    target: StageTarget,
    /// The replicas the reconcile applies.
    desired: i32,
    lag: Option<i64>,
    history: StageHistory,
    next_poll: Instant,
    in_flight: bool,
    persistent: Vec<i32>,
    last_error: Option<String>,
}

/// Desired replicas and lag per stage, shared by the reconcile and the autoscaler loop.
#[derive(Debug)]
pub struct Autoscaler {
    stages: Mutex<BTreeMap<StageKey, StageEntry>>,
    /// When each Pipeline's status last got fresh lag.
    status_refreshed: Mutex<BTreeMap<(String, String), Instant>>,
    reader: LagReader,
    /// The start of the poll grid: stages with the same interval poll at the same ticks.
    grid_origin: Instant,
}

impl Default for Autoscaler {
    fn default() -> Self {
        Self {
            stages: Mutex::default(),
            status_refreshed: Mutex::default(),
            reader: LagReader::default(),
            grid_origin: Instant::now(),
        }
    }
}

/// The first point of the grid `origin + k × interval` after `now`. Polling on it, stages
/// that share an interval fall into the same tick and so into one batch of Kafka calls,
/// however their first polls were spread (1000 Pipelines created over 20 s would otherwise
/// poll in 50 batches per interval).
pub fn next_grid_point(origin: Instant, now: Instant, interval: Duration) -> Instant {
    let step = interval.as_nanos();
    if step == 0 {
        return now;
    }
    let elapsed = now.saturating_duration_since(origin).as_nanos();
    let offset = (elapsed / step + 1).saturating_mul(step);
    u64::try_from(offset)
        .ok()
        .and_then(|nanos| origin.checked_add(Duration::from_nanos(nanos)))
        .unwrap_or(now + interval)
}

impl Autoscaler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the stages of one Pipeline for polling, forgets its stages not listed, and
    /// returns the desired replicas it publishes for them. A stage seen for the first time,
    /// e.g. after an operator restart, starts from the replicas its status recorded, so a
    /// restart doesn't reset a scaled-up Deployment to minReplicas. A stage that is paused or
    /// in manual mode publishes its `replicas`, and its history starts again afterwards.
    pub fn register(
        &self,
        namespace: &str,
        pipeline: &str,
        targets: Vec<StageTarget>,
    ) -> DesiredReplicas {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut desired = DesiredReplicas::default();
        let mut kept = BTreeSet::new();
        for target in targets {
            let key = StageKey {
                namespace: namespace.to_owned(),
                pipeline: pipeline.to_owned(),
                stage: target.stage.clone(),
            };
            if let Some(reason) = target.unsupported
                && !stages.contains_key(&key)
            {
                warn!(stage = ?key, "not autoscaling: {reason}");
            }
            let entry = stages.entry(key.clone()).or_insert_with(|| StageEntry {
                target: target.clone(),
                desired: target.recorded_replicas.unwrap_or(target.replicas),
                lag: target.recorded_lag,
                history: StageHistory::default(),
                next_poll: now,
                in_flight: false,
                persistent: Vec::new(),
                last_error: None,
            });
            if target.autoscaled() {
                entry.desired = entry
                    .desired
                    .clamp(target.policy.min_replicas, target.policy.max_replicas);
            } else {
                entry.desired = target.replicas;
                entry.history = StageHistory::default();
            }
            if entry.target.query != target.query || entry.target.cluster != target.cluster {
                entry.history = StageHistory::default();
                entry.next_poll = now;
            }
            desired.0.insert(target.stage.clone(), entry.desired);
            entry.target = target;
            kept.insert(key);
        }
        stages.retain(|key, _| {
            key.namespace != namespace || key.pipeline != pipeline || kept.contains(key)
        });
        desired
    }

    /// The lag last read per stage of one Pipeline, by stage name, for its status. Notes
    /// the time: lag alone refreshes a status at most every [`STATUS_REFRESH`].
    pub fn lags(&self, namespace: &str, pipeline: &str) -> BTreeMap<String, i64> {
        let stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let lags = stages
            .iter()
            .filter(|(key, _)| key.namespace == namespace && key.pipeline == pipeline)
            .filter_map(|(key, entry)| Some((key.stage.clone(), entry.lag?)))
            .collect();
        drop(stages);
        self.status_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_owned(), pipeline.to_owned()), Instant::now());
        lags
    }

    /// The desired replicas of one stage, if the autoscaler tracks it.
    pub fn desired(&self, key: &StageKey) -> Option<i32> {
        self.stages
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|e| e.desired)
    }

    /// Stages whose poll is due, grouped by cluster; marks them in flight.
    fn due(&self, now: Instant) -> BTreeMap<ClusterConfig, Vec<(StageKey, LagQuery)>> {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let mut due: BTreeMap<ClusterConfig, Vec<(StageKey, LagQuery)>> = BTreeMap::new();
        for (key, entry) in stages.iter_mut() {
            if entry.in_flight
                || entry.next_poll > now
                || entry.target.paused
                || entry.target.unsupported.is_some()
            {
                continue;
            }
            entry.in_flight = true;
            due.entry(entry.target.cluster.clone())
                .or_default()
                .push((key.clone(), entry.target.query.clone()));
        }
        due
    }

    /// Forgets stages of Pipelines that no longer exist; closes clients nobody needs.
    fn prune(&self, exists: impl Fn(&StageKey) -> bool, metrics: &Metrics) {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        stages.retain(|key, _| {
            let keep = exists(key);
            if !keep {
                metrics.forget_stage(&key.labels());
            }
            keep
        });
        let wanted = stages
            .values()
            .map(|e| (e.target.cluster.clone(), e.target.query.group.clone()))
            .collect();
        drop(stages);
        self.reader.retain(&wanted);
    }
}

/// What one poll changed for one stage, to act on outside the lock.
struct Outcome {
    key: StageKey,
    scaled: Option<(i32, i32)>,
    lag: i64,
    newly_persistent: Option<Vec<i32>>,
    refresh_status: bool,
}

/// What the autoscaler's loop works with: its state, the metrics, and the Event recorder.
#[derive(Clone)]
pub struct Peer {
    pub autoscaler: Arc<Autoscaler>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("autoscaler", &self.autoscaler)
            .finish_non_exhaustive()
    }
}

/// Runs the autoscaler until `shutdown` is cancelled.
pub async fn run(
    peer: Peer,
    store: Store<Pipeline>,
    trigger: UnboundedSender<ObjectRef<Pipeline>>,
    shutdown: CancellationToken,
) {
    // Stages register themselves from the reconcile, which only sees Pipelines already in
    // `store`; so pruning by `store` needs no wait for it to fill.
    info!("autoscaler started");
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let now = Instant::now();
        if now.duration_since(last_prune) > Duration::from_secs(5) {
            last_prune = now;
            peer.autoscaler.prune(
                |key| store.get(&key.pipeline_ref()).is_some(),
                &peer.metrics,
            );
        }
        for (cluster, batch) in peer.autoscaler.due(now) {
            let peer = peer.clone();
            let store = store.clone();
            let trigger = trigger.clone();
            tokio::spawn(async move {
                poll_cluster(&peer, &store, &trigger, &cluster, batch).await;
            });
        }
    }
}

async fn poll_cluster(
    peer: &Peer,
    store: &Store<Pipeline>,
    trigger: &UnboundedSender<ObjectRef<Pipeline>>,
    cluster: &ClusterConfig,
    batch: Vec<(StageKey, LagQuery)>,
) {
    let (keys, queries): (Vec<StageKey>, Vec<LagQuery>) = batch.into_iter().unzip();
    let polled = queries.len();
    let (results, kafka_calls) = peer.autoscaler.reader.read_counted(cluster, queries).await;
    peer.metrics.count_lag_batch(polled, kafka_calls);
    let outcomes: Vec<Outcome> = keys
        .into_iter()
        .zip(results)
        .filter_map(|(key, result)| peer.autoscaler.record_poll(&peer.metrics, key, result))
        .collect();

    let mut triggered = BTreeSet::new();
    for outcome in outcomes {
        let pipeline_ref = outcome.key.pipeline_ref();
        let pipeline = store.get(&pipeline_ref);
        if let Some((from, to)) = outcome.scaled {
            let (reason, verb) = if to > from {
                ("ScaledUp", "up")
            } else {
                ("ScaledDown", "down")
            };
            info!(pipeline = %pipeline_ref, stage = %outcome.key.stage, from, to, lag = outcome.lag, "scaling {verb}");
            peer.metrics.count_scale(&outcome.key.labels(), to > from);
            if let Some(pipeline) = &pipeline {
                events::publish(
                    &peer.recorder,
                    pipeline,
                    EventType::Normal,
                    reason,
                    SCALE_ACTION,
                    format!(
                        "scaled stage {} {verb} from {from} to {to} replicas: lag {} records",
                        outcome.key.stage, outcome.lag
                    ),
                )
                .await;
            }
        }
        if let (Some(partitions), Some(pipeline)) = (&outcome.newly_persistent, &pipeline) {
            events::publish(
                &peer.recorder,
                pipeline,
                EventType::Warning,
                "PersistentLag",
                SCALE_ACTION,
                format!(
                    "stage {}: the committed offset of partition(s) {partitions:?} has not moved \
                     while their consumer is alive; their lag adds at most one replica",
                    outcome.key.stage
                ),
            )
            .await;
        }
        if (outcome.scaled.is_some() || outcome.refresh_status)
            && triggered.insert(outcome.key.pipeline_key())
            && trigger.unbounded_send(pipeline_ref).is_err()
        {
            warn!("the controller stopped: cannot trigger a reconcile");
        }
    }
}

impl Autoscaler {
    /// Runs the policy on one poll's result and records it; `None` when the stage vanished.
    fn record_poll(
        &self,
        metrics: &Metrics,
        key: StageKey,
        result: Result<GroupLag, LagError>,
    ) -> Option<Outcome> {
        let now = Instant::now();
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = stages.get_mut(&key)?;
        entry.in_flight = false;
        entry.next_poll = next_grid_point(self.grid_origin, now, entry.target.poll_interval);
        let lag = match result {
            Ok(lag) => lag,
            Err(err) => {
                metrics.count_lag_poll_failure(&key.labels());
                let message = err.to_string();
                if entry.last_error.as_ref() != Some(&message) {
                    warn!(stage = ?key, error = %message, "cannot read lag; holding replicas");
                    entry.last_error = Some(message);
                }
                return None;
            }
        };
        entry.last_error = None;
        let input = ScaleInput {
            paused: entry.target.paused,
            current_replicas: entry.desired,
            observation: Some(lag.observation()),
            now,
        };
        let (decision, history) = scaling::decide(&entry.target.policy, &entry.history, &input);
        entry.history = history;
        let lag_changed = entry.lag != Some(decision.lag);
        entry.lag = Some(decision.lag);
        let from = entry.desired;
        let scaled =
            matches!(decision.why, Why::ScaleUp | Why::ScaleDown) && decision.desired != from;
        if scaled {
            entry.desired = decision.desired;
        }
        let newly_persistent = (!decision.persistent_partitions.is_empty()
            && decision.persistent_partitions != entry.persistent)
            .then(|| decision.persistent_partitions.clone());
        entry.persistent = decision.persistent_partitions.clone();
        metrics.observe_stage(
            &key.labels(),
            decision.lag,
            entry.desired,
            entry.persistent.len(),
        );
        drop(stages);

        let refresh_status = lag_changed
            && self
                .status_refreshed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key.pipeline_key())
                .is_none_or(|at| now.duration_since(*at) >= STATUS_REFRESH);
        Some(Outcome {
            key,
            scaled: scaled.then_some((from, decision.desired)),
            lag: decision.lag,
            newly_persistent,
            refresh_status,
        })
    }
}

#[cfg(test)]
mod grid_tests {
    use super::*;

    #[test]
    fn stages_with_one_interval_meet_on_the_same_tick() {
        let origin = Instant::now();
        let interval = Duration::from_secs(5);
        let at = |ms: u64| origin + Duration::from_millis(ms);
        // Polled at different moments of the same interval: the same next tick.
        assert_eq!(next_grid_point(origin, at(120), interval), at(5_000));
        assert_eq!(next_grid_point(origin, at(4_990), interval), at(5_000));
        // On a tick: the next one, never the same instant.
        assert_eq!(next_grid_point(origin, at(5_000), interval), at(10_000));
        assert_eq!(next_grid_point(origin, at(12_345), interval), at(15_000));
        assert_eq!(next_grid_point(origin, at(7), Duration::ZERO), at(7));
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;
    use crate::crd::ScalingSpec;
    use crate::lag::{PartitionLagReport, PartitionOffsets};
    use ferry_config::config::OffsetReset;

    fn spec(json: serde_json::Value) -> ScalingSpec {
        serde_json::from_value(json).unwrap()
    }

    fn target(stage: &str, scaling: &ScalingSpec) -> StageTarget {
        StageTarget {
            stage: stage.to_owned(),
            cluster: ClusterConfig::plaintext("kafka:9092"),
            query: LagQuery {
                topic: "orders".to_owned(),
                group: format!("group-{stage}"),
                offset_reset: OffsetReset::Earliest,
            },
            policy: ScalingPolicy::from_spec(scaling),
            poll_interval: Duration::from_secs(2),
            paused: false,
            unsupported: None,
            replicas: scaling.min_replicas,
            recorded_replicas: None,
            recorded_lag: None,
        }
    }

    fn auto() -> ScalingSpec {
        spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 6, "lagThreshold": 100}))
    }

    fn key(stage: &str) -> StageKey {
        StageKey {
            namespace: "default".to_owned(),
            pipeline: "orders".to_owned(),
            stage: stage.to_owned(),
        }
    }

    fn lag_of(per_partition: i64, partitions: i32) -> GroupLag {
        GroupLag {
            query: target("receiver", &auto()).query,
            partitions: (0..partitions)
                .map(|partition| PartitionLagReport {
                    offsets: PartitionOffsets {
                        partition,
                        log_start: 0,
                        log_end: per_partition,
                        committed: Some(0),
                    },
                    lag: per_partition,
                    consumer_alive: false,
                })
                .collect(),
            group_state: Some("Stable".to_owned()),
        }
    }

    #[test]
    fn a_first_seen_stage_starts_from_its_recorded_replicas_within_bounds() {
        let autoscaler = Autoscaler::new();
        let mut restarted = target("receiver", &auto());
        restarted.recorded_replicas = Some(4);
        restarted.recorded_lag = Some(1234);
        let mut too_many = target("stats", &auto());
        too_many.recorded_replicas = Some(50);
        let fresh = target("validate", &auto());
        let desired = autoscaler.register("default", "orders", vec![restarted, too_many, fresh]);
        assert_eq!(
            desired,
            [("receiver", 4), ("stats", 6), ("validate", 1)]
                .into_iter()
                .collect()
        );
        assert_eq!(
            autoscaler.lags("default", "orders"),
            BTreeMap::from([("receiver".to_owned(), 1234)])
        );
    }

    #[test]
    fn manual_and_paused_stages_publish_validates_number() {
        let autoscaler = Autoscaler::new();
        let manual = spec(serde_json::json!({"mode": "manual", "replicas": 3}));
        let mut manual_target = target("receiver", &manual);
        manual_target.replicas = 3;
        manual_target.recorded_replicas = Some(5);
        let mut paused = target("stats", &auto());
        paused.paused = true;
        paused.replicas = 0;
        let desired = autoscaler.register("default", "orders", vec![manual_target, paused]);
        assert_eq!(
            desired,
            [("receiver", 3), ("stats", 0)].into_iter().collect()
        );
    }

    #[test]
    fn a_poll_with_lag_scales_up_and_a_failed_poll_holds() {
        let autoscaler = Autoscaler::new();
        let metrics = Metrics::default();
        autoscaler.register("default", "orders", vec![target("receiver", &auto())]);

        let outcome = autoscaler
            .record_poll(&metrics, key("receiver"), Ok(lag_of(1000, 6)))
            .unwrap();
        assert_eq!(
            outcome.scaled,
            Some((1, 6)),
            "6 partitions cap the 60 asked for"
        );
        assert_eq!(outcome.lag, 6000);
        assert_eq!(autoscaler.desired(&key("receiver")), Some(6));
        assert_eq!(autoscaler.lags("default", "orders")["receiver"], 6000);
        // The next registration publishes what the autoscaler decided.
        let desired = autoscaler.register("default", "orders", vec![target("receiver", &auto())]);
        assert_eq!(desired.get("receiver"), Some(6));

        let failed = Err(LagError::TopicNotFound {
            bootstrap: "kafka:9092".to_owned(),
            topic: "orders".to_owned(),
        });
        assert!(
            autoscaler
                .record_poll(&metrics, key("receiver"), failed)
                .is_none()
        );
        assert_eq!(autoscaler.desired(&key("receiver")), Some(6), "held");
        // A stage nobody registers any more has nothing to record.
        assert!(
            autoscaler
                .record_poll(&metrics, key("gone"), Ok(lag_of(1, 1)))
                .is_none()
        );
    }

    #[test]
    fn registering_forgets_the_pipelines_stages_not_listed() {
        let autoscaler = Autoscaler::new();
        autoscaler.register(
            "default",
            "orders",
            vec![target("receiver", &auto()), target("stats", &auto())],
        );
        autoscaler.register("default", "other", vec![target("receiver", &auto())]);
        autoscaler.register("default", "orders", vec![target("receiver", &auto())]);
        assert_eq!(autoscaler.desired(&key("stats")), None);
        assert_eq!(autoscaler.desired(&key("receiver")), Some(1));
        let other = StageKey {
            pipeline: "other".to_owned(),
            ..key("receiver")
        };
        assert_eq!(
            autoscaler.desired(&other),
            Some(1),
            "another Pipeline's stay"
        );
    }

    #[test]
    fn due_stages_are_marked_in_flight_and_paused_or_unreadable_ones_skipped() {
        let autoscaler = Autoscaler::new();
        let mut paused = target("stats", &auto());
        paused.paused = true;
        let mut sasl = target("validate", &auto());
        sasl.unsupported = Some("no credentials");
        autoscaler.register(
            "default",
            "orders",
            vec![target("receiver", &auto()), paused, sasl],
        );
        let now = Instant::now() + Duration::from_millis(1);
        let due = autoscaler.due(now);
        let stages: Vec<&str> = due
            .values()
            .flatten()
            .map(|(key, _)| key.stage.as_str())
            .collect();
        assert_eq!(stages, ["receiver"]);
        assert!(autoscaler.due(now).is_empty(), "in flight until recorded");

        autoscaler.record_poll(&Metrics::default(), key("receiver"), Ok(lag_of(0, 1)));
        assert!(autoscaler.due(now).is_empty(), "next poll on the grid");
        assert_eq!(autoscaler.due(now + Duration::from_secs(3)).len(), 1);
    }
}
