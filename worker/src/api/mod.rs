//! `ferry-api`: the read API over one Pipeline's data (docs/read-api.md).
//!
//! Stateless and read-only: every request reads Redis, nothing is cached or written, so
//! any number of replicas may serve one Pipeline. It reads what the receiver and the
//! processors write (keys in `crate::sink` and `crate::process`), decoding stored values
//! per the Pipeline's `format` and `storage.encoding` ([`decode::ValueCodec`]).
//!
//! The routes, all `GET`, JSON bodies (the OpenAPI document, `openapi.json` beside this
//! file, is served at `/openapi.json`):
//! - `/v1/sources?cursor=&limit=`: the source ids, paginated by `SCAN` under an opaque cursor;
//! - `/v1/sources/{id}/history?limit=&since=`: one source's records, newest first;
//! - `/v1/slices?source=…&source=…&start=&stop=`: several sources, each sliced by history
//!   index as `LRANGE` does;
//! - `/v1/sources/{id}/stats`: the stats and validate processors' figures of one source;
//! - `/v1/totals`: the validate totals and the dead-letter counts of every stage;
//! - `/v1/events`: the batch events, as server-sent events;
//! - `/v1/pipeline`: the Pipeline's stages and conditions, from its status on Kubernetes;
//! - `/`: the dashboard ([`dashboard`]), a page over the routes above.
//!
//! With `--token-file`, every route but `/healthz` and the page's files needs
//! `Authorization: Bearer <token>` ([`auth`]).
//!
//! Errors are `{"error": {"code", "message", "parameter"?}}` with a stable `code`.

mod auth;
pub mod dashboard;
pub mod decode;
pub mod pipeline_status;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use futures::{Stream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;

use crate::config::{StageConfig, StorageKind, WorkerConfig, dead_letters_key};
use crate::consume::Shutdown;
use crate::process::ProcessorKeys;
use crate::process::validate::TOTAL_COUNTERS;
use crate::sink::{self, SinkError, StorageLayout};
use decode::{
    BadParameter, Records, StoredRecord, ValueCodec, integer, only_known, query_pairs, single,
};

/// The OpenAPI document, kept in the repo beside this file and served as is.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The most records one history or slice returns per source.
pub const MAX_RECORDS: i64 = 10_000;
/// The most sources one page of `/v1/sources` asks `SCAN` for.
pub const MAX_PAGE: i64 = 1_000;
/// The most sources one `/v1/slices` call reads.
pub const MAX_SLICE_SOURCES: usize = 100;
/// `SCAN` calls one page makes at most; past them the page is returned short (even
/// empty) with a cursor, so a keyspace of mostly other keys cannot hold a request long.
const MAX_SCANS_PER_PAGE: usize = 64;
/// Records read per round trip when `since` filters a list or a stream.
const FILTER_CHUNK: usize = 500;

/// What `ferry-api` needs beyond the receiver's config: where to listen, and the processors
/// whose keys it reads.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub stats: Vec<String>,
    pub validate: Vec<String>,
    /// Processors whose only keys the API reads are their dead-letter counts.
    pub other_processors: Vec<String>,
    pub redis_timeout: Duration,
    /// Multiplexed Redis connections requests are spread over: one connection's replies
    /// are parsed by one task, so more of them use more cores.
    pub redis_connections: usize,
    /// The bearer token every data route asks for; `None` asks for none.
    pub token: Option<String>,
    /// `<namespace>/<name>` of the Pipeline whose status `/v1/pipeline` serves.
    pub pipeline_object: Option<String>,
}

/// A failure of `ferry-api` itself (not of one request).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("`ferry-api` reads a receiver's config, found a processor stage")]
    NotAReceiver,
    #[error(transparent)]
    Redis(#[from] SinkError),
    #[error("cannot connect to Redis: {0}")]
    Connect(redis::RedisError),
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        listen: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(transparent)]
    PipelineStatus(#[from] pipeline_status::PipelineStatusError),
}

/// A failed request, as JSON with a stable code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    BadParameter(#[from] BadParameter),
    #[error("no source {id:?} in this Pipeline")]
    UnknownSource { id: String },
    #[error("key {key} holds another Redis type than the Pipeline's storage")]
    WrongType { key: String },
    #[error("Redis {operation} failed: {source}")]
    Redis {
        operation: &'static str,
        source: redis::RedisError,
    },
    #[error("no such endpoint; see /openapi.json")]
    NotFound,
    #[error(transparent)]
    PipelineStatus(#[from] pipeline_status::PipelineStatusError),
}

impl ApiError {
    /// The stable code clients branch on.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::BadParameter(_) => "bad_parameter",
            Self::UnknownSource { .. } => "unknown_source",
            Self::WrongType { .. } => "wrong_type",
            Self::Redis { .. } => "redis_unavailable",
            Self::NotFound => "not_found",
            Self::PipelineStatus(pipeline_status::PipelineStatusError::NotConfigured) => {
                "pipeline_not_configured"
            }
            Self::PipelineStatus(_) => "pipeline_unavailable",
        }
    }

    const fn status(&self) -> StatusCode {
        match self {
            Self::BadParameter(_) => StatusCode::BAD_REQUEST,
            Self::UnknownSource { .. } | Self::NotFound => StatusCode::NOT_FOUND,
            Self::WrongType { .. } => StatusCode::CONFLICT,
            Self::Redis { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::PipelineStatus(pipeline_status::PipelineStatusError::NotConfigured) => {
                StatusCode::NOT_FOUND
            }
            Self::PipelineStatus(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn redis(operation: &'static str, key: &str) -> impl FnOnce(redis::RedisError) -> Self {
        move |source| {
            if source.code() == Some("WRONGTYPE") {
                Self::WrongType {
                    key: key.to_owned(),
                }
            } else {
                Self::Redis { operation, source }
            }
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameter: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Redis { .. } | Self::PipelineStatus(_) = &self {
            tracing::warn!(error = %self, "request failed");
        }
        let parameter = match &self {
            Self::BadParameter(bad) => Some(bad.parameter.as_str()),
            _ => None,
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
                parameter,
            },
        };
        json(self.status(), &body)
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    json_sized(status, body, 128)
}

/// `body` as JSON into one buffer of about `capacity` bytes.
fn json_sized<T: Serialize>(status: StatusCode, body: &T, capacity: usize) -> Response {
    let mut bytes = Vec::with_capacity(capacity);
    // Plain structs of strings and numbers into a Vec: serializing cannot fail.
    let _ = serde_json::to_writer(&mut bytes, body);
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// What every request reads with: a few multiplexed connections (each reconnecting),
/// the key layout, and the processors' names.
struct Api {
    redis: Vec<ConnectionManager>,
    next_connection: AtomicUsize,
    client: redis::Client,
    pipeline: String,
    layout: StorageLayout,
    codec: ValueCodec,
    /// `{prefix}:{storage}:`: a data key is this and the source id.
    data_prefix: String,
    stats: Vec<(String, ProcessorKeys)>,
    validate: Vec<(String, ProcessorKeys)>,
    /// Every stage whose dead letters are counted: `receiver` and the processors.
    stages: Vec<String>,
    /// Ends the event streams, which would otherwise hold a graceful shutdown forever.
    shutdown: Shutdown,
    pipeline_status: Option<pipeline_status::PipelineReader>,
}

type Shared = State<Arc<Api>>;

impl Api {
    fn data_key(&self, source: &str) -> String {
        format!("{}{source}", self.data_prefix)
    }

    /// The connections in turn.
    fn conn(&self) -> ConnectionManager {
        let turn = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.redis[turn % self.redis.len()].clone()
    }
}

/// Serves the API until `shutdown`.
pub async fn run(
    config: WorkerConfig,
    options: ServeOptions,
    mut shutdown: Shutdown,
) -> Result<(), ServeError> {
    let StageConfig::Receiver(receiver) = &config.stage else {
        return Err(ServeError::NotAReceiver);
    };
    let client = sink::redis_client(&config.redis)?;
    let manager = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(options.redis_timeout));
    let redis = futures::future::try_join_all(
        (0..options.redis_connections.max(1))
            .map(|_| client.get_connection_manager_with_config(manager.clone())),
    )
    .await
    .map_err(ServeError::Connect)?;
    let layout = StorageLayout::new(&config.redis.key_prefix, &receiver.storage);
    let prefix = &config.redis.key_prefix;
    let named = |names: &[String]| {
        names
            .iter()
            .map(|name| (name.clone(), ProcessorKeys::new(prefix, name)))
            .collect::<Vec<_>>()
    };
    let stages = std::iter::once(crate::config::RECEIVER_STAGE.to_owned())
        .chain(options.stats.iter().cloned())
        .chain(options.validate.iter().cloned())
        .chain(options.other_processors.iter().cloned())
        .collect();
    let api = Api {
        redis,
        next_connection: AtomicUsize::new(0),
        client,
        pipeline: config.pipeline.clone(),
        data_prefix: format!("{prefix}:{}:", sink::storage_name(layout.kind)),
        codec: ValueCodec {
            format: config.format,
            encoding: receiver.storage.encoding,
        },
        layout,
        stats: named(&options.stats),
        validate: named(&options.validate),
        stages,
        shutdown: shutdown.clone(),
        pipeline_status: match &options.pipeline_object {
            Some(reference) => Some(pipeline_status::PipelineReader::connect(reference).await?),
            None => None,
        },
    };
    let token = auth::BearerToken(options.token.as_deref().map(Arc::from));
    let listener = listen(options.listen).map_err(|source| ServeError::Listen {
        listen: options.listen,
        source,
    })?;
    tracing::info!(listen = %options.listen, pipeline = %config.pipeline, "serving the read API");
    // Without Nagle: an answer written in two parts must not wait for the client's ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(Arc::new(api), token))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(ServeError::Serve)
}

/// The accept queue's length. tokio's `TcpListener::bind` listens with std's 128: 500
/// clients connecting at once overflowed it (`TcpExtListenOverflows`), and each connection
/// past it waited for the SYN's retransmission, a second, then sent its backlog of requests
/// at once. The kernel caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `address` with [`LISTEN_BACKLOG`] (`SO_REUSEADDR` set, as tokio's `bind` does).
pub fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

fn router(api: Arc<Api>, token: auth::BearerToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/sources", get(sources))
        .route("/v1/sources/{id}/history", get(history))
        .route("/v1/sources/{id}/stats", get(source_stats))
        .route("/v1/slices", get(slices))
        .route("/v1/totals", get(totals))
        .route("/v1/events", get(events))
        .route("/v1/pipeline", get(pipeline))
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
        .with_state(api)
}

/// The Pipeline's stages and conditions, as its status on Kubernetes has them.
async fn pipeline(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    only_known(&query_pairs(query.as_deref()), &[])?;
    let reader = api
        .pipeline_status
        .as_ref()
        .ok_or(pipeline_status::PipelineStatusError::NotConfigured)?;
    let view = reader.read().await?;
    Ok(json(StatusCode::OK, view.as_ref()))
}

#[derive(Serialize)]
struct SourcesPage {
    sources: Vec<String>,
    /// Null on the last page.
    next_cursor: Option<String>,
}

/// `SCAN` (never `KEYS`) over the storage's data keys, of the storage's Redis type.
async fn sources(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    only_known(&pairs, &["cursor", "limit", "match"])?;
    let limit = integer(&pairs, "limit", 100, 1, MAX_PAGE)?;
    let contains = single(&pairs, "match")?.filter(|text| !text.is_empty());
    let mut cursor = match single(&pairs, "cursor")? {
        Some(text) => decode::decode_cursor(text)?,
        None => 0,
    };
    let pattern = match contains {
        Some(text) => format!(
            "{}*{}*",
            decode::glob_escape(&api.data_prefix),
            decode::glob_escape(text)
        ),
        None => format!("{}*", decode::glob_escape(&api.data_prefix)),
    };
    // A search matches few keys: scan more of the keyspace per call to fill a page.
    let scan_count = if contains.is_some() { 1000 } else { 10 };
    let mut redis = api.conn();
    let mut found = Vec::new();
    for _ in 0..MAX_SCANS_PER_PAGE {
        let want = usize::try_from(limit)
            .unwrap_or(1)
            .saturating_sub(found.len());
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(want.max(scan_count))
            .arg("TYPE")
            .arg(sink::redis_type(api.layout.kind))
            .query_async(&mut redis)
            .await
            .map_err(ApiError::redis("scan", &pattern))?;
        found.extend(keys.iter().map(|key| {
            String::from_utf8_lossy(key.get(api.data_prefix.len()..).unwrap_or_default())
                .into_owned()
        }));
        cursor = next;
        if cursor == 0 || found.len() >= usize::try_from(limit).unwrap_or(1) {
            break;
        }
    }
    let body = SourcesPage {
        sources: found,
        next_cursor: (cursor != 0).then(|| decode::encode_cursor(cursor)),
    };
    Ok(json(StatusCode::OK, &body))
}

#[derive(Serialize)]
struct History<'a> {
    source: &'a str,
    storage: &'static str,
    encoding: &'static str,
    records: Records,
}

fn parse_since(pairs: &[(String, String)]) -> Result<Option<i64>, BadParameter> {
    single(pairs, "since")?
        .map(|text| {
            text.parse::<i64>().map_err(|_| {
                BadParameter::new(
                    "since",
                    format!("{text:?} is not a time in milliseconds since the epoch"),
                )
            })
        })
        .transpose()
}

async fn history(
    State(api): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    only_known(&pairs, &["limit", "since"])?;
    let limit = usize::try_from(integer(&pairs, "limit", 100, 1, MAX_RECORDS)?).unwrap_or(1);
    let since = parse_since(&pairs)?;
    let key = api.data_key(&id);
    let records = read_history(&api, &key, limit, since).await?;
    if records.is_empty() && !exists(&api, &key).await? {
        return Err(ApiError::UnknownSource { id });
    }
    let body = History {
        source: &id,
        storage: sink::storage_name(api.layout.kind),
        encoding: api.codec.encoding.as_str(),
        records: Records {
            codec: api.codec,
            records,
        },
    };
    let capacity = body.records.json_len_estimate() + id.len() + 64;
    Ok(json_sized(StatusCode::OK, &body, capacity))
}

async fn exists(api: &Api, key: &str) -> Result<bool, ApiError> {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut api.conn())
        .await
        .map(|n| n > 0)
        .map_err(ApiError::redis("exists", key))
}

/// A stream entry as `XRANGE` returns it: the id and the flat field-value list.
type StreamEntry = (String, Vec<Vec<u8>>);

fn parse_ts(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// A stream entry's `v` and `ts` fields, moved out of the reply.
fn stream_record((id, fields): StreamEntry) -> StoredRecord {
    let mut record = StoredRecord::default();
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name.as_slice() {
            b"v" if record.bytes.is_empty() => record.bytes = value,
            b"ts" if record.stored_ts.is_none() => record.stored_ts = parse_ts(&value),
            _ => {}
        }
    }
    record.id = Some(id);
    record
}

fn hash_record(mut fields: HashMap<String, Vec<u8>>) -> Option<StoredRecord> {
    let bytes = fields.remove("v")?;
    let stored_ts = fields.get("ts").and_then(|ts| parse_ts(ts));
    Some(StoredRecord {
        bytes,
        stored_ts,
        id: None,
    })
}

fn zset_record((bytes, score): (Vec<u8>, f64)) -> StoredRecord {
    StoredRecord {
        bytes,
        stored_ts: Some(score_ms(score)),
        id: None,
    }
}

fn list_record(bytes: Vec<u8>) -> StoredRecord {
    StoredRecord {
        bytes,
        stored_ts: None,
        id: None,
    }
}

/// A zset's score is the record's time in ms, exact in an f64 for any real date.
#[allow(clippy::cast_possible_truncation)]
fn score_ms(score: f64) -> i64 {
    score as i64
}

/// Newest first: a list's head, a stream's last entries, a zset's highest scores, a
/// hash's one record. `since` keeps records at or after it; lists and streams are read in
/// chunks until `limit` records pass (their order is by arrival, not by time).
async fn read_history(
    api: &Api,
    key: &str,
    limit: usize,
    since: Option<i64>,
) -> Result<Vec<StoredRecord>, ApiError> {
    let mut redis = api.conn();
    let codec = api.codec;
    let keep = |record: &StoredRecord| {
        since.is_none_or(|since| codec.timestamp(record).is_some_and(|ts| ts >= since))
    };
    let chunk = if since.is_some() {
        limit.max(FILTER_CHUNK)
    } else {
        limit
    };
    let mut records = Vec::with_capacity(limit.min(1024));
    match api.layout.kind {
        StorageKind::List => {
            let mut start = 0usize;
            loop {
                let values: Vec<Vec<u8>> = redis::cmd("LRANGE")
                    .arg(key)
                    .arg(start)
                    .arg(start + chunk - 1)
                    .query_async(&mut redis)
                    .await
                    .map_err(ApiError::redis("lrange", key))?;
                let got = values.len();
                records.extend(values.into_iter().map(list_record).filter(keep));
                if got < chunk || records.len() >= limit || since.is_none() {
                    break;
                }
                start += chunk;
            }
        }
        StorageKind::Stream => {
            let mut end = "+".to_owned();
            loop {
                let entries: Vec<StreamEntry> = redis::cmd("XREVRANGE")
                    .arg(key)
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(chunk)
                    .query_async(&mut redis)
                    .await
                    .map_err(ApiError::redis("xrevrange", key))?;
                let got = entries.len();
                let last = entries.last().map(|(id, _)| format!("({id}"));
                records.extend(entries.into_iter().map(stream_record).filter(keep));
                match last {
                    Some(last) if got == chunk && records.len() < limit && since.is_some() => {
                        end = last;
                    }
                    _ => break,
                }
            }
        }
        StorageKind::Hash => {
            let fields: HashMap<String, Vec<u8>> = redis::cmd("HGETALL")
                .arg(key)
                .query_async(&mut redis)
                .await
                .map_err(ApiError::redis("hgetall", key))?;
            records.extend(hash_record(fields).filter(keep));
        }
        StorageKind::Zset => {
            let min = since.map_or_else(|| "-inf".to_owned(), |since| since.to_string());
            let members: Vec<(Vec<u8>, f64)> = redis::cmd("ZREVRANGEBYSCORE")
                .arg(key)
                .arg("+inf")
                .arg(min)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .query_async(&mut redis)
                .await
                .map_err(ApiError::redis("zrevrangebyscore", key))?;
            records.extend(members.into_iter().map(zset_record));
        }
    }
    records.truncate(limit);
    Ok(records)
}

#[derive(Serialize)]
struct Slices {
    start: i64,
    stop: i64,
    storage: &'static str,
    encoding: &'static str,
    sources: Vec<Slice>,
}

#[derive(Serialize)]
struct Slice {
    source: String,
    /// Null for a source the Pipeline does not hold (`error` says `unknown_source`).
    records: Option<Records>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'static str>,
}

/// Each source's records `start..=stop` by history index (0 the newest, negatives from
/// the oldest), as `LRANGE` counts: two pipelined round trips for every source together,
/// the lengths, then the ranges.
async fn slices(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    let pairs = query_pairs(query.as_deref());
    only_known(&pairs, &["source", "start", "stop"])?;
    let ids: Vec<String> = pairs
        .iter()
        .filter(|(key, _)| key == "source")
        .map(|(_, value)| value.clone())
        .collect();
    if ids.is_empty() {
        return Err(BadParameter::new("source", "give at least one, as ?source=a&source=b").into());
    }
    if ids.len() > MAX_SLICE_SOURCES {
        return Err(BadParameter::new(
            "source",
            format!("{} given, at most {MAX_SLICE_SOURCES}", ids.len()),
        )
        .into());
    }
    let start = integer(&pairs, "start", 0, -MAX_RECORDS * 100, MAX_RECORDS * 100)?;
    let stop = integer(&pairs, "stop", 99, -MAX_RECORDS * 100, MAX_RECORDS * 100)?;
    let keys: Vec<String> = ids.iter().map(|id| api.data_key(id)).collect();
    let mut redis = api.conn();
    let kind = api.layout.kind;
    let mut lengths = redis::pipe();
    for key in &keys {
        let command = match kind {
            StorageKind::List => "LLEN",
            StorageKind::Stream => "XLEN",
            StorageKind::Hash => "HLEN",
            StorageKind::Zset => "ZCARD",
        };
        lengths.cmd(command).arg(key);
    }
    let lengths: Vec<usize> = lengths
        .query_async(&mut redis)
        .await
        .map_err(ApiError::redis("lengths", &keys[0]))?;
    let ranges: Vec<std::ops::Range<usize>> = lengths
        .iter()
        .map(|len| {
            let len = if kind == StorageKind::Hash {
                usize::from(*len > 0)
            } else {
                *len
            };
            let range = decode::slice_range(start, stop, len);
            let cap = usize::try_from(MAX_RECORDS).unwrap_or(usize::MAX);
            range.start..range.end.min(range.start + cap)
        })
        .collect();
    let length_of: HashMap<&str, usize> = keys
        .iter()
        .map(String::as_str)
        .zip(lengths.iter().copied())
        .collect();
    let len_of = |key: &str| length_of.get(key).copied().unwrap_or(0);
    let mut reads = redis::pipe();
    for (key, range) in keys.iter().zip(&ranges) {
        let last = range.end.max(1) - 1;
        match kind {
            StorageKind::List => reads.cmd("LRANGE").arg(key).arg(range.start).arg(last),
            StorageKind::Zset => reads
                .cmd("ZREVRANGE")
                .arg(key)
                .arg(range.start)
                .arg(last)
                .arg("WITHSCORES"),
            // From whichever end is nearer: the newest with XREVRANGE, the oldest with XRANGE.
            StorageKind::Stream if from_oldest(range, len_of(key)) => reads
                .cmd("XRANGE")
                .arg(key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(len_of(key).saturating_sub(range.start).max(1)),
            StorageKind::Stream => reads
                .cmd("XREVRANGE")
                .arg(key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(range.end.max(1)),
            StorageKind::Hash => reads.cmd("HGETALL").arg(key),
        };
    }
    let replies: Vec<redis::Value> = reads
        .query_async(&mut redis)
        .await
        .map_err(ApiError::redis("slices", &keys[0]))?;
    let codec = api.codec;
    let mut out = Vec::with_capacity(ids.len());
    for (((id, len), range), reply) in ids.into_iter().zip(&lengths).zip(&ranges).zip(replies) {
        if *len == 0 {
            out.push(Slice {
                source: id,
                records: None,
                error: Some("unknown_source"),
            });
            continue;
        }
        let unexpected = |source: redis::RedisError| ApiError::Redis {
            operation: "slices",
            source,
        };
        let records = if range.is_empty() {
            Vec::new()
        } else {
            match kind {
                StorageKind::List => redis::from_redis_value::<Vec<Vec<u8>>>(reply)
                    .map_err(|err| unexpected(err.into()))?
                    .into_iter()
                    .map(list_record)
                    .collect(),
                StorageKind::Zset => redis::from_redis_value::<Vec<(Vec<u8>, f64)>>(reply)
                    .map_err(|err| unexpected(err.into()))?
                    .into_iter()
                    .map(zset_record)
                    .collect(),
                StorageKind::Stream => {
                    let entries = redis::from_redis_value::<Vec<StreamEntry>>(reply)
                        .map_err(|err| unexpected(err.into()))?;
                    if from_oldest(range, *len) {
                        // XRANGE gave the oldest `len - start`, oldest first: reversed, they
                        // start at index `start`.
                        entries
                            .into_iter()
                            .rev()
                            .take(range.len())
                            .map(stream_record)
                            .collect()
                    } else {
                        entries
                            .into_iter()
                            .skip(range.start)
                            .map(stream_record)
                            .collect()
                    }
                }
                StorageKind::Hash => {
                    let fields = redis::from_redis_value::<HashMap<String, Vec<u8>>>(reply)
                        .map_err(|err| unexpected(err.into()))?;
                    hash_record(fields).into_iter().collect()
                }
            }
        };
        out.push(Slice {
            source: id,
            records: Some(Records { codec, records }),
            error: None,
        });
    }
    let capacity = out
        .iter()
        .map(|slice| {
            slice.source.len() + 64 + slice.records.as_ref().map_or(0, Records::json_len_estimate)
        })
        .sum::<usize>()
        + 128;
    let body = Slices {
        start,
        stop,
        storage: sink::storage_name(kind),
        encoding: api.codec.encoding.as_str(),
        sources: out,
    };
    Ok(json_sized(StatusCode::OK, &body, capacity))
}

/// Whether a slice of a stream of `len` entries is nearer its oldest end.
const fn from_oldest(range: &std::ops::Range<usize>, len: usize) -> bool {
    range.start > len / 2
}

#[derive(Serialize, Default)]
struct StatsFigures {
    count: Option<i64>,
    min: Option<f64>,
    max: Option<f64>,
    mean: Option<f64>,
    last: Option<f64>,
    updated_ts: Option<i64>,
}

#[derive(Serialize)]
struct SourceStats<'a> {
    source: &'a str,
    /// Per stats processor; null where it has no figures for this source yet.
    stats: std::collections::BTreeMap<&'a str, Option<StatsFigures>>,
    /// Per validate processor: records that passed and failed its rules.
    validation: std::collections::BTreeMap<&'a str, Option<HashMap<String, i64>>>,
}

fn stats_figures(fields: &HashMap<String, String>) -> Option<StatsFigures> {
    if fields.is_empty() {
        return None;
    }
    let float = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
    let int = |name: &str| fields.get(name).and_then(|v| v.parse().ok());
    Some(StatsFigures {
        count: int("count"),
        min: float("min"),
        max: float("max"),
        mean: float("mean"),
        last: float("last"),
        updated_ts: int("updated_ts"),
    })
}

async fn source_stats(
    State(api): Shared,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    only_known(&query_pairs(query.as_deref()), &[])?;
    let key = api.data_key(&id);
    let mut pipe = redis::pipe();
    pipe.cmd("EXISTS").arg(&key);
    for (_, keys) in &api.stats {
        pipe.cmd("HGETALL").arg(keys.stats(&id));
    }
    for (_, keys) in &api.validate {
        pipe.cmd("HGETALL").arg(keys.counters(&id));
    }
    let replies: Vec<redis::Value> = pipe
        .query_async(&mut api.conn())
        .await
        .map_err(ApiError::redis("stats", &key))?;
    let mut replies = replies.into_iter();
    let exists: i64 = next_reply(&mut replies)?;
    let mut body = SourceStats {
        source: &id,
        stats: std::collections::BTreeMap::new(),
        validation: std::collections::BTreeMap::new(),
    };
    let mut any = exists > 0;
    for (name, _) in &api.stats {
        let fields: HashMap<String, String> = next_reply(&mut replies)?;
        any |= !fields.is_empty();
        body.stats.insert(name, stats_figures(&fields));
    }
    for (name, _) in &api.validate {
        let fields: HashMap<String, i64> = next_reply(&mut replies)?;
        any |= !fields.is_empty();
        body.validation
            .insert(name, (!fields.is_empty()).then_some(fields));
    }
    if !any {
        return Err(ApiError::UnknownSource { id });
    }
    Ok(json(StatusCode::OK, &body))
}

/// The next reply of a stats pipeline, parsed; a missing one reads as empty.
fn next_reply<T: redis::FromRedisValue + Default>(
    replies: &mut impl Iterator<Item = redis::Value>,
) -> Result<T, ApiError> {
    replies
        .next()
        .map(redis::from_redis_value)
        .transpose()
        .map(Option::unwrap_or_default)
        .map_err(|err| ApiError::Redis {
            operation: "stats",
            source: err.into(),
        })
}

#[derive(Serialize)]
struct Totals<'a> {
    pipeline: &'a str,
    /// Per validate processor: `valid`, `invalid`, `undecodable`.
    validation: std::collections::BTreeMap<&'a str, HashMap<String, i64>>,
    /// Per stage: dead letters by reason label (`rule:<name>` for a failed rule).
    dead_letters: std::collections::BTreeMap<&'a str, HashMap<String, i64>>,
}

async fn totals(State(api): Shared, RawQuery(query): RawQuery) -> Result<Response, ApiError> {
    only_known(&query_pairs(query.as_deref()), &[])?;
    let mut pipe = redis::pipe();
    for (_, keys) in &api.validate {
        pipe.cmd("HGETALL").arg(keys.counters(TOTAL_COUNTERS));
    }
    for stage in &api.stages {
        pipe.cmd("HGETALL")
            .arg(dead_letters_key(&api.layout.key_prefix, stage));
    }
    let replies: Vec<HashMap<String, i64>> = if api.validate.is_empty() && api.stages.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut api.conn())
            .await
            .map_err(ApiError::redis("totals", &api.layout.key_prefix))?
    };
    let mut replies = replies.into_iter();
    let mut body = Totals {
        pipeline: &api.pipeline,
        validation: std::collections::BTreeMap::new(),
        dead_letters: std::collections::BTreeMap::new(),
    };
    for (name, _) in &api.validate {
        body.validation
            .insert(name, replies.next().unwrap_or_default());
    }
    for stage in &api.stages {
        body.dead_letters
            .insert(stage, replies.next().unwrap_or_default());
    }
    Ok(json(StatusCode::OK, &body))
}

/// The batch events as server-sent events (`event: batch`, the event's JSON as `data`).
/// Subscribed before the response starts: every event published after the client has
/// the response headers reaches it. Pub/sub is at most once, so the stream carries no
/// ids and does not resume: a client that reconnects misses what was published while it
/// was away, and catches up by reading histories (`since=`).
async fn events(
    State(api): Shared,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let channel = api.layout.events_channel();
    let mut pubsub = api
        .client
        .get_async_pubsub()
        .await
        .map_err(ApiError::redis("subscribe", &channel))?;
    pubsub
        .subscribe(&channel)
        .await
        .map_err(ApiError::redis("subscribe", &channel))?;
    let mut stop = api.shutdown.clone();
    let stream = pubsub
        .into_on_message()
        .map(|message| {
            Ok(Event::default()
                .event("batch")
                .data(String::from_utf8_lossy(message.get_payload_bytes())))
        })
        .take_until(async move { stop.wait().await });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 300 clients connecting before the server accepts any: with std's 128 the queue
    /// overflows and the connections past it wait a second for the SYN's retransmission.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_accept_queue_not_for_a_retransmission() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = listener.local_addr().unwrap();
        let started = std::time::Instant::now();
        let mut clients = Vec::new();
        for _ in 0..300 {
            let client = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(address),
            )
            .await
            .expect("a connection that overflowed the accept queue")
            .unwrap();
            clients.push(client);
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_openapi_document_is_json_and_names_every_route() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = document["paths"].as_object().unwrap();
        for route in [
            "/v1/sources",
            "/v1/sources/{id}/history",
            "/v1/sources/{id}/stats",
            "/v1/slices",
            "/v1/totals",
            "/v1/events",
            "/v1/pipeline",
            "/openapi.json",
            "/healthz",
        ] {
            assert!(
                paths.contains_key(route),
                "{route} missing from openapi.json"
            );
        }
    }

    #[test]
    fn error_codes_are_stable() {
        let codes = [
            ApiError::BadParameter(BadParameter::new("limit", "x")).code(),
            ApiError::UnknownSource { id: "a".into() }.code(),
            ApiError::WrongType { key: "k".into() }.code(),
            ApiError::NotFound.code(),
        ];
        assert_eq!(
            codes,
            ["bad_parameter", "unknown_source", "wrong_type", "not_found"]
        );
    }
}
