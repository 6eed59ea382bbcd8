//! The autoscaler: for every Pipeline stage it polls the consumer group's lag at the stage's
//! `pollInterval`, runs the [`scaling`](crate::scaling) policy and, when the desired replicas
//! change, has the controller reconcile that Pipeline.
//!
//! Why through the reconcile rather than patching `spec.replicas` itself: both write the
//! Deployment with server-side apply as `ferry-operator`, and an apply that carries only
//! `spec.replicas` under that manager would drop every other field the manager owns. So the
//! autoscaler owns the desired replicas in [`Autoscaler`], the reconcile reads them
//! ([`Autoscaler::sync`]) and applies the whole Deployment, and one manager stays the single
//! writer. The trigger goes through `Controller::reconcile_on`, which also keeps reconciles of
//! one Pipeline from overlapping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::channel::mpsc::UnboundedSender;
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::controller::Context;
use crate::controller::validate::ValidatedPipeline;
use crate::crd::{Pipeline, PipelineStatus};
use crate::lag::{ClusterConfig, GroupLag, LagError, LagQuery, LagReader};
use crate::metrics::StageLabels;
use crate::scaling::{self, ScaleInput, ScalingPolicy, StageHistory, Why};

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
#[derive(Debug, Clone)]
struct StageTarget {
    cluster: ClusterConfig,
    query: LagQuery,
    policy: ScalingPolicy,
    poll_interval: Duration,
    paused: bool,
    /// Why lag can't be read for this stage, e.g. SASL credentials the operator doesn't hold.
    unsupported: Option<&'static str>,
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

    /// Called by the reconcile after `validate`: registers each stage for polling and sets
    /// its replicas to what the autoscaler wants (auto mode, not paused). A stage seen for
    /// the first time, e.g. after an operator restart, starts from the desired replicas its
    /// status recorded, so a restart doesn't reset a scaled-up Deployment to minReplicas.
    pub fn sync(
        &self,
        pipeline: &mut ValidatedPipeline,
        bootstrap_servers: &str,
        tls: bool,
        sasl: bool,
        previous: Option<&PipelineStatus>,
    ) {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let mut cluster = ClusterConfig::plaintext(bootstrap_servers);
        if tls {
            cluster
                .properties
                .insert("security.protocol".into(), "ssl".into());
        }
        let unsupported = sasl.then_some("SASL credentials are not available to the operator");
        let mut kept = BTreeSet::new();
        for stage in &mut pipeline.stages {
            let key = StageKey {
                namespace: pipeline.namespace.clone(),
                pipeline: pipeline.name.clone(),
                stage: stage.name.clone(),
            };
            let target = StageTarget {
                cluster: cluster.clone(),
                query: LagQuery {
                    topic: stage.worker_config.kafka.topic.clone(),
                    group: stage.worker_config.kafka.consumer_group.clone(),
                    offset_reset: stage.worker_config.kafka.auto_offset_reset,
                },
                policy: ScalingPolicy::from_spec(&stage.scaling),
                poll_interval: stage.scaling.poll_interval.as_duration(),
                paused: pipeline.paused,
                unsupported,
            };
            let auto = !pipeline.paused && target.policy.mode == crate::crd::ScalingMode::Auto;
            if let Some(reason) = unsupported
                && !stages.contains_key(&key)
            {
                warn!(stage = ?key, "not autoscaling: {reason}");
            }
            let entry = stages.entry(key.clone()).or_insert_with(|| {
                let recorded = previous
                    .and_then(|s| s.stages.iter().find(|s| s.name == stage.name))
                    .map(|s| s.desired_replicas);
                StageEntry {
                    target: target.clone(),
                    desired: recorded.unwrap_or(stage.replicas),
                    lag: previous
                        .and_then(|s| s.stages.iter().find(|s| s.name == stage.name))
                        .and_then(|s| s.lag),
                    history: StageHistory::default(),
                    next_poll: now,
                    in_flight: false,
                    persistent: Vec::new(),
                    last_error: None,
                }
            });
            if auto {
                entry.desired = entry
                    .desired
                    .clamp(target.policy.min_replicas, target.policy.max_replicas);
                stage.replicas = entry.desired;
            } else {
                // Paused or manual: validate's number stands; history restarts afterwards.
                entry.desired = stage.replicas;
                entry.history = StageHistory::default();
            }
            if entry.target.query != target.query || entry.target.cluster != target.cluster {
                entry.history = StageHistory::default();
                entry.next_poll = now;
            }
            entry.target = target;
            kept.insert(key);
        }
        stages.retain(|key, _| {
            key.namespace != pipeline.namespace
                || key.pipeline != pipeline.name
                || kept.contains(key)
        });
    }

    /// Called by the reconcile on the status it is about to write: the lag last read.
    pub fn fill_status(&self, status: &mut PipelineStatus, namespace: &str, pipeline: &str) {
        let stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        for stage in &mut status.stages {
            let key = StageKey {
                namespace: namespace.to_owned(),
                pipeline: pipeline.to_owned(),
                stage: stage.name.clone(),
            };
            if let Some(entry) = stages.get(&key)
                && entry.lag.is_some()
            {
                stage.lag = entry.lag;
            }
        }
        status.lag = status
            .stages
            .iter()
            .find(|s| s.name == crate::controller::validate::RECEIVER_STAGE)
            .and_then(|s| s.lag);
        drop(stages);
        self.status_refreshed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((namespace.to_owned(), pipeline.to_owned()), Instant::now());
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
    fn prune(&self, exists: impl Fn(&StageKey) -> bool, ctx: &Context) {
        let mut stages = self.stages.lock().unwrap_or_else(PoisonError::into_inner);
        stages.retain(|key, _| {
            let keep = exists(key);
            if !keep {
                ctx.metrics.forget_stage(&key.labels());
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

/// Runs the autoscaler until `shutdown` turns true.
pub async fn run(
    ctx: Arc<Context>,
    store: Store<Pipeline>,
    trigger: UnboundedSender<ObjectRef<Pipeline>>,
    mut shutdown: watch::Receiver<bool>,
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
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    return;
                }
            }
        }
        let now = Instant::now();
        if now.duration_since(last_prune) > Duration::from_secs(5) {
            last_prune = now;
            ctx.autoscaler
                .prune(|key| store.get(&key.pipeline_ref()).is_some(), &ctx);
        }
        for (cluster, batch) in ctx.autoscaler.due(now) {
            let ctx = ctx.clone();
            let store = store.clone();
            let trigger = trigger.clone();
            tokio::spawn(async move {
                poll_cluster(&ctx, &store, &trigger, &cluster, batch).await;
            });
        }
    }
}

async fn poll_cluster(
    ctx: &Context,
    store: &Store<Pipeline>,
    trigger: &UnboundedSender<ObjectRef<Pipeline>>,
    cluster: &ClusterConfig,
    batch: Vec<(StageKey, LagQuery)>,
) {
    let (keys, queries): (Vec<StageKey>, Vec<LagQuery>) = batch.into_iter().unzip();
    let polled = queries.len();
    let (results, kafka_calls) = ctx.autoscaler.reader.read_counted(cluster, queries).await;
    ctx.metrics.count_lag_batch(polled, kafka_calls);
    let outcomes: Vec<Outcome> = keys
        .into_iter()
        .zip(results)
        .filter_map(|(key, result)| apply_poll(ctx, key, result))
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
            ctx.metrics.count_scale(&outcome.key.labels(), to > from);
            if let Some(pipeline) = &pipeline {
                publish(
                    ctx,
                    pipeline,
                    EventType::Normal,
                    reason,
                    format!(
                        "scaled stage {} {verb} from {from} to {to} replicas: lag {} records",
                        outcome.key.stage, outcome.lag
                    ),
                )
                .await;
            }
        }
        if let (Some(partitions), Some(pipeline)) = (&outcome.newly_persistent, &pipeline) {
            publish(
                ctx,
                pipeline,
                EventType::Warning,
                "PersistentLag",
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

/// Runs the policy on one poll's result and records it; `None` when the stage vanished.
fn apply_poll(ctx: &Context, key: StageKey, result: Result<GroupLag, LagError>) -> Option<Outcome> {
    let now = Instant::now();
    let mut stages = ctx
        .autoscaler
        .stages
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let entry = stages.get_mut(&key)?;
    entry.in_flight = false;
    entry.next_poll = next_grid_point(ctx.autoscaler.grid_origin, now, entry.target.poll_interval);
    let lag = match result {
        Ok(lag) => lag,
        Err(err) => {
            ctx.metrics.count_lag_poll_failure(&key.labels());
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
    let scaled = matches!(decision.why, Why::ScaleUp | Why::ScaleDown) && decision.desired != from;
    if scaled {
        entry.desired = decision.desired;
    }
    let newly_persistent = (!decision.persistent_partitions.is_empty()
        && decision.persistent_partitions != entry.persistent)
        .then(|| decision.persistent_partitions.clone());
    entry.persistent = decision.persistent_partitions.clone();
    ctx.metrics.observe_stage(
        &key.labels(),
        decision.lag,
        entry.desired,
        entry.persistent.len(),
    );
    drop(stages);

    let refresh_status = lag_changed
        && ctx
            .autoscaler
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

async fn publish(ctx: &Context, pipeline: &Pipeline, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Scale".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx
        .recorder
        .publish(&event, &pipeline.object_ref(&()))
        .await
    {
        warn!(error = %err, "cannot publish event");
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
