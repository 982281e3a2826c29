//! Builder matrices: one definition with `matrix:` and `exclude:` stands for
//! one builder per combination of its axes' values. Expanded while
//! master.yaml is parsed, so everything after sees plain builders.

use std::collections::BTreeMap;

use super::YamlPath;
use super::diagnostics::SourceFile;
use super::master::BuilderConfig;

/// The builders one definition stands for: itself, or one per combination
/// of its matrix's axes (less the excluded ones), each named from the
/// template with `{axis}` replaced, tagged and given a property per axis.
pub(super) fn expand(file: &mut SourceFile, at: &YamlPath, builder: BuilderConfig) -> Option<Vec<BuilderConfig>> {
    if builder.matrix.is_empty() {
        if !builder.exclude.is_empty() {
            file.error_at_value(&at.key("exclude"), "`exclude` needs a `matrix`", None);
            return None;
        }
        return Some(vec![builder]);
    }
    let mut ok = true;
    for (axis, values) in &builder.matrix {
        if values.is_empty() {
            file.error_at_value(
                &at.key("matrix").key(axis.clone()),
                format!("matrix axis `{axis}` has no values"),
                None,
            );
            ok = false;
        }
        if !builder.name.as_str().contains(&format!("{{{axis}}}")) {
            file.error_at_value(
                &at.key("name"),
                format!("the name `{}` does not use matrix axis `{axis}`", builder.name),
                Some(format!("put `{{{axis}}}` in the name, so each combination gets a name of its own")),
            );
            ok = false;
        }
    }
    for (index, excluded) in builder.exclude.iter().enumerate() {
        for (axis, value) in excluded {
            let known = builder.matrix.get(axis).is_some_and(|values| values.contains(value));
            if !known {
                file.error_at_value(
                    &at.key("exclude").index(index).key(axis.clone()),
                    format!("`{axis}: {value}` is not a value of this builder's matrix"),
                    None,
                );
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let mut combinations: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new()];
    for (axis, values) in &builder.matrix {
        combinations = combinations
            .into_iter()
            .flat_map(|combination| {
                values.iter().map(move |value| {
                    let mut next = combination.clone();
                    next.insert(axis.as_str(), value.as_str());
                    next
                })
            })
            .collect();
    }
    let excluded = |combination: &BTreeMap<&str, &str>| {
        builder
            .exclude
            .iter()
            .any(|rule| rule.iter().all(|(axis, value)| combination.get(axis.as_str()) == Some(&value.as_str())))
    };
    let expanded = combinations
        .into_iter()
        .filter(|combination| !excluded(combination))
        .map(|combination| {
            let mut one = builder.clone();
            for (axis, value) in &combination {
                let placeholder = format!("{{{axis}}}");
                one.name = one.name.as_str().replace(&placeholder, value).into();
                one.factory = one.factory.replace(&placeholder, value);
                for worker in &mut one.workers {
                    *worker = worker.as_str().replace(&placeholder, value).into();
                }
                if !one.tags.iter().any(|tag| tag == value) {
                    one.tags.push((*value).to_owned());
                }
                one.properties.insert((*axis).to_owned(), serde_yaml::Value::String((*value).to_owned()));
            }
            one.matrix.clear();
            one.exclude.clear();
            one
        })
        .collect();
    Some(expanded)
}
