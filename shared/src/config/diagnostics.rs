//! How configuration problems are found and told: each with its file,
//! line, column and a hint. `SourceFile` is one file being read: its text,
//! where its nodes are (`SourceMap`), and the errors found in it so far.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::{Position, SourceMap, YamlPath};

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub position: Option<Position>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(position) = self.position {
            write!(f, ":{}:{}", position.line, position.column)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n    hint: {hint}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// What may be shown to anyone (the API, the web UI): where each
    /// problem is, and what it is for files other than `private` (a message
    /// about settings.yaml may quote a value of it, a password say; the
    /// full text is for the master's log).
    pub fn public_text(&self, private: &Path) -> String {
        self.0
            .iter()
            .map(|error| {
                if error.file != private {
                    return error.to_string();
                }
                let place = error.position.map(|p| format!(":{}:{}", p.line, p.column)).unwrap_or_default();
                format!("{}{place}: a problem in this private file; the master's log says which", error.file.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Every problem found while loading the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// One YAML file being read: its text, where its nodes are, and the errors
/// found in it so far.
pub(super) struct SourceFile {
    path: PathBuf,
    map: SourceMap,
    pub(super) errors: Vec<ConfigError>,
}

impl SourceFile {
    pub(super) fn read(path: &Path) -> Result<(Self, String), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            file: path.to_owned(),
            position: None,
            message: format!("cannot read the file: {error}"),
            hint: Some("check the path (settings: --settings, BUILDMASTER_SETTINGS or PYBUILDBOT_SETTINGS_PATH; master.yaml: `master_config` in settings.yaml)".into()),
        })?;
        Ok((Self { path: path.to_owned(), map: SourceMap::scan(&text), errors: Vec::new() }, text))
    }

    pub(super) fn error_at(&mut self, path: &YamlPath, message: impl Into<String>, hint: Option<String>) {
        let position = self.map.position(path);
        self.push(position, message.into(), hint);
    }

    pub(super) fn error_at_value(&mut self, path: &YamlPath, message: impl Into<String>, hint: Option<String>) {
        let position = self.map.value_position(path);
        self.push(position, message.into(), hint);
    }

    /// Adds an error, once: a factory's step worked out for a thousand
    /// builders is wrong at one place.
    fn push(&mut self, position: Option<Position>, message: String, hint: Option<String>) {
        let error = ConfigError { file: self.path.clone(), position, message, hint };
        if !self.errors.contains(&error) {
            self.errors.push(error);
        }
    }

    /// Parses the whole text as YAML, with merge keys (`<<: *anchor`)
    /// applied; a syntax error is the only error then.
    pub(super) fn parse_yaml(&mut self, text: &str) -> Option<serde_yaml::Value> {
        let parsed = serde_yaml::from_str::<serde_yaml::Value>(text).and_then(|mut value| {
            value.apply_merge()?;
            Ok(value)
        });
        match parsed {
            Ok(serde_yaml::Value::Null) => Some(serde_yaml::Value::Mapping(Default::default())),
            Ok(value) => Some(value),
            Err(error) => {
                self.errors.push(ConfigError {
                    file: self.path.clone(),
                    position: error.location().map(|l| Position { line: l.line(), column: l.column() }),
                    message: format!("not valid YAML: {}", strip_location(&error.to_string())),
                    hint: Some("check indentation and quoting around this place".into()),
                });
                None
            }
        }
    }

    /// Deserializes the node found at `at`, recording an error with its exact
    /// position when it does not fit `T`.
    pub(super) fn deserialize<T: DeserializeOwned>(&mut self, at: &YamlPath, value: serde_yaml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Some(parsed),
            Err(error) => {
                let path = at.join_serde(error.path());
                let message = strip_location(&error.inner().to_string());
                let hint = hint_for(&message);
                self.error_at(&path, format!("{path}: {message}"), hint);
                None
            }
        }
    }
}

/// serde_yaml appends " at line L column C" to its messages; positions are
/// printed separately here.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// For an unknown field, the expected field closest to the typo.
fn hint_for(message: &str) -> Option<String> {
    let unknown = message.strip_prefix("unknown field `")?.split('`').next()?;
    let expected: Vec<&str> = message.split_once("expected")?.1.split('`').skip(1).step_by(2).collect();
    let closest = expected.iter().min_by_key(|candidate| edit_distance(unknown, candidate))?;
    if edit_distance(unknown, closest) <= 3 {
        Some(format!("did you mean `{closest}`?"))
    } else {
        Some(format!("the fields allowed here are: {}", expected.join(", ")))
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}
