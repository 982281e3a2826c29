//! Claiming: a worker that heard a doorbell asks for the best pending
//! request of a builder, and gets a build made from it, in one statement.
//! Priority first, then age; rows another transaction holds are skipped, so
//! masters claiming at once never hand out the same request, and build
//! numbers come out 1, 2, 3 … under the builder row's lock.

use chrono::{DateTime, Utc};
use shared::ids::{BuildId, BuildRequestId, BuilderId, MasterId, WorkerId};
use sqlx::FromRow;
use uuid::Uuid;

use super::{Store, StoreResult};

/// Who claims a build of which builder.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub builder_id: BuilderId,
    pub builder_name: &'a str,
    pub worker_id: WorkerId,
    pub worker_name: &'a str,
    pub master_id: MasterId,
    /// Chosen by the worker; retrying with it returns the same build.
    pub claim_token: Uuid,
    pub lease_seconds: u64,
    /// Properties from the builder's and the worker's configuration
    /// (`{"name": [value, source]}`); those of the request win over them.
    pub configured_properties: &'a serde_json::Value,
}

/// What a claim produced: a new or (for a retried token) existing build.
#[derive(Debug, FromRow)]
pub struct ClaimedBuild {
    pub id: BuildId,
    pub number: i32,
    pub buildrequest_id: BuildRequestId,
    pub properties: serde_json::Value,
    /// The trace of the request, which the build joins.
    pub traceparent: Option<String>,
    /// When the request was accepted.
    pub submitted_at: DateTime<Utc>,
}

impl Store {
    /// Claims the best pending request of a builder for a worker.
    ///
    /// The claim statement sees the requests committed when it started and
    /// skips those another transaction holds, so it can find nothing while
    /// a request waits: one committed a moment after it started, whose
    /// doorbell a concurrent claim answered by taking an older request; or
    /// one a cancel or a reconciler pass holds for a moment. Answering
    /// "nothing" then would leave that request to `redeliver_after_seconds`.
    /// So a claim that found nothing looks again (a new statement sees what
    /// is committed now) while the builder has a pending request, and if one
    /// is still out of reach after a few looks, it is marked unannounced:
    /// the reconciler rings for it within seconds.
    pub async fn claim(&self, claim: &Claim<'_>) -> StoreResult<Option<ClaimedBuild>> {
        const LOOKS: u32 = 3;
        for look in 1..=LOOKS {
            if let Some(build) = self.claim_once(claim).await? {
                return Ok(Some(build));
            }
            let waiting: bool = sqlx::query_scalar(
                r#"select exists (select 1 from buildrequests where builder_id = $1 and state = 'pending')
                          and not exists (select 1 from workers where id = $2 and paused)
                          and not exists (select 1 from builders where id = $1 and paused)"#,
            )
            .bind(claim.builder_id)
            .bind(claim.worker_id)
            .fetch_one(&self.pool)
            .await?;
            if !waiting {
                return Ok(None);
            }
            if look < LOOKS {
                tokio::time::sleep(std::time::Duration::from_millis(10 * u64::from(look))).await;
            }
        }
        sqlx::query("update buildrequests set announced_at = null where builder_id = $1 and state = 'pending'")
            .bind(claim.builder_id)
            .execute(&self.pool)
            .await?;
        Ok(None)
    }

    /// One claim statement: picks the best pending request (priority, then
    /// age; skipping rows another transaction holds), marks it claimed,
    /// takes the builder's next number under the builder row's lock, and
    /// creates the build. A retried claim token returns the build it
    /// already made.
    async fn claim_once(&self, claim: &Claim<'_>) -> StoreResult<Option<ClaimedBuild>> {
        let Claim {
            builder_id,
            builder_name,
            worker_id,
            worker_name,
            master_id,
            claim_token,
            lease_seconds,
            configured_properties,
        } = *claim;
        let existing: Option<ClaimedBuild> = sqlx::query_as(
            r#"select b.id, b.number, b.buildrequest_id, b.properties, r.traceparent, r.submitted_at
                   from builds b join buildrequests r on r.id = b.buildrequest_id where b.claim_token = $1"#,
        )
        .bind(claim_token)
        .fetch_optional(&self.pool)
        .await?;
        if existing.is_some() {
            return Ok(existing);
        }
        let claimed = sqlx::query_as(
            r#"with picked as (
                   select id from buildrequests
                   where builder_id = $1 and state = 'pending'
                     -- A paused worker takes no new build, and a paused
                     -- builder starts none.
                     and not exists (select 1 from workers w where w.id = $2 and w.paused)
                     and not exists (select 1 from builders pb where pb.id = $1 and pb.paused)
                   order by priority desc, submitted_at, id
                   limit 1
                   for update skip locked
               ), claimed as (
                   update buildrequests r
                   set state = 'claimed', claimed_at = now(), claimed_by_master_id = $3
                   from picked where r.id = picked.id
                   returning r.id, r.buildset_id, r.traceparent, r.submitted_at
               ), numbered as (
                   update builders set next_build_number = next_build_number + 1
                   where id = $1 and exists (select 1 from claimed)
                   returning next_build_number - 1 as number
               ), inserted as (
                   insert into builds (builder_id, number, buildrequest_id, worker_id, master_id, claim_token,
                                       lease_expires_at, state_string, properties)
                   select $1, numbered.number, claimed.id, $2, $3, $4,
                          now() + make_interval(secs => $5), 'building',
                          $8::jsonb || s.properties || jsonb_build_object(
                              'buildername', jsonb_build_array($6::text, 'Builder'),
                              'buildnumber', jsonb_build_array(numbered.number, 'Build'),
                              'workername', jsonb_build_array($7::text, 'Worker'))
                   from claimed, numbered, buildsets s
                   where s.id = claimed.buildset_id
                   returning id, number, buildrequest_id, properties
               )
               select inserted.id, inserted.number, inserted.buildrequest_id, inserted.properties,
                      claimed.traceparent, claimed.submitted_at
               from inserted, claimed"#,
        )
        .bind(builder_id)
        .bind(worker_id)
        .bind(master_id)
        .bind(claim_token)
        .bind(lease_seconds as f64)
        .bind(builder_name)
        .bind(worker_name)
        .bind(configured_properties)
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;
    use shared::ids::MasterId;
    use shared::model::Results;

    use super::*;
    use crate::store::testing::{TestDatabase, claim};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_masters_claiming_at_once_give_unique_gapless_build_numbers() {
        let db = TestDatabase::new().await;
        // Two masters: two pools, two master rows.
        let other_store = Store::connect(&db.url, 8, 1).await.unwrap();
        let (master_a, master_b) = (db.master("a").await, db.master("b").await);
        let builder = db.builder("numbered").await;
        let worker = db.worker("w1").await;
        const REQUESTS: usize = 60;
        db.queue(builder, REQUESTS).await;

        // Twice as many claims as requests, half on each master, all at once.
        let mut claims = tokio::task::JoinSet::new();
        for i in 0..REQUESTS * 2 {
            let (store, master) =
                if i % 2 == 0 { (db.store.clone(), master_a) } else { (other_store.clone(), master_b) };
            claims.spawn(async move { store.claim(&claim(builder, worker, master)).await.unwrap() });
        }
        let mut numbers = Vec::new();
        let mut requests_claimed = BTreeSet::new();
        while let Some(claimed) = claims.join_next().await {
            if let Some(build) = claimed.unwrap() {
                numbers.push(build.number);
                assert!(
                    requests_claimed.insert(build.buildrequest_id),
                    "request {} claimed twice",
                    build.buildrequest_id
                );
            }
        }
        numbers.sort();
        assert_eq!(numbers, (1..=REQUESTS as i32).collect::<Vec<_>>());
        let masters: Vec<(MasterId,)> =
            sqlx::query_as("select distinct master_id from builds").fetch_all(db.store.pool()).await.unwrap();
        assert_eq!(masters.len(), 2, "both masters claimed some");
    }

    #[tokio::test]
    async fn the_highest_priority_is_claimed_first_then_the_oldest() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("ordered").await, db.worker("w1").await);
        let old = db.buildset(builder, 1, 0, json!({ "n": ["old", "Force"] })).await;
        let urgent = db.buildset(builder, 1, 5, json!({ "n": ["urgent", "Force"] })).await;
        let young = db.buildset(builder, 1, 0, json!({ "n": ["young", "Force"] })).await;
        let mut order = Vec::new();
        while let Some(build) = db.store.claim(&claim(builder, worker, master)).await.unwrap() {
            order.push(build.properties["n"][0].as_str().unwrap().to_owned());
        }
        assert_eq!(order, ["urgent", "old", "young"], "buildsets {urgent} {old} {young}");
    }

    #[tokio::test]
    async fn a_claim_retried_with_the_same_token_returns_the_same_build() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("retried").await, db.worker("w1").await);
        db.queue(builder, 2).await;
        let asked = claim(builder, worker, master);
        let first = db.store.claim(&asked).await.unwrap().unwrap();
        let again = db.store.claim(&asked).await.unwrap().unwrap();
        assert_eq!((first.id, first.number), (again.id, again.number));
        let count: i64 = sqlx::query_scalar("select count(*) from builds").fetch_one(db.store.pool()).await.unwrap();
        assert_eq!(count, 1, "the second request is still pending");
    }

    #[tokio::test]
    async fn a_build_carries_its_configured_properties_under_the_requests_own() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("props").await, db.worker("w1").await);
        db.buildset(builder, 1, 0, json!({ "jobs": ["9", "Force"] })).await;
        let configured = json!({ "jobs": ["4", "Worker"], "arch": ["x86", "Builder"] });
        let asked = Claim { configured_properties: &configured, ..claim(builder, worker, master) };
        let build = db.store.claim(&asked).await.unwrap().unwrap();
        assert_eq!(build.properties["jobs"], json!(["9", "Force"]));
        assert_eq!(build.properties["arch"], json!(["x86", "Builder"]));
        assert_eq!(build.properties["buildnumber"], json!([1, "Build"]));
        assert_eq!(build.properties["workername"], json!(["w1", "Worker"]));
    }

    #[tokio::test]
    async fn a_paused_worker_or_builder_claims_nothing() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("paused").await, db.worker("w1").await);
        db.queue(builder, 1).await;
        db.store.set_worker_paused(worker, true, Some("test")).await.unwrap();
        assert!(db.store.claim(&claim(builder, worker, master)).await.unwrap().is_none());
        db.store.set_worker_paused(worker, false, None).await.unwrap();
        db.store.set_builder_paused(builder, true, Some("test")).await.unwrap();
        assert!(db.store.claim(&claim(builder, worker, master)).await.unwrap().is_none());
        db.store.set_builder_paused(builder, false, None).await.unwrap();
        assert!(db.store.claim(&claim(builder, worker, master)).await.unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_buildset_finishing_one_build_does_not_hide_its_pending_request_from_claims() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("held").await, db.worker("w1").await);
        db.queue(builder, 2).await;
        let first = db.store.claim(&claim(builder, worker, master)).await.unwrap().expect("the first request");
        // The first build's end is being recorded (its buildset checked for
        // completion) while the second request is claimed.
        let mut recording = db.store.pool().begin().await.unwrap();
        Store::finish_build(&mut recording, first.id, Results::Success, "done", Utc::now()).await.unwrap();
        let second =
            tokio::time::timeout(std::time::Duration::from_secs(10), db.store.claim(&claim(builder, worker, master)))
                .await
                .expect("the claim does not wait for the recording transaction")
                .unwrap();
        assert!(second.is_some(), "the pending request of the same buildset is claimable meanwhile");
        recording.commit().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_that_cannot_reach_a_pending_request_has_it_announced_again_soon() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("held").await, db.worker("w1").await);
        db.queue(builder, 1).await;
        // Another transaction holds the only request (as a cancel does for a
        // moment) while a worker's claim runs.
        let mut holder = db.store.pool().begin().await.unwrap();
        let (request_id,): (BuildRequestId,) =
            sqlx::query_as("select id from buildrequests for update").fetch_one(&mut *holder).await.unwrap();
        let claiming = tokio::spawn({
            let store = db.store.clone();
            async move { store.claim(&claim(builder, worker, master)).await.unwrap() }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        holder.commit().await.unwrap();
        assert!(claiming.await.unwrap().is_none(), "the request was out of reach");
        let announced: Option<DateTime<Utc>> =
            sqlx::query_scalar("select announced_at from buildrequests where id = $1")
                .bind(request_id)
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        assert_eq!(announced, None, "marked unannounced: the reconciler rings for it within seconds");
    }
}
