//! The console view: which change turned which builders red. Changes are
//! rows (newest first), builders columns grouped by tag, and each cell is
//! the first build of that builder to include the change: the build of
//! the change itself, or, when requests were collapsed, of the oldest
//! later change of the same branch that was built. A failing cell whose
//! builder passed on the change before is marked as the one that broke it.

use std::collections::HashMap;

use shared::ids::{BuildId, BuilderId, BuilderName, ChangeId};
use shared::model::Results;

use crate::Master;
use crate::store::{ConsoleBuild, ConsoleChange, StoreError};

/// Changes shown at most.
pub const MAX_CHANGES: i64 = 100;

/// A column: a configured builder.
pub struct Column {
    pub id: BuilderId,
    pub name: BuilderName,
    /// Its first tag, which groups the columns; empty without tags.
    pub group: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub build_id: BuildId,
    pub number: i32,
    /// `None` while it runs.
    pub results: Option<i16>,
    /// It failed where the builder's cell of the change before passed.
    pub broke: bool,
}

pub struct Console {
    pub changes: Vec<ConsoleChange>,
    pub columns: Vec<Column>,
    pub cells: HashMap<(ChangeId, BuilderId), Cell>,
}

impl Master {
    /// The console of `branch` (every branch when `None`), over the
    /// builders tagged `tag` (every builder when `None`).
    pub async fn console(&self, branch: Option<&str>, tag: Option<&str>) -> Result<Console, StoreError> {
        let catalog = self.catalog();
        let mut columns: Vec<Column> = catalog
            .builders()
            .filter(|(builder, _)| tag.is_none_or(|tag| builder.tags.iter().any(|t| t == tag)))
            .map(|(builder, id)| Column {
                id,
                name: builder.name.clone(),
                group: builder.tags.first().cloned().unwrap_or_default(),
            })
            .collect();
        columns.sort_by(|a, b| (a.group.is_empty(), &a.group, &a.name).cmp(&(b.group.is_empty(), &b.group, &b.name)));
        // Only the shown builders' builds are read when a tag narrows them.
        let shown: Option<Vec<BuilderId>> = tag.map(|_| columns.iter().map(|column| column.id).collect());
        let (changes, builds) = self.store.console(branch, shown.as_deref(), MAX_CHANGES).await?;
        let cells = cells(&changes, builds);
        Ok(Console { changes, columns, cells })
    }
}

/// Each change's first build on each builder, and which failures broke a
/// builder.
fn cells(changes: &[ConsoleChange], builds: Vec<ConsoleBuild>) -> HashMap<(ChangeId, BuilderId), Cell> {
    // Builds by (builder, repository, branch), in the order of the change
    // they were started for, then by number.
    let mut lines: HashMap<(BuilderId, &str, &str), Vec<&ConsoleBuild>> = HashMap::new();
    for build in &builds {
        lines.entry((build.builder_id, build.repository.as_str(), build.branch.as_str())).or_default().push(build);
    }
    for line in lines.values_mut() {
        line.sort_by_key(|build| (build.change_id, build.number));
    }
    let mut oldest_first: Vec<&ConsoleChange> = changes.iter().collect();
    oldest_first.sort_by_key(|change| change.id);
    let mut cells = HashMap::new();
    let mut last_result: HashMap<(BuilderId, &str, &str), Option<i16>> = HashMap::new();
    for change in oldest_first {
        for (&(builder, repository, branch), line) in &lines {
            if repository != change.repository || branch != change.branch {
                continue;
            }
            let first = line.partition_point(|build| build.change_id < change.id);
            let Some(build) = line.get(first) else { continue };
            let before = last_result.insert((builder, repository, branch), build.results).flatten();
            let failed = build.results.is_some_and(Results::is_red_code);
            let passed_before = before.is_some_and(|code| !Results::is_red_code(code));
            cells.insert(
                (change.id, builder),
                Cell {
                    build_id: build.build_id,
                    number: build.number,
                    results: build.results,
                    broke: failed && passed_before,
                },
            );
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn change(id: i64) -> ConsoleChange {
        ConsoleChange {
            id: ChangeId(id),
            author: "guido".into(),
            comments: String::new(),
            revision: format!("r{id}"),
            repository: "cpython".into(),
            branch: "main".into(),
            created_at: Utc::now(),
        }
    }

    fn build(builder: i32, id: i64, change: i64, results: Option<i16>) -> ConsoleBuild {
        ConsoleBuild {
            builder_id: BuilderId(builder),
            build_id: BuildId(id),
            number: id as i32,
            results,
            change_id: ChangeId(change),
            repository: "cpython".into(),
            branch: "main".into(),
        }
    }

    #[test]
    fn a_change_is_shown_in_the_first_build_that_included_it_and_the_one_that_broke_a_builder_is_marked() {
        let changes = [change(1), change(2), change(3), change(4)];
        // Builder 1 built every change, red from 3; builder 2 collapsed 2
        // and 3 into the build of 3, and is still running 4.
        let builds = vec![
            build(1, 10, 1, Some(0)),
            build(1, 11, 2, Some(0)),
            build(1, 12, 3, Some(2)),
            build(1, 13, 4, Some(2)),
            build(2, 20, 1, Some(0)),
            build(2, 21, 3, Some(0)),
            build(2, 22, 4, None),
        ];
        let cells = cells(&changes, builds);
        let cell = |change: i64, builder: i32| cells.get(&(ChangeId(change), BuilderId(builder))).cloned();
        assert_eq!(cell(3, 1).map(|c| (c.build_id, c.broke)), Some((BuildId(12), true)));
        assert_eq!(cell(4, 1).map(|c| (c.build_id, c.broke)), Some((BuildId(13), false)), "still red, not newly");
        assert_eq!(cell(2, 2).map(|c| c.build_id), Some(BuildId(21)), "included by the build of the next change");
        assert_eq!(cell(3, 2).map(|c| c.build_id), Some(BuildId(21)));
        assert_eq!(cell(4, 2).map(|c| c.results), Some(None));
        assert_eq!(cell(1, 3), None);
    }
}
