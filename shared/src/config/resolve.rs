//! From definitions to what runs, once both files are read: builders
//! expanded over their branches (less those their workers or factory do
//! not build), each builder's steps worked out from its factory, and
//! schedulers' builders selected by tag. Everything after sees plain
//! builders with their own steps.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::YamlPath;
use super::branches::BranchSelector;
use super::diagnostics::SourceFile;
use super::factories::{self, Context};
use super::master::{BuilderConfig, MasterConfig, SchedulerConfig};
use super::settings::Settings;

/// The files errors go to.
pub(super) struct Files<'a> {
    pub settings: &'a mut SourceFile,
    pub master: &'a mut SourceFile,
    pub factories: Option<&'a mut SourceFile>,
}

impl Files<'_> {
    /// The file that defines `factory`.
    fn of_factory(&mut self, master: &MasterConfig, factory: &str) -> &mut SourceFile {
        match (&mut self.factories, master.factories_in_file.contains(factory)) {
            (Some(file), true) => file,
            _ => self.master,
        }
    }
}

pub(super) fn resolve(files: &mut Files, master: &mut MasterConfig, settings: &Settings) {
    let root = YamlPath::root();
    // Each worker's branches, once.
    let mut worker_branches: BTreeMap<&str, BranchSelector> = BTreeMap::new();
    for (index, worker) in settings.workers.iter().enumerate() {
        if let Some(value) = &worker.branches {
            let at = settings.worker_at(index).key("branches");
            if let Some(selector) = BranchSelector::parse(files.settings, &at, value, &master.branches) {
                worker_branches.insert(worker.name.as_str(), selector);
            }
        }
    }
    let mut factory_branches: BTreeMap<String, Option<BranchSelector>> = BTreeMap::new();
    let definitions = std::mem::take(&mut master.builders);
    for mut builder in definitions {
        let at = root.key("builders").index(builder.definition);
        let factory = master.factories.get(&builder.factory);
        // A missing factory is reported by `validate`.
        if builder.description.is_none() {
            builder.description = factory.and_then(|factory| factory.description.clone());
        }
        for tag in factory.map(|factory| factory.tags.clone()).unwrap_or_default() {
            if !builder.tags.contains(&tag) {
                builder.tags.push(tag);
            }
        }
        let Some(selection) = builder.branches.take() else {
            master.builders.push(builder);
            continue;
        };
        let Some(selector) = BranchSelector::parse(files.master, &at.key("branches"), &selection, &master.branches)
        else {
            continue;
        };
        let by_factory = match factory {
            Some(factory) => factory_branches
                .entry(builder.factory.clone())
                .or_insert_with(|| {
                    let value = factory.branches.as_ref()?;
                    let at = root.key("factories").key(builder.factory.clone()).key("branches");
                    BranchSelector::parse(files.of_factory(master, &builder.factory), &at, value, &master.branches)
                })
                .clone(),
            None => None,
        };
        for branch in &master.branches {
            let selected = selector.selects(branch, &master.branches)
                && by_factory.as_ref().is_none_or(|only| only.selects(branch, &master.branches));
            let skipped = builder.tags.iter().any(|tag| branch.skip_tags.contains(tag));
            let workers: Vec<_> = builder
                .workers
                .iter()
                .filter(|worker| {
                    worker_branches.get(worker.as_str()).is_none_or(|only| only.selects(branch, &master.branches))
                })
                .cloned()
                .collect();
            if !selected || skipped || workers.is_empty() {
                continue;
            }
            let mut one = builder.clone();
            one.name = match builder.name.contains("{branch}") {
                true => builder.name.replace("{branch}", &branch.name),
                false => format!("{} {}", builder.name, branch.name),
            }
            .into();
            one.workers = workers;
            if !one.tags.iter().any(|tag| tag == branch.tag()) {
                one.tags.insert(0, branch.tag().to_owned());
            }
            for (name, value) in &branch.properties {
                one.properties.entry(name.clone()).or_insert_with(|| value.clone());
            }
            if let Some(git_branch) = branch.git_branch() {
                one.properties.entry("branch".into()).or_insert_with(|| Value::String(git_branch.to_owned()));
            }
            one.branch = Some(branch.name.clone());
            master.builders.push(one);
        }
    }

    let mut builders = std::mem::take(&mut master.builders);
    for builder in &mut builders {
        let Some(factory) = master.factories.get(&builder.factory) else { continue };
        let workers = builder
            .workers
            .iter()
            .filter_map(|name| settings.workers.iter().find(|w| w.name == *name))
            .map(|worker| (worker.name.as_str(), &worker.properties))
            .collect();
        let context = Context {
            builder: builder.name.as_str(),
            factory_name: &builder.factory,
            factory,
            properties: &builder.properties,
            workers,
        };
        let file = files.of_factory(master, &builder.factory);
        if let Some(steps) = factories::steps_for(file, &root.key("factories"), &context, settings) {
            builder.steps = steps;
        }
    }
    master.builders = builders;

    for (index, selection, mut value) in std::mem::take(&mut master.scheduler_selections) {
        let at = root.key("schedulers").index(index);
        let names: Vec<Value> = master
            .builders
            .iter()
            .filter(|b| selection.selects(b))
            .map(|b: &BuilderConfig| Value::String(b.name.to_string()))
            .collect();
        if names.is_empty() {
            files.master.error_at_value(
                &at.key("builders"),
                "no builder has these tags",
                Some("check the tags against the builders' (branches add theirs, factories theirs)".into()),
            );
        }
        value["builders"] = Value::Sequence(names);
        if let Some(scheduler) = files.master.deserialize::<SchedulerConfig>(&at, value) {
            master.schedulers[index] = scheduler;
        }
    }
}
