//! Runs one claimed build: its steps in order, with Buildbot's rules for
//! halting and for combining results, reporting each transition as an event.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::Utc;
use shared::model::{Results, build_result_contribution, halts_build};
use shared::wire::{BuildAssignment, LogChannel, LogRecord, STDIO_LOG, StepRecord, WARNINGS_LOG, WorkerEvent};
use shared::wire::{RunIf, Step};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::files::{self, StepFiles};
use crate::filter::LogFilter;
use crate::logs::LogWriter;
use crate::{Context, WorkerError, step};

pub async fn run_build(
    context: &Context,
    build: BuildAssignment,
    stop: CancellationToken,
) -> Result<Results, WorkerError> {
    let builder_dir = context.basedir.join(directory_name(&build.builder));
    let mut running = Running::default();
    let mut results = Results::Success;
    let mut halted = false;
    let mut failed_steps = Vec::new();
    let mut records = Vec::with_capacity(build.steps.len());

    for (index, spec) in build.steps.iter().enumerate() {
        let number = index as i32;
        let unmet = spec.run_if.as_ref().and_then(|condition| running.unmet(condition));
        if stop.is_cancelled() || (halted && !spec.always_run) || unmet.is_some() {
            running.results.insert(spec.name.clone(), Results::Skipped);
            records.push(StepRecord {
                number,
                name: spec.name.clone(),
                started_at: None,
                finished_at: None,
                results: Some(Results::Skipped),
                state_string: unmet.map_or_else(|| "skipped".into(), |why| format!("skipped: {why}")),
                logs: Vec::new(),
                test_summary: None,
                files: Vec::new(),
                properties: BTreeMap::new(),
            });
            continue;
        }
        let span = tracing::info_span!(
            "step",
            otel.name = format!("step {}", spec.name),
            step.number = number,
            step.name = %spec.name,
            step.results = tracing::field::Empty,
        );
        let (record, outcome) =
            run_step(context, &build, spec, number, &builder_dir, &stop, &mut running).instrument(span.clone()).await?;
        span.record("step.results", outcome.results.name());

        let contribution = build_result_contribution(outcome.results, spec.flags());
        if contribution != Results::Success {
            failed_steps.push(spec.name.clone());
        }
        results = results.worst(contribution);
        halted |= halts_build(outcome.results, spec.flags());
        running.results.insert(spec.name.clone(), outcome.results);
        records.push(record);
    }
    if stop.is_cancelled() {
        results = results.worst(Results::Cancelled);
    }

    let state_string = match results {
        Results::Success => "build successful".to_owned(),
        other if failed_steps.is_empty() => other.name().to_owned(),
        other => format!("{other}: {}", failed_steps.join(", ")),
    };
    context
        .events
        .send(&WorkerEvent::BuildFinished {
            worker: context.name.clone(),
            build_id: build.build_id,
            seq: running.next_seq(),
            results,
            state_string,
            finished_at: Utc::now(),
            steps: records,
            sent_at: Some(Utc::now()),
        })
        .await?;
    Ok(results)
}

/// What a build's steps share as they run one after another.
#[derive(Default)]
struct Running {
    /// The last event's sequence number.
    seq: i64,
    /// The build's artifacts so far, against its cap.
    artifact_bytes: u64,
    /// Properties its steps set (`set_property`).
    properties: BTreeMap<String, String>,
    /// How each step so far ended, by name.
    results: BTreeMap<String, Results>,
}

impl Running {
    fn next_seq(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    /// Why a step's `run_if` does not hold, if it does not.
    fn unmet(&self, condition: &RunIf) -> Option<String> {
        match condition {
            RunIf::Property { property } if self.properties.get(property).is_none_or(|v| v.is_empty()) => {
                Some(format!("property {property} is not set"))
            }
            RunIf::Step { step, results } => match self.results.get(step) {
                Some(ended) if results.contains(ended) => None,
                Some(ended) => Some(format!("{step} ended {ended}")),
                None => Some(format!("{step} did not run")),
            },
            RunIf::Property { .. } => None,
        }
    }
}

/// A builder's directory name: its name with anything unusual replaced.
fn directory_name(builder: &str) -> PathBuf {
    builder
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' })
        .collect::<String>()
        .into()
}

/// One step: reported started, run with its log streaming, reported
/// finished.
async fn run_step(
    context: &Context,
    build: &BuildAssignment,
    spec: &Step,
    number: i32,
    builder_dir: &std::path::Path,
    stop: &CancellationToken,
    running: &mut Running,
) -> Result<(StepRecord, step::StepOutcome), WorkerError> {
    let mut record = StepRecord {
        number,
        name: spec.name.clone(),
        started_at: Some(Utc::now()),
        finished_at: None,
        results: None,
        state_string: "running".into(),
        logs: vec![LogRecord { slug: STDIO_LOG.into(), name: STDIO_LOG.into(), chunks: 0, bytes: 0 }],
        test_summary: None,
        files: Vec::new(),
        properties: BTreeMap::new(),
    };
    let (worker, build_id) = (context.name.clone(), build.build_id);
    let started = WorkerEvent::StepStarted {
        worker: worker.clone(),
        build_id,
        seq: running.next_seq(),
        step: record.clone(),
        sent_at: Some(Utc::now()),
    };
    context.events.send(&started).await?;

    let key = context.namespace.log_stream_key(&context.name, build.build_id, number, STDIO_LOG);
    let spool = context.basedir.join(".spool").join(format!("{}-{number}-{STDIO_LOG}", build.build_id));
    let filter = LogFilter::new(build.secrets.0.values().cloned(), build.max_log_bytes);
    let log = LogWriter::start(context.redis.clone(), key, spool, filter);
    let setting = step::Setting {
        basedir: &context.basedir,
        base_env: &context.step_environment,
        secrets: &build.secrets.0,
        set: &running.properties,
        builder_dir,
    };
    let outcome = step::run_step(spec, setting, &log, stop).await;
    if let (Some(name), Some(value), Results::Success) = (&spec.set_property, &outcome.output, outcome.results) {
        running.properties.insert(name.clone(), value.clone());
        record.properties.insert(name.clone(), value.clone());
    }
    // Whatever the step's result: failed tests' results matter most.
    let stream_key = |index| context.namespace.file_stream_key(&context.name, build.build_id, number, index);
    let files =
        StepFiles { redis: context.redis.clone(), builder_dir, limits: build.file_limits, stream_key: &stream_key };
    record.files = files::send(files, spec, &log, &mut running.artifact_bytes).await;
    let totals = log.finish().await;

    record.finished_at = Some(Utc::now());
    record.results = Some(outcome.results);
    record.state_string = outcome.state_string.clone();
    record.logs[0].chunks = totals.entries;
    record.logs[0].bytes = totals.bytes;
    record.test_summary = outcome.test_summary.clone();
    if let Some(counter) = outcome.warnings.as_ref().filter(|counter| counter.count > 0) {
        // The lines the pattern matched, masked like the step's own log.
        let key = context.namespace.log_stream_key(&context.name, build.build_id, number, WARNINGS_LOG);
        let spool = context.basedir.join(".spool").join(format!("{}-{number}-{WARNINGS_LOG}", build.build_id));
        let filter = LogFilter::new(build.secrets.0.values().cloned(), build.max_log_bytes);
        let log = LogWriter::start(context.redis.clone(), key, spool, filter);
        log.write(LogChannel::Stdout, counter.kept.clone()).await;
        if counter.dropped > 0 {
            let note = format!("... and {} more warnings, not kept here (see the stdio log)\n", counter.dropped);
            log.write(LogChannel::Header, note.into_bytes()).await;
        }
        let totals = log.finish().await;
        record.logs.push(LogRecord {
            slug: WARNINGS_LOG.into(),
            name: WARNINGS_LOG.into(),
            chunks: totals.entries,
            bytes: totals.bytes,
        });
    }
    let finished = WorkerEvent::StepFinished {
        worker,
        build_id,
        seq: running.next_seq(),
        step: record.clone(),
        sent_at: Some(Utc::now()),
    };
    context.events.send(&finished).await?;
    tracing::info!(build.id = %build.build_id, step.name = %spec.name, step.results = %outcome.results, "step finished");

    Ok((record, outcome))
}
