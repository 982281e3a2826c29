//! Runs one step's command: in its own process group, in the builder's
//! directory, with its environment, streaming stdout and stderr as they come.
//! A step that is silent for `timeout`, runs past `max_time` or is stopped is
//! killed with its whole group (SIGTERM, then SIGKILL after `kill_grace`), so
//! nothing it started is left behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use shared::config::interpolate;
use shared::model::Results;
use shared::wire::{Command as StepCommand, LogChannel, Step, TestSummary};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::logs::LogWriter;
use crate::summary::SummaryReader;
use crate::warnings::WarningCounter;

/// How a step ended.
pub struct StepOutcome {
    pub results: Results,
    pub state_string: String,
    /// What its warnings pattern matched, when it has one.
    pub warnings: Option<WarningCounter>,
    /// What its test runner's summary said, when it has a rule and printed one.
    pub test_summary: Option<TestSummary>,
    /// Its standard output, trimmed, when it sets a property.
    pub output: Option<String>,
}

#[derive(Clone, Copy)]
enum KillReason {
    Silent,
    TooLong,
    Stopped,
}

const READ_BUFFER: usize = 64 * 1024;

/// The most output a step setting a property keeps for it.
const PROPERTY_BYTES: usize = 64 * 1024;

/// Where a step runs and what it is given.
pub struct Setting<'a> {
    pub basedir: &'a Path,
    pub base_env: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, String>,
    /// Properties earlier steps of the build set.
    pub set: &'a BTreeMap<String, String>,
    pub builder_dir: &'a Path,
}

pub async fn run_step(spec: &Step, setting: Setting<'_>, log: &LogWriter, stop: &CancellationToken) -> StepOutcome {
    let Setting { basedir, base_env, secrets, set, builder_dir } = setting;
    // A master leaves properties earlier steps set for the worker to put in.
    let late = |text: &str| match spec.late_properties {
        true => interpolate::on_worker(text, &BTreeMap::new(), set).unwrap_or_else(|_| text.to_owned()),
        false => text.to_owned(),
    };
    let argv = match &spec.command {
        StepCommand::Argv(words) => words.iter().map(|word| late(word)).collect(),
        StepCommand::Shell(_) => spec.command.argv(),
    };
    let spec_workdir = late(&spec.workdir);
    let workdir = builder_dir.join(&spec_workdir);
    // A workdir made from properties must not leave the builder's
    // directory (a forced `dir=/home/worker` or `../..`).
    let relative = Path::new(&spec_workdir);
    if relative.is_absolute() || relative.components().any(|part| matches!(part, std::path::Component::ParentDir)) {
        let message = format!("workdir `{spec_workdir}` leaves the builder's directory; refusing to run\n");
        log.write(LogChannel::Header, message.into_bytes()).await;
        return StepOutcome {
            results: Results::Exception,
            state_string: "workdir outside the builder".into(),
            warnings: None,
            test_summary: None,
            output: None,
        };
    }
    log.write(LogChannel::Header, format!("{}\n in dir {}\n", shell_words(&argv), workdir.display()).into_bytes())
        .await;
    if let Err(error) = tokio::fs::create_dir_all(&workdir).await {
        let message = format!("cannot create the step's directory {}: {error}\n", workdir.display());
        log.write(LogChannel::Header, message.into_bytes()).await;
        return StepOutcome {
            results: Results::Exception,
            state_string: "cannot create workdir".into(),
            warnings: None,
            test_summary: None,
            output: None,
        };
    }
    let mut env = BTreeMap::new();
    for (name, value) in &spec.env {
        match interpolate::on_worker(value, secrets, set) {
            Ok(value) => {
                env.insert(name, value);
            }
            Err(missing) => {
                let message = format!("secret `{missing}` (in env {name}) was not sent by the masters\n");
                log.write(LogChannel::Header, message.into_bytes()).await;
                return StepOutcome {
                    results: Results::Exception,
                    state_string: "missing secret".into(),
                    warnings: None,
                    test_summary: None,
                    output: None,
                };
            }
        }
    }
    let spawned = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(&workdir)
        // A defined environment: what the worker passes on and sets for
        // every step, then the step's own; nothing else of the worker's.
        .env_clear()
        .envs(base_env)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let message = format!("cannot start `{}`: {error}\n", argv[0]);
            log.write(LogChannel::Header, message.into_bytes()).await;
            return StepOutcome {
                results: Results::Failure,
                state_string: format!("cannot start {}", argv[0]),
                warnings: None,
                test_summary: None,
                output: None,
            };
        }
    };
    let group = Pid::from_raw(child.id().expect("a child that was just spawned has an id") as i32);
    // Noted until the group is killed below, so that a worker killed
    // meanwhile leaves nothing its successor does not find.
    let _noted = crate::groups::note(basedir, group.as_raw());

    let (output, mut outputs) = mpsc::channel(16);
    tokio::spawn(read_pipe(child.stdout.take().expect("stdout is piped"), LogChannel::Stdout, output.clone()));
    tokio::spawn(read_pipe(child.stderr.take().expect("stderr is piped"), LogChannel::Stderr, output));

    let started = Instant::now();
    let silence_limit = Duration::from_secs(spec.timeout);
    let time_limit = spec.max_time.map(|seconds| started + Duration::from_secs(seconds));
    let far_future = started + Duration::from_secs(100 * 365 * 24 * 3600);
    let mut last_output = started;
    let mut pipes_open = true;
    let mut exit_status = None;
    let mut killed: Option<KillReason> = None;
    let mut sigkill_at: Option<Instant> = None;
    // Output read from the step but not yet taken by the log writer (Redis
    // is slower than the step, or away). The loop never waits on the log:
    // stop, max_time and the process's end are served meanwhile, and the
    // step, whose pipes are no longer read, waits for the log instead of
    // being counted silent.
    let mut pending: Option<(LogChannel, Vec<u8>)> = None;
    let mut warnings = spec.warnings.as_ref().and_then(|warnings| WarningCounter::new(&warnings.pattern));
    let mut summary = spec.test_summary.as_ref().and_then(SummaryReader::new);
    let mut output = spec.set_property.as_ref().map(|_| Vec::new());

    while pipes_open || exit_status.is_none() || pending.is_some() {
        let running = exit_status.is_none();
        tokio::select! {
            piece = outputs.recv(), if pipes_open && pending.is_none() => match piece {
                Some(piece) => {
                    if let Some(counter) = &mut warnings {
                        counter.feed(piece.0, &piece.1);
                    }
                    if let Some(reader) = &mut summary {
                        reader.feed(piece.0, &piece.1);
                    }
                    if let Some(kept) = output.as_mut().filter(|_| piece.0 == LogChannel::Stdout) {
                        let room = PROPERTY_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&piece.1[..piece.1.len().min(room)]);
                    }
                    pending = Some(piece);
                }
                None => pipes_open = false,
            },
            permit = log.reserve(), if pending.is_some() => {
                if let (Some(permit), Some(piece)) = (permit, pending.take()) {
                    permit.send(piece);
                }
                last_output = Instant::now();
            },
            status = child.wait(), if running => {
                exit_status = Some(status);
                // Whatever the step left running in its group would hold the
                // pipes open and outlive the build.
                let _ = killpg(group, Signal::SIGKILL);
            }
            _ = tokio::time::sleep_until(last_output + silence_limit), if running && killed.is_none() && pending.is_none() => {
                killed = Some(KillReason::Silent);
                sigkill_at = Some(terminate(group, spec.kill_grace));
            }
            _ = tokio::time::sleep_until(time_limit.unwrap_or(far_future)), if running && killed.is_none() && time_limit.is_some() => {
                killed = Some(KillReason::TooLong);
                sigkill_at = Some(terminate(group, spec.kill_grace));
            }
            _ = stop.cancelled(), if running && killed.is_none() => {
                killed = Some(KillReason::Stopped);
                sigkill_at = Some(terminate(group, spec.kill_grace));
            }
            _ = tokio::time::sleep_until(sigkill_at.unwrap_or(far_future)), if running && sigkill_at.is_some() => {
                let _ = killpg(group, Signal::SIGKILL);
                sigkill_at = None;
            }
        }
    }

    let elapsed = started.elapsed();
    let status = exit_status.expect("the loop ends after the child exited");
    let (results, state_string, footer) = match (killed, status) {
        (Some(KillReason::Silent), _) => (
            Results::Failure,
            format!("timed out after {}s without output", spec.timeout),
            format!("command timed out: {} seconds without output, killed its process group", spec.timeout),
        ),
        (Some(KillReason::TooLong), _) => {
            let limit = spec.max_time.unwrap_or_default();
            (
                Results::Failure,
                format!("killed after max_time {limit}s"),
                format!("command timed out: {limit} seconds elapsed (max_time), killed its process group"),
            )
        }
        (Some(KillReason::Stopped), _) => {
            (Results::Cancelled, "cancelled".to_owned(), "command stopped, killed its process group".to_owned())
        }
        (None, Ok(status)) => match status.code() {
            Some(code) => {
                let results = spec.result_for_exit_code(code);
                (results, format!("exit code {code}"), format!("program finished with exit code {code}"))
            }
            None => {
                let signal = std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or_default();
                (
                    Results::Failure,
                    format!("killed by signal {signal}"),
                    format!("program was killed by signal {signal}"),
                )
            }
        },
        (None, Err(error)) => {
            (Results::Exception, "lost track of the process".into(), format!("cannot wait for the process: {error}"))
        }
    };
    log.write(LogChannel::Header, format!("{footer}\nelapsedTime={:.6}\n", elapsed.as_secs_f64()).into_bytes()).await;
    let (mut results, mut state_string) = (results, state_string);
    if let (Some(counter), Some(limits)) = (&mut warnings, &spec.warnings) {
        counter.finish();
        if counter.count > 0 {
            let plural = if counter.count == 1 { "" } else { "s" };
            state_string = format!("{state_string}; {} warning{plural}", counter.count);
        }
        // Warnings make a success orange; they do not soften a failure.
        if results == Results::Success && counter.count > u64::from(limits.max) {
            results = Results::Warnings;
        }
    }
    let test_summary = summary.and_then(SummaryReader::finish);
    if let Some(summary) = test_summary.as_ref().filter(|summary| !summary.failed.is_empty()) {
        let plural = if summary.failed.len() == 1 { "" } else { "s" };
        state_string = format!("{state_string}; {} test{plural} failed", summary.failed.len());
    }
    let output = output.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    StepOutcome { results, state_string, warnings, test_summary, output }
}

/// Sends SIGTERM to the group and says when SIGKILL follows.
fn terminate(group: Pid, grace_seconds: u64) -> Instant {
    let _ = killpg(group, Signal::SIGTERM);
    Instant::now() + Duration::from_secs(grace_seconds)
}

async fn read_pipe(mut pipe: impl AsyncRead + Unpin, channel: LogChannel, output: mpsc::Sender<(LogChannel, Vec<u8>)>) {
    let mut buffer = vec![0u8; READ_BUFFER];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if output.send((channel, buffer[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The command as a person would type it, for the log's header.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
