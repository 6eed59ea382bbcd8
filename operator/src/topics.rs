//! Kafka topics through the admin API: which exist (and their partition counts), creating
//! one, deleting one. The controller's `topics` stage uses it for the topics between chained
//! stages on clusters without Strimzi.
//!
//! Behind a trait, [`TopicAdmin`], so the reconcile's unit tests run against an in-process
//! fake; [`KafkaTopicAdmin`] is the real one, with one librdkafka admin client per cluster.
//! Every call blocks (librdkafka), so callers run them in `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::lag::ClusterConfig;

/// How long one admin request may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("cannot create a Kafka admin client for {bootstrap}: {message}")]
    CreateClient { bootstrap: String, message: String },
    #[error("cannot read the metadata of topic {topic} from {bootstrap}: {message}")]
    FetchMetadata {
        bootstrap: String,
        topic: String,
        message: String,
    },
    #[error("cannot create topic {topic} on {bootstrap}: {message}")]
    CreateTopic {
        bootstrap: String,
        topic: String,
        message: String,
    },
    #[error("cannot delete topic {topic} on {bootstrap}: {message}")]
    DeleteTopic {
        bootstrap: String,
        topic: String,
        message: String,
    },
    #[error("the topic admin call for {bootstrap} stopped: {message}")]
    Task { bootstrap: String, message: String },
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopicSpec {
    pub name: String,
    pub partitions: i32,
    /// `None`: the cluster's `default.replication.factor`.
    pub replicas: Option<i32>,
    pub config: BTreeMap<String, String>,
}

/// What a create call found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    Created,
    /// Someone else made it first (or an earlier round whose answer was lost): not Ferry's
    /// to record or delete.
    AlreadyExists,
}

/// The admin calls the `topics` stage needs. Blocking.
pub trait TopicAdmin: Send + Sync + std::fmt::Debug {
    /// The partition count of each of `topics` that exists; a topic missing from the map
    /// does not exist (or has no leader yet).
    fn partitions(
        &self,
        cluster: &ClusterConfig,
        topics: &[String],
    ) -> Result<BTreeMap<String, i32>, TopicError>;

    fn create(&self, cluster: &ClusterConfig, topic: &NewTopicSpec)
    -> Result<Creation, TopicError>;

    /// Deletes `topic`; `false` when it did not exist.
    fn delete(&self, cluster: &ClusterConfig, topic: &str) -> Result<bool, TopicError>;
}

/// Runs a blocking admin call off the async runtime.
pub async fn blocking<T, F>(bootstrap: &str, call: F) -> Result<T, TopicError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, TopicError> + Send + 'static,
{
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or_else(|err| {
            Err(TopicError::Task {
                bootstrap: bootstrap.to_owned(),
                message: err.to_string(),
            })
        })
}

/// The real admin API, one client per cluster, kept for the operator's life (a handful of
/// clusters at most; each client holds a connection per broker).
#[derive(Default)]
pub struct KafkaTopicAdmin {
    clients: Mutex<HashMap<ClusterConfig, Arc<AdminClient<DefaultClientContext>>>>,
}

impl std::fmt::Debug for KafkaTopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("KafkaTopicAdmin")
            .field("clusters", &clients.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn describe(error: &KafkaError) -> String {
    error.to_string()
}

impl KafkaTopicAdmin {
    fn client(
        &self,
        cluster: &ClusterConfig,
    ) -> Result<Arc<AdminClient<DefaultClientContext>>, TopicError> {
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = clients.get(cluster) {
            return Ok(client.clone());
        }
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &cluster.bootstrap_servers)
            .set("client.id", "ferry-operator-topics")
            .set("allow.auto.create.topics", "false");
        for (key, value) in &cluster.properties {
            config.set(key, value);
        }
        let client: AdminClient<DefaultClientContext> =
            config.create().map_err(|err| TopicError::CreateClient {
                bootstrap: cluster.bootstrap_servers.clone(),
                message: describe(&err),
            })?;
        let client = Arc::new(client);
        clients.insert(cluster.clone(), client.clone());
        Ok(client)
    }
}

impl TopicAdmin for KafkaTopicAdmin {
    fn partitions(
        &self,
        cluster: &ClusterConfig,
        topics: &[String],
    ) -> Result<BTreeMap<String, i32>, TopicError> {
        let client = self.client(cluster)?;
        let mut found = BTreeMap::new();
        // One request per topic: asking for all topics would read the whole cluster's.
        for topic in topics {
            let metadata = client
                .inner()
                .fetch_metadata(Some(topic), ADMIN_TIMEOUT)
                .map_err(|err| TopicError::FetchMetadata {
                    bootstrap: cluster.bootstrap_servers.clone(),
                    topic: topic.clone(),
                    message: describe(&err),
                })?;
            let partitions = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if partitions > 0 {
                found.insert(topic.clone(), i32::try_from(partitions).unwrap_or(i32::MAX));
            }
        }
        Ok(found)
    }

    fn create(
        &self,
        cluster: &ClusterConfig,
        topic: &NewTopicSpec,
    ) -> Result<Creation, TopicError> {
        let client = self.client(cluster)?;
        let error = |message: String| TopicError::CreateTopic {
            bootstrap: cluster.bootstrap_servers.clone(),
            topic: topic.name.clone(),
            message,
        };
        // -1 asks the broker for its default.replication.factor (KIP-464, Kafka 2.4).
        let mut new = NewTopic::new(
            &topic.name,
            topic.partitions,
            TopicReplication::Fixed(topic.replicas.unwrap_or(-1)),
        );
        for (key, value) in &topic.config {
            new = new.set(key, value);
        }
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = futures::executor::block_on(client.create_topics([&new], &options))
            .map_err(|err| error(describe(&err)))?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(Creation::Created),
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(Creation::AlreadyExists),
            Some(Err((_, code))) => Err(error(code.to_string())),
            None => Err(error("the broker answered nothing".to_owned())),
        }
    }

    fn delete(&self, cluster: &ClusterConfig, topic: &str) -> Result<bool, TopicError> {
        let client = self.client(cluster)?;
        let error = |message: String| TopicError::DeleteTopic {
            bootstrap: cluster.bootstrap_servers.clone(),
            topic: topic.to_owned(),
            message,
        };
        let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let results = futures::executor::block_on(client.delete_topics(&[topic], &options))
            .map_err(|err| error(describe(&err)))?;
        match results.into_iter().next() {
            Some(Ok(_)) => Ok(true),
            Some(Err((_, RDKafkaErrorCode::UnknownTopicOrPartition))) => Ok(false),
            Some(Err((_, code))) => Err(error(code.to_string())),
            None => Err(error("the broker answered nothing".to_owned())),
        }
    }
}
