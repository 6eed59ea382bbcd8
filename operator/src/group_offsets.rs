//! Committed offsets and member assignments of many consumer groups in a few requests per
//! broker, over Kafka's wire protocol: the admin calls rdkafka 0.39 does not expose.
//!
//! Per poll: one `FindCoordinator` (v4 takes every group at once), then per coordinator one
//! `OffsetFetch` (v8 takes every group at once) and one `DescribeGroups`. One connection is
//! kept per broker, whatever the number of groups. A broker older than Kafka 3.0 lacks the
//! batched versions: [`WireError::Unsupported`] tells the caller to fall back to one rdkafka
//! client per group.
//!
//! Plaintext only: the lag reader uses this client for clusters without TLS or SASL.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, DescribeGroupsRequest, FindCoordinatorRequest, GroupId,
    OffsetFetchRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

const CLIENT_ID: &str = "ferry-operator-lag";
const FIND_COORDINATOR_VERSION: i16 = 4;
const OFFSET_FETCH_VERSION: i16 = 8;
const DESCRIBE_GROUPS_VERSION: i16 = 5;
/// The largest response accepted: a guard against a garbled length prefix.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("broker {broker} supports {api:?} up to v{max}; batching needs v{needed} (Kafka 3.0+)")]
    Unsupported {
        broker: String,
        api: ApiKey,
        needed: i16,
        max: i16,
    },
    #[error("no bootstrap broker of {bootstrap} answered: {message}")]
    NoBroker { bootstrap: String, message: String },
    #[error("broker {broker}: {source}")]
    Io {
        broker: String,
        source: std::io::Error,
    },
    #[error("broker {broker}: {message}")]
    Protocol { broker: String, message: String },
}

/// One group's offsets to read on one topic.
#[derive(Debug, Clone, Copy)]
pub struct GroupQuery<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partitions: &'a [i32],
}

/// What the coordinator said of one group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupReport {
    /// topic → partition → committed offset, `None` where the group never committed.
    pub committed: BTreeMap<String, BTreeMap<i32, Option<i64>>>,
    /// `Stable`, `Empty`, `PreparingRebalance`…; `None` if the description failed.
    pub state: Option<String>,
    /// Each member's assignment, as the classic consumer protocol encodes it.
    pub assignments: Vec<Bytes>,
}

struct Connection {
    stream: TcpStream,
    correlation_id: i32,
}

/// A blocking client for group offsets, for use inside `spawn_blocking`.
pub struct GroupOffsetsClient {
    bootstrap: String,
    timeout: Duration,
    connections: HashMap<String, Connection>,
    checked_versions: bool,
    opened: u64,
    requests: u64,
}

impl std::fmt::Debug for GroupOffsetsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupOffsetsClient")
            .field("bootstrap", &self.bootstrap)
            .field("connections", &self.connections.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl GroupOffsetsClient {
    pub fn new(bootstrap_servers: &str, timeout: Duration) -> Self {
        Self {
            bootstrap: bootstrap_servers.to_owned(),
            timeout,
            connections: HashMap::new(),
            checked_versions: false,
            opened: 0,
            requests: 0,
        }
    }

    /// Connections opened so far, reconnects included: for tests and the benchmark.
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// Requests sent so far.
    pub fn requests_sent(&self) -> u64 {
        self.requests
    }

    /// Committed offsets and descriptions of every queried group, by group. The outer error
    /// fails the whole batch (no broker, too old); an inner one fails only that group.
    pub fn fetch(
        &mut self,
        queries: &[GroupQuery<'_>],
    ) -> Result<HashMap<String, Result<GroupReport, String>>, WireError> {
        let mut wanted: BTreeMap<&str, BTreeMap<&str, &[i32]>> = BTreeMap::new();
        for query in queries {
            wanted
                .entry(query.group)
                .or_default()
                .insert(query.topic, query.partitions);
        }
        let mut results = HashMap::new();
        if wanted.is_empty() {
            return Ok(results);
        }
        let bootstrap = self.bootstrap_broker()?;
        if !self.checked_versions {
            self.check_versions(&bootstrap)?;
            self.checked_versions = true;
        }

        let mut find = FindCoordinatorRequest::default();
        find.key_type = 0;
        find.coordinator_keys = wanted
            .keys()
            .map(|g| StrBytes::from_string((*g).to_owned()))
            .collect();
        let found = self.call(&bootstrap, FIND_COORDINATOR_VERSION, &find)?;
        let mut by_coordinator: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        for coordinator in &found.coordinators {
            let group = coordinator.key.as_str();
            let Some((group, _)) = wanted.get_key_value(group) else {
                continue;
            };
            match coordinator.error_code.err() {
                None => by_coordinator
                    .entry(format!(
                        "{}:{}",
                        coordinator.host.as_str(),
                        coordinator.port
                    ))
                    .or_default()
                    .push(group),
                Some(error) => {
                    results.insert(
                        (*group).to_owned(),
                        Err(format!("no coordinator: {error:?}")),
                    );
                }
            }
        }

        for (broker, groups) in by_coordinator {
            let mut reports: BTreeMap<&str, GroupReport> = BTreeMap::new();
            match self.fetch_from_coordinator(&broker, &groups, &wanted, &mut reports) {
                Ok(()) => {
                    for group in &groups {
                        let report = reports.remove(group).unwrap_or_default();
                        results.insert((*group).to_owned(), Ok(report));
                    }
                }
                Err(error) => {
                    self.connections.remove(&broker);
                    for group in &groups {
                        results.insert((*group).to_owned(), Err(error.to_string()));
                    }
                }
            }
        }
        for group in wanted.keys() {
            results
                .entry((*group).to_owned())
                .or_insert_with(|| Err("the broker named no coordinator".to_owned()));
        }
        Ok(results)
    }

    /// One OffsetFetch and one DescribeGroups for the coordinator's groups.
    fn fetch_from_coordinator<'a>(
        &mut self,
        broker: &str,
        groups: &[&'a str],
        wanted: &BTreeMap<&str, BTreeMap<&str, &[i32]>>,
        reports: &mut BTreeMap<&'a str, GroupReport>,
    ) -> Result<(), WireError> {
        let mut fetch = OffsetFetchRequest::default();
        fetch.groups = groups
            .iter()
            .map(|group| {
                let mut request = OffsetFetchRequestGroup::default();
                request.group_id = GroupId(StrBytes::from_string((*group).to_owned()));
                request.topics = Some(
                    wanted
                        .get(group)
                        .into_iter()
                        .flatten()
                        .map(|(topic, partitions)| {
                            let mut topics = OffsetFetchRequestTopics::default();
                            topics.name = TopicName(StrBytes::from_string((*topic).to_owned()));
                            topics.partition_indexes = partitions.to_vec();
                            topics
                        })
                        .collect(),
                );
                request
            })
            .collect();
        let fetched = self.call(broker, OFFSET_FETCH_VERSION, &fetch)?;
        // Answers name their group; a set finds it without a scan per answer.
        let asked: BTreeSet<&'a str> = groups.iter().copied().collect();
        for answer in fetched.groups {
            let Some(group) = asked.get(answer.group_id.0.as_str()).copied() else {
                continue;
            };
            if let Some(error) = answer.error_code.err() {
                return Err(WireError::Protocol {
                    broker: broker.to_owned(),
                    message: format!("OffsetFetch for group {group}: {error:?}"),
                });
            }
            let report = reports.entry(group).or_default();
            for topic in answer.topics {
                let partitions = report
                    .committed
                    .entry(topic.name.0.to_string())
                    .or_default();
                for partition in topic.partitions {
                    if let Some(error) = partition.error_code.err() {
                        return Err(WireError::Protocol {
                            broker: broker.to_owned(),
                            message: format!(
                                "OffsetFetch for group {group}, partition {}: {error:?}",
                                partition.partition_index
                            ),
                        });
                    }
                    let committed =
                        (partition.committed_offset >= 0).then_some(partition.committed_offset);
                    partitions.insert(partition.partition_index, committed);
                }
            }
        }

        let mut describe = DescribeGroupsRequest::default();
        describe.groups = groups
            .iter()
            .map(|g| GroupId(StrBytes::from_string((*g).to_owned())))
            .collect();
        let described = self.call(broker, DESCRIBE_GROUPS_VERSION, &describe)?;
        for answer in described.groups {
            let Some(group) = asked.get(answer.group_id.0.as_str()).copied() else {
                continue;
            };
            // A group that cannot be described counts as having no live consumer.
            if answer.error_code.is_err() {
                continue;
            }
            let report = reports.entry(group).or_default();
            report.state = Some(answer.group_state.to_string());
            report.assignments = answer
                .members
                .into_iter()
                .map(|member| member.member_assignment)
                .collect();
        }
        Ok(())
    }

    /// The first bootstrap address that accepts a connection.
    fn bootstrap_broker(&mut self) -> Result<String, WireError> {
        let mut last_error = String::from("empty bootstrap list");
        let addresses: Vec<String> = self
            .bootstrap
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        for address in addresses {
            if self.connections.contains_key(&address) {
                return Ok(address);
            }
            match self.connect(&address) {
                Ok(()) => return Ok(address),
                Err(error) => last_error = error.to_string(),
            }
        }
        Err(WireError::NoBroker {
            bootstrap: self.bootstrap.clone(),
            message: last_error,
        })
    }

    fn check_versions(&mut self, broker: &str) -> Result<(), WireError> {
        let versions = self.call(broker, 0, &ApiVersionsRequest::default())?;
        for (api, needed) in [
            (ApiKey::FindCoordinator, FIND_COORDINATOR_VERSION),
            (ApiKey::OffsetFetch, OFFSET_FETCH_VERSION),
            (ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSION),
        ] {
            let range = versions
                .api_keys
                .iter()
                .find(|v| v.api_key == api as i16)
                .map(|v| (v.min_version, v.max_version));
            match range {
                Some((min, max)) if min <= needed && needed <= max => {}
                other => {
                    return Err(WireError::Unsupported {
                        broker: broker.to_owned(),
                        api,
                        needed,
                        max: other.map_or(-1, |(_, max)| max),
                    });
                }
            }
        }
        Ok(())
    }

    fn connect(&mut self, broker: &str) -> Result<(), WireError> {
        let io = |source| WireError::Io {
            broker: broker.to_owned(),
            source,
        };
        let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address resolved");
        for address in broker.to_socket_addrs().map_err(io)? {
            match TcpStream::connect_timeout(&address, self.timeout) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
                    stream.set_write_timeout(Some(self.timeout)).map_err(io)?;
                    stream.set_nodelay(true).map_err(io)?;
                    self.opened += 1;
                    self.connections.insert(
                        broker.to_owned(),
                        Connection {
                            stream,
                            correlation_id: 0,
                        },
                    );
                    return Ok(());
                }
                Err(error) => last = error,
            }
        }
        Err(io(last))
    }

    /// One request and its response on the broker's connection (made if needed); any
    /// failure drops the connection, so the next call starts clean.
    fn call<R: Request>(
        &mut self,
        broker: &str,
        version: i16,
        request: &R,
    ) -> Result<R::Response, WireError> {
        if !self.connections.contains_key(broker) {
            self.connect(broker)?;
        }
        self.requests += 1;
        let result = self.exchange(broker, version, request);
        if result.is_err() {
            self.connections.remove(broker);
        }
        result
    }

    fn exchange<R: Request>(
        &mut self,
        broker: &str,
        version: i16,
        request: &R,
    ) -> Result<R::Response, WireError> {
        let protocol = |message: String| WireError::Protocol {
            broker: broker.to_owned(),
            message,
        };
        let io = |source| WireError::Io {
            broker: broker.to_owned(),
            source,
        };
        let Some(connection) = self.connections.get_mut(broker) else {
            return Err(protocol("not connected".to_owned()));
        };
        connection.correlation_id = connection.correlation_id.wrapping_add(1);
        let correlation_id = connection.correlation_id;
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));

        let mut frame = BytesMut::new();
        frame.put_i32(0);
        header
            .encode(&mut frame, R::header_version(version))
            .map_err(|e| protocol(format!("cannot encode the request header: {e}")))?;
        request
            .encode(&mut frame, version)
            .map_err(|e| protocol(format!("cannot encode the request: {e}")))?;
        let length =
            i32::try_from(frame.len() - 4).map_err(|_| protocol("request too large".to_owned()))?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        connection.stream.write_all(&frame).map_err(io)?;

        let mut length = [0_u8; 4];
        connection.stream.read_exact(&mut length).map_err(io)?;
        let length = usize::try_from(i32::from_be_bytes(length))
            .ok()
            .filter(|l| *l <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| protocol("bad response length".to_owned()))?;
        let mut body = vec![0_u8; length];
        connection.stream.read_exact(&mut body).map_err(io)?;
        let mut body = Bytes::from(body);
        let response_header =
            ResponseHeader::decode(&mut body, R::Response::header_version(version))
                .map_err(|e| protocol(format!("cannot decode the response header: {e}")))?;
        if response_header.correlation_id != correlation_id {
            return Err(protocol(format!(
                "response {} answers request {correlation_id}",
                response_header.correlation_id
            )));
        }
        R::Response::decode(&mut body, version)
            .map_err(|e| protocol(format!("cannot decode the {:?} response: {e}", R::KEY)))
    }
}

#[cfg(test)]
mod tests {
    //! Against a fake broker on a loopback socket that decodes each request with
    //! kafka-protocol and answers from a script: what the client sends and how it reads
    //! the answers, with no Kafka running.

    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::describe_groups_response::{
        DescribedGroup, DescribedGroupMember,
    };
    use kafka_protocol::messages::find_coordinator_response::Coordinator;
    use kafka_protocol::messages::offset_fetch_response::{
        OffsetFetchResponseGroup, OffsetFetchResponsePartitions, OffsetFetchResponseTopics,
    };
    use kafka_protocol::messages::{
        ApiVersionsResponse, BrokerId, DescribeGroupsResponse, FindCoordinatorResponse,
        OffsetFetchResponse, ResponseHeader,
    };
    use kafka_protocol::protocol::Encodable;

    use super::*;

    /// What the fake broker saw: (API, version, groups asked about).
    type Seen = Arc<Mutex<Vec<(ApiKey, i16, Vec<String>)>>>;

    struct FakeBroker {
        address: String,
        seen: Seen,
    }

    /// A broker that serves `offset_fetch_max` as OffsetFetch's newest version, names
    /// itself the coordinator of every group but `lost`, and holds offset 42 on partition
    /// 0 and no commit on partition 1.
    fn fake_broker(offset_fetch_max: i16) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let port = i32::from(listener.local_addr().unwrap().port());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                while let Some((key, version, header, request)) = read_request(&mut stream) {
                    let (groups, body) = answer(key, version, request, port, offset_fetch_max);
                    log.lock().unwrap().push((key, version, groups));
                    let mut frame = BytesMut::new();
                    frame.put_i32(0);
                    let mut response_header = ResponseHeader::default();
                    response_header.correlation_id = header.correlation_id;
                    response_header
                        .encode(&mut frame, key.response_header_version(version))
                        .unwrap();
                    frame.extend_from_slice(&body);
                    let length = i32::try_from(frame.len() - 4).unwrap();
                    frame[..4].copy_from_slice(&length.to_be_bytes());
                    stream.write_all(&frame).unwrap();
                }
            }
        });
        FakeBroker { address, seen }
    }

    fn read_request(stream: &mut TcpStream) -> Option<(ApiKey, i16, RequestHeader, Bytes)> {
        let mut length = [0_u8; 4];
        stream.read_exact(&mut length).ok()?;
        let mut body = vec![0_u8; usize::try_from(i32::from_be_bytes(length)).ok()?];
        stream.read_exact(&mut body).ok()?;
        let mut body = Bytes::from(body);
        let key = ApiKey::try_from(i16::from_be_bytes([body[0], body[1]])).ok()?;
        let version = i16::from_be_bytes([body[2], body[3]]);
        let header = RequestHeader::decode(&mut body, key.request_header_version(version)).ok()?;
        Some((key, version, header, body))
    }

    fn encode<M: Encodable>(message: &M, version: i16) -> BytesMut {
        let mut body = BytesMut::new();
        message.encode(&mut body, version).unwrap();
        body
    }

    fn answer(
        key: ApiKey,
        version: i16,
        mut request: Bytes,
        port: i32,
        offset_fetch_max: i16,
    ) -> (Vec<String>, BytesMut) {
        match key {
            ApiKey::ApiVersions => {
                let mut response = ApiVersionsResponse::default();
                response.api_keys = [
                    (ApiKey::FindCoordinator, 4),
                    (ApiKey::OffsetFetch, offset_fetch_max),
                    (ApiKey::DescribeGroups, 5),
                ]
                .into_iter()
                .map(|(api, max)| {
                    let mut range = ApiVersion::default();
                    range.api_key = api as i16;
                    range.max_version = max;
                    range
                })
                .collect();
                (Vec::new(), encode(&response, version))
            }
            ApiKey::FindCoordinator => {
                let asked = FindCoordinatorRequest::decode(&mut request, version).unwrap();
                let groups: Vec<String> = asked
                    .coordinator_keys
                    .iter()
                    .map(|k| k.to_string())
                    .collect();
                let mut response = FindCoordinatorResponse::default();
                response.coordinators = groups
                    .iter()
                    .map(|group| {
                        let mut coordinator = Coordinator::default();
                        coordinator.key = StrBytes::from_string(group.clone());
                        if group == "lost" {
                            coordinator.error_code = 15; // COORDINATOR_NOT_AVAILABLE
                        } else {
                            coordinator.node_id = BrokerId(1);
                            coordinator.host = StrBytes::from_static_str("127.0.0.1");
                            coordinator.port = port;
                        }
                        coordinator
                    })
                    .collect();
                (groups, encode(&response, version))
            }
            ApiKey::OffsetFetch => {
                let asked = OffsetFetchRequest::decode(&mut request, version).unwrap();
                let mut response = OffsetFetchResponse::default();
                let mut groups = Vec::new();
                for group in asked.groups {
                    groups.push(group.group_id.0.to_string());
                    let mut answer = OffsetFetchResponseGroup::default();
                    answer.group_id = group.group_id;
                    answer.topics = group
                        .topics
                        .unwrap_or_default()
                        .into_iter()
                        .map(|topic| {
                            let mut answer = OffsetFetchResponseTopics::default();
                            answer.name = topic.name;
                            answer.partitions = topic
                                .partition_indexes
                                .into_iter()
                                .map(|partition| {
                                    let mut offsets = OffsetFetchResponsePartitions::default();
                                    offsets.partition_index = partition;
                                    offsets.committed_offset = if partition == 0 { 42 } else { -1 };
                                    offsets
                                })
                                .collect();
                            answer
                        })
                        .collect();
                    response.groups.push(answer);
                }
                (groups, encode(&response, version))
            }
            ApiKey::DescribeGroups => {
                let asked = DescribeGroupsRequest::decode(&mut request, version).unwrap();
                let mut response = DescribeGroupsResponse::default();
                let mut groups = Vec::new();
                for group in asked.groups {
                    groups.push(group.0.to_string());
                    let mut described = DescribedGroup::default();
                    described.group_id = group;
                    described.group_state = StrBytes::from_static_str("Stable");
                    let mut member = DescribedGroupMember::default();
                    member.member_assignment = Bytes::from_static(b"assignment");
                    described.members = vec![member];
                    response.groups.push(described);
                }
                (groups, encode(&response, version))
            }
            other => panic!("the fake broker does not serve {other:?}"),
        }
    }

    fn query<'a>(group: &'a str, partitions: &'a [i32]) -> GroupQuery<'a> {
        GroupQuery {
            group,
            topic: "orders",
            partitions,
        }
    }

    #[test]
    fn many_groups_cost_four_requests_over_one_connection() {
        let broker = fake_broker(8);
        let mut client = GroupOffsetsClient::new(&broker.address, Duration::from_secs(5));
        let partitions = [0, 1];
        let reports = client
            .fetch(&[query("a", &partitions), query("b", &partitions)])
            .unwrap();

        for group in ["a", "b"] {
            let report = reports[group].as_ref().unwrap();
            assert_eq!(
                report.committed["orders"],
                BTreeMap::from([(0, Some(42)), (1, None)]),
                "a negative committed offset means none"
            );
            assert_eq!(report.state.as_deref(), Some("Stable"));
            assert_eq!(report.assignments, [Bytes::from_static(b"assignment")]);
        }
        let both = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(
            *broker.seen.lock().unwrap(),
            [
                (ApiKey::ApiVersions, 0, Vec::new()),
                (
                    ApiKey::FindCoordinator,
                    FIND_COORDINATOR_VERSION,
                    both.clone()
                ),
                (ApiKey::OffsetFetch, OFFSET_FETCH_VERSION, both.clone()),
                (ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSION, both),
            ]
        );
        assert_eq!(
            client.connections_opened(),
            1,
            "the coordinator is the bootstrap"
        );
        assert_eq!(client.requests_sent(), 4);

        // Versions are checked once per client.
        client.fetch(&[query("a", &partitions)]).unwrap();
        assert_eq!(client.requests_sent(), 7);
        assert_eq!(client.connections_opened(), 1);
    }

    #[test]
    fn a_group_without_a_coordinator_fails_alone() {
        let broker = fake_broker(8);
        let mut client = GroupOffsetsClient::new(&broker.address, Duration::from_secs(5));
        let reports = client
            .fetch(&[query("a", &[0]), query("lost", &[0])])
            .unwrap();
        assert!(reports["a"].is_ok());
        let error = reports["lost"].as_ref().unwrap_err();
        assert!(error.contains("no coordinator"), "{error}");
        // Only `a` went on to its coordinator.
        let seen = broker.seen.lock().unwrap();
        assert_eq!(seen[2], (ApiKey::OffsetFetch, 8, vec!["a".to_owned()]));
    }

    #[test]
    fn a_broker_without_batched_offset_fetch_is_unsupported() {
        let broker = fake_broker(7);
        let mut client = GroupOffsetsClient::new(&broker.address, Duration::from_secs(5));
        let error = client.fetch(&[query("a", &[0])]).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::Unsupported {
                    api: ApiKey::OffsetFetch,
                    needed: 8,
                    max: 7,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn no_bootstrap_broker_and_no_query() {
        // A port nobody listens on any more.
        let address = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut client = GroupOffsetsClient::new(&address, Duration::from_secs(1));
        assert!(
            client.fetch(&[]).unwrap().is_empty(),
            "nothing asked, nothing sent"
        );
        assert_eq!(client.connections_opened(), 0);
        let error = client.fetch(&[query("a", &[0])]).unwrap_err();
        assert!(matches!(error, WireError::NoBroker { .. }), "{error}");
    }
}
