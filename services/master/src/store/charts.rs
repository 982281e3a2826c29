//! What the charts draw: a builder's last builds (duration, result), a
//! worker's builds and failures per day, and the queue over the last day
//! (requests pending, and how long the ones claimed waited), each a bounded
//! read by index.

use chrono::{DateTime, Utc};
use shared::ids::{BuilderId, WorkerId};
use sqlx::FromRow;

use super::{Store, StoreResult};

#[derive(Debug, Clone, FromRow)]
pub struct BuildPoint {
    pub number: i32,
    pub started_at: DateTime<Utc>,
    pub seconds: f64,
    pub results: Option<i16>,
}

/// A build on the waterfall.
#[derive(Debug, Clone, FromRow)]
pub struct WindowBuild {
    pub builder_id: BuilderId,
    pub number: i32,
    pub started_at: DateTime<Utc>,
    /// `None` while it runs.
    pub complete_at: Option<DateTime<Utc>>,
    pub results: Option<i16>,
}

#[derive(Debug, Clone, FromRow)]
pub struct DayCount {
    pub day: DateTime<Utc>,
    pub builds: i64,
    pub failures: i64,
}

#[derive(Debug, Clone, FromRow)]
pub struct QueuePoint {
    /// The end of the interval.
    pub at: DateTime<Utc>,
    /// Requests pending then.
    pub pending: i64,
    /// Mean wait of the requests claimed in the interval, in seconds.
    pub mean_wait: Option<f64>,
}

impl Store {
    /// A builder's last `limit` finished builds, oldest first.
    pub async fn builder_points(&self, builder: BuilderId, limit: i64) -> StoreResult<Vec<BuildPoint>> {
        let mut points: Vec<BuildPoint> = sqlx::query_as(
            r#"select number, started_at, extract(epoch from complete_at - started_at)::float8 as seconds, results
               from builds where builder_id = $1 and complete_at is not null
               order by number desc limit $2"#,
        )
        .bind(builder)
        .bind(limit)
        .fetch_all(&self.reads)
        .await?;
        points.reverse();
        Ok(points)
    }

    /// A worker's builds and failures (failure or exception) per day over
    /// the last `days` days, oldest first, days without builds included.
    pub async fn worker_days(&self, worker: WorkerId, days: i32) -> StoreResult<Vec<DayCount>> {
        Ok(sqlx::query_as(
            r#"with days as (
                   select generate_series(date_trunc('day', now()) - make_interval(days => $2 - 1),
                                          date_trunc('day', now()), interval '1 day') as day
               ), counted as (
                   select date_trunc('day', started_at) as day, count(*) as builds,
                          count(*) filter (where results in (2, 4)) as failures
                   from builds where worker_id = $1 and started_at >= date_trunc('day', now()) - make_interval(days => $2 - 1)
                   group by 1
               )
               select days.day, coalesce(counted.builds, 0) as builds, coalesce(counted.failures, 0) as failures
               from days left join counted using (day) order by days.day"#,
        )
        .bind(worker)
        .bind(days)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The queue over the last `hours`, one point per `step_minutes`.
    pub async fn queue_history(&self, hours: i32, step_minutes: i32) -> StoreResult<Vec<QueuePoint>> {
        Ok(sqlx::query_as(
            r#"with points as (
                   select generate_series(now() - make_interval(hours => $1) + make_interval(mins => $2), now(),
                                          make_interval(mins => $2)) as at
               ), requests as materialized (
                   -- Requests submitted up to a day before the window (by
                   -- index), and any still pending (a partial index): one
                   -- that waited longer than a day before the window to be
                   -- claimed in it is left out.
                   select submitted_at, claimed_at, complete_at from buildrequests
                   where submitted_at > now() - make_interval(hours => $1 + 24)
                   union all
                   select submitted_at, claimed_at, complete_at from buildrequests
                   where state = 'pending' and submitted_at <= now() - make_interval(hours => $1 + 24)
               )
               select p.at,
                      (select count(*) from requests r
                       where r.submitted_at <= p.at
                         and coalesce(r.claimed_at, r.complete_at, 'infinity') > p.at) as pending,
                      (select avg(extract(epoch from r.claimed_at - r.submitted_at))::float8 from requests r
                       where r.claimed_at > p.at - make_interval(mins => $2) and r.claimed_at <= p.at) as mean_wait
               from points p order by p.at"#,
        )
        .bind(hours)
        .bind(step_minutes)
        .fetch_all(&self.reads)
        .await?)
    }

    /// The builds of `builders` that ran at some time since `since`: each
    /// builder's newest ones, read back by index until they end before it
    /// (at most `WATERFALL_BUILDS` each).
    pub async fn builds_since(&self, builders: &[BuilderId], since: DateTime<Utc>) -> StoreResult<Vec<WindowBuild>> {
        Ok(sqlx::query_as(
            r#"select b.builder_id, b.number, b.started_at, b.complete_at, b.results
               from unnest($1::int[]) as bl(id)
               cross join lateral (
                   select builder_id, number, started_at, complete_at, results from builds
                   where builder_id = bl.id order by number desc limit $3
               ) b
               where b.complete_at is null or b.complete_at >= $2"#,
        )
        .bind(builders)
        .bind(since)
        .bind(WATERFALL_BUILDS)
        .fetch_all(&self.reads)
        .await?)
    }
}

/// Builds per builder the waterfall reads back at most.
pub const WATERFALL_BUILDS: i64 = 200;
