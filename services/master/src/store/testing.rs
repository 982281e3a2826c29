//! A database of its own for each store test: created from
//! `BUILDMASTER_TEST_DATABASE_URL` (the same admin URL the integration
//! tests use), migrated, and dropped when the test ends. Only Postgres is
//! involved: no RabbitMQ, Redis, master or worker.

use serde_json::json;
use shared::ids::{BuilderId, BuildsetId, MasterId, WorkerId};

use super::{Claim, ClaimedBuild, NewBuildset, NewRequest, Store};

static NO_PROPERTIES: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| json!({}));

/// A claim of `builder` by worker w1 through `master`, with a new token and
/// no configured properties.
pub(crate) fn claim(builder: BuilderId, worker: WorkerId, master: MasterId) -> Claim<'static> {
    Claim {
        builder_id: builder,
        builder_name: "b",
        worker_id: worker,
        worker_name: "w1",
        master_id: master,
        claim_token: uuid::Uuid::new_v4(),
        running_builds: None,
        rung_for: None,
        lease_seconds: 60,
        configured_properties: &NO_PROPERTIES,
    }
}

pub(crate) struct TestDatabase {
    pub store: Store,
    pub url: String,
    name: String,
    admin_url: String,
    /// Claims made by `claim_next`, which names its workers by it.
    claims: std::sync::atomic::AtomicUsize,
}

impl TestDatabase {
    pub async fn new() -> TestDatabase {
        let admin_url = std::env::var("BUILDMASTER_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://buildmaster:buildmaster@127.0.0.1:5432/postgres".to_owned());
        let name = format!("buildmaster_store_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let (base, _) = admin_url.rsplit_once('/').expect("the database URL has a path");
        let url = format!("{base}/{name}");
        super::upgrade(&url).await.expect("create and migrate the test database");
        let store = Store::connect(&url, 8, 2).await.expect("connect to the test database");
        TestDatabase { store, url, name, admin_url, claims: Default::default() }
    }

    pub async fn master(&self, name: &str) -> MasterId {
        self.store.register_master(name).await.unwrap()
    }

    /// A configured builder named `name`.
    pub async fn builder(&self, name: &str) -> BuilderId {
        let config: shared::config::BuilderConfig =
            serde_yaml::from_str(&format!("{{name: {name}, factory: f, workers: [w1]}}")).unwrap();
        self.store.sync_builders(&[config]).await.unwrap()[name]
    }

    pub async fn worker(&self, name: &str) -> WorkerId {
        self.store.ensure_worker(name).await.unwrap()
    }

    /// A buildset with `count` requests of `builder` at `priority`, and
    /// `properties` (Buildbot's shape).
    pub async fn buildset(
        &self,
        builder: BuilderId,
        count: usize,
        priority: i32,
        properties: serde_json::Value,
    ) -> BuildsetId {
        let requests = (0..count).map(|_| NewRequest { builder_id: builder, priority }).collect();
        let buildset = NewBuildset {
            reason: "test",
            owner: None,
            owned_by: None,
            scheduler: "force",
            properties: &properties,
            requests,
            traceparent: None,
            tick: None,
            triggered_by: None,
        };
        self.store.create_buildset(buildset).await.unwrap().expect("a buildset with no tick is made").id
    }

    /// The next build of `builder`, claimed through master `a` by a worker
    /// of its own (w1 first, then w2, …), as a worker runs one build of a
    /// builder at a time.
    pub async fn claim_next(&self, builder: BuilderId) -> Option<ClaimedBuild> {
        let n = self.claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let name = format!("w{n}");
        let (master, worker) = (self.master("a").await, self.worker(&name).await);
        let claim = Claim { worker_name: &name, ..claim(builder, worker, master) };
        self.store.claim(&claim).await.unwrap()
    }

    /// `count` requests of `builder`, in one buildset with no properties.
    pub async fn queue(&self, builder: BuilderId, count: usize) -> BuildsetId {
        self.buildset(builder, count, 0, json!({})).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop cannot await; the database goes on a runtime of its own.
        let dropping = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let statement = format!("drop database if exists \"{name}\" with (force)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut admin).await;
                }
            });
        });
        let _ = dropping.join();
    }
}
