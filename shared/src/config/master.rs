//! `master.yaml`: what to build (builders, factories), when (schedulers)
//! and from where (pollers). Kept in the configuration's git repository and
//! reloaded live. Each item of each list is parsed on its own, so one bad
//! builder does not hide the errors of the next.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::ids::{BuilderName, WorkerName};

use super::branches::BranchConfig;
use super::diagnostics::{ConfigError, SourceFile};
use super::factories::{self, FactoryConfig, FactoryFile};
use super::reporters::{self, ReporterConfig};
use super::steps::StepSpec;
use super::{YamlPath, matrix};

/// `master.yaml`: what to build, how, and when.
#[derive(Debug, Clone, Default)]
pub struct MasterConfig {
    /// The lines of development builders are expanded over, newest first.
    pub branches: Vec<BranchConfig>,
    pub builders: Vec<BuilderConfig>,
    /// Named step lists, shared by builders, with what they inherit.
    pub factories: BTreeMap<String, FactoryConfig>,
    /// Which factories came from `factories_file` (for errors).
    pub(super) factories_in_file: std::collections::BTreeSet<String>,
    /// The schedulers whose `builders` select by tag: index, selection and
    /// the scheduler as written, read again once the builders are known.
    pub(super) scheduler_selections: Vec<(usize, BuilderSelection, serde_yaml::Value)>,
    pub schedulers: Vec<SchedulerConfig>,
    /// Repositories polled for new commits (for those that send no
    /// webhook).
    pub pollers: Vec<PollerConfig>,
    /// Who hears of builds, and what they are told.
    pub reporters: Vec<ReporterConfig>,
    /// The release status board (`/release`), when configured.
    pub release_board: Option<ReleaseBoardConfig>,
}

/// What a release manager watches before tagging: per branch, the builders
/// of the given tags, green or red.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBoardConfig {
    /// Branches, in the order shown (e.g. `[main, "3.14", "3.13"]`).
    pub branches: Vec<String>,
    /// Builders with any of these tags count (e.g. `[stable, tier-1]`).
    pub tags: Vec<String>,
}

/// A git repository whose branches any master polls; each new commit
/// becomes one change, handed to the branch schedulers like a push.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollerConfig {
    pub repourl: String,
    pub branches: Vec<String>,
    #[serde(default = "default_poll_seconds")]
    pub poll_seconds: u64,
}

fn default_poll_seconds() -> u64 {
    60
}

/// The top level of master.yaml; each item is parsed on its own so that one
/// bad builder does not hide the errors of the next.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MasterConfigFile {
    #[serde(default)]
    branches: Vec<serde_yaml::Value>,
    /// Builders' default for `collapse_requests`.
    #[serde(default)]
    collapse_requests: bool,
    /// A file (relative to master.yaml) whose `factories:` are added.
    factories_file: Option<std::path::PathBuf>,
    #[serde(default)]
    builders: Vec<serde_yaml::Value>,
    #[serde(default)]
    factories: BTreeMap<String, serde_yaml::Value>,
    #[serde(default)]
    schedulers: Vec<serde_yaml::Value>,
    #[serde(default)]
    pollers: Vec<serde_yaml::Value>,
    #[serde(default)]
    reporters: Vec<serde_yaml::Value>,
    release_board: Option<serde_yaml::Value>,
}

/// A builder: a name people see, the factory it runs, who may run it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderConfig {
    pub name: BuilderName,
    /// Name of an entry of `factories`.
    pub factory: String,
    /// Names of workers (from settings.yaml) allowed to run it; the local
    /// workers' name (`local_worker.name`, default `local`) stands for every
    /// master's local worker. The local workers also serve the builders of
    /// `local_worker_buildfactory` without being listed.
    #[serde(default)]
    pub workers: Vec<WorkerName>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// A new request supersedes this builder's older pending requests of
    /// the same branch, which end SKIPPED: build the newest, not each one.
    /// Default: master.yaml's top-level `collapse_requests`.
    #[serde(rename = "collapse_requests", default, deserialize_with = "some_bool")]
    collapse_given: Option<bool>,
    #[serde(skip)]
    pub collapse_requests: bool,
    /// Properties of every build of this builder, source `Builder`; a
    /// matrix adds its axes' values.
    #[serde(default)]
    pub properties: BTreeMap<String, serde_yaml::Value>,
    /// Axes to expand this definition over, one builder per combination:
    /// `matrix: {branch: [main, "3.14"]}` with `name: "Fedora {branch}"`.
    /// Each value is also a tag and a property of its builder; `{axis}` is
    /// replaced in the name, the factory and the workers.
    #[serde(default)]
    pub matrix: BTreeMap<String, Vec<String>>,
    /// Combinations left out, e.g. `[{branch: "3.13", arch: arm64}]`.
    #[serde(default)]
    pub exclude: Vec<BTreeMap<String, String>>,
    /// The branches of master.yaml's `branches:` to build, one builder
    /// each, named `NAME BRANCH` (or with `{branch}` where the name puts
    /// it): `all`, a list, `{since: NAME}` or `{until: NAME}`.
    #[serde(default)]
    pub(super) branches: Option<serde_yaml::Value>,
    /// The branch (of `branches:`) it was expanded for.
    #[serde(skip)]
    pub branch: Option<String>,
    /// Its steps, worked out from its factory for it (`factories.rs`).
    #[serde(skip)]
    pub steps: Vec<StepSpec>,
    /// Index of the definition in master.yaml's `builders:` (for errors).
    #[serde(skip)]
    pub definition: usize,
}

impl BuilderConfig {
    /// The options of [`crate::wire::STEP_OPTIONS`] its steps use, which
    /// only workers that honour them may run.
    pub fn step_options(&self) -> Vec<&'static str> {
        let [run_if, set_property] = crate::wire::STEP_OPTIONS;
        let mut options = Vec::new();
        if self.steps.iter().any(|step| step.run_if.is_some()) {
            options.push(run_if);
        }
        if self.steps.iter().any(|step| step.set_property.is_some()) {
            options.push(set_property);
        }
        options
    }
}

/// `collapse_requests: true` read as `Some(true)`.
fn some_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    bool::deserialize(deserializer).map(Some)
}

/// A scheduler's `builders` given by tag rather than by name: `all`, or
/// `{tags: [3.x], not_tags: [refleak]}` (every tag, none of the others).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuilderSelection {
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub not_tags: Vec<String>,
}

impl BuilderSelection {
    pub fn selects(&self, builder: &BuilderConfig) -> bool {
        self.tags.iter().all(|tag| builder.tags.contains(tag))
            && !self.not_tags.iter().any(|tag| builder.tags.contains(tag))
    }
}

/// What starts builds.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SchedulerConfig {
    /// The Force button and the `force` JSON-RPC method.
    Force {
        name: String,
        /// Builders it may force.
        builders: Vec<BuilderName>,
        /// Parameters of its form, each a build property: a default, and
        /// optionally the only values allowed or a pattern they must match.
        #[serde(default)]
        parameters: Vec<ForceParameter>,
        /// Whether properties other than `parameters` may be forced. They
        /// are data either way: a step gets a property's value as one word,
        /// never as code, and a builder's or worker's configured property
        /// cannot be replaced.
        #[serde(default = "super::steps::default_true")]
        other_properties: bool,
    },
    /// At the times a cron expression gives, in a time zone, like
    /// Buildbot's `Nightly`. Six fields, seconds first: `0 0 3 * * *` is
    /// 03:00 every day.
    Nightly {
        name: String,
        cron: String,
        /// An IANA time zone, e.g. `Europe/Amsterdam`; default UTC.
        #[serde(default = "default_timezone")]
        timezone: String,
        builders: Vec<BuilderName>,
        /// The `branch` property of its builds.
        branch: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, serde_yaml::Value>,
    },
    /// Builds each push to `branch` (GitHub webhook), like Buildbot's
    /// `SingleBranchScheduler`; a push touching only `ignore_files`
    /// patterns (e.g. `Doc/*`, `*.rst`) builds nothing.
    SingleBranch {
        name: String,
        branch: String,
        builders: Vec<BuilderName>,
        #[serde(default)]
        ignore_files: Vec<String>,
        /// Wait until no change came for this long, then build the newest
        /// (Buildbot's `treeStableTimer`); 0 builds each push at once.
        #[serde(default)]
        tree_stable_seconds: u64,
    },
    /// Builds each push to any branch, like Buildbot's `AnyBranchScheduler`;
    /// builds get the pushed branch as their `branch` property.
    AnyBranch {
        name: String,
        builders: Vec<BuilderName>,
        #[serde(default)]
        ignore_files: Vec<String>,
        /// As for `single_branch`, per branch.
        #[serde(default)]
        tree_stable_seconds: u64,
    },
    /// Builds pull requests, as buildbot.python.org does: adding the label
    /// `label` builds the builders tagged `label_tag`; a comment
    /// `!buildbot REGEX` from someone who may write to the repository
    /// builds those whose name matches.
    PullRequest {
        name: String,
        builders: Vec<BuilderName>,
        #[serde(default = "default_pr_label")]
        label: String,
        #[serde(default = "default_pr_label_tag")]
        label_tag: String,
    },
    /// Builds after each buildset of the scheduler `upstream` finished
    /// with SUCCESS or WARNINGS, with its properties, like Buildbot's
    /// `Dependent`.
    Dependent { name: String, upstream: String, builders: Vec<BuilderName> },
    /// Every `every_seconds`, counted from the Unix epoch (so every master
    /// agrees on the ticks), like Buildbot's `Periodic`.
    Periodic {
        name: String,
        every_seconds: u64,
        builders: Vec<BuilderName>,
        branch: Option<String>,
        #[serde(default)]
        properties: BTreeMap<String, serde_yaml::Value>,
    },
}

/// One parameter of a force scheduler's form.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForceParameter {
    pub name: String,
    /// Shown to people; default the name.
    pub label: Option<String>,
    #[serde(default)]
    pub default: String,
    /// The only values allowed (a drop-down in the form); any when empty.
    #[serde(default)]
    pub choices: Vec<String>,
    /// A regular expression every value must match whole, e.g.
    /// `[0-9]{1,3}` for a job count.
    pub pattern: Option<String>,
}

impl ForceParameter {
    /// Whether a forced `value` is allowed: one of the choices, and
    /// matching the pattern (one `checkconfig` accepted).
    pub fn allows(&self, value: &str) -> bool {
        let chosen = self.choices.is_empty() || self.choices.iter().any(|choice| choice == value);
        let matches = self.pattern.as_deref().is_none_or(|pattern| {
            regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|pattern| pattern.is_match(value))
        });
        chosen && matches
    }
}

pub(super) fn default_timezone() -> String {
    "UTC".into()
}

fn default_pr_label() -> String {
    ":hammer: test-with-buildbots".into()
}

fn default_pr_label_tag() -> String {
    "stable".into()
}

/// Whether `path` matches the glob `pattern` (`*` any run of characters,
/// `/` included; `?` one character), for `ignore_files`.
pub fn path_matches(pattern: &str, path: &str) -> bool {
    fn matches(pattern: &[u8], path: &[u8]) -> bool {
        match (pattern.first(), path.first()) {
            (None, None) => true,
            (Some(b'*'), _) => matches(&pattern[1..], path) || (!path.is_empty() && matches(pattern, &path[1..])),
            (Some(b'?'), Some(_)) => matches(&pattern[1..], &path[1..]),
            (Some(p), Some(c)) if p == c => matches(&pattern[1..], &path[1..]),
            _ => false,
        }
    }
    matches(pattern.as_bytes(), path.as_bytes())
}

impl SchedulerConfig {
    pub fn name(&self) -> &str {
        match self {
            SchedulerConfig::Force { name, .. }
            | SchedulerConfig::Nightly { name, .. }
            | SchedulerConfig::SingleBranch { name, .. }
            | SchedulerConfig::AnyBranch { name, .. }
            | SchedulerConfig::Dependent { name, .. }
            | SchedulerConfig::PullRequest { name, .. }
            | SchedulerConfig::Periodic { name, .. } => name,
        }
    }

    pub fn builders(&self) -> &[BuilderName] {
        match self {
            SchedulerConfig::Force { builders, .. }
            | SchedulerConfig::Nightly { builders, .. }
            | SchedulerConfig::SingleBranch { builders, .. }
            | SchedulerConfig::AnyBranch { builders, .. }
            | SchedulerConfig::Dependent { builders, .. }
            | SchedulerConfig::PullRequest { builders, .. }
            | SchedulerConfig::Periodic { builders, .. } => builders,
        }
    }

    /// A timed scheduler's ticks in `(after, until]`, oldest first; none
    /// for the others (or for a cron expression `checkconfig` refuses).
    pub fn ticks(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        match self {
            SchedulerConfig::Force { .. }
            | SchedulerConfig::SingleBranch { .. }
            | SchedulerConfig::AnyBranch { .. }
            | SchedulerConfig::Dependent { .. }
            | SchedulerConfig::PullRequest { .. } => Vec::new(),
            SchedulerConfig::Nightly { cron, timezone, .. } => {
                let (Ok(schedule), Ok(zone)) = (cron.parse::<cron::Schedule>(), timezone.parse::<chrono_tz::Tz>())
                else {
                    return Vec::new();
                };
                schedule
                    .after(&after.with_timezone(&zone))
                    .map(|tick| tick.with_timezone(&Utc))
                    .take_while(|tick| *tick <= until)
                    .collect()
            }
            SchedulerConfig::Periodic { every_seconds, .. } => {
                let every = (*every_seconds).max(1) as i64;
                let mut tick = (after.timestamp().div_euclid(every) + 1) * every;
                let mut ticks = Vec::new();
                while tick <= until.timestamp() {
                    ticks.extend(DateTime::from_timestamp(tick, 0));
                    tick += every;
                }
                ticks
            }
        }
    }
}

/// Parses master.yaml, item by item, and the factories file it names;
/// `None` when any item is wrong (its errors are in `file`, or in the
/// factories file, returned too).
pub(super) fn parse(
    file: &mut SourceFile,
    text: &str,
    dir: &std::path::Path,
) -> (Option<MasterConfig>, Option<SourceFile>) {
    let Some(value) = file.parse_yaml(text) else { return (None, None) };
    let root = YamlPath::root();
    let Some(top) = file.deserialize::<MasterConfigFile>(&root, value) else { return (None, None) };
    let mut config = MasterConfig::default();
    let mut complete = true;
    for (index, value) in top.branches.into_iter().enumerate() {
        let at = root.key("branches").index(index);
        match file.deserialize::<BranchConfig>(&at, value) {
            Some(branch) if config.branches.iter().any(|other| other.name == branch.name) => {
                file.error_at_value(&at.key("name"), format!("branch `{}` is listed twice", branch.name), None);
                complete = false;
            }
            Some(branch) => config.branches.push(branch),
            None => complete = false,
        }
    }
    for (index, value) in top.builders.into_iter().enumerate() {
        let at = root.key("builders").index(index);
        match file.deserialize::<BuilderConfig>(&at, value) {
            Some(mut builder) => {
                builder.definition = index;
                builder.collapse_requests = builder.collapse_given.unwrap_or(top.collapse_requests);
                match matrix::expand(file, &at, builder) {
                    Some(builders) => config.builders.extend(builders),
                    None => complete = false,
                }
            }
            None => complete = false,
        }
    }
    let mut templates = BTreeMap::new();
    for (name, value) in top.factories {
        match file.deserialize::<FactoryFile>(&root.key("factories").key(name.clone()), value) {
            Some(factory) => {
                templates.insert(name, factory);
            }
            None => complete = false,
        }
    }
    let mut factories_file = None;
    if let Some(path) = top.factories_file {
        match read_factories_file(&dir.join(&path)) {
            Ok((mut other, found)) => {
                for (name, factory) in found {
                    if templates.contains_key(&name) {
                        other.error_at(
                            &root.key("factories").key(name.clone()),
                            format!("factory `{name}` is also defined in master.yaml"),
                            Some("define each factory once".into()),
                        );
                        continue;
                    }
                    config.factories_in_file.insert(name.clone());
                    templates.insert(name, factory);
                }
                complete &= other.errors.is_empty();
                factories_file = Some(other);
            }
            Err(other) => {
                file.error_at_value(
                    &root.key("factories_file"),
                    format!("cannot read the factories file {}: {}", path.display(), other.message),
                    None,
                );
                complete = false;
            }
        }
    }
    // Each factory's inheritance is reported in the file that defines it.
    for in_file in [false, true] {
        let names: Vec<&String> =
            templates.keys().filter(|name| config.factories_in_file.contains(*name) == in_file).collect();
        let target = match (in_file, factories_file.as_mut()) {
            (true, Some(other)) => other,
            _ => &mut *file,
        };
        match factories::inherit(target, &root.key("factories"), &templates, &names) {
            Some(inherited) => config.factories.extend(inherited),
            None => complete = false,
        }
    }
    for (index, mut value) in top.schedulers.into_iter().enumerate() {
        let at = root.key("schedulers").index(index);
        // `builders` by tag is filled in once the builders are expanded.
        let selection = match value.get("builders") {
            Some(serde_yaml::Value::String(all)) if all == "all" => Some(BuilderSelection::default()),
            Some(selection @ serde_yaml::Value::Mapping(_)) => {
                match file.deserialize::<BuilderSelection>(&at.key("builders"), selection.clone()) {
                    Some(selection) => Some(selection),
                    None => {
                        complete = false;
                        continue;
                    }
                }
            }
            _ => None,
        };
        if let Some(selection) = selection {
            value["builders"] = serde_yaml::Value::Sequence(Vec::new());
            config.scheduler_selections.push((index, selection, value.clone()));
        }
        match file.deserialize(&at, value) {
            Some(scheduler) => config.schedulers.push(scheduler),
            None => complete = false,
        }
    }
    for (index, value) in top.pollers.into_iter().enumerate() {
        let at = root.key("pollers").index(index);
        match file.deserialize::<PollerConfig>(&at, value) {
            Some(poller) if poller.poll_seconds == 0 || poller.branches.is_empty() => {
                let problem = if poller.branches.is_empty() {
                    "a poller needs branches"
                } else {
                    "poll_seconds must be at least 1"
                };
                file.error_at(&at, problem, None);
                complete = false;
            }
            Some(poller) => config.pollers.push(poller),
            None => complete = false,
        }
    }
    for (index, value) in top.reporters.into_iter().enumerate() {
        match reporters::parse(file, &root.key("reporters").index(index), value) {
            Some(reporter) => config.reporters.push(reporter),
            None => complete = false,
        }
    }
    if let Some(value) = top.release_board {
        let at = root.key("release_board");
        match file.deserialize::<ReleaseBoardConfig>(&at, value) {
            Some(board) if board.branches.is_empty() || board.tags.is_empty() => {
                file.error_at(
                    &at,
                    "the release board needs `branches` and `tags`",
                    Some("e.g. `release_board: {branches: [main, \"3.14\"], tags: [stable]}`".into()),
                );
                complete = false;
            }
            Some(board) => config.release_board = Some(board),
            None => complete = false,
        }
    }
    (complete.then_some(config), factories_file)
}

/// Reads a factories file: a `factories:` mapping, as in master.yaml.
fn read_factories_file(path: &std::path::Path) -> Result<(SourceFile, BTreeMap<String, FactoryFile>), ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FactoriesFile {
        factories: BTreeMap<String, serde_yaml::Value>,
    }
    let (mut file, text) = SourceFile::read(path)?;
    let root = YamlPath::root();
    let mut found = BTreeMap::new();
    let top = file.parse_yaml(&text).and_then(|value| file.deserialize::<FactoriesFile>(&root, value));
    for (name, value) in top.map(|top| top.factories).unwrap_or_default() {
        if let Some(factory) = file.deserialize::<FactoryFile>(&root.key("factories").key(name.clone()), value) {
            found.insert(name, factory);
        }
    }
    Ok((file, found))
}
