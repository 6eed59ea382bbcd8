//! YAML fixtures through `validate` and `build`, asserting on the built objects.

use std::collections::BTreeMap;

use ferry_config::config::{
    KAFKA_SASL_PASSWORD_ENV, OffsetReset, ProcessorKind, REDIS_PASSWORD_ENV, RecordFormat,
    StageConfig, StorageKind, WorkerConfig,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::build::{self, ANNOTATION_CONFIG_HASH, Children};
use super::dereference::{Bootstrap, Dereferenced};
use super::validate::{
    ImageAllowList, OperatorDefaults, ValidateError, ValidatedPipeline, validate,
};
use crate::crd::Pipeline;
use crate::scaling::DesiredReplicas;

pub(super) const SAMPLE: &str = include_str!("../../../examples/pipeline.yaml");
const FULL: &str = include_str!("../../tests/fixtures/full.yaml");

pub(super) fn with_metadata(yaml: &str) -> Pipeline {
    let mut pipeline: Pipeline = serde_yaml::from_str(yaml).unwrap();
    let meta = &mut pipeline.metadata;
    meta.namespace.get_or_insert_with(|| "default".to_owned());
    meta.uid
        .get_or_insert_with(|| "11111111-2222-4333-8444-555555555555".to_owned());
    meta.generation.get_or_insert(1);
    pipeline
}

fn validated(pipeline: &Pipeline) -> ValidatedPipeline {
    let bootstrap = pipeline
        .spec
        .kafka
        .bootstrap_servers
        .clone()
        .unwrap_or_else(|| "resolved:9092".to_owned());
    validate(
        pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved(bootstrap),
        },
        &OperatorDefaults {
            // The full fixture names its own image.
            allowed_images: ImageAllowList::new(["registry.example/ferry/worker:*".to_owned()]),
            ..OperatorDefaults::new("ferry/worker:test")
        },
    )
    .unwrap()
}

fn built(yaml: &str) -> (ValidatedPipeline, Children) {
    let pipeline = with_metadata(yaml);
    let validated = validated(&pipeline);
    let children = build::build(&validated, &DesiredReplicas::default()).unwrap();
    (validated, children)
}

pub(super) fn deployment<'a>(children: &'a Children, name: &str) -> &'a Deployment {
    children
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no Deployment {name}"))
}

pub(super) fn pod_template_meta(deployment: &Deployment) -> &ObjectMeta {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
}

pub(super) fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

/// The worker's own parser reads back what the operator rendered.
fn parsed_config(children: &Children, key: &str) -> WorkerConfig {
    let data = children.config_map.data.as_ref().unwrap();
    WorkerConfig::from_yaml(&data[key]).unwrap()
}

#[test]
fn sample_builds_a_config_map_and_one_deployment_per_stage() {
    let (_, children) = built(SAMPLE);
    let names: Vec<_> = children
        .deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["sensors-receiver", "sensors-stats", "sensors-validate"]
    );
    assert_eq!(
        children.config_map.metadata.name.as_deref(),
        Some("sensors-config")
    );
    let keys: Vec<_> = children
        .config_map
        .data
        .as_ref()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        [
            "processor-stats.yaml",
            "processor-validate.yaml",
            "receiver.yaml"
        ]
    );
}

#[test]
fn every_stage_gets_a_shutdown_budget_inside_its_grace_period() {
    let (_, children) = built(SAMPLE);
    for deployment in &children.deployments {
        let pod = deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let grace = pod.termination_grace_period_seconds.unwrap();
        let env = pod.containers[0].env.as_ref().unwrap();
        let budget = env
            .iter()
            .find(|e| e.name == "FERRY_SHUTDOWN_TIMEOUT")
            .and_then(|e| e.value.as_deref())
            .unwrap();
        let seconds: i64 = budget.trim_end_matches('s').parse().unwrap();
        assert_eq!(grace, 30);
        assert!(
            seconds > 0 && seconds + 5 <= grace,
            "{budget} within {grace} s"
        );
    }
}

#[test]
fn every_child_has_labels_and_a_controller_owner_reference() {
    let (validated, children) = built(FULL);
    let metas = std::iter::once(&children.config_map.metadata)
        .chain(children.deployments.iter().map(|d| &d.metadata));
    for meta in metas {
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "ferry");
        assert_eq!(labels["app.kubernetes.io/instance"], "orders");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ferry-operator");
        assert_eq!(labels["app.kubernetes.io/part-of"], "ferry");
        assert_eq!(meta.namespace.as_deref(), Some("shop"));
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        let owner = &owners[0];
        assert_eq!(owner.kind, "Pipeline");
        assert_eq!(owner.api_version, "ferry.dev/v1alpha1");
        assert_eq!(owner.name, "orders");
        assert_eq!(owner.uid, validated.owner.uid);
        assert_eq!(owner.controller, Some(true));
    }
    let receiver = deployment(&children, "orders-receiver");
    let labels = receiver.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/component"], "receiver");
    assert_eq!(labels["ferry.dev/stage"], "receiver");
    let enrich = deployment(&children, "orders-enrich");
    assert_eq!(
        enrich.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "processor"
    );
}

#[test]
fn pods_are_hardened() {
    let (_, children) = built(FULL);
    for deployment in &children.deployments {
        let pod = pod_spec(deployment);
        let pod_security = pod.security_context.as_ref().unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(pod_security.run_as_user, Some(build::WORKER_UID));
        assert_eq!(
            pod_security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        for container in &pod.containers {
            let security = container.security_context.as_ref().unwrap();
            assert_eq!(security.read_only_root_filesystem, Some(true));
            assert_eq!(security.allow_privilege_escalation, Some(false));
            assert_eq!(security.run_as_non_root, Some(true));
            assert_eq!(
                security.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
            let readiness = container.readiness_probe.as_ref().unwrap();
            assert_eq!(
                readiness.http_get.as_ref().unwrap().path.as_deref(),
                Some("/readyz")
            );
            let liveness = container.liveness_probe.as_ref().unwrap();
            assert_eq!(
                liveness.http_get.as_ref().unwrap().path.as_deref(),
                Some("/healthz")
            );
        }
    }
}

#[test]
fn secrets_arrive_as_references_and_never_in_the_config_map() {
    let (_, children) = built(FULL);
    let container = &pod_spec(deployment(&children, "orders-receiver")).containers[0];
    let env: BTreeMap<_, _> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| (e.name.as_str(), e))
        .collect();
    let redis = env[REDIS_PASSWORD_ENV];
    assert!(redis.value.is_none());
    let selector = redis
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        ("redis-auth", "redis-password")
    );
    let sasl = env[KAFKA_SASL_PASSWORD_ENV];
    let selector = sasl
        .value_from
        .as_ref()
        .unwrap()
        .secret_key_ref
        .as_ref()
        .unwrap();
    assert_eq!(
        (selector.name.as_str(), selector.key.as_str()),
        ("kafka-user", "password")
    );

    let pod = pod_spec(deployment(&children, "orders-receiver"));
    let secret_volumes: Vec<_> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert_eq!(secret_volumes, ["kafka-ca", "kafka-client", "redis-ca"]);
    // Only the referenced keys: a Secret may hold more than Ferry needs.
    let keys: Vec<(String, Vec<String>)> = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let secret = v.secret.as_ref()?;
            let items = secret.items.as_ref()?;
            Some((
                secret.secret_name.clone()?,
                items
                    .iter()
                    .map(|i| format!("{}->{}", i.key, i.path))
                    .collect(),
            ))
        })
        .collect();
    assert_eq!(
        keys.len(),
        3,
        "every Secret volume lists its items: {keys:?}"
    );
    for (secret, items) in &keys {
        let want: &[&str] = if secret == "kafka-client" {
            &["tls.crt->tls.crt", "tls.key->tls.key"]
        } else {
            &["ca.crt->ca.crt"]
        };
        assert_eq!(items, want, "{secret}");
    }

    // The ConfigMap names the variables, never the values or Secret names' contents.
    for yaml in children.config_map.data.as_ref().unwrap().values() {
        assert!(yaml.contains(REDIS_PASSWORD_ENV), "{yaml}");
        assert!(!yaml.contains("redis-password"), "{yaml}");
    }
}

#[test]
fn receiver_config_round_trips_through_the_workers_parser() {
    let (_, children) = built(FULL);
    let config = parsed_config(&children, "receiver.yaml");
    assert_eq!(config.pipeline, "orders");
    assert_eq!(
        config.kafka.bootstrap_servers,
        "kafka-0.kafka:9093,kafka-1.kafka:9093"
    );
    assert_eq!(config.kafka.topic, "orders.raw");
    assert_eq!(config.kafka.consumer_group, "orders-ingest");
    assert_eq!(config.kafka.auto_offset_reset, OffsetReset::Latest);
    assert_eq!(
        config.kafka.tls.as_ref().unwrap().ca_file.as_deref(),
        Some(std::path::Path::new("/etc/ferry/tls/kafka-ca/ca.crt"))
    );
    assert_eq!(
        config.kafka.sasl.as_ref().unwrap().password_env,
        KAFKA_SASL_PASSWORD_ENV
    );
    assert_eq!(config.redis.url, "rediss://redis-master.data:6380/2");
    assert_eq!(config.redis.key_prefix, "shop");
    assert_eq!(config.format, RecordFormat::Json);
    let StageConfig::Receiver(receiver) = config.stage else {
        panic!("expected a receiver");
    };
    assert_eq!(receiver.storage.kind, StorageKind::Zset);
    assert_eq!(receiver.storage.history_depth, 500);
    assert_eq!(receiver.storage.ttl.unwrap().to_string(), "24h");
    assert_eq!(receiver.max_age.unwrap().to_string(), "10m");
    assert_eq!(receiver.dead_letter.unwrap().topic, "orders.dlq");
    assert_eq!(receiver.batch.max_records, 1000);
}

#[test]
fn processors_get_their_own_group_kind_and_output() {
    let (_, children) = built(FULL);
    let enrich = parsed_config(&children, "processor-enrich.yaml");
    assert_eq!(enrich.kafka.consumer_group, "orders-ingest:enrich");
    let StageConfig::Processor(processor) = enrich.stage else {
        panic!("expected a processor");
    };
    assert_eq!(processor.output.unwrap().topic, "orders.enriched");
    let ProcessorKind::Enrich(kind) = processor.kind else {
        panic!("expected enrich");
    };
    assert_eq!(kind.reference_key, "shop:ref:customers");
    assert_eq!(kind.fields, ["tier", "region"]);

    let check = parsed_config(&children, "processor-check.yaml");
    let StageConfig::Processor(processor) = check.stage else {
        panic!("expected a processor");
    };
    assert_eq!(processor.dead_letter.unwrap().topic, "orders.invalid");
    assert!(matches!(processor.kind, ProcessorKind::Validate(ref v) if v.rules.len() == 1));
}

#[test]
fn default_consumer_group_comes_from_namespace_and_name() {
    let (_, children) = built(SAMPLE);
    let receiver = parsed_config(&children, "receiver.yaml");
    assert_eq!(receiver.kafka.consumer_group, "ferry:default:sensors");
    let stats = parsed_config(&children, "processor-stats.yaml");
    assert_eq!(stats.kafka.consumer_group, "ferry:default:sensors:stats");
    assert_eq!(stats.redis.url, "redis://10.244.0.1:16379/0");
    // The data set's epoch is the Pipeline's UID.
    assert_eq!(
        receiver.epoch.as_deref(),
        Some("11111111-2222-4333-8444-555555555555")
    );
}

/// Every consumer group of a Pipeline `name` in `namespace`, with `processors`.
fn groups_of(namespace: &str, name: &str, processors: &[&str]) -> Vec<String> {
    let mut pipeline = with_metadata(SAMPLE);
    pipeline.metadata.namespace = Some(namespace.to_owned());
    pipeline.metadata.name = Some(name.to_owned());
    let template = pipeline.spec.processors[0].clone();
    pipeline.spec.processors = processors
        .iter()
        .map(|processor| {
            let mut spec = template.clone();
            spec.name = (*processor).to_owned();
            spec
        })
        .collect();
    validated(&pipeline)
        .stages
        .iter()
        .map(|stage| stage.worker_config.kafka.consumer_group.clone())
        .collect()
}

#[test]
fn default_consumer_groups_of_different_stages_never_collide() {
    // Joined with `-`, Pipeline `a` with processor `b` and Pipeline `a-b` shared a group, as
    // did namespace `x-y` with Pipeline `z` and namespace `x` with Pipeline `y-z`.
    let a_with_b = groups_of("default", "a", &["b"]);
    let a_b = groups_of("default", "a-b", &[]);
    assert!(
        a_b.iter().all(|group| !a_with_b.contains(group)),
        "{a_with_b:?} and {a_b:?} share a group"
    );
    let x_y = groups_of("x-y", "z", &[]);
    let x = groups_of("x", "y-z", &[]);
    assert_ne!(x_y, x);
    assert_eq!(a_with_b, ["ferry:default:a", "ferry:default:a:b"]);
}

#[test]
fn replicas_follow_min_replicas_manual_mode_and_pause() {
    let (_, children) = built(FULL);
    let replicas = |children: &Children, name: &str| {
        deployment(children, name)
            .spec
            .as_ref()
            .unwrap()
            .replicas
            .unwrap()
    };
    assert_eq!(replicas(&children, "orders-receiver"), 2);
    assert_eq!(replicas(&children, "orders-enrich"), 1);
    assert_eq!(replicas(&children, "orders-check"), 3);

    let paused = FULL.replace("  format: json", "  paused: true\n  format: json");
    let (_, children) = built(&paused);
    for deployment in &children.deployments {
        assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(0));
    }
    // Pausing keeps every object.
    assert_eq!(children.deployments.len(), 3);
}

/// The autoscaler's desired counts are an argument of `build`: no autoscaler runs here.
#[test]
fn a_deployment_is_built_at_the_desired_count_passed_in() {
    let pipeline = with_metadata(SAMPLE);
    let sample = validated(&pipeline);
    let receiver = &sample.stages[0];
    assert_eq!(receiver.name, "receiver");
    let config = "kafka: {}";
    let replicas_at = |desired: &DesiredReplicas| {
        let replicas = receiver.replicas_with(desired);
        build::build_deployment(&sample, receiver, config, replicas)
            .spec
            .unwrap()
            .replicas
    };
    assert_eq!(
        replicas_at(&[("receiver", 4)].into_iter().collect()),
        Some(4)
    );
    // Nothing published yet: minReplicas. Beyond the bounds: clamped to them (1..=6).
    assert_eq!(replicas_at(&DesiredReplicas::default()), Some(1));
    assert_eq!(
        replicas_at(&[("receiver", 99)].into_iter().collect()),
        Some(6)
    );

    // Through `build`, each stage takes its own count.
    let desired = [("receiver", 5), ("stats", 2)].into_iter().collect();
    let children = build::build(&sample, &desired).unwrap();
    let replicas = |name: &str| deployment(&children, name).spec.as_ref().unwrap().replicas;
    assert_eq!(replicas("sensors-receiver"), Some(5));
    assert_eq!(replicas("sensors-stats"), Some(2));
    assert_eq!(replicas("sensors-validate"), Some(1));

    // Paused or manual: validate's number, whatever is published.
    let paused_spec = with_metadata(&SAMPLE.replace("spec:\n", "spec:\n  paused: true\n"));
    let paused = validated(&paused_spec);
    assert_eq!(paused.stages[0].replicas_with(&desired), 0);
}

#[test]
fn image_defaults_from_the_operator_and_can_be_overridden() {
    let (_, children) = built(SAMPLE);
    let image = |d: &Deployment| pod_spec(d).containers[0].image.clone().unwrap();
    assert_eq!(
        image(deployment(&children, "sensors-receiver")),
        "ferry/worker:test"
    );
    let (_, children) = built(FULL);
    assert_eq!(
        image(deployment(&children, "orders-receiver")),
        "registry.example/ferry/worker:1.2.3"
    );
}

#[test]
fn another_operator_version_or_image_policy_leaves_the_pod_templates_alone() {
    let pipeline = with_metadata(FULL);
    let build_with = |defaults: &OperatorDefaults| {
        let validated = validate(
            &pipeline,
            &Dereferenced {
                bootstrap: Bootstrap::Resolved("resolved:9092".to_owned()),
            },
            defaults,
        )
        .unwrap();
        build::build(&validated, &DesiredReplicas::default()).unwrap()
    };
    let allowed = ImageAllowList::new(["registry.example/ferry/worker:*".to_owned()]);
    let before = build_with(&OperatorDefaults {
        allowed_images: allowed.clone(),
        operator_version: "1.0.0".to_owned(),
        ..OperatorDefaults::new("ferry/worker:test")
    });
    let after = build_with(&OperatorDefaults {
        allowed_images: ImageAllowList::new(["*".to_owned()]),
        operator_version: "2.0.0".to_owned(),
        ..OperatorDefaults::new("ferry/worker:test")
    });
    for (old, new) in before.deployments.iter().zip(&after.deployments) {
        let template = |d: &Deployment| d.spec.as_ref().unwrap().template.clone();
        assert_eq!(
            template(old),
            template(new),
            "an upgrade would roll the pods"
        );
        assert_eq!(
            old.metadata.labels.as_ref().unwrap()["app.kubernetes.io/version"],
            "1.0.0"
        );
        assert!(
            !template(old)
                .metadata
                .unwrap()
                .labels
                .unwrap()
                .contains_key("app.kubernetes.io/version")
        );
    }
}

#[test]
fn an_image_outside_the_allow_list_is_refused() {
    let pipeline = with_metadata(FULL);
    let err = validate(
        &pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("resolved:9092".to_owned()),
        },
        &OperatorDefaults::new("ferry/worker:test"),
    )
    .unwrap_err();
    assert!(
        matches!(&err, ValidateError::ImageNotAllowed { image, .. } if image == "registry.example/ferry/worker:1.2.3"),
        "{err}"
    );
    assert!(err.to_string().contains("ferry/worker:test"), "{err}");
}

#[test]
fn a_config_change_changes_only_that_stages_pod_template_hash() {
    let hash = |children: &Children, name: &str| {
        pod_template_meta(deployment(children, name))
            .annotations
            .as_ref()
            .unwrap()[ANNOTATION_CONFIG_HASH]
            .clone()
    };
    let (_, before) = built(SAMPLE);
    let (_, after) = built(&SAMPLE.replace("window: 60", "window: 120"));
    assert_eq!(
        hash(&before, "sensors-receiver"),
        hash(&after, "sensors-receiver")
    );
    assert_ne!(
        hash(&before, "sensors-stats"),
        hash(&after, "sensors-stats")
    );
}

#[test]
fn selectors_are_stable_per_stage() {
    let (_, children) = built(SAMPLE);
    let receiver = deployment(&children, "sensors-receiver");
    let selector = receiver
        .spec
        .as_ref()
        .unwrap()
        .selector
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector.len(), 3);
    assert_eq!(selector["ferry.dev/stage"], "receiver");
}

#[test]
fn a_processor_named_receiver_is_refused() {
    let yaml = SAMPLE.replace("- name: stats", "- name: receiver");
    let pipeline = with_metadata(&yaml);
    let err = validate(
        &pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("x:1".to_owned()),
        },
        &OperatorDefaults::new("w"),
    )
    .unwrap_err();
    assert!(matches!(err, ValidateError::ReservedProcessorName { .. }));
    assert!(err.to_string().contains("spec.processors[].name"));
}

#[test]
fn strimzi_bootstrap_reaches_the_worker_config() {
    let yaml = SAMPLE.replace(
        "bootstrapServers: 10.244.0.1:19092",
        "strimzi: {cluster: my-cluster}",
    );
    let (_, children) = built(&yaml);
    assert_eq!(
        parsed_config(&children, "receiver.yaml")
            .kafka
            .bootstrap_servers,
        "resolved:9092"
    );
}

#[test]
fn create_topic_builds_a_labelled_strimzi_kafka_topic_nothing_owns() {
    let yaml = SAMPLE.replace(
        "bootstrapServers: 10.244.0.1:19092",
        "strimzi: {cluster: my-cluster}\n    createTopic: {partitions: 12, replicas: 3, config: {retention.ms: \"3600000\"}}",
    );
    let (_, children) = built(&yaml);
    let topic = children.kafka_topic.expect("a KafkaTopic");
    assert_eq!(topic.metadata.name.as_deref(), Some("sensors-topic"));
    assert_eq!(topic.metadata.namespace.as_deref(), Some("default"));
    let types = topic.types.as_ref().unwrap();
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("kafka.strimzi.io/v1", "KafkaTopic")
    );
    assert_eq!(
        topic.metadata.labels.as_ref().unwrap()["strimzi.io/cluster"],
        "my-cluster"
    );
    // Never owned: the garbage collector would delete it, and Strimzi the topic's records.
    assert!(topic.metadata.owner_references.is_none());
    let labels = topic.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/instance"], "sensors");
    assert_eq!(labels["ferry.dev/pipeline-namespace"], "default");
    assert_eq!(topic.data["spec"]["topicName"], "sensors");
    assert_eq!(topic.data["spec"]["partitions"], 12);
    assert_eq!(topic.data["spec"]["replicas"], 3);
    assert_eq!(topic.data["spec"]["config"]["retention.ms"], "3600000");

    // Beside a Kafka in another namespace, its labels name the Pipeline's namespace.
    let elsewhere = yaml.replace(
        "{cluster: my-cluster}",
        "{cluster: my-cluster, namespace: kafka}",
    );
    let (_, children) = built(&elsewhere);
    let topic = children.kafka_topic.unwrap();
    assert_eq!(topic.metadata.namespace.as_deref(), Some("kafka"));
    assert!(topic.metadata.owner_references.is_none());
    assert_eq!(
        topic.metadata.labels.as_ref().unwrap()["ferry.dev/pipeline-namespace"],
        "default"
    );

    // Without replicas, Strimzi uses the Kafka cluster's default.replication.factor.
    let (_, children) = built(&yaml.replace("replicas: 3, ", ""));
    assert!(
        children.kafka_topic.unwrap().data["spec"]
            .get("replicas")
            .is_none()
    );

    let (_, children) = built(SAMPLE);
    assert!(children.kafka_topic.is_none());
}

/// The operator refuses a broken rule at reconcile with the contract crate's parser, the
/// one the worker uses at start.
#[test]
fn a_rule_that_does_not_parse_is_an_invalid_spec() {
    let yaml = SAMPLE.replace(
        "expression: values[0] IN RANGE 11 29 AND text NOT NULL",
        "expression: values[0] IN RANGE 11",
    );
    let pipeline = with_metadata(&yaml);
    let Err(err) = validate(
        &pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("x:1".to_owned()),
        },
        &OperatorDefaults::new("w"),
    ) else {
        panic!("a Pipeline whose rule does not parse passed validate: its pods would crash-loop");
    };
    let problem = super::Error::from(err).problem();
    assert_eq!(problem.reason, "InvalidSpec");
    assert!(problem.user_error);
    assert_eq!(
        problem.message,
        "invalid Pipeline: the rendered worker config for stage validate is invalid: config: \
         `stage.processor.kind.validate.rules[0].expression`: rule `in-range` does not parse at \
         column 22: expected an operand (values[i], text, ts, key, a number or a string), found \
         the end of the rule: values[0] IN RANGE 11"
    );
}

#[test]
fn latest_starts_from_the_pipelines_creation() {
    let mut pipeline = with_metadata(SAMPLE);
    pipeline.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T16:00:00Z".parse().unwrap(),
        ));
    let validated = validated(&pipeline);
    for stage in &validated.stages {
        assert_eq!(
            stage.worker_config.kafka.latest_from_ms,
            Some(1_796_140_800_000)
        );
    }
}
