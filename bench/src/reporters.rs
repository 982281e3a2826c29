//! From a build's end to its commit status on GitHub. GitHub cannot be
//! reached from here, so the load generator serves a stand-in for its
//! statuses API where bench/config/settings.yaml points `github.api_url`,
//! and notes when each status arrives; when the build ended is what the
//! system recorded in Postgres (one machine, one clock).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::installation::closed_loop;
use crate::{percentiles_ms, wait_complete};

/// The builder whose builds the `statuses` reporter tells GitHub of.
const BUILDER: &str = "bench-reported";

/// When each build's final status arrived, by the build page it links to.
type Arrivals = Arc<Mutex<HashMap<String, DateTime<Utc>>>>;

async fn stand_in(listen: SocketAddr, arrivals: Arrivals) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/repos/{owner}/{repo}/statuses/{sha}",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let arrivals = arrivals.clone();
            async move {
                if body["state"] != "pending"
                    && let Some(url) = body["target_url"].as_str()
                {
                    arrivals.lock().expect("arrivals lock").entry(url.to_owned()).or_insert_with(Utc::now);
                }
                (axum::http::StatusCode::CREATED, axum::Json(json!({ "id": 1, "state": body["state"] })))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for GitHub's stand-in"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

/// `builds` trivial builds forced by `clients` clients at once (a new
/// connection per force); for each, its end → its status at GitHub.
pub async fn statuses(
    url: &str,
    database: &sqlx::PgPool,
    clients: usize,
    builds: usize,
    listen: SocketAddr,
) -> anyhow::Result<Value> {
    let arrivals: Arrivals = Arc::default();
    stand_in(listen, arrivals.clone()).await?;
    let (_, ids) = closed_loop(url, BUILDER, clients, builds).await?;
    wait_complete(database, &ids, Duration::from_secs(300)).await?;
    let ended: Vec<(i32, DateTime<Utc>)> = sqlx::query_as(
        "select b.number, b.complete_at from builds b where b.buildrequest_id = any($1) and b.complete_at is not null",
    )
    .bind(&ids)
    .fetch_all(database)
    .await?;
    let page = |number: i32| format!("{}/builders/{BUILDER}/builds/{number}", url.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let told = {
            let arrivals = arrivals.lock().expect("arrivals lock");
            ended.iter().filter(|(number, _)| arrivals.contains_key(&page(*number))).count()
        };
        if told == ended.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!("{} of {} builds have no status at GitHub after 120 s", ended.len() - told, ended.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = arrivals.lock().expect("arrivals lock");
    let latencies: Vec<Duration> =
        ended.iter().map(|(number, at)| (arrivals[&page(*number)] - *at).to_std().unwrap_or_default()).collect();
    Ok(json!({
        "scenario": "reporter-statuses",
        "clients": clients,
        "builds": builds,
        "end_to_status_ms": percentiles_ms(latencies),
    }))
}
