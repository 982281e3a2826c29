//! Buildbot's interpolation in step commands, environment and working
//! directories: `%(prop:NAME)s` (a build property), `%(prop:NAME:-TEXT)s`
//! (TEXT when the property is missing or empty) and `%(secret:NAME)s` (a
//! secret, put in by the worker and masked in logs).
//!
//! One scanner reads every such text, for `checkconfig`, the master and the
//! worker alike, with one escape rule: `%%(` is a literal `%(`. Any other
//! `%` is left alone, so `printf '%s\n'` needs no escaping.
//!
//! A property never becomes shell code: in a shell string (`command: "make
//! %(prop:target)s"`) it is passed in an environment variable and the
//! string refers to it (`${BM_PROP_0}`), so quote it as you would any shell
//! variable (`"%(prop:branch)s"`, not inside single quotes). In a list
//! command or a workdir it goes in as is; in an env value its `%(` is
//! escaped, so it cannot name a secret.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One part of an interpolated text.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Property { name: &'a str, default: Option<&'a str> },
    Secret(&'a str),
}

/// Splits `text` into its parts. Strict (`checkconfig`, the master): a
/// malformed reference is an error saying what is wrong. Lenient (the
/// worker, reading what a master rendered): it is text.
fn pieces(text: &str, strict: bool) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('%') {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
        let from = &rest[start..];
        if let Some(after) = from.strip_prefix("%%(") {
            out.push(Piece::Text(&from[1..3]));
            rest = after;
            continue;
        }
        let Some(after) = from.strip_prefix("%(") else {
            out.push(Piece::Text(&from[..1]));
            rest = &from[1..];
            continue;
        };
        match reference(after) {
            Ok((piece, length)) => {
                out.push(piece);
                rest = &after[length..];
            }
            Err(problem) if strict => return Err(problem),
            Err(_) => {
                out.push(Piece::Text(&from[..2]));
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// The reference that `after` (the text after `%(`) begins with, and how
/// many bytes of it the reference takes.
fn reference(after: &str) -> Result<(Piece<'_>, usize), String> {
    let end = after.find(")s").ok_or_else(|| format!("`%({after}` has no closing `)s`"))?;
    let inner = &after[..end];
    let (kind, name) = inner
        .split_once(':')
        .ok_or_else(|| format!("`%({inner})s` names no kind; use %(prop:NAME)s or %(secret:NAME)s"))?;
    let piece = match kind {
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
        "secret" if name.is_empty() => return Err(format!("`%({inner})s` names no secret")),
        "secret" => Piece::Secret(name),
        other => {
            return Err(format!("`%({inner})s`: unknown kind `{other}`; use %(prop:NAME)s or %(secret:NAME)s"));
        }
    };
    Ok((piece, end + 2))
}

/// Checks the interpolations in `text` (for `checkconfig`).
pub fn check(text: &str) -> Result<(), String> {
    pieces(text, true).map(drop)
}

/// The names of the secrets `text` uses (none when it does not parse).
pub fn secret_names(text: &str) -> Vec<&str> {
    let pieces = pieces(text, true).unwrap_or_default();
    pieces
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Secret(name) => Some(name),
            _ => None,
        })
        .collect()
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
    let escape = |text: &str| match quoting {
        Quoting::None => text.to_owned(),
        Quoting::Env => text.replace("%(", "%%("),
    };
    render(text, escape, |name, default| escape(&property_value(properties, name, default)))
        .unwrap_or_else(|| text.to_owned())
}

/// A shell string with each property replaced by a reference to an
/// environment variable holding its value (`${BM_PROP_0}`, …), and those
/// variables: the shell never parses a value.
pub fn shell(script: &str, properties: &Map<String, Value>) -> (String, Vec<(String, String)>) {
    let mut env = Vec::new();
    let rendered = render(script, str::to_owned, |name, default| {
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

/// `text` (as a master rendered it for the worker) with every
/// `%(secret:NAME)s` replaced by the secret's value and every `%%(` by
/// `%(`; the name of a secret not given is the error.
pub fn secrets(text: &str, values: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text, false).unwrap_or_default() {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Secret(name) => out.push_str(values.get(name).ok_or_else(|| name.to_owned())?),
            Piece::Property { name, default } => {
                // A master puts properties in before a text travels; one
                // left here is shown as written.
                out.push_str("%(prop:");
                out.push_str(name);
                if let Some(default) = default {
                    out.push_str(":-");
                    out.push_str(default);
                }
                out.push_str(")s");
            }
        }
    }
    Ok(out)
}

/// `text` with its plain parts written by `text_part`, each property by
/// `property(name, default)`, and secrets left for the worker; `None` when
/// it does not parse.
fn render(
    text: &str,
    text_part: impl Fn(&str) -> String,
    mut property: impl FnMut(&str, Option<&str>) -> String,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text, true).ok()? {
        match piece {
            Piece::Text(text) => out.push_str(&text_part(text)),
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
        let rendered = properties("%(prop:branch)s", &props, Quoting::Env);
        assert_eq!(rendered, "%%(secret:token)s");
        let secrets_given = BTreeMap::from([("token".to_owned(), "s3cr3t".to_owned())]);
        assert_eq!(secrets(&rendered, &secrets_given).unwrap(), "%(secret:token)s");
    }

    #[test]
    fn secrets_are_found_and_put_in_where_referenced() {
        let value = "token=%(secret:pypi)s;again=%(secret:pypi)s;%(secret:other)s";
        assert_eq!(secret_names(value), ["pypi", "pypi", "other"]);
        let values = BTreeMap::from([("pypi".to_owned(), "s3cr3t".to_owned()), ("other".to_owned(), "x".to_owned())]);
        assert_eq!(secrets(value, &values).unwrap(), "token=s3cr3t;again=s3cr3t;x");
        assert_eq!(secrets("%(secret:nope)s", &values), Err("nope".to_owned()));
        assert_eq!(secrets("%%(secret:token)s 50% %(open", &values).unwrap(), "%(secret:token)s 50% %(open");
        assert!(secret_names("%%(secret:token)s").is_empty());
        assert!(secret_names("100%(not a secret)").is_empty());
    }

    #[test]
    fn the_escape_is_the_same_for_every_reader() {
        assert_eq!(check("%%(prop:x"), Ok(()), "an escaped `%(` opens nothing");
        assert_eq!(properties("a %%(prop:x)s b", &props(), Quoting::None), "a %(prop:x)s b");
        assert_eq!(properties("a %%(prop:x)s", &props(), Quoting::Env), "a %%(prop:x)s");
    }

    #[test]
    fn secrets_are_left_for_the_worker_and_mistakes_are_named() {
        assert_eq!(properties("%(secret:token)s", &props(), Quoting::None), "%(secret:token)s");
        assert!(check("%(props:branch)s").unwrap_err().contains("unknown kind `props`"));
        assert!(check("%(prop:branch").unwrap_err().contains("no closing"));
        assert!(check("%(branch)s").unwrap_err().contains("names no kind"));
        assert!(check("%(secret:)s").unwrap_err().contains("names no secret"));
    }
}
