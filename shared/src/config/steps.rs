//! One step of a factory as master.yaml says it: a command (a list, or a
//! string for `/bin/sh -c`) with its options, or a `git:` checkout, which
//! becomes a shell script reading only its environment.
//!
//! This is the configuration's schema, strict about unknown fields so a typo
//! is an error at its line. What travels to workers is `wire::Step`, made
//! from it at the claim.

use std::collections::BTreeMap;
use std::fmt;

use serde::de;
use serde::{Deserialize, Deserializer};

use crate::model::Results;

/// One step of a factory, as master.yaml says it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    /// A list (`["make", "-j4"]`, run as is) or a string (run by `/bin/sh -c`).
    pub command: StepCommand,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directory to run in, relative to the builder's directory on the
    /// worker. Default: `build`.
    #[serde(default = "default_workdir")]
    pub workdir: String,
    /// Seconds without output after which the step is killed (FAILURE).
    #[serde(default = "default_timeout")]
    pub timeout: u64,
    /// Seconds of running after which the step is killed (FAILURE), however
    /// much it prints. None: no limit.
    #[serde(default)]
    pub max_time: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when a step is killed.
    #[serde(default = "default_kill_grace")]
    pub kill_grace: u64,
    /// A failure stops the build; later steps are skipped unless `always_run`.
    #[serde(default)]
    pub halt_on_failure: bool,
    /// A failure makes the build FAILURE.
    #[serde(default = "default_true")]
    pub flunk_on_failure: bool,
    /// A failure makes the build WARNINGS (when `flunk_on_failure` is off).
    #[serde(default)]
    pub warn_on_failure: bool,
    /// WARNINGS of this step make the build WARNINGS.
    #[serde(default = "default_true")]
    pub warn_on_warnings: bool,
    /// Run even after an earlier step halted the build.
    #[serde(default)]
    pub always_run: bool,
    /// Exit code to result, like Buildbot's `decodeRC`. Codes not listed are
    /// FAILURE. Default: `{0: SUCCESS}`.
    #[serde(default = "default_decode_rc", deserialize_with = "crate::model::deserialize_exit_codes")]
    pub decode_rc: BTreeMap<i32, Results>,
    /// Warnings counted in the output as it streams: `compiler` (GCC's,
    /// Clang's and MSVC's), or `{pattern: REGEX, max: N}`. More than `max`
    /// (default 0) make a step that succeeded end WARNINGS; the matching
    /// lines are its `warnings` log.
    #[serde(default)]
    pub warnings: Option<WarningsSpec>,
    /// Failed tests read from the summary a test runner prints, for runners
    /// that write no result files: `regrtest` (CPython's), or
    /// `{failed: REGEX, passed: REGEX}`.
    #[serde(default)]
    pub test_summary: Option<TestSummarySpec>,
    /// JUnit XML files the step's test runner writes: globs relative to
    /// the step's workdir (a string or a list). The worker sends them after
    /// the step and a master reads them into the build's test results.
    #[serde(default, deserialize_with = "one_or_many")]
    pub test_results: Vec<String>,
    /// Files kept with the build, downloadable from its page: globs
    /// relative to the step's workdir (a string or a list).
    #[serde(default, deserialize_with = "one_or_many")]
    pub artifacts: Vec<String>,
    /// When the step succeeds, what it printed on its standard output
    /// (trimmed; at most 64 KiB) becomes this build property, as Buildbot's
    /// `SetPropertyFromCommand`: later steps use it as `%(prop:NAME)s`.
    #[serde(default)]
    pub set_property: Option<String>,
    /// Run only when this holds as the build runs, as Buildbot's
    /// `doStepIf`: `{property: NAME}` (set and not empty, e.g. by an
    /// earlier step's `set_property`) or `{step: NAME, results: [failure,
    /// warnings]}` (how an earlier step ended). Otherwise it is SKIPPED.
    #[serde(default)]
    pub run_if: Option<crate::wire::RunIf>,
}

/// A list of strings, or one string for a list of one.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    })
}

/// What is wrong with a glob of `test_results` or `artifacts`, if anything:
/// it must be readable, and relative without `..`, since a step's files
/// are only ever taken from inside the builder's directory.
pub fn check_file_glob(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("an empty file pattern matches nothing".into());
    }
    if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
        return Err(format!(
            "`{pattern}` leaves the builder's directory; give a pattern relative to the step's workdir, without `..`"
        ));
    }
    glob::Pattern::new(pattern).map(drop).map_err(|error| format!("`{pattern}` is not a file pattern: {error}"))
}

/// How a test runner's summary is read.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TestSummarySpec {
    /// A named runner: `regrtest`.
    Preset(String),
    /// `failed` matches the line before a list of failed tests (the names
    /// on the indented lines after it, up to a blank line; a later list
    /// replaces an earlier one); `passed`, if given, matches the line that
    /// counts the passed tests (its first group).
    Pattern {
        failed: String,
        #[serde(default)]
        passed: Option<String>,
    },
}

impl TestSummarySpec {
    /// The rule a worker reads the output with, or what is wrong with it.
    pub fn resolve(&self) -> Result<crate::wire::TestSummaryRule, String> {
        let rule = match self {
            // `2 tests failed:`, then, after re-running them, `1 test failed
            // again:`; `385 tests OK.`
            TestSummarySpec::Preset(name) if name == "regrtest" => crate::wire::TestSummaryRule {
                failed: r"^\d+ tests? failed(?: again)?:$".into(),
                passed: Some(r"^(\d+) tests? OK\.$".into()),
            },
            TestSummarySpec::Preset(name) => {
                return Err(format!(
                    "`{name}` is not a test runner buildmaster knows; use `regrtest` or `{{failed: REGEX, passed: REGEX}}`"
                ));
            }
            TestSummarySpec::Pattern { failed, passed } => {
                crate::wire::TestSummaryRule { failed: failed.clone(), passed: passed.clone() }
            }
        };
        for (which, pattern) in [("failed", Some(&rule.failed)), ("passed", rule.passed.as_ref())] {
            if let Some(pattern) = pattern {
                regex::Regex::new(pattern).map_err(|error| {
                    let problem = error.to_string();
                    format!(
                        "the `{which}` pattern cannot be read: {}",
                        problem.lines().last().unwrap_or_default().trim()
                    )
                })?;
            }
        }
        Ok(rule)
    }
}

/// How a step's warnings are recognised.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum WarningsSpec {
    /// A named pattern: `compiler`.
    Preset(String),
    Pattern {
        pattern: String,
        #[serde(default)]
        max: u32,
    },
}

/// A compiler's warning: `file.c:12:5: warning: ...` (GCC, Clang) or
/// `file.c(12): warning C4101: ...` (MSVC).
pub const COMPILER_WARNINGS: &str = r"(?::\d+(?::\d+)?: warning: |\(\d+(?:,\d+)?\): warning [A-Z]+\d+: )";

impl WarningsSpec {
    /// The pattern and the most warnings that leave the step as it is, or
    /// what is wrong with them.
    pub fn resolve(&self) -> Result<crate::wire::Warnings, String> {
        let (pattern, max) = match self {
            WarningsSpec::Preset(name) if name == "compiler" => (COMPILER_WARNINGS.to_owned(), 0),
            WarningsSpec::Preset(name) => {
                return Err(format!(
                    "`{name}` is not a warnings preset; use `compiler` or `{{pattern: REGEX, max: N}}`"
                ));
            }
            WarningsSpec::Pattern { pattern, max } => (pattern.clone(), *max),
        };
        regex::Regex::new(&pattern).map_err(|error| {
            let problem = error.to_string();
            format!("the warnings pattern cannot be read: {}", problem.lines().last().unwrap_or_default().trim())
        })?;
        Ok(crate::wire::Warnings { pattern, max })
    }
}

fn default_workdir() -> String {
    "build".into()
}

fn default_timeout() -> u64 {
    1200
}

fn default_kill_grace() -> u64 {
    5
}

pub(super) fn default_true() -> bool {
    true
}

fn default_decode_rc() -> BTreeMap<i32, Results> {
    BTreeMap::from([(0, Results::Success)])
}

/// How a step's command is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCommand {
    /// Run directly, no shell.
    Argv(Vec<String>),
    /// Run by `/bin/sh -c`.
    Shell(String),
}

impl<'de> Deserialize<'de> for StepCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CommandVisitor;

        impl<'de> de::Visitor<'de> for CommandVisitor {
            type Value = StepCommand;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings (program and arguments) or a shell command string")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<StepCommand, E> {
                Ok(StepCommand::Shell(value.to_owned()))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<StepCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(arg) = seq.next_element::<String>()? {
                    argv.push(arg);
                }
                Ok(StepCommand::Argv(argv))
            }
        }

        deserializer.deserialize_any(CommandVisitor)
    }
}

/// A source checkout step: `git:` instead of `command:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GitStepFile {
    name: String,
    git: GitStep,
    #[serde(default = "default_workdir")]
    workdir: String,
    #[serde(default = "default_timeout")]
    timeout: u64,
    /// Default: stop the build when the checkout fails, unless
    /// `on_failure: warnings` (then it goes on). Both together warn and
    /// stop, as buildbot.python.org's checkouts do (its GH-68 rule).
    halt_on_failure: Option<bool>,
    #[serde(default)]
    always_run: bool,
}

/// Where the source comes from and how to check it out, like Buildbot's
/// `Git` step. Every text may use `%(prop:...)s`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GitStep {
    repourl: String,
    /// Branch to check out; default the build's `branch` property, else `main`.
    #[serde(default = "default_git_branch")]
    branch: String,
    /// Revision to check out; default the build's `revision` property,
    /// else the branch's head.
    #[serde(default = "default_git_revision")]
    revision: String,
    #[serde(default)]
    mode: GitMode,
    /// With `mode: full`: `fresh` removes untracked and ignored files,
    /// `clobber` starts from an empty directory.
    #[serde(default)]
    method: GitMethod,
    /// A shallow fetch of this many commits.
    shallow: Option<u32>,
    /// A partial clone, e.g. `blob:none`.
    filter: Option<String>,
    /// Attempts after the first when fetching fails (a network blip).
    #[serde(default = "default_git_retries")]
    retries: u32,
    /// `warnings` marks a failed checkout WARNINGS instead of FAILURE.
    #[serde(default)]
    on_failure: GitFailure,
    /// When the checkout fails (a broken repository, a fetch that still
    /// fails after its retries), remove the directory and clone again
    /// before giving up, as Buildbot's `clobberOnFailure`.
    #[serde(default)]
    clobber_on_failure: bool,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitMode {
    /// Keep the working tree; fetch and check out.
    #[default]
    Incremental,
    /// Also clean the tree, per `method`.
    Full,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitMethod {
    #[default]
    Fresh,
    Clobber,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GitFailure {
    #[default]
    Failure,
    Warnings,
}

fn default_git_branch() -> String {
    "%(prop:branch:-main)s".into()
}

fn default_git_revision() -> String {
    "%(prop:revision)s".into()
}

fn default_git_retries() -> u32 {
    2
}

/// What a `git` step runs: a script that takes everything from its
/// environment, so no value (a branch name from a webhook) is ever parsed
/// by the shell.
const GIT_SCRIPT: &str = r#"set -eu
retry() {
    n=0
    until "$@"; do
        n=$((n + 1))
        if [ "$n" -gt "$BM_GIT_RETRIES" ]; then return 1; fi
        echo "attempt $n failed; retrying in $((n * 2))s: $*" >&2
        sleep $((n * 2))
    done
}
set --
if [ -n "$BM_GIT_DEPTH" ]; then set -- "$@" --depth "$BM_GIT_DEPTH"; fi
if [ -n "$BM_GIT_FILTER" ]; then set -- "$@" --filter="$BM_GIT_FILTER"; fi
if [ "$BM_GIT_MODE" = full ] && [ "$BM_GIT_METHOD" = clobber ]; then
    find . -mindepth 1 -maxdepth 1 -exec rm -rf {} +
fi
# Each command's failure is checked: `set -e` does not reach into a
# function called as a condition.
checkout() {
    if [ -d .git ]; then
        git remote set-url origin "$BM_GIT_REPOURL" || return 1
    else
        git init -q . && git remote add origin "$BM_GIT_REPOURL" || return 1
    fi
    # A revision is fetched by itself where the server allows it; else the
    # branch, which must contain it.
    # `--end-of-options`: a revision or branch is never read as an option.
    if [ -n "$BM_GIT_REVISION" ] && git fetch -q --no-tags "$@" --end-of-options origin "$BM_GIT_REVISION" 2>/dev/null; then
        git checkout -q -f --detach FETCH_HEAD || return 1
    else
        retry git fetch --no-tags "$@" --end-of-options origin "$BM_GIT_BRANCH" || return 1
        git checkout -q -f --detach FETCH_HEAD || return 1
        if [ -n "$BM_GIT_REVISION" ]; then git checkout -q -f --detach --end-of-options "$BM_GIT_REVISION" || return 1; fi
    fi
    if [ "$BM_GIT_MODE" = full ]; then git clean -q -f -f -d -x || return 1; fi
}
if ! checkout "$@"; then
    [ "$BM_GIT_CLOBBER_ON_FAILURE" = 1 ] || exit 1
    echo "the checkout failed; removing the directory and cloning again" >&2
    find . -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    checkout "$@"
fi
git log -1 --format='checked out %H (%s)'
"#;

impl GitStepFile {
    pub(super) fn into_step(self) -> StepSpec {
        let GitStep {
            repourl,
            branch,
            revision,
            mode,
            method,
            shallow,
            filter,
            retries,
            on_failure,
            clobber_on_failure,
        } = self.git;
        let env = [
            ("BM_GIT_REPOURL", repourl),
            ("BM_GIT_BRANCH", branch),
            ("BM_GIT_REVISION", revision),
            ("BM_GIT_MODE", if mode == GitMode::Full { "full" } else { "incremental" }.to_owned()),
            ("BM_GIT_METHOD", if method == GitMethod::Clobber { "clobber" } else { "fresh" }.to_owned()),
            ("BM_GIT_DEPTH", shallow.map(|depth| depth.to_string()).unwrap_or_default()),
            ("BM_GIT_FILTER", filter.unwrap_or_default()),
            ("BM_GIT_RETRIES", retries.to_string()),
            ("BM_GIT_CLOBBER_ON_FAILURE", if clobber_on_failure { "1" } else { "0" }.to_owned()),
        ];
        let warnings = on_failure == GitFailure::Warnings;
        StepSpec {
            name: self.name,
            command: StepCommand::Shell(GIT_SCRIPT.to_owned()),
            env: env.into_iter().map(|(name, value)| (name.to_owned(), value)).collect(),
            workdir: self.workdir,
            timeout: self.timeout,
            max_time: None,
            kill_grace: default_kill_grace(),
            halt_on_failure: self.halt_on_failure.unwrap_or(!warnings),
            flunk_on_failure: !warnings,
            warn_on_failure: warnings,
            warn_on_warnings: true,
            always_run: self.always_run,
            decode_rc: default_decode_rc(),
            warnings: None,
            test_summary: None,
            test_results: Vec::new(),
            artifacts: Vec::new(),
            set_property: None,
            run_if: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_a_preset_or_a_pattern_that_reads() {
        let compiler = WarningsSpec::Preset("compiler".into()).resolve().unwrap();
        let matcher = regex::Regex::new(&compiler.pattern).unwrap();
        assert!(matcher.is_match("Objects/obmalloc.c:1234:9: warning: unused variable 'x' [-Wunused-variable]"));
        assert!(matcher.is_match(r"PC\launcher.c(42): warning C4996: 'strcpy': This function may be unsafe"));
        assert!(!matcher.is_match("Warning -- files was modified by test_os"));
        assert!(!matcher.is_match("gcc -Wall -c a.c"));
        assert_eq!(compiler.max, 0);
        let unknown = WarningsSpec::Preset("gcc".into()).resolve().unwrap_err();
        assert!(unknown.starts_with("`gcc` is not a warnings preset"), "{unknown}");
        let broken = WarningsSpec::Pattern { pattern: "(unclosed".into(), max: 3 }.resolve().unwrap_err();
        assert_eq!(broken, "the warnings pattern cannot be read: error: unclosed group");
        let own = WarningsSpec::Pattern { pattern: "^Warning -- ".into(), max: 3 }.resolve().unwrap();
        assert_eq!((own.pattern.as_str(), own.max), ("^Warning -- ", 3));
    }

    #[test]
    fn a_test_summary_is_a_known_runner_or_patterns_that_read() {
        let regrtest = TestSummarySpec::Preset("regrtest".into()).resolve().unwrap();
        let failed = regex::Regex::new(&regrtest.failed).unwrap();
        assert!(failed.is_match("2 tests failed:") && failed.is_match("1 test failed again:"));
        assert!(!failed.is_match("0:01:02 load avg: 1.2 [ 12/400] test_os failed"));
        let unknown = TestSummarySpec::Preset("pytest".into()).resolve().unwrap_err();
        assert!(unknown.starts_with("`pytest` is not a test runner"), "{unknown}");
        let broken = TestSummarySpec::Pattern { failed: "^FAILED:$".into(), passed: Some("(".into()) };
        assert!(broken.resolve().unwrap_err().starts_with("the `passed` pattern cannot be read"));
    }
}
