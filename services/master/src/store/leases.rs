//! Leases: a running build holds one, extended by its worker's heartbeats.
//! A build whose lease expired lost its worker: it ends as RETRY and its
//! request is pending again, up to `max_retries` times.

use shared::ids::{BuildId, BuildRequestId, BuilderId, BuildsetId};
use shared::model::Results;
use sqlx::FromRow;

use super::buildsets::DueRequest;
use super::{Store, StoreResult};

/// What [`Store::expire_leases`] did: builds ended as RETRY (with their
/// builders), and the requests pending again.
#[derive(Debug)]
pub struct Expired {
    pub builds: Vec<(BuildId, BuilderId)>,
    pub requeued: Vec<DueRequest>,
}

/// A request whose build lost its worker, as released.
#[derive(FromRow)]
struct Released {
    id: BuildRequestId,
    builder_id: BuilderId,
    state: String,
    buildset_id: BuildsetId,
    traceparent: Option<String>,
}

impl Store {
    /// Extends the leases of the builds a worker says it runs, and returns
    /// those among them whose lease the masters already ended (the worker
    /// was away too long; they were retried): the worker must stop them.
    pub async fn heartbeat(
        &self,
        worker: &str,
        build_ids: &[BuildId],
        lease_seconds: u64,
    ) -> StoreResult<Vec<BuildId>> {
        let lost: Vec<BuildId> = sqlx::query_scalar(
            r#"with extended as (
                   update builds b set lease_expires_at = now() + make_interval(secs => $3)
                   from workers w
                   where b.id = any($2) and b.complete_at is null and w.id = b.worker_id and w.name = $1
               )
               select b.id from builds b join workers w on w.id = b.worker_id
               where b.id = any($2) and w.name = $1 and b.lease_lost_at is not null"#,
        )
        .bind(worker)
        .bind(build_ids)
        .bind(lease_seconds as f64)
        .fetch_all(&self.pool)
        .await?;
        sqlx::query("update workers set last_seen_at = now() where name = $1").bind(worker).execute(&self.pool).await?;
        Ok(lost)
    }

    /// Ends builds whose lease expired as RETRY. Their requests are pending
    /// again (returned, to be announced), unless they already lost a worker
    /// `max_retries` times: those end as EXCEPTION.
    pub async fn expire_leases(&self, limit: i64, max_retries: u32) -> StoreResult<Expired> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(BuildId, BuilderId, BuildRequestId)> = sqlx::query_as(
            r#"with expired as (
                   select id from builds
                   where complete_at is null and lease_expires_at < now()
                   order by lease_expires_at
                   limit $1
                   for update skip locked
               )
               update builds b
               set complete_at = now(), lease_lost_at = now(), results = $2,
                   state_string = 'worker lost: no heartbeat before the lease expired'
               from expired where b.id = expired.id
               returning b.id, b.builder_id, b.buildrequest_id"#,
        )
        .bind(limit)
        .bind(Results::Retry.code())
        .fetch_all(&mut *tx)
        .await?;
        let request_ids: Vec<BuildRequestId> = expired.iter().map(|(_, _, request)| *request).collect();
        let released: Vec<Released> = sqlx::query_as(
            r#"with counted as (
                   select r.id,
                          (select count(*) from builds b where b.buildrequest_id = r.id and b.results = $3) as lost
                   from buildrequests r
                   where r.id = any($1) and r.state = 'claimed'
               )
               update buildrequests r
               set state = case when c.lost > $2 then 'complete' else 'pending' end,
                   claimed_at = null, claimed_by_master_id = null,
                   announced_at = now(),
                   complete_at = case when c.lost > $2 then now() end,
                   results = case when c.lost > $2 then $4 end
               from counted c where r.id = c.id
               returning r.id, r.builder_id, r.state, r.buildset_id, r.traceparent"#,
        )
        .bind(&request_ids)
        .bind(i64::from(max_retries))
        .bind(Results::Retry.code())
        .bind(Results::Exception.code())
        .fetch_all(&mut *tx)
        .await?;
        let mut requeued = Vec::new();
        for Released { id, builder_id, state, buildset_id, traceparent } in released {
            if state == "pending" {
                requeued.push(DueRequest { id, builder_id, traceparent });
            } else {
                tracing::warn!(buildrequest.id = %id, max_retries, "request lost its worker too often; it ends as EXCEPTION");
                Self::complete_buildset_if_done(&mut tx, buildset_id).await?;
            }
        }
        tx.commit().await?;
        Ok(Expired { builds: expired.iter().map(|(build, builder, _)| (*build, *builder)).collect(), requeued })
    }
}

#[cfg(test)]
mod tests {
    use shared::ids::BuildId;
    use shared::model::Results;

    use crate::store::testing::TestDatabase;

    async fn expire_now(db: &TestDatabase, build: BuildId) {
        sqlx::query("update builds set lease_expires_at = now() - interval '1 second' where id = $1")
            .bind(build)
            .execute(db.store.pool())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_lost_build_is_retried_until_max_retries_then_its_request_ends_as_exception() {
        let db = TestDatabase::new().await;
        let builder = db.builder("lossy").await;
        let buildset = db.queue(builder, 1).await;
        let first = db.claim_next(builder).await.unwrap();
        assert!(db.store.expire_leases(10, 1).await.unwrap().builds.is_empty(), "a live lease is kept");

        expire_now(&db, first.id).await;
        let expired = db.store.expire_leases(10, 1).await.unwrap();
        assert_eq!(expired.builds, [(first.id, builder)]);
        assert_eq!(expired.requeued.len(), 1, "pending again after one loss");

        let second = db.claim_next(builder).await.expect("the request runs again");
        assert_eq!(second.buildrequest_id, first.buildrequest_id);
        assert_eq!(second.number, 2);
        expire_now(&db, second.id).await;
        let expired = db.store.expire_leases(10, 1).await.unwrap();
        assert_eq!(expired.builds.len(), 1);
        assert!(expired.requeued.is_empty(), "a second loss is one more than max_retries");

        let results: Vec<Option<i16>> =
            sqlx::query_scalar("select results from builds order by id").fetch_all(db.store.pool()).await.unwrap();
        assert_eq!(results, [Some(Results::Retry.code()), Some(Results::Retry.code())]);
        let (request, set): (Option<i16>, Option<i16>) = sqlx::query_as(
            "select r.results, s.results from buildrequests r join buildsets s on s.id = r.buildset_id where s.id = $1",
        )
        .bind(buildset)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        assert_eq!((request, set), (Some(Results::Exception.code()), Some(Results::Exception.code())));
    }

    #[tokio::test]
    async fn a_heartbeat_extends_only_its_own_workers_builds() {
        let db = TestDatabase::new().await;
        let builder = db.builder("beating").await;
        db.worker("w2").await;
        db.queue(builder, 1).await;
        let build = db.claim_next(builder).await.unwrap();
        expire_now(&db, build.id).await;
        db.store.heartbeat("w2", &[build.id], 60).await.unwrap();
        let expired = db.store.expire_leases(10, 3).await.unwrap();
        assert_eq!(expired.builds.len(), 1, "another worker's heartbeat kept nothing alive");
        let lost = db.store.heartbeat("w1", &[build.id], 60).await.unwrap();
        assert_eq!(lost, [build.id], "its own worker, back, learns the lease is gone");
    }
}
