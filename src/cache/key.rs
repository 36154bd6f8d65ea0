//! Cache keys and generation keys.
//!
//! A primary cache key frames each component with its length, so that no two different requests
//! can produce the same bytes: format version, route, method (`HEAD` shares `GET`'s entry, as
//! Pingora fetches a full `GET` for both), canonical path and query (`crate::canonical`), scope
//! and its identity, and the generation numbers of the epoch, the scope's namespace and every
//! resource/tag of the route. `Vary` request-header values are added by Pingora as a secondary
//! (variance) key.
//!
//! Generation keys live in Redis (or in memory) as `{prefix}gen:{NAMESPACE}` (everything of a
//! namespace) and `{prefix}gen:{NAMESPACE}:{resource}`, where the namespace is the
//! percent-encoded tenant, or `*` for public entries, written inside braces: it is the Redis
//! Cluster hash tag, so that every generation of a namespace (and the sequence that numbers
//! them, [`seq_key`]) lives in one slot and one invalidation script can bump them together,
//! while different tenants spread over the slots. The global epoch has its own tag, `{!}` (`!`
//! is escaped in namespaces, so no tenant shares it).

use super::config::Scope;
use crate::identity::Identity;

/// Format version of the primary key; bump it when the layout changes.
const KEY_VERSION: &[u8] = b"omsgate-cache-v1";

/// Namespace of generations of publicly scoped entries.
pub const PUBLIC_NAMESPACE: &str = "*";

/// The identity part of a key: who may share an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeId {
    /// The scope.
    pub scope: Scope,
    /// Verified tenant (tenant and subject scopes; the subject scope when there is one).
    pub tenant: Option<String>,
    /// Verified subject (subject scope only).
    pub subject: Option<String>,
}

impl ScopeId {
    /// The scope identity of a request, or `None` when it lacks the verified identity its scope
    /// needs (the request then bypasses the cache).
    pub fn of(scope: Scope, id: &Identity) -> Option<ScopeId> {
        let non_empty = |v: &Option<String>| v.as_ref().filter(|s| !s.is_empty()).cloned();
        match scope {
            Scope::Public => Some(ScopeId {
                scope,
                tenant: None,
                subject: None,
            }),
            Scope::Tenant => Some(ScopeId {
                scope,
                tenant: Some(non_empty(&id.tenant)?),
                subject: None,
            }),
            Scope::Subject => Some(ScopeId {
                scope,
                tenant: non_empty(&id.tenant),
                subject: Some(non_empty(&id.subject)?),
            }),
        }
    }

    /// The generation namespace: the tenant, or [`PUBLIC_NAMESPACE`] without one.
    pub fn namespace(&self) -> String {
        match &self.tenant {
            Some(t) => escape(t),
            None => PUBLIC_NAMESPACE.to_string(),
        }
    }

    /// A short printable tag naming the scope and identity, stored with each entry and compared
    /// on every hit (a second line of defence behind the key).
    pub fn tag(&self) -> String {
        let mut out = String::from(self.scope.as_str());
        for part in [&self.tenant, &self.subject] {
            out.push(':');
            if let Some(v) = part {
                out.push_str(&escape(v));
            }
        }
        out
    }
}

/// Builds the primary key bytes.
pub fn primary(
    route: &str,
    path: &str,
    query: Option<&str>,
    scope: &ScopeId,
    generations: &[u64],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + path.len() + query.map_or(0, str::len));
    frame(&mut out, KEY_VERSION);
    frame(&mut out, route.as_bytes());
    frame(&mut out, b"GET");
    frame(&mut out, path.as_bytes());
    frame(&mut out, normalise_query(query.unwrap_or("")).as_bytes());
    frame(&mut out, scope.scope.as_str().as_bytes());
    for part in [&scope.tenant, &scope.subject] {
        match part {
            Some(v) => {
                out.push(1);
                frame(&mut out, v.as_bytes());
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&(generations.len() as u32).to_le_bytes());
    for g in generations {
        out.extend_from_slice(&g.to_le_bytes());
    }
    out
}

fn frame(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_le_bytes());
    out.extend_from_slice(part);
}

/// The query as the OMS reads it ([`crate::canonical::query`]): names and values decoded, a
/// repeated name's last value, sorted by name, in one spelling. `?b=2&a=1&&a=0`, `?a=0&b=2` and
/// `?%61=0&b=%32` share an entry; `?limit=5&%6cimit=1` shares the entry of `?limit=1`.
pub fn normalise_query(query: &str) -> String {
    crate::canonical::query(query)
}

/// Percent-encodes everything but `[A-Za-z0-9_.-]`, so a namespace never contains `:` or `*`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Hash tag of the global epoch.
pub const EPOCH_TAG: &str = "!";

/// Redis key of the global epoch (bumped by a purge of everything).
pub fn epoch_key(prefix: &str) -> String {
    format!("{prefix}epoch:{{{EPOCH_TAG}}}")
}

/// Redis key of the generation of a whole namespace.
pub fn namespace_key(prefix: &str, namespace: &str) -> String {
    format!("{prefix}gen:{{{namespace}}}")
}

/// Redis key of the generation of one resource/tag in a namespace.
pub fn resource_key(prefix: &str, namespace: &str, resource: &str) -> String {
    format!("{prefix}gen:{{{namespace}}}:{resource}")
}

/// Redis key of the sequence numbering the generations of hash tag `tag` (a namespace, or
/// [`EPOCH_TAG`]): one per tag, so that a bump touches one slot.
pub fn seq_key(prefix: &str, tag: &str) -> String {
    format!("{prefix}genseq:{{{tag}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(t: Option<&str>, s: Option<&str>) -> Identity {
        Identity {
            tenant: t.map(String::from),
            subject: s.map(String::from),
        }
    }

    #[test]
    fn scope_needs_verified_identity() {
        assert!(ScopeId::of(Scope::Tenant, &id(None, Some("u"))).is_none());
        assert!(ScopeId::of(Scope::Tenant, &id(Some(""), None)).is_none());
        assert!(ScopeId::of(Scope::Subject, &id(Some("t"), None)).is_none());
        assert!(ScopeId::of(Scope::Public, &id(None, None)).is_some());
        let s = ScopeId::of(Scope::Tenant, &id(Some("acme"), Some("u1"))).unwrap();
        assert_eq!(s.subject, None, "tenant scope ignores the subject");
        assert_eq!(s.namespace(), "acme");
        assert_eq!(
            ScopeId::of(Scope::Public, &id(Some("acme"), None))
                .unwrap()
                .namespace(),
            PUBLIC_NAMESPACE
        );
    }

    #[test]
    fn keys_differ_by_every_component() {
        let a = ScopeId::of(Scope::Tenant, &id(Some("a"), None)).unwrap();
        let b = ScopeId::of(Scope::Tenant, &id(Some("b"), None)).unwrap();
        let base = primary("r", "/x", Some("q=1"), &a, &[1, 2]);
        assert_ne!(base, primary("r2", "/x", Some("q=1"), &a, &[1, 2]));
        assert_ne!(base, primary("r", "/y", Some("q=1"), &a, &[1, 2]));
        assert_ne!(base, primary("r", "/x", Some("q=2"), &a, &[1, 2]));
        assert_ne!(base, primary("r", "/x", Some("q=1"), &b, &[1, 2]));
        assert_ne!(base, primary("r", "/x", Some("q=1"), &a, &[1, 3]));
        assert_eq!(base, primary("r", "/x", Some("q=1"), &a, &[1, 2]));
        // Framing: moving a boundary never yields the same bytes.
        let ab = ScopeId::of(Scope::Subject, &id(Some("a"), Some("bc"))).unwrap();
        let abc = ScopeId::of(Scope::Subject, &id(Some("ab"), Some("c"))).unwrap();
        assert_ne!(
            primary("r", "/x", None, &ab, &[]),
            primary("r", "/x", None, &abc, &[])
        );
        assert_ne!(ab.tag(), abc.tag());
        // A tenant-scoped and a subject-scoped key of the same tenant never meet.
        let s = ScopeId::of(Scope::Subject, &id(Some("a"), Some("u"))).unwrap();
        assert_ne!(base, primary("r", "/x", Some("q=1"), &s, &[1, 2]));
    }

    #[test]
    fn queries_are_normalised() {
        assert_eq!(normalise_query("b=2&a=1&&a=0"), "a=0&b=2");
        assert_eq!(normalise_query(""), "");
        assert_eq!(normalise_query("x"), "x=");
        let a = ScopeId::of(Scope::Tenant, &id(Some("a"), None)).unwrap();
        assert_eq!(
            primary("r", "/x", Some("limit=5&%6cimit=1"), &a, &[]),
            primary("r", "/x", Some("limit=1"), &a, &[]),
            "the OMS takes the last value of a decoded name"
        );
        assert_ne!(
            primary("r", "/x", Some("limit=5"), &a, &[]),
            primary("r", "/x", Some("limit=1"), &a, &[])
        );
    }

    #[test]
    fn namespaces_are_escaped() {
        assert_eq!(escape("acme-1.eu_x"), "acme-1.eu_x");
        assert_eq!(escape("a:b*c%"), "a%3Ab%2Ac%25");
        assert_eq!(
            resource_key("p:", "a%3Ab", "invoice:1"),
            "p:gen:{a%3Ab}:invoice:1"
        );
    }

    #[test]
    fn generations_of_a_namespace_share_a_hash_tag() {
        use crate::redis_topology::hash_tag;
        assert_eq!(hash_tag(&namespace_key("p:", "acme")), Some("acme"));
        assert_eq!(hash_tag(&resource_key("p:", "acme", "x:{1}")), Some("acme"));
        assert_eq!(hash_tag(&seq_key("p:", "acme")), Some("acme"));
        assert_eq!(hash_tag(&epoch_key("p:")), Some(EPOCH_TAG));
        assert_eq!(hash_tag(&seq_key("p:", EPOCH_TAG)), Some(EPOCH_TAG));
        assert_eq!(hash_tag(&namespace_key("p:", PUBLIC_NAMESPACE)), Some("*"));
        assert_ne!(escape("!"), EPOCH_TAG);
    }
}
