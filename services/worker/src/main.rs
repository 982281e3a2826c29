//! `buildmaster-worker`: runs a remote worker from its worker.yaml.
//! SIGTERM drains (no new builds, running ones finish); a second SIGTERM or
//! Ctrl-C stops the running builds, which end CANCELLED.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "buildmaster-worker", version, about = "buildmaster worker")]
struct Cli {
    /// worker.yaml
    #[arg(long, env = "BUILDMASTER_WORKER_CONFIG")]
    config: PathBuf,
    /// Stop running builds at the first SIGTERM instead of letting them finish.
    #[arg(long)]
    now: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    shared::telemetry::init();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("buildmaster-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = shared::config::load_worker_file(&cli.config)?;
    let password = file.password.expose();
    let options = worker::WorkerOptions {
        amqp_url: with_credentials(file.amqp_url.expose(), &file.name, password),
        redis_url: with_credentials(file.redis_url.expose(), &file.name, password),
        name: file.name,
        namespace: file.namespace,
        basedir: file.basedir,
    };
    let drain = CancellationToken::new();
    let stop_builds = CancellationToken::new();
    if cli.now {
        tokio::spawn(on_signals(drain.clone(), drain.clone()));
        worker::run(options, drain.clone(), drain).await?;
    } else {
        tokio::spawn(on_signals(drain.clone(), stop_builds.clone()));
        worker::run(options, drain, stop_builds).await?;
    }
    Ok(())
}

async fn on_signals(drain: CancellationToken, stop_builds: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("draining: no new builds; send SIGTERM again to stop the running ones");
    drain.cancel();
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping the running builds");
    stop_builds.cancel();
}

/// Puts the worker's own name and password into a URL that has none.
fn with_credentials(url: &str, name: &str, password: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    if rest[..authority_end].contains('@') {
        return url.to_owned();
    }
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!("{scheme}://{}:{}@{rest}", encode(name), encode(password))
}
