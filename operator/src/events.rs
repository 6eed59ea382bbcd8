//! Events about a Pipeline, from the controller and the autoscaler alike.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder};
use tracing::warn;

use crate::crd::Pipeline;

/// Publishes an Event about `pipeline`; a failure to publish is logged, never fatal.
pub async fn publish(
    recorder: &Recorder,
    pipeline: &Pipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &pipeline.object_ref(&())).await {
        warn!(error = %err, "cannot publish event");
    }
}
