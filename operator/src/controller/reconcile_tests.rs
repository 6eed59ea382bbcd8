//! The reconcile against a mocked API server ([`super::mock_api`]): the exact calls one
//! round makes for a fixture Pipeline, and what status a sequence of rounds leaves.

use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;

use super::context::Context;
use super::mock_api::{self, FakeApi};
use super::reconcile::{error_policy, reconcile};
use crate::crd::{Pipeline, PipelineStatus};

const SAMPLE: &str = include_str!("../../../examples/pipeline.yaml");

const CONFIG_MAP: &str = "/api/v1/namespaces/default/configmaps/sensors-config";
const CONFIG_MAPS: &str = "/api/v1/namespaces/default/configmaps";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const STATUS: &str = "/apis/ferry.dev/v1alpha1/namespaces/default/pipelines/sensors/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

fn fixture() -> Pipeline {
    let mut pipeline: Pipeline = serde_yaml::from_str(SAMPLE).unwrap();
    pipeline.metadata.namespace = Some("default".to_owned());
    pipeline.metadata.uid = Some("11111111-2222-4333-8444-555555555555".to_owned());
    pipeline.metadata.generation = Some(1);
    pipeline
}

fn context(pipeline: &Pipeline) -> (Arc<Context>, FakeApi) {
    let (client, fake) = FakeApi::start(pipeline);
    (Arc::new(mock_api::context(client)), fake)
}

fn deployment(name: &str) -> String {
    format!("{DEPLOYMENTS}/{name}")
}

fn lines(fake: &FakeApi) -> Vec<String> {
    fake.take_calls().iter().map(|c| c.line()).collect()
}

/// Fills the children's watch caches with what the fake holds, as the watches would.
fn sync_caches(ctx: &Context, fake: &FakeApi, deployments: &[&str]) {
    let mut writers = ctx.child_writers.lock().unwrap();
    let (deployment_writer, config_map_writer) = writers.as_mut().unwrap();
    for name in deployments {
        let object: Deployment =
            serde_json::from_value(fake.object(&deployment(name)).unwrap()).unwrap();
        deployment_writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    let config_map: ConfigMap = serde_json::from_value(fake.object(CONFIG_MAP).unwrap()).unwrap();
    config_map_writer.apply_watcher_event(&watcher::Event::Apply(config_map));
}

fn condition<'a>(status: &'a PipelineStatus, type_: &str) -> &'a crate::crd::Condition {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no condition {type_}"))
}

const STAGES: [&str; 3] = ["sensors-receiver", "sensors-stats", "sensors-validate"];

#[tokio::test]
async fn create_checks_then_applies_the_config_map_then_each_deployment_then_status() {
    let pipeline = fixture();
    let (ctx, fake) = context(&pipeline);
    reconcile(Arc::new(pipeline), ctx).await.unwrap();

    let calls = fake.take_calls();
    let got: Vec<String> = calls.iter().map(|c| c.line()).collect();
    assert_eq!(
        got,
        [
            // None is in the watch cache: each is read first, to be sure no one else's
            // object has its name.
            format!("GET {CONFIG_MAP}"),
            format!("GET {}", deployment("sensors-receiver")),
            format!("GET {}", deployment("sensors-stats")),
            format!("GET {}", deployment("sensors-validate")),
            format!("PATCH {CONFIG_MAP}"),
            format!("PATCH {}", deployment("sensors-receiver")),
            format!("PATCH {}", deployment("sensors-stats")),
            format!("PATCH {}", deployment("sensors-validate")),
            format!("PATCH {STATUS}"),
            format!("POST {EVENTS}"),
        ]
    );
    // Every write is server-side apply, forced, under the one field manager.
    for call in calls.iter().filter(|c| c.method == http::Method::PATCH) {
        assert!(
            call.query.contains("fieldManager=ferry-operator") && call.query.contains("force=true"),
            "{}?{}",
            call.line(),
            call.query
        );
    }
    let status = fake.pipeline().status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(condition(&status, "Degraded").status, "False");
    assert_eq!(status.stages.len(), 3);
    assert_eq!(calls[9].body["reason"], "Created");
}

#[tokio::test]
async fn an_unchanged_pipeline_makes_no_call() {
    let pipeline = fixture();
    let (ctx, fake) = context(&pipeline);
    reconcile(Arc::new(pipeline), ctx.clone()).await.unwrap();
    fake.take_calls();
    sync_caches(&ctx, &fake, &STAGES);

    // The next wakeup sees the Pipeline as the first round left it.
    reconcile(Arc::new(fake.pipeline()), ctx).await.unwrap();
    assert_eq!(lines(&fake), Vec::<String>::new());
}

#[tokio::test]
async fn removing_a_processor_deletes_its_deployment() {
    let pipeline = fixture();
    let (ctx, fake) = context(&pipeline);
    reconcile(Arc::new(pipeline), ctx.clone()).await.unwrap();
    fake.take_calls();
    sync_caches(&ctx, &fake, &STAGES);

    let mut edited = fake.pipeline();
    edited.spec.processors.retain(|p| p.name != "validate");
    edited.metadata.generation = Some(2);
    reconcile(Arc::new(edited), ctx).await.unwrap();

    let calls = fake.take_calls();
    let got: Vec<String> = calls.iter().map(|c| c.line()).collect();
    // The ConfigMap lost a key; the two remaining Deployments are as built and stay unapplied.
    assert_eq!(
        got,
        [
            format!("PATCH {CONFIG_MAP}"),
            format!("GET {DEPLOYMENTS}"),
            format!("DELETE {}", deployment("sensors-validate")),
            format!("GET {CONFIG_MAPS}"),
            format!("PATCH {STATUS}"),
            format!("POST {EVENTS}"),
            format!("POST {EVENTS}"),
        ]
    );
    assert!(
        calls[1]
            .query
            .contains("app.kubernetes.io%2Finstance%3Dsensors"),
        "lists by the owned-children selector: {}",
        calls[1].query
    );
    assert!(fake.object(&deployment("sensors-validate")).is_none());
    assert!(fake.object(&deployment("sensors-stats")).is_some());
    assert_eq!(calls[5].body["reason"], "Updated");
    assert_eq!(calls[6].body["reason"], "Deleted");
    let status = fake.pipeline().status.unwrap();
    assert_eq!(status.observed_generation, Some(2));
    assert_eq!(status.stages.len(), 2);
}

/// A failing round and, at once, a successful one: the status left is the success's, even
/// though the cache still shows the status from before the failure (equal to what the
/// success computes, which alone would skip the write).
#[tokio::test]
async fn a_success_right_after_a_failure_leaves_the_successful_status() {
    let pipeline = fixture();
    let (ctx, fake) = context(&pipeline);
    reconcile(Arc::new(pipeline), ctx.clone()).await.unwrap();
    let cached = Arc::new(fake.pipeline());
    let healthy = cached.status.clone().unwrap();
    fake.take_calls();

    fake.fail_next(
        &format!("PATCH {}", deployment("sensors-stats")),
        StatusCode::INTERNAL_SERVER_ERROR,
    );
    let error = reconcile(cached.clone(), ctx.clone()).await.unwrap_err();
    let _ = error_policy(cached.clone(), &error, ctx.clone());
    let failed = fake.pipeline().status.unwrap();
    assert_eq!(condition(&failed, "Ready").reason, "ApplyFailed");
    assert_eq!(condition(&failed, "Progressing").message, "retrying");

    // The watch has not delivered the failure's status yet: the same cached object again.
    reconcile(cached, ctx).await.unwrap();
    let calls = lines(&fake);
    let status_writes: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, line)| **line == format!("PATCH {STATUS}"))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(status_writes.len(), 2, "{calls:#?}");
    let left = fake.pipeline().status.unwrap();
    for type_ in ["Ready", "Progressing", "Degraded"] {
        assert_eq!(
            condition(&left, type_).reason,
            condition(&healthy, type_).reason,
            "{type_}"
        );
    }
}

#[tokio::test]
async fn a_serialisation_failure_is_retried_not_blamed_on_the_user() {
    use super::error::{Error, Recovery};
    let error = Error::Build(super::build::BuildError::RenderConfig {
        stage: "receiver".into(),
        source: serde_yaml::from_str::<i32>("[").unwrap_err(),
    });
    let pipeline = Arc::new(fixture());
    let (ctx, _fake) = context(&pipeline);
    assert_eq!(error.recovery(), Recovery::Retry);
    assert_ne!(
        error_policy(pipeline, &error, ctx),
        kube::runtime::controller::Action::await_change()
    );
}
