//! `spec.api`: the read API's objects as built, and who may ask for them.

use k8s_openapi::api::apps::v1::Deployment;

use super::build::{self, ApiChildren, LABEL_STAGE};
use super::dereference::{Bootstrap, Dereferenced};
use super::fixture_tests::{SAMPLE, deployment, pod_spec as pod, pod_template_meta, with_metadata};
use super::validate::{OperatorDefaults, ValidateError, ValidatedPipeline, validate};
use crate::crd::Pipeline;
use crate::scaling::DesiredReplicas;

fn sample_with_api(api: &str) -> Pipeline {
    let yaml = SAMPLE.replacen("spec:\n", &format!("spec:\n  api: {api}\n"), 1);
    let mut pipeline = with_metadata(&yaml);
    pipeline.metadata.namespace = Some("team".to_owned());
    pipeline
}

fn validated(pipeline: &Pipeline, read_api: bool) -> Result<ValidatedPipeline, ValidateError> {
    validate(
        pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("kafka:9092".to_owned()),
        },
        &OperatorDefaults {
            read_api,
            ..OperatorDefaults::new("ferry/worker:test")
        },
    )
}

fn api_children(api: &str) -> (ApiChildren, Deployment) {
    let pipeline = validated(&sample_with_api(api), true).unwrap();
    let children = build::build(&pipeline, &DesiredReplicas::default()).unwrap();
    let receiver = deployment(&children, "sensors-receiver").clone();
    (
        children.api.expect("spec.api.enabled builds the API"),
        receiver,
    )
}

#[test]
fn the_api_account_may_get_only_its_own_pipeline() {
    let (api, _) = api_children("{enabled: true}");
    let rules = api.role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups.as_deref(),
        Some(&["ferry.dev".to_owned()][..])
    );
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["pipelines".to_owned()][..])
    );
    assert_eq!(
        rules[0].resource_names.as_deref(),
        Some(&["sensors".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get"]);
    assert_eq!(api.role_binding.role_ref.kind, "Role");
    assert_eq!(api.role_binding.role_ref.name, "sensors-api");
    let subjects = api.role_binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, "sensors-api");
    assert_eq!(subjects[0].namespace.as_deref(), Some("team"));
    assert_eq!(
        api.service_account.metadata.name.as_deref(),
        Some("sensors-api")
    );
    assert_eq!(
        pod(&api.deployment).service_account_name.as_deref(),
        Some("sensors-api")
    );
}

#[test]
fn the_api_pod_is_the_receiver_pod_hardened_alike_running_ferry_api() {
    let (api, receiver) = api_children("{enabled: true, replicas: 2}");
    let (api_pod, receiver_pod) = (pod(&api.deployment), pod(&receiver));
    assert_eq!(api.deployment.metadata.name.as_deref(), Some("sensors-api"));
    assert_eq!(api.deployment.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(api_pod.security_context, receiver_pod.security_context);
    let (container, worker) = (&api_pod.containers[0], &receiver_pod.containers[0]);
    assert_eq!(container.security_context, worker.security_context);
    assert_eq!(
        container.env, worker.env,
        "the same Secret references, no others"
    );
    assert_eq!(container.image, worker.image);
    assert_eq!(api_pod.automount_service_account_token, Some(true));
    assert_eq!(receiver_pod.automount_service_account_token, Some(false));
    assert_eq!(
        container.command.as_deref(),
        Some(&["/usr/local/bin/ferry-api".to_owned()][..])
    );
    assert_eq!(worker.command, None, "the image's entrypoint, ferry-worker");
    let args = container.args.clone().unwrap();
    assert_eq!(args[0], "--config");
    let pair = |flag: &str| {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(pair("--pipeline-object"), ["team/sensors"]);
    assert_eq!(pair("--stats"), ["stats"]);
    assert_eq!(pair("--validate"), ["validate"]);
    assert!(pair("--token-file").is_empty());
}

#[test]
fn the_service_selects_the_api_pods_and_no_stage_pods() {
    let (api, receiver) = api_children("{enabled: true}");
    let selector = api.service.spec.as_ref().unwrap().selector.clone().unwrap();
    let labels = |d: &Deployment| pod_template_meta(d).labels.clone().unwrap();
    let selects = |pod: &std::collections::BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| pod.get(k) == Some(v))
    };
    assert!(selects(&labels(&api.deployment)));
    assert!(!selects(&labels(&receiver)));
    assert_eq!(selector.get(LABEL_STAGE).map(String::as_str), Some("api"));
    assert_eq!(
        api.deployment
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref(),
        Some(&selector)
    );
}

#[test]
fn a_token_secret_is_mounted_as_one_file_and_passed_to_serve() {
    let (api, _) = api_children("{enabled: true, tokenSecretRef: {name: dashboard, key: bearer}}");
    let pod = pod(&api.deployment);
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "api-token")
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("dashboard"));
    let items = secret.items.as_ref().unwrap();
    assert_eq!((items.len(), items[0].key.as_str()), (1, "bearer"));
    let args = pod.containers[0].args.clone().unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--token-file" && w[1] == "/etc/ferry/api-token/token"),
        "{args:?}"
    );
}

#[test]
fn a_pipeline_without_api_or_with_it_disabled_builds_none() {
    for api in ["{enabled: false}", "null"] {
        let pipeline = validated(&sample_with_api(api), true).unwrap();
        let children = build::build(&pipeline, &DesiredReplicas::default()).unwrap();
        assert!(children.api.is_none(), "{api}");
    }
}

#[test]
fn the_api_is_refused_where_the_admin_did_not_enable_it() {
    let err = validated(&sample_with_api("{enabled: true}"), false).unwrap_err();
    assert!(matches!(err, ValidateError::ReadApiNotEnabled), "{err}");
    assert!(err.to_string().starts_with("spec.api.enabled"), "{err}");
}

#[test]
fn a_paused_pipeline_runs_no_api_pods() {
    let mut pipeline = sample_with_api("{enabled: true}");
    pipeline.spec.paused = true;
    let validated = validated(&pipeline, true).unwrap();
    let children = build::build(&validated, &DesiredReplicas::default()).unwrap();
    let api = children.api.unwrap();
    assert_eq!(api.deployment.spec.unwrap().replicas, Some(0));
}
