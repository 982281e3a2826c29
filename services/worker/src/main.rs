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
    match start(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("buildmaster-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Telemetry is set up and shut down outside the async runtime: its exporter
/// runs on a thread of its own with a blocking HTTP client.
fn start(cli: Cli) -> anyhow::Result<()> {
    let file = shared::config::load_worker_file(&cli.config)?;
    let telemetry = shared::telemetry::init("buildmaster-worker", &file.telemetry)?;
    // One thread is plenty: a worker waits on pipes and sockets, its steps
    // run in processes of their own, and every extra thread costs memory.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime starts");
    let outcome = runtime.block_on(run_worker(cli, file));
    drop(runtime);
    telemetry.shutdown();
    outcome
}

async fn run_worker(cli: Cli, file: shared::config::WorkerFile) -> anyhow::Result<()> {
    if let Some(address) = file.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address).await.map_err(|error| {
            anyhow::anyhow!("cannot serve metrics on {address} (metrics_listen in worker.yaml): {error}")
        })?;
        tokio::spawn(async move {
            if let Err(error) = worker::metrics::serve(listener).await {
                tracing::error!(%error, %address, "metrics endpoint stopped");
            }
        });
    }
    let options = worker::WorkerOptions {
        amqp_url: file.amqp_url.expose().to_owned(),
        redis_url: file.redis_url.expose().to_owned(),
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
