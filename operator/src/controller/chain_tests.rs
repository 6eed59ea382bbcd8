//! Chained stages: each stage's input topic, format and group, and the graph checks.

use ferry_config::config::{RecordFormat, StageConfig};

use super::dereference::{Bootstrap, Dereferenced};
use super::validate::{OperatorDefaults, ValidateError, ValidatedPipeline, validate};
use crate::crd::Pipeline;

/// raw (dsdata) → enrich → validate → receiver, as in examples/chain.yaml.
const CHAIN: &str = r#"
apiVersion: ferry.dev/v1alpha1
kind: Pipeline
metadata: {name: risk, namespace: bank, uid: 11111111-2222-4333-8444-555555555555}
spec:
  kafka: {bootstrapServers: "kafka:9092", topic: trades.raw}
  redis: {host: redis}
  format: dsdata
  receiver:
    input: {from: check}
    deadLetter: {topic: trades.receiver-dlq}
  processors:
    - name: enrich
      enrich: {referenceKey: ref:desk}
      output: {topic: trades.enriched}
    - name: check
      input: {from: enrich}
      validate:
        rules:
          - {name: desk-known, expression: "ref.desk NOT NULL"}
      output: {topic: trades.validated}
      deadLetter: {topic: trades.invalid}
"#;

fn run(yaml: &str) -> Result<ValidatedPipeline, ValidateError> {
    let pipeline: Pipeline = serde_yaml::from_str(yaml).unwrap();
    validate(
        &pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("kafka:9092".to_owned()),
        },
        &OperatorDefaults::new("ferry/worker:test"),
    )
}

fn refused(yaml: &str) -> String {
    match run(yaml) {
        Ok(_) => panic!("the graph passed validate:\n{yaml}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn each_stage_of_a_chain_reads_its_own_input_in_its_own_format_and_group() {
    let validated = run(CHAIN).unwrap();
    let seen: Vec<(&str, &str, RecordFormat, &str, Option<&str>)> = validated
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.worker_config.kafka.topic.as_str(),
                s.worker_config.format,
                s.worker_config.kafka.consumer_group.as_str(),
                s.output_topic.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                "receiver",
                "trades.validated",
                RecordFormat::Json,
                "ferry:bank:risk",
                None
            ),
            (
                "enrich",
                "trades.raw",
                RecordFormat::Dsdata,
                "ferry:bank:risk:enrich",
                Some("trades.enriched")
            ),
            (
                "check",
                "trades.enriched",
                RecordFormat::Json,
                "ferry:bank:risk:check",
                Some("trades.validated")
            ),
        ]
    );
    for stage in &validated.stages {
        assert_eq!(stage.input_topic, stage.worker_config.kafka.topic);
        // What the operator renders, the worker loads and accepts.
        let yaml = stage.worker_config.to_yaml().unwrap();
        let back = ferry_config::config::WorkerConfig::from_yaml(&yaml).unwrap();
        back.validate().unwrap();
        assert_eq!(back, stage.worker_config);
    }
    let StageConfig::Processor(check) = &validated.stages[2].worker_config.stage else {
        panic!("check is a processor");
    };
    assert_eq!(check.output.as_ref().unwrap().topic, "trades.validated");
}

#[test]
fn without_inputs_every_stage_reads_the_pipeline_topic() {
    let yaml = CHAIN
        .replace("    input: {from: check}\n", "")
        .replace("      input: {from: enrich}\n", "");
    let validated = run(&yaml).unwrap();
    for stage in &validated.stages {
        assert_eq!(stage.worker_config.kafka.topic, "trades.raw");
        assert_eq!(stage.worker_config.format, RecordFormat::Dsdata);
    }
}

#[test]
fn an_explicit_topic_takes_its_own_format_or_its_writers() {
    let own = CHAIN.replace(
        "input: {from: check}",
        "input: {topic: elsewhere, format: raw}",
    );
    let validated = run(&own).unwrap();
    assert_eq!(validated.stages[0].worker_config.kafka.topic, "elsewhere");
    assert_eq!(validated.stages[0].worker_config.format, RecordFormat::Raw);
    // A topic a stage of this Pipeline writes is read in the format that stage writes.
    let written = CHAIN.replace("input: {from: check}", "input: {topic: trades.enriched}");
    let validated = run(&written).unwrap();
    assert_eq!(validated.stages[0].worker_config.format, RecordFormat::Json);
}

#[test]
fn an_unknown_stage_is_refused_naming_the_field() {
    let err = refused(&CHAIN.replace("input: {from: enrich}", "input: {from: enrichh}"));
    assert_eq!(
        err,
        "spec.processors[1].input.from: names no processor of this Pipeline: enrichh"
    );
    let err = refused(&CHAIN.replace("input: {from: check}", "input: {from: nope}"));
    assert_eq!(
        err,
        "spec.receiver.input.from: names no processor of this Pipeline: nope"
    );
}

#[test]
fn a_source_without_output_is_refused() {
    let err = refused(&CHAIN.replace("      output: {topic: trades.enriched}\n", ""));
    assert_eq!(
        err,
        "spec.processors[1].input.from: names processor enrich, which has no output.topic"
    );
}

#[test]
fn a_stage_reading_its_own_output_is_refused() {
    let err = refused(&CHAIN.replace("input: {from: enrich}", "input: {from: check}"));
    assert_eq!(
        err,
        "spec.processors[1].input.from: must not name the processor itself: it would read its own output"
    );
    let err = refused(&CHAIN.replace("input: {from: enrich}", "input: {topic: trades.validated}"));
    assert_eq!(
        err,
        "spec.processors[1].input: reads trades.validated, its own output.topic"
    );
}

#[test]
fn a_cycle_is_refused_naming_its_stages() {
    let yaml = CHAIN.replace(
        "      enrich: {referenceKey: ref:desk}\n",
        "      input: {from: check}\n      enrich: {referenceKey: ref:desk}\n",
    );
    let err = refused(&yaml);
    assert_eq!(
        err,
        "spec.processors[0].input: the stages enrich -> check -> enrich form a cycle"
    );
    // Through explicit topics, which CEL cannot follow.
    let yaml = CHAIN
        .replace(
            "      enrich: {referenceKey: ref:desk}\n",
            "      input: {topic: trades.validated}\n      enrich: {referenceKey: ref:desk}\n",
        )
        .replace("input: {from: enrich}", "input: {topic: trades.enriched}");
    assert!(
        refused(&yaml).ends_with("form a cycle"),
        "{}",
        refused(&yaml)
    );
}

#[test]
fn two_stages_writing_one_topic_are_refused() {
    let err = refused(&CHAIN.replace(
        "output: {topic: trades.validated}",
        "output: {topic: trades.enriched}",
    ));
    assert_eq!(
        err,
        "spec.processors[1].output.topic: trades.enriched is also spec.processors[0].output.topic: two stages writing one topic would mix their records"
    );
}

#[test]
fn writing_into_a_dead_letter_topic_is_refused() {
    let err = refused(&CHAIN.replace(
        "output: {topic: trades.enriched}",
        "output: {topic: trades.invalid}",
    ));
    assert_eq!(
        err,
        "spec.processors[0].output.topic: trades.invalid is spec.processors[1].deadLetter.topic: a stage must not write into a dead-letter topic"
    );
    let err = refused(&CHAIN.replace(
        "output: {topic: trades.enriched}",
        "output: {topic: trades.receiver-dlq}",
    ));
    assert!(err.contains("is spec.receiver.deadLetter.topic"), "{err}");
}

/// examples/chain.yaml validates, and its stages read raw → enriched → validated.
#[test]
fn the_chain_example_is_a_chain() {
    let mut pipeline: Pipeline =
        serde_yaml::from_str(include_str!("../../../examples/chain.yaml")).unwrap();
    pipeline.metadata.namespace = Some("default".to_owned());
    pipeline.metadata.uid = Some("11111111-2222-4333-8444-555555555555".to_owned());
    let validated = validate(
        &pipeline,
        &Dereferenced {
            bootstrap: Bootstrap::Resolved("kafka:9092".to_owned()),
        },
        &OperatorDefaults::new("ferry/worker:test"),
    )
    .unwrap();
    let inputs: Vec<(&str, &str, RecordFormat)> = validated
        .stages
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.input_topic.as_str(),
                s.worker_config.format,
            )
        })
        .collect();
    assert_eq!(
        inputs,
        vec![
            ("receiver", "trades.validated", RecordFormat::Json),
            ("enrich", "trades.raw", RecordFormat::Dsdata),
            ("check", "trades.enriched", RecordFormat::Json),
        ]
    );
}

/// The status shows the chain: each stage's input and output topic, and the stage count.
#[test]
fn status_shows_each_stages_topics_and_the_stage_count() {
    let validated = run(CHAIN).unwrap();
    let status = super::status::healthy_status(
        &validated,
        &crate::scaling::DesiredReplicas::default(),
        &[],
        None,
        "kafka:9092",
        None,
        "2026-12-01T20:00:00Z",
    );
    assert_eq!(status.stage_count, Some(3));
    let topics: Vec<(&str, Option<&str>, Option<&str>)> = status
        .stages
        .iter()
        .map(|s| (s.name.as_str(), s.input.as_deref(), s.output.as_deref()))
        .collect();
    assert_eq!(
        topics,
        vec![
            ("receiver", Some("trades.validated"), None),
            ("enrich", Some("trades.raw"), Some("trades.enriched")),
            ("check", Some("trades.enriched"), Some("trades.validated")),
        ]
    );
}
