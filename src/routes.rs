//! Routes: `[[route]]` entries compiled into a [`Router`] that names every request.
//!
//! A route is a path pattern (`/api/v1/invoices/{id}`), a set of methods, and the per-route
//! policies of each concern (cache, invalidation, compression, rate limit, pooled query, audit).
//! Requests that match no route belong to [`OTHER`] and are still proxied. Route names are the
//! only route labels used in metrics, so label cardinality is bounded by the config.
//!
//! Patterns match canonical paths ([`crate::canonical::path`]). A parameter may have a type
//! (`{id:uuid}`, `{n:int}`; `{s}` is a string): a typed value is captured in its canonical
//! spelling ([`ParamType::canonical`]), so cache keys, resource names, pooled queries and audit
//! all see one spelling of an id, and a value that does not parse matches no route of that shape
//! ([`Resolved::BadParam`], answered 404).

use http::Method;
use serde::{Deserialize, Serialize};

use crate::canonical::{self, ParamType};
use crate::config::Problems;

/// Name of the implicit route of requests that match no `[[route]]`.
pub const OTHER: &str = "other";

/// One `[[route]]` entry of `config.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RouteFile {
    /// Bounded label for metrics and audit; unique, `[a-z0-9_]+`. Required.
    pub name: String,
    /// Path pattern: literal segments (in canonical spelling) and `{param}` segments, e.g.
    /// `/api/v1/invoices/{id:uuid}`; a parameter may be typed `{name:uuid}`, `{name:int}` or
    /// `{name}` (a string); a last segment `{*rest}` matches any remainder. Required.
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
    Param(String, ParamType),
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
                } else {
                    let (name, ty) = match inner.split_once(':') {
                        Some((name, ty)) => match ParamType::parse(ty) {
                            Some(t) => (name, t),
                            None => {
                                return Err(format!(
                                    "`{text}`: `{ty}` is not a parameter type (known: uuid, \
                                     int, str)"
                                ))
                            }
                        },
                        None => (inner, ParamType::Str),
                    };
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(format!("`{text}`: `{{{inner}}}` is not a parameter name"));
                    }
                    segments.push(Segment::Param(name.to_string(), ty));
                }
            } else if part.contains('{') || part.contains('}') {
                return Err(format!(
                    "`{text}`: a parameter must be a whole segment, like `{{id}}`"
                ));
            } else {
                // Requests are matched in canonical form; a literal in any other spelling
                // would never match.
                let canonical = canonical::decode_segment(part)
                    .ok()
                    .filter(|d| d != "." && d != "..")
                    .map(|d| canonical::encode_segment(&d));
                if canonical.as_deref() != Some(*part) {
                    return Err(match canonical {
                        Some(c) => format!(
                            "`{text}`: segment `{part}` is matched in canonical form; write `{c}`"
                        ),
                        None => format!("`{text}`: `{part}` is not a valid path segment"),
                    });
                }
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
            .any(|s| matches!(s, Segment::Param(p, _) | Segment::Rest(p) if p == name))
    }

    /// The type of parameter `name`, if the pattern has it (`{*rest}` is a string).
    pub fn param_type(&self, name: &str) -> Option<ParamType> {
        self.segments.iter().find_map(|s| match s {
            Segment::Param(p, t) if p == name => Some(*t),
            Segment::Rest(p) if p == name => Some(ParamType::Str),
            _ => None,
        })
    }

    /// Matches a canonical request path (without query), returning the captured parameters in
    /// canonical spelling; `None` when it does not match, or a typed parameter does not parse.
    pub fn matches(&self, path: &str) -> Option<Params> {
        match self.match_typed(path) {
            Match::Yes(params) => Some(params),
            Match::No | Match::BadParam(_) => None,
        }
    }

    /// Matches a canonical request path, telling a path of another shape apart from one whose
    /// typed parameter does not parse.
    fn match_typed(&self, path: &str) -> Match {
        let Some(path) = path.strip_prefix('/') else {
            return Match::No;
        };
        let mut params = Params::default();
        let mut bad = None;
        let mut rest = path;
        for (i, seg) in self.segments.iter().enumerate() {
            let last = i + 1 == self.segments.len();
            if let Segment::Rest(name) = seg {
                params.0.push((name.clone(), rest.to_string()));
                return match bad {
                    Some(name) => Match::BadParam(name),
                    None => Match::Yes(params),
                };
            }
            let (part, remainder) = match rest.find('/') {
                Some(idx) => (&rest[..idx], Some(&rest[idx + 1..])),
                None => (rest, None),
            };
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Param(name, ty) if !part.is_empty() => match ty.canonical(part) {
                    Some(value) => params.0.push((name.clone(), value)),
                    None => bad = bad.or_else(|| Some(name.clone())),
                },
                _ => return Match::No,
            }
            match (last, remainder) {
                (true, None) => {
                    return match bad {
                        Some(name) => Match::BadParam(name),
                        None => Match::Yes(params),
                    }
                }
                (false, Some(r)) => rest = r,
                _ => return Match::No,
            }
        }
        Match::No
    }

    /// The canonical path of a request this pattern matched: the pattern with `params` (their
    /// canonical spellings) in place of its parameters.
    pub fn render(&self, params: &Params) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for seg in &self.segments {
            out.push('/');
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Param(name, _) | Segment::Rest(name) => {
                    out.push_str(params.get(name).unwrap_or(""))
                }
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        out
    }
}

/// The outcome of matching one pattern.
enum Match {
    No,
    Yes(Params),
    /// The shape matched but this typed parameter does not parse.
    BadParam(String),
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
    /// Pooled query name (a `[queries.NAME]`, checked by `Config::from_file`).
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

/// The outcome of [`Router::resolve`].
#[derive(Debug)]
pub enum Resolved<'a> {
    /// A route (or [`Router::other`]) with its canonical parameters and canonical path.
    Route {
        /// The route.
        route: &'a Route,
        /// Its parameters, typed ones in canonical spelling.
        params: Params,
        /// The canonical path with those parameters: what the OMS receives.
        path: String,
    },
    /// The path has the shape of `route`, but typed parameter `param` does not parse.
    BadParam {
        /// The route whose shape matched (names the request in metrics and audit).
        route: &'a Route,
        /// The parameter that did not parse.
        param: String,
    },
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

    /// The route of a request and its path parameters; [`Router::other`] when none matches
    /// (including a path whose typed parameter does not parse; see [`Router::resolve`]).
    pub fn find(&self, method: &Method, path: &str) -> (&Route, Params) {
        match self.resolve(method, path) {
            Resolved::Route { route, params, .. } => (route, params),
            Resolved::BadParam { .. } => (&self.other, Params::default()),
        }
    }

    /// Resolves a canonical path ([`crate::canonical::path`]): the first route (in config
    /// order) whose methods and pattern match, with its parameters and the canonical path
    /// rebuilt from them (typed parameters in their canonical spelling). When no route
    /// matches but one of the method's routes has the path's shape with a typed parameter that
    /// does not parse, that is [`Resolved::BadParam`] (the request is answered 404).
    pub fn resolve(&self, method: &Method, path: &str) -> Resolved<'_> {
        let mut bad = None;
        for r in &self.routes {
            if !r.methods.is_empty() && !r.methods.contains(method) {
                continue;
            }
            match r.pattern.match_typed(path) {
                Match::Yes(params) => {
                    let path = r.pattern.render(&params);
                    return Resolved::Route {
                        route: r,
                        params,
                        path,
                    };
                }
                Match::BadParam(param) => {
                    bad = bad.or(Some((r, param)));
                }
                Match::No => {}
            }
        }
        match bad {
            Some((route, param)) => Resolved::BadParam { route, param },
            None => Resolved::Route {
                route: &self.other,
                params: Params::default(),
                path: path.to_string(),
            },
        }
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
    fn typed_parameters_are_canonical_or_refused() {
        let p = PathPattern::parse("/api/v1/invoices/{id:uuid}/lines/{n:int}").unwrap();
        let lower = "0b9d6f8a-3c1e-4f5a-9b7d-2e4c6a8f0b1d";
        let m = p
            .matches("/api/v1/invoices/0B9D6F8A3C1E4F5A9B7D2E4C6A8F0B1D/lines/007")
            .unwrap();
        assert_eq!(m.get("id"), Some(lower));
        assert_eq!(m.get("n"), Some("7"));
        assert_eq!(
            p.render(&m),
            format!("/api/v1/invoices/{lower}/lines/7"),
            "the canonical path carries the canonical parameters"
        );
        assert!(p.matches("/api/v1/invoices/42/lines/1").is_none());
        assert!(p
            .matches(&format!("/api/v1/invoices/{lower}/lines/x"))
            .is_none());
        assert_eq!(p.param_type("id"), Some(ParamType::Uuid));
        assert_eq!(p.param_type("n"), Some(ParamType::Int));
        assert!(PathPattern::parse("/a/{id:date}")
            .unwrap_err()
            .contains("not a parameter type"));
        assert!(PathPattern::parse("/a/{:uuid}").is_err());
        let typed = PathPattern::parse("/a/{s:str}").unwrap();
        assert_eq!(typed.param_type("s"), Some(ParamType::Str));
    }

    #[test]
    fn literals_must_be_canonical() {
        assert!(PathPattern::parse("/api/v1/%69nvoices")
            .unwrap_err()
            .contains("write `invoices`"));
        assert!(PathPattern::parse("/a/../b").is_err());
        assert!(PathPattern::parse("/a/%2Fb").is_err());
        assert!(PathPattern::parse("/a b").unwrap_err().contains("%20"));
        assert!(PathPattern::parse("/a/%C3%A9/").is_ok());
    }

    #[test]
    fn a_bad_typed_value_is_told_apart_from_no_match() {
        let files = [
            RouteFile {
                name: "invoice".into(),
                path: "/api/v1/invoices/{id:uuid}".into(),
                methods: vec!["GET".into()],
                ..Default::default()
            },
            RouteFile {
                name: "summary".into(),
                path: "/api/v1/invoices/summary".into(),
                ..Default::default()
            },
        ];
        let mut p = Problems::default();
        let router = Router::from_file(&files, &Default::default(), &mut p);
        assert!(p.is_empty(), "{:?}", p.list());
        let get = Method::GET;
        match router.resolve(&get, "/api/v1/invoices/summary") {
            Resolved::Route { route, .. } => assert_eq!(route.name, "summary"),
            other => panic!("{other:?}"),
        }
        match router.resolve(&get, "/api/v1/invoices/nope") {
            Resolved::BadParam { route, param } => {
                assert_eq!((route.name.as_str(), param.as_str()), ("invoice", "id"))
            }
            other => panic!("{other:?}"),
        }
        // Only the method's routes count: a DELETE of the same path is simply unmatched.
        match router.resolve(&Method::DELETE, "/api/v1/invoices/nope") {
            Resolved::Route { route, path, .. } => {
                assert_eq!(
                    (route.name.as_str(), path.as_str()),
                    (OTHER, "/api/v1/invoices/nope")
                )
            }
            other => panic!("{other:?}"),
        }
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
