//! Builders: their rows follow the configuration (a builder that leaves it
//! keeps its row, id and history), and they can be paused.

use std::collections::HashMap;

use shared::config::BuilderConfig;
use shared::ids::{BuildRequestId, BuilderId, BuilderName};

use super::{Store, StoreResult};

impl Store {
    /// Makes the builders table match the configuration and returns every
    /// configured builder's id. Builders no longer configured keep their row
    /// (and history) but are marked so.
    pub async fn sync_builders(&self, builders: &[BuilderConfig]) -> StoreResult<HashMap<BuilderName, BuilderId>> {
        let names: Vec<&str> = builders.iter().map(|b| b.name.as_str()).collect();
        let descriptions: Vec<Option<&str>> = builders.iter().map(|b| b.description.as_deref()).collect();
        let tags: Vec<String> =
            builders.iter().map(|b| serde_json::to_string(&b.tags).expect("tags serialize")).collect();
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(BuilderName, BuilderId)> = sqlx::query_as(
            r#"insert into builders (name, description, tags, configured)
               select name, description, array(select jsonb_array_elements_text(tags::jsonb)), true
               from unnest($1::text[], $2::text[], $3::text[]) as t(name, description, tags)
               on conflict (name) do update
                 set description = excluded.description, tags = excluded.tags, configured = true
               returning name, id"#,
        )
        .bind(&names)
        .bind(&descriptions)
        .bind(&tags)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("update builders set configured = false where configured and not (name = any($1))")
            .bind(&names)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().collect())
    }

    /// Pauses or unpauses a builder; returns its name and, when unpaused,
    /// its pending requests (to ring their doorbells again).
    pub async fn set_builder_paused(
        &self,
        builder_id: BuilderId,
        paused: bool,
        reason: Option<&str>,
    ) -> StoreResult<Option<(BuilderName, Vec<BuildRequestId>)>> {
        let mut tx = self.pool.begin().await?;
        let name: Option<BuilderName> = sqlx::query_scalar(
            "update builders set paused = $2, pause_reason = case when $2 then $3 end where id = $1 returning name",
        )
        .bind(builder_id)
        .bind(paused)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(name) = name else {
            return Ok(None);
        };
        let pending: Vec<BuildRequestId> = if paused {
            Vec::new()
        } else {
            sqlx::query_scalar("select id from buildrequests where builder_id = $1 and state = 'pending' order by id")
                .bind(builder_id)
                .fetch_all(&mut *tx)
                .await?
        };
        tx.commit().await?;
        Ok(Some((name, pending)))
    }
}
