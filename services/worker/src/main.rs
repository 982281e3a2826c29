//! `buildmaster-worker`: runs a remote worker from its worker.yaml, or
//! writes one (`create-worker`, as Buildbot's volunteers know it).
//! SIGTERM drains (no new builds, running ones finish); a second SIGTERM or
//! Ctrl-C stops the running builds, which end CANCELLED.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "buildmaster-worker", version, about = "buildmaster worker")]
struct Cli {
    /// worker.yaml (to run a worker)
    #[arg(long, env = "BUILDMASTER_WORKER_CONFIG", required = false)]
    config: Option<PathBuf>,
    /// Stop running builds at the first SIGTERM instead of letting them finish.
    #[arg(long)]
    now: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Write BASEDIR/worker.yaml for a worker the masters know by NAME and
    /// PASSWORD (from their settings.yaml), then run it with
    /// `buildmaster-worker --config BASEDIR/worker.yaml`.
    CreateWorker {
        basedir: PathBuf,
        /// RabbitMQ URL, e.g. amqp://host:5672/%2f (with credentials only
        /// with --shared-login)
        amqp_url: String,
        name: String,
        password: String,
        /// Redis URL; default redis://HOST:6379/ with the RabbitMQ URL's host.
        #[arg(long)]
        redis_url: Option<String>,
        /// Must equal the masters' `namespace`.
        #[arg(long, default_value = "buildmaster")]
        namespace: String,
        /// Who looks after this worker, e.g. "Jane Doe <jane@example.org>".
        #[arg(long)]
        admin: Option<String>,
        /// Log in with the credentials in the URLs, shared by all workers,
        /// instead of as this worker's own account (for masters without
        /// `worker_accounts` in settings.yaml).
        #[arg(long)]
        shared_login: bool,
        /// Replace an existing worker.yaml.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::CreateWorker {
        basedir,
        amqp_url,
        name,
        password,
        redis_url,
        namespace,
        admin,
        shared_login,
        force,
    }) = cli.command
    {
        let created =
            create_worker(&basedir, &amqp_url, &name, &password, redis_url, &namespace, admin, shared_login, force);
        return match created {
            Ok(path) => {
                println!("wrote {}; run: buildmaster-worker --config {}", path.display(), path.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("buildmaster-worker: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
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
    let Some(config) = &cli.config else {
        anyhow::bail!("give --config worker.yaml (or BUILDMASTER_WORKER_CONFIG); `create-worker` writes one");
    };
    let file = shared::config::load_worker_file(config)?;
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
    let account = (file.login == shared::config::WorkerLogin::OwnAccount).then(|| worker::Account {
        user: shared::names::Namespace::new(&file.namespace).worker_account(&file.name),
        password: file.password.expose().to_owned(),
    });
    let options = worker::WorkerOptions {
        amqp_url: file.amqp_url.expose().to_owned(),
        redis_url: file.redis_url.expose().to_owned(),
        account,
        name: file.name,
        namespace: file.namespace,
        basedir: file.basedir,
        admin: file.admin,
        step_environment: file.step_environment.resolve(std::env::vars()),
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

/// Writes `basedir/worker.yaml` (readable by its owner only: it holds the
/// password) and checks it loads.
#[expect(clippy::too_many_arguments, reason = "one call site: the command line's arguments")]
fn create_worker(
    basedir: &Path,
    amqp_url: &str,
    name: &str,
    password: &str,
    redis_url: Option<String>,
    namespace: &str,
    admin: Option<String>,
    shared_login: bool,
    force: bool,
) -> anyhow::Result<PathBuf> {
    let uri =
        shared::amqp::uri(amqp_url).map_err(|error| anyhow::anyhow!("invalid RabbitMQ URL `{amqp_url}`: {error}"))?;
    let redis_url = redis_url.unwrap_or_else(|| format!("redis://{}:6379/", uri.authority.host));
    std::fs::create_dir_all(basedir).with_context(|| format!("cannot create {}", basedir.display()))?;
    let path = basedir.join("worker.yaml");
    if path.exists() && !force {
        anyhow::bail!("{} exists; pass --force to replace it", path.display());
    }
    let quote = |text: &str| serde_json::to_string(text).expect("strings serialize");
    let mut yaml = format!(
        "# Written by `buildmaster-worker create-worker`. Run: buildmaster-worker --config {path}\n\
         name: {name}\npassword: {password}\namqp_url: {amqp}\nredis_url: {redis}\nnamespace: {namespace}\nbasedir: .\n",
        path = path.display(),
        name = quote(name),
        password = quote(password),
        amqp = quote(amqp_url),
        redis = quote(&redis_url),
        namespace = quote(namespace),
    );
    if shared_login {
        yaml.push_str("login: from_urls\n");
    }
    if let Some(admin) = admin {
        yaml.push_str(&format!("admin: {}\n", quote(&admin)));
    }
    // Written whole to a new owner-only file, checked, then renamed over
    // the old one: a bad value never replaces a working worker.yaml, and
    // the password is never readable by others, not even for a moment.
    let draft = basedir.join(".worker.yaml.new");
    let _ = std::fs::remove_file(&draft);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&draft).with_context(|| format!("cannot write {}", draft.display()))?;
    std::io::Write::write_all(&mut file, yaml.as_bytes())?;
    drop(file);
    if let Err(errors) = shared::config::load_worker_file(&draft) {
        let _ = std::fs::remove_file(&draft);
        anyhow::bail!("these values do not make a valid worker.yaml; nothing was written:\n{errors}");
    }
    std::fs::rename(&draft, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
