//! The controller's one error type, and the one place that decides what an error means for
//! the Pipeline: whether the user must change it, or the operator retries on its own.

use super::dereference::DereferenceError;
use super::status::Problem;
use super::{apply, build, status, validate};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Dereference(#[from] DereferenceError),
    #[error("invalid Pipeline: {0}")]
    Validate(#[from] validate::ValidateError),
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    #[error(transparent)]
    Status(#[from] status::StatusError),
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicError),
}

/// What a failed reconcile waits for before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Only an edit of the Pipeline can help; the watch brings that edit.
    AwaitChange,
    /// The Strimzi cluster is not usable yet; look again after a fixed wait.
    WaitForStrimzi,
    /// The API server, or the operator itself, failed: retry with backoff.
    Retry,
}

impl Error {
    /// A short stable label for metrics and Event reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Dereference(DereferenceError::StrimziNotReady { .. }) => "strimzi_not_ready",
            Self::Dereference(DereferenceError::FetchKafka { .. }) => "fetch_kafka",
            Self::Validate(validate::ValidateError::ImageNotAllowed { .. }) => "image_not_allowed",
            Self::Validate(validate::ValidateError::ReadApiNotEnabled) => "read_api_not_enabled",
            Self::Validate(_) => "invalid_spec",
            Self::Build(_) => "build",
            Self::Apply(apply::ApplyError::NotOwned { .. }) => "not_owned",
            Self::Apply(_) => "apply",
            Self::Status(_) => "status",
            Self::Topics(_) => "topics",
        }
    }

    /// The one verdict on user error versus retry. A `Build` error is a worker config that
    /// would not serialise: the operator's own fault, which no edit of the spec is known to
    /// fix, so it is retried like any other transient failure rather than blamed on the user.
    pub fn recovery(&self) -> Recovery {
        match self {
            Self::Validate(_) => Recovery::AwaitChange,
            Self::Dereference(DereferenceError::StrimziNotReady { .. }) => Recovery::WaitForStrimzi,
            Self::Dereference(DereferenceError::FetchKafka { .. })
            | Self::Build(_)
            | Self::Apply(_)
            | Self::Status(_)
            | Self::Topics(_) => Recovery::Retry,
        }
    }

    /// What the Pipeline's conditions say about this error.
    pub fn problem(&self) -> Problem {
        let reason = match self {
            Self::Dereference(DereferenceError::StrimziNotReady { reason, .. }) => reason,
            Self::Dereference(DereferenceError::FetchKafka { .. }) => "StrimziFetchFailed",
            Self::Validate(validate::ValidateError::ImageNotAllowed { .. }) => "ImageNotAllowed",
            Self::Validate(validate::ValidateError::ReadApiNotEnabled) => "ReadApiNotEnabled",
            Self::Validate(_) => "InvalidSpec",
            Self::Build(_) => "BuildFailed",
            Self::Apply(apply::ApplyError::NotOwned { .. }) => "ObjectNotOwned",
            Self::Apply(_) => "ApplyFailed",
            Self::Status(_) => "StatusFailed",
            Self::Topics(_) => status::TOPIC_ADMIN_FAILED,
        };
        // Someone must remove or rename the other object; it may go without any change to
        // the Pipeline, so the round is still retried.
        let not_owned = matches!(self, Self::Apply(apply::ApplyError::NotOwned { .. }));
        Problem {
            reason: reason.to_owned(),
            message: self.to_string(),
            user_error: not_owned || self.recovery() == Recovery::AwaitChange,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_invalid_spec_is_the_users_error() {
        let build = Error::Build(build::BuildError::RenderConfig {
            stage: "receiver".into(),
            source: serde_yaml::from_str::<i32>("[").unwrap_err(),
        });
        assert_eq!(build.recovery(), Recovery::Retry);
        assert!(!build.problem().user_error);

        let invalid = Error::Validate(validate::ValidateError::ReservedProcessorName {
            name: "receiver".into(),
        });
        assert_eq!(invalid.recovery(), Recovery::AwaitChange);
        assert!(invalid.problem().user_error);

        let strimzi = Error::Dereference(DereferenceError::StrimziNotReady {
            reason: "StrimziKafkaNotFound",
            message: "missing".into(),
        });
        assert_eq!(strimzi.recovery(), Recovery::WaitForStrimzi);
        assert_eq!(strimzi.problem().reason, "StrimziKafkaNotFound");
        assert!(!strimzi.problem().user_error);
    }
}
