//! Masters: each registers under its name, touches its row while it runs
//! (so the API can say which are active), records why its last
//! configuration reload was refused, and holds the roles one master plays
//! for the whole installation.

use std::time::Duration;

use shared::ids::MasterId;

use super::{Store, StoreResult};

impl Store {
    /// Takes `role` for `master`, or keeps it, for `ttl` from now; `false`
    /// while another master's hold has not run out.
    pub async fn hold_role(&self, role: &str, master: MasterId, ttl: Duration) -> StoreResult<bool> {
        let held: Option<MasterId> = sqlx::query_scalar(
            r#"insert into master_roles (role, master_id, held_until)
               values ($1, $2, now() + make_interval(secs => $3))
               on conflict (role) do update
                   set master_id = excluded.master_id, held_until = excluded.held_until
                   where master_roles.master_id = excluded.master_id or master_roles.held_until < now()
               returning master_id"#,
        )
        .bind(role)
        .bind(master)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await?;
        Ok(held.is_some())
    }

    /// Lets go of `role` if `master` holds it, so another takes it at once.
    pub async fn release_role(&self, role: &str, master: MasterId) -> StoreResult<()> {
        sqlx::query("delete from master_roles where role = $1 and master_id = $2")
            .bind(role)
            .bind(master)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn register_master(&self, name: &str) -> StoreResult<MasterId> {
        Ok(sqlx::query_scalar(
            r#"insert into masters (name) values ($1)
               on conflict (name) do update set started_at = now(), last_seen_at = now()
               returning id"#,
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn touch_master(&self, id: MasterId) -> StoreResult<()> {
        sqlx::query("update masters set last_seen_at = now() where id = $1").bind(id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records why this master's last reload was refused, or that the
    /// files on disk are applied (`None`).
    pub async fn set_config_error(&self, master_id: MasterId, error: Option<&str>) -> StoreResult<()> {
        sqlx::query("update masters set config_error = $2 where id = $1")
            .bind(master_id)
            .bind(error)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Masters seen lately whose last reload was refused, with why.
    pub async fn config_errors(&self) -> StoreResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            r#"select name, config_error from masters
               where config_error is not null and last_seen_at > now() - interval '1 minute'
               order by name"#,
        )
        .fetch_all(&self.reads)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::testing::TestDatabase;

    #[tokio::test]
    async fn a_role_has_one_holder_until_its_hold_runs_out_or_is_released() {
        let db = TestDatabase::new().await;
        let (a, b) = (db.store.register_master("a").await.unwrap(), db.store.register_master("b").await.unwrap());
        let ttl = Duration::from_secs(60);
        assert!(db.store.hold_role("irc", a, ttl).await.unwrap());
        assert!(!db.store.hold_role("irc", b, ttl).await.unwrap(), "b waits while a holds it");
        assert!(db.store.hold_role("irc", a, ttl).await.unwrap(), "a renews");
        assert!(db.store.hold_role("other", b, ttl).await.unwrap(), "roles are independent");
        db.store.release_role("irc", b).await.unwrap();
        assert!(!db.store.hold_role("irc", b, ttl).await.unwrap(), "b cannot release what a holds");
        sqlx::query("update master_roles set held_until = now() - interval '1 second' where role = 'irc'")
            .execute(db.store.pool())
            .await
            .unwrap();
        assert!(db.store.hold_role("irc", b, ttl).await.unwrap(), "a's hold ran out: b takes it");
        assert!(!db.store.hold_role("irc", a, ttl).await.unwrap(), "and a no longer has it");
        db.store.release_role("irc", b).await.unwrap();
        assert!(db.store.hold_role("irc", a, ttl).await.unwrap(), "released: taken at once");
    }
}
