//! The read side: Buildbot's resources as the API serves them, for the API,
//! the web pages and live events alike. Postgres shapes the rows
//! (`store::resources`); what Postgres does not hold is filled in here
//! (whether a worker is online, from Redis; which builders it serves, from
//! the configuration).

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::Master;
use crate::store::StoreError;
use crate::store::resources::{Filter, ListSpec, Op, Page, Resource, Scalar, WORKERS};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// One page of `resource` as `spec` asks.
pub async fn list(master: &Master, resource: &'static Resource, spec: &ListSpec) -> Result<Page, ReadError> {
    let mut page = master.store.list(resource, spec).await?;
    if std::ptr::eq(resource, &WORKERS) {
        fill_worker_connections(master, &mut page.items).await?;
    }
    Ok(page)
}

/// The first item matching `scope` with the `fields` given (all but those
/// served on request when empty), shaped as the API serves it.
pub async fn lookup(
    master: &Master,
    resource: &'static Resource,
    fields: &[&str],
    scope: Vec<Filter>,
) -> Result<Option<Value>, ReadError> {
    let fields = if fields.is_empty() {
        resource.fields.iter().filter(|f| !f.on_request).collect()
    } else {
        fields.iter().map(|name| resource.field(name).expect("resource tables name their fields")).collect()
    };
    let spec = ListSpec { filters: scope, order: Vec::new(), fields, limit: 1, offset: 0, count: false };
    Ok(list(master, resource, &spec).await?.items.into_iter().next())
}

/// The items of `resource` whose `id_field` is one of `ids` (in any order;
/// those that do not exist are left out), with the fields served by
/// default.
pub async fn items(
    master: &Master,
    resource: &'static Resource,
    id_field: &str,
    ids: &[i64],
) -> Result<Vec<Value>, ReadError> {
    let field = resource.field(id_field).expect("resource tables name their fields");
    let filter = Filter { field, op: Op::Eq, values: ids.iter().map(|id| Scalar::Int(*id)).collect() };
    let fields = resource.fields.iter().filter(|f| !f.on_request).collect();
    let spec =
        ListSpec { filters: vec![filter], order: Vec::new(), fields, limit: ids.len() as i64, offset: 0, count: false };
    Ok(list(master, resource, &spec).await?.items)
}

/// `field = value` on `resource`.
pub fn by(resource: &'static Resource, field: &str, value: Scalar) -> Filter {
    Filter::eq(resource.field(field).expect("resource tables name their fields"), value)
}

/// `connected_to` and `configured_on` come out of Postgres as the worker's
/// name (see `WORKERS`): replaced here by its presence in Redis (a worker is
/// reachable through every master; the answering one is named) and by the
/// builders the configuration gives it.
async fn fill_worker_connections(master: &Master, items: &mut [Value]) -> Result<(), ReadError> {
    let catalog = master.catalog();
    let names: Vec<String> =
        items.iter().filter_map(|item| item.get("connected_to").and_then(Value::as_str).map(str::to_owned)).collect();
    let online: Vec<bool> = if names.is_empty() {
        Vec::new()
    } else {
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.exists(master.namespace.presence_key(name));
        }
        pipe.query_async(&mut master.redis.clone()).await?
    };
    let mut online: HashMap<_, _> = names.into_iter().zip(online).collect();
    for item in items {
        let Value::Object(fields) = item else { continue };
        if let Some(Value::String(name)) = fields.get("connected_to").cloned() {
            let connected = online.remove(&name).unwrap_or(false);
            let masters = if connected { json!([{ "masterid": master.id }]) } else { json!([]) };
            fields.insert("connected_to".into(), masters);
        }
        if let Some(Value::String(name)) = fields.get("configured_on").cloned() {
            let builders: Vec<Value> = catalog
                .builders_for_worker(&name)
                .into_iter()
                .filter_map(|b| catalog.builder_id(b.name.as_str()))
                .map(|id| json!({ "builderid": id, "masterid": master.id }))
                .collect();
            fields.insert("configured_on".into(), Value::Array(builders));
        }
    }
    Ok(())
}
