//! The translation of buildbot.python.org's configuration
//! (deploy/example/python-org) against the real one: every builder's name,
//! workers, tags and schedulers, and the steps of a handful of builders of
//! each kind, as python/buildmaster-config's own master.cfg expands them
//! (reference/, written by reference/dump.py from the commit named in
//! master.yaml). Where the translation differs on purpose, the difference
//! is listed here and in the example's README.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;
use shared::config::{BuilderConfig, Config, StepCommand, StepSpec};

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/example/python-org")
}

fn load() -> Config {
    Config::load(&example().join("settings.yaml")).unwrap_or_else(|errors| panic!("the translation loads:\n{errors}"))
}

#[test]
fn every_builder_has_the_real_configurations_name_workers_tags_and_schedulers() {
    let config = load();
    let reference = std::fs::read_to_string(example().join("reference/builders.jsonl")).unwrap();
    let real: Vec<Value> = reference.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(real.len(), 1036);
    assert_eq!(config.master.builders.len(), real.len(), "as many builders");
    let definitions: BTreeSet<usize> = config.master.builders.iter().map(|b| b.definition).collect();
    assert_eq!(definitions.len(), 162, "one definition per BuilderDef");
    assert_eq!(config.master.schedulers.len(), 16);
    assert_eq!(config.settings.workers.len(), 57);

    let mut schedulers_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for scheduler in &config.master.schedulers {
        for builder in scheduler.builders() {
            schedulers_of.entry(builder.as_str()).or_default().push(scheduler.name());
        }
    }
    let mut wrong = Vec::new();
    for builder in &real {
        let name = builder["name"].as_str().unwrap();
        let Some(ours) = config.builder(name) else {
            wrong.push(format!("{name}: missing"));
            continue;
        };
        let strings = |value: &Value| -> Vec<String> {
            value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
        };
        let workers: Vec<String> = ours.workers.iter().map(|w| w.to_string()).collect();
        let mut tags = ours.tags.clone();
        tags.sort();
        let mut schedulers: Vec<String> =
            schedulers_of.get(name).into_iter().flatten().map(|s| (*s).to_owned()).collect();
        schedulers.sort();
        for (what, theirs, ours) in [
            ("workers", strings(&builder["workers"]), workers),
            ("tags", strings(&builder["tags"]), tags),
            ("schedulers", strings(&builder["schedulers"]), schedulers),
        ] {
            if theirs != ours {
                wrong.push(format!("{name}: {what} {ours:?}, real {theirs:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{} builders differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// What the translation does differently on purpose (README.md, "What
/// differs"), as the comparison words it.
const KNOWN: &[&str] = &[
    // The JUnit file is read by the test step (`test_results`) on every
    // build, rather than copied by a separate upload step when wanted.
    "AMD64 Debian root 3.x: real step `upload` is not a step here",
    "ARM64 Raspbian 3.14: real step `upload` is not a step here",
    "AMD64 Arch Linux Asan 3.13: real step `upload` is not a step here",
    "ARM64 Windows Non-Debug 3.13: real step `upload` is not a step here",
    "wasm32-wasi Non-Debug 3.12: real step `upload` is not a step here",
    "wasm32-wasi 3.x: real step `upload` is not a step here",
    "aarch64 Ubuntu 24.04 BigMem 3.x: real step `upload` is not a step here",
    // Buildbot's `%(prop:builddir)s` is the builder's directory; a step's
    // directory is `build` in it, so the relative path is the same file.
    "AMD64 Arch Linux Valgrind PR: step `test` command [\"valgrind\",\"--leak-check=full\",\"--show-leak-kinds=definite\",\"--error-exitcode=10\",\"--gen-suppressions=all\",\"--track-origins=yes\",\"--trace-children=no\",\"--suppressions=Misc/valgrind-python.supp\",\"./python\",\"-m\",\"test\",\"test_grammar\",\"test_syntax\",\"test_tokenize\",\"test_fstring\",\"test_ast\",\"test_exceptions\",\"--timeout=6000\"], real [\"valgrind\",\"--leak-check=full\",\"--show-leak-kinds=definite\",\"--error-exitcode=10\",\"--gen-suppressions=all\",\"--track-origins=yes\",\"--trace-children=no\",\"--suppressions=%(prop:builddir)s/build/Misc/valgrind-python.supp\",\"./python\",\"-m\",\"test\",\"test_grammar\",\"test_syntax\",\"test_tokenize\",\"test_fstring\",\"test_ast\",\"test_exceptions\",\"--timeout=6000\"]",
    // Android's host triple is made by the step that reads the build
    // triple, instead of by a Python renderer.
    "aarch64 Android 3.14: step `Get build triple` command \"./config.guess | sed 's/-.*/-linux-android/'\", real [\"./config.guess\"]",
    "aarch64 Android 3.14: step `Configure host/Android Python` command [\"python3\",\"Platforms/Android\",\"configure-host\",\"%(prop:host_triple)s\"], real [\"python3\",\"Platforms/Android\",\"configure-host\",\"renderer\"]",
    "aarch64 Android 3.14: step `Compile host/Android Python` command [\"python3\",\"Platforms/Android\",\"make-host\",\"%(prop:host_triple)s\"], real [\"python3\",\"Platforms/Android\",\"make-host\",\"renderer\"]",
];

#[test]
fn a_handful_of_builders_run_the_real_steps_with_the_real_timeouts() {
    let config = load();
    let reference: BTreeMap<String, Vec<Value>> =
        serde_json::from_str(&std::fs::read_to_string(example().join("reference/steps.json")).unwrap()).unwrap();
    assert!(
        reference.len() >= 15,
        "kinds: Unix, refleak on a slow worker, out of tree, installed, Windows, cross, iOS, Android, ..."
    );
    let mut found = Vec::new();
    for (name, steps) in &reference {
        let builder = config.builder(name).unwrap_or_else(|| panic!("{name} is expanded"));
        found.extend(compare(builder, steps));
    }
    let known: Vec<String> = KNOWN.iter().map(|s| (*s).to_owned()).collect();
    let unexpected: Vec<&String> = found.iter().filter(|f| !known.contains(f)).collect();
    let gone: Vec<&String> = known.iter().filter(|k| !found.contains(k)).collect();
    assert!(
        unexpected.is_empty() && gone.is_empty(),
        "differences not listed:\n{unexpected:#?}\nlisted but gone:\n{gone:#?}"
    );
    // The scheduler that starts them, as the real master.cfg says.
    let started_by = |builder: &str| -> Vec<&str> {
        config
            .master
            .schedulers
            .iter()
            .filter(|s| s.builders().iter().any(|b| b == builder))
            .map(|s| s.name())
            .collect()
    };
    assert_eq!(started_by("PPC64LE Fedora Stable Refleaks 3.10"), ["3.10-refleak", "force"]);
    assert_eq!(started_by("AMD64 Fedora Stable PR"), ["pull-request-scheduler", "force"]);
    assert_eq!(started_by("AMD64 Debian root 3.x"), ["3.x", "force"]);
}

/// The differences between our steps and the real ones, as text.
fn compare(builder: &BuilderConfig, real: &[Value]) -> Vec<String> {
    let name = builder.name.as_str();
    let mut out = Vec::new();
    let ours: BTreeMap<&str, &StepSpec> = builder.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let real_names: Vec<&str> =
        real.iter().filter(|s| s["class"] != "UploadTestResults").map(|s| s["name"].as_str().unwrap()).collect();
    let our_names: Vec<&str> = builder.steps.iter().map(|s| s.name.as_str()).collect();
    if real_names != our_names {
        out.push(format!("{name}: steps {our_names:?}, real {real_names:?}"));
    }
    for step in real {
        let step_name = step["name"].as_str().unwrap();
        if step["class"] == "UploadTestResults" {
            out.push(format!("{name}: real step `{step_name}` is not a step here"));
            continue;
        }
        let Some(spec) = ours.get(step_name) else { continue };
        let mut differ = |what: &str, ours: String, theirs: String| {
            if ours != theirs {
                out.push(format!("{name}: step `{step_name}` {what} {ours}, real {theirs}"));
            }
        };
        differ("timeout", spec.timeout.to_string(), step["timeout"].to_string());
        differ("halt_on_failure", spec.halt_on_failure.to_string(), step["haltOnFailure"].to_string());
        differ("flunk_on_failure", spec.flunk_on_failure.to_string(), step["flunkOnFailure"].to_string());
        differ("warn_on_failure", spec.warn_on_failure.to_string(), step["warnOnFailure"].to_string());
        differ("always_run", spec.always_run.to_string(), step["alwaysRun"].to_string());
        if step["class"] == "GitHub" {
            let env = |key: &str| spec.env.get(key).cloned().unwrap_or_default();
            let filter = step["filters"].get(0).and_then(Value::as_str).unwrap_or_default().to_owned();
            let depth = if step["shallow"] == true { "1".to_owned() } else { String::new() };
            differ("repourl", env("BM_GIT_REPOURL"), step["repourl"].as_str().unwrap().to_owned());
            differ("mode", env("BM_GIT_MODE"), step["mode"].as_str().unwrap().to_owned());
            differ("method", env("BM_GIT_METHOD"), step["method"].as_str().unwrap().to_owned());
            differ("filter", env("BM_GIT_FILTER"), filter);
            differ("depth", env("BM_GIT_DEPTH"), depth);
            differ(
                "clobber_on_failure",
                env("BM_GIT_CLOBBER_ON_FAILURE"),
                if step["clobberOnFailure"] == true { "1" } else { "0" }.into(),
            );
            // Without a branch, Buildbot's step says `HEAD`: the change's.
            let branch = builder.properties.get("branch").and_then(|b| b.as_str()).unwrap_or("HEAD").to_owned();
            differ("branch", branch, step["branch"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        let command = match &spec.command {
            StepCommand::Argv(argv) => serde_json::to_string(argv).unwrap(),
            StepCommand::Shell(script) => serde_json::to_string(script).unwrap(),
        };
        differ("command", command, unwrap_interpolate(&step["command"]).to_string());
        differ("max_time", format!("{:?}", spec.max_time), format!("{:?}", step["maxTime"].as_u64()));
        let env: BTreeMap<String, Value> =
            spec.env.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        let real_env = match &step["env"] {
            Value::Null => Value::Object(Default::default()),
            other => unwrap_interpolate(other),
        };
        differ("env", serde_json::to_string(&env).unwrap(), serde_json::to_string(&real_env).unwrap());
        let workdir = step["workdir"].as_str().unwrap_or("build");
        differ("workdir", spec.workdir.clone(), workdir.to_owned());
        let codes: BTreeMap<String, i64> =
            spec.decode_rc.iter().map(|(code, results)| (code.to_string(), *results as i64)).collect();
        differ("decode_rc", serde_json::to_string(&codes).unwrap(), step["decodeRC"].to_string());
    }
    out
}

/// `Interpolate(TEXT)` as the dump writes Buildbot's renderables, as TEXT;
/// other renderables as `renderer`.
fn unwrap_interpolate(value: &Value) -> Value {
    match value {
        Value::String(text) if text.starts_with("Interpolate(") => {
            Value::String(text.trim_start_matches("Interpolate(").trim_end_matches(')').to_owned())
        }
        Value::String(text) if text.starts_with('\'') => Value::String("renderer".into()),
        Value::Array(items) => Value::Array(items.iter().map(unwrap_interpolate).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), unwrap_interpolate(v))).collect()),
        other => other.clone(),
    }
}
