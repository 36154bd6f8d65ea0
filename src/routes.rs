//! Routes: `[[route]]` entries compiled into a [`Router`] that names every request.
//!
//! A route is a path pattern (`/api/v1/invoices/{id}`), a set of methods, and the per-route
//! policies of each concern (cache, invalidation, compression, rate limit, pooled query, audit).
//! Requests that match no route belong to [`OTHER`] and are still proxied. Route names are the
//! only route labels used in metrics, so label cardinality is bounded by the config.

use http::Method;
use serde::{Deserialize, Serialize};

use crate::config::Problems;

/// Name of the implicit route of requests that match no `[[route]]`.
pub const OTHER: &str = "other";

/// One `[[route]]` entry of `config.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RouteFile {
    /// Bounded label for metrics and audit; unique, `[a-z0-9_]+`. Required.
    pub name: String,
    /// Path pattern: literal segments and `{param}` segments, e.g. `/api/v1/invoices/{id}`;
    /// a last segment `{*rest}` matches any remainder. Required.
    pub path: String,
    /// Methods this route applies to; empty means all. Default empty.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Cache policy (GET/HEAD only); absent means not cached. See `[cache]`.
    #[serde(default)]
    pub cache: Option<crate::cache::RouteCacheFile>,
    /// Resources/tags whose generation a successful (2xx) write through this route bumps, e.g.
    /// `["invoice:{id}", "invoices"]`. Default empty.
    #[serde(default)]
    pub invalidates: Vec<String>,
    /// Per-route compression switch; absent follows `[compression] enabled`.
    #[serde(default)]
    pub compression: Option<bool>,
    /// Names of `[rate_limit.policies.*]` applied to this route. Default empty.
    #[serde(default)]
    pub rate_limit: Vec<String>,
    /// Pooled query path answering this GET route from PostgreSQL (e.g. `"invoice_with_lines"`);
    /// absent means the request always goes to the OMS.
    #[serde(default)]
    pub query: Option<String>,
    /// Per-route audit options; absent uses the `[audit]` defaults.
    #[serde(default)]
    pub audit: Option<crate::audit::RouteAuditFile>,
}

/// One segment of a compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
    Rest(String),
}

/// A compiled path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    text: String,
    segments: Vec<Segment>,
}

impl PathPattern {
    /// Compiles `text`, or says why it is not a pattern.
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("`{text}` must start with `/`"));
        }
        let mut segments = Vec::new();
        let parts: Vec<&str> = text[1..].split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if let Some(rest) = inner.strip_prefix('*') {
                    if i + 1 != parts.len() {
                        return Err(format!("`{text}`: `{{*{rest}}}` must be the last segment"));
                    }
                    segments.push(Segment::Rest(rest.to_string()));
                } else if inner.is_empty()
                    || !inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    return Err(format!("`{text}`: `{{{inner}}}` is not a parameter name"));
                } else {
                    segments.push(Segment::Param(inner.to_string()));
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "`{text}`: a parameter must be a whole segment, like `{{id}}`"
                ));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern {
            text: text.to_string(),
            segments,
        })
    }

    /// The pattern as written in config.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the pattern has a parameter called `name`.
    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(p) | Segment::Rest(p) if p == name))
    }

    /// Matches a request path (without query), returning the captured parameters.
    pub fn matches(&self, path: &str) -> Option<Params> {
        let path = path.strip_prefix('/')?;
        let mut params = Params::default();
        let mut rest = path;
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            if let Segment::Rest(name) = seg {
                params.0.push((name.clone(), rest.to_string()));
                return Some(params);
            }
            let (part, remainder) = match rest.find('/') {
                Some(idx) => (&rest[..idx], Some(&rest[idx + 1..])),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Param(name) if !part.is_empty() => {
                    params.0.push((name.clone(), part.to_string()))
                }
                _ => return None,
            }
            match (last, remainder) {
                (true, None) => return Some(params),
                (true, Some(_)) => return None,
                (false, Some(r)) => rest = r,
                (false, None) => return None,
            }
        }
        None
    }
}

/// Parameters captured from a path, in pattern order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    /// The value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A resource/tag template such as `invoice:{id}`, filled from a route's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
}

impl Template {
    /// Compiles `text` against `pattern`: every `{param}` must be a parameter of the pattern.
    pub fn parse(text: &str, pattern: Option<&PathPattern>) -> Result<Template, String> {
        if text.is_empty() {
            return Err("empty resource name".into());
        }
        let mut rest = text;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .ok_or_else(|| format!("`{text}`: unclosed `{{`"))?;
            let name = &rest[start + 1..start + end];
            match pattern {
                Some(p) if p.has_param(name) => {}
                Some(p) => {
                    return Err(format!(
                        "`{text}` uses `{{{name}}}` but the path `{}` has no such parameter",
                        p.as_str()
                    ))
                }
                None => return Err(format!("`{text}` uses `{{{name}}}` outside a route")),
            }
            rest = &rest[start + end + 1..];
        }
        Ok(Template {
            text: text.to_string(),
        })
    }

    /// Fills the template with `params`.
    pub fn render(&self, params: &Params) -> String {
        let mut out = String::with_capacity(self.text.len() + 16);
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            let end = rest[start..].find('}').unwrap_or(rest.len() - start);
            let name = &rest[start + 1..start + end];
            out.push_str(params.get(name).unwrap_or(""));
            rest = &rest[(start + end + 1).min(rest.len())..];
        }
        out.push_str(rest);
        out
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// A compiled route with every concern's policy.
#[derive(Debug, Clone)]
pub struct Route {
    /// Index in [`Router::routes`]; [`Router::other`] has index `routes.len()`.
    pub id: usize,
    /// Metric/audit label.
    pub name: String,
    /// Path pattern.
    pub pattern: PathPattern,
    /// Methods; empty means all.
    pub methods: Vec<Method>,
    /// Cache policy, when the route is cached.
    pub cache: Option<crate::cache::RoutePolicy>,
    /// Resources/tags invalidated by a successful write.
    pub invalidates: Vec<Template>,
    /// Compression override.
    pub compression: Option<bool>,
    /// Rate-limit policy names (validated against `[rate_limit.policies]`).
    pub rate_limit: Vec<String>,
    /// Pooled query name (validated by the `db` module).
    pub query: Option<String>,
    /// Audit options.
    pub audit: crate::audit::RouteAudit,
}

impl Route {
    fn other(id: usize) -> Route {
        Route {
            id,
            name: OTHER.to_string(),
            pattern: PathPattern {
                text: "/{*rest}".into(),
                segments: vec![],
            },
            methods: vec![],
            cache: None,
            invalidates: vec![],
            compression: None,
            rate_limit: vec![],
            query: None,
            audit: crate::audit::RouteAudit::default(),
        }
    }
}

/// The compiled routes, matched in config order.
#[derive(Debug, Clone)]
pub struct Router {
    /// Routes from config, in order.
    pub routes: Vec<Route>,
    /// The implicit `other` route.
    pub other: Route,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            routes: vec![],
            other: Route::other(0),
        }
    }
}

impl Router {
    /// Compiles `[[route]]` entries, recording every problem.
    pub fn from_file(
        files: &[RouteFile],
        limits: &crate::limit::RateLimitConfig,
        p: &mut Problems,
    ) -> Router {
        let mut routes = Vec::with_capacity(files.len());
        let mut names = std::collections::HashSet::new();
        for (i, f) in files.iter().enumerate() {
            let key = format!("route[{i}]");
            if f.name.is_empty() {
                p.push(format!("{key}.name"), "missing; every route needs a name");
            } else if !f
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                p.push(
                    format!("{key}.name"),
                    format!("`{}` must be [a-z0-9_]+", f.name),
                );
            } else if f.name == OTHER {
                p.push(
                    format!("{key}.name"),
                    "`other` is reserved for unmatched requests",
                );
            }
            // Several entries may share a name only if they are the same path (e.g. split by method).
            names.insert(f.name.clone());
            let pattern = match PathPattern::parse(&f.path) {
                Ok(pt) => Some(pt),
                Err(e) => {
                    p.push(format!("{key}.path"), e);
                    None
                }
            };
            let mut methods = Vec::new();
            for (j, m) in f.methods.iter().enumerate() {
                match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => methods.push(m),
                    Err(_) => p.push(
                        format!("{key}.methods[{j}]"),
                        format!("`{m}` is not an HTTP method"),
                    ),
                }
            }
            let cache = f.cache.as_ref().and_then(|c| {
                crate::cache::RoutePolicy::from_file(
                    c,
                    pattern.as_ref(),
                    &methods,
                    &format!("{key}.cache"),
                    p,
                )
            });
            let mut invalidates = Vec::new();
            for (j, t) in f.invalidates.iter().enumerate() {
                match Template::parse(t, pattern.as_ref()) {
                    Ok(t) => invalidates.push(t),
                    Err(e) => p.push(format!("{key}.invalidates[{j}]"), e),
                }
            }
            for (j, name) in f.rate_limit.iter().enumerate() {
                if !limits.has_policy(name) {
                    p.push(
                        format!("{key}.rate_limit[{j}]"),
                        format!("no policy `{name}` in [rate_limit.policies]"),
                    );
                }
            }
            if let Some(q) = &f.query {
                if let Err(e) = crate::db::check_query_binding(q, pattern.as_ref(), &methods) {
                    p.push(format!("{key}.query"), e);
                }
            }
            let audit =
                crate::audit::RouteAudit::from_file(f.audit.as_ref(), &format!("{key}.audit"), p);
            routes.push(Route {
                id: i,
                name: f.name.clone(),
                pattern: pattern.unwrap_or_else(|| PathPattern {
                    text: f.path.clone(),
                    segments: vec![],
                }),
                methods,
                cache,
                invalidates,
                compression: f.compression,
                rate_limit: f.rate_limit.clone(),
                query: f.query.clone(),
                audit,
            });
        }
        let other = Route::other(routes.len());
        Router { routes, other }
    }

    /// The route of a request and its path parameters; [`Router::other`] when none matches.
    pub fn find(&self, method: &Method, path: &str) -> (&Route, Params) {
        for r in &self.routes {
            if !r.methods.is_empty() && !r.methods.contains(method) {
                continue;
            }
            if let Some(params) = r.pattern.matches(path) {
                return (r, params);
            }
        }
        (&self.other, Params::default())
    }

    /// Every route name, including `other`, in a stable order (for pre-registering metrics).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        v.push(OTHER);
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match() {
        let p = PathPattern::parse("/api/v1/invoices/{id}").unwrap();
        assert_eq!(
            p.matches("/api/v1/invoices/42").unwrap().get("id"),
            Some("42")
        );
        assert!(p.matches("/api/v1/invoices").is_none());
        assert!(p.matches("/api/v1/invoices/42/lines").is_none());
        assert!(p.matches("/api/v1/invoices/").is_none());
        let l = PathPattern::parse("/api/v1/invoices").unwrap();
        assert!(l.matches("/api/v1/invoices").is_some());
        assert!(l.matches("/api/v1/invoices/1").is_none());
        let r = PathPattern::parse("/static/{*rest}").unwrap();
        assert_eq!(
            r.matches("/static/a/b.css").unwrap().get("rest"),
            Some("a/b.css")
        );
        assert!(PathPattern::parse("api").is_err());
        assert!(PathPattern::parse("/a/{x").is_err());
        assert!(PathPattern::parse("/a/{*x}/b").is_err());
    }

    #[test]
    fn templates_render() {
        let p = PathPattern::parse("/api/v1/invoices/{id}").unwrap();
        let t = Template::parse("invoice:{id}", Some(&p)).unwrap();
        assert_eq!(
            t.render(&p.matches("/api/v1/invoices/7").unwrap()),
            "invoice:7"
        );
        assert!(Template::parse("invoice:{nope}", Some(&p)).is_err());
    }
}
