//! Buildbot's interpolation in step commands, environment and working
//! directories: `%(prop:NAME)s` (a build property), `%(prop:NAME:-TEXT)s`
//! (TEXT when the property is missing or empty) and `%(secret:NAME)s` (a
//! secret, put in by the worker and masked in logs).
//!
//! One scanner reads every such text, for `checkconfig`, the master and the
//! worker alike, with one escape rule: `%%(` is a literal `%(`. Any other
//! `%` is left alone, so `printf '%s\n'` needs no escaping.
//!
//! A property's value is data: it is never interpolated again and never
//! becomes shell code. In a shell string (`command: "make -j%(prop:jobs)s"`)
//! it is passed in an environment variable which the string refers to as
//! one word (`make -j"${BM_PROP_0}"`; inside double quotes `${BM_PROP_0}`);
//! inside single quotes, where the shell would not put it in, it is refused
//! by `checkconfig`. In a list command or a workdir it is one word as it is.
//!
//! Masters put secrets into env values themselves and send every value
//! with each `%(` escaped as `%%(`: a worker's pass (`on_worker`) then only
//! undoes the escape, so nothing a property holds can name a secret there,
//! and workers of the previous version, which still put secrets in, read
//! the same values.
//!
//! A property an earlier step of the build sets (`set_property`) is known
//! only as the build runs: the master leaves its reference, unescaped, in
//! that step's texts (escaping everything else, argv and workdir too, and
//! marking the step `late_properties`), and the worker's pass puts the
//! value in. Only the master's own references are ever read there.

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

/// `text` with its properties put in from `properties` (Buildbot's shape:
/// name → `[value, source]`, or a bare value), as they are (a list
/// command's word, a workdir); secrets are left as written. A text that
/// does not parse is returned unchanged (`checkconfig` refuses such a
/// configuration).
pub fn properties(text: &str, properties: &Map<String, Value>) -> String {
    render(text, |name, default| property_value(properties, name, default)).unwrap_or_else(|| text.to_owned())
}

/// The properties a text refers to (for `checkconfig` and the claim).
pub fn property_names(text: &str) -> Vec<&str> {
    pieces(text, true)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Property { name, .. } => Some(name),
            _ => None,
        })
        .collect()
}

/// A text of a step using properties that earlier steps set (`late`), as
/// the worker gets it: the others and the secrets put in, the late ones
/// left as `%(prop:NAME)s` for the worker (`late_properties`), and every
/// other `%(` escaped as `%%(`, so nothing a value holds becomes a
/// reference. The name of a secret not in `secrets` is the error.
pub fn with_late_properties(
    text: &str,
    properties: &Map<String, Value>,
    secrets: &BTreeMap<String, String>,
    late: &std::collections::BTreeSet<String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    // Values are escaped as one run: a `%` ending one piece and a `(`
    // starting the next are escaped too.
    let mut run = String::new();
    for piece in pieces(text, true)? {
        match piece {
            Piece::Text(text) => run.push_str(text),
            Piece::Property { name, default } if late.contains(name) => {
                out.push_str(&escape(&std::mem::take(&mut run)));
                out.push_str(&written(name, default));
            }
            Piece::Property { name, default } => run.push_str(&property_value(properties, name, default)),
            Piece::Secret(name) => run.push_str(secrets.get(name).ok_or_else(|| name.to_owned())?),
        }
    }
    out.push_str(&escape(&run));
    Ok(out)
}

/// `%(prop:NAME)s`, or `%(prop:NAME:-DEFAULT)s`.
fn written(name: &str, default: Option<&str>) -> String {
    match default {
        Some(default) => format!("%(prop:{name}:-{default})s"),
        None => format!("%(prop:{name})s"),
    }
}

/// A text as a master sent it, as the step runs it: properties an earlier
/// step set (`set`) put in, the secrets' references too (from `secrets`),
/// and `%%(` back to `%(`. A property not set is its default, or empty.
pub fn on_worker(
    text: &str,
    secrets: &BTreeMap<String, String>,
    set: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text, false).unwrap_or_default() {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Secret(name) => out.push_str(secrets.get(name).ok_or_else(|| name.to_owned())?),
            // Only a master's reference to a property an earlier step
            // sets is left unescaped; that step may have set nothing.
            Piece::Property { name, default } => {
                let value = set.get(name).filter(|value| !value.is_empty()).map(String::as_str);
                out.push_str(value.or(default).unwrap_or_default());
            }
        }
    }
    Ok(out)
}

/// A text escaped for a worker's `secrets` pass: it comes out as it went
/// in, whatever it holds.
pub fn escape(text: &str) -> String {
    text.replace("%(", "%%(")
}

/// Where a shell string's parser is, as far as quoting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
    /// Inside `$( … )` (or backticks): a new word context, quoted or not
    /// by what it holds.
    Command,
    Backtick,
}

/// How each property of a shell string stands: inside single quotes
/// (`Err`, where the shell would not put a value in), inside double quotes
/// (`Ok(true)`), or unquoted (`Ok(false)`), in order.
fn shell_contexts(script: &str) -> Result<Vec<bool>, String> {
    let mut contexts = Vec::new();
    let mut stack = vec![Quote::None];
    let mut at_word_start = true;
    for piece in pieces(script, true)? {
        let text = match piece {
            Piece::Text(text) => text,
            Piece::Property { name, .. } => {
                match stack.last().copied().unwrap_or(Quote::None) {
                    Quote::Single => {
                        return Err(format!(
                            "`%(prop:{name})s` is inside single quotes, where the shell would not put its value \
                             in; use double quotes, or none"
                        ));
                    }
                    Quote::Double => contexts.push(true),
                    Quote::None | Quote::Command | Quote::Backtick => contexts.push(false),
                }
                at_word_start = false;
                continue;
            }
            Piece::Secret(_) => {
                at_word_start = false;
                continue;
            }
        };
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            let top = stack.last().copied().unwrap_or(Quote::None);
            match (top, c) {
                (Quote::Single, '\'') => {
                    stack.pop();
                }
                (Quote::Single, _) => {}
                (Quote::Double, '"') => {
                    stack.pop();
                }
                (_, '\\') => {
                    chars.next();
                }
                (Quote::Double | Quote::None | Quote::Command | Quote::Backtick, '$') if chars.peek() == Some(&'(') => {
                    chars.next();
                    stack.push(Quote::Command);
                }
                (Quote::Backtick, '`') => {
                    stack.pop();
                }
                (Quote::Double | Quote::None | Quote::Command, '`') => stack.push(Quote::Backtick),
                (Quote::Double, _) => {}
                (Quote::Command, ')') => {
                    stack.pop();
                }
                (_, '\'') => stack.push(Quote::Single),
                (_, '"') => stack.push(Quote::Double),
                (_, '#') if at_word_start => {
                    // A comment, to the end of the line.
                    for skipped in chars.by_ref() {
                        if skipped == '\n' {
                            break;
                        }
                    }
                }
                _ => {}
            }
            at_word_start = c.is_whitespace() || matches!(c, ';' | '&' | '|' | '(');
        }
    }
    Ok(contexts)
}

/// Checks how a shell string uses properties (for `checkconfig`).
pub fn check_shell(script: &str) -> Result<(), String> {
    shell_contexts(script).map(drop)
}

/// A shell string with each property replaced by a reference, as one word,
/// to an environment variable holding its value (`"${BM_PROP_0}"`, or
/// `${BM_PROP_0}` inside double quotes), and those variables: the shell
/// never parses a value, nor splits it. A script `checkconfig` refuses is
/// returned as it is.
/// The variables' values are as the worker gets them: escaped (see
/// `with_late_properties`), or, for a property an earlier step sets (`late`), its
/// reference, which the worker puts in.
pub fn shell(
    script: &str,
    properties: &Map<String, Value>,
    late: &std::collections::BTreeSet<String>,
) -> (String, Vec<(String, String)>) {
    let Ok(contexts) = shell_contexts(script) else {
        return (script.to_owned(), Vec::new());
    };
    let mut env = Vec::new();
    let rendered = render(script, |name, default| {
        let variable = format!("BM_PROP_{}", env.len());
        let quoted = contexts.get(env.len()).copied().unwrap_or(false);
        let value = match late.contains(name) {
            true => written(name, default),
            false => escape(&property_value(properties, name, default)),
        };
        env.push((variable.clone(), value));
        if quoted { format!("${{{variable}}}") } else { format!("\"${{{variable}}}\"") }
    });
    match rendered {
        Some(script) => (script, env),
        None => (script.to_owned(), Vec::new()),
    }
}

/// `text` with each property written by `property(name, default)` and
/// secrets left as written; `None` when it does not parse.
fn render(text: &str, mut property: impl FnMut(&str, Option<&str>) -> String) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text, true).ok()? {
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
        assert_eq!(properties(text, &props()), "printf '%s\\n' 3.14 -j4 main none");
    }

    #[test]
    fn in_a_shell_string_a_property_is_one_word_the_shell_never_parses() {
        let none = std::collections::BTreeSet::new();
        let (script, env) = shell("echo \"built %(prop:evil)s\" -j%(prop:branch)s", &props(), &none);
        assert_eq!(script, "echo \"built ${BM_PROP_0}\" -j\"${BM_PROP_1}\"");
        assert_eq!(env, [("BM_PROP_0".into(), "x; rm -rf /".into()), ("BM_PROP_1".into(), "3.14".into())]);
        let (script, _) = shell("test \"$(echo %(prop:branch)s)\" = x # don't %(prop:jobs)s", &props(), &none);
        assert_eq!(script, "test \"$(echo \"${BM_PROP_0}\")\" = x # don't \"${BM_PROP_1}\"");
        let (script, _) = shell("echo 'it''s' %(prop:branch)s `echo %(prop:jobs)s`", &props(), &none);
        assert_eq!(script, "echo 'it''s' \"${BM_PROP_0}\" `echo \"${BM_PROP_1}\"`");
    }

    #[test]
    fn a_property_an_earlier_step_sets_is_put_in_by_the_worker_and_nothing_else_is() {
        let late = std::collections::BTreeSet::from(["triple".to_owned()]);
        let none = BTreeMap::new();
        let props =
            json!({ "evil": ["%(prop:triple)s", "Force"], "odd": ["50%", "Force"] }).as_object().unwrap().clone();
        let sent = with_late_properties(
            "--build=%(prop:triple)s %(prop:evil)s %(prop:odd)s(prop:triple)s",
            &props,
            &none,
            &late,
        )
        .unwrap();
        let set = BTreeMap::from([("triple".to_owned(), "x86_64-pc-linux-gnu".to_owned())]);
        assert_eq!(
            on_worker(&sent, &none, &set).unwrap(),
            "--build=x86_64-pc-linux-gnu %(prop:triple)s 50%(prop:triple)s",
            "a value never becomes a reference"
        );
        let (script, env) = shell("./configure --build=%(prop:triple)s", &props, &late);
        assert_eq!(script, "./configure --build=\"${BM_PROP_0}\"");
        assert_eq!(on_worker(&env[0].1, &none, &set).unwrap(), "x86_64-pc-linux-gnu");
        assert_eq!(on_worker("%(prop:unset:-none)s", &none, &set).unwrap(), "none");
    }

    #[test]
    fn a_property_inside_single_quotes_is_refused() {
        let problem = check_shell("echo '%(prop:branch)s'").unwrap_err();
        assert!(problem.contains("single quotes"), "{problem}");
        assert!(check_shell("echo \"'%(prop:branch)s'\"").is_ok(), "single quotes inside double ones are text");
    }

    #[test]
    fn an_env_value_has_its_secrets_put_in_and_comes_out_of_the_workers_pass_as_it_went_in() {
        let none = std::collections::BTreeSet::new();
        let secrets_given = BTreeMap::from([("token".to_owned(), "s3cr3t".to_owned())]);
        let props = json!({ "target": "%(secret:token)s", "percent": "50%" }).as_object().unwrap().clone();
        let sent = with_late_properties(
            "%(prop:target)s|%(secret:token)s|%(prop:percent)s(secret:token)s",
            &props,
            &secrets_given,
            &none,
        )
        .unwrap();
        let received = on_worker(&sent, &secrets_given, &BTreeMap::new()).unwrap();
        assert_eq!(received, "%(secret:token)s|s3cr3t|50%(secret:token)s", "a property names no secret");
        assert_eq!(with_late_properties("%(secret:nope)s", &props, &secrets_given, &none), Err("nope".to_owned()));
    }

    #[test]
    fn secrets_are_found_and_put_in_where_referenced() {
        let value = "token=%(secret:pypi)s;again=%(secret:pypi)s;%(secret:other)s";
        assert_eq!(secret_names(value), ["pypi", "pypi", "other"]);
        let values = BTreeMap::from([("pypi".to_owned(), "s3cr3t".to_owned()), ("other".to_owned(), "x".to_owned())]);
        let set = BTreeMap::new();
        assert_eq!(on_worker(value, &values, &set).unwrap(), "token=s3cr3t;again=s3cr3t;x");
        assert_eq!(on_worker("%(secret:nope)s", &values, &set), Err("nope".to_owned()));
        assert_eq!(on_worker("%%(secret:token)s 50% %(open", &values, &set).unwrap(), "%(secret:token)s 50% %(open");
        assert!(secret_names("%%(secret:token)s").is_empty());
        assert!(secret_names("100%(not a secret)").is_empty());
    }

    #[test]
    fn the_escape_is_the_same_for_every_reader() {
        assert_eq!(check("%%(prop:x"), Ok(()), "an escaped `%(` opens nothing");
        assert_eq!(properties("a %%(prop:x)s b", &props()), "a %(prop:x)s b");
    }

    #[test]
    fn secrets_are_left_as_written_and_mistakes_are_named() {
        assert_eq!(properties("%(secret:token)s", &props()), "%(secret:token)s");
        assert!(check("%(props:branch)s").unwrap_err().contains("unknown kind `props`"));
        assert!(check("%(prop:branch").unwrap_err().contains("no closing"));
        assert!(check("%(branch)s").unwrap_err().contains("names no kind"));
        assert!(check("%(secret:)s").unwrap_err().contains("names no secret"));
    }
}
