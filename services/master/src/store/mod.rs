//! All SQL of the master, behind one type, in one file per aggregate.
//! Postgres is the truth: every decision that must hold across masters (who
//! claims a request, which number a build gets, whether an event was
//! already recorded) is made here, in one statement or one transaction,
//! never in a master's memory.
//!
//! Each file is an `impl Store` block with its SQL and, beside it, tests of
//! that SQL against a real database of their own (`testing`), with no
//! RabbitMQ, Redis or worker.

mod builders;
mod builds;
mod buildsets;
mod changes;
mod charts;
mod claims;
mod console;
mod files;
mod leases;
mod logs;
mod masters;
mod notifications;
mod overview;
mod recording;
mod release;
pub mod resources;
mod retention;
mod sessions;
mod test_history;
#[cfg(test)]
pub(crate) mod testing;
mod workers;

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use builds::{BuildRow, RebuildSource};
pub use buildsets::{CancelOutcome, CreatedBuildset, DueRequest, NewBuildset, NewRequest, OwnedBuildset};
pub use changes::{NewChange, StableChange};
pub use charts::{BuildPoint, DayCount, QueuePoint, WindowBuild};
pub use claims::{Claim, ClaimedBuild};
pub use console::{ConsoleBuild, ConsoleChange};
pub use files::{ARTIFACT_CHUNKS_PER_PAGE, Artifact, FailedTest, NewTestResult, SetCounts};
pub use leases::Expired;
pub use logs::{ArchivedChunk, LogLocation, LogRow, LogState};
pub use notifications::{
    KeptComment, Notification, NotificationRow, PULL_REQUEST_LOOP, ReportEvent, ReportFacts, Takes, WORKER_ADMINS,
};
pub use overview::{BRANCH_SCAN_BUILDS, GridCell, LastBuild, RunningBuild};
pub use recording::{EventRejected, FinishedBuild, RecordError, Recorded};
pub use release::BranchStanding;
pub use sessions::{NewSession, SessionRow, SignInAttempt};
pub use test_history::{FailingTest, FlakyTest};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the database schema is out of date (missing migrations: {missing}); run `buildmaster upgrade-master` first"
    )]
    SchemaOutdated { missing: String },
    #[error("the database schema is newer than this master (unknown migrations: {unknown}); upgrade buildmaster")]
    SchemaNewer { unknown: String },
}

impl StoreError {
    /// Whether trying again later may succeed (the database was unreachable
    /// or busy), as opposed to a request that can never be recorded.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(error) = self else { return false };
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => true,
            // Connection exceptions, serialization failures and deadlocks,
            // insufficient resources, operator intervention (e.g. a restart).
            sqlx::Error::Database(db) => {
                db.code().is_some_and(|code| ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)))
            }
            _ => false,
        }
    }

    /// Postgres refused a value the request carried (a data exception: a
    /// NUL in a text, a time out of range), so the client is at fault.
    pub fn bad_input(&self) -> Option<String> {
        let StoreError::Database(sqlx::Error::Database(db)) = self else { return None };
        db.code().is_some_and(|code| code.starts_with("22")).then(|| db.message().to_owned())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Two pools, so that readers never queue in front of the pipeline: a
/// crawler sending hundreds of GETs at once waits for `reads` connections
/// while claims, events and triggers keep theirs.
#[derive(Clone)]
pub struct Store {
    /// Triggers, claims, events, reconciliation.
    pool: PgPool,
    /// The API's reads, the web pages' and live events'.
    reads: PgPool,
}

impl Store {
    /// Connects with up to `connections` for the pipeline and
    /// `read_connections` for reads.
    pub async fn connect(url: &str, connections: u32, read_connections: u32) -> StoreResult<Store> {
        Self::connect_with_read_timeout(url, connections, read_connections, Duration::from_secs(10)).await
    }

    /// As `connect`, with reads that take longer than `read_timeout`
    /// cancelled by Postgres (a costly listing cannot hold the read
    /// connections).
    pub async fn connect_with_read_timeout(
        url: &str,
        connections: u32,
        read_connections: u32,
        read_timeout: Duration,
    ) -> StoreResult<Store> {
        // No ping before each use: it doubles the round trips of every
        // query, and a broken connection fails its query anyway (a transient
        // error: 503 to an HTTP client, a retry for an event) and is dropped.
        let options = PgPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(5))
            .test_before_acquire(false);
        let pool = options.clone().connect(url).await?;
        let statement_timeout = format!("set statement_timeout = {}", read_timeout.as_millis().max(1));
        let reads = options
            .max_connections(read_connections)
            .after_connect(move |connection, _| {
                let statement_timeout = statement_timeout.clone();
                Box::pin(async move {
                    sqlx::query(sqlx::AssertSqlSafe(statement_timeout)).execute(&mut *connection).await?;
                    // Reads are index walks of a few thousand rows at most;
                    // compiling one (JIT) costs more than it saves (a
                    // quarter of a second on the Tests page's).
                    sqlx::query("set jit = off").execute(connection).await.map(drop)
                })
            })
            .connect(url)
            .await?;
        Ok(Store { pool, reads })
    }

    /// The pipeline's pool, for tests and tools that look at rows directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Refuses to run on a schema that is not exactly what this binary
    /// expects, with the command that fixes it.
    pub async fn check_schema(&self) -> StoreResult<()> {
        let table_exists: bool =
            sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null").fetch_one(&self.pool).await?;
        let applied: Vec<i64> = if table_exists {
            sqlx::query_scalar("select version from _sqlx_migrations where success order by version")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        let known: Vec<i64> = shared::MIGRATOR.iter().map(|m| m.version).collect();
        let missing: Vec<String> = known.iter().filter(|v| !applied.contains(v)).map(|v| v.to_string()).collect();
        if !missing.is_empty() {
            return Err(StoreError::SchemaOutdated { missing: missing.join(", ") });
        }
        let unknown: Vec<String> = applied.iter().filter(|v| !known.contains(v)).map(|v| v.to_string()).collect();
        if !unknown.is_empty() {
            return Err(StoreError::SchemaNewer { unknown: unknown.join(", ") });
        }
        Ok(())
    }

    /// Whether Postgres answers, on the read pool: health checks come
    /// from anyone and must not take the pipeline's connections.
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.reads).await?;
        Ok(())
    }
}

/// Creates the database named in `url` when it does not exist, then applies
/// every migration not yet applied. Returns how many were applied now.
pub async fn upgrade(url: &str) -> StoreResult<usize> {
    use sqlx::ConnectOptions;
    use sqlx::postgres::PgConnectOptions;

    let options: PgConnectOptions = url.parse()?;
    if let Some(database) = options.get_database().map(str::to_owned) {
        let mut admin = options.clone().database("postgres").connect().await?;
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&database)
            .fetch_one(&mut admin)
            .await?;
        if !exists {
            let quoted = database.replace('"', "\"\"");
            // The name comes from the operator's own settings and is quoted.
            sqlx::query(sqlx::AssertSqlSafe(format!("create database \"{quoted}\""))).execute(&mut admin).await?;
            tracing::info!(database = %database, "database created");
        }
    }
    let mut connection = options.connect().await?;
    let before: i64 = if sqlx::query_scalar::<_, bool>("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut connection)
        .await?
    {
        sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&mut connection).await?
    } else {
        0
    };
    shared::MIGRATOR.run(&mut connection).await.map_err(|e| StoreError::Database(e.into()))?;
    let after: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&mut connection).await?;
    Ok((after - before) as usize)
}

#[cfg(test)]
mod tests {
    use super::testing::TestDatabase;

    #[tokio::test]
    async fn a_master_refuses_an_out_of_date_schema_and_says_how_to_fix_it() {
        let db = TestDatabase::new().await;
        sqlx::query("delete from _sqlx_migrations").execute(db.store.pool()).await.unwrap();
        let error = db.store.check_schema().await.unwrap_err().to_string();
        assert!(error.contains("buildmaster upgrade-master"), "{error}");
    }
}
