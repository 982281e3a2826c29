//! Factories as templates: a factory may `extends` another and change its
//! `kw` (keyword values, as Buildbot's `Interpolate` takes them), tags,
//! branches or steps, the way buildbot.python.org's factory classes inherit
//! from `UnixBuild`. Each builder gets its own steps, worked out when the
//! configuration is loaded: `%(kw:NAME)s` puts in a value, a text written
//! `= EXPR` is computed (`expr.rs`), and a step's `if:` leaves it out.
//!
//! A name is looked up in the builder's worker's properties, then the
//! builder's own (its branch's included), then the factory's `kw`: the
//! factory gives defaults that a worker (`timeout_factor: 2`) or a branch
//! overrides. What is computed here is fixed for the builder; what changes
//! per build stays `%(prop:NAME)s`, put in at the claim.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::YamlPath;
use super::diagnostics::SourceFile;
use super::expr;
use super::steps::{GitStepFile, StepSpec};

/// A factory as its file says it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FactoryFile {
    /// The factory this one starts from; what this one gives replaces the
    /// parent's (`kw` name by name).
    extends: Option<String>,
    #[serde(default)]
    kw: Mapping,
    /// Tags of every builder running it (buildbot.python.org's
    /// `factory_tags`).
    tags: Option<Vec<String>>,
    /// The branches it can build (`branches.rs`), when fewer than all.
    branches: Option<Value>,
    /// Shown on its builders' pages, e.g. what a worker needs to run it.
    description: Option<String>,
    steps: Option<Vec<Value>>,
}

/// A factory with what it inherits filled in.
#[derive(Debug, Clone, Default)]
pub struct FactoryConfig {
    pub kw: Mapping,
    pub tags: Vec<String>,
    pub branches: Option<Value>,
    pub description: Option<String>,
    /// The steps, as templates.
    pub steps: Vec<Value>,
    /// The factory whose file text the steps are, for errors.
    pub steps_from: String,
}

/// Fills in what each factory inherits; a missing parent or a cycle is an
/// error at its `extends`.
pub(super) fn inherit(
    file: &mut SourceFile,
    at: &YamlPath,
    factories: &BTreeMap<String, FactoryFile>,
    names: &[&String],
) -> Option<BTreeMap<String, FactoryConfig>> {
    let mut done: BTreeMap<String, FactoryConfig> = BTreeMap::new();
    let mut complete = true;
    for &name in names {
        // The chain from this factory up to the first without a parent.
        let mut chain = vec![name.as_str()];
        let mut broken = false;
        while let Some(parent) = factories[*chain.last().expect("not empty")].extends.as_deref() {
            let child = *chain.last().expect("not empty");
            if !factories.contains_key(parent) {
                file.error_at_value(
                    &at.key(child).key("extends"),
                    format!("factory `{child}` extends `{parent}`, which is not defined"),
                    Some(format!("define `{parent}` under `factories:` or fix the name")),
                );
                broken = true;
                break;
            }
            if chain.contains(&parent) {
                file.error_at_value(
                    &at.key(child).key("extends"),
                    format!("factory `{child}` extends itself through `{parent}`"),
                    None,
                );
                broken = true;
                break;
            }
            chain.push(parent);
        }
        if broken {
            complete = false;
            continue;
        }
        let mut factory = FactoryConfig::default();
        for link in chain.iter().rev() {
            let own = &factories[*link];
            for (key, value) in &own.kw {
                factory.kw.insert(key.clone(), value.clone());
            }
            if let Some(tags) = &own.tags {
                factory.tags = tags.clone();
            }
            if own.branches.is_some() {
                factory.branches = own.branches.clone();
            }
            if own.description.is_some() {
                factory.description = own.description.clone();
            }
            if let Some(steps) = &own.steps {
                factory.steps = steps.clone();
                factory.steps_from = (*link).to_owned();
            }
        }
        if factory.steps.is_empty() {
            file.error_at(&at.key(name.clone()), format!("factory `{name}` has no steps"), None);
            complete = false;
        }
        done.insert(name.clone(), factory);
    }
    complete.then_some(done)
}

/// Where a builder's names come from.
pub(super) struct Context<'a> {
    pub builder: &'a str,
    pub factory_name: &'a str,
    pub factory: &'a FactoryConfig,
    /// The builder's properties (its branch's and matrix's included).
    pub properties: &'a BTreeMap<String, Value>,
    /// Its workers' properties; a name they give must be the same for all.
    pub workers: Vec<(&'a str, &'a BTreeMap<String, Value>)>,
}

impl Context<'_> {
    /// The value of `name`, or why there is none.
    fn lookup(&self, name: &str, depth: usize) -> Result<Value, String> {
        let mut given = self.workers.iter().filter_map(|(worker, properties)| Some((*worker, properties.get(name)?)));
        if let Some((first_worker, first)) = given.next() {
            if let Some((other, _)) = given.find(|(_, value)| *value != first) {
                return Err(format!(
                    "workers `{first_worker}` and `{other}` of builder `{}` give `{name}` different values",
                    self.builder
                ));
            }
            return Ok(first.clone());
        }
        if let Some(value) = self.properties.get(name) {
            return Ok(value.clone());
        }
        match self.factory.kw.get(name) {
            Some(value) => self.render(value, depth + 1),
            None => Err(format!(
                "`{name}` is not a kw of factory `{}`, nor a property of builder `{}` or its worker",
                self.factory_name, self.builder
            )),
        }
    }

    /// `value` with every `%(kw:NAME)s` put in and every `= EXPR` computed.
    fn render(&self, value: &Value, depth: usize) -> Result<Value, String> {
        if depth > 32 {
            return Err("a kw refers to itself".into());
        }
        Ok(match value {
            Value::String(text) => match text.strip_prefix('=') {
                Some(expression) => {
                    let mut lookup = |name: &str| self.lookup(name, depth);
                    expr::eval(expression, &mut lookup)?
                }
                None => self.interpolate(text, depth)?,
            },
            Value::Sequence(items) => {
                let mut out = Vec::new();
                for item in items {
                    // A list put in as an item adds its items (a YAML alias
                    // of a list too: no field takes lists of lists); a
                    // computed `None` adds none; a number or a boolean is
                    // put in as text (a command's word).
                    match (item, self.render(item, depth)?) {
                        (_, Value::Sequence(inner)) => out.extend(inner),
                        (Value::String(_), Value::Null) => {}
                        (Value::String(_), scalar @ (Value::Number(_) | Value::Bool(_))) => {
                            out.push(Value::String(expr::text(&scalar)))
                        }
                        (_, rendered) => out.push(rendered),
                    }
                }
                Value::Sequence(out)
            }
            Value::Mapping(map) => {
                let mut out = Mapping::new();
                for (key, item) in map {
                    // A computed `None` leaves the field out: its default holds.
                    match (item, self.render(item, depth)?) {
                        (Value::String(_), Value::Null) => {}
                        (_, rendered) => {
                            out.insert(key.clone(), rendered);
                        }
                    }
                }
                Value::Mapping(out)
            }
            other => other.clone(),
        })
    }

    /// A text with its `%(kw:NAME)s` put in; one that is nothing but a
    /// reference becomes the value itself (a list stays a list).
    fn interpolate(&self, text: &str, depth: usize) -> Result<Value, String> {
        const OPEN: &str = "%(kw:";
        if !text.contains(OPEN) {
            return Ok(Value::String(text.to_owned()));
        }
        if let Some(name) = text.strip_prefix(OPEN).and_then(|rest| rest.strip_suffix(")s"))
            && !name.contains(')')
        {
            return self.lookup(name, depth);
        }
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(OPEN) {
            out.push_str(&rest[..start]);
            let after = &rest[start + OPEN.len()..];
            let end = after.find(")s").ok_or_else(|| format!("`{OPEN}{after}` has no closing `)s`"))?;
            out.push_str(&expr::text(&self.lookup(&after[..end], depth)?));
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        Ok(Value::String(out))
    }

    /// Whether a step's `if:` holds.
    fn holds(&self, condition: &Value) -> Result<bool, String> {
        match condition {
            Value::Bool(b) => Ok(*b),
            Value::String(text) => {
                let mut lookup = |name: &str| self.lookup(name, 0);
                Ok(expr::truthy(&expr::eval(text.strip_prefix('=').unwrap_or(text), &mut lookup)?))
            }
            _ => Err("`if` is an expression, e.g. `if: \"not is_pr\"`".into()),
        }
    }
}

/// The steps of one builder, each with the place of its template; `None`
/// when one cannot be worked out (the error is in `file`, at the step).
pub(super) fn steps_for(
    file: &mut SourceFile,
    at: &YamlPath,
    context: &Context,
    settings: &super::Settings,
) -> Option<Vec<StepSpec>> {
    let origin = at.key(context.factory.steps_from.clone()).key("steps");
    let mut steps = Vec::new();
    let mut complete = true;
    for (index, template) in context.factory.steps.iter().enumerate() {
        let step_at = origin.index(index);
        let problem = |file: &mut SourceFile, problem: String| {
            file.error_at(&step_at, format!("for builder `{}`: {problem}", context.builder), None);
        };
        // A whole `%(kw:NAME)s` in the list stands for a list of steps.
        let templates = match template {
            Value::String(_) => match context.render(template, 0) {
                Ok(Value::Sequence(many)) => many,
                Ok(Value::Null) => Vec::new(),
                Ok(_) => {
                    problem(file, "a step given by a kw must be a list of steps".into());
                    complete = false;
                    continue;
                }
                Err(error) => {
                    problem(file, error);
                    complete = false;
                    continue;
                }
            },
            one => vec![one.clone()],
        };
        for template in templates {
            let Value::Mapping(mut map) = template else {
                problem(file, "a step is a mapping with a `name`".into());
                complete = false;
                continue;
            };
            if let Some(condition) = map.remove("if") {
                match context.holds(&condition) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(error) => {
                        file.error_at_value(&step_at.key("if"), error, None);
                        complete = false;
                        continue;
                    }
                }
            }
            // Field by field, so that a mistake is reported at its field.
            let mut rendered = Mapping::new();
            let mut fields_ok = true;
            for (key, item) in map {
                match context.render(&item, 0) {
                    Ok(Value::Null) if item.is_string() => {}
                    Ok(value) => {
                        rendered.insert(key, value);
                    }
                    Err(error) => {
                        let field = step_at.key(key.as_str().unwrap_or_default());
                        file.error_at_value(&field, format!("for builder `{}`: {error}", context.builder), None);
                        fields_ok = false;
                    }
                }
            }
            if !fields_ok {
                complete = false;
                continue;
            }
            let rendered = Value::Mapping(rendered);
            let parsed = if rendered.get("git").is_some() {
                file.deserialize::<GitStepFile>(&step_at, rendered).map(GitStepFile::into_step)
            } else {
                file.deserialize::<StepSpec>(&step_at, rendered)
            };
            match parsed {
                Some(step) => {
                    super::validate::step(file, &step_at, &step, settings);
                    complete &= earlier_steps_hold(file, &step_at, &step, &steps);
                    steps.push(step);
                }
                None => complete = false,
            }
        }
    }
    let mut names = BTreeSet::new();
    for step in &steps {
        if !names.insert(step.name.as_str()) {
            file.error_at(
                &origin,
                format!("builder `{}` would have two steps named `{}`", context.builder, step.name),
                Some("step names must be unique within a factory".into()),
            );
            complete = false;
        }
    }
    complete.then_some(steps)
}

/// Whether a step's `run_if` names a step that runs before it, and its
/// `set_property` a property name; what is wrong is reported at `at`.
fn earlier_steps_hold(file: &mut SourceFile, at: &YamlPath, step: &StepSpec, earlier: &[StepSpec]) -> bool {
    let mut holds = true;
    if let Some(crate::wire::RunIf::Step { step: name, results }) = &step.run_if {
        if !earlier.iter().any(|before| before.name == *name) {
            let names: Vec<&str> = earlier.iter().map(|before| before.name.as_str()).collect();
            file.error_at_value(
                &at.key("run_if").key("step"),
                format!("step `{}` depends on step `{name}`, which does not run before it", step.name),
                Some(match names.is_empty() {
                    true => "no step runs before it".into(),
                    false => format!("the steps before it are: {}", names.join(", ")),
                }),
            );
            holds = false;
        }
        if results.is_empty() {
            file.error_at_value(
                &at.key("run_if").key("results"),
                "`results` lists none: the step would never run",
                Some("e.g. `results: [FAILURE, WARNINGS]`".into()),
            );
            holds = false;
        }
    }
    if let Some(name) = &step.set_property {
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !valid {
            file.error_at_value(
                &at.key("set_property"),
                format!("`{name}` is not a property name"),
                Some("use letters, digits, `_`, `-` and `.`".into()),
            );
            holds = false;
        }
    }
    holds
}
