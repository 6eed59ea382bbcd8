//! The stage between `validate` and `build`: the topics between chained stages. It creates
//! each `output.create` topic (a Strimzi `KafkaTopic` with `spec.kafka.strimzi`, through the
//! Kafka admin API otherwise), finds the stages whose input topic does not exist yet, and,
//! with `spec.deletionPolicy: delete`, deletes the output topics Ferry created for stages
//! that are gone. [`plan`] is pure; [`reconcile_topics`] makes the admin calls.
//!
//! A Pipeline without chained inputs and without `output.create` makes no Kafka call here:
//! its one topic is the user's, and a missing one is what the workers report (`TopicMissing`).
//!
//! A stage whose input is missing still gets its Deployment, at its replicas as usual
//! (minReplicas until the autoscaler reads a lag): its workers wait for the topic and
//! report `TopicMissing`, and once the topic exists they start without another rollout.
//! Holding the Deployment back instead would need one more reconcile to start them.
//!
//! Topic retention follows `spec.kafka.createTopic`'s rule: a topic Ferry created is kept
//! when its stage or the Pipeline goes away, and deleted only with `deletionPolicy: delete`.
//! Ferry deletes only topics its status records as its own (`status.createdTopics`): a topic
//! that already existed is never recorded, so never deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use kube::ResourceExt;

use super::validate::{ValidatedPipeline, ValidatedTopic};
use crate::crd::{CreatedTopic, DeletionPolicy, Pipeline, TopicCreator};
use crate::lag::ClusterConfig;
use crate::topics::{self, Creation, NewTopicSpec, TopicAdmin};

/// Whether, and how, the operator reaches the Kafka cluster with the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaAccess {
    Admin(ClusterConfig),
    /// Why it cannot: credentials or a CA it does not hold.
    Unsupported(&'static str),
}

/// How the operator reaches the Pipeline's Kafka. It reads no Secret, so SASL, a private
/// CA and a client certificate are out of its reach (as they are for the lag reader).
pub fn kafka_access(pipeline: &Pipeline, bootstrap_servers: &str) -> KafkaAccess {
    let kafka = &pipeline.spec.kafka;
    if kafka.sasl.is_some() {
        return KafkaAccess::Unsupported("SASL credentials the operator doesn't hold");
    }
    let mut cluster = ClusterConfig::plaintext(bootstrap_servers);
    if let Some(tls) = &kafka.tls {
        if tls.ca_secret_ref.is_some() {
            return KafkaAccess::Unsupported(
                "the private CA of spec.kafka.tls.caSecretRef, which the operator doesn't read",
            );
        }
        if tls.client_secret_ref.is_some() {
            return KafkaAccess::Unsupported(
                "the client certificate of spec.kafka.tls.clientSecretRef, which the operator doesn't read",
            );
        }
        cluster
            .properties
            .insert("security.protocol".into(), "ssl".into());
    }
    KafkaAccess::Admin(cluster)
}

/// One `output.create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedTopic {
    pub stage: String,
    /// `spec.processors[<i>].output`, for messages.
    pub field: String,
    pub topic: String,
    pub partitions: Option<i32>,
    pub replicas: Option<i32>,
    pub config: BTreeMap<String, String>,
}

/// Where output `KafkaTopic`s go: beside the Strimzi `Kafka`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StrimziTarget {
    pub namespace: String,
    pub cluster: String,
}

/// What this round must do about topics, from the spec alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub pipeline: String,
    pub pipeline_namespace: String,
    /// `spec.kafka.topic`.
    pub source: String,
    /// `spec.kafka.createTopic.partitions`: the source's partitions when metadata can't be read.
    pub source_partitions_hint: Option<i32>,
    pub wanted: Vec<WantedTopic>,
    /// `(stage, topic)` of every stage reading a topic other than the source.
    pub inputs: Vec<(String, String)>,
    pub strimzi: Option<StrimziTarget>,
    pub delete: bool,
}

impl TopicPlan {
    /// Whether this round has anything to look at in Kafka, given what Ferry recorded.
    pub fn needs_kafka(&self, recorded: &[CreatedTopic]) -> bool {
        !self.wanted.is_empty() || !self.inputs.is_empty() || (self.delete && !recorded.is_empty())
    }

    fn wants(&self, topic: &str) -> bool {
        self.wanted.iter().any(|w| w.topic == topic)
    }
}

/// The plan of `pipeline` as validated.
pub fn plan(pipeline: &Pipeline, validated: &ValidatedPipeline) -> TopicPlan {
    let spec = &pipeline.spec;
    let wanted = spec
        .processors
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let output = p.output.as_ref()?;
            let create = output.create.as_ref()?;
            Some(WantedTopic {
                stage: p.name.clone(),
                field: format!("spec.processors[{i}].output"),
                topic: output.topic.clone(),
                partitions: create.partitions,
                replicas: create.replicas,
                config: create.config.clone(),
            })
        })
        .collect();
    let inputs = validated
        .stages
        .iter()
        .filter(|s| s.input_topic != spec.kafka.topic)
        .map(|s| (s.name.clone(), s.input_topic.clone()))
        .collect();
    TopicPlan {
        pipeline: validated.name.clone(),
        pipeline_namespace: validated.namespace.clone(),
        source: spec.kafka.topic.clone(),
        source_partitions_hint: spec.kafka.create_topic.as_ref().map(|c| c.partitions),
        wanted,
        inputs,
        strimzi: spec.kafka.strimzi.as_ref().map(|s| StrimziTarget {
            namespace: s
                .namespace
                .clone()
                .unwrap_or_else(|| validated.namespace.clone()),
            cluster: s.cluster.clone(),
        }),
        delete: spec.deletion_policy == DeletionPolicy::Delete,
    }
}

/// The name of the `KafkaTopic` of stage `stage`'s output.
pub fn output_kafka_topic_name(pipeline: &str, stage: &str) -> String {
    format!("{pipeline}-{stage}-output")
}

/// What this round found and did; the status and Events say it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopicsOutcome {
    /// `(stage, topic)` of each stage whose input topic does not exist yet.
    pub missing_inputs: Vec<(String, String)>,
    /// Every topic Ferry created and still holds: what the status records.
    pub created: Vec<CreatedTopic>,
    /// Topics created this round.
    pub newly_created: Vec<String>,
    /// Topics deleted this round (`deletionPolicy: delete`, their stage gone).
    pub deleted: Vec<String>,
    /// Why the operator cannot create the topics asked for, when it cannot.
    pub unsupported: Option<String>,
    /// Admin calls that failed, each message naming its topic.
    pub failures: Vec<String>,
    /// The `KafkaTopic`s to apply (Strimzi).
    pub kafka_topics: Vec<ValidatedTopic>,
    /// `KafkaTopic`s (`namespace`, `name`) to delete: their stage is gone, the policy `delete`.
    pub kafka_topics_to_delete: Vec<(String, String)>,
}

impl TopicsOutcome {
    /// The entries of the topics created this round.
    pub fn newly_created_entries(&self) -> impl Iterator<Item = &CreatedTopic> {
        self.created
            .iter()
            .filter(|c| self.newly_created.contains(&c.topic))
    }
}

/// Creates, checks and deletes this round's topics. Never fails the round: a failed call
/// is in `failures`, which the status and an Event name, and the round is retried.
pub async fn reconcile_topics(
    admin: Arc<dyn TopicAdmin>,
    plan: &TopicPlan,
    access: &KafkaAccess,
    recorded: &[CreatedTopic],
    now: &str,
) -> TopicsOutcome {
    let mut outcome = TopicsOutcome {
        created: recorded.to_vec(),
        ..TopicsOutcome::default()
    };
    if !plan.needs_kafka(recorded) {
        return outcome;
    }
    // What exists, when the operator can read it.
    let existing: Option<BTreeMap<String, i32>> = match access {
        KafkaAccess::Admin(cluster) => {
            let mut names: BTreeSet<String> = BTreeSet::from([plan.source.clone()]);
            names.extend(plan.inputs.iter().map(|(_, t)| t.clone()));
            names.extend(plan.wanted.iter().map(|w| w.topic.clone()));
            let names: Vec<String> = names.into_iter().collect();
            let (admin, cluster) = (admin.clone(), cluster.clone());
            let bootstrap = cluster.bootstrap_servers.clone();
            match topics::blocking(&bootstrap, move || admin.partitions(&cluster, &names)).await {
                Ok(found) => Some(found),
                Err(err) => {
                    outcome.failures.push(err.to_string());
                    None
                }
            }
        }
        KafkaAccess::Unsupported(_) => None,
    };
    let source_partitions = existing
        .as_ref()
        .and_then(|e| e.get(&plan.source).copied())
        .or(plan.source_partitions_hint);
    let is_recorded = |topic: &str| outcome_has(recorded, topic);

    for wanted in &plan.wanted {
        let exists = existing.as_ref().map(|e| e.contains_key(&wanted.topic));
        let partitions = wanted.partitions.or(source_partitions);
        if let Some(strimzi) = &plan.strimzi {
            // A KafkaTopic over a topic someone else made would bring it under Strimzi (and
            // its deletion would delete that topic): only one Ferry recorded, or one Kafka
            // shows missing, or (the operator unable to look) one the user sized explicitly.
            let allowed = is_recorded(&wanted.topic)
                || exists == Some(false)
                || (existing.is_none()
                    && matches!(access, KafkaAccess::Unsupported(_))
                    && wanted.partitions.is_some());
            if !allowed {
                if let (None, KafkaAccess::Unsupported(reason)) = (&existing, access) {
                    outcome.unsupported = Some(format!(
                        "the operator cannot see whether topic {} ({}.create) exists: it would need {reason}; set {}.create.partitions to have its KafkaTopic applied anyway (an existing topic of that name then comes under it), or create the topic",
                        wanted.topic, wanted.field, wanted.field
                    ));
                }
                continue;
            }
            let Some(partitions) = partitions else {
                outcome.failures.push(format!(
                    "cannot size topic {} ({}.create): the partitions of source topic {} are unknown; set {}.create.partitions",
                    wanted.topic, wanted.field, plan.source, wanted.field
                ));
                continue;
            };
            let resource_name = output_kafka_topic_name(&plan.pipeline, &wanted.stage);
            outcome.kafka_topics.push(ValidatedTopic {
                resource_name: resource_name.clone(),
                namespace: strimzi.namespace.clone(),
                cluster: strimzi.cluster.clone(),
                topic_name: wanted.topic.clone(),
                partitions,
                replicas: wanted.replicas,
                config: wanted.config.clone(),
                pipeline_namespace: plan.pipeline_namespace.clone(),
                stage: Some(wanted.stage.clone()),
            });
            if !is_recorded(&wanted.topic) {
                outcome.created.push(CreatedTopic {
                    topic: wanted.topic.clone(),
                    stage: wanted.stage.clone(),
                    partitions,
                    via: TopicCreator::KafkaTopic,
                    kafka_topic: Some(format!("{}/{resource_name}", strimzi.namespace)),
                    created_at: Some(now.to_owned()),
                });
                outcome.newly_created.push(wanted.topic.clone());
            }
            continue;
        }
        let KafkaAccess::Admin(cluster) = access else {
            continue;
        };
        if exists != Some(false) {
            // There, or unknown (the failure is already recorded).
            continue;
        }
        let Some(partitions) = partitions else {
            outcome.failures.push(format!(
                "cannot create topic {} ({}.create): source topic {} does not exist, so its partition count is unknown; create it, or set {}.create.partitions",
                wanted.topic, wanted.field, plan.source, wanted.field
            ));
            continue;
        };
        let new = NewTopicSpec {
            name: wanted.topic.clone(),
            partitions,
            replicas: wanted.replicas,
            config: wanted.config.clone(),
        };
        let (admin, cluster) = (admin.clone(), cluster.clone());
        let bootstrap = cluster.bootstrap_servers.clone();
        match topics::blocking(&bootstrap, move || admin.create(&cluster, &new)).await {
            Ok(Creation::Created) => {
                outcome.created.retain(|c| c.topic != wanted.topic);
                outcome.created.push(CreatedTopic {
                    topic: wanted.topic.clone(),
                    stage: wanted.stage.clone(),
                    partitions,
                    via: TopicCreator::AdminApi,
                    kafka_topic: None,
                    created_at: Some(now.to_owned()),
                });
                outcome.newly_created.push(wanted.topic.clone());
            }
            Ok(Creation::AlreadyExists) => {}
            Err(err) => outcome.failures.push(format!(
                "{err} (output of stage {}, {}.create)",
                wanted.stage, wanted.field
            )),
        }
    }

    if let (KafkaAccess::Unsupported(reason), None) = (access, &plan.strimzi) {
        let topics: Vec<&str> = plan
            .wanted
            .iter()
            .filter(|w| !is_recorded(&w.topic))
            .map(|w| w.topic.as_str())
            .collect();
        if !topics.is_empty() {
            outcome.unsupported = Some(format!(
                "the operator cannot create topic(s) {} (output.create) nor see whether they exist: it would need {reason}; create them, the stages use the topics that exist",
                topics.join(", ")
            ));
        }
    }

    if let Some(existing) = &existing {
        let just_made: BTreeSet<&str> = outcome.newly_created.iter().map(String::as_str).collect();
        outcome.missing_inputs = plan
            .inputs
            .iter()
            .filter(|(_, topic)| {
                // One the admin API just made exists now; a new KafkaTopic waits for Strimzi.
                let there = existing.contains_key(topic)
                    || (plan.strimzi.is_none() && just_made.contains(topic.as_str()));
                !there
            })
            .cloned()
            .collect();
    }

    if plan.delete {
        let gone: Vec<CreatedTopic> = outcome
            .created
            .iter()
            .filter(|c| !plan.wants(&c.topic))
            .cloned()
            .collect();
        for entry in gone {
            match (entry.via, access) {
                (TopicCreator::KafkaTopic, _) => {
                    if let Some((namespace, name)) =
                        entry.kafka_topic.as_deref().and_then(|k| k.split_once('/'))
                    {
                        outcome
                            .kafka_topics_to_delete
                            .push((namespace.to_owned(), name.to_owned()));
                    }
                    outcome.created.retain(|c| c.topic != entry.topic);
                    outcome.deleted.push(entry.topic.clone());
                }
                (TopicCreator::AdminApi, KafkaAccess::Admin(cluster)) => {
                    let (admin, cluster) = (admin.clone(), cluster.clone());
                    let bootstrap = cluster.bootstrap_servers.clone();
                    let topic = entry.topic.clone();
                    match topics::blocking(&bootstrap, move || admin.delete(&cluster, &topic)).await
                    {
                        Ok(_) => {
                            outcome.created.retain(|c| c.topic != entry.topic);
                            outcome.deleted.push(entry.topic.clone());
                        }
                        Err(err) => outcome.failures.push(format!(
                            "{err} (stage {} is gone and spec.deletionPolicy is delete)",
                            entry.stage
                        )),
                    }
                }
                (TopicCreator::AdminApi, KafkaAccess::Unsupported(_)) => {}
            }
        }
    }
    outcome
}

/// The topics each Pipeline's rounds created that its cached status may not show yet.
///
/// A round reads the status from the watch cache, which can lag behind the last round's
/// write (a Deployment's event can wake the next round first), and a failed status write
/// leaves no record at all. A topic created then exists but looks someone else's: never
/// recorded again, and so never deleted with `deletionPolicy: delete`. Each entry is kept
/// until a cached status lists it (the cache only moves forward) or the topic is deleted.
#[derive(Debug, Default)]
pub struct CreatedTopicsMemo {
    by_pipeline: Mutex<HashMap<String, Vec<CreatedTopic>>>,
}

impl CreatedTopicsMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<CreatedTopic>>> {
        self.by_pipeline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What `pipeline`'s status records, and the topics created since that it doesn't yet.
    pub fn recorded(&self, pipeline: &Pipeline) -> Vec<CreatedTopic> {
        let mut recorded = pipeline
            .status
            .as_ref()
            .map(|s| s.created_topics.clone())
            .unwrap_or_default();
        let key = memo_key(pipeline);
        let mut memo = self.lock();
        if let Some(unseen) = memo.get_mut(&key) {
            unseen.retain(|c| !outcome_has(&recorded, &c.topic));
            recorded.extend(unseen.iter().cloned());
            if unseen.is_empty() {
                memo.remove(&key);
            }
        }
        recorded
    }

    /// Remembers the round's creations and forgets its deletions.
    pub fn remember(&self, pipeline: &Pipeline, outcome: &TopicsOutcome) {
        if outcome.newly_created.is_empty() && outcome.deleted.is_empty() {
            return;
        }
        let key = memo_key(pipeline);
        let mut memo = self.lock();
        let unseen = memo.entry(key.clone()).or_default();
        unseen.retain(|c| !outcome.deleted.contains(&c.topic));
        for created in outcome.newly_created_entries() {
            unseen.retain(|c| c.topic != created.topic);
            unseen.push(created.clone());
        }
        if unseen.is_empty() {
            memo.remove(&key);
        }
    }

    /// Forgets a Pipeline whose deletion is done.
    pub fn forget(&self, pipeline: &Pipeline) {
        self.lock().remove(&memo_key(pipeline));
    }
}

/// The Pipeline's UID: one recreated under the same name holds none of its topics.
fn memo_key(pipeline: &Pipeline) -> String {
    pipeline.uid().unwrap_or_else(|| {
        format!(
            "{}/{}",
            pipeline.namespace().unwrap_or_default(),
            pipeline.name_any()
        )
    })
}

fn outcome_has(recorded: &[CreatedTopic], topic: &str) -> bool {
    recorded.iter().any(|c| c.topic == topic)
}

/// Deletes every topic Ferry created through the admin API, for a Pipeline being deleted
/// with `deletionPolicy: delete`; returns the deleted ones. `KafkaTopic` entries are the
/// finalizer's to delete through the API server.
pub async fn delete_created(
    admin: Arc<dyn TopicAdmin>,
    access: &KafkaAccess,
    recorded: &[CreatedTopic],
) -> Result<Vec<String>, topics::TopicError> {
    let KafkaAccess::Admin(cluster) = access else {
        return Ok(Vec::new());
    };
    let mut deleted = Vec::new();
    for entry in recorded.iter().filter(|c| c.via == TopicCreator::AdminApi) {
        let (admin, cluster) = (admin.clone(), cluster.clone());
        let bootstrap = cluster.bootstrap_servers.clone();
        let topic = entry.topic.clone();
        if topics::blocking(&bootstrap, move || admin.delete(&cluster, &topic)).await? {
            deleted.push(entry.topic.clone());
        }
    }
    Ok(deleted)
}
