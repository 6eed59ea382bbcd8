//! The topics between chained stages: the plan, what each admin answer leads to, the
//! conditions, and the reconcile's calls (against the mocked API server and an in-process
//! fake of the Kafka admin API).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::context::Context;
use super::dereference::{Bootstrap, Dereferenced};
use super::mock_api::{self, FakeApi};
use super::reconcile::reconcile;
use super::status::{self, DEGRADED, PROGRESSING, READY};
use super::topics::{self, KafkaAccess, TopicsOutcome, kafka_access, plan, reconcile_topics};
use super::validate::{OperatorDefaults, ValidatedPipeline, validate};
use crate::crd::{CreatedTopic, DeletionPolicy, Pipeline, PipelineStatus, TopicCreator};
use crate::lag::ClusterConfig;
use crate::scaling::DesiredReplicas;
use crate::topics::{Creation, NewTopicSpec, TopicAdmin, TopicError};

/// raw → enrich → check → receiver; enrich's output is created, check's exists or not.
const CHAIN: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata: {name: risk, namespace: bank, uid: 11111111-2222-4333-8444-555555555555, generation: 1}
spec:
  kafka: {bootstrapServers: "kafka:9092", topic: trades.raw}
  redis: {host: redis}
  format: dsdata
  receiver:
    input: {from: check}
  processors:
    - name: enrich
      enrich: {referenceKey: ref:desk}
      output:
        topic: trades.enriched
        create: {config: {retention.ms: "3600000"}}
    - name: check
      input: {from: enrich}
      validate:
        rules:
          - {name: desk-known, expression: "ref.desk NOT NULL"}
      output: {topic: trades.validated}
"#;

/// The Kafka admin API in memory: topics and their partitions, and every call made.
#[derive(Debug, Default)]
struct FakeAdmin {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    topics: BTreeMap<String, i32>,
    calls: Vec<String>,
    fail_create: bool,
}

impl FakeAdmin {
    fn with(topics: &[(&str, i32)]) -> Arc<Self> {
        let admin = Self::default();
        admin.lock().topics = topics.iter().map(|(t, p)| ((*t).to_owned(), *p)).collect();
        Arc::new(admin)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().calls)
    }
    fn partitions_of(&self, topic: &str) -> Option<i32> {
        self.lock().topics.get(topic).copied()
    }
}

impl TopicAdmin for FakeAdmin {
    fn partitions(
        &self,
        _: &ClusterConfig,
        topics: &[String],
    ) -> Result<BTreeMap<String, i32>, TopicError> {
        let mut state = self.lock();
        state.calls.push(format!("partitions {}", topics.join(",")));
        Ok(topics
            .iter()
            .filter_map(|t| Some((t.clone(), *state.topics.get(t)?)))
            .collect())
    }
    fn create(
        &self,
        cluster: &ClusterConfig,
        topic: &NewTopicSpec,
    ) -> Result<Creation, TopicError> {
        let mut state = self.lock();
        state
            .calls
            .push(format!("create {} {}", topic.name, topic.partitions));
        if state.fail_create {
            return Err(TopicError::CreateTopic {
                bootstrap: cluster.bootstrap_servers.clone(),
                topic: topic.name.clone(),
                message: "Broker: Policy violation".to_owned(),
            });
        }
        if state.topics.contains_key(&topic.name) {
            return Ok(Creation::AlreadyExists);
        }
        state.topics.insert(topic.name.clone(), topic.partitions);
        Ok(Creation::Created)
    }
    fn delete(&self, _: &ClusterConfig, topic: &str) -> Result<bool, TopicError> {
        let mut state = self.lock();
        state.calls.push(format!("delete {topic}"));
        Ok(state.topics.remove(topic).is_some())
    }
}

fn pipeline(yaml: &str, edit: impl FnOnce(&mut Pipeline)) -> Pipeline {
    let mut pipeline: Pipeline = serde_yaml::from_str(yaml).unwrap();
    edit(&mut pipeline);
    pipeline
}

fn validated(pipeline: &Pipeline) -> ValidatedPipeline {
    validate(
        pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("kafka:9092".to_owned()),
        },
        &OperatorDefaults::new("ferry/worker:test"),
    )
    .unwrap()
}

const NOW: &str = "2026-01-01T00:00:00Z";

async fn round(
    admin: &Arc<FakeAdmin>,
    pipeline: &Pipeline,
    recorded: &[CreatedTopic],
) -> TopicsOutcome {
    let validated = validated(pipeline);
    reconcile_topics(
        admin.clone(),
        &plan(pipeline, &validated),
        &kafka_access(pipeline, "kafka:9092"),
        recorded,
        NOW,
    )
    .await
}

#[test]
fn the_plan_lists_created_outputs_and_chained_inputs_only() {
    let chain = pipeline(CHAIN, |_| {});
    let planned = plan(&chain, &validated(&chain));
    assert_eq!(planned.wanted.len(), 1);
    assert_eq!(planned.wanted[0].topic, "trades.enriched");
    assert_eq!(planned.wanted[0].field, "spec.processors[0].output");
    assert_eq!(planned.wanted[0].partitions, None);
    assert_eq!(
        planned.inputs,
        [
            ("receiver".to_owned(), "trades.validated".to_owned()),
            ("check".to_owned(), "trades.enriched".to_owned()),
        ]
    );
    assert!(planned.needs_kafka(&[]));

    // One topic, no creation: nothing to look at in Kafka.
    let single = pipeline(include_str!("../../../examples/pipeline.yaml"), |p| {
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some("u".into());
    });
    assert!(!plan(&single, &validated(&single)).needs_kafka(&[]));
}

#[test]
fn the_operator_reaches_only_clusters_it_holds_no_secret_for() {
    let plain = pipeline(CHAIN, |_| {});
    assert_eq!(
        kafka_access(&plain, "k:9092"),
        KafkaAccess::Admin(ClusterConfig::plaintext("k:9092"))
    );
    let tls = pipeline(CHAIN, |p| p.spec.kafka.tls = Some(Default::default()));
    let KafkaAccess::Admin(cluster) = kafka_access(&tls, "k:9093") else {
        panic!("TLS with system roots is reachable");
    };
    assert_eq!(cluster.properties["security.protocol"], "ssl");
    let private_ca = pipeline(CHAIN, |p| {
        p.spec.kafka.tls = Some(
            serde_json::from_value(
                serde_json::json!({"caSecretRef": {"name": "ca", "key": "ca.crt"}}),
            )
            .unwrap(),
        );
    });
    assert!(
        matches!(kafka_access(&private_ca, "k:9093"), KafkaAccess::Unsupported(r) if r.contains("caSecretRef"))
    );
    let sasl = pipeline(CHAIN, |p| {
        p.spec.kafka.sasl = Some(
            serde_json::from_value(serde_json::json!({
                "mechanism": "SCRAM-SHA-512", "username": "u",
                "passwordSecretRef": {"name": "s", "key": "p"}
            }))
            .unwrap(),
        );
    });
    assert!(
        matches!(kafka_access(&sasl, "k:9092"), KafkaAccess::Unsupported(r) if r.contains("SASL"))
    );
}

#[tokio::test]
async fn a_created_output_takes_the_source_partitions_and_is_recorded_once() {
    let admin = FakeAdmin::with(&[("trades.raw", 6)]);
    let chain = pipeline(CHAIN, |_| {});
    let outcome = round(&admin, &chain, &[]).await;
    assert_eq!(
        admin.calls(),
        [
            "partitions trades.enriched,trades.raw,trades.validated",
            "create trades.enriched 6"
        ]
    );
    assert_eq!(admin.partitions_of("trades.enriched"), Some(6));
    assert_eq!(
        outcome.created,
        [CreatedTopic {
            topic: "trades.enriched".into(),
            stage: "enrich".into(),
            partitions: 6,
            via: TopicCreator::AdminApi,
            kafka_topic: None,
            created_at: Some(NOW.into()),
        }]
    );
    assert_eq!(outcome.newly_created, ["trades.enriched"]);
    // check's input was just made; the receiver's (not asked to be created) is missing.
    assert_eq!(
        outcome.missing_inputs,
        [("receiver".to_owned(), "trades.validated".to_owned())]
    );
    assert!(outcome.failures.is_empty());

    // The next round finds it there: no create, the record kept.
    let again = round(&admin, &chain, &outcome.created).await;
    assert_eq!(admin.calls().len(), 1, "only the metadata read");
    assert_eq!(again.created, outcome.created);
    assert!(again.newly_created.is_empty());
}

#[tokio::test]
async fn explicit_partitions_win_and_a_topic_someone_else_made_is_not_ferrys() {
    let admin = FakeAdmin::with(&[("trades.raw", 6), ("trades.validated", 2)]);
    let chain = pipeline(CHAIN, |p| {
        p.spec.processors[0]
            .output
            .as_mut()
            .unwrap()
            .create
            .as_mut()
            .unwrap()
            .partitions = Some(3);
    });
    let outcome = round(&admin, &chain, &[]).await;
    assert_eq!(admin.partitions_of("trades.enriched"), Some(3));
    assert_eq!(outcome.created[0].partitions, 3);
    assert!(outcome.missing_inputs.is_empty());

    // Already there before the Pipeline: never recorded, so never deleted.
    let admin = FakeAdmin::with(&[("trades.raw", 6), ("trades.enriched", 1)]);
    let outcome = round(&admin, &chain, &[]).await;
    assert!(outcome.created.is_empty());
    assert!(!admin.calls().iter().any(|c| c.starts_with("create")));
}

#[tokio::test]
async fn without_a_source_topic_or_with_a_failing_broker_the_failure_names_the_topic() {
    let chain = pipeline(CHAIN, |_| {});
    let admin = FakeAdmin::with(&[]);
    let outcome = round(&admin, &chain, &[]).await;
    assert!(outcome.created.is_empty());
    assert_eq!(outcome.failures.len(), 1);
    assert!(
        outcome.failures[0].contains("trades.enriched")
            && outcome.failures[0].contains("spec.processors[0].output.create.partitions"),
        "{:?}",
        outcome.failures
    );

    let admin = FakeAdmin::with(&[("trades.raw", 6)]);
    admin.lock().fail_create = true;
    let outcome = round(&admin, &chain, &[]).await;
    assert!(outcome.created.is_empty());
    assert!(
        outcome.failures[0].contains("cannot create topic trades.enriched")
            && outcome.failures[0].contains("Policy violation")
            && outcome.failures[0].contains("stage enrich"),
        "{:?}",
        outcome.failures
    );
    assert!(
        outcome
            .missing_inputs
            .contains(&("check".to_owned(), "trades.enriched".to_owned()))
    );
}

#[tokio::test]
async fn a_removed_stage_keeps_its_topic_unless_the_policy_deletes() {
    let admin = FakeAdmin::with(&[("trades.raw", 6)]);
    let chain = pipeline(CHAIN, |_| {});
    let created = round(&admin, &chain, &[]).await.created;
    admin.calls();
    // enrich goes; check now reads the raw topic.
    let shorter = |policy| {
        pipeline(CHAIN, |p| {
            p.spec.processors.remove(0);
            p.spec.processors[0].input = None;
            p.spec.deletion_policy = policy;
        })
    };
    let retained = round(&admin, &shorter(DeletionPolicy::Retain), &created).await;
    assert_eq!(retained.created, created, "still Ferry's, still listed");
    assert!(!admin.calls().iter().any(|c| c.starts_with("delete")));
    assert_eq!(admin.partitions_of("trades.enriched"), Some(6));

    let deleted = round(&admin, &shorter(DeletionPolicy::Delete), &created).await;
    assert!(admin.calls().contains(&"delete trades.enriched".to_owned()));
    assert_eq!(deleted.deleted, ["trades.enriched"]);
    assert!(deleted.created.is_empty());
    assert_eq!(admin.partitions_of("trades.enriched"), None);
}

#[tokio::test]
async fn a_cluster_the_operator_cannot_write_to_is_said_and_not_called() {
    let admin = FakeAdmin::with(&[("trades.raw", 6)]);
    let chain = pipeline(CHAIN, |p| {
        p.spec.kafka.sasl = Some(
            serde_json::from_value(serde_json::json!({
                "mechanism": "SCRAM-SHA-512", "username": "u",
                "passwordSecretRef": {"name": "s", "key": "p"}
            }))
            .unwrap(),
        );
    });
    let outcome = round(&admin, &chain, &[]).await;
    assert!(admin.calls().is_empty());
    let said = outcome.unsupported.unwrap();
    assert!(
        said.contains("trades.enriched") && said.contains("SASL"),
        "{said}"
    );
    assert!(outcome.missing_inputs.is_empty(), "unknown, not missing");
}

#[tokio::test]
async fn with_strimzi_an_output_is_a_labelled_kafka_topic_sized_like_the_source() {
    let admin = FakeAdmin::with(&[("trades.raw", 4)]);
    let chain = pipeline(CHAIN, |p| {
        p.spec.kafka.bootstrap_servers = None;
        p.spec.kafka.strimzi = Some(
            serde_json::from_value(serde_json::json!({"cluster": "main", "namespace": "kafka"}))
                .unwrap(),
        );
    });
    let outcome = round(&admin, &chain, &[]).await;
    assert!(
        !admin.calls().iter().any(|c| c.starts_with("create")),
        "Strimzi creates it"
    );
    assert_eq!(outcome.kafka_topics.len(), 1);
    let topic = &outcome.kafka_topics[0];
    assert_eq!(topic.resource_name, "risk-enrich-output");
    assert_eq!((topic.namespace.as_str(), topic.partitions), ("kafka", 4));
    assert_eq!(outcome.created[0].via, TopicCreator::KafkaTopic);
    assert_eq!(
        outcome.created[0].kafka_topic.as_deref(),
        Some("kafka/risk-enrich-output")
    );
    // Until Strimzi made it, check waits for it.
    assert!(
        outcome
            .missing_inputs
            .contains(&("check".to_owned(), "trades.enriched".to_owned()))
    );

    let mut validated = validated(&chain);
    validated.output_topics = outcome.kafka_topics.clone();
    let children = super::build::build(&validated, &DesiredReplicas::default()).unwrap();
    let built = &children.output_topics[0];
    let labels = built.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["ferry.dev/stage"], "enrich");
    assert_eq!(labels["strimzi.io/cluster"], "main");
    assert_eq!(labels["ferry.dev/pipeline-namespace"], "bank");
    assert!(
        built.metadata.owner_references.is_none(),
        "labelled, never owned"
    );
    assert_eq!(built.data["spec"]["topicName"], "trades.enriched");
    assert_eq!(built.data["spec"]["partitions"], 4);
    assert_eq!(built.data["spec"]["config"]["retention.ms"], "3600000");

    // Removed with deletionPolicy delete: the KafkaTopic goes, by name.
    let removed = pipeline(CHAIN, |p| {
        p.spec.kafka.bootstrap_servers = None;
        p.spec.kafka.strimzi = Some(
            serde_json::from_value(serde_json::json!({"cluster": "main", "namespace": "kafka"}))
                .unwrap(),
        );
        p.spec.processors.remove(0);
        p.spec.processors[0].input = None;
        p.spec.deletion_policy = DeletionPolicy::Delete;
    });
    let outcome = round(&admin, &removed, &outcome.created).await;
    assert_eq!(
        outcome.kafka_topics_to_delete,
        [("kafka".to_owned(), "risk-enrich-output".to_owned())]
    );
}

#[test]
fn a_waiting_stage_holds_ready_names_its_topic_and_clears() {
    let chain = pipeline(CHAIN, |_| {});
    let validated = validated(&chain);
    let healthy = |previous: Option<&PipelineStatus>| {
        status::healthy_status(
            &validated,
            &DesiredReplicas::default(),
            &[],
            None,
            "kafka:9092",
            previous,
            NOW,
        )
    };
    let find = |status: &PipelineStatus, type_: &str| {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .cloned()
            .unwrap()
    };
    let mut waiting = healthy(None);
    let outcome = TopicsOutcome {
        missing_inputs: vec![("receiver".into(), "trades.validated".into())],
        ..TopicsOutcome::default()
    };
    status::fill_topics(&mut waiting, &validated, &outcome, None, NOW);
    for type_ in [READY, PROGRESSING] {
        let condition = find(&waiting, type_);
        assert_eq!(condition.reason, "InputTopicMissing");
        assert!(
            condition
                .message
                .contains("stage receiver reads topic trades.validated"),
            "{}",
            condition.message
        );
    }
    assert_eq!(find(&waiting, READY).status, "False");
    assert_eq!(find(&waiting, PROGRESSING).status, "True");
    assert_eq!(find(&waiting, DEGRADED).status, "False");

    // The topic appeared: the next round's outcome has nothing missing.
    let mut cleared = healthy(Some(&waiting));
    status::fill_topics(
        &mut cleared,
        &validated,
        &TopicsOutcome::default(),
        Some(&waiting),
        NOW,
    );
    assert!(
        cleared
            .conditions
            .iter()
            .all(|c| c.reason != "InputTopicMissing")
    );

    let mut failed = healthy(None);
    let outcome = TopicsOutcome {
        failures: vec!["cannot create topic trades.enriched on kafka:9092: boom".into()],
        created: vec![],
        ..TopicsOutcome::default()
    };
    status::fill_topics(&mut failed, &validated, &outcome, None, NOW);
    assert_eq!(find(&failed, DEGRADED).status, "True");
    assert_eq!(find(&failed, DEGRADED).reason, "TopicAdminFailed");
    assert!(find(&failed, DEGRADED).message.contains("trades.enriched"));
}

#[test]
fn deleting_topics_needs_the_finalizer_only_with_the_delete_policy() {
    let chain = pipeline(CHAIN, |_| {});
    assert!(!super::validate::deletes_topic(&chain));
    let delete = pipeline(CHAIN, |p| p.spec.deletion_policy = DeletionPolicy::Delete);
    assert!(super::validate::deletes_topic(&delete));
}

/// A reconcile's context over the fake API server's client and the fake admin.
fn context(client: kube::Client, admin: &Arc<FakeAdmin>) -> Arc<Context> {
    Arc::new(mock_api::context(client).with_topic_admin(admin.clone()))
}

/// The fixture of the reconcile tests (`sensors` in `default`) as a chain: the receiver
/// reads validate's output, which is not created and does not exist.
fn mocked_chain() -> Pipeline {
    let mut pipeline: Pipeline =
        serde_yaml::from_str(include_str!("../../../examples/pipeline.yaml")).unwrap();
    pipeline.metadata.namespace = Some("default".to_owned());
    pipeline.metadata.uid = Some("11111111-2222-4333-8444-555555555555".to_owned());
    pipeline.metadata.generation = Some(1);
    pipeline.spec.processors[1].output =
        Some(serde_json::from_value(serde_json::json!({"topic": "sensors.valid"})).unwrap());
    pipeline.spec.receiver.input =
        Some(serde_json::from_value(serde_json::json!({"from": "validate"})).unwrap());
    pipeline
}

#[tokio::test]
async fn the_reconcile_applies_a_waiting_chain_and_says_what_it_waits_for() {
    let pipeline = mocked_chain();
    let (client, fake) = FakeApi::start(&pipeline);
    let admin = FakeAdmin::with(&[("sensors", 3)]);
    let ctx = context(client, &admin);
    let action = reconcile(Arc::new(pipeline), ctx.clone()).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::reconcile::INPUT_WAIT_REQUEUE)
    );
    assert_eq!(admin.calls(), ["partitions sensors,sensors.valid"]);
    let calls = fake.take_calls();
    let deployments = calls
        .iter()
        .filter(|c| c.method == http::Method::PATCH && c.path.contains("/deployments/"))
        .count();
    assert_eq!(
        deployments, 3,
        "every stage's Deployment, the waiting one too"
    );
    let status = fake.pipeline().status.unwrap();
    let ready = status.conditions.iter().find(|c| c.type_ == READY).unwrap();
    assert_eq!(ready.reason, "InputTopicMissing");
    assert!(
        ready
            .message
            .contains("stage receiver reads topic sensors.valid")
    );
    let warned: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|c| c.path.ends_with("/events") && c.body["reason"] == "InputTopicMissing")
        .map(|c| &c.body)
        .collect();
    assert_eq!(warned.len(), 1, "one Event");
    assert_eq!(warned[0]["type"], "Warning");

    // The topic appears: the next round clears the reason, and says nothing again.
    admin.lock().topics.insert("sensors.valid".into(), 3);
    let action = reconcile(Arc::new(fake.pipeline()), ctx).await.unwrap();
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(super::reconcile::RESYNC)
    );
    let status = fake.pipeline().status.unwrap();
    assert!(
        status
            .conditions
            .iter()
            .all(|c| c.reason != "InputTopicMissing"),
        "{:?}",
        status.conditions
    );
}

/// A chain whose validate stage creates its output through the admin API, deleted with
/// the Pipeline; the fake API server, the fake admin holding the source, and the context.
fn deleting_chain() -> (Pipeline, FakeApi, Arc<FakeAdmin>, Arc<Context>) {
    let mut pipeline = mocked_chain();
    pipeline.spec.processors[1].output = Some(
        serde_json::from_value(serde_json::json!({"topic": "sensors.valid", "create": {}}))
            .unwrap(),
    );
    pipeline.spec.deletion_policy = DeletionPolicy::Delete;
    let (client, fake) = FakeApi::start(&pipeline);
    let admin = FakeAdmin::with(&[("sensors", 3)]);
    let ctx = context(client, &admin);
    (pipeline, fake, admin, ctx)
}

fn recorded_topics(fake: &FakeApi) -> Vec<String> {
    fake.pipeline()
        .status
        .map(|s| s.created_topics.into_iter().map(|c| c.topic).collect())
        .unwrap_or_default()
}

/// Deletes the Pipeline as the fake holds it: the finalizer must be there, and the topic
/// must go.
async fn delete_and_expect_topic_gone(fake: &FakeApi, admin: &FakeAdmin, ctx: Arc<Context>) {
    let mut deleting = fake.pipeline();
    assert_eq!(
        deleting.metadata.finalizers,
        Some(vec![super::reconcile::TOPIC_FINALIZER.to_owned()])
    );
    deleting.metadata.deletion_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
    );
    reconcile(Arc::new(deleting), ctx).await.unwrap();
    assert_eq!(
        admin.partitions_of("sensors.valid"),
        None,
        "the topic leaked"
    );
}

/// The controller's watch cache can lag behind the status a round wrote: a Deployment's
/// event can wake the next round before the status write reaches the cache. That round
/// sees the topic it created exist but not recorded; the record must survive it, or
/// `deletionPolicy: delete` leaks the topic.
#[tokio::test]
async fn a_round_on_a_stale_cache_keeps_the_record_of_the_topic_it_created() {
    let (pipeline, fake, admin, ctx) = deleting_chain();
    let stale = Arc::new(pipeline);
    reconcile(stale.clone(), ctx.clone()).await.unwrap();
    assert_eq!(admin.partitions_of("sensors.valid"), Some(3));
    assert_eq!(recorded_topics(&fake), ["sensors.valid"]);

    reconcile(stale, ctx.clone()).await.unwrap();
    assert_eq!(
        recorded_topics(&fake),
        ["sensors.valid"],
        "a round on the stale cache dropped the record of the topic it created"
    );
    delete_and_expect_topic_gone(&fake, &admin, ctx).await;
}

/// The round that created the topic failed to write its status: the next one records it.
#[tokio::test]
async fn a_topic_created_by_a_round_whose_status_write_failed_is_recorded_next_round() {
    let (pipeline, fake, admin, ctx) = deleting_chain();
    fake.fail_next(
        "PATCH /apis/ferry.dev/v1alpha1/namespaces/default/pipelines/sensors/status",
        http::StatusCode::INTERNAL_SERVER_ERROR,
    );
    reconcile(Arc::new(pipeline), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(admin.partitions_of("sensors.valid"), Some(3));

    reconcile(Arc::new(fake.pipeline()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(recorded_topics(&fake), ["sensors.valid"]);
    delete_and_expect_topic_gone(&fake, &admin, ctx).await;
}

#[tokio::test]
async fn a_single_topic_pipeline_makes_no_kafka_call() {
    let mut pipeline: Pipeline =
        serde_yaml::from_str(include_str!("../../../examples/pipeline.yaml")).unwrap();
    pipeline.metadata.namespace = Some("default".to_owned());
    pipeline.metadata.uid = Some("11111111-2222-4333-8444-555555555555".to_owned());
    pipeline.metadata.generation = Some(1);
    let (client, _fake) = FakeApi::start(&pipeline);
    let admin = FakeAdmin::with(&[]);
    let ctx = context(client, &admin);
    reconcile(Arc::new(pipeline), ctx).await.unwrap();
    assert!(admin.calls().is_empty());
}

#[test]
fn topic_names_of_output_kafka_topics_are_per_stage() {
    assert_eq!(
        topics::output_kafka_topic_name("risk", "enrich"),
        "risk-enrich-output"
    );
}

#[tokio::test]
async fn with_strimzi_and_no_view_of_kafka_only_an_explicitly_sized_topic_is_applied() {
    let admin = FakeAdmin::with(&[("trades.raw", 4)]);
    let strimzi_sasl = |partitions: Option<i32>| {
        pipeline(CHAIN, |p| {
            p.spec.kafka.bootstrap_servers = None;
            p.spec.kafka.strimzi =
                Some(serde_json::from_value(serde_json::json!({"cluster": "main"})).unwrap());
            p.spec.kafka.sasl = Some(
                serde_json::from_value(serde_json::json!({
                    "mechanism": "SCRAM-SHA-512", "username": "u",
                    "passwordSecretRef": {"name": "s", "key": "p"}
                }))
                .unwrap(),
            );
            p.spec.processors[0]
                .output
                .as_mut()
                .unwrap()
                .create
                .as_mut()
                .unwrap()
                .partitions = partitions;
        })
    };
    let unsized_round = round(&admin, &strimzi_sasl(None), &[]).await;
    assert!(
        admin.calls().is_empty(),
        "the operator can't reach this Kafka"
    );
    assert!(unsized_round.kafka_topics.is_empty());
    let said = unsized_round.unsupported.unwrap();
    assert!(
        said.contains("trades.enriched")
            && said.contains("spec.processors[0].output.create.partitions"),
        "{said}"
    );

    let sized = round(&admin, &strimzi_sasl(Some(8)), &[]).await;
    assert_eq!(sized.kafka_topics.len(), 1);
    assert_eq!(sized.kafka_topics[0].partitions, 8);
    assert!(sized.unsupported.is_none());
}
