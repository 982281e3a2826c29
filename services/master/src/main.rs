//! `buildmaster`: the master node's command line, as buildbot.python.org's
//! admins know it: `start`, `checkconfig`, `upgrade-master`, and the two
//! helpers for settings.yaml's `users`: `hash-password`, `new-token`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shared::config::{self, Config};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "buildmaster", version, about = "buildmaster master node")]
struct Cli {
    /// settings.yaml; default from BUILDMASTER_SETTINGS or PYBUILDBOT_SETTINGS_PATH.
    #[arg(long, global = true)]
    settings: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check settings.yaml and master.yaml; print every error with file:line:column.
    Checkconfig,
    /// Create the database if needed and apply the schema migrations.
    UpgradeMaster,
    /// Read a password from standard input and print its argon2 hash, for a
    /// user's `password_hash` in settings.yaml.
    HashPassword,
    /// Print a new API token (for the script) and its SHA-256 (for a user's
    /// `token_sha256` in settings.yaml).
    NewToken,
    /// Run a master until SIGTERM or Ctrl-C.
    Start {
        /// Address to serve HTTP on; default `web.listen` from settings.yaml.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// This master's name, unique among masters; default host:port.
        #[arg(long)]
        name: Option<String>,
    },
}

/// The `service.name` of a master's spans.
const SERVICE: &str = "buildmaster-master";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match start(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("buildmaster: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Telemetry is set up and shut down outside the async runtime: its exporter
/// runs on a thread of its own with a blocking HTTP client.
fn start(cli: Cli) -> anyhow::Result<ExitCode> {
    // `start` reads its configuration first, for the telemetry settings;
    // the other commands export no spans.
    let config = match &cli.command {
        Command::Start { .. } => Some(load(cli.settings.clone())?),
        _ => None,
    };
    let settings = config.as_ref().map(|c| c.settings.telemetry.clone()).unwrap_or_default();
    let telemetry = shared::telemetry::init(SERVICE, &settings)?;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let outcome = runtime.block_on(run(cli, config));
    drop(runtime);
    telemetry.shutdown();
    outcome
}

fn load(settings: Option<PathBuf>) -> Result<Config, config::ConfigErrors> {
    Config::load(&config::settings_path(settings)?)
}

async fn run(cli: Cli, config: Option<Config>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Checkconfig => match load(cli.settings) {
            Ok(config) => {
                println!("config is valid: {}", config.summary());
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{} error(s); nothing was changed", errors.0.len());
                Ok(ExitCode::FAILURE)
            }
        },
        Command::HashPassword => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password).context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                anyhow::bail!(
                    "no password on standard input; e.g. `read -rs pw && echo \"$pw\" | buildmaster hash-password`"
                );
            }
            println!("{}", master::auth::hash_password(password));
            Ok(ExitCode::SUCCESS)
        }
        Command::NewToken => {
            let (token, sha256) = master::auth::new_token();
            println!("token: {token}");
            println!("token_sha256: {sha256}");
            eprintln!(
                "Give the token to the script (it is shown only now); list the SHA-256 under the user's token_sha256."
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::UpgradeMaster => {
            let config = load(cli.settings)?;
            let applied = master::store::upgrade(config.settings.database_url.expose()).await?;
            println!("database schema is up to date ({applied} migration(s) applied now)");
            Ok(ExitCode::SUCCESS)
        }
        Command::Start { listen, name } => {
            let config = match config {
                Some(config) => config,
                None => load(cli.settings)?,
            };
            let address = listen.unwrap_or(config.settings.web.listen);
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}; is another master using it?"))?;
            let name = name.unwrap_or_else(|| format!("{}:{}", hostname(), address.port()));
            let shutdown = CancellationToken::new();
            let reload = Arc::new(Notify::new());
            tokio::spawn(stop_on_signal(shutdown.clone()));
            tokio::spawn(reload_on_sighup(reload.clone()));
            master::run(config, name, listener, shutdown, reload).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "master".into())
}

/// `make update-master` sends SIGHUP to running masters after checking the
/// configuration: reload it.
async fn reload_on_sighup(reload: Arc<Notify>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs");
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        reload.notify_one();
    }
}

/// Cancels on the first SIGTERM or Ctrl-C, so in-flight work finishes.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested; finishing in-flight work");
    shutdown.cancel();
}
