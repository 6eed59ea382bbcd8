//! Secure connections, for real: `ferry-worker receive` against a Redis that wants TLS and
//! AUTH (an ACL user, and the default user's `requirepass`) and a Kafka broker that wants
//! SASL_SSL with SCRAM-SHA-512 (or TLS alone, on a second listener), both started by
//! `e2e/local/secure.sh` on loopback and free ports, with certificates from a throwaway CA.
//!
//! Records must land when everything is right, must not land when a password is wrong or
//! the CA is missing (verification is on), and no password, right or wrong, may appear in
//! any worker log line. Needs the Kafka jars of the local stack (`make stack-up`), openssl
//! and redis-server; fails, never skips, without them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod oracle;
mod receiver_support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_worker::config::{KAFKA_SASL_PASSWORD_ENV, REDIS_PASSWORD_ENV};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use receiver_support::{now_ms, unique, value};

/// The secure servers of one test run, stopped when dropped.
struct SecureServers {
    dir: PathBuf,
    env: HashMap<String, String>,
}

fn script() -> PathBuf {
    // Cargo sets CARGO_MANIFEST_DIR when it runs a test too: that is the checkout under test,
    // where the compiled-in one may be another clone's that shares the target dir.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../e2e/local/secure.sh")
}

impl SecureServers {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("ferry-secure"));
        let status = Command::new("bash")
            .arg(script())
            .arg("up")
            .arg(&dir)
            .status()
            .expect("bash runs");
        let mut servers = Self {
            dir: dir.clone(),
            env: HashMap::new(),
        };
        assert!(
            status.success(),
            "e2e/local/secure.sh up failed; logs in {}",
            dir.display()
        );
        let text = std::fs::read_to_string(dir.join("env")).unwrap();
        servers.env = text
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        servers
    }

    fn get(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("{key} missing from {}/env", self.dir.display()))
    }

    /// A plain AUTH connection for the test's own reads.
    fn redis(&self) -> redis::Connection {
        let url = format!(
            "redis://:{}@127.0.0.1:{}/0",
            self.get("SECURE_REDIS_DEFAULT_PASSWORD"),
            self.get("SECURE_REDIS_PLAIN_PORT")
        );
        redis::Client::open(url).unwrap().get_connection().unwrap()
    }

    fn secrets(&self) -> Vec<String> {
        [
            "SECURE_REDIS_DEFAULT_PASSWORD",
            "SECURE_REDIS_USER_PASSWORD",
            "SECURE_KAFKA_PASSWORD",
        ]
        .iter()
        .map(|key| self.get(key).to_owned())
        .collect()
    }
}

impl Drop for SecureServers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("down")
            .arg(&self.dir)
            .status();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How one worker connects.
struct Connection<'a> {
    name: &'a str,
    kafka: Kafka,
    redis_url: String,
    redis_username: Option<&'a str>,
    redis_ca: bool,
    redis_password: String,
    kafka_password: String,
}

/// Which Kafka listener a worker uses, and how.
#[derive(Clone, Copy)]
enum Kafka {
    /// SASL_SSL, SCRAM-SHA-512, with the CA file.
    SaslSsl,
    /// SSL without SASL, with the CA file.
    Ssl,
    /// SSL without SASL and without a CA file: the broker's certificate is untrusted.
    SslWithoutCa,
}

struct Run {
    name: String,
    child: Child,
    log: PathBuf,
    prefix: String,
}

impl Run {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                self.child.kill().unwrap();
                self.child.wait().unwrap();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text()
    }
}

fn start_worker(servers: &SecureServers, topic: &str, connection: &Connection<'_>) -> Run {
    let dir = servers.dir.join(connection.name);
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = unique("sec");
    let group = unique("sec-group");
    let ca = servers.get("SECURE_CA_FILE");
    let username = connection
        .redis_username
        .map(|u| format!("  username: {u}\n"))
        .unwrap_or_default();
    let redis_tls = if connection.redis_ca {
        format!("  tls: {{ca_file: \"{ca}\"}}\n")
    } else {
        String::new()
    };
    let kafka_security = match connection.kafka {
        Kafka::SaslSsl => format!(
            "  tls: {{ca_file: \"{ca}\"}}\n  sasl: {{mechanism: SCRAM-SHA-512, username: {}, password_env: {KAFKA_SASL_PASSWORD_ENV}}}\n",
            servers.get("SECURE_KAFKA_USER")
        ),
        Kafka::Ssl => format!("  tls: {{ca_file: \"{ca}\"}}\n"),
        Kafka::SslWithoutCa => "  tls: {}\n".to_owned(),
    };
    let kafka = match connection.kafka {
        Kafka::SaslSsl => servers.get("SECURE_KAFKA_SASL_SSL"),
        Kafka::Ssl | Kafka::SslWithoutCa => servers.get("SECURE_KAFKA_SSL"),
    };
    let config = format!(
        "pipeline: secure\n\
         kafka:\n  bootstrap_servers: \"{kafka}\"\n  topic: {topic}\n  consumer_group: {group}\n\
         {kafka_security}\
         redis:\n  url: \"{url}\"\n{username}  password_env: {REDIS_PASSWORD_ENV}\n{redis_tls}  key_prefix: {prefix}\n\
         format: dsdata\n\
         http: {{listen: '127.0.0.1:0'}}\n\
         stage:\n  receiver:\n    storage: {{type: list, history_depth: 1000}}\n    max_age: 1h\n    \
         dead_letter: {{topic: {topic}-dlq}}\n    batch: {{max_records: 100, max_wait: 20ms}}\n",
        url = connection.redis_url,
    );
    let config_path = dir.join("config.yaml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.join("worker.log");
    let child = Command::new(env!("CARGO_BIN_EXE_ferry-worker"))
        .args(["receive", "--config"])
        .arg(&config_path)
        .args(["--session-timeout", "6s", "--drain-timeout", "3s"])
        .args(["--shutdown-timeout", "3s"])
        .env(REDIS_PASSWORD_ENV, &connection.redis_password)
        .env(KAFKA_SASL_PASSWORD_ENV, &connection.kafka_password)
        // Debug logs too: the most a secret could leak through.
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    Run {
        name: connection.name.to_owned(),
        child,
        log,
        prefix,
    }
}

fn checkpoints(
    servers: &SecureServers,
    run: &Run,
    topic: &str,
    partitions: &[i32],
) -> Vec<Option<i64>> {
    let keys: Vec<String> = partitions
        .iter()
        .map(|p| format!("{}:ckpt:receiver:{topic}:{p}", run.prefix))
        .collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&keys)
        .query(&mut servers.redis())
        .unwrap();
    values
        .iter()
        .map(|value| {
            value
                .as_deref()
                .and_then(|v| v.split('@').next()?.parse().ok())
        })
        .collect()
}

fn wait_applied(servers: &SecureServers, run: &Run, topic: &str, last: &BTreeMap<i32, i64>) {
    let partitions: Vec<i32> = last.keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let found = checkpoints(servers, run, topic, &partitions);
        if partitions
            .iter()
            .zip(&found)
            .all(|(p, c)| c.is_some_and(|c| c >= last[p]))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: not applied: checkpoints {found:?}, expected {last:?}; log {}:\n{}",
            run.name,
            run.log.display(),
            run.log_text()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_no_secret(log: &str, secrets: &[String], what: &str) {
    assert!(!log.is_empty(), "{what}: empty log");
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "{what}: a password appears in the worker log"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_auth_acl_and_sasl_scram_work_and_wrong_credentials_do_not() {
    let servers = SecureServers::start();
    let plaintext = servers.get("SECURE_KAFKA_PLAINTEXT").to_owned();

    // Setup over the PLAINTEXT listener; the workers only ever use SASL_SSL.
    let topic = unique("secure");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &plaintext)
        .create()
        .unwrap();
    let dead_letter_topic = format!("{topic}-dlq");
    let topics = [
        NewTopic::new(&topic, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&dead_letter_topic, 1, TopicReplication::Fixed(1)),
    ];
    for result in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .unwrap()
    {
        result.unwrap();
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &plaintext)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let now = now_ms();
    let mut sent: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut malformed = 0;
    for sequence in 0..300 {
        let key = format!("src-{}", sequence % 10);
        let mut payload = value(&key, sequence, now);
        if sequence % 60 == 7 {
            payload.truncate(10);
            malformed += 1;
        } else {
            sent.entry(key.clone()).or_default().push(payload.clone());
        }
        let delivery = producer
            .send(
                FutureRecord::to(&topic).key(&key).payload(&payload),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        let entry = last.entry(delivery.partition).or_insert(-1);
        *entry = (*entry).max(delivery.offset);
    }

    let tls_port = servers.get("SECURE_REDIS_TLS_PORT").to_owned();
    let plain_port = servers.get("SECURE_REDIS_PLAIN_PORT").to_owned();
    let kafka_password = servers.get("SECURE_KAFKA_PASSWORD").to_owned();
    let user_password = servers.get("SECURE_REDIS_USER_PASSWORD").to_owned();
    let default_password = servers.get("SECURE_REDIS_DEFAULT_PASSWORD").to_owned();
    let wrong = |what: &str| format!("wrong-{what}-{}", unique("pw"));
    let wrong_redis = wrong("redis");
    let wrong_kafka = wrong("kafka");
    let mut secrets = servers.secrets();
    secrets.extend([wrong_redis.clone(), wrong_kafka.clone()]);

    let good = [
        // rediss:// + ACL user + CA file, Kafka SASL_SSL SCRAM-SHA-512 + CA file.
        Connection {
            name: "tls-acl-user",
            kafka: Kafka::SaslSsl,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: true,
            redis_password: user_password.clone(),
            kafka_password: kafka_password.clone(),
        },
        // rediss:// with `localhost`: the certificate's DNS name is checked too.
        Connection {
            name: "tls-default-user-by-name",
            kafka: Kafka::SaslSsl,
            redis_url: format!("rediss://localhost:{tls_port}/0"),
            redis_username: None,
            redis_ca: true,
            redis_password: default_password.clone(),
            kafka_password: kafka_password.clone(),
        },
        // Plain AUTH (requirepass), no TLS to Redis.
        Connection {
            name: "auth-only",
            kafka: Kafka::SaslSsl,
            redis_url: format!("redis://127.0.0.1:{plain_port}/0"),
            redis_username: None,
            redis_ca: false,
            redis_password: default_password.clone(),
            kafka_password: kafka_password.clone(),
        },
        // Kafka over TLS without SASL.
        Connection {
            name: "kafka-ssl-only",
            kafka: Kafka::Ssl,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: true,
            redis_password: user_password.clone(),
            kafka_password: String::new(),
        },
    ];
    let bad = [
        Connection {
            name: "wrong-redis-password",
            kafka: Kafka::SaslSsl,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: true,
            redis_password: wrong_redis.clone(),
            kafka_password: kafka_password.clone(),
        },
        Connection {
            name: "wrong-kafka-password",
            kafka: Kafka::SaslSsl,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: true,
            redis_password: user_password.clone(),
            kafka_password: wrong_kafka.clone(),
        },
        // The server's certificate is from a CA the system does not trust.
        Connection {
            name: "redis-tls-without-ca",
            kafka: Kafka::SaslSsl,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: false,
            redis_password: user_password.clone(),
            kafka_password: kafka_password.clone(),
        },
        // Likewise the broker's certificate.
        Connection {
            name: "kafka-ssl-without-ca",
            kafka: Kafka::SslWithoutCa,
            redis_url: format!("rediss://127.0.0.1:{tls_port}/0"),
            redis_username: Some(servers.get("SECURE_REDIS_USER")),
            redis_ca: true,
            redis_password: user_password.clone(),
            kafka_password: String::new(),
        },
    ];
    let good_runs: Vec<Run> = good
        .iter()
        .map(|c| start_worker(&servers, &topic, c))
        .collect();
    let bad_runs: Vec<Run> = bad
        .iter()
        .map(|c| start_worker(&servers, &topic, c))
        .collect();

    for run in &good_runs {
        wait_applied(&servers, run, &topic, &last);
        for (key, values) in &sent {
            let stored: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(format!("{}:list:{key}", run.prefix))
                .arg(0)
                .arg(-1)
                .query(&mut servers.redis())
                .unwrap();
            let expected: Vec<Vec<u8>> = values.iter().rev().cloned().collect();
            assert_eq!(stored, expected, "{}: {key}", run.name);
        }
    }
    // The bad ones had as long as the good ones took, and a few seconds more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let partitions: Vec<i32> = last.keys().copied().collect();
    for run in &bad_runs {
        let found = checkpoints(&servers, run, &topic, &partitions);
        assert!(
            found.iter().all(Option::is_none),
            "{}: records landed anyway: {found:?}",
            run.name
        );
    }

    // Dead letters went out through SASL_SSL and SSL too: each good worker dead-letters
    // every malformed record once.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &plaintext)
        .set("group.id", unique("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&dead_letter_topic]).unwrap();
    let mut letters = 0;
    while letters < malformed * good_runs.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .unwrap();
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ferry-reason"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(reason.as_deref(), Some("truncated"));
        letters += 1;
    }

    for run in good_runs {
        let name = run.name.clone();
        let log = run.stop();
        assert_no_secret(&log, &secrets, &name);
    }
    let mut complaints = Vec::new();
    for run in bad_runs {
        let name = run.name.clone();
        let log = run.stop();
        assert_no_secret(&log, &secrets, &name);
        complaints.push((name, log));
    }
    // Each failure is explained in the log, so an operator can tell what is wrong.
    for (name, needle) in [
        ("wrong-redis-password", "AuthenticationFailed"),
        ("wrong-kafka-password", "SASL authentication error"),
        ("redis-tls-without-ca", "certificate"),
        ("kafka-ssl-without-ca", "certificate verify failed"),
    ] {
        let (_, log) = complaints.iter().find(|(n, _)| n == name).unwrap();
        assert!(
            log.contains(needle),
            "{name}: the log does not say {needle:?}:\n{}",
            log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
    }
}
