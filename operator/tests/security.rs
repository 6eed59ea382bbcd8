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
use ferry_operator::controller::validate::{OperatorDefaults, validate};
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
                worker_image: "ferry/worker:test".to_owned(),
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
