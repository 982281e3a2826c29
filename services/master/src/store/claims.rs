//! Claiming: a worker that heard a doorbell asks for the best pending
//! request of a builder, and gets a build made from it, in one statement.
//! Priority first, then the request whose doorbell rang, then age; rows
//! another transaction holds are skipped, so masters claiming at once never
//! hand out the same request, and build numbers come out 1, 2, 3 … under
//! the builder row's lock.
//!
//! A worker runs one build of a builder at a time, as Buildbot does: the
//! builder's directory on the worker is one build's at a time, so two
//! builds never clobber each other's files. Its other slots serve other
//! builders.

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
    /// The builds the worker says it runs now (`None` when it does not
    /// say): a build it no longer runs does not keep the builder busy,
    /// though its end may not be recorded yet.
    pub running_builds: Option<&'a [BuildId]>,
    /// The request whose doorbell this claim answers, taken first among
    /// those of the highest priority waiting. Otherwise claims for
    /// requests that arrive together would each take the oldest: one that
    /// loses the race for it finds nothing, and the last request of a
    /// stream is left without a doorbell until the reconciler rings it.
    pub rung_for: Option<BuildRequestId>,
    pub lease_seconds: u64,
    /// Properties from the builder's and the worker's configuration
    /// (`{"name": [value, source]}`); those of the request win over them,
    /// except forced ones.
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
            let (waiting, busy): (bool, bool) = sqlx::query_as(
                r#"select exists (select 1 from buildrequests where builder_id = $1 and state = 'pending')
                          and not exists (select 1 from workers where id = $2 and paused)
                          and not exists (select 1 from builders where id = $1 and paused),
                          exists (select 1 from builds
                                  where builder_id = $1 and worker_id = $2 and complete_at is null
                                    and ($3::bigint[] is null or id = any($3)))"#,
            )
            .bind(claim.builder_id)
            .bind(claim.worker_id)
            .bind(claim.running_builds)
            .fetch_one(&self.pool)
            .await?;
            if !waiting {
                return Ok(None);
            }
            if busy {
                // This worker already runs a build of the builder; another
                // worker may take the request: ring for it again soon.
                break;
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
    /// already made. One round trip: this is every build's critical path.
    async fn claim_once(&self, claim: &Claim<'_>) -> StoreResult<Option<ClaimedBuild>> {
        let Claim {
            builder_id,
            builder_name,
            worker_id,
            worker_name,
            master_id,
            claim_token,
            running_builds,
            rung_for,
            lease_seconds,
            configured_properties,
        } = *claim;
        let claimed = sqlx::query_as(
            r#"with existing as (
                   select b.id, b.number, b.buildrequest_id, b.properties, r.traceparent, r.submitted_at
                   from builds b join buildrequests r on r.id = b.buildrequest_id where b.claim_token = $4
               ), picked as (
                   select id from buildrequests
                   where builder_id = $1 and state = 'pending'
                     -- A retried claim gets the build it already made.
                     and not exists (select 1 from existing)
                     -- A paused worker takes no new build, and a paused
                     -- builder starts none.
                     and not exists (select 1 from workers w where w.id = $2 and w.paused)
                     and not exists (select 1 from builders pb where pb.id = $1 and pb.paused)
                     -- One build of a builder per worker at a time.
                     and not exists (select 1 from builds running
                                     where running.builder_id = $1 and running.worker_id = $2
                                       and running.complete_at is null
                                       and ($9::bigint[] is null or running.id = any($9)))
                   order by priority desc, coalesce(id = $10, false) desc, submitted_at, id
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
                          -- The request's properties win over the configured
                          -- ones, but a forced one never replaces one the
                          -- builder or the worker configures.
                          $8::jsonb || coalesce((select jsonb_object_agg(p.key, p.value)
                                                 from jsonb_each(s.properties) p
                                                 where not ($8::jsonb ? p.key
                                                            and p.value ->> 1 = 'Force Build Form')), '{}'::jsonb)
                                    || jsonb_build_object(
                              'buildername', jsonb_build_array($6::text, 'Builder'),
                              'buildnumber', jsonb_build_array(numbered.number, 'Build'),
                              'workername', jsonb_build_array($7::text, 'Worker'))
                   from claimed, numbered, buildsets s
                   where s.id = claimed.buildset_id
                   returning id, number, buildrequest_id, properties
               )
               select inserted.id, inserted.number, inserted.buildrequest_id, inserted.properties,
                      claimed.traceparent, claimed.submitted_at
               from inserted, claimed
               union all
               select * from existing"#,
        )
        .bind(builder_id)
        .bind(worker_id)
        .bind(master_id)
        .bind(claim_token)
        .bind(lease_seconds as f64)
        .bind(builder_name)
        .bind(worker_name)
        .bind(configured_properties)
        .bind(running_builds)
        .bind(rung_for)
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
        const REQUESTS: usize = 60;
        db.queue(builder, REQUESTS).await;
        // A worker runs one build of a builder at a time: one per claim.
        let mut workers = Vec::new();
        for i in 0..REQUESTS * 2 {
            workers.push(db.worker(&format!("w{i}")).await);
        }

        // Twice as many claims as requests, half on each master, all at once.
        let mut claims = tokio::task::JoinSet::new();
        for (i, worker) in workers.into_iter().enumerate() {
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
        let (master, builder) = (db.master("a").await, db.builder("ordered").await);
        let old = db.buildset(builder, 1, 0, json!({ "n": ["old", "Force"] })).await;
        let urgent = db.buildset(builder, 1, 5, json!({ "n": ["urgent", "Force"] })).await;
        let young = db.buildset(builder, 1, 0, json!({ "n": ["young", "Force"] })).await;
        let mut order = Vec::new();
        for worker in ["w1", "w2", "w3", "w4"] {
            let worker = db.worker(worker).await;
            if let Some(build) = db.store.claim(&claim(builder, worker, master)).await.unwrap() {
                order.push(build.properties["n"][0].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(order, ["urgent", "old", "young"], "buildsets {urgent} {old} {young}");
    }

    #[tokio::test]
    async fn a_claim_takes_the_request_that_rang_for_it_unless_a_more_urgent_one_waits() {
        let db = TestDatabase::new().await;
        let (master, builder) = (db.master("a").await, db.builder("rung").await);
        let (w1, w2, w3) = (db.worker("w1").await, db.worker("w2").await, db.worker("w3").await);
        db.buildset(builder, 1, 0, json!({ "n": ["old", "Force"] })).await;
        db.buildset(builder, 1, 0, json!({ "n": ["young", "Force"] })).await;
        let ids: Vec<BuildRequestId> =
            sqlx::query_scalar("select id from buildrequests where builder_id = $1 order by id")
                .bind(builder)
                .fetch_all(db.store.pool())
                .await
                .unwrap();
        let (old, young) = (ids[0], ids[1]);
        let name = |build: Option<ClaimedBuild>| build.unwrap().properties["n"][0].as_str().unwrap().to_owned();
        // The young request's doorbell, answered before the old one's: it
        // takes its own request, and the old doorbell still finds the old.
        let rung = Claim { rung_for: Some(young), ..claim(builder, w1, master) };
        assert_eq!(name(db.store.claim(&rung).await.unwrap()), "young");
        // A more urgent request comes first whichever doorbell rang.
        db.buildset(builder, 1, 5, json!({ "n": ["urgent", "Force"] })).await;
        let rung = Claim { worker_name: "w2", rung_for: Some(old), ..claim(builder, w2, master) };
        assert_eq!(name(db.store.claim(&rung).await.unwrap()), "urgent");
        let unnamed = Claim { worker_name: "w3", ..claim(builder, w3, master) };
        assert_eq!(name(db.store.claim(&unnamed).await.unwrap()), "old");
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
    async fn a_worker_runs_one_build_of_a_builder_at_a_time_and_the_rest_is_rung_for_others() {
        let db = TestDatabase::new().await;
        let (master, builder, w1) = (db.master("a").await, db.builder("one-at-a-time").await, db.worker("w1").await);
        let w2 = db.worker("w2").await;
        db.queue(builder, 2).await;
        let first = db.store.claim(&claim(builder, w1, master)).await.unwrap();
        assert!(first.is_some());
        let second = db.store.claim(&claim(builder, w1, master)).await.unwrap();
        assert!(second.is_none(), "w1 runs a build of this builder already");
        let unannounced: i64 =
            sqlx::query_scalar("select count(*) from buildrequests where state = 'pending' and announced_at is null")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        assert_eq!(unannounced, 1, "the waiting request is rung again for other workers");
        let other = Claim { worker_name: "w2", ..claim(builder, w2, master) };
        assert!(db.store.claim(&other).await.unwrap().is_some(), "w2 takes it");
    }

    #[tokio::test]
    async fn a_build_its_worker_no_longer_runs_does_not_keep_the_builder_busy_before_its_end_is_recorded() {
        let db = TestDatabase::new().await;
        let (master, builder, w1) = (db.master("a").await, db.builder("ended").await, db.worker("w1").await);
        db.queue(builder, 2).await;
        let first = db.store.claim(&claim(builder, w1, master)).await.unwrap().unwrap();
        let running = [first.id];
        let still_running = Claim { running_builds: Some(&running), ..claim(builder, w1, master) };
        assert!(db.store.claim(&still_running).await.unwrap().is_none(), "w1 says it runs the first build");
        // The first build ended on w1; its BuildFinished is still on its way.
        let ended = Claim { running_builds: Some(&[]), ..claim(builder, w1, master) };
        assert!(db.store.claim(&ended).await.unwrap().is_some(), "w1 runs nothing now");
    }

    #[tokio::test]
    async fn a_forced_property_does_not_replace_a_configured_one() {
        let db = TestDatabase::new().await;
        let (master, builder, worker) = (db.master("a").await, db.builder("props").await, db.worker("w1").await);
        let forced =
            json!({ "parallel_tests": ["4 CC=id>/tmp/x;", "Force Build Form"], "target": ["t", "Force Build Form"] });
        db.buildset(builder, 1, 0, forced).await;
        let configured = json!({ "parallel_tests": ["8", "Worker"] });
        let asked = Claim { configured_properties: &configured, ..claim(builder, worker, master) };
        let build = db.store.claim(&asked).await.unwrap().unwrap();
        assert_eq!(build.properties["parallel_tests"], json!(["8", "Worker"]));
        assert_eq!(build.properties["target"], json!(["t", "Force Build Form"]), "what nothing configures stays");
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
        let other = db.worker("w2").await;
        let second =
            tokio::time::timeout(std::time::Duration::from_secs(10), db.store.claim(&claim(builder, other, master)))
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
