//! Reading the tenant and subject out of verified claims: a dotted path into nested objects
//! (`app_metadata.tenant_id`), and only strings or integers count as an id.

use serde_json::{Map, Value};

/// What a claim path held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A non-empty string, or an integer as its decimal string.
    Id(String),
    /// Nothing at that path (or an empty string, or `null`).
    Absent,
    /// Something that is not an id: a float, a boolean, an object, a list.
    NotAnId,
}

/// The value at `path` (segments separated by `.`) in `claims`. A claim whose own name contains a
/// dot is found too: the whole path is tried as one name first.
pub fn lookup(claims: &Map<String, Value>, path: &str) -> Claim {
    let value = match claims.get(path) {
        Some(v) => Some(v),
        None => {
            let mut segments = path.split('.');
            let first = segments.next().unwrap_or_default();
            segments
                .try_fold(claims.get(first), |v, seg| {
                    Some(v.and_then(|v| v.as_object()).and_then(|m| m.get(seg)))
                })
                .flatten()
        }
    };
    match value {
        None | Some(Value::Null) => Claim::Absent,
        Some(Value::String(s)) if s.is_empty() => Claim::Absent,
        Some(Value::String(s)) => Claim::Id(s.clone()),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Claim::Id(n.to_string()),
        Some(_) => Claim::NotAnId,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_strings_and_integers() {
        let claims = serde_json::json!({
            "sub": "alice",
            "app_metadata": { "tenant_id": 42, "org": { "name": "acme" }, "ratio": 1.5 },
            "flat.dotted": "yes",
            "empty": "",
            "list": ["a"],
        });
        let m = claims.as_object().unwrap();
        assert_eq!(lookup(m, "sub"), Claim::Id("alice".into()));
        assert_eq!(lookup(m, "app_metadata.tenant_id"), Claim::Id("42".into()));
        assert_eq!(lookup(m, "app_metadata.org.name"), Claim::Id("acme".into()));
        assert_eq!(lookup(m, "flat.dotted"), Claim::Id("yes".into()));
        assert_eq!(lookup(m, "app_metadata.ratio"), Claim::NotAnId);
        assert_eq!(lookup(m, "app_metadata.org"), Claim::NotAnId);
        assert_eq!(lookup(m, "list"), Claim::NotAnId);
        assert_eq!(lookup(m, "empty"), Claim::Absent);
        assert_eq!(lookup(m, "app_metadata.missing"), Claim::Absent);
        assert_eq!(lookup(m, "sub.deeper"), Claim::Absent);
        assert_eq!(lookup(m, "nothing"), Claim::Absent);
    }
}
