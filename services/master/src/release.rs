//! The release status board: for each configured branch, the builders of
//! the configured tags, green or red, how long the red ones have been red,
//! what failed (steps, and tests when the builds recorded results), and
//! one line a release manager can act on.

use std::collections::HashMap;

use shared::config::ReleaseBoardConfig;
use shared::ids::{BuilderId, BuilderName};
use shared::model::Results;

use crate::Master;
use crate::store::{BranchStanding, FailingTest, StoreError};

/// Failing tests listed per builder at most.
const TESTS_PER_BUILDER: usize = 10;

pub struct BuilderStanding {
    pub name: BuilderName,
    pub standing: BranchStanding,
    pub failed_steps: Vec<String>,
    pub failing_tests: Vec<FailingTest>,
}

impl BuilderStanding {
    pub fn red(&self) -> bool {
        self.standing.results.is_some_and(Results::is_red_code)
    }
}

pub struct BranchStatus {
    pub branch: String,
    /// Red ones first, the longest red first; then the rest by name.
    pub builders: Vec<BuilderStanding>,
    /// Builders of the tags with no recent build of the branch.
    pub unbuilt: Vec<BuilderName>,
}

impl BranchStatus {
    pub fn red(&self) -> usize {
        self.builders.iter().filter(|builder| builder.red()).count()
    }

    /// What a release manager reads first.
    pub fn summary(&self) -> String {
        let total = self.builders.len();
        let red = self.red();
        let unbuilt = match self.unbuilt.len() {
            0 => String::new(),
            n => format!("; {n} with no recent build of it"),
        };
        match (total, red) {
            (0, _) => format!("{}: no builder of these tags has built it lately{unbuilt}", self.branch),
            (_, 0) => format!("{}: all {total} builders green{unbuilt}", self.branch),
            _ => format!("{}: {red} of {total} builders red ({}){unbuilt}", self.branch, self.red_names()),
        }
    }

    fn red_names(&self) -> String {
        let names: Vec<&str> =
            self.builders.iter().filter(|builder| builder.red()).map(|builder| builder.name.as_str()).collect();
        names.join(", ")
    }
}

impl Master {
    /// The board, or `None` when master.yaml configures none.
    pub async fn release_board(&self) -> Result<Option<(ReleaseBoardConfig, Vec<BranchStatus>)>, StoreError> {
        let catalog = self.catalog();
        let Some(board) = catalog.config.master.release_board.clone() else {
            return Ok(None);
        };
        let builders: Vec<(BuilderId, BuilderName)> = catalog
            .builders()
            .filter(|(builder, _)| builder.tags.iter().any(|tag| board.tags.contains(tag)))
            .map(|(builder, id)| (id, builder.name.clone()))
            .collect();
        let ids: Vec<BuilderId> = builders.iter().map(|(id, _)| *id).collect();
        let names: HashMap<BuilderId, &BuilderName> = builders.iter().map(|(id, name)| (*id, name)).collect();
        let mut statuses = Vec::with_capacity(board.branches.len());
        for branch in &board.branches {
            let standings = self.store.branch_standings(&ids, branch).await?;
            let red: Vec<_> =
                standings.iter().filter(|s| s.results.is_some_and(Results::is_red_code)).map(|s| s.build_id).collect();
            let mut steps: HashMap<_, Vec<String>> = HashMap::new();
            for (build, step) in self.store.failed_steps(&red).await? {
                steps.entry(build).or_default().push(step);
            }
            let mut tests: HashMap<_, Vec<FailingTest>> = HashMap::new();
            if !red.is_empty() {
                for test in self.store.failing_tests(branch, 30, 1_000).await? {
                    let listed = tests.entry(test.build_id).or_default();
                    if listed.len() < TESTS_PER_BUILDER {
                        listed.push(test);
                    }
                }
            }
            let built: std::collections::HashSet<BuilderId> = standings.iter().map(|s| s.builder_id).collect();
            let mut rows: Vec<BuilderStanding> = standings
                .into_iter()
                .filter_map(|standing| {
                    let name = (*names.get(&standing.builder_id)?).clone();
                    Some(BuilderStanding {
                        failed_steps: steps.remove(&standing.build_id).unwrap_or_default(),
                        failing_tests: tests.remove(&standing.build_id).unwrap_or_default(),
                        name,
                        standing,
                    })
                })
                .collect();
            rows.sort_by(|a, b| {
                (!a.red(), a.standing.red_since, &a.name).cmp(&(!b.red(), b.standing.red_since, &b.name))
            });
            let mut unbuilt: Vec<BuilderName> =
                builders.iter().filter(|(id, _)| !built.contains(id)).map(|(_, name)| name.clone()).collect();
            unbuilt.sort();
            statuses.push(BranchStatus { branch: branch.clone(), builders: rows, unbuilt });
        }
        Ok(Some((board, statuses)))
    }
}
