//! A fake API server for the reconcile's unit tests, in the style of kube-rs controller-rs:
//! a `kube::Client` over `tower-test`'s mock service, answered by a task that keeps the
//! objects it was sent and records every call, so a test can assert the exact calls.
//!
//! It knows just enough of the API: server-side apply (stores and echoes the object, with
//! this operator as its only manager), the status subresource and the metadata of the one
//! Pipeline, label listing as `PartialObjectMetadataList`, delete, and Event creation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::apply::FIELD_MANAGER;
use super::context::Context;
use super::validate::OperatorDefaults;
use crate::crd::Pipeline;
use crate::metrics::Metrics;

/// One request the fake server received.
#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl ApiCall {
    /// `METHOD /path`, what the tests compare.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

#[derive(Debug, Default)]
struct State {
    pipeline: Value,
    /// Objects by their resource path.
    objects: BTreeMap<String, Value>,
    calls: Vec<ApiCall>,
    /// One-shot failures: the next call whose `METHOD /path` starts with the prefix fails.
    failures: Vec<(String, StatusCode)>,
    resource_version: u64,
}

/// The fake API server's state, shared with the test.
#[derive(Debug, Clone)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    /// A client whose every request this fake answers; `pipeline` is the one Pipeline.
    pub fn start(pipeline: &Pipeline) -> (Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let fake = Self {
            state: Arc::new(Mutex::new(State {
                pipeline: serde_json::to_value(pipeline).unwrap(),
                ..State::default()
            })),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap();
                let call = ApiCall {
                    method: parts.method,
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, answer) = server.answer(call);
                respond.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                        .unwrap(),
                );
            }
        });
        (Client::new(service, "default"), fake)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the next call starting with `prefix` (`METHOD /path`) fail with `status`.
    pub fn fail_next(&self, prefix: &str, status: StatusCode) {
        self.lock().failures.push((prefix.to_owned(), status));
    }

    /// Every call so far as `METHOD /path`, and forgets them.
    pub fn take_calls(&self) -> Vec<ApiCall> {
        std::mem::take(&mut self.lock().calls)
    }

    /// An object as the fake holds it.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// The Pipeline as the fake holds it, status included.
    pub fn pipeline(&self) -> Pipeline {
        serde_json::from_value(self.lock().pipeline.clone()).unwrap()
    }

    fn answer(&self, call: ApiCall) -> (StatusCode, Value) {
        let mut state = self.lock();
        state.calls.push(call.clone());
        let line = call.line();
        if let Some(at) = state.failures.iter().position(|(p, _)| line.starts_with(p)) {
            let (_, status) = state.failures.remove(at);
            return (status, status_body(status, "injected by the test"));
        }
        state.resource_version += 1;
        let version = state.resource_version.to_string();
        match call.method {
            Method::PATCH if call.path.ends_with("/status") => {
                state.pipeline["status"] = call.body["status"].clone();
                state.pipeline["metadata"]["resourceVersion"] = json!(version);
                (StatusCode::OK, state.pipeline.clone())
            }
            // A merge patch of the Pipeline's metadata (its finalizers).
            Method::PATCH if call.path.contains("/pipelines/") => {
                if let Some(fields) = call.body["metadata"].as_object() {
                    for (field, value) in fields {
                        state.pipeline["metadata"][field] = value.clone();
                    }
                }
                state.pipeline["metadata"]["resourceVersion"] = json!(version);
                (StatusCode::OK, state.pipeline.clone())
            }
            Method::PATCH => {
                let mut object = call.body;
                let api_version = object["apiVersion"].clone();
                let meta = &mut object["metadata"];
                meta["resourceVersion"] = json!(version);
                meta["uid"] = json!(format!("uid-{}", call.path));
                meta["managedFields"] = json!([{
                    "manager": FIELD_MANAGER,
                    "operation": "Apply",
                    "apiVersion": api_version,
                }]);
                state.objects.insert(call.path, object.clone());
                (StatusCode::OK, object)
            }
            Method::GET if state.objects.contains_key(&call.path) => {
                (StatusCode::OK, state.objects[&call.path].clone())
            }
            // One object of a kind the reconcile writes, which the fake does not hold.
            Method::GET
                if call.path.rsplit_once('/').is_some_and(|(parent, _)| {
                    ["/configmaps", "/deployments", "/kafkatopics"]
                        .iter()
                        .any(|kind| parent.ends_with(kind))
                }) =>
            {
                (
                    StatusCode::NOT_FOUND,
                    status_body(StatusCode::NOT_FOUND, "not found"),
                )
            }
            Method::GET => {
                let selector = query_param(&call.query, "labelSelector");
                let prefix = format!("{}/", call.path);
                let items: Vec<Value> = state
                    .objects
                    .iter()
                    .filter(|(path, object)| {
                        path.starts_with(&prefix)
                            && !path[prefix.len()..].contains('/')
                            && matches_selector(object, selector.as_deref())
                    })
                    .map(|(_, object)| {
                        json!({
                            "apiVersion": "meta.k8s.io/v1",
                            "kind": "PartialObjectMetadata",
                            "metadata": object["metadata"].clone(),
                        })
                    })
                    .collect();
                let list = json!({
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadataList",
                    "metadata": { "resourceVersion": version },
                    "items": items,
                });
                (StatusCode::OK, list)
            }
            Method::DELETE => match state.objects.remove(&call.path) {
                Some(object) => (StatusCode::OK, object),
                None => (
                    StatusCode::NOT_FOUND,
                    status_body(StatusCode::NOT_FOUND, "not found"),
                ),
            },
            Method::POST => {
                let mut object = call.body;
                object["metadata"]["name"] = json!(format!("event-{version}"));
                object["metadata"]["resourceVersion"] = json!(version);
                (StatusCode::CREATED, object)
            }
            _ => (
                StatusCode::NOT_FOUND,
                status_body(StatusCode::NOT_FOUND, "the fake does not serve this"),
            ),
        }
    }
}

/// A reconcile's context over `client` (the fake's), with the tests' operator defaults.
pub fn context(client: Client) -> Context {
    Context::new(
        client,
        OperatorDefaults::new("ferry/worker:test"),
        Arc::new(Metrics::default()),
        "test".to_owned(),
    )
}

fn status_body(status: StatusCode, message: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "message": message,
        // The API server's reasons are CamelCase (`NotFound`), which `get_opt` looks for.
        "reason": status.canonical_reason().unwrap_or_default().replace(' ', ""),
        "code": status.as_u16(),
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            value
                .replace("%3D", "=")
                .replace("%2C", ",")
                .replace("%2F", "/")
        })
    })
}

fn matches_selector(object: &Value, selector: Option<&str>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    selector.split(',').all(|term| {
        let Some((key, value)) = term.split_once('=') else {
            return false;
        };
        object["metadata"]["labels"][key].as_str() == Some(value)
    })
}
