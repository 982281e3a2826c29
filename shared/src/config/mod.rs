//! Configuration users write, typed, loaded and validated in one place.
//!
//! Two files, as on buildbot.python.org: `master.yaml` (builders, factories,
//! schedulers; kept in the configuration's git repository and reloaded live;
//! `master.rs`) and `settings.yaml` (service URLs, workers and their
//! passwords, web settings; private to the host; `settings.rs`). A remote
//! worker has its own small file, `worker.yaml` (`worker_file.rs`).
//!
//! Every field's `///` doc is its reference. Loading never stops at the first
//! problem: it collects every error with its file, line, column and a hint
//! (`diagnostics.rs`), so `buildmaster checkconfig` can show them all at once.
//! Parsing checks each value on its own; `validate.rs` checks what needs
//! more than one.

mod branches;
mod diagnostics;
pub mod expr;
mod factories;
pub mod interpolate;
mod master;
mod matrix;
mod python_org;
pub mod reporters;
mod resolve;
mod settings;
mod sign_in;
mod source_map;
mod steps;
mod validate;
mod worker_file;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use branches::{BranchConfig, BranchSelector};
pub use diagnostics::{ConfigError, ConfigErrors};
pub use factories::FactoryConfig;
pub use master::{
    BuilderConfig, BuilderSelection, ForceParameter, MasterConfig, PollerConfig, ReleaseBoardConfig, SchedulerConfig,
    path_matches,
};
pub use settings::*;
pub use sign_in::{GitHubSignIn, OidcProvider, SignInSettings};
pub use source_map::{Position, SourceMap, YamlPath};
pub use steps::{COMPILER_WARNINGS, StepCommand, StepSpec, TestSummarySpec, WarningsSpec, check_file_glob};
pub use worker_file::{WorkerFile, WorkerLogin, load_worker_file};

use diagnostics::SourceFile;

/// Environment variables that name the settings file, in order of precedence
/// (after `--settings`). The second is the one buildbot.python.org's own
/// instructions use.
pub const SETTINGS_ENV_VARS: [&str; 2] = ["BUILDMASTER_SETTINGS", "PYBUILDBOT_SETTINGS_PATH"];

/// Workers' passwords must be at least this long, as buildbot.python.org asks.
pub const MIN_WORKER_PASSWORD_CHARS: usize = 14;

/// A string that must never be printed: passwords and URLs that carry them.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Everything a master runs from: both files, checked against each other.
#[derive(Debug, Clone)]
pub struct Config {
    pub settings_path: PathBuf,
    pub master_config_path: PathBuf,
    pub settings: Settings,
    pub master: MasterConfig,
}

/// Finds the settings file: `--settings`, else the environment.
pub fn settings_path(from_command_line: Option<PathBuf>) -> Result<PathBuf, ConfigErrors> {
    if let Some(path) = from_command_line {
        return Ok(path);
    }
    for var in SETTINGS_ENV_VARS {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(value));
        }
    }
    Err(ConfigErrors(vec![ConfigError {
        file: PathBuf::from("settings.yaml"),
        position: None,
        message: "no settings file given".into(),
        hint: Some(format!("pass --settings PATH or set {} or {}", SETTINGS_ENV_VARS[0], SETTINGS_ENV_VARS[1])),
    }]))
}

impl Config {
    /// Loads and validates settings.yaml and the master.yaml it points at.
    pub fn load(settings_path: &Path) -> Result<Config, ConfigErrors> {
        let settings_dir = settings_path.parent().unwrap_or(Path::new(".")).to_owned();
        let (mut settings_file, settings_text) = SourceFile::read(settings_path).map_err(|e| ConfigErrors(vec![e]))?;
        let settings = settings_file.parse_yaml(&settings_text).and_then(|mut value| {
            python_org::translate(&mut settings_file, &mut value);
            let workers_by_name = matches!(value.get("workers"), Some(serde_yaml::Value::Mapping(_)));
            let mut settings = settings_file.deserialize::<Settings>(&YamlPath::root(), value)?;
            settings.workers_by_name = workers_by_name;
            Some(settings)
        });
        let Some(mut settings) = settings else {
            return Err(ConfigErrors(settings_file.errors));
        };
        settings.apply_owners(&mut settings_file);
        settings.master_config = settings_dir.join(&settings.master_config);
        settings.local_worker.basedir = settings_dir.join(&settings.local_worker.basedir);
        if let Some(app) = settings.github.as_mut().and_then(|github| github.app.as_mut()) {
            app.private_key_file = settings_dir.join(&app.private_key_file);
        }

        let master_config_path = settings.master_config.clone();
        let (mut master_file, master_text) = match SourceFile::read(&master_config_path) {
            Ok(read) => read,
            Err(error) => {
                let mut errors = settings_file.errors;
                errors.push(error);
                return Err(ConfigErrors(errors));
            }
        };
        let master_dir = master_config_path.parent().unwrap_or(Path::new(".")).to_owned();
        let (mut master, mut factories_file) = master::parse(&mut master_file, &master_text, &master_dir);
        validate::settings(&mut settings_file, &settings);
        if let Some(master) = &mut master {
            let mut files = resolve::Files {
                settings: &mut settings_file,
                master: &mut master_file,
                factories: factories_file.as_mut(),
            };
            resolve::resolve(&mut files, master, &settings);
            validate::master(&mut master_file, master, &settings);
        }

        let mut errors = settings_file.errors;
        errors.extend(master_file.errors);
        errors.extend(factories_file.map(|file| file.errors).unwrap_or_default());
        match master {
            Some(master) if errors.is_empty() => {
                Ok(Config { settings_path: settings_path.to_owned(), master_config_path, settings, master })
            }
            _ => Err(ConfigErrors(errors)),
        }
    }

    pub fn builder(&self, name: &str) -> Option<&BuilderConfig> {
        self.master.builders.iter().find(|b| b.name == name)
    }

    /// Whether `worker` may run `builder`: listed by name, or a local worker
    /// where the builder lists the local workers or uses
    /// `local_worker_buildfactory`.
    pub fn may_run(&self, builder: &BuilderConfig, worker: &str, is_local: bool) -> bool {
        if is_local {
            builder.factory == self.settings.local_worker_buildfactory
                || builder.workers.iter().any(|w| *w == *self.settings.local_worker.name)
        } else {
            builder.workers.iter().any(|w| *w == *worker)
        }
    }

    /// The builders a worker may run.
    pub fn builders_for_worker(&self, worker: &str, is_local: bool) -> Vec<&BuilderConfig> {
        self.master.builders.iter().filter(|b| self.may_run(b, worker, is_local)).collect()
    }

    pub fn worker(&self, name: &str) -> Option<&WorkerSettings> {
        self.settings.workers.iter().find(|w| w.name == name)
    }

    /// A short summary for `checkconfig`.
    pub fn summary(&self) -> String {
        let steps: usize = self.master.builders.iter().map(|b| b.steps.len()).sum();
        let definitions: std::collections::BTreeSet<usize> =
            self.master.builders.iter().map(|b| b.definition).collect();
        format!(
            "{} builders ({} definitions, {} steps), {} factories, {} schedulers, {} workers{}",
            self.master.builders.len(),
            definitions.len(),
            steps,
            self.master.factories.len(),
            self.master.schedulers.len(),
            self.settings.workers.len(),
            if self.settings.use_local_worker { " and a local worker" } else { "" },
        )
    }
}
