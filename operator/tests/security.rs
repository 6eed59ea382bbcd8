//! Security of what the operator builds and says.
//!
//! - Pods: every Pipeline in `examples/*.yaml` and `operator/tests/fixtures/*.yaml` goes
//!   through `validate` and `build`; every pod runs as non-root with a read-only root
//!   filesystem, no capabilities, the RuntimeDefault seccomp profile and no service-account
//!   token. Pure: no cluster needed.
//! - Secrets: a Redis password and a Kafka SASL password in Secrets of a fresh namespace on
//!   the local stack's API server, a Pipeline referencing them, and the real operator binary.
//!   Neither value may appear in any operator log line, Event, ConfigMap, Pipeline status or
//!   Deployment, and the Deployment's env must take them by `secretKeyRef`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_config::config::{KAFKA_SASL_PASSWORD_ENV, REDIS_PASSWORD_ENV};
use ferry_operator::controller::build::{self, Children};
use ferry_operator::controller::dereference::{Bootstrap, Dereferenced};
use ferry_operator::controller::validate::{ImageAllowList, OperatorDefaults, validate};
use ferry_operator::crd::Pipeline;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodSpec;
use kube::Api;
use support::{OperatorProcess, TestNamespace, eventually, install_crds, kubectl, kubectl_ok};

fn pipeline_files() -> Vec<PathBuf> {
    let root = support::repo_root();
    let mut files = Vec::new();
    for dir in ["examples", "operator/tests/fixtures"] {
        let dir = root.join(dir);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn build_file(path: &Path) -> Vec<Children> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut built = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(document).unwrap();
        if value.get("kind").and_then(|k| k.as_str()) != Some("Pipeline") {
            continue;
        }
        let mut pipeline: Pipeline = serde_yaml::from_value(value)
            .unwrap_or_else(|err| panic!("{}: not a Pipeline: {err}", path.display()));
        let meta = &mut pipeline.metadata;
        meta.namespace.get_or_insert_with(|| "default".to_owned());
        meta.uid
            .get_or_insert_with(|| "11111111-2222-4333-8444-555555555555".to_owned());
        meta.generation.get_or_insert(1);
        let bootstrap = pipeline
            .spec
            .kafka
            .bootstrap_servers
            .clone()
            .unwrap_or_else(|| "resolved:9092".to_owned());
        let validated = validate(
            &pipeline,
            &Dereferenced {
                bootstrap: Bootstrap::Resolved(bootstrap),
            },
            &OperatorDefaults {
                // The full fixture names its own image.
                allowed_images: ImageAllowList::new(["registry.example/ferry/worker:*".to_owned()]),
                ..OperatorDefaults::new("ferry/worker:test")
            },
        )
        .unwrap_or_else(|err| panic!("{}: does not validate: {err}", path.display()));
        built.push(build::build(&validated, &Default::default()).unwrap());
    }
    built
}

use serde::Deserialize;

/// Everything wrong with one pod spec, as readable lines.
fn pod_problems(pod: &PodSpec) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    check(
        pod.automount_service_account_token == Some(false),
        "automountServiceAccountToken is not false",
    );
    check(
        pod.host_network != Some(true) && pod.host_pid != Some(true) && pod.host_ipc != Some(true),
        "shares a host namespace",
    );
    let pod_security = pod.security_context.clone().unwrap_or_default();
    check(
        pod_security.run_as_non_root == Some(true),
        "pod runAsNonRoot is not true",
    );
    check(
        pod_security.run_as_user.is_some_and(|uid| uid > 0),
        "pod runAsUser is not a non-zero uid",
    );
    check(
        pod_security
            .seccomp_profile
            .as_ref()
            .is_some_and(|p| p.type_ == "RuntimeDefault"),
        "pod seccompProfile is not RuntimeDefault",
    );
    for volume in pod.volumes.iter().flatten() {
        check(
            volume.host_path.is_none(),
            &format!("volume {} is a hostPath", volume.name),
        );
    }
    let containers = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    for container in containers {
        let name = &container.name;
        let security = container.security_context.clone().unwrap_or_default();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                problems.push(format!("container {name}: {what}"));
            }
        };
        check(
            security.read_only_root_filesystem == Some(true),
            "readOnlyRootFilesystem is not true",
        );
        check(
            security.allow_privilege_escalation == Some(false),
            "allowPrivilegeEscalation is not false",
        );
        check(security.privileged != Some(true), "is privileged");
        check(
            security.run_as_non_root != Some(false) && security.run_as_user != Some(0),
            "may run as root",
        );
        let capabilities = security.capabilities.unwrap_or_default();
        check(
            capabilities.drop.as_deref() == Some(&["ALL".to_owned()][..]),
            "capabilities do not drop ALL",
        );
        check(
            capabilities.add.unwrap_or_default().is_empty(),
            "adds capabilities",
        );
        if let Some(profile) = &security.seccomp_profile {
            check(
                profile.type_ == "RuntimeDefault",
                "container seccompProfile is not RuntimeDefault",
            );
        }
        for env in container.env.iter().flatten() {
            let secret_like = env.name.contains("PASSWORD")
                || env.name.contains("SECRET")
                || env.name.contains("TOKEN");
            check(
                !secret_like || env.value.is_none(),
                &format!("env {} carries a literal value", env.name),
            );
        }
    }
    problems
}

fn pod_spec(deployment: &Deployment) -> &PodSpec {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

#[test]
fn every_example_and_fixture_builds_hardened_pods() {
    let files = pipeline_files();
    assert!(
        files.len() >= 2,
        "expected examples/pipeline.yaml and at least one fixture, found {files:?}"
    );
    let mut deployments = 0;
    let mut failures = Vec::new();
    for path in &files {
        let built = build_file(path);
        assert!(!built.is_empty(), "{} holds no Pipeline", path.display());
        for children in built {
            for deployment in &children.deployments {
                deployments += 1;
                for problem in pod_problems(pod_spec(deployment)) {
                    failures.push(format!(
                        "{} / {}: {problem}",
                        path.display(),
                        deployment.metadata.name.as_deref().unwrap_or("?")
                    ));
                }
            }
            // The rendered worker configs name env vars, never secret values.
            let data = children.config_map.data.clone().unwrap_or_default();
            for (key, yaml) in data {
                for line in yaml.lines() {
                    let lower = line.to_ascii_lowercase();
                    if lower.contains("password") && !lower.contains("password_env") {
                        failures.push(format!(
                            "{} / ConfigMap {key}: `{line}` looks like a password",
                            path.display()
                        ));
                    }
                }
            }
        }
    }
    assert!(deployments >= 3, "only {deployments} Deployments built");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_checks_catch_a_weakened_pod() {
    // A guard on the guard: take a hardened pod and weaken it one way at a time.
    let built = build_file(&support::repo_root().join("examples/pipeline.yaml"));
    let good = pod_spec(&built[0].deployments[0]).clone();
    assert!(pod_problems(&good).is_empty());
    type Weaken = Box<dyn Fn(&mut PodSpec)>;
    let weakened: Vec<(&str, Weaken)> = vec![
        (
            "token",
            Box::new(|p: &mut PodSpec| p.automount_service_account_token = None),
        ),
        (
            "seccomp",
            Box::new(|p: &mut PodSpec| p.security_context.as_mut().unwrap().seccomp_profile = None),
        ),
        (
            "read-only",
            Box::new(|p: &mut PodSpec| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .read_only_root_filesystem = Some(false)
            }),
        ),
        (
            "capabilities",
            Box::new(|p: &mut PodSpec| {
                p.containers[0]
                    .security_context
                    .as_mut()
                    .unwrap()
                    .capabilities = None
            }),
        ),
        (
            "root",
            Box::new(|p: &mut PodSpec| {
                p.security_context.as_mut().unwrap().run_as_non_root = Some(false)
            }),
        ),
    ];
    for (what, weaken) in weakened {
        let mut pod = good.clone();
        weaken(&mut pod);
        assert!(!pod_problems(&pod).is_empty(), "{what} went unnoticed");
    }
}

// ---------------------------------------------------------------------------------------
// Secrets against the real API server and the real operator binary.

fn secret_value(what: &str) -> String {
    format!(
        "{what}-{}-{}",
        support::random_suffix(),
        support::random_suffix()
    )
}

fn pipeline_yaml(namespace: &str) -> String {
    format!(
        r#"apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata:
  name: guarded
  namespace: {namespace}
spec:
  kafka:
    bootstrapServers: 127.0.0.1:9
    topic: guarded
    sasl:
      mechanism: SCRAM-SHA-512
      username: ferry
      passwordSecretRef: {{name: kafka-user, key: password}}
  redis:
    host: 127.0.0.1
    port: 9
    username: ferry
    passwordSecretRef: {{name: redis-auth, key: redis-password}}
    keyPrefix: guarded
  format: dsdata
  receiver:
    storage: {{type: list, historyDepth: 10}}
    batch: {{maxRecords: 100, maxWait: 50ms}}
    scaling: {{mode: manual, replicas: 0, minReplicas: 0, maxReplicas: 2}}
  processors:
    - name: check
      validate:
        rules:
          - {{name: positive, expression: "values[0] IN RANGE 0 100"}}
"#
    )
}

#[tokio::test]
async fn secret_values_never_reach_logs_events_config_maps_status_or_deployments() {
    install_crds();
    let namespace = TestNamespace::new("secrets");
    let ns = namespace.name.as_str();
    let redis_password = secret_value("redispw");
    let kafka_password = secret_value("kafkapw");
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "redis-auth",
        "-n",
        ns,
        &format!("--from-literal=redis-password={redis_password}"),
    ]);
    kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "kafka-user",
        "-n",
        ns,
        &format!("--from-literal=password={kafka_password}"),
    ]);
    let operator = OperatorProcess::start(ns);
    let dir = std::env::temp_dir().join(format!("ferry-security-{ns}"));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("pipeline.yaml");
    std::fs::write(&manifest, pipeline_yaml(ns)).unwrap();
    kubectl_ok(&["apply", "-f", manifest.to_str().unwrap()]);

    let client = support::client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    // Both stages built, and a status written: the operator has been through every stage.
    eventually(Duration::from_secs(60), "both Deployments", || {
        let deployments = deployments.clone();
        async move {
            let receiver = deployments.get_opt("guarded-receiver").await.ok()??;
            let processor = deployments.get_opt("guarded-check").await.ok()??;
            Some((receiver, processor))
        }
    })
    .await;
    eventually(Duration::from_secs(60), "a Pipeline status", || async {
        let out = kubectl(&["get", "pipeline", "guarded", "-n", ns, "-o", "json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json.get("status")?
            .get("conditions")?
            .as_array()?
            .first()
            .cloned()
    })
    .await;
    // A spec change makes another round of logs, events and applies.
    kubectl_ok(&[
        "patch",
        "pipeline",
        "guarded",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"receiver":{"storage":{"historyDepth":20}}}}"#,
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Every object the operator writes or causes, in full.
    let mut seen = Vec::new();
    for kind in [
        "deployments",
        "configmaps",
        "events",
        "pipelines",
        "replicasets",
    ] {
        seen.push((
            kind.to_owned(),
            kubectl_ok(&["get", kind, "-n", ns, "-o", "yaml"]),
        ));
    }
    seen.push(("operator log".to_owned(), operator.log_text()));
    assert!(
        seen.last().is_some_and(|(_, log)| log.lines().count() > 3),
        "the operator logged almost nothing; log {}",
        operator.log.display()
    );
    for (what, text) in &seen {
        for (name, secret) in [("Redis", &redis_password), ("Kafka", &kafka_password)] {
            assert!(
                !text.contains(secret.as_str()),
                "the {name} password appears in the {what}"
            );
        }
    }

    // The env of every worker container takes both passwords from the Secrets.
    for deployment in deployments.list(&Default::default()).await.unwrap() {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let container = &pod_spec(&deployment).containers[0];
        let env = container.env.clone().unwrap_or_default();
        for (var, secret, key) in [
            (REDIS_PASSWORD_ENV, "redis-auth", "redis-password"),
            (KAFKA_SASL_PASSWORD_ENV, "kafka-user", "password"),
        ] {
            let entry = env
                .iter()
                .find(|e| e.name == var)
                .unwrap_or_else(|| panic!("{name}: no env {var}"));
            assert!(entry.value.is_none(), "{name}: {var} has a literal value");
            let selector = entry
                .value_from
                .as_ref()
                .and_then(|from| from.secret_key_ref.as_ref())
                .unwrap_or_else(|| panic!("{name}: {var} is not a secretKeyRef"));
            assert_eq!(
                (selector.name.as_str(), selector.key.as_str()),
                (secret, key)
            );
        }
        assert!(
            container.env_from.is_none(),
            "{name}: envFrom would expose whole Secrets"
        );
        assert_eq!(pod_problems(pod_spec(&deployment)), Vec::<String>::new());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------
// Data safety and tenancy (issue 17), against the real API server, its garbage collector
// and kubelet, and the real operator binary. Strimzi's CRDs are installed, its operators
// are not: the tests look at the objects, their owners, labels and writers.

mod safety {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::{ConfigMap, Pod};
    use kube::ResourceExt;
    use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;

    use super::support::ownership::{
        self, SHORT, condition, create_pipeline, fingerprint, kafka_topics, pipelines, ready_kafka,
        strimzi_pipeline,
    };
    use super::support::{
        self, OperatorProcess, TestNamespace, eventually, install_crds, kubectl_ok,
    };

    const VERSION_LABEL: &str = "app.kubernetes.io/version";

    /// `createTopic` without `deletionPolicy`: deleting the Pipeline leaves its KafkaTopic
    /// (Strimzi would delete the topic's records with it); `deletionPolicy: delete` removes it.
    #[tokio::test]
    async fn a_deleted_pipeline_keeps_its_kafka_topic_unless_its_policy_is_delete() {
        install_crds();
        support::install_strimzi_crds();
        let ns = TestNamespace::new("retain");
        let client = support::client().await;
        ready_kafka(&client, &ns.name).await;
        let _operator = OperatorProcess::start_with_env(&ns.name, "retain", &[]);

        let mut keep = strimzi_pipeline("keep", &ns.name);
        keep["spec"]["kafka"]["createTopic"] = json!({"partitions": 3});
        let mut drop = strimzi_pipeline("drop", &ns.name);
        drop["spec"]["kafka"]["createTopic"] = json!({"partitions": 3, "replicas": 1});
        drop["spec"]["deletionPolicy"] = json!("delete");
        create_pipeline(&client, &ns.name, keep).await;
        create_pipeline(&client, &ns.name, drop).await;

        let topics = kafka_topics(&client, &ns.name);
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        for name in ["keep", "drop"] {
            // The ConfigMap is applied after the topic: the round went through.
            eventually(
                SHORT,
                &format!("{name}'s KafkaTopic and ConfigMap"),
                || async {
                    topics.get_opt(&format!("{name}-topic")).await.ok()??;
                    config_maps.get_opt(&format!("{name}-config")).await.ok()?
                },
            )
            .await;
        }
        let kept = topics.get("keep-topic").await.unwrap();
        eprintln!("keep-topic before the delete: {}", fingerprint(&kept));

        let api = pipelines(&client, &ns.name);
        for name in ["keep", "drop"] {
            api.delete(name, &DeleteParams::background()).await.unwrap();
        }
        eventually(
            SHORT,
            "both Pipelines and their ConfigMaps to be gone",
            || async {
                for name in ["keep", "drop"] {
                    if api.get_opt(name).await.ok()?.is_some()
                        || config_maps
                            .get_opt(&format!("{name}-config"))
                            .await
                            .ok()?
                            .is_some()
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        // The garbage collector has run (the ConfigMaps are gone); give it a moment more.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let kept = topics.get_opt("keep-topic").await.unwrap();
        assert!(
            kept.is_some(),
            "KafkaTopic keep-topic was deleted with its Pipeline (deletionPolicy retain, the default)"
        );
        eventually(
            SHORT,
            "KafkaTopic drop-topic to be removed (deletionPolicy: delete)",
            || async {
                topics
                    .get_opt("drop-topic")
                    .await
                    .ok()?
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        // Retained because nothing owns it: Ferry labels it, and leaves replicas to Kafka.
        let kept = kept.unwrap();
        assert!(
            kept.owner_references().is_empty(),
            "KafkaTopic keep-topic has owner references {:?}: deleting the Pipeline garbage-collects it",
            kept.owner_references()
        );
        assert_eq!(
            kept.labels()
                .get("app.kubernetes.io/managed-by")
                .map(String::as_str),
            Some("ferry-operator"),
            "Ferry's topics carry its label"
        );
        assert!(
            kept.data["spec"].get("replicas").is_none(),
            "createTopic without replicas must leave replicas to the Kafka cluster's default, got {}",
            kept.data["spec"]
        );
    }

    /// A `KafkaTopic` as an operator without the retention rule left it (an owner reference
    /// to its Pipeline, applied by the same field manager): the next apply drops the owner
    /// reference, so the topic no longer goes with the Pipeline.
    #[tokio::test]
    async fn a_kafka_topic_an_older_operator_owned_loses_its_owner_reference() {
        install_crds();
        support::install_strimzi_crds();
        let ns = TestNamespace::new("retain-upgrade");
        let client = support::client().await;
        ready_kafka(&client, &ns.name).await;
        let mut old = strimzi_pipeline("old", &ns.name);
        old["spec"]["kafka"]["createTopic"] = json!({"partitions": 3});
        let topic_name = old["spec"]["kafka"]["topic"].clone();
        let pipeline = create_pipeline(&client, &ns.name, old).await;
        let topics = kafka_topics(&client, &ns.name);
        let owned: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaTopic",
            "metadata": {
                "name": "old-topic",
                "labels": {
                    "app.kubernetes.io/instance": "old",
                    "app.kubernetes.io/managed-by": "ferry-operator",
                    "strimzi.io/cluster": "my-cluster"
                },
                "ownerReferences": [{
                    "apiVersion": "ferry.dev/v1alpha1", "kind": "Pipeline", "name": "old",
                    "uid": pipeline.uid().unwrap(), "controller": true
                }]
            },
            "spec": {"topicName": topic_name, "partitions": 3, "replicas": 1}
        }))
        .unwrap();
        topics
            .patch(
                "old-topic",
                &PatchParams::apply("ferry-operator").force(),
                &Patch::Apply(&owned),
            )
            .await
            .unwrap();

        let _operator = OperatorProcess::start_with_env(&ns.name, "retain-upgrade", &[]);
        let topic = eventually(SHORT, "the KafkaTopic without owner references", || async {
            let topic = topics.get("old-topic").await.ok()?;
            topic.owner_references().is_empty().then_some(topic)
        })
        .await;
        assert_eq!(topic.data["spec"]["topicName"], topic_name);
    }

    /// A KafkaTopic (in the Kafka's own namespace), a ConfigMap and a Deployment with a
    /// Pipeline's names, made by someone else before it: none is touched, and the Pipeline's
    /// condition names each.
    #[tokio::test]
    async fn objects_with_a_pipelines_names_made_by_someone_else_are_left_untouched() {
        install_crds();
        support::install_strimzi_crds();
        let ns = TestNamespace::new("takeover");
        let kafka_ns = TestNamespace::new("takeover-kafka");
        let client = support::client().await;
        ready_kafka(&client, &kafka_ns.name).await;

        kubectl_ok(&[
            "create",
            "configmap",
            "taken-config",
            "-n",
            &ns.name,
            "--from-literal=owner=someone-else",
        ]);
        kubectl_ok(&[
            "create",
            "deployment",
            "taken-receiver",
            "-n",
            &ns.name,
            "--image=registry.invalid/someone/else:1",
            "--replicas=0",
        ]);
        let topics = kafka_topics(&client, &kafka_ns.name);
        let foreign: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kafka.strimzi.io/v1",
            "kind": "KafkaTopic",
            "metadata": {"name": "taken-topic", "labels": {"strimzi.io/cluster": "my-cluster"}},
            "spec": {"topicName": "someone-elses-topic", "partitions": 1, "replicas": 1}
        }))
        .unwrap();
        topics
            .create(
                &PostParams {
                    field_manager: Some("someone-else".into()),
                    ..Default::default()
                },
                &foreign,
            )
            .await
            .unwrap();
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let snapshot = || async {
            vec![
                (
                    format!("KafkaTopic {}/taken-topic", kafka_ns.name),
                    fingerprint(&topics.get("taken-topic").await.unwrap()),
                ),
                (
                    format!("ConfigMap {}/taken-config", ns.name),
                    fingerprint(&config_maps.get("taken-config").await.unwrap()),
                ),
                (
                    format!("Deployment {}/taken-receiver", ns.name),
                    fingerprint(&deployments.get("taken-receiver").await.unwrap()),
                ),
            ]
        };
        let before = snapshot().await;

        let _operator = OperatorProcess::start_with_env(&ns.name, "takeover", &[]);
        let mut taken = strimzi_pipeline("taken", &kafka_ns.name);
        taken["spec"]["kafka"]["createTopic"] = json!({"partitions": 3});
        create_pipeline(&client, &ns.name, taken).await;

        // Until the operator says it won't, or has written over one of them.
        let ready = eventually(
            SHORT,
            "an ObjectNotOwned condition or a taken-over object",
            || async {
                let ready = condition(&client, &ns.name, "taken", "Ready").await;
                if ready
                    .as_ref()
                    .is_some_and(|c| c["reason"] == "ObjectNotOwned")
                {
                    return Some(ready);
                }
                (snapshot().await != before).then_some(None)
            },
        )
        .await;
        // A moment more: a later round must not write either.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = snapshot().await;
        let taken: Vec<String> = before
            .iter()
            .zip(&after)
            .filter(|((_, was), (_, now))| was != now)
            .map(|((what, was), (_, now))| format!("{what}\n  before: {was}\n  after:  {now}"))
            .collect();
        assert!(
            taken.is_empty(),
            "the operator wrote over objects it did not create:\n{}",
            taken.join("\n")
        );
        let ready = ready.expect("a Ready condition");
        assert_eq!(ready["status"], "False", "{ready}");
        let message = ready["message"].as_str().unwrap_or_default();
        for (what, _) in &before {
            assert!(
                message.contains(what.as_str()),
                "the condition does not name {what}: {message}"
            );
        }
        let degraded = condition(&client, &ns.name, "taken", "Degraded")
            .await
            .unwrap();
        assert_eq!(
            (degraded["status"].as_str(), degraded["reason"].as_str()),
            (Some("True"), Some("ObjectNotOwned"))
        );
    }

    /// Two namespaces with a Pipeline of the same name, both creating their topic beside one
    /// Kafka: the second may not write over the first one's `KafkaTopic`.
    #[tokio::test]
    async fn a_same_named_pipeline_of_another_namespace_cannot_take_a_kafka_topic() {
        install_crds();
        support::install_strimzi_crds();
        let first_ns = TestNamespace::new("topic-first");
        let second_ns = TestNamespace::new("topic-second");
        let kafka_ns = TestNamespace::new("topic-kafka");
        let client = support::client().await;
        ready_kafka(&client, &kafka_ns.name).await;
        let topics = kafka_topics(&client, &kafka_ns.name);

        let _first = OperatorProcess::start_with_env(&first_ns.name, "first", &[]);
        let mut first = strimzi_pipeline("shared", &kafka_ns.name);
        first["spec"]["kafka"]["createTopic"] = json!({"partitions": 3});
        let first_topic = first["spec"]["kafka"]["topic"].clone();
        create_pipeline(&client, &first_ns.name, first).await;
        let made = eventually(SHORT, "the first Pipeline's KafkaTopic", || async {
            topics.get_opt("shared-topic").await.ok()?
        })
        .await;
        assert_eq!(made.data["spec"]["topicName"], first_topic);

        let _second = OperatorProcess::start_with_env(&second_ns.name, "second", &[]);
        let mut second = strimzi_pipeline("shared", &kafka_ns.name);
        second["spec"]["kafka"]["createTopic"] = json!({"partitions": 6});
        create_pipeline(&client, &second_ns.name, second).await;
        let ready = eventually(
            SHORT,
            "an ObjectNotOwned condition or the topic taken over",
            || async {
                let topic = topics.get("shared-topic").await.ok()?;
                assert_eq!(
                    (
                        &topic.data["spec"]["topicName"],
                        &topic.data["spec"]["partitions"]
                    ),
                    (&first_topic, &json!(3)),
                    "the second namespace's Pipeline wrote over the first one's KafkaTopic: {}",
                    fingerprint(&topic)
                );
                condition(&client, &second_ns.name, "shared", "Ready")
                    .await
                    .filter(|c| c["reason"] == "ObjectNotOwned")
            },
        )
        .await;
        let message = ready["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&format!("KafkaTopic {}/shared-topic", kafka_ns.name)),
            "{message}"
        );
        let topic = topics.get("shared-topic").await.unwrap();
        assert_eq!(topic.data["spec"]["topicName"], first_topic);
        assert_eq!(
            topic.labels().get("ferry.dev/pipeline-namespace"),
            Some(&first_ns.name)
        );
    }

    /// An operator allowing only the test's worker image: a Pipeline naming another image
    /// gets no Deployment, and a condition naming the image.
    #[tokio::test]
    async fn an_image_outside_the_allow_list_is_refused() {
        install_crds();
        let ns = TestNamespace::new("allow-list");
        let client = support::client().await;
        let image = support::worker_image();
        let _operator = OperatorProcess::start_with_env(
            &ns.name,
            "allow-list",
            &[("FERRY_ALLOWED_WORKER_IMAGES", image.as_str())],
        );
        let foreign_image = "registry.invalid/ferry/worker:not-allowed";
        let mut odd = ownership::pipeline("odd", 0);
        odd["spec"]["receiver"]["image"] = json!(foreign_image);
        create_pipeline(&client, &ns.name, odd).await;

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let refused = eventually(
            SHORT,
            "an ImageNotAllowed condition or a Deployment for odd",
            || async {
                if let Some(deployment) = deployments.get_opt("odd-receiver").await.ok()? {
                    let made = deployment.spec?.template.spec?.containers[0].image.clone();
                    panic!(
                        "the operator made Deployment odd-receiver with image {made:?}, outside the allow-list [{image}]"
                    );
                }
                condition(&client, &ns.name, "odd", "Ready")
                    .await
                    .filter(|c| c["reason"] == "ImageNotAllowed")
            },
        )
        .await;
        assert_eq!(refused["status"], "False");
        assert!(
            refused["message"]
                .as_str()
                .unwrap_or_default()
                .contains(foreign_image),
            "{refused}"
        );
    }

    /// TLS Secrets that hold more keys than the Pipeline references: the pod's Secret
    /// volumes, as the kubelet wrote them, hold only the referenced keys.
    #[tokio::test]
    async fn only_the_referenced_keys_of_a_tls_secret_reach_the_pod() {
        install_crds();
        let ns = TestNamespace::new("secret-keys");
        let client = support::client().await;
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "kafka-ca",
            "-n",
            &ns.name,
            "--from-literal=ca.crt=not-a-real-certificate",
            "--from-literal=ca.key=the-cas-private-key",
        ]);
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "redis-client",
            "-n",
            &ns.name,
            "--type=kubernetes.io/tls",
            "--from-literal=tls.crt=cert",
            "--from-literal=tls.key=key",
            "--from-literal=admin-password=not-for-ferry",
        ]);
        let _operator = OperatorProcess::start_with_env(&ns.name, "secret-keys", &[]);
        let mut tls = ownership::pipeline("tls", 1);
        tls["spec"]["kafka"]["tls"] = json!({"caSecretRef": {"name": "kafka-ca", "key": "ca.crt"}});
        tls["spec"]["redis"]["tls"] = json!({"clientSecretRef": {"name": "redis-client"}});
        create_pipeline(&client, &ns.name, tls).await;

        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let pod = eventually(Duration::from_secs(60), "a pod of Pipeline tls", || async {
            pods.list(&ListParams::default().labels("app.kubernetes.io/instance=tls"))
                .await
                .ok()?
                .items
                .into_iter()
                .next()
        })
        .await;
        let uid = pod.uid().unwrap();
        for (volume, want) in [
            ("kafka-ca", vec!["ca.crt"]),
            ("redis-client", vec!["tls.crt", "tls.key"]),
        ] {
            let files = eventually(
                Duration::from_secs(60),
                &format!("the kubelet to mount {volume}"),
                || async { ownership::secret_volume_files(&uid, volume) },
            )
            .await;
            assert_eq!(
                files,
                want,
                "Secret volume {volume} of pod {} holds keys the Pipeline never referenced",
                pod.name_any()
            );
        }
    }

    /// Restarting the operator under another version changes the Deployments' labels but no
    /// pod template, so no worker pod is replaced (a replacement is a consumer-group rebalance).
    #[tokio::test]
    async fn an_operator_restart_with_a_new_version_label_replaces_no_worker_pod() {
        install_crds();
        let ns = TestNamespace::new("upgrade");
        let client = support::client().await;
        let first = OperatorProcess::start_with_env(
            &ns.name,
            "first",
            &[("FERRY_OPERATOR_VERSION", "1.0.0-first")],
        );
        create_pipeline(&client, &ns.name, ownership::pipeline("steady", 2)).await;

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let replica_sets: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns.name);
        let selector = ListParams::default().labels("app.kubernetes.io/instance=steady");
        let pod_uids = || async {
            let mut uids: Vec<String> = pods
                .list(&selector)
                .await
                .ok()?
                .items
                .iter()
                .filter_map(|p| p.uid())
                .collect();
            uids.sort();
            Some(uids)
        };
        let before = eventually(
            Duration::from_secs(60),
            "2 pods of Pipeline steady",
            || async { pod_uids().await.filter(|uids| uids.len() == 2) },
        )
        .await;
        let deployment = deployments.get("steady-receiver").await.unwrap();
        let template_labels: BTreeMap<String, String> = support::pod_template_meta(&deployment)
            .labels
            .clone()
            .unwrap_or_default();
        eprintln!("pod template labels: {template_labels:?}");
        assert!(
            !template_labels.contains_key(VERSION_LABEL),
            "the pod template carries the operator's {VERSION_LABEL}={}: every operator upgrade replaces every worker pod",
            template_labels[VERSION_LABEL]
        );
        first.stop();
        // After the first operator stopped: what the second may not change.
        let spec_before =
            serde_json::to_value(deployments.get("steady-receiver").await.unwrap().spec).unwrap();

        let _second = OperatorProcess::start_with_env(
            &ns.name,
            "second",
            &[("FERRY_OPERATOR_VERSION", "2.0.0-second")],
        );
        eventually(
            SHORT,
            "the new operator's version label on Deployment steady-receiver",
            || async {
                let deployment = deployments.get("steady-receiver").await.ok()?;
                (deployment.labels().get(VERSION_LABEL).map(String::as_str) == Some("2.0.0-second"))
                    .then_some(())
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let deployment = deployments.get("steady-receiver").await.unwrap();
        assert_eq!(
            replica_sets.list(&selector).await.unwrap().items.len(),
            1,
            "a second ReplicaSet: the pods roll"
        );
        assert_eq!(
            pod_uids().await.unwrap(),
            before,
            "worker pods were replaced"
        );
        assert_eq!(
            serde_json::to_value(&deployment.spec).unwrap(),
            spec_before,
            "the new operator changed the Deployment's spec"
        );
    }
}

/// `spec.api` on the local cluster with real pods: the read API and dashboard, reached
/// through its Service as a user would after `kubectl port-forward`.
mod read_api {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use kube::Api;
    use kube::api::{ListParams, Patch, PatchParams, PostParams};
    use serde_json::json;

    use super::support::{
        self, OperatorProcess, StackEnv, StackPipeline, TestNamespace, eventually, install_crds,
        kubectl, kubectl_ok, wait_ready,
    };
    use super::{pod_problems, secret_value};

    const WAIT: Duration = Duration::from_secs(120);

    /// One HTTP/1.1 GET: the status code and the body.
    fn get(address: &str, path: &str, token: Option<&str>) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(address).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split(' ').nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    /// A JSON body, de-chunked: the API answers small bodies whole, so the chunked framing
    /// is a length line, the JSON, and a zero.
    fn json_body(body: &str) -> serde_json::Value {
        serde_json::from_str(body)
            .or_else(|_| {
                let inner = body.lines().nth(1).unwrap_or_default();
                serde_json::from_str(inner)
            })
            .unwrap_or_else(|err| panic!("not JSON ({err}): {body}"))
    }

    struct Simulator(Child);

    impl Drop for Simulator {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Headless Chromium through `e2e/local/browser.py` (the DevTools protocol over a pipe):
    /// waits up to `wait` for the chart to draw a point younger than the page, then reports
    /// the page's widths and what it shows, and takes a screenshot.
    fn browse(
        url: &str,
        size: (u32, u32),
        wait: Duration,
        screenshot: &std::path::Path,
    ) -> serde_json::Value {
        let out = Command::new("python3")
            .arg(support::repo_root().join("e2e/local/browser.py"))
            .arg(url)
            .args(["--size", &format!("{}x{}", size.0, size.1)])
            .args([
                "--until",
                "window.ferryDashboard && window.ferryDashboard.livePoints > 0",
            ])
            .args(["--timeout", &wait.as_secs().to_string()])
            .arg("--screenshot")
            .arg(screenshot)
            .args([
                "--report",
                "{points: ferryDashboard.drawn, live: ferryDashboard.livePoints, \
                 stats: document.getElementById('stats').innerText, \
                 stages: document.getElementById('stages').innerText}",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("python3 runs e2e/local/browser.py");
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(text.trim()).unwrap_or_else(|err| {
            panic!(
                "browser.py printed no result ({err}): {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    #[tokio::test]
    async fn spec_api_serves_a_live_dashboard_behind_its_token_and_goes_when_turned_off() {
        install_crds();
        let ns = TestNamespace::new("read-api");
        let client = support::client().await;
        let env = StackEnv::load();
        let _operator =
            OperatorProcess::start_with_env(&ns.name, "read-api", &[("FERRY_READ_API", "true")]);
        let token = secret_value("apitoken");
        kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "dash-token",
            "-n",
            &ns.name,
            &format!("--from-literal=token={token}"),
        ]);
        let topic = ferry_test_support::unique("read-api");
        support::create_topic(env.get("KAFKA_BOOTSTRAP"), &topic, 2).await;
        let prefix = ferry_test_support::unique("dash");
        let mut stack = StackPipeline::new("dash", &topic, &prefix);
        stack.history_depth = 200;
        stack.spec_extra = "  api:\n    enabled: true\n    tokenSecretRef: {name: dash-token, key: token}\n  \
             processors:\n    - name: stats\n      stats: {window: 20}\n";
        let pipelines: Api<ferry_operator::crd::Pipeline> =
            Api::namespaced(client.clone(), &ns.name);
        pipelines
            .create(&PostParams::default(), &stack.build())
            .await
            .unwrap();

        // Live data from the simulator for the whole test.
        let _simulator = Simulator(
            Command::new(support::worker_binary())
                .args([
                    "simulate",
                    "--topic",
                    &topic,
                    "--sources",
                    "5",
                    "--rate",
                    "4",
                    "--duration",
                    "5m",
                    "--log-format",
                    "pretty",
                ])
                .env("KAFKA_BOOTSTRAP", env.get("KAFKA_BOOTSTRAP"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the simulator starts"),
        );

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
        wait_ready(&deployments, "dash-api", 1).await;
        wait_ready(&deployments, "dash-receiver", 1).await;

        // Who the API runs as, and what that may do: get this Pipeline, nothing else.
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns.name);
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns.name);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
        assert!(accounts.get_opt("dash-api").await.unwrap().is_some());
        assert!(bindings.get_opt("dash-api").await.unwrap().is_some());
        let role = roles.get("dash-api").await.unwrap();
        eprintln!("Role dash-api rules: {:?}", role.rules);
        let account = format!("--as=system:serviceaccount:{}:dash-api", ns.name);
        let can = |args: &[&str]| {
            let out = kubectl(&[&["auth", "can-i"], args, &["-n", &ns.name, &account]].concat());
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(can(&["get", "pipelines.ferry.dev/dash"]), "yes");
        for denied in [
            &["get", "pipelines.ferry.dev/other"][..],
            &["list", "pipelines.ferry.dev"],
            &["get", "secrets/dash-token"],
            &["patch", "pipelines.ferry.dev/dash"],
        ] {
            assert_eq!(can(denied), "no", "the API's account may {denied:?}");
        }

        // The pod: hardened like every worker, the token only as a mounted file.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
        let api_pods = pods
            .list(&ListParams::default().labels("ferry.dev/stage=api"))
            .await
            .unwrap();
        assert!(!api_pods.items.is_empty());
        for pod in &api_pods.items {
            let spec = pod.spec.as_ref().unwrap();
            let problems: Vec<String> = pod_problems(spec)
                .into_iter()
                // Its one deliberate difference: it reads its Pipeline with its own account.
                .filter(|p| !p.contains("automountServiceAccountToken"))
                .collect();
            assert!(problems.is_empty(), "API pod: {problems:?}");
            let text = serde_json::to_string(pod).unwrap();
            assert!(
                !text.contains(&token),
                "the token's value is in the pod spec"
            );
        }

        // Through the Service, as port-forward would reach it.
        let service = services.get("dash-api").await.unwrap();
        let address = format!(
            "{}:80",
            service
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .as_deref()
                .unwrap()
        );
        let (status, _) = eventually(WAIT, "the API to answer through its Service", || async {
            get(&address, "/healthz", None)
        })
        .await;
        assert_eq!(status, 200);
        for wrong in [None, Some("wrong-token"), Some(&token[1..])] {
            let (status, body) = get(&address, "/v1/sources", wrong).unwrap();
            eprintln!(
                "GET /v1/sources with {:?}: {status} {body}",
                wrong.map(|_| "a wrong token")
            );
            assert_eq!(status, 401, "{body}");
        }
        let sources = eventually(WAIT, "sources listed with the token", || async {
            let (status, body) = get(&address, "/v1/sources?limit=100", Some(&token))?;
            let body = json_body(&body);
            (status == 200 && body["sources"].as_array()?.len() == 5).then_some(body)
        })
        .await;
        eprintln!("sources: {sources}");
        let stages = eventually(WAIT, "the Pipeline's stages from its status", || async {
            let (status, body) = get(&address, "/v1/pipeline", Some(&token))?;
            let body = json_body(&body);
            (status == 200 && body["stages"].as_array()?.len() == 2).then_some(body)
        })
        .await;
        eprintln!("/v1/pipeline: {stages}");

        // The dashboard in a real browser: the chart draws points that arrived after the
        // page loaded, the stats and the stages' replicas are shown, nothing overflows.
        let shots = support::repo_root().join("target/dashboard");
        std::fs::create_dir_all(&shots).unwrap();
        let url = format!("http://{address}/?source=src-0001#token={token}");
        for (name, size) in [("desktop", (1280, 900)), ("phone", (390, 844))] {
            let shot = shots.join(format!("dashboard-{name}.png"));
            let _ = std::fs::remove_file(&shot);
            let result = browse(&url, size, Duration::from_secs(60), &shot);
            eprintln!("{name} {}x{}: {result}; {}", size.0, size.1, shot.display());
            assert_eq!(
                result["until_held"], true,
                "{name}: no point drawn from live data"
            );
            assert!(
                result["scroll_width"].as_i64() <= result["inner_width"].as_i64()
                    && result["inner_width"].as_i64() == Some(i64::from(size.0)),
                "{name}: the page overflows horizontally, or the viewport is not {}px",
                size.0
            );
            let report: serde_json::Value =
                serde_json::from_str(result["report"].as_str().unwrap_or("null")).unwrap();
            let stats = report["stats"].as_str().unwrap_or_default();
            let stages = report["stages"].as_str().unwrap_or_default();
            assert!(
                stats.contains("stats: stats") && stats.contains("count"),
                "{name}: stats not shown: {stats:?}"
            );
            assert!(
                stages.contains("receiver") && stages.contains("stats") && stages.contains("1/1"),
                "{name}: the stages and their replicas are not shown: {stages:?}"
            );
            assert!(shot.exists(), "{name}: no screenshot");
        }

        // Turned off: every object it made goes, the stages stay.
        pipelines
            .patch(
                "dash",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"api": {"enabled": false}}})),
            )
            .await
            .unwrap();
        eventually(WAIT, "the API's objects to be removed", || async {
            let gone = deployments.get_opt("dash-api").await.ok()?.is_none()
                && services.get_opt("dash-api").await.ok()?.is_none()
                && accounts.get_opt("dash-api").await.ok()?.is_none()
                && roles.get_opt("dash-api").await.ok()?.is_none()
                && bindings.get_opt("dash-api").await.ok()?.is_none();
            gone.then_some(())
        })
        .await;
        assert!(
            deployments
                .get_opt("dash-receiver")
                .await
                .unwrap()
                .is_some()
        );
    }
}
