//! `buildmaster checkconfig` on broken configurations: every error, each
//! with file:line:column and a hint, and a non-zero exit.

use std::process::Command;

use crate::harness::binary;

const SETTINGS: &str = "database_url: postgres://x@127.0.0.1/x\namqp_url: amqp://127.0.0.1\nredis_url: redis://127.0.0.1\n\
workers:\n  - name: w1\n    password: long-enough-password\n";

const VALID_MASTER: &str = "factories:\n  F:\n    steps:\n      - name: s\n        command: [\"true\"]\n\
builders:\n  - name: b\n    factory: F\n    workers: [w1]\n";

/// Runs checkconfig on the two files; returns (exit success, stderr).
fn checkconfig(settings: &str, master: &str) -> (bool, String) {
    let output = Command::new(binary("buildmaster"))
        .arg("--settings")
        .arg(write_pair(settings, master))
        .arg("checkconfig")
        .output()
        .unwrap();
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Writes settings.yaml and master.yaml into a directory of their own (kept
/// for the test's life); returns settings.yaml's path.
fn write_pair(settings: &str, master: &str) -> std::path::PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::write(dir.join("settings.yaml"), settings).unwrap();
    std::fs::write(dir.join("master.yaml"), master).unwrap();
    dir.join("settings.yaml")
}

#[test]
fn a_valid_configuration_passes() {
    let (ok, stderr) = checkconfig(SETTINGS, VALID_MASTER);
    assert!(ok, "{stderr}");
}

#[test]
fn an_unknown_key_is_reported_at_its_line_with_the_field_it_resembles() {
    let master = VALID_MASTER.replace("command:", "comand:");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:5:9: factories.F.steps[0].comand: unknown field `comand`"), "{stderr}");
    assert!(stderr.contains("hint: did you mean `command`?"), "{stderr}");
}

#[test]
fn a_warnings_pattern_that_cannot_be_read_and_an_unknown_preset_are_reported_at_their_lines() {
    let master = VALID_MASTER.replace(
        "command: [\"true\"]",
        "command: [\"true\"]\n        warnings: {pattern: \"(oops\", max: 2}\n      - name: t\n        command: [\"true\"]\n        warnings: clang",
    );
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    for expected in [
        "master.yaml:6:19: the warnings pattern cannot be read: error: unclosed group",
        "master.yaml:9:19: `clang` is not a warnings preset; use `compiler`",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
}

#[test]
fn file_patterns_leading_out_of_the_builder_or_unreadable_are_reported_at_their_lines() {
    let master = VALID_MASTER.replace(
        "command: [\"true\"]",
        "command: [\"true\"]\n        test_results: ../results/*.xml\n        artifacts:\n          - dist/*.whl\n          - /etc/passwd\n          - \"[oops\"",
    );
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    for expected in [
        "master.yaml:6:9: `../results/*.xml` leaves the builder's directory",
        "master.yaml:9:13: `/etc/passwd` leaves the builder's directory",
        "master.yaml:10:13: `[oops` is not a file pattern",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    assert!(!stderr.contains("dist/*.whl"), "a good pattern is not reported:\n{stderr}");
}

#[test]
fn a_wrong_type_is_reported_at_its_line() {
    let master = VALID_MASTER.replace("command: [\"true\"]", "command: [\"true\"]\n        timeout: soon");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(
        stderr.contains("master.yaml:6:9: factories.F.steps[0].timeout: invalid type: string \"soon\""),
        "{stderr}"
    );
}

#[test]
fn missing_references_and_duplicates_are_all_reported_at_once() {
    let master = format!("{VALID_MASTER}  - name: b\n    factory: Nope\n    workers: [ghost]\n");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:10:11: builder `b` is defined twice"), "{stderr}");
    assert!(stderr.contains("master.yaml:11:14: builder `b` uses factory `Nope`, which is not defined"), "{stderr}");
    assert!(
        stderr.contains("master.yaml:12:15: builder `b` names worker `ghost`, which is not in settings.yaml"),
        "{stderr}"
    );
    assert!(stderr.contains("3 error(s)"), "{stderr}");
}

#[test]
fn a_short_worker_password_is_refused() {
    let settings = SETTINGS.replace("long-enough-password", "short");
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    assert!(
        stderr.contains("settings.yaml:6:15: the password of worker `w1` is shorter than 14 characters"),
        "{stderr}"
    );
}

#[test]
fn a_yaml_syntax_error_is_reported_at_its_line() {
    let (ok, stderr) = checkconfig(SETTINGS, "builders:\n  - name: [unclosed\n");
    assert!(!ok);
    assert!(stderr.contains("master.yaml:3:1: not valid YAML"), "{stderr}");
}

#[test]
fn a_telemetry_endpoint_without_a_scheme_and_a_ratio_above_one_are_reported_at_their_lines() {
    let settings = format!("{SETTINGS}telemetry:\n  otlp_endpoint: 127.0.0.1:4318\n  sampling_ratio: 2\n");
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    let endpoint = "settings.yaml:8:18: otlp_endpoint `127.0.0.1:4318` is not an http:// or https:// URL";
    assert!(stderr.contains(endpoint), "{stderr}");
    assert!(stderr.contains("settings.yaml:9:19: sampling_ratio 2 is not between 0.0 and 1.0"), "{stderr}");
}

#[test]
fn a_step_using_an_undefined_secret_is_reported_at_its_env_line() {
    let master = VALID_MASTER.replace(
        "        command: [\"true\"]\n",
        "        command: [\"true\"]\n        env:\n          TOKEN: \"%(secret:nope)s\"\n",
    );
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:7:18: secret `nope` is not defined"), "{stderr}");
    assert!(stderr.contains("add it under `secrets:` in settings.yaml"), "{stderr}");
}

#[test]
fn a_retention_batch_of_zero_and_builds_kept_shorter_than_logs_are_reported_at_their_lines() {
    let settings = format!("{SETTINGS}retention:\n  logs_days: 30\n  builds_days: 7\n  batch: 0\n");
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    assert!(stderr.contains("settings.yaml:9:16: builds_days (7) is shorter than logs_days (30)"), "{stderr}");
    assert!(stderr.contains("settings.yaml:10:10: batch 0 is not between 1 and 100000"), "{stderr}");
}

#[test]
fn the_shipped_example_configurations_load() {
    let root = crate::harness::repository_root();
    if let Err(errors) = shared::config::Config::load(&root.join("deploy/example/settings.yaml")) {
        panic!("deploy/example:\n{errors}");
    }
    // The compose file mounts the example's master.yaml beside its settings.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(root.join("deploy/compose/settings.yaml"), dir.path().join("settings.yaml")).unwrap();
    std::fs::copy(root.join("deploy/example/master.yaml"), dir.path().join("master.yaml")).unwrap();
    if let Err(errors) = shared::config::Config::load(&dir.path().join("settings.yaml")) {
        panic!("deploy/compose:\n{errors}");
    }
    if let Err(errors) = shared::config::load_worker_file(&root.join("deploy/compose/worker.yaml")) {
        panic!("deploy/compose/worker.yaml:\n{errors}");
    }
}

#[test]
fn a_worker_that_logs_in_as_its_own_account_must_not_carry_credentials_in_its_urls() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("worker.yaml");
    let yaml = "name: w1\npassword: long-enough-password\namqp_url: amqp://guest:guest@127.0.0.1:5672/%2f\n\
                redis_url: redis://127.0.0.1:6379/\n";
    std::fs::write(&path, yaml).unwrap();
    let errors = shared::config::load_worker_file(&path).unwrap_err().to_string();
    assert!(errors.contains("worker.yaml:3:11: amqp_url carries credentials"), "{errors}");
    assert!(errors.contains("login: from_urls"), "{errors}");
    std::fs::write(&path, format!("{yaml}login: from_urls\n")).unwrap();
    let loaded = shared::config::load_worker_file(&path).expect("shared credentials are allowed when asked for");
    assert_eq!(loaded.login, shared::config::WorkerLogin::FromUrls);
}

#[test]
fn a_password_that_is_not_an_argon2_hash_and_a_malformed_token_are_reported_at_their_lines() {
    let settings = format!(
        "{SETTINGS}users:\n  - name: alice\n    password_hash: hunter2\n    roles: [admins]\n    token_sha256: [abc]\n"
    );
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    assert!(stderr.contains("settings.yaml:9:20: the password_hash of user `alice` is not an argon2 hash"), "{stderr}");
    assert!(stderr.contains("buildmaster hash-password"), "{stderr}");
    assert!(stderr.contains("settings.yaml:11:20: not the SHA-256 of a token"), "{stderr}");
}

#[test]
fn matrix_and_interpolation_mistakes_are_reported_at_their_lines_and_the_expanded_count_is_printed() {
    let master = "factories:\n  F:\n    steps:\n      - name: s\n        command: make %(props:target)s\n\
                  builders:\n  - name: Fedora\n    factory: F\n    workers: [w1]\n    matrix:\n      branch: [main, \"3.14\"]\n\
                  \x20   exclude:\n      - {branch: \"2.7\"}\n";
    let (ok, stderr) = checkconfig(SETTINGS, master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:7:11: the name `Fedora` does not use matrix axis `branch`"), "{stderr}");
    assert!(stderr.contains("put `{branch}` in the name"), "{stderr}");
    assert!(stderr.contains("master.yaml:13:18: `branch: 2.7` is not a value of this builder's matrix"), "{stderr}");

    let expanded = master.replace("Fedora", "Fedora {branch}").replace("2.7", "3.14");
    let (ok, stderr) = checkconfig(SETTINGS, &expanded);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:5:18: `%(props:target)s`: unknown kind `props`"), "{stderr}");

    let good = expanded.replace("%(props:target)s", "%(prop:target:-all)s");
    let output = Command::new(binary("buildmaster"))
        .arg("--settings")
        .arg(write_pair(SETTINGS, &good))
        .arg("checkconfig")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("config is valid: 1 builders"), "one of two combinations is excluded: {said}");
}

#[test]
fn buildbot_python_orgs_translation_checks_with_the_real_configurations_counts() {
    let root = crate::harness::repository_root();
    let output = Command::new(binary("buildmaster"))
        .arg("--settings")
        .arg(root.join("deploy/example/python-org/settings.yaml"))
        .arg("checkconfig")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{said}{}", String::from_utf8_lossy(&output.stderr));
    // As master.cfg expands it at python/buildmaster-config af48ad7: 162
    // BuilderDefs, 1036 builders, 16 schedulers, 57 workers.
    assert!(said.contains("config is valid: 1036 builders (162 definitions, "), "{said}");
    assert!(said.contains(" 16 schedulers, 57 workers"), "{said}");
}

#[test]
fn a_dependent_scheduler_that_follows_itself_and_a_short_webhook_secret_are_refused() {
    let master = format!(
        "{VALID_MASTER}schedulers:\n  - {{type: dependent, name: a, upstream: b, builders: [b]}}\n\
         \x20 - {{type: dependent, name: b, upstream: a, builders: [b]}}\n"
    );
    let settings = format!("{SETTINGS}github:\n  webhook_secret: short\n");
    let (ok, stderr) = checkconfig(&settings, &master);
    assert!(!ok);
    assert!(stderr.contains("scheduler `a` follows itself through its upstreams"), "{stderr}");
    assert!(stderr.contains("the webhook secret is shorter than 16 characters"), "{stderr}");
}

#[test]
fn sign_in_providers_with_missing_or_wrong_settings_are_reported_at_their_lines_without_their_secrets() {
    // A provider without its secret: where it is.
    let settings = format!(
        "{SETTINGS}web:\n  url: https://ci.example.org/\nsign_in:\n  oidc:\n    - name: sso\n\
         \x20     issuer: https://sso.example.org/realms/ci\n      client_id: buildmaster\n"
    );
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    assert!(
        stderr.contains("settings.yaml:11:") && stderr.contains("sign_in.oidc[0]: missing field `client_secret`"),
        "{stderr}"
    );

    // Line 7 onwards: no web.url; a provider with a bad name, an http
    // issuer elsewhere and roles without a claim; a GitHub team not
    // written as organisation/team.
    let settings = format!(
        "{SETTINGS}sign_in:\n  oidc:\n    - name: bad name\n      issuer: http://sso.example.org\n\
         \x20     client_id: buildmaster\n      client_secret: oidc-secret-never-printed\n      roles: {{ci-admins: [admins]}}\n\
         \x20 github:\n    client_id: Iv1.abc\n    client_secret: github-secret-never-printed\n    teams:\n\
         \x20     core-developers: [developers]\n"
    );
    let (ok, stderr) = checkconfig(&settings, VALID_MASTER);
    assert!(!ok);
    for expected in [
        "settings.yaml:7:1: signing in with a provider needs `web.url`",
        "settings.yaml:9:13: provider name `bad name` is not allowed",
        "settings.yaml:10:15: issuer `http://sso.example.org` must be an https:// URL",
        "settings.yaml:13:7: `roles` maps groups to roles, but no `roles_claim`",
        "settings.yaml:18:7: `core-developers` does not name a team as `organisation/team-slug`",
    ] {
        assert!(stderr.contains(expected), "expected `{expected}` in:\n{stderr}");
    }
    assert!(!stderr.contains("never-printed"), "a secret was printed:\n{stderr}");
}

#[test]
fn a_release_board_without_branches_or_with_a_tag_no_builder_has_is_reported_at_its_line() {
    let master = format!("{VALID_MASTER}release_board:\n  branches: [main]\n  tags: [stabel]\n");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:12:10: no builder has the tag `stabel`"), "{stderr}");
    let master = format!("{VALID_MASTER}release_board:\n  branches: []\n  tags: [stable]\n");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:10:1: the release board needs `branches` and `tags`"), "{stderr}");
}

#[test]
fn mistakes_in_factories_branches_owners_and_selections_are_reported_at_their_lines() {
    let settings = "database_url: postgres://x@127.0.0.1/x\namqp_url: amqp://127.0.0.1\nredis_url: redis://127.0.0.1\n\
owners:\n  alice: {email: alice@example.org, password: long-enough-password}\n\
workers:\n  alice-one: {branches: {since: \"9.9\"}, downtime: [{from: \"08:00\", until: \"10:00\", weekdays: [someday]}]}\n\
\x20 bob-two: {owner: bob}\n\
\x20 carol-three: {}\n\
mail: {smtp_host: 127.0.0.1, from: buildbot@example.org}\n";
    let master = "\
branches:
  - {name: main}
  - {name: \"3.14\"}
factories:
  Base:
    kw: {jobs: 2}
    steps:
      - name: make
        command: [make, \"-j%(kw:jobs)s\"]
        timeout: \"= jobs * nope\"
  Late:
    extends: Base
    steps:
      - {name: a, command: [\"true\"], if: \"jobs >\"}
      - {name: b, command: [\"true\"], run_if: {step: later, results: [FAILURE]}}
      - {name: later, command: [\"true\"], set_property: \"no spaces\"}
builders:
  - {name: B, factory: Base, workers: [alice-one], branches: [main]}
  - {name: L, factory: Late, workers: [alice-one], branches: all}
  - {name: C, factory: Base, workers: [alice-one], branches: [main, \"4.0\"]}
schedulers:
  - {type: force, name: force, builders: {tags: [nothing-has-this]}}
";
    let (ok, stderr) = checkconfig(settings, master);
    assert!(!ok);
    for expected in [
        // settings.yaml
        "settings.yaml:7:33: `9.9` is not one of the branches",
        "settings.yaml:7:94: `someday` is not a day of the week",
        "settings.yaml:8:20: worker `bob-two` names owner `bob`, who is not under `owners:`",
        "settings.yaml:9:3: worker `carol-three` has no password",
        // master.yaml
        "master.yaml:10:18: for builder `B main`: `nope` is not a kw of factory `Base`, nor a property of builder `B main` or its worker",
        "master.yaml:14:42: the expression ends too soon",
        "master.yaml:15:53: step `b` depends on step `later`, which does not run before it",
        "master.yaml:16:56: `no spaces` is not a property name",
        "master.yaml:20:69: `4.0` is not one of the branches",
        "master.yaml:22:42: no builder has these tags",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    let master = VALID_MASTER.replace("  F:\n", "  Child: {extends: Missing}\n  F:\n");
    let (ok, stderr) = checkconfig(SETTINGS, &master);
    assert!(!ok);
    assert!(stderr.contains("master.yaml:2:20: factory `Child` extends `Missing`, which is not defined"), "{stderr}");
}

#[test]
fn buildbot_python_orgs_settings_keys_are_read_or_reported_at_their_lines_with_what_to_write() {
    let settings = "db_url: sqlite:///state.sqlite\namqp_url: amqp://127.0.0.1\nredis_url: redis://127.0.0.1\n\
web_port: 9011\nbuildbot_url: https://buildbot.python.org/all/\nirc_host: irc.libera.chat\nworker_port: 9021\n\
owners:\n  alice: {email: alice@example.org, password: long-enough-password}\n\
workers:\n  alice-one: {}\n";
    let (ok, stderr) = checkconfig(settings, VALID_MASTER.replace("w1", "alice-one").as_str());
    assert!(!ok);
    for expected in [
        "settings.yaml:1:9: buildmaster keeps its records in Postgres, not in this database",
        "give `database_url: postgresql://USER:PASSWORD@HOST/DB`",
        "settings.yaml:6:1: `irc_host` is buildbot.python.org's setting; buildmaster says it elsewhere",
        "write `irc: {host: irc.libera.chat, nickname: ...}`",
        "settings.yaml:7:1: `worker_port` is buildbot.python.org's setting",
    ] {
        assert!(stderr.contains(expected), "missing `{expected}` in:\n{stderr}");
    }
    assert!(!stderr.contains("web_port") && !stderr.contains("buildbot_url"), "those mean the same here:\n{stderr}");
    // Written as buildmaster says it, the same file loads: the worker takes
    // its owner's password and mail.
    let fixed = settings
        .replace("db_url: sqlite:///state.sqlite", "db_url: postgres://x@127.0.0.1/x")
        .replace("irc_host: irc.libera.chat\nworker_port: 9021\n", "");
    let (ok, stderr) = checkconfig(&fixed, VALID_MASTER.replace("w1", "alice-one").as_str());
    assert!(!ok, "the owner's mail needs a mail server");
    assert!(
        stderr.contains("worker `alice-one` has people to mail when it is missing, but there is no `mail` server"),
        "{stderr}"
    );
    let (ok, stderr) = checkconfig(
        &format!("{fixed}mail: {{smtp_host: 127.0.0.1, from: buildbot@example.org}}\n"),
        VALID_MASTER.replace("w1", "alice-one").as_str(),
    );
    assert!(ok, "{stderr}");
}
