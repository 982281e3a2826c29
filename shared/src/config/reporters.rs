//! `reporters:` in master.yaml: who hears of builds, of which builds, and
//! what they are told. The policy lives here, in the configuration's git
//! repository; what must stay private (tokens, webhook URLs) lives in
//! settings.yaml and is named, never written, here.
//!
//! Messages are minijinja templates. Each is compiled and rendered against
//! a sample build when the configuration is loaded, so a typo in a
//! template or a variable that does not exist is found by `checkconfig` at
//! its line, not when the first build fails.

use serde::{Deserialize, Serialize};

use crate::ids::BuilderName;
use crate::model::Results;

use super::YamlPath;
use super::diagnostics::SourceFile;
use super::master::BuilderConfig;

/// One reporter: a target (exactly one of `github_status`,
/// `github_comment`, `discord`, `mail`, `irc`) and the builds it tells of.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReporterConfig {
    /// Unique; what was sent is recorded under it, so renaming a reporter
    /// starts its record afresh.
    pub name: String,
    /// Which finished builds are told (Buildbot's words); default `all`.
    #[serde(default = "default_modes")]
    pub mode: Vec<Mode>,
    /// Only these builders; any when empty.
    #[serde(default)]
    pub builders: Vec<BuilderName>,
    /// Only builders with one of these tags; any when empty.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Only builds of these branches (the `branch` property); any when
    /// empty. A pull request's builds are on `refs/pull/N/merge`.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Builds of pull requests: `include` (the default), `only` or
    /// `exclude`.
    #[serde(default)]
    pub pull_requests: PullRequests,
    /// How long delivery is retried (the target down, rate limits) before
    /// it is given up and marked failed on the build's page.
    #[serde(default = "default_give_up_after_minutes")]
    pub give_up_after_minutes: u32,
    pub github_status: Option<GitHubStatusConfig>,
    pub github_comment: Option<GitHubCommentConfig>,
    pub discord: Option<DiscordConfig>,
    pub mail: Option<MailConfig>,
    pub irc: Option<IrcConfig>,
}

/// Which finished builds a reporter tells of, as Buildbot names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every build.
    All,
    /// Builds that failed.
    Failing,
    /// Builds that succeeded.
    Passing,
    /// A builder turns red: a failure after anything but a failure.
    Problem,
    /// A builder turns red or back to green.
    Change,
    /// Builds with warnings.
    Warnings,
    /// Builds that ended in an exception.
    Exception,
}

fn default_give_up_after_minutes() -> u32 {
    24 * 60
}

fn default_modes() -> Vec<Mode> {
    vec![Mode::All]
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequests {
    #[default]
    Include,
    Only,
    Exclude,
}

/// A commit status on GitHub per build: `pending` when it starts, its
/// result when it ends, on the commit built (a pull request's head). Uses
/// settings.yaml's `github.api_url` and `github.api_token`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubStatusConfig {
    /// The status's name on the commit; one per builder by default.
    #[serde(default = "default_status_context")]
    pub context: Template,
    /// The line beside it (GitHub keeps 140 characters).
    #[serde(default = "default_status_description")]
    pub description: Template,
}

fn default_status_context() -> Template {
    Template::new("buildmaster/{{ builder }}")
}

fn default_status_description() -> Template {
    Template::new(
        "{% if event == 'started' %}Build {{ number }} started{% else %}Build {{ number }}: {{ results }}{% endif %}",
    )
}

/// A comment on a pull request when one of its builds fails (or breaks),
/// or a build of what was merged from it: the builder, the failed step, the
/// end of its log and a link. Uses the credentials of settings.yaml's
/// `github`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHubCommentConfig {
    /// What a later failure of the same pull request does: `edit` the
    /// reporter's comment (the default: one comment per pull request and
    /// builder that always tells of its latest failure) or `add` one more.
    #[serde(default)]
    pub later_failures: LaterFailures,
    /// Lines of the failed step's log quoted, from its end; 0 for none.
    #[serde(default = "default_log_lines")]
    pub log_lines: u32,
    /// Also comment on the pull request a failing branch build came from,
    /// as buildbot.python.org does: when the build covers one change whose
    /// message names it as `(GH-123)` or `(#123)` (a squash merge's title).
    #[serde(default)]
    pub merged_pull_requests: bool,
    /// The comment, in GitHub's Markdown.
    #[serde(default = "default_comment_body")]
    pub body: Template,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaterFailures {
    #[default]
    Edit,
    Add,
}

fn default_log_lines() -> u32 {
    30
}

fn default_comment_body() -> Template {
    Template::new(
        ":x: **{{ builder }}** build {{ number }} ended in **{{ results }}**\
         {% if failed_step %} at step `{{ failed_step }}`{% endif %}\
         {% if revision %} (commit {{ revision[:12] }}){% endif %}.\n\n\
         {% if failed_tests %}Failed tests: {% for test in failed_tests[:20] %}`{{ test }}`\
         {% if test in known_flaky %} (known flaky){% endif %}{% if not loop.last %}, {% endif %}{% endfor %}\
         {% if failed_tests|length > 20 %} and {{ failed_tests|length - 20 }} more{% endif %}.\n\n{% endif %}\
         {% if log_excerpt %}<details><summary>The end of its log</summary>\n\n```\n{{ log_excerpt }}\n```\n\n</details>\n\n{% endif %}\
         [The build's page]({{ url }})",
    )
}

/// A message in a Discord channel through one of its webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordConfig {
    /// The name of an entry of settings.yaml's `secrets` holding the
    /// webhook's URL (it is a credential: whoever has it may post).
    pub webhook_secret: String,
    /// The message (Discord keeps 2,000 characters).
    #[serde(default = "default_discord_message")]
    pub message: Template,
}

fn default_discord_message() -> Template {
    Template::new(
        "**{{ builder }}** build {{ number }}: **{{ results }}**{% if failed_step %} in `{{ failed_step }}`{% endif %}\
         {% if branch %} on `{{ branch }}`{% endif %}{% if revision %} ({{ revision[:12] }}){% endif %} <{{ url }}>",
    )
}

/// A mail to lists or people, through settings.yaml's `mail` server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailConfig {
    /// Recipients, e.g. `[python-buildbots@python.org]`.
    pub to: Vec<String>,
    #[serde(default = "default_mail_subject")]
    pub subject: Template,
    #[serde(default = "default_mail_body")]
    pub body: Template,
}

fn default_mail_subject() -> Template {
    Template::new("buildmaster: {{ builder }} build {{ number }} {{ results }}")
}

fn default_mail_body() -> Template {
    Template::new(
        "The build {{ number }} of {{ builder }} ended: {{ results }} ({{ state_string }}).\n\n\
         {% if failed_step %}First failed step: {{ failed_step }}\n{% endif %}\
         {% if previous_results %}The build before: {{ previous_results }}\n{% endif %}\
         {% if branch %}Branch: {{ branch }}\n{% endif %}\
         {% if revision %}Revision: {{ revision }}\n{% endif %}\
         {% if owner %}Asked for by: {{ owner }}\n{% endif %}\
         \n{{ url }}",
    )
}

/// Lines in IRC channels, through settings.yaml's `irc` network.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// Channels to announce in, e.g. `["#python-dev-infra"]`; joined by
    /// the installation's one connection.
    pub channels: Vec<String>,
    /// One line (IRC has no others); cut at 400 bytes.
    #[serde(default = "default_irc_message")]
    pub message: Template,
}

fn default_irc_message() -> Template {
    Template::new(
        "{{ builder }} build {{ number }}: {{ results }}{% if failed_step %} in {{ failed_step }}{% endif %}\
         {% if previous_results and previous_results != results %} (was {{ previous_results }}){% endif %}\
         {% if branch %} on {{ branch }}{% endif %}{% if revision %} ({{ revision[:12] }}){% endif %} {{ url }}",
    )
}

/// What a reporter is told of one build.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    /// `started` or `finished`.
    pub event: String,
    pub builder: String,
    pub number: i32,
    /// The result's name (`success`, `failure`, ...); `running` while it
    /// runs.
    pub results: String,
    pub state_string: String,
    /// The build's page.
    pub url: String,
    pub branch: String,
    pub revision: String,
    pub repository: String,
    /// Whoever asked for the build.
    pub owner: String,
    /// The pull request's number, if the build is of one.
    pub pull_request: Option<i64>,
    /// The first step that failed, if any.
    pub failed_step: Option<String>,
    /// The result of the builder's build before this one.
    pub previous_results: Option<String>,
    /// The last lines of the failed step's log; only pull-request
    /// comments fetch it, empty elsewhere.
    pub log_excerpt: String,
    /// The tests that failed, when a step read them (its test runner's
    /// summary, its result files); only pull-request comments fetch them,
    /// empty elsewhere.
    pub failed_tests: Vec<String>,
    /// Those of `failed_tests` known to be flaky on the builder (they failed
    /// and passed at one revision in the last 30 days).
    pub known_flaky: Vec<String>,
}

impl BuildReport {
    /// What templates are checked against when the configuration loads.
    fn sample() -> BuildReport {
        BuildReport {
            event: "finished".into(),
            builder: "AMD64 Debian 3.x".into(),
            number: 1234,
            results: "failure".into(),
            state_string: "failed test".into(),
            url: "https://buildbot.example.org/#/builders/1/builds/1234".into(),
            branch: "main".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            repository: "https://github.com/python/cpython".into(),
            owner: "someone".into(),
            pull_request: Some(1),
            failed_step: Some("test".into()),
            previous_results: Some("success".into()),
            log_excerpt: "FAIL: test_sample (test.test_sample.Sample.test_sample)".into(),
            failed_tests: vec!["test_sample".into(), "test_os".into()],
            known_flaky: vec!["test_os".into()],
        }
    }
}

/// A message template (minijinja, Jinja2's syntax), kept as written; it
/// was compiled and tried on a sample build when the configuration loaded.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Template(String);

impl Template {
    pub fn new(source: impl Into<String>) -> Template {
        Template(source.into())
    }

    pub fn source(&self) -> &str {
        &self.0
    }

    /// Whether the template compiles, uses only the variables of a report,
    /// and renders for a sample build; what is wrong if not.
    pub fn check(&self) -> Result<(), String> {
        let environment = minijinja::Environment::new();
        let compiled = environment
            .template_from_str(&self.0)
            .map_err(|error| format!("this template cannot be read: {}", describe(&error)))?;
        let known = serde_json::to_value(BuildReport::sample()).unwrap_or_default();
        let mut unknown: Vec<String> = compiled
            .undeclared_variables(false)
            .into_iter()
            .filter(|name| known.get(name).is_none() && !environment.globals().any(|(global, _)| global == name))
            .map(|name| format!("`{name}`"))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            return Err(format!("this template uses {}, which reports do not have", unknown.join(", ")));
        }
        self.render(&BuildReport::sample())
            .map(drop)
            .map_err(|error| format!("this template cannot be rendered: {error}"))
    }

    /// Renders the template for one build. An unknown variable is an error,
    /// not an empty string.
    pub fn render(&self, report: &BuildReport) -> Result<String, String> {
        let mut environment = minijinja::Environment::new();
        environment.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        environment.render_str(&self.0, report).map_err(|error| describe(&error))
    }
}

/// A template's error with its causes.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

impl ReporterConfig {
    /// Whether this reporter tells of `builder`'s builds at all.
    pub fn covers_builder(&self, builder: &BuilderConfig) -> bool {
        (self.builders.is_empty() || self.builders.contains(&builder.name))
            && (self.tags.is_empty() || self.tags.iter().any(|tag| builder.tags.contains(tag)))
    }

    /// Whether a target of this reporter wants to hear that a build
    /// started (a commit status does; messages to people do not).
    pub fn tells_starts(&self) -> bool {
        self.github_status.is_some()
    }

    /// Why this reporter says nothing of a build with this branch, or
    /// `None` when it does.
    pub fn skips_branch(&self, branch: &str, pull_request: bool) -> Option<String> {
        match (self.pull_requests, pull_request) {
            (PullRequests::Only, false) => return Some("not a pull request's build".into()),
            (PullRequests::Exclude, true) => return Some("a pull request's build".into()),
            _ => {}
        }
        if !self.branches.is_empty() && !self.branches.iter().any(|wanted| wanted == branch) {
            return Some(format!("branch `{branch}` is not among its branches"));
        }
        None
    }

    /// Whether a finished build with `results` is told, given the result
    /// of the builder's build before it.
    pub fn tells_result(&self, results: Results, previous: Option<Results>) -> bool {
        let failed = |results: Results| results == Results::Failure;
        self.mode.iter().any(|mode| match mode {
            Mode::All => true,
            Mode::Failing => failed(results),
            Mode::Passing => results == Results::Success,
            Mode::Warnings => results == Results::Warnings,
            Mode::Exception => results == Results::Exception,
            Mode::Problem => failed(results) && !previous.is_some_and(failed),
            Mode::Change => match previous {
                Some(previous) => failed(results) != failed(previous),
                None => false,
            },
        })
    }

    fn templates(&self) -> Vec<(&'static str, &'static str, &Template)> {
        let mut templates = Vec::new();
        if let Some(status) = &self.github_status {
            templates.push(("github_status", "context", &status.context));
            templates.push(("github_status", "description", &status.description));
        }
        if let Some(comment) = &self.github_comment {
            templates.push(("github_comment", "body", &comment.body));
        }
        if let Some(discord) = &self.discord {
            templates.push(("discord", "message", &discord.message));
        }
        if let Some(mail) = &self.mail {
            templates.push(("mail", "subject", &mail.subject));
            templates.push(("mail", "body", &mail.body));
        }
        if let Some(irc) = &self.irc {
            templates.push(("irc", "message", &irc.message));
        }
        templates
    }
}

/// Parses one reporter and checks what needs nothing else: exactly one
/// target, and templates that render.
pub(super) fn parse(file: &mut SourceFile, at: &YamlPath, value: serde_yaml::Value) -> Option<ReporterConfig> {
    let reporter: ReporterConfig = file.deserialize(at, value)?;
    let mut complete = true;
    let targets = usize::from(reporter.github_status.is_some())
        + usize::from(reporter.github_comment.is_some())
        + usize::from(reporter.discord.is_some())
        + usize::from(reporter.mail.is_some())
        + usize::from(reporter.irc.is_some());
    if targets != 1 {
        file.error_at(
            at,
            format!("reporter `{}` needs exactly one target, it has {targets}", reporter.name),
            Some(
                "add one of `github_status:`, `github_comment:`, `discord:`, `mail:` or `irc:`; write two reporters to tell two targets"
                    .into(),
            ),
        );
        complete = false;
    }
    if reporter.mode.is_empty() {
        file.error_at_value(&at.key("mode"), "a reporter needs at least one mode", Some("e.g. `mode: [all]`".into()));
        complete = false;
    }
    let mut broken = Vec::new();
    for (target, field, template) in reporter.templates() {
        if let Err(problem) = template.check() {
            broken.push((at.key(target).key(field), problem));
        }
    }
    for (place, problem) in broken {
        file.error_at_value(&place, problem, Some(format!("its variables are {}", template_variables())));
        complete = false;
    }
    complete.then_some(reporter)
}

/// The variables a template may use, for hints.
pub fn template_variables() -> String {
    let sample = serde_json::to_value(BuildReport::sample()).unwrap_or_default();
    let names: Vec<String> =
        sample.as_object().map(|fields| fields.keys().map(|key| format!("`{key}`")).collect()).unwrap_or_default();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reporter(modes: &[Mode]) -> ReporterConfig {
        ReporterConfig {
            name: "r".into(),
            mode: modes.to_vec(),
            builders: Vec::new(),
            tags: Vec::new(),
            branches: Vec::new(),
            pull_requests: PullRequests::Include,
            give_up_after_minutes: 60,
            github_status: None,
            github_comment: None,
            discord: None,
            mail: None,
            irc: None,
        }
    }

    #[test]
    fn modes_tell_what_buildbot_users_expect() {
        use Results::*;
        let problem = reporter(&[Mode::Problem]);
        assert!(problem.tells_result(Failure, Some(Success)), "green to red is a problem");
        assert!(problem.tells_result(Failure, None), "a first build failing is a problem");
        assert!(!problem.tells_result(Failure, Some(Failure)), "still red is no new problem");
        assert!(!problem.tells_result(Success, Some(Failure)));
        let change = reporter(&[Mode::Change]);
        assert!(change.tells_result(Success, Some(Failure)), "red to green");
        assert!(change.tells_result(Failure, Some(Warnings)), "green to red");
        assert!(!change.tells_result(Success, Some(Warnings)), "green stays green");
        assert!(!change.tells_result(Success, None));
        let some = reporter(&[Mode::Failing, Mode::Exception]);
        assert!(some.tells_result(Failure, None) && some.tells_result(Exception, None));
        assert!(!some.tells_result(Success, None) && !some.tells_result(Warnings, None));
        assert!(reporter(&[Mode::All]).tells_result(Cancelled, None));
    }

    #[test]
    fn pull_request_and_branch_filters() {
        let mut only = reporter(&[Mode::All]);
        only.pull_requests = PullRequests::Only;
        assert!(only.skips_branch("main", false).is_some());
        assert!(only.skips_branch("refs/pull/1/merge", true).is_none());
        let mut main = reporter(&[Mode::All]);
        main.branches = vec!["main".into()];
        assert!(main.skips_branch("main", false).is_none());
        assert_eq!(main.skips_branch("3.14", false).unwrap(), "branch `3.14` is not among its branches");
    }

    #[test]
    fn default_templates_render_and_an_unknown_variable_is_an_error() {
        let sample = BuildReport::sample();
        assert_eq!(default_status_context().render(&sample).unwrap(), "buildmaster/AMD64 Debian 3.x");
        assert_eq!(default_status_description().render(&sample).unwrap(), "Build 1234: failure");
        let message = default_discord_message().render(&sample).unwrap();
        assert_eq!(
            message,
            "**AMD64 Debian 3.x** build 1234: **failure** in `test` on `main` (0123456789ab) \
             <https://buildbot.example.org/#/builders/1/builds/1234>"
        );
        let body = default_mail_body().render(&sample).unwrap();
        assert!(
            body.starts_with(
                "The build 1234 of AMD64 Debian 3.x ended: failure (failed test).\n\nFirst failed step: test\n"
            ),
            "{body}"
        );
        assert!(
            body.ends_with("Asked for by: someone\n\nhttps://buildbot.example.org/#/builders/1/builds/1234"),
            "{body}"
        );
        assert_eq!(
            default_irc_message().render(&sample).unwrap(),
            "AMD64 Debian 3.x build 1234: failure in test (was success) on main (0123456789ab) \
             https://buildbot.example.org/#/builders/1/builds/1234"
        );
        let comment = default_comment_body().render(&sample).unwrap();
        assert_eq!(
            comment,
            ":x: **AMD64 Debian 3.x** build 1234 ended in **failure** at step `test` (commit 0123456789ab).\n\n\
             Failed tests: `test_sample`, `test_os` (known flaky).\n\n\
             <details><summary>The end of its log</summary>\n\n```\n\
             FAIL: test_sample (test.test_sample.Sample.test_sample)\n```\n\n</details>\n\n\
             [The build's page](https://buildbot.example.org/#/builders/1/builds/1234)"
        );
        let error = Template::new("{{ buildr }}").render(&sample).unwrap_err();
        assert!(error.contains("undefined"), "{error}");
        let problem = Template::new("{{ buildr }} {% for x in range(2) %}{{ x }}{{ loop.index }}{% endfor %}")
            .check()
            .unwrap_err();
        assert_eq!(problem, "this template uses `buildr`, which reports do not have");
        assert!(
            Template::new("{% if %}").check().unwrap_err().starts_with("this template cannot be read: syntax error")
        );
    }
}
