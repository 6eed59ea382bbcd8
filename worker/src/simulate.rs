//! The data-source simulator: plays `sources` sources, each sending `rate` records a second
//! of `floats` floats (a sine wave per source, then random walks) and a short status text,
//! keyed by source id (`src-0042`). With `rate` 0 it sends as fast as the broker takes,
//! for load tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::RecordFormat;
use crate::record::{self, DataRecord, EncodeError};

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub bootstrap_servers: String,
    pub topic: String,
    pub sources: u32,
    /// Records a second per source; 0 sends as fast as the broker takes.
    pub rate: f64,
    pub floats: usize,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop after this long.
    pub duration: Option<Duration>,
    pub format: RecordFormat,
    /// `lz4` or `none`.
    pub compression: String,
    pub seed: u64,
    pub progress_interval: Duration,
    /// Extra librdkafka producer properties (`key=value`), e.g. for TLS or SASL.
    pub properties: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error("cannot create the Kafka producer: {0}")]
    CreateProducer(KafkaError),
    #[error("cannot encode a record: {0}")]
    Encode(#[from] EncodeError),
    #[error("cannot queue a record: {0}")]
    Produce(KafkaError),
    #[error("{failed} of {sent} records were not delivered")]
    Undelivered { failed: u64, sent: u64 },
    #[error("--sources must be at least 1")]
    NoSources,
}

/// What a run achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulateReport {
    pub sent: u64,
    pub delivered: u64,
    pub elapsed: Duration,
}

impl SimulateReport {
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, Default)]
struct DeliveryCounts {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

struct CountingContext(Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.0.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// One simulated source: a sine wave with its own phase and period, plus random walks.
#[derive(Debug, Clone)]
struct Source {
    id: String,
    phase: f64,
    period_s: f64,
    walks: Vec<f64>,
}

/// Generates the records of every source, round robin, so each gets the same share.
#[derive(Debug)]
pub struct Generator {
    sources: Vec<Source>,
    rng: StdRng,
    next: usize,
    format: RecordFormat,
    buffer: Vec<u8>,
}

const STATUSES: [&str; 4] = ["ok", "ok", "warming", "degraded"];

impl Generator {
    pub fn new(sources: u32, floats: usize, format: RecordFormat, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let sources = (0..sources)
            .map(|index| Source {
                id: format!("src-{index:04}"),
                phase: rng.random_range(0.0..std::f64::consts::TAU),
                period_s: rng.random_range(30.0..300.0),
                walks: (1..floats.max(1))
                    .map(|_| rng.random_range(-10.0..10.0))
                    .collect(),
            })
            .collect();
        Self {
            sources,
            rng,
            next: 0,
            format,
            buffer: Vec::new(),
        }
    }

    /// The next record: its key (source id) and encoded value.
    pub fn next_record(
        &mut self,
        timestamp_ms: i64,
        floats: usize,
    ) -> Result<(&str, &[u8]), EncodeError> {
        let index = self.next % self.sources.len().max(1);
        self.next = self.next.wrapping_add(1);
        let Some(source) = self.sources.get_mut(index) else {
            return Ok(("", &[]));
        };
        let seconds = timestamp_ms as f64 / 1000.0;
        let mut values = Vec::with_capacity(floats);
        if floats > 0 {
            values.push(
                20.0 + 10.0
                    * (std::f64::consts::TAU * seconds / source.period_s + source.phase).sin(),
            );
        }
        for walk in source.walks.iter_mut().take(floats.saturating_sub(1)) {
            *walk += self.rng.random_range(-0.5..0.5);
            values.push(*walk);
        }
        let status = STATUSES[self.rng.random_range(0..STATUSES.len())];
        let text = format!("{} {status}", source.id);
        self.buffer.clear();
        match self.format {
            RecordFormat::Json => {
                self.buffer = record::json::encode(&DataRecord {
                    timestamp_ms,
                    values,
                    text,
                })?;
            }
            RecordFormat::Dsdata | RecordFormat::Raw => {
                record::dsdata::encode_into(timestamp_ms, &values, &text, &mut self.buffer)?;
            }
        }
        Ok((source.id.as_str(), self.buffer.as_slice()))
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// How long the producer waits to fill a batch, for `total_rate` records a second (0: as fast
/// as the broker takes). A paced source of up to 10,000 records/s lingers 1 ms: with 0 the
/// broker took one produce request per record, 0.8 of a core at 10,000 records/s, and every
/// pipeline's tail paid for it (10 ms added 9.5 ms to every record at 1,000 records/s, 1 ms
/// adds about 1 ms to the median and took the p99 from 4.6 to 3.7 ms). A fast one waits
/// librdkafka's default 5 ms, since at 100,000 records/s one request per few records queued
/// records for a second; a bulk load fills batches (bench/README.md, "Latency settings").
fn linger_ms(total_rate: f64) -> &'static str {
    match total_rate {
        rate if rate <= 0.0 => "10",
        rate if rate <= 10_000.0 => "1",
        _ => "5",
    }
}

/// Produces until `count`, `duration` or `stop`, printing progress lines on stderr, then
/// flushes and reports. Blocking: run it off the async runtime.
pub fn run(options: &SimulateOptions, stop: &AtomicBool) -> Result<SimulateReport, SimulateError> {
    if options.sources == 0 {
        return Err(SimulateError::NoSources);
    }
    let counts = Arc::new(DeliveryCounts::default());
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &options.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set(
            "linger.ms",
            linger_ms(options.rate * f64::from(options.sources)),
        )
        .set("batch.num.messages", "10000")
        .set("batch.size", "1048576")
        .set("compression.type", &options.compression)
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "524288");
    for (key, value) in &options.properties {
        client.set(key, value);
    }
    let producer: ThreadedProducer<CountingContext> = client
        .create_with_context(CountingContext(Arc::clone(&counts)))
        .map_err(SimulateError::CreateProducer)?;

    let mut generator = Generator::new(
        options.sources,
        options.floats,
        options.format,
        options.seed,
    );
    let total_rate = options.rate * f64::from(options.sources);
    let started = Instant::now();
    let mut last_progress = started;
    let mut sent_at_last_progress = 0u64;
    let mut sent = 0u64;
    loop {
        if stop.load(Ordering::Relaxed)
            || options.count.is_some_and(|count| sent >= count)
            || options
                .duration
                .is_some_and(|duration| started.elapsed() >= duration)
        {
            break;
        }
        let now = Instant::now();
        if now.duration_since(last_progress) >= options.progress_interval {
            let interval = now.duration_since(last_progress).as_secs_f64();
            eprintln!(
                "simulate: sent {sent}, {:.0} records/s, delivered {}, failed {}",
                (sent - sent_at_last_progress) as f64 / interval,
                counts.delivered.load(Ordering::Relaxed),
                counts.failed.load(Ordering::Relaxed),
            );
            last_progress = now;
            sent_at_last_progress = sent;
        }
        if total_rate > 0.0 {
            let allowed = (started.elapsed().as_secs_f64() * total_rate) as u64;
            if sent >= allowed {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        }
        let (key, payload) = generator.next_record(now_ms(), options.floats)?;
        let mut record = BaseRecord::to(&options.topic).key(key).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // The background thread drains the queue as the broker acknowledges.
                    record = returned;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((error, _)) => return Err(SimulateError::Produce(error)),
            }
        }
        sent += 1;
    }
    eprintln!(
        "simulate: flushing {} queued records",
        producer.in_flight_count()
    );
    let _ = producer.flush(Duration::from_secs(120));
    let report = SimulateReport {
        sent,
        delivered: counts.delivered.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    };
    let failed = counts.failed.load(Ordering::Relaxed) + sent.saturating_sub(report.delivered);
    eprintln!(
        "simulate: done: sent {sent}, delivered {} in {:.2} s: {:.0} records/s",
        report.delivered,
        report.elapsed.as_secs_f64(),
        report.rate()
    );
    if failed > 0 {
        if let Ok(first) = counts.first_error.lock()
            && let Some(first) = first.as_ref()
        {
            eprintln!("simulate: first delivery error: {first}");
        }
        return Err(SimulateError::Undelivered { failed, sent });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_slow_paced_source_sends_each_record_at_once() {
        assert_eq!(linger_ms(0.0), "10");
        assert_eq!(linger_ms(1_000.0), "1");
        assert_eq!(linger_ms(100_000.0), "5");
    }

    #[test]
    fn generates_decodable_records_round_robin() {
        let mut generator = Generator::new(3, 4, RecordFormat::Dsdata, 7);
        let mut keys = Vec::new();
        for _ in 0..6 {
            let (key, payload) = generator.next_record(1_700_000_000_000, 4).unwrap();
            keys.push(key.to_owned());
            let decoded = record::dsdata::decode(payload).unwrap();
            assert_eq!(decoded.values.len(), 4);
            assert!(decoded.text.starts_with(key));
        }
        assert_eq!(
            keys,
            [
                "src-0000", "src-0001", "src-0002", "src-0000", "src-0001", "src-0002"
            ]
        );
    }

    #[test]
    fn json_records_decode_too() {
        let mut generator = Generator::new(1, 2, RecordFormat::Json, 1);
        let (_, payload) = generator.next_record(5, 2).unwrap();
        let decoded = record::json::decode(payload).unwrap();
        assert_eq!((decoded.timestamp_ms, decoded.values.len()), (5, 2));
    }
}
