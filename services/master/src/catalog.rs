//! The configuration a master runs with, and the Postgres ids of its
//! builders: the one place builder names and ids are looked up in either
//! direction. Replaced whole on reload; readers hold an `Arc` to a
//! consistent snapshot.

use std::collections::HashMap;

use shared::config::{BuilderConfig, Config};
use shared::ids::{BuilderId, BuilderName, WorkerName};

use crate::store::ReportEvent;

pub struct Catalog {
    pub config: Config,
    ids: HashMap<BuilderName, BuilderId>,
    names: HashMap<BuilderId, BuilderName>,
    /// The reporters told of each builder's builds starting, and ending.
    reporters: HashMap<BuilderId, (Vec<String>, Vec<String>)>,
}

impl Catalog {
    /// `ids` are the configured builders' ids, as `Store::sync_builders`
    /// returned them.
    pub fn new(config: Config, ids: HashMap<BuilderName, BuilderId>) -> Catalog {
        let names = ids.iter().map(|(name, id)| (*id, name.clone())).collect();
        let mut reporters: HashMap<BuilderId, (Vec<String>, Vec<String>)> = HashMap::new();
        for builder in &config.master.builders {
            let Some(id) = ids.get(&builder.name) else { continue };
            for reporter in config.master.reporters.iter().filter(|reporter| reporter.covers_builder(builder)) {
                let (starts, ends) = reporters.entry(*id).or_default();
                if reporter.tells_starts() {
                    starts.push(reporter.name.clone());
                }
                ends.push(reporter.name.clone());
            }
        }
        Catalog { config, ids, names, reporters }
    }

    /// The reporters to tell that a build of `builder` started or ended.
    pub fn reporters_of(&self, builder: BuilderId, event: ReportEvent) -> &[String] {
        match (self.reporters.get(&builder), event) {
            (Some((starts, _)), ReportEvent::Started) => starts,
            (Some((_, ends)), ReportEvent::Finished) => ends,
            (None, _) => &[],
        }
    }

    /// A configured builder by name, with its id.
    pub fn builder(&self, name: &str) -> Option<(&BuilderConfig, BuilderId)> {
        let builder = self.config.builder(name)?;
        Some((builder, *self.ids.get(name)?))
    }

    /// A configured builder by id.
    pub fn builder_by_id(&self, id: BuilderId) -> Option<&BuilderConfig> {
        self.config.builder(self.names.get(&id)?.as_str())
    }

    /// The name of a configured builder.
    pub fn builder_name(&self, id: BuilderId) -> Option<&BuilderName> {
        self.names.get(&id)
    }

    pub fn builder_id(&self, name: &str) -> Option<BuilderId> {
        self.ids.get(name).copied()
    }

    /// Every configured builder with its id, in the configuration's order.
    pub fn builders(&self) -> impl Iterator<Item = (&BuilderConfig, BuilderId)> {
        self.config.master.builders.iter().filter_map(|builder| Some((builder, *self.ids.get(&builder.name)?)))
    }

    /// The ids of the configured builders among `names` (unknown ones are
    /// left out).
    pub fn builder_ids<'a>(&self, names: impl IntoIterator<Item = &'a BuilderName>) -> Vec<BuilderId> {
        names.into_iter().filter_map(|name| self.builder_id(name.as_str())).collect()
    }

    /// The name of the local worker of the master named `master`.
    pub fn local_worker_name(&self, master: &str) -> WorkerName {
        WorkerName::new(format!("{}-{master}", self.config.settings.local_worker.name))
    }

    /// Whether `worker` is some master's local worker.
    pub fn is_local_worker(&self, worker: &str) -> bool {
        let settings = &self.config.settings;
        settings.use_local_worker
            && worker.starts_with(&format!("{}-", settings.local_worker.name))
            && self.config.worker(worker).is_none()
    }

    /// The builders `worker` serves.
    pub fn builders_for_worker(&self, worker: &str) -> Vec<&BuilderConfig> {
        self.config.builders_for_worker(worker, self.is_local_worker(worker))
    }

    /// The builders `worker` serves that it can run, given the step options
    /// its hello said it honours (`wire::honoured_step_options`). A worker
    /// of an earlier version would run the others wrongly, so it is not
    /// given them, and the log says so.
    pub fn builders_runnable_by(&self, worker: &str, honoured: &[&str]) -> Vec<BuilderName> {
        let (runnable, not): (Vec<_>, Vec<_>) = self
            .builders_for_worker(worker)
            .into_iter()
            .partition(|builder| builder.step_options().iter().all(|option| honoured.contains(option)));
        if let Some(first) = not.first() {
            let missing: Vec<&str> =
                first.step_options().into_iter().filter(|option| !honoured.contains(option)).collect();
            tracing::warn!(
                worker.name = worker,
                builders = not.len(),
                first = %first.name,
                missing = ?missing,
                "a worker whose version ignores step options its builders use is not given those builders; \
                 upgrade the worker"
            );
        }
        runnable.into_iter().map(|builder| builder.name.clone()).collect()
    }
}
