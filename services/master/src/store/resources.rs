//! The API's resources as SQL. Each Buildbot resource type is a table of
//! fields (the API's name, the SQL expression behind it, its type), and one
//! function lists any of them with filters, order and pagination in one
//! parameterised statement whose rows Postgres already shapes as JSON. The
//! HTTP layer says which resource and which filters; it writes no SQL, and
//! every user value reaches Postgres as a bound parameter.

use serde_json::Value;
use sqlx::{Postgres, QueryBuilder};

use super::{Store, StoreResult};

/// How a field is typed in the API, which decides how filter values are
/// parsed and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Bool,
    /// Epoch seconds in the API, `timestamptz` in SQL.
    Time,
    /// True when the SQL expression is not null (`complete` from
    /// `complete_at`), so `complete=false` is `complete_at is null` and can
    /// use a partial index.
    Present,
    /// A list of strings: filtered with `contains`.
    TextList,
    /// Anything else: served, never filtered or ordered on.
    Json,
}

#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub sql: &'static str,
    pub kind: Kind,
    /// Served only when asked for by name (builds' `properties`).
    pub on_request: bool,
}

const fn field(name: &'static str, sql: &'static str, kind: Kind) -> Field {
    Field { name, sql, kind, on_request: false }
}

#[derive(Debug)]
pub struct Resource {
    /// The collection's name, and the key of the envelope.
    pub plural: &'static str,
    /// `from` clause (and any join) of the listing; empty for resources that
    /// do not live in Postgres (force schedulers, changes).
    pub from: &'static str,
    pub fields: &'static [Field],
    /// Unique SQL key (one or more columns): the default order, and the
    /// last sort key, so pages never overlap.
    pub key: &'static str,
    /// Sets of fields that identify an item. An order whose keys (with the
    /// fields a filter fixes) include one is already total and needs no
    /// tiebreak, which lets Postgres read it straight from an index
    /// (`builderid=3&order=-number` from `builds (builder_id, number)`).
    pub unique: &'static [&'static [&'static str]],
}

impl Resource {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn field_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.fields.iter().map(|f| f.name)
    }
}

/// Whether a master is active: it touches its row every few seconds.
macro_rules! master_is_active {
    ($alias:literal) => {
        concat!("(", $alias, ".last_seen_at > now() - interval '30 seconds')")
    };
}

pub static BUILDERS: Resource = Resource {
    plural: "builders",
    from: "builders b",
    key: "b.id",
    unique: &[&["builderid"], &["name"]],
    fields: &[
        field("builderid", "b.id", Kind::Int),
        field("name", "b.name", Kind::Text),
        field("description", "b.description", Kind::Text),
        field("tags", "b.tags", Kind::TextList),
        field("paused", "b.paused", Kind::Bool),
        field("pause_reason", "b.pause_reason", Kind::Text),
        field(
            "masterids",
            concat!(
                "case when b.configured then to_json(array(select m.id from masters m where ",
                master_is_active!("m"),
                " order by m.id)) else '[]'::json end"
            ),
            Kind::Json,
        ),
    ],
};

pub static BUILDS: Resource = Resource {
    plural: "builds",
    from: "builds b",
    key: "b.id",
    unique: &[&["buildid"], &["builderid", "number"]],
    fields: &[
        field("buildid", "b.id", Kind::Int),
        field("number", "b.number", Kind::Int),
        field("builderid", "b.builder_id", Kind::Int),
        field("buildrequestid", "b.buildrequest_id", Kind::Int),
        field("workerid", "b.worker_id", Kind::Int),
        field("masterid", "b.master_id", Kind::Int),
        field("started_at", "b.started_at", Kind::Time),
        field("complete", "b.complete_at", Kind::Present),
        field("complete_at", "b.complete_at", Kind::Time),
        field("results", "b.results", Kind::Int),
        field("state_string", "b.state_string", Kind::Text),
        Field { name: "properties", sql: "b.properties", kind: Kind::Json, on_request: true },
    ],
};

pub static STEPS: Resource = Resource {
    plural: "steps",
    from: "steps s",
    // Unique, and the order Buildbot lists steps in.
    key: "s.build_id, s.number",
    unique: &[&["stepid"], &["buildid", "number"]],
    fields: &[
        field("stepid", "s.id", Kind::Int),
        field("number", "s.number", Kind::Int),
        field("name", "s.name", Kind::Text),
        field("buildid", "s.build_id", Kind::Int),
        field("started_at", "s.started_at", Kind::Time),
        field("complete", "s.complete_at", Kind::Present),
        field("complete_at", "s.complete_at", Kind::Time),
        field("results", "s.results", Kind::Int),
        field("state_string", "s.state_string", Kind::Text),
        field("urls", "s.urls", Kind::Json),
        field("hidden", "s.hidden", Kind::Bool),
    ],
};

pub static LOGS: Resource = Resource {
    plural: "logs",
    from: "logs l",
    key: "l.id",
    unique: &[&["logid"], &["stepid", "slug"]],
    fields: &[
        field("logid", "l.id", Kind::Int),
        field("name", "l.name", Kind::Text),
        field("slug", "l.slug", Kind::Text),
        field("stepid", "l.step_id", Kind::Int),
        field("complete", "l.complete", Kind::Bool),
        field("num_lines", "l.num_lines", Kind::Int),
        field("type", "l.type::text", Kind::Text),
    ],
};

pub static BUILDREQUESTS: Resource = Resource {
    plural: "buildrequests",
    from: "buildrequests r",
    key: "r.id",
    unique: &[&["buildrequestid"]],
    fields: &[
        field("buildrequestid", "r.id", Kind::Int),
        field("buildsetid", "r.buildset_id", Kind::Int),
        field("builderid", "r.builder_id", Kind::Int),
        field("priority", "r.priority", Kind::Int),
        field("claimed", "(r.state <> 'pending')", Kind::Bool),
        field("claimed_at", "r.claimed_at", Kind::Time),
        field("claimed_by_masterid", "r.claimed_by_master_id", Kind::Int),
        field("complete", "(r.state = 'complete')", Kind::Bool),
        field("complete_at", "r.complete_at", Kind::Time),
        field("results", "r.results", Kind::Int),
        field("submitted_at", "r.submitted_at", Kind::Time),
        field("waited_for", "false", Kind::Bool),
    ],
};

pub static BUILDSETS: Resource = Resource {
    plural: "buildsets",
    from: "buildsets s",
    key: "s.id",
    unique: &[&["bsid"]],
    fields: &[
        field("bsid", "s.id", Kind::Int),
        field("external_idstring", "null::text", Kind::Text),
        field("reason", "s.reason", Kind::Text),
        field("submitted_at", "s.submitted_at", Kind::Time),
        field("complete", "s.complete", Kind::Bool),
        field("complete_at", "s.complete_at", Kind::Time),
        field("results", "s.results", Kind::Int),
        // One source stamp per buildset: what its builds check out.
        field(
            "sourcestamps",
            "json_build_array(json_build_object('ssid', s.id, 'branch', s.properties -> 'branch' ->> 0, \
             'revision', s.properties -> 'revision' ->> 0, \
             'repository', coalesce(s.properties -> 'repository' ->> 0, ''), 'project', '', 'codebase', '', \
             'patch', null, 'created_at', extract(epoch from s.submitted_at)::bigint))",
            Kind::Json,
        ),
        field("parent_buildid", "null::bigint", Kind::Int),
        field("parent_relationship", "null::text", Kind::Text),
    ],
};

/// `connected_to` and `configured_on` come out as the worker's name, which
/// the caller replaces: they come from Redis presence and from the
/// configuration, not from Postgres.
pub static WORKERS: Resource = Resource {
    plural: "workers",
    from: "workers w",
    key: "w.id",
    unique: &[&["workerid"], &["name"]],
    fields: &[
        field("workerid", "w.id", Kind::Int),
        field("name", "w.name", Kind::Text),
        field("workerinfo", "w.info", Kind::Json),
        field("paused", "w.paused", Kind::Bool),
        field("pause_reason", "w.pause_reason", Kind::Text),
        field("graceful", "w.graceful", Kind::Bool),
        field("connected_to", "w.name", Kind::Json),
        field("configured_on", "w.name", Kind::Json),
        field("last_connection", "w.last_seen_at", Kind::Time),
    ],
};

pub static MASTERS: Resource = Resource {
    plural: "masters",
    from: "masters m",
    key: "m.id",
    unique: &[&["masterid"], &["name"]],
    fields: &[
        field("masterid", "m.id", Kind::Int),
        field("name", "m.name", Kind::Text),
        field("active", master_is_active!("m"), Kind::Bool),
        field("last_active", "m.last_seen_at", Kind::Time),
        // Why its last configuration reload was refused; null when applied.
        field("config_error", "m.config_error", Kind::Text),
    ],
};

/// Served from the configuration.
pub static FORCESCHEDULERS: Resource = Resource {
    plural: "forceschedulers",
    from: "",
    key: "",
    unique: &[&["name"]],
    fields: &[
        field("name", "", Kind::Text),
        field("label", "", Kind::Text),
        field("button_name", "", Kind::Text),
        field("builder_names", "", Kind::TextList),
        field("enabled", "", Kind::Bool),
        field("all_fields", "", Kind::Json),
    ],
};

/// What change sources (the GitHub webhook) recorded.
pub static CHANGES: Resource = Resource {
    plural: "changes",
    from: "changes c",
    key: "c.id",
    unique: &[&["changeid"]],
    fields: &[
        field("changeid", "c.id", Kind::Int),
        field("author", "c.author", Kind::Text),
        field("committer", "c.author", Kind::Text),
        field("files", "c.files", Kind::Json),
        field("comments", "c.comments", Kind::Text),
        field("revision", "c.revision", Kind::Text),
        field("when_timestamp", "c.created_at", Kind::Time),
        field("branch", "c.branch", Kind::Text),
        field("category", "c.category", Kind::Text),
        field("revlink", "''", Kind::Text),
        field("properties", "'{}'::jsonb", Kind::Json),
        field("repository", "c.repository", Kind::Text),
        field("project", "''", Kind::Text),
        field("codebase", "''", Kind::Text),
        field(
            "sourcestamp",
            "jsonb_build_object('ssid', null, 'branch', c.branch, 'revision', c.revision, 'repository', c.repository, \
             'project', '', 'codebase', '', 'patch', null, 'created_at', extract(epoch from c.created_at)::bigint)",
            Kind::Json,
        ),
    ],
};

pub static TEST_RESULT_SETS: Resource = Resource {
    plural: "test_result_sets",
    from: "test_result_sets t",
    key: "t.id",
    unique: &[&["test_result_setid"]],
    fields: &[
        field("test_result_setid", "t.id", Kind::Int),
        field("builderid", "t.builder_id", Kind::Int),
        field("buildid", "t.build_id", Kind::Int),
        field("stepid", "t.step_id", Kind::Int),
        field("description", "t.description", Kind::Text),
        field("category", "t.category", Kind::Text),
        field("value_unit", "t.value_unit", Kind::Text),
        field("tests_passed", "t.tests_passed", Kind::Int),
        field("tests_failed", "t.tests_failed", Kind::Int),
        field("tests_skipped", "t.tests_skipped", Kind::Int),
        field("duration_ns", "t.duration_ns", Kind::Int),
        field("complete", "t.complete", Kind::Bool),
    ],
};

pub static TEST_RESULTS: Resource = Resource {
    plural: "test_results",
    from: "test_results r",
    key: "r.id",
    unique: &[&["test_resultid"]],
    fields: &[
        field("test_resultid", "r.id", Kind::Int),
        field("builderid", "r.builder_id", Kind::Int),
        field("test_result_setid", "r.test_result_set_id", Kind::Int),
        field("test_name", "r.test_name", Kind::Text),
        field("test_code_path", "r.test_code_path", Kind::Text),
        field("line", "r.line", Kind::Int),
        field("duration_ns", "r.duration_ns", Kind::Int),
        field("value", "r.value", Kind::Text),
        field("message", "r.message", Kind::Text),
        field("log_line", "r.log_line", Kind::Int),
    ],
};

pub static ARTIFACTS: Resource = Resource {
    plural: "artifacts",
    from: "artifacts a",
    key: "a.id",
    unique: &[&["artifactid"]],
    fields: &[
        field("artifactid", "a.id", Kind::Int),
        field("buildid", "a.build_id", Kind::Int),
        field("stepid", "a.step_id", Kind::Int),
        field("name", "a.name", Kind::Text),
        field("bytes", "a.bytes", Kind::Int),
        field("sha256", "a.sha256", Kind::Text),
        field("created_at", "a.created_at", Kind::Time),
        field("deleted_at", "a.deleted_at", Kind::Time),
    ],
};

pub static RESOURCES: [&Resource; 13] = [
    &BUILDERS,
    &BUILDS,
    &STEPS,
    &LOGS,
    &BUILDREQUESTS,
    &BUILDSETS,
    &WORKERS,
    &MASTERS,
    &FORCESCHEDULERS,
    &CHANGES,
    &TEST_RESULT_SETS,
    &TEST_RESULTS,
    &ARTIFACTS,
];

/// A typed filter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Int(i64),
    Text(String),
    Bool(bool),
    /// Epoch seconds.
    Time(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Contains,
}

/// One condition; several values mean "any of them" for `Eq`/`Contains`
/// and "none of them" for `Ne`.
#[derive(Debug, Clone)]
pub struct Filter {
    pub field: &'static Field,
    pub op: Op,
    pub values: Vec<Scalar>,
}

impl Filter {
    pub fn eq(field: &'static Field, value: Scalar) -> Filter {
        Filter { field, op: Op::Eq, values: vec![value] }
    }
}

/// What a listing asks for, already checked against the resource.
#[derive(Debug, Clone)]
pub struct ListSpec {
    pub filters: Vec<Filter>,
    /// Fields to sort by, descending when true; the resource's key is added
    /// last.
    pub order: Vec<(&'static Field, bool)>,
    /// Fields to serve.
    pub fields: Vec<&'static Field>,
    pub limit: i64,
    pub offset: i64,
    /// Whether `total` must count every match (a client's listing), or may
    /// be the page's length (lookups by id).
    pub count: bool,
}

/// One page of a listing and how many items match in all.
pub struct Page {
    pub items: Vec<Value>,
    pub total: i64,
}

/// The most matches a listing's `total` counts.
pub const COUNT_BOUND: i64 = 1_000_000;

impl Store {
    /// Lists a resource in one statement; counts the matches in a second
    /// one only when the page is full or offset (else the page is the count).
    pub async fn list(&self, resource: &Resource, spec: &ListSpec) -> StoreResult<Page> {
        let mut query = QueryBuilder::<Postgres>::new("select json_build_object(");
        for (i, field) in spec.fields.iter().enumerate() {
            if i > 0 {
                query.push(", ");
            }
            query.push("'").push(field.name).push("', ").push(select_expression(field));
        }
        query.push(") from ").push(resource.from);
        push_where(&mut query, &spec.filters);
        push_order(&mut query, resource, spec);
        query.push(" limit ").push_bind(spec.limit).push(" offset ").push_bind(spec.offset);
        let items: Vec<Value> = query.build_query_scalar().fetch_all(&self.reads).await?;
        let total = if !spec.count || (spec.offset == 0 && (items.len() as i64) < spec.limit) {
            items.len() as i64
        } else {
            // Counted up to a bound, so a page of a huge listing does not
            // cost a count of all of it: a total of COUNT_BOUND means "at
            // least that many".
            let mut count = QueryBuilder::<Postgres>::new("select count(*) from (select 1 from ");
            count.push(resource.from);
            push_where(&mut count, &spec.filters);
            count.push(" limit ").push_bind(COUNT_BOUND).push(") counted");
            count.build_query_scalar().fetch_one(&self.reads).await?
        };
        Ok(Page { items, total })
    }

    /// The plan Postgres chooses for a listing, for tests that check an index
    /// is used.
    pub async fn explain_list(&self, resource: &Resource, spec: &ListSpec) -> StoreResult<String> {
        let mut query = QueryBuilder::<Postgres>::new("explain select ");
        query.push(resource.key).push(" from ").push(resource.from);
        push_where(&mut query, &spec.filters);
        push_order(&mut query, resource, spec);
        query.push(" limit ").push_bind(spec.limit).push(" offset ").push_bind(spec.offset);
        let lines: Vec<String> = query.build_query_scalar().fetch_all(&self.reads).await?;
        Ok(lines.join("\n"))
    }
}

fn select_expression(field: &Field) -> String {
    match field.kind {
        Kind::Time => format!("floor(extract(epoch from {}))::bigint", field.sql),
        Kind::Present => format!("({} is not null)", field.sql),
        _ => field.sql.to_owned(),
    }
}

fn order_expression(field: &Field) -> String {
    match field.kind {
        Kind::Present => format!("({} is not null)", field.sql),
        _ => field.sql.to_owned(),
    }
}

/// The order asked for, then the resource's key unless the order is
/// already total.
fn push_order(query: &mut QueryBuilder<Postgres>, resource: &Resource, spec: &ListSpec) {
    let mut known: Vec<&str> = spec.order.iter().map(|(field, _)| field.name).collect();
    let fixed = spec.filters.iter().filter(|f| f.op == Op::Eq && f.values.len() == 1);
    known.extend(fixed.map(|f| f.field.name));
    let total = resource.unique.iter().any(|key| key.iter().all(|name| known.contains(name)));
    let mut keys: Vec<String> = spec
        .order
        .iter()
        .map(|(field, descending)| format!("{} {}", order_expression(field), if *descending { "desc" } else { "asc" }))
        .collect();
    if !total || keys.is_empty() {
        keys.push(resource.key.to_owned());
    }
    query.push(" order by ").push(keys.join(", "));
}

fn push_where(query: &mut QueryBuilder<Postgres>, filters: &[Filter]) {
    query.push(" where true");
    for filter in filters {
        query.push(" and ");
        push_condition(query, filter);
    }
}

/// One condition, written so that Postgres can use an index where one
/// exists: `x = any($1)` rather than a chain of ors, `x is null` for an
/// absent value.
fn push_condition(query: &mut QueryBuilder<Postgres>, filter: &Filter) {
    let Filter { field, op, values } = filter;
    let sql = field.sql;
    match field.kind {
        Kind::Present | Kind::Bool => {
            let listed = |b: bool| values.contains(&Scalar::Bool(b));
            // Which of true and false pass: `eq` keeps the values listed,
            // `ne` the others.
            let passes = |b: bool| if *op == Op::Ne { !listed(b) } else { listed(b) };
            match (passes(true), passes(false)) {
                (true, true) => {
                    query.push("true");
                }
                (false, false) => {
                    query.push("false");
                }
                (wanted, _) => push_truth(query, field, wanted),
            }
        }
        Kind::TextList => {
            let texts: Vec<String> = values.iter().map(scalar_text).collect();
            query.push(sql).push(" && ").push_bind(texts);
        }
        Kind::Int | Kind::Text | Kind::Time | Kind::Json => {
            let column = sql;
            match op {
                Op::Contains => {
                    let texts: Vec<String> = values.iter().map(scalar_text).collect();
                    query.push("exists (select 1 from unnest(").push_bind(texts).push("::text[]) as n where strpos(");
                    query.push(column).push("::text, n) > 0)");
                }
                Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge if field.kind == Kind::Time => {
                    push_time_condition(query, field, *op, values);
                }
                // One value as `x = $1`, which Postgres can read in index
                // order; several as `x = any($1)`.
                Op::Eq | Op::Ne if values.len() == 1 => {
                    query.push(field.sql);
                    query.push(if *op == Op::Ne { " <> " } else { " = " });
                    push_value(query, field.kind, &values[0]);
                }
                Op::Eq | Op::Ne => {
                    query.push(field.sql);
                    query.push(if *op == Op::Ne { " <> all(" } else { " = any(" });
                    push_values(query, field.kind, values);
                    query.push(")");
                }
                Op::Lt | Op::Le | Op::Gt | Op::Ge => {
                    let symbol = match op {
                        Op::Lt => " < ",
                        Op::Le => " <= ",
                        Op::Gt => " > ",
                        _ => " >= ",
                    };
                    query.push(field.sql);
                    query.push(symbol);
                    push_value(query, field.kind, &values[0]);
                }
            }
        }
    }
}

/// A time condition on whole seconds, as times are served (`started_at`
/// 1700000000 is any instant of that second), written as ranges of the
/// column so that an index on it serves.
fn push_time_condition(query: &mut QueryBuilder<Postgres>, field: &Field, op: Op, values: &[Scalar]) {
    let seconds: Vec<f64> =
        values.iter().filter_map(|v| if let Scalar::Time(t) = v { Some(*t as f64) } else { None }).collect();
    let at = |query: &mut QueryBuilder<Postgres>, second: f64| {
        query.push("to_timestamp(").push_bind(second).push("::float8)");
    };
    let column = field.sql;
    match op {
        Op::Lt | Op::Ge => {
            query.push(column).push(if op == Op::Lt { " < " } else { " >= " });
            at(query, seconds[0]);
        }
        Op::Le | Op::Gt => {
            query.push(column).push(if op == Op::Le { " < " } else { " >= " });
            at(query, seconds[0] + 1.0);
        }
        _ => {
            // Any (or, for `ne`, none) of the listed seconds.
            query.push("floor(extract(epoch from ").push(column).push("))");
            query.push(if op == Op::Ne { " <> all(" } else { " = any(" }).push_bind(seconds).push("::float8[])");
        }
    }
}

/// `field` is true (or false), written as Postgres can match it against a
/// partial index: `x is null`, `not (a <> b)` (which it reads as `a = b`).
fn push_truth(query: &mut QueryBuilder<Postgres>, field: &Field, wanted: bool) {
    match (field.kind, wanted) {
        (Kind::Present, true) => query.push(field.sql).push(" is not null"),
        (Kind::Present, false) => query.push(field.sql).push(" is null"),
        (_, true) => query.push("(").push(field.sql).push(")"),
        (_, false) => query.push("not (").push(field.sql).push(")"),
    };
}

fn push_values(query: &mut QueryBuilder<Postgres>, kind: Kind, values: &[Scalar]) {
    match kind {
        Kind::Int => {
            let ints: Vec<i64> =
                values.iter().filter_map(|v| if let Scalar::Int(i) = v { Some(*i) } else { None }).collect();
            query.push_bind(ints).push("::bigint[]");
        }
        _ => {
            let texts: Vec<String> = values.iter().map(scalar_text).collect();
            query.push_bind(texts).push("::text[]");
        }
    }
}

fn push_value(query: &mut QueryBuilder<Postgres>, kind: Kind, value: &Scalar) {
    match (kind, value) {
        (Kind::Int, Scalar::Int(i)) => {
            query.push_bind(*i).push("::bigint");
        }
        (_, other) => {
            query.push_bind(scalar_text(other)).push("::text");
        }
    }
}

fn scalar_text(value: &Scalar) -> String {
    match value {
        Scalar::Int(i) | Scalar::Time(i) => i.to_string(),
        Scalar::Text(t) => t.clone(),
        Scalar::Bool(b) => b.to_string(),
    }
}
