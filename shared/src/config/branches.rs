//! Branch axes: master.yaml's `branches:` names the lines a project builds
//! (buildbot.python.org's `3.x`, which builds git's `main`, the maintenance
//! branches, and the pull-request slot, which has no branch of its own), and
//! a builder with `branches:` stands for one builder per branch it selects,
//! less those its workers or its factory do not build.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::Value;

use super::YamlPath;
use super::diagnostics::SourceFile;

/// One line of development builders are expanded over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// The name in builder names and tags, e.g. `3.x`.
    pub name: String,
    /// The git branch it builds; default its name. None for the
    /// pull-request slot.
    git_branch: Option<String>,
    /// The slot of pull requests: its builds take the branch of the change.
    #[serde(default)]
    pub pull_requests: bool,
    /// The tag its builders get; default its name.
    tag: Option<String>,
    /// Properties of its builders, e.g. `version: "3.14"`.
    #[serde(default)]
    pub properties: BTreeMap<String, Value>,
    /// Builders with any of these tags are not built on it (e.g. `nogil`
    /// before free threading existed).
    #[serde(default)]
    pub skip_tags: Vec<String>,
}

impl BranchConfig {
    pub fn git_branch(&self) -> Option<&str> {
        match self.pull_requests {
            true => None,
            false => Some(self.git_branch.as_deref().unwrap_or(&self.name)),
        }
    }

    pub fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or(&self.name)
    }
}

/// Which branches: `all`, a list of names, `{since: "3.13"}` (it, the
/// branches listed before it, and the pull-request slot) or `{until:
/// "3.12"}` (it and the branches listed after it). `branches:` lists the
/// newest first.
#[derive(Debug, Clone, PartialEq)]
pub enum BranchSelector {
    All,
    Names(Vec<String>),
    Since(String),
    Until(String),
}

impl BranchSelector {
    /// Reads a selector, reporting what is wrong at `at`.
    pub(super) fn parse(
        file: &mut SourceFile,
        at: &YamlPath,
        value: &Value,
        branches: &[BranchConfig],
    ) -> Option<BranchSelector> {
        let known = |name: &str| branches.iter().any(|branch| branch.name == name);
        let names = || branches.iter().map(|b| b.name.as_str()).collect::<Vec<_>>().join(", ");
        if branches.is_empty() {
            file.error_at_value(
                at,
                "`branches` selects from master.yaml's `branches:`, which lists none",
                Some("add e.g. `branches: [{name: main}, {name: \"3.14\"}]` at the top of master.yaml".into()),
            );
            return None;
        }
        let selector = match value {
            Value::String(all) if all == "all" => BranchSelector::All,
            Value::Sequence(items) => {
                let mut selected = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(name) if known(name) => selected.push(name.to_owned()),
                        _ => {
                            file.error_at_value(
                                &at.index(index),
                                format!("`{}` is not one of the branches", super::expr::text(item)),
                                Some(format!("master.yaml's `branches:` lists {}", names())),
                            );
                            return None;
                        }
                    }
                }
                BranchSelector::Names(selected)
            }
            Value::Mapping(map) if map.len() == 1 => {
                let (key, name) = map.iter().next().expect("one entry");
                let name = super::expr::text(name);
                let selector = match key.as_str() {
                    Some("since") => BranchSelector::Since(name.clone()),
                    Some("until") => BranchSelector::Until(name.clone()),
                    _ => return Self::refuse(file, at),
                };
                if !known(&name) {
                    file.error_at_value(
                        &at.key(key.as_str().unwrap_or_default()),
                        format!("`{name}` is not one of the branches"),
                        Some(format!("master.yaml's `branches:` lists {}", names())),
                    );
                    return None;
                }
                selector
            }
            _ => return Self::refuse(file, at),
        };
        Some(selector)
    }

    fn refuse(file: &mut SourceFile, at: &YamlPath) -> Option<BranchSelector> {
        file.error_at_value(
            at,
            "`branches` is `all`, a list of branch names, `{since: NAME}` or `{until: NAME}`",
            None,
        );
        None
    }

    /// Whether it selects `branch` of `branches` (listed newest first).
    pub fn selects(&self, branch: &BranchConfig, branches: &[BranchConfig]) -> bool {
        let position = |name: &str| branches.iter().position(|b| b.name == name);
        match self {
            BranchSelector::All => true,
            BranchSelector::Names(names) => names.contains(&branch.name),
            BranchSelector::Since(name) => {
                branch.pull_requests
                    || matches!((position(&branch.name), position(name)), (Some(this), Some(limit)) if this <= limit)
            }
            BranchSelector::Until(name) => {
                !branch.pull_requests
                    && matches!((position(&branch.name), position(name)), (Some(this), Some(limit)) if this >= limit)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branches() -> Vec<BranchConfig> {
        serde_yaml::from_str(
            r#"[{name: "3.x", git_branch: main}, {name: "3.14"}, {name: "3.13"}, {name: "3.12"}, {name: PR, pull_requests: true, tag: PullRequest}]"#,
        )
        .unwrap()
    }

    #[test]
    fn since_takes_newer_branches_and_pull_requests_until_takes_older_ones() {
        let branches = branches();
        let names = |selector: BranchSelector| -> Vec<&str> {
            branches.iter().filter(|b| selector.selects(b, &branches)).map(|b| b.name.as_str()).collect()
        };
        assert_eq!(names(BranchSelector::Since("3.13".into())), ["3.x", "3.14", "3.13", "PR"]);
        assert_eq!(names(BranchSelector::Until("3.13".into())), ["3.13", "3.12"]);
        assert_eq!(names(BranchSelector::Names(vec!["3.x".into(), "PR".into()])), ["3.x", "PR"]);
        assert_eq!(branches[0].git_branch(), Some("main"));
        assert_eq!(branches[1].git_branch(), Some("3.14"));
        assert_eq!((branches[4].git_branch(), branches[4].tag()), (None, "PullRequest"));
    }
}
