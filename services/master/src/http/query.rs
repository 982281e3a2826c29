//! Buildbot's query parameters for listings, checked against a resource's
//! fields: `field=`, `order=` (`-` for descending), `limit`, `offset`,
//! `property=`, and filters `{field}={value}` or
//! `{field}__{eq|ne|lt|le|gt|ge|contains|in|notin}={value}`. A parameter
//! that means nothing here is a 400 that names it, so a typo never silently
//! widens a query.

use crate::store::resources::{Field, Filter, Kind, ListSpec, Op, Resource, Scalar};

use super::{ApiError, ApiResult, parse_bool};

/// The deepest page a listing serves: a deeper one costs Postgres a scan of
/// every item before it. Filters on an ordered field reach anything.
pub const MAX_OFFSET: i64 = 100_000;

/// The most items one page holds; also the page size when no `limit` is
/// given, and `meta.total` says how many match in all.
pub const MAX_PAGE: i64 = 10_000;

/// A parsed query: the listing, and which properties were asked for
/// (`None`: none; an empty list: all, from `property=*`).
pub struct Parsed {
    pub spec: ListSpec,
    pub properties: Option<Vec<String>>,
}

/// Parses `query` for a listing of `resource`. `scope` are the filters the
/// path implies (`builders/3/builds` is `builderid=3`).
pub fn parse(resource: &'static Resource, query: &[(String, String)], scope: Vec<Filter>) -> ApiResult<Parsed> {
    // The path's own filters stay as they are: a client filter is added
    // beside them, never merged into them (`builders/3/builds?builderid=4`
    // is empty, not builders 3 and 4).
    let scoped = scope.len();
    let mut filters = scope;
    let mut order = Vec::new();
    let mut fields: Vec<&'static Field> = Vec::new();
    let mut properties: Option<Vec<String>> = None;
    let mut limit = None;
    let mut offset = 0;
    for (name, value) in query {
        match name.as_str() {
            "field" => {
                for wanted in value.split(',').filter(|w| !w.is_empty()) {
                    let field = known_field(resource, wanted, "field")?;
                    if !fields.iter().any(|f| std::ptr::eq(*f, field)) {
                        fields.push(field);
                    }
                }
            }
            "order" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (descending, key) = match key.strip_prefix('-') {
                        Some(rest) => (true, rest),
                        None => (false, key),
                    };
                    let field = known_field(resource, key, "order")?;
                    if matches!(field.kind, Kind::Json | Kind::TextList) {
                        return Err(ApiError::BadRequest(format!("cannot order by `{key}`")));
                    }
                    order.push((field, descending));
                }
            }
            "limit" => {
                let wanted: i64 = parse_number(name, value)?;
                if !(0..=MAX_PAGE).contains(&wanted) {
                    return Err(ApiError::BadRequest(format!(
                        "limit must be between 0 and {MAX_PAGE}; page with offset for more"
                    )));
                }
                limit = Some(wanted);
            }
            "offset" => {
                offset = parse_number(name, value)?;
                if !(0..=MAX_OFFSET).contains(&offset) {
                    return Err(ApiError::BadRequest(format!(
                        "offset must be between 0 and {MAX_OFFSET}; to go further, filter (e.g. `number__lt=`) \
                         and order instead"
                    )));
                }
            }
            "property" if resource.fields.iter().any(|f| f.on_request) => {
                let asked = properties.get_or_insert_with(Vec::new);
                if value != "*" {
                    asked.push(value.clone());
                } else {
                    asked.clear();
                    asked.push("*".into());
                }
            }
            _ => add_filter(resource, &mut filters, scoped, name, value)?,
        }
    }
    if fields.is_empty() {
        fields = resource.fields.iter().filter(|f| !f.on_request).collect();
    }
    if properties.is_some()
        && let Some(field) = resource.fields.iter().find(|f| f.on_request)
        && !fields.iter().any(|f| std::ptr::eq(*f, field))
    {
        fields.push(field);
    }
    let properties = properties.map(|asked| if asked.iter().any(|p| p == "*") { Vec::new() } else { asked });
    let spec = ListSpec { filters, order, fields, limit: limit.unwrap_or(MAX_PAGE), offset, count: true };
    Ok(Parsed { spec, properties })
}

fn known_field(resource: &'static Resource, name: &str, parameter: &str) -> ApiResult<&'static Field> {
    resource.field(name).ok_or_else(|| {
        let known: Vec<&str> = resource.field_names().collect();
        ApiError::BadRequest(format!(
            "unknown field `{name}` in `{parameter}` for {} (fields: {})",
            resource.plural,
            known.join(", ")
        ))
    })
}

fn parse_number(name: &str, value: &str) -> ApiResult<i64> {
    value.parse().map_err(|_| ApiError::BadRequest(format!("`{name}={value}` is not a whole number")))
}

/// Adds `{field}[__{op}]={value}`, merging repeated `eq`/`ne`/`in`/`notin`
/// of one field into one condition, as Buildbot does
/// (`builderid=1&builderid=2` is either builder).
fn add_filter(
    resource: &'static Resource,
    filters: &mut Vec<Filter>,
    scoped: usize,
    name: &str,
    value: &str,
) -> ApiResult<()> {
    let (field_name, op_name) = name.split_once("__").unwrap_or((name, "eq"));
    let Some(field) = resource.field(field_name) else {
        let mut known: Vec<String> = ["field", "order", "limit", "offset"].iter().map(|s| (*s).to_owned()).collect();
        if resource.fields.iter().any(|f| f.on_request) {
            known.push("property".into());
        }
        known.extend(resource.fields.iter().filter(|f| f.kind != Kind::Json).map(|f| format!("{}[__op]", f.name)));
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter `{name}` for {} (known: {})",
            resource.plural,
            known.join(", ")
        )));
    };
    let (op, many) = match op_name {
        "eq" => (Op::Eq, false),
        "ne" => (Op::Ne, false),
        "lt" => (Op::Lt, false),
        "le" => (Op::Le, false),
        "gt" => (Op::Gt, false),
        "ge" => (Op::Ge, false),
        "contains" => (Op::Contains, false),
        "in" => (Op::Eq, true),
        "notin" => (Op::Ne, true),
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown operator `{other}` in `{name}` (use eq, ne, lt, le, gt, ge, contains, in, notin)"
            )));
        }
    };
    let allowed = match field.kind {
        Kind::Json => false,
        Kind::Bool | Kind::Present => matches!(op, Op::Eq | Op::Ne),
        Kind::TextList => op == Op::Contains,
        Kind::Int | Kind::Time => op != Op::Contains,
        Kind::Text => true,
    };
    if !allowed {
        return Err(ApiError::BadRequest(format!(
            "`{name}`: field `{field_name}` cannot be filtered with `{op_name}`"
        )));
    }
    let texts: Vec<&str> = if many { value.split(',').collect() } else { vec![value] };
    let values = texts.iter().map(|text| typed_value(field, name, text)).collect::<ApiResult<Vec<_>>>()?;
    let merges = matches!(op, Op::Eq | Op::Ne | Op::Contains);
    match filters[scoped..].iter_mut().find(|f| merges && std::ptr::eq(f.field, field) && f.op == op) {
        Some(existing) => existing.values.extend(values),
        None => filters.push(Filter { field, op, values }),
    }
    Ok(())
}

/// Times Postgres can hold, in epoch seconds (years 1 to 9999).
const TIMES: std::ops::RangeInclusive<f64> = -62_135_596_800.0..=253_402_300_799.0;

fn typed_value(field: &Field, name: &str, text: &str) -> ApiResult<Scalar> {
    if text.contains('\0') {
        return Err(ApiError::BadRequest(format!("`{name}` holds a NUL character")));
    }
    Ok(match field.kind {
        Kind::Int => Scalar::Int(parse_number(name, text)?),
        Kind::Time => {
            let seconds: f64 = text
                .parse()
                .ok()
                .filter(|seconds| TIMES.contains(seconds))
                .ok_or_else(|| ApiError::BadRequest(format!("`{name}={text}` is not a time in epoch seconds")))?;
            Scalar::Time(seconds.floor() as i64)
        }
        Kind::Bool | Kind::Present => Scalar::Bool(parse_bool(name, text)?),
        Kind::Text | Kind::TextList | Kind::Json => Scalar::Text(text.to_owned()),
    })
}

/// Applies a parsed listing to items that do not live in Postgres (force
/// schedulers), with the same meaning as the SQL the store writes.
pub fn apply_in_memory(items: Vec<serde_json::Value>, spec: &ListSpec) -> (Vec<serde_json::Value>, i64) {
    use serde_json::Value;
    use std::cmp::Ordering;

    fn compare(a: &Value, b: &Value) -> Ordering {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => {
                x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(Ordering::Equal)
            }
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ => Ordering::Equal,
        }
    }
    fn scalar(value: &Scalar) -> Value {
        match value {
            Scalar::Int(i) | Scalar::Time(i) => Value::from(*i),
            Scalar::Text(t) => Value::from(t.clone()),
            Scalar::Bool(b) => Value::from(*b),
        }
    }
    fn matches(item: &Value, filter: &Filter) -> bool {
        let actual = item.get(filter.field.name).unwrap_or(&Value::Null);
        let mut wanted = filter.values.iter().map(scalar);
        match filter.op {
            Op::Eq => wanted.any(|w| actual == &w),
            Op::Ne => wanted.all(|w| actual != &w),
            Op::Lt => wanted.all(|w| !actual.is_null() && compare(actual, &w) == Ordering::Less),
            Op::Le => wanted.all(|w| !actual.is_null() && compare(actual, &w) != Ordering::Greater),
            Op::Gt => wanted.all(|w| !actual.is_null() && compare(actual, &w) == Ordering::Greater),
            Op::Ge => wanted.all(|w| !actual.is_null() && compare(actual, &w) != Ordering::Less),
            Op::Contains => wanted.any(|w| match (actual, w.as_str()) {
                (Value::Array(list), Some(text)) => list.iter().any(|x| x.as_str() == Some(text)),
                (Value::String(s), Some(text)) => s.contains(text),
                _ => false,
            }),
        }
    }
    let mut kept: Vec<Value> = items.into_iter().filter(|item| spec.filters.iter().all(|f| matches(item, f))).collect();
    kept.sort_by(|a, b| {
        spec.order
            .iter()
            .map(|(field, descending)| {
                let ordering =
                    compare(a.get(field.name).unwrap_or(&Value::Null), b.get(field.name).unwrap_or(&Value::Null));
                if *descending { ordering.reverse() } else { ordering }
            })
            .find(|o| *o != Ordering::Equal)
            .unwrap_or(Ordering::Equal)
    });
    let total = kept.len() as i64;
    let page = kept
        .into_iter()
        .skip(spec.offset as usize)
        .take(spec.limit as usize)
        .map(|item| {
            let Value::Object(map) = item else { return item };
            Value::Object(map.into_iter().filter(|(key, _)| spec.fields.iter().any(|f| f.name == key)).collect())
        })
        .collect();
    (page, total)
}
