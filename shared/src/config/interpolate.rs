//! Buildbot's interpolation in step commands, environment and working
//! directories: `%(prop:NAME)s` (a build property), `%(prop:NAME:-TEXT)s`
//! (TEXT when the property is missing or empty) and `%(secret:NAME)s` (a
//! secret, put in by the worker and masked in logs). Any other `%` is left
//! alone, so `printf '%s\n'` needs no escaping.
//!
//! A property never becomes shell code: in a shell string (`command: "make
//! %(prop:target)s"`) it is passed in an environment variable and the
//! string refers to it (`${BM_PROP_0}`), so quote it as you would any shell
//! variable (`"%(prop:branch)s"`, not inside single quotes). In a list
//! command or a workdir it goes in as is; in an env value its `%(` is
//! escaped, so it cannot name a secret.

use serde_json::{Map, Value};

/// One part of an interpolated text.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Property { name: &'a str, default: Option<&'a str> },
    Secret(&'a str),
}

/// Splits `text` into its parts; an error says what is wrong.
fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("%(") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after.find(")s").ok_or_else(|| format!("`{}` has no closing `)s`", &rest[start..]))?;
        let inner = &after[..end];
        let (kind, name) = inner
            .split_once(':')
            .ok_or_else(|| format!("`%({inner})s` names no kind; use %(prop:NAME)s or %(secret:NAME)s"))?;
        out.push(match kind {
            "prop" => {
                let (name, default) = match name.split_once(":-") {
                    Some((name, default)) => (name, Some(default)),
                    None => (name, None),
                };
                if name.is_empty() {
                    return Err(format!("`%({inner})s` names no property"));
                }
                Piece::Property { name, default }
            }
            "secret" => Piece::Secret(name),
            other => {
                return Err(format!("`%({inner})s`: unknown kind `{other}`; use %(prop:NAME)s or %(secret:NAME)s"));
            }
        });
        rest = &after[end + 2..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Checks the interpolations in `text` (for `checkconfig`).
pub fn check(text: &str) -> Result<(), String> {
    pieces(text).map(drop)
}

/// How a property's value is written into a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quoting {
    /// As it is (a list command's word, a workdir).
    None,
    /// As it is, with `%(` escaped as `%%(` (an env value, where the
    /// worker puts in secrets).
    Env,
}

/// `text` with its properties put in from `properties` (Buildbot's shape:
/// name → `[value, source]`, or a bare value); secrets are left for the
/// worker. A text that does not parse is returned unchanged (`checkconfig`
/// refuses such a configuration).
pub fn properties(text: &str, properties: &Map<String, Value>, quoting: Quoting) -> String {
    render(text, |name, default| {
        let value = property_value(properties, name, default);
        match quoting {
            Quoting::None => value,
            Quoting::Env => value.replace("%(", "%%("),
        }
    })
    .unwrap_or_else(|| text.to_owned())
}

/// A shell string with each property replaced by a reference to an
/// environment variable holding its value (`${BM_PROP_0}`, …), and those
/// variables: the shell never parses a value.
pub fn shell(script: &str, properties: &Map<String, Value>) -> (String, Vec<(String, String)>) {
    let mut env = Vec::new();
    let rendered = render(script, |name, default| {
        let variable = format!("BM_PROP_{}", env.len());
        let reference = format!("${{{variable}}}");
        env.push((variable, property_value(properties, name, default)));
        reference
    });
    match rendered {
        Some(script) => (script, env),
        None => (script.to_owned(), Vec::new()),
    }
}

/// `text` with each property written by `property(name, default)` and
/// secrets left for the worker; `None` when it does not parse.
fn render(text: &str, mut property: impl FnMut(&str, Option<&str>) -> String) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text).ok()? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Secret(name) => {
                out.push_str("%(secret:");
                out.push_str(name);
                out.push_str(")s");
            }
            Piece::Property { name, default } => out.push_str(&property(name, default)),
        }
    }
    Some(out)
}

fn property_value(properties: &Map<String, Value>, name: &str, default: Option<&str>) -> String {
    let value = properties.get(name).map(property_text).filter(|value| !value.is_empty());
    value.or_else(|| default.map(str::to_owned)).unwrap_or_default()
}

/// A property's value as text: strings as they are, other JSON as JSON.
fn property_text(value: &Value) -> String {
    let value = match value {
        Value::Array(pair) if pair.len() == 2 => &pair[0],
        other => other,
    };
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn props() -> Map<String, Value> {
        json!({ "branch": ["3.14", "Force"], "jobs": [4, "Worker"], "evil": ["x; rm -rf /", "Force"], "empty": "" })
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn properties_and_defaults_are_put_in_and_other_percents_left_alone() {
        let text = "printf '%s\\n' %(prop:branch)s -j%(prop:jobs)s %(prop:missing:-main)s %(prop:empty:-none)s";
        assert_eq!(properties(text, &props(), Quoting::None), "printf '%s\\n' 3.14 -j4 main none");
    }

    #[test]
    fn in_a_shell_string_a_property_is_a_variable_the_shell_never_parses() {
        let (script, env) = shell("echo \"built %(prop:evil)s\" %(prop:branch)s", &props());
        assert_eq!(script, "echo \"built ${BM_PROP_0}\" ${BM_PROP_1}");
        assert_eq!(env, [("BM_PROP_0".into(), "x; rm -rf /".into()), ("BM_PROP_1".into(), "3.14".into())]);
    }

    #[test]
    fn in_an_env_value_a_property_cannot_name_a_secret() {
        let props = json!({ "branch": "%(secret:token)s" }).as_object().unwrap().clone();
        assert_eq!(properties("%(prop:branch)s", &props, Quoting::Env), "%%(secret:token)s");
    }

    #[test]
    fn secrets_are_left_for_the_worker_and_mistakes_are_named() {
        assert_eq!(properties("%(secret:token)s", &props(), Quoting::None), "%(secret:token)s");
        assert!(check("%(props:branch)s").unwrap_err().contains("unknown kind `props`"));
        assert!(check("%(prop:branch").unwrap_err().contains("no closing"));
        assert!(check("%(branch)s").unwrap_err().contains("names no kind"));
    }
}
