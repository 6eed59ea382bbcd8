//! Broken config files fail `ferry-worker receive|process --config F` at start: exit code 2
//! and exactly one line on stderr that names the key (or, for YAML that does not parse, the
//! line and column), with no panic and no backtrace. No Kafka or Redis is contacted: each
//! config is refused before the worker connects anywhere.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A receiver config that loads; each case below breaks one thing in it. The ports are
/// closed on purpose: a config that wrongly passes must not find a broker.
const RECEIVER: &str = "\
pipeline: demo
kafka:
  bootstrap_servers: 127.0.0.1:9
  topic: sensors
  consumer_group: demo-receiver
redis:
  url: redis://127.0.0.1:9/0
  key_prefix: ferry
format: dsdata
http: {listen: '127.0.0.1:0'}
stage:
  receiver:
    storage: {type: list, history_depth: 100}
    max_age: 10m
    batch: {max_records: 500, max_wait: 50ms}
";

const PROCESSOR: &str = "\
pipeline: demo
kafka:
  bootstrap_servers: 127.0.0.1:9
  topic: sensors
  consumer_group: demo-check
redis:
  url: redis://127.0.0.1:9/0
  key_prefix: ferry
format: dsdata
http: {listen: '127.0.0.1:0'}
stage:
  processor:
    name: check
    kind:
      validate:
        rules:
          - {name: positive, expression: 'values[0] IN RANGE 0 100'}
";

struct Case {
    name: &'static str,
    subcommand: &'static str,
    config: String,
    /// Every one of these must appear in the one stderr line.
    names: &'static [&'static str],
}

fn replaced(base: &str, from: &str, to: &str) -> String {
    assert!(base.contains(from), "fixture lacks {from:?}");
    base.replacen(from, to, 1)
}

fn cases() -> Vec<Case> {
    let receive = |name, from, to, names| Case {
        name,
        subcommand: "receive",
        config: replaced(RECEIVER, from, to),
        names,
    };
    let process = |name, from, to, names| Case {
        name,
        subcommand: "process",
        config: replaced(PROCESSOR, from, to),
        names,
    };
    vec![
        receive(
            "missing key",
            "  topic: sensors\n",
            "",
            &["kafka", "missing field `topic`"],
        ),
        receive(
            "missing section",
            "format: dsdata\n",
            "",
            &["missing field `format`"],
        ),
        receive(
            "wrong type",
            "history_depth: 100",
            "history_depth: lots",
            &["stage.receiver.storage.history_depth"],
        ),
        receive(
            "negative number",
            "max_records: 500",
            "max_records: -5",
            &["stage.receiver.batch.max_records"],
        ),
        receive(
            "unknown key",
            "  topic: sensors\n",
            "  topic: sensors\n  topik: typo\n",
            &["kafka", "topik"],
        ),
        receive(
            "unknown format",
            "format: dsdata",
            "format: xml",
            &["format", "xml"],
        ),
        receive(
            "bad duration",
            "max_wait: 50ms",
            "max_wait: 5 parsecs",
            &["stage.receiver.batch.max_wait"],
        ),
        receive(
            "bad max_age",
            "max_age: 10m",
            "max_age: soon",
            &["stage.receiver.max_age"],
        ),
        receive(
            "bad URL scheme",
            "url: redis://127.0.0.1:9/0",
            "url: http://127.0.0.1:9/0",
            &["redis.url"],
        ),
        receive(
            "bad URL port",
            "url: redis://127.0.0.1:9/0",
            "url: redis://127.0.0.1:port/0",
            &["redis.url"],
        ),
        receive(
            "bad URL database",
            "url: redis://127.0.0.1:9/0",
            "url: redis://127.0.0.1:9/zero",
            &["redis.url"],
        ),
        receive(
            "URL without host",
            "url: redis://127.0.0.1:9/0",
            "url: 'redis://'",
            &["redis.url"],
        ),
        receive(
            "password in URL",
            "url: redis://127.0.0.1:9/0",
            "url: redis://:hunter2@127.0.0.1:9/0",
            &["redis.url"],
        ),
        receive(
            "history depth 0",
            "history_depth: 100",
            "history_depth: 0",
            &["stage.receiver.storage.history_depth"],
        ),
        receive(
            "batch of 0",
            "max_records: 500",
            "max_records: 0",
            &["stage.receiver.batch.max_records"],
        ),
        receive(
            "empty topic",
            "topic: sensors",
            "topic: ''",
            &["kafka.topic"],
        ),
        receive(
            "bad listen address",
            "http: {listen: '127.0.0.1:0'}",
            "http: {listen: 'everywhere:80'}",
            &["http.listen"],
        ),
        receive(
            "unparsable YAML",
            "  topic: sensors\n",
            "  topic: [sensors\n",
            &["line"],
        ),
        receive(
            "tab-indented YAML",
            "  topic: sensors\n",
            "\ttopic: sensors\n",
            &["line"],
        ),
        receive(
            "not a mapping",
            RECEIVER,
            "- just\n- a list\n",
            &["invalid type"],
        ),
        receive(
            "processor config for receive",
            RECEIVER,
            PROCESSOR,
            &["stage", "receiver"],
        ),
        process(
            "receiver config for process",
            PROCESSOR,
            RECEIVER,
            &["stage", "processor"],
        ),
        process(
            "rule that does not parse",
            "'values[0] IN RANGE 0 100'",
            "'values[0] IN RANGE 0'",
            &[
                "stage.processor.kind.validate.rules",
                "positive",
                "column 21",
            ],
        ),
        process(
            "rule with an unknown operand",
            "'values[0] IN RANGE 0 100'",
            "'speed EQ 1'",
            &["stage.processor.kind.validate.rules", "positive", "speed"],
        ),
        process(
            "no rules",
            "          - {name: positive, expression: 'values[0] IN RANGE 0 100'}\n",
            "          []\n",
            &["stage.processor.kind.validate.rules"],
        ),
        process(
            "stats window 0",
            "      validate:\n        rules:\n          - {name: positive, expression: 'values[0] IN RANGE 0 100'}\n",
            "      stats: {window: 0}\n",
            &["stage.processor.kind.stats.window"],
        ),
        process(
            "unknown processor kind",
            "      validate:",
            "      validates:",
            &["stage.processor.kind", "validates"],
        ),
    ]
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ferry-config-errors-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the worker on `config`; it must exit by itself within a few seconds.
fn run(subcommand: &str, config: &std::path::Path) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry-worker"));
    // Overrides from the caller's environment would change what is tested.
    for (name, _) in std::env::vars() {
        if name.starts_with("FERRY__") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .env("RUST_BACKTRACE", "1")
        .env_remove("FERRY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused config exits at once; one still running after this was accepted.
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().next().unwrap_or_default();
            return (
                None,
                format!("accepted the config and kept running: {first}"),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_broken_config_fails_at_start_with_one_line_naming_the_key() {
    let dir = scratch_dir();
    let mut failures = Vec::new();
    for (index, case) in cases().into_iter().enumerate() {
        let path = dir.join(format!("case-{index}.yaml"));
        std::fs::write(&path, &case.config).unwrap();
        let (code, stderr) = run(case.subcommand, &path);
        let lines: Vec<&str> = stderr.lines().collect();
        let mut problems = Vec::new();
        if code != Some(2) {
            problems.push(format!("exit code {code:?}, expected 2"));
        }
        if lines.len() != 1 {
            problems.push(format!("{} stderr lines, expected 1", lines.len()));
        }
        if stderr.contains("panicked") || stderr.contains("backtrace") {
            problems.push("panicked".to_owned());
        }
        let line = lines.first().copied().unwrap_or_default();
        if !line.starts_with("ferry-worker: ") {
            problems.push("the line does not start with `ferry-worker: `".to_owned());
        }
        for name in case.names {
            if !line.contains(name) {
                problems.push(format!("does not name {name:?}"));
            }
        }
        if line.contains("hunter2") {
            problems.push("echoes the password".to_owned());
        }
        eprintln!("{:<30} {code:?} {line}", case.name);
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({} {}): {}\n    stderr: {stderr:?}",
                case.name,
                case.subcommand,
                path.display(),
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} broken configs were not refused cleanly:\n{}",
        failures.len(),
        cases().len(),
        failures.join("\n")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_config_file_is_one_line_and_exit_2() {
    let dir = scratch_dir();
    let path = dir.join("does-not-exist.yaml");
    for subcommand in ["receive", "process"] {
        let (code, stderr) = run(subcommand, &path);
        assert_eq!(code, Some(2), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("does-not-exist.yaml"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_unbroken_configs_load() {
    // The cases above only prove something if the fixtures themselves are valid.
    for text in [RECEIVER, PROCESSOR] {
        ferry_worker::config::WorkerConfig::from_yaml(text).unwrap();
    }
}
