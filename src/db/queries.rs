//! Operator-defined pooled queries (`[queries.NAME]`): the SQL a route bound with
//! `query = "NAME"` runs, its named parameters and how the request fills them, and how the answer
//! is written. Nothing here is specific to one OMS: the three queries of the reference schema are
//! entries of the annotated `config.toml`, not code.
//!
//! SQL uses named parameters: `$tenant` and `$subject` (the verified identity, never a header the
//! client chose) and the names declared under `params` (a path parameter of the route, or a
//! query-string parameter with a type, a default, bounds and the OMS's own error answer for a bad
//! value). The config check rewrites them to `$1..$n`; a query whose SQL does not use `$tenant` is
//! refused unless `tenant_free = true`, so that tenant isolation holds by construction.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::canonical::ParamType;
use crate::config::Problems;
use crate::routes::{Params, PathPattern};
use crate::sim::query::QueryString;

// === Config file layer ===

/// `[queries.NAME]`: one pooled query.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct QueryFile {
    /// One statement returning zero rows or one row with one `json`, `jsonb` or `text` column,
    /// with named parameters (`$tenant`, `$subject`, the names of `params`). Required.
    pub sql: String,
    /// Declared parameters, in the order they are validated: `NAME = { from = "query" | "path",
    /// type = "text" | "int" | "uuid" | "bool", default, min, max, values, error_status,
    /// error_body }`. Default none.
    pub params: toml::Table,
    /// Allow SQL that does not use `$tenant` (data shared by every tenant). Default false.
    pub tenant_free: bool,
    /// What a NULL or zero rows answer becomes: `"oms"` (the request goes to the OMS) or `"404"`
    /// (a 404 with `empty_body`). Default `"oms"`.
    pub on_empty: String,
    /// Body of the 404 when `on_empty = "404"` (JSON, as the OMS writes it). Default empty.
    pub empty_body: String,
    /// Status of a non-empty answer. Default 200.
    pub status: u16,
    /// Content type of the answers. Default `"application/json"`.
    pub content_type: String,
    /// For `omsgate query-check`: SQL returning sample requests, one per row, with a column
    /// `tenant` and a column per parameter (by name; NULL or absent: not sent). Default empty.
    pub samples: String,
}

impl Default for QueryFile {
    fn default() -> Self {
        QueryFile {
            sql: String::new(),
            params: toml::Table::new(),
            tenant_free: false,
            on_empty: "oms".into(),
            empty_body: String::new(),
            status: 200,
            content_type: "application/json".into(),
            samples: String::new(),
        }
    }
}

/// One entry of `params`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ParamFile {
    /// `"query"` (the query string) or `"path"` (a parameter of the route's path). Default
    /// `"query"`.
    pub from: String,
    /// `"text"`, `"int"` (bigint), `"uuid"` or `"bool"`. Default `"text"`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Value when the request has none (or an empty one); absent: SQL NULL.
    pub default: Option<toml::Value>,
    /// Smallest accepted `int`.
    pub min: Option<i64>,
    /// Largest accepted `int`.
    pub max: Option<i64>,
    /// The accepted `text` values (exact match); empty: any.
    pub values: Vec<String>,
    /// Status of the answer to a bad value. Default 422.
    pub error_status: u16,
    /// Body of the answer to a bad value (JSON, the OMS's own). Default
    /// `{"detail":"invalid NAME"}`.
    pub error_body: String,
}

impl Default for ParamFile {
    fn default() -> Self {
        ParamFile {
            from: "query".into(),
            ty: "text".into(),
            default: None,
            min: None,
            max: None,
            values: vec![],
            error_status: 422,
            error_body: String::new(),
        }
    }
}

// === Typed ===

/// Where a parameter's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The query string (percent-decoded, the last of repeated names).
    Query,
    /// A parameter of the route's path (canonical spelling).
    Path,
}

/// A parameter's SQL type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `text`.
    Text,
    /// `bigint`; in a query string, an optional `-` and decimal digits only.
    Int,
    /// `uuid`, in any spelling `uuid::Uuid::try_parse` takes.
    Uuid,
    /// `boolean`: `true` or `false`.
    Bool,
}

impl Kind {
    fn parse(name: &str) -> Option<Kind> {
        match name {
            "text" => Some(Kind::Text),
            "int" => Some(Kind::Int),
            "uuid" => Some(Kind::Uuid),
            "bool" => Some(Kind::Bool),
            _ => None,
        }
    }

    /// The name in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Int => "int",
            Kind::Uuid => "uuid",
            Kind::Bool => "bool",
        }
    }

    /// The PostgreSQL type the value is sent as.
    pub fn pg_type(self) -> Type {
        match self {
            Kind::Text => Type::TEXT,
            Kind::Int => Type::INT8,
            Kind::Uuid => Type::UUID,
            Kind::Bool => Type::BOOL,
        }
    }
}

/// A bound parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `text`.
    Text(String),
    /// `bigint`.
    Int(i64),
    /// `uuid`.
    Uuid(uuid::Uuid),
    /// `boolean`.
    Bool(bool),
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(s) => s.to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Bool(b) => b.to_sql(ty, out),
            Value::Uuid(u) => {
                out.put_slice(u.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        [Type::TEXT, Type::INT8, Type::UUID, Type::BOOL].contains(ty)
    }

    to_sql_checked!();
}

/// The answer to a bad value, or an empty result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canned {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Bytes,
}

/// A declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Its name (`$name` in SQL, the query-string or path parameter name).
    pub name: String,
    /// Where its value comes from.
    pub source: Source,
    /// Its type.
    pub kind: Kind,
    /// Value when the request has none.
    pub default: Value,
    /// Bounds of an `int`.
    pub min: Option<i64>,
    /// Bounds of an `int`.
    pub max: Option<i64>,
    /// Accepted `text` values (empty: any).
    pub values: Vec<String>,
    /// The answer to a bad value.
    pub error: Canned,
}

/// How a parameter of the rewritten statement is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// The verified tenant (`$tenant`, text).
    Tenant,
    /// The verified subject (`$subject`, text).
    Subject,
    /// The declared parameter at this index of [`Query::params`].
    Param(usize),
}

/// What an empty answer (zero rows or NULL) becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnEmpty {
    /// The request goes to the OMS.
    Oms,
    /// A 404 with this body.
    NotFound(Bytes),
}

/// A checked `[queries.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// The name (config key and metric label).
    pub name: String,
    /// The SQL with `$1..$n` in place of the named parameters.
    pub sql: String,
    /// What fills `$1..$n`, in order.
    pub args: Vec<Arg>,
    /// The SQL type of `$1..$n`, in order.
    pub types: Vec<Type>,
    /// Declared parameters, in validation order.
    pub params: Vec<Param>,
    /// The SQL does not use `$tenant` (allowed by `tenant_free = true`).
    pub tenant_free: bool,
    /// What an empty answer becomes.
    pub on_empty: OnEmpty,
    /// Status of a non-empty answer.
    pub status: u16,
    /// Content type of the answers.
    pub content_type: String,
    /// SQL giving sample requests for `omsgate query-check` (empty: none).
    pub samples: String,
}

/// Every checked query, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queries(BTreeMap<String, Arc<Query>>);

impl Queries {
    /// Checks `[queries]`, recording every problem under its key.
    pub fn from_file(files: &BTreeMap<String, QueryFile>, p: &mut Problems) -> Queries {
        let mut out = BTreeMap::new();
        for (name, f) in files {
            if let Some(q) = Query::from_file(name, f, p) {
                out.insert(name.clone(), Arc::new(q));
            }
        }
        Queries(out)
    }

    /// The query called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Query>> {
        self.0.get(name)
    }

    /// Every query, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Query>> {
        self.0.values()
    }

    /// Whether `name` is configured (even with problems, for messages).
    pub fn names(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

impl Query {
    fn from_file(name: &str, f: &QueryFile, p: &mut Problems) -> Option<Query> {
        let key = format!("queries.{name}");
        let before = p.list().len();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            p.push(&key, format!("query name `{name}` must be [a-z0-9_]+"));
        }
        let mut params = Vec::new();
        for (pname, value) in &f.params {
            let pkey = format!("{key}.params.{pname}");
            let pf: ParamFile = match value.clone().try_into() {
                Ok(pf) => pf,
                Err(e) => {
                    p.push(&pkey, format!("not a parameter table: {e}"));
                    continue;
                }
            };
            if let Some(param) = Param::from_file(pname, &pf, &pkey, p) {
                params.push(param);
            }
        }
        let (sql, names) = match rewrite_named(&f.sql) {
            Ok(r) => r,
            Err(e) => {
                p.push(format!("{key}.sql"), e);
                (String::new(), vec![])
            }
        };
        if f.sql.trim().is_empty() {
            p.push(format!("{key}.sql"), "missing; every query needs its SQL");
        }
        let mut args = Vec::new();
        let mut types = Vec::new();
        for n in &names {
            let arg = match n.as_str() {
                "tenant" => Arg::Tenant,
                "subject" => Arg::Subject,
                _ => match params.iter().position(|pp| pp.name == *n) {
                    Some(i) => Arg::Param(i),
                    None => {
                        let declared: Vec<&str> = f.params.keys().map(String::as_str).collect();
                        p.push(
                            format!("{key}.sql"),
                            format!(
                                "unknown parameter `${n}`: use $tenant, $subject or a name \
                                 declared under {key}.params ({})",
                                if declared.is_empty() {
                                    "none declared".to_string()
                                } else {
                                    declared.join(", ")
                                }
                            ),
                        );
                        continue;
                    }
                },
            };
            types.push(match arg {
                Arg::Tenant | Arg::Subject => Type::TEXT,
                Arg::Param(i) => params[i].kind.pg_type(),
            });
            args.push(arg);
        }
        let uses_tenant = names.iter().any(|n| n == "tenant");
        if !uses_tenant && !f.tenant_free && !f.sql.trim().is_empty() {
            p.push(
                format!("{key}.sql"),
                "does not use $tenant, so it could answer one tenant with another's rows: filter \
                 every table by $tenant, or set tenant_free = true for data every tenant shares",
            );
        }
        let on_empty = match f.on_empty.as_str() {
            "oms" => {
                if !f.empty_body.is_empty() {
                    p.push(
                        format!("{key}.empty_body"),
                        "used only with on_empty = \"404\"",
                    );
                }
                OnEmpty::Oms
            }
            "404" => match serde_json::from_str::<serde_json::Value>(&f.empty_body) {
                Ok(_) => OnEmpty::NotFound(Bytes::from(f.empty_body.clone())),
                Err(e) => {
                    p.push(
                        format!("{key}.empty_body"),
                        format!(
                            "on_empty = \"404\" needs the JSON body of the OMS's 404 \
                             (e.g. '{{\"detail\":\"Not found\"}}'): {e}"
                        ),
                    );
                    OnEmpty::Oms
                }
            },
            other => {
                p.push(
                    format!("{key}.on_empty"),
                    format!("`{other}` is not one of \"oms\", \"404\""),
                );
                OnEmpty::Oms
            }
        };
        if !(100..=599).contains(&f.status) {
            p.push(
                format!("{key}.status"),
                format!("{} is not an HTTP status", f.status),
            );
        }
        if f.content_type.is_empty() || http::HeaderValue::from_str(&f.content_type).is_err() {
            p.push(
                format!("{key}.content_type"),
                format!("`{}` is not a header value", f.content_type),
            );
        }
        if p.list().len() != before {
            return None;
        }
        Some(Query {
            name: name.to_string(),
            sql,
            args,
            types,
            params,
            tenant_free: !uses_tenant,
            on_empty,
            status: f.status,
            content_type: f.content_type.clone(),
            samples: f.samples.clone(),
        })
    }

    /// Whether the SQL uses `$subject`.
    pub fn uses_subject(&self) -> bool {
        self.args.contains(&Arg::Subject)
    }

    /// The statement's values for one request: `Ok(None)` when this query does not answer it
    /// (the OMS does), `Err` with the OMS's answer to a bad value.
    pub fn bind(
        &self,
        tenant: &str,
        subject: Option<&str>,
        path: &Params,
        query_string: Option<&str>,
    ) -> Result<Option<Vec<Value>>, Canned> {
        let q = QueryString::parse(query_string.unwrap_or(""));
        let mut values = Vec::with_capacity(self.params.len());
        for param in &self.params {
            let raw = match param.source {
                Source::Query => q.get(&param.name),
                Source::Path => match path.get(&param.name) {
                    Some(v) => Some(v),
                    None => return Ok(None),
                },
            };
            match param.value(raw) {
                Ok(Some(v)) => values.push(v),
                Ok(None) => return Ok(None),
                Err(()) => return Err(param.error.clone()),
            }
        }
        let mut out = Vec::with_capacity(self.args.len());
        for arg in &self.args {
            out.push(match arg {
                Arg::Tenant => Value::Text(tenant.to_string()),
                Arg::Subject => match subject.filter(|s| !s.is_empty()) {
                    Some(s) => Value::Text(s.to_string()),
                    None => return Ok(None),
                },
                Arg::Param(i) => values[*i].clone(),
            });
        }
        Ok(Some(out))
    }
}

impl Param {
    fn from_file(name: &str, f: &ParamFile, key: &str, p: &mut Problems) -> Option<Param> {
        let before = p.list().len();
        if name == "tenant" || name == "subject" {
            p.push(
                key,
                format!("`${name}` is the verified identity; a parameter cannot take its name"),
            );
        }
        if !is_ident(name) {
            p.push(
                key,
                format!("`{name}` is not a parameter name ([A-Za-z_][A-Za-z0-9_]*)"),
            );
        }
        let source = match f.from.as_str() {
            "query" => Source::Query,
            "path" => Source::Path,
            other => {
                p.push(
                    format!("{key}.from"),
                    format!("`{other}` is not one of \"query\", \"path\""),
                );
                Source::Query
            }
        };
        let kind = Kind::parse(&f.ty).unwrap_or_else(|| {
            p.push(
                format!("{key}.type"),
                format!(
                    "`{}` is not one of \"text\", \"int\", \"uuid\", \"bool\"",
                    f.ty
                ),
            );
            Kind::Text
        });
        if (f.min.is_some() || f.max.is_some()) && kind != Kind::Int {
            p.push(format!("{key}.min"), "min and max bound an \"int\" only");
        }
        if let (Some(lo), Some(hi)) = (f.min, f.max) {
            if lo > hi {
                p.push(format!("{key}.max"), format!("{hi} is below min ({lo})"));
            }
        }
        if !f.values.is_empty() && kind != Kind::Text {
            p.push(format!("{key}.values"), "values lists \"text\" values only");
        }
        if !(100..=599).contains(&f.error_status) {
            p.push(
                format!("{key}.error_status"),
                format!("{} is not an HTTP status", f.error_status),
            );
        }
        let error_body = if f.error_body.is_empty() {
            serde_json::json!({ "detail": format!("invalid {name}") }).to_string()
        } else {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&f.error_body) {
                p.push(format!("{key}.error_body"), format!("not JSON: {e}"));
            }
            f.error_body.clone()
        };
        let mut param = Param {
            name: name.to_string(),
            source,
            kind,
            default: Value::Null,
            min: f.min,
            max: f.max,
            values: f.values.clone(),
            error: Canned {
                status: f.error_status,
                body: Bytes::from(error_body),
            },
        };
        if let Some(d) = &f.default {
            if source == Source::Path {
                p.push(
                    format!("{key}.default"),
                    "a path parameter always has a value",
                );
            }
            let text = match d {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => other.to_string(),
            };
            match param.value(Some(&text)) {
                Ok(Some(v)) if v != Value::Null => param.default = v,
                _ => p.push(
                    format!("{key}.default"),
                    format!("`{d}` is not an accepted {} value", kind.as_str()),
                ),
            }
        }
        (p.list().len() == before).then_some(param)
    }

    /// The value of this parameter for a request's `raw` text: `Ok(None)` when the query does
    /// not answer it (an integer beyond bigint without a bound saying it is wrong), `Err` for a
    /// bad value.
    fn value(&self, raw: Option<&str>) -> Result<Option<Value>, ()> {
        let raw = match raw {
            None | Some("") => return Ok(Some(self.default.clone())),
            Some(r) => r,
        };
        match self.kind {
            Kind::Text => {
                if self.values.is_empty() || self.values.iter().any(|v| v == raw) {
                    Ok(Some(Value::Text(raw.to_string())))
                } else {
                    Err(())
                }
            }
            Kind::Int => {
                let (negative, digits) = match raw.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, raw),
                };
                // A path parameter typed {n:int} arrives canonical; a query-string number is
                // plain decimal digits (as a Python `str.isdigit()` check takes it).
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                match raw.parse::<i64>() {
                    Ok(n) => {
                        if self.min.is_some_and(|lo| n < lo) || self.max.is_some_and(|hi| n > hi) {
                            Err(())
                        } else {
                            Ok(Some(Value::Int(n)))
                        }
                    }
                    // Beyond bigint: wrong if a bound on that side says so, else the OMS's call.
                    Err(_) if negative && self.min.is_some() => Err(()),
                    Err(_) if !negative && self.max.is_some() => Err(()),
                    Err(_) => Ok(None),
                }
            }
            Kind::Uuid => uuid::Uuid::try_parse(raw)
                .map(|u| Some(Value::Uuid(u)))
                .map_err(|_| ()),
            Kind::Bool => match raw {
                "true" => Ok(Some(Value::Bool(true))),
                "false" => Ok(Some(Value::Bool(false))),
                _ => Err(()),
            },
        }
    }
}

/// Prepares every query against the database at `url` (names resolved in `schema`, as the pool
/// resolves them) and returns a problem per query the database refuses (a missing function,
/// table or column, parameter types that fit no function) or whose result is not exactly one
/// `json`, `jsonb` or `text` column. `Err` only when the database cannot be reached.
///
/// With `prepared_statements = false` (a transaction-mode pooler, which may drop the search_path
/// asked for at connect) a schema other than `public` must be on the connection's `search_path`:
/// a problem under `database.schema` when it is not (the queries are then checked as the pool
/// would run them).
pub async fn check_against_database(
    database: &super::DatabaseConfig,
    queries: &Queries,
) -> Result<Vec<crate::config::Problem>, super::DbError> {
    let url = database.require_url()?;
    let schema = database.schema.as_str();
    // Connected as the pool connects: the schema asked for as the search_path at connect.
    let search_path = (schema != "public").then_some(schema);
    let client = super::connect_trusting(url, &database.trust_roots, search_path).await?;
    let mut problems = Vec::new();
    if search_path.is_some() && !database.prepared_statements {
        if let Some(reason) = super::query::search_path_problem(&client, schema).await? {
            problems.push(crate::config::Problem {
                key: "database.schema".into(),
                reason,
            });
        }
    }
    let mut push = |name: &str, reason: String| {
        problems.push(crate::config::Problem {
            key: format!("queries.{name}.sql"),
            reason,
        })
    };
    for q in queries.iter() {
        let statement = match client.prepare_typed(&q.sql, &q.types).await {
            Ok(s) => s,
            Err(e) => {
                let reason = match e.as_db_error() {
                    Some(db) => format!(
                        "the database refuses it: {} (SQLSTATE {}){}",
                        db.message(),
                        db.code().code(),
                        db.hint()
                            .map(|h| format!("; hint: {h}"))
                            .unwrap_or_default()
                    ),
                    None => format!("cannot prepare it: {e}"),
                };
                push(&q.name, reason);
                continue;
            }
        };
        let given: Vec<String> = q.types.iter().map(|t| t.name().to_string()).collect();
        let taken: Vec<String> = statement
            .params()
            .iter()
            .map(|t| t.name().to_string())
            .collect();
        if given != taken {
            push(
                &q.name,
                format!(
                    "the database takes its parameters as ({}), the gateway sends ({})",
                    taken.join(", "),
                    given.join(", ")
                ),
            );
        }
        let columns = statement.columns();
        match columns {
            [one] if super::query::RESULT_TYPES.contains(one.type_()) => {}
            [one] => push(
                &q.name,
                format!(
                    "returns a column `{}` of type {}: a pooled query returns one json, jsonb or \
                     text column (cast it, e.g. `::json`)",
                    one.name(),
                    one.type_().name()
                ),
            ),
            _ => push(
                &q.name,
                format!(
                    "returns {} columns ({}): a pooled query returns one json, jsonb or text \
                     column",
                    columns.len(),
                    columns
                        .iter()
                        .map(|c| format!("{} {}", c.name(), c.type_().name()))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        }
    }
    Ok(problems)
}

/// The `[queries.*]` tables of the annotated `config.toml` (the reference schema's queries over
/// the functions of the bundled migration 0006), as TOML text: `demo --seed-db` and the bench
/// bind routes to them.
pub fn reference_toml() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in include_str!("../../config.toml").lines() {
        if line.starts_with('[') {
            inside = line.starts_with("[queries.");
        }
        if inside && !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The checked [`reference_toml`] queries.
pub fn reference() -> Queries {
    let files: BTreeMap<String, BTreeMap<String, QueryFile>> =
        toml::from_str(&reference_toml()).expect("config.toml's [queries] parse");
    let mut p = Problems::default();
    let q = Queries::from_file(&files["queries"], &mut p);
    debug_assert!(p.is_empty(), "{:?}", p.list());
    q
}

/// Checks a route's `query = "..."` binding: a configured query, a GET route, the path
/// parameters it takes and their types.
pub fn check_binding(
    name: &str,
    queries: &Queries,
    pattern: Option<&PathPattern>,
    methods: &[http::Method],
) -> Result<(), String> {
    let Some(query) = queries.get(name) else {
        let known = queries.names();
        return Err(format!(
            "unknown query `{name}`: define it as [queries.{name}] (defined: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    if methods.is_empty()
        || methods
            .iter()
            .any(|m| m != http::Method::GET && m != http::Method::HEAD)
    {
        return Err(format!(
            "query `{name}` answers reads only: set `methods = [\"GET\"]` on this route (writes \
             always go to the OMS)"
        ));
    }
    if let Some(pattern) = pattern {
        for param in query.params.iter().filter(|p| p.source == Source::Path) {
            let Some(ty) = pattern.param_type(&param.name) else {
                return Err(format!(
                    "query `{name}` needs the path parameter `{{{}}}`, which `{}` lacks",
                    param.name,
                    pattern.as_str()
                ));
            };
            let fits = matches!(
                (ty, param.kind),
                (ParamType::Str, _)
                    | (_, Kind::Text)
                    | (ParamType::Uuid, Kind::Uuid)
                    | (ParamType::Int, Kind::Int)
            );
            if !fits {
                return Err(format!(
                    "query `{name}` takes `{}` as {}, which the route's {ty:?} parameter never is",
                    param.name,
                    param.kind.as_str()
                ));
            }
        }
    }
    Ok(())
}

fn is_ident(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rewrites the named parameters of `sql` (`$name`) to `$1..$n`, numbered in order of first
/// use; returns the rewritten SQL and the names in that order. String literals, quoted
/// identifiers, comments and dollar-quoted bodies are copied untouched; positional `$1` is
/// refused (a query's parameters are named).
pub fn rewrite_named(sql: &str) -> Result<(String, Vec<String>), String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$';
    let copy_until = |i: usize, end: &str| -> Result<usize, String> {
        match sql[i..].find(end) {
            Some(at) => Ok(i + at + end.len()),
            None => Err(format!(
                "unterminated `{}` in the SQL",
                &sql[i..(i + 1).min(sql.len())]
            )),
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' | b'"' => {
                // A quoted literal or identifier; a doubled quote is part of it. `E'..'`
                // strings may also escape with a backslash.
                let escapes = c == b'\''
                    && i > 0
                    && (b[i - 1] == b'E' || b[i - 1] == b'e')
                    && (i < 2 || !ident_char(b[i - 2]));
                let mut j = i + 1;
                loop {
                    match b.get(j) {
                        None => return Err("unterminated quote in the SQL".into()),
                        Some(b'\\') if escapes => j += 2,
                        Some(&q) if q == c => {
                            if b.get(j + 1) == Some(&c) {
                                j += 2;
                            } else {
                                j += 1;
                                break;
                            }
                        }
                        Some(_) => j += 1,
                    }
                }
                out.push_str(&sql[i..j]);
                i = j;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let j = sql[i..].find('\n').map_or(b.len(), |at| i + at);
                out.push_str(&sql[i..j]);
                i = j;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let j = copy_until(i + 2, "*/")?;
                out.push_str(&sql[i..j]);
                i = j;
            }
            b'$' if i > 0 && ident_char(b[i - 1]) => {
                // Part of an identifier (`a$b`).
                out.push('$');
                i += 1;
            }
            b'$' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
                let word = &sql[start..j];
                if b.get(j) == Some(&b'$') && !word.starts_with(|c: char| c.is_ascii_digit()) {
                    // A dollar-quoted body `$tag$ ... $tag$` (or `$$ ... $$`).
                    let tag = &sql[i..=j];
                    let end = copy_until(j + 1, tag)?;
                    out.push_str(&sql[i..end]);
                    i = end;
                } else if word.is_empty() {
                    out.push('$');
                    i += 1;
                } else if word.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(format!(
                        "positional parameter `${word}`: name the parameters ($tenant, $subject, \
                         or a name declared under params)"
                    ));
                } else {
                    let n = match names.iter().position(|n| n == word) {
                        Some(k) => k + 1,
                        None => {
                            names.push(word.to_string());
                            names.len()
                        }
                    };
                    out.push_str(&format!("${n}"));
                    i = j;
                }
            }
            _ => {
                let ch = sql[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    Ok((out, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_toml_defines_the_reference_queries() {
        assert_eq!(
            reference().names(),
            ["invoice_page", "invoice_with_lines", "payment_page"]
        );
    }

    #[test]
    fn named_parameters_become_positional_outside_literals() {
        let (sql, names) = rewrite_named(
            "SELECT f($tenant, $id::uuid, 'a $x '' $y', \"$q\", $tenant) -- $c\n\
             /* $d */ , $body$ $e $body$, E'\\' $f', a$b, $$ $g $$, $limit::int",
        )
        .unwrap();
        assert_eq!(
            sql,
            "SELECT f($1, $2::uuid, 'a $x '' $y', \"$q\", $1) -- $c\n\
             /* $d */ , $body$ $e $body$, E'\\' $f', a$b, $$ $g $$, $3::int"
        );
        assert_eq!(names, ["tenant", "id", "limit"]);
        assert!(rewrite_named("SELECT f($1)")
            .unwrap_err()
            .contains("positional"));
        assert!(rewrite_named("SELECT 'x").is_err());
    }

    fn query(text: &str) -> (Option<Query>, Vec<String>) {
        let f: BTreeMap<String, QueryFile> = toml::from_str(text).unwrap();
        let mut p = Problems::default();
        let q = Queries::from_file(&f, &mut p);
        let first = q.iter().next().map(|q| (**q).clone());
        let problems = p
            .list()
            .iter()
            .map(|p| format!("{}: {}", p.key, p.reason))
            .collect();
        (first, problems)
    }

    #[test]
    fn refusals_name_their_key() {
        let (_, problems) = query(
            r#"
[q]
sql = "SELECT f($id, $nope)"
params = { id = { from = "path", type = "uuid" }, n = { type = "int", min = 5, max = 1, values = ["a"] } }
on_empty = "404"
"#,
        );
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "queries.q.params.n.max",
                "queries.q.params.n.values",
                "queries.q.sql",
                "queries.q.sql",
                "queries.q.empty_body"
            ],
            "{problems:#?}"
        );
        assert!(
            problems[2].contains("unknown parameter `$nope`"),
            "{problems:#?}"
        );
        assert!(
            problems[3].contains("does not use $tenant"),
            "{problems:#?}"
        );
        let (q, problems) = query("[q]\nsql = \"SELECT 1::text\"\ntenant_free = true\n");
        assert!(problems.is_empty(), "{problems:?}");
        assert!(q.unwrap().tenant_free);
    }

    #[test]
    fn values_are_bound_in_declared_order_with_the_omss_errors() {
        let (q, problems) = query(
            r#"
[page]
sql = "SELECT page($tenant, $status, $limit::int, $offset, $subject)"
params.limit = { type = "int", default = 20, min = 1, max = 100, error_body = '{"detail":"limit"}' }
params.offset = { type = "int", default = 0, min = 0, error_body = '{"detail":"offset"}' }
params.status = { values = ["open", "paid"], error_body = '{"detail":"status"}' }
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        let q = q.unwrap();
        let bind = |qs: &str| q.bind("acme", Some("u1"), &Params::default(), Some(qs));
        assert_eq!(
            bind("status=paid&limit=007"),
            Ok(Some(vec![
                Value::Text("acme".into()),
                Value::Text("paid".into()),
                Value::Int(7),
                Value::Int(0),
                Value::Text("u1".into()),
            ]))
        );
        assert_eq!(bind("status=&limit=").unwrap().unwrap()[1], Value::Null);
        let err = |qs: &str| String::from_utf8(bind(qs).unwrap_err().body.to_vec()).unwrap();
        assert_eq!(err("limit=%2B5"), r#"{"detail":"limit"}"#);
        assert_eq!(err("limit=101"), r#"{"detail":"limit"}"#);
        assert_eq!(err("status=x&offset=-1"), r#"{"detail":"offset"}"#);
        assert_eq!(err("status=PAID"), r#"{"detail":"status"}"#);
        assert_eq!(err("limit=99999999999999999999"), r#"{"detail":"limit"}"#);
        // Beyond bigint with no upper bound: the OMS decides.
        assert_eq!(bind("offset=99999999999999999999"), Ok(None));
        // $subject without a verified subject: the OMS decides.
        assert_eq!(q.bind("acme", None, &Params::default(), None), Ok(None));
    }
}
