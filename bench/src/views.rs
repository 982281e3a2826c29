//! The views that read across builders and changes, on the seeded history:
//! the console of 1,000 builders by 100 changes (bench/seed-console.sql)
//! and the release board over a history of millions of builds, one request
//! at a time.

use anyhow::bail;
use serde_json::{Value, json};

use crate::pages::time_gets;
use crate::percentiles_ms;

pub async fn views(http: &reqwest::Client, url: &str, database: &sqlx::PgPool, rounds: usize) -> anyhow::Result<Value> {
    let (builds, changes, console_builds): (i64, i64, i64) = sqlx::query_as(
        r#"select (select count(*) from builds),
                  (select count(*) from changes where source = 'bench-console'),
                  (select count(*) from buildsets where scheduler = 'bench-console')"#,
    )
    .fetch_one(database)
    .await?;
    if changes < 100 {
        bail!("the console's history is not seeded; run bench/run.sh views (it seeds) first");
    }
    let (console, console_bytes) =
        time_gets(http, url, rounds, |_| "/console?branch=main".to_owned(), "table class=\"console\"").await?;
    let (tagged, _) =
        time_gets(http, url, rounds, |_| "/console?branch=main&tag=tier-1".to_owned(), "table class=\"console\"")
            .await?;
    let (release, release_bytes) = time_gets(http, url, rounds, |_| "/release".to_owned(), "builders red").await?;
    let (waterfall, _) = time_gets(http, url, rounds, |_| "/waterfall?hours=6".to_owned(), "svg").await?;
    Ok(json!({
        "scenario": "views",
        "seeded_builds": builds,
        "console_changes": changes,
        "console_buildsets": console_builds,
        "rounds": rounds,
        "console_1000_builders_ms": percentiles_ms(console),
        "console_bytes": console_bytes,
        "console_tier1_ms": percentiles_ms(tagged),
        "release_board_ms": percentiles_ms(release),
        "release_board_bytes": release_bytes,
        "waterfall_6h_ms": percentiles_ms(waterfall),
    }))
}
