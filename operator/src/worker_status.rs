//! The status channel's operator side (docs/status-channel.md): every worker pod serves
//! `GET /status`, a JSON document of what stops or degrades it, each reason named
//! ([`ferry_config::status`]). This peer task lists the Ferry pods every
//! [`SCRAPE_INTERVAL`], reads each running pod's document on its `http` port, keeps what
//! every Pipeline's stages report, publishes a Warning Event when a reason appears, and
//! asks for a reconcile when a Pipeline's reports change. The reconcile's `status` stage,
//! the one writer of status, turns them into the `Degraded` condition.
//!
//! Within the hardening: worker pods keep no service-account token and the operator reads
//! no Secrets; it needs only `list` on pods and to reach the pods' HTTP port, as a
//! Prometheus scrape does. A document is untrusted input: bounded in size and time, never
//! a panic, and a pod that does not answer reports nothing (it is probably starting; its
//! readiness is in the Deployment's counts anyway).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferry_config::status::{MAX_STATUS_BYTES, StatusDocument};
use futures::StreamExt;
use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, ResourceExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::controller::build::{
    API_COMPONENT, HTTP_PORT_NAME, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_STAGE,
    MANAGED_BY,
};
use crate::crd::Pipeline;

/// How often every worker pod's `/status` is read.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one pod may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Pods read at once.
const SCRAPE_CONCURRENCY: usize = 16;

/// One reason one pod reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodReason {
    pub reason: String,
    pub pod: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub message: String,
}

/// What a Pipeline's stages report, by stage name; stages reporting nothing are absent.
pub type StageReports = BTreeMap<String, Vec<PodReason>>;

/// The reports of every Pipeline, written by [`run`], read by every reconcile.
#[derive(Debug, Default)]
pub struct WorkerReports {
    reports: Mutex<HashMap<(String, String), StageReports>>,
}

impl WorkerReports {
    /// What the stages of Pipeline `namespace/name` report now.
    pub fn of(&self, namespace: &str, name: &str) -> StageReports {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Stores `reports`; returns what was stored before when it differs.
    fn replace(&self, key: (String, String), reports: StageReports) -> Option<StageReports> {
        let mut all = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        let before = all.get(&key).cloned().unwrap_or_default();
        if before == reports {
            return None;
        }
        if reports.is_empty() {
            all.remove(&key);
        } else {
            all.insert(key, reports);
        }
        Some(before)
    }
}

/// What the reading task needs.
pub struct Peer {
    pub client: Client,
    pub namespace: Option<String>,
    pub reports: Arc<WorkerReports>,
    pub recorder: Recorder,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Reads every worker pod's `/status` until `shutdown`, storing the reports per Pipeline
/// and sending the Pipelines whose reports changed on `trigger`.
pub async fn run(
    peer: Peer,
    pipelines: Store<Pipeline>,
    trigger: UnboundedSender<ObjectRef<Pipeline>>,
    shutdown: CancellationToken,
) {
    let pods: Api<Pod> = match &peer.namespace {
        Some(namespace) => Api::namespaced(peer.client.clone(), namespace),
        None => Api::all(peer.client.clone()),
    };
    // The read API's pods carry a stage label too, but report no /status.
    let selector =
        format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_STAGE},{LABEL_COMPONENT}!={API_COMPONENT}");
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => list.items,
            Err(error) => {
                warn!(%error, "cannot list the worker pods; their /status is not read");
                continue;
            }
        };
        let read: Vec<((String, String), String, Vec<PodReason>)> =
            futures::stream::iter(listed.into_iter().filter_map(target))
                .map(|target| async move {
                    let reasons = match scrape(target.ip, target.port).await {
                        Ok(document) => pod_reasons(&target.pod, document),
                        Err(error) => {
                            debug!(pod = %target.pod, %error, "no /status from the pod");
                            Vec::new()
                        }
                    };
                    (target.pipeline, target.stage, reasons)
                })
                .buffer_unordered(SCRAPE_CONCURRENCY)
                .collect()
                .await;
        let mut by_pipeline: HashMap<(String, String), StageReports> = HashMap::new();
        for (pipeline, stage, reasons) in read {
            let stages = by_pipeline.entry(pipeline).or_default();
            if !reasons.is_empty() {
                stages.entry(stage).or_default().extend(reasons);
            }
        }
        for pipeline in pipelines.state() {
            let key = (
                pipeline.namespace().unwrap_or_default(),
                pipeline.name_any(),
            );
            let mut reports = by_pipeline.remove(&key).unwrap_or_default();
            reports.retain(|_, reasons| !reasons.is_empty());
            for reasons in reports.values_mut() {
                reasons.sort();
            }
            let Some(before) = peer.reports.replace(key, reports.clone()) else {
                continue;
            };
            for (stage, reason) in appeared(&before, &reports) {
                crate::events::publish(
                    &peer.recorder,
                    &pipeline,
                    EventType::Warning,
                    &reason.reason,
                    "WorkerStatus",
                    describe(&stage, &reason),
                )
                .await;
            }
            if trigger
                .unbounded_send(ObjectRef::from_obj(pipeline.as_ref()))
                .is_err()
            {
                warn!("the controller stopped: cannot trigger a reconcile");
                return;
            }
        }
    }
}

/// A pod to read: its Pipeline, stage, address and port.
struct Target {
    pipeline: (String, String),
    stage: String,
    pod: String,
    ip: IpAddr,
    port: u16,
}

/// A running pod with an address, a Pipeline and a stage label, else nothing to read.
fn target(pod: Pod) -> Option<Target> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let labels = pod.metadata.labels.as_ref()?;
    let instance = labels.get(LABEL_INSTANCE)?.clone();
    let stage = labels.get(LABEL_STAGE)?.clone();
    let port = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(HTTP_PORT_NAME))
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(ferry_config::config::DEFAULT_HTTP_PORT);
    Some(Target {
        pipeline: (pod.namespace().unwrap_or_default(), instance),
        stage,
        pod: pod.name_any(),
        ip,
        port,
    })
}

fn pod_reasons(pod: &str, document: StatusDocument) -> Vec<PodReason> {
    document
        .reasons
        .into_iter()
        .map(|r| PodReason {
            reason: sanitize_reason(&r.reason),
            pod: pod.to_owned(),
            partition: r.partition,
            offset: r.offset,
            message: ferry_config::status::bounded_message(&r.message),
        })
        .collect()
}

/// A condition's `reason` must be CamelCase letters and digits: anything else from a pod
/// becomes `WorkerReported`.
fn sanitize_reason(reason: &str) -> String {
    let valid = !reason.is_empty()
        && reason.len() <= 64
        && reason.starts_with(|c: char| c.is_ascii_uppercase())
        && reason.chars().all(|c| c.is_ascii_alphanumeric());
    if valid {
        reason.to_owned()
    } else {
        "WorkerReported".to_owned()
    }
}

/// The reasons in `after` that `before` did not have (by stage, reason and partition).
fn appeared(before: &StageReports, after: &StageReports) -> Vec<(String, PodReason)> {
    let known: BTreeSet<(&str, &str, Option<i32>)> = before
        .iter()
        .flat_map(|(stage, reasons)| {
            reasons
                .iter()
                .map(move |r| (stage.as_str(), r.reason.as_str(), r.partition))
        })
        .collect();
    let mut seen = BTreeSet::new();
    after
        .iter()
        .flat_map(|(stage, reasons)| reasons.iter().map(move |r| (stage, r)))
        .filter(|(stage, r)| {
            let key = (stage.as_str(), r.reason.as_str(), r.partition);
            !known.contains(&key) && seen.insert(key)
        })
        .map(|(stage, r)| (stage.clone(), r.clone()))
        .collect()
}

/// One reason in words: `stage receiver, pod P, partition 1 offset 5: message`.
pub fn describe(stage: &str, reason: &PodReason) -> String {
    let mut text = format!("stage {stage}, pod {}", reason.pod);
    match (reason.partition, reason.offset) {
        (Some(partition), Some(offset)) => {
            text.push_str(&format!(", partition {partition} offset {offset}"));
        }
        (Some(partition), None) => text.push_str(&format!(", partition {partition}")),
        _ => {}
    }
    text.push_str(": ");
    text.push_str(&reason.message);
    text
}

#[derive(Debug, thiserror::Error)]
enum ScrapeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("I/O: {0}")]
    Io(std::io::Error),
    #[error("answered {0}")]
    Status(String),
    #[error("the body is not a status document: {0}")]
    Parse(serde_json::Error),
    #[error("the answer is over {MAX_STATUS_BYTES} bytes")]
    TooLarge,
}

/// `GET /status` over HTTP/1.0, bounded in time and size.
async fn scrape(ip: IpAddr, port: u16) -> Result<StatusDocument, ScrapeError> {
    tokio::time::timeout(SCRAPE_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(ScrapeError::Connect)?;
        stream
            .write_all(b"GET /status HTTP/1.0\r\nHost: worker\r\nAccept: application/json\r\n\r\n")
            .await
            .map_err(ScrapeError::Io)?;
        let limit = MAX_STATUS_BYTES + 4096;
        let mut response = Vec::new();
        let read = (&mut stream)
            .take(u64::try_from(limit).unwrap_or(u64::MAX) + 1)
            .read_to_end(&mut response)
            .await
            .map_err(ScrapeError::Io)?;
        if read > limit {
            return Err(ScrapeError::TooLarge);
        }
        parse_response(&response)
    })
    .await
    .map_err(|_| ScrapeError::Timeout)?
}

fn parse_response(response: &[u8]) -> Result<StatusDocument, ScrapeError> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ScrapeError::Status("no header end".to_owned()))?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(ScrapeError::Status(status_line.chars().take(80).collect()));
    }
    serde_json::from_slice(&response[split + 4..]).map_err(ScrapeError::Parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(reason: &str, partition: Option<i32>) -> PodReason {
        PodReason {
            reason: reason.to_owned(),
            pod: "p-0".to_owned(),
            partition,
            offset: partition.map(|_| 9),
            message: "m".to_owned(),
        }
    }

    #[test]
    fn a_response_parses_only_when_200_with_a_document() {
        let ok = b"HTTP/1.0 200 OK\r\ncontent-type: application/json\r\n\r\n{\"ready\":false,\"reasons\":[{\"reason\":\"TopicMissing\",\"message\":\"m\"}]}";
        let doc = parse_response(ok).unwrap();
        assert_eq!(doc.reasons.len(), 1);
        assert!(matches!(
            parse_response(b"HTTP/1.0 404 Not Found\r\n\r\n"),
            Err(ScrapeError::Status(_))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\nnot json"),
            Err(ScrapeError::Parse(_))
        ));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn reasons_from_a_pod_are_sanitized_and_events_go_to_new_ones_only() {
        assert_eq!(sanitize_reason("RedisGap"), "RedisGap");
        assert_eq!(sanitize_reason("bad reason\n"), "WorkerReported");
        assert_eq!(sanitize_reason(""), "WorkerReported");
        let before =
            StageReports::from([("receiver".to_owned(), vec![reason("TopicMissing", None)])]);
        let after = StageReports::from([(
            "receiver".to_owned(),
            vec![
                reason("RecordUndeliverable", Some(1)),
                reason("RecordUndeliverable", Some(1)),
                reason("TopicMissing", None),
            ],
        )]);
        let new = appeared(&before, &after);
        assert_eq!(new.len(), 1, "one Event per stage, reason and partition");
        assert_eq!(
            describe(&new[0].0, &new[0].1),
            "stage receiver, pod p-0, partition 1 offset 9: m"
        );
    }

    #[test]
    fn reports_change_only_when_they_differ() {
        let reports = WorkerReports::default();
        let key = ("ns".to_owned(), "p".to_owned());
        let one = StageReports::from([("receiver".to_owned(), vec![reason("RedisGap", None)])]);
        assert_eq!(
            reports.replace(key.clone(), one.clone()),
            Some(StageReports::new())
        );
        assert_eq!(reports.replace(key.clone(), one.clone()), None);
        assert_eq!(reports.of("ns", "p"), one);
        assert_eq!(reports.replace(key, StageReports::new()), Some(one));
        assert!(reports.of("ns", "p").is_empty());
    }
}
