//! The per-response decision (encode, decode or leave) and the header changes that go with it.

use std::sync::Arc;

use http::header::{
    HeaderValue, ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE,
    CONTENT_TYPE, ETAG, IF_NONE_MATCH, TRANSFER_ENCODING, VARY,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

use crate::config::Config;

use super::*;

// === Per-response decision ===

/// What the request side decided for one request; the module applies it to the response.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The configuration the request runs on.
    pub config: Arc<Config>,
    /// Whether compression is on for the route (its switch, else `[compression] enabled`).
    pub enabled: bool,
    /// The algorithm and level negotiated with the client, if any.
    pub encode: Option<(Algorithm, u32)>,
    /// What the client accepts.
    pub accepts: Accepts,
    /// A `HEAD` request: the response gets the header fields a `GET` would get (RFC 9110
    /// §9.3.2), and there is no body to transform.
    pub head: bool,
    /// Strong forms added to the upstream `If-None-Match` for weak tags (`W/"x"` → `"x"`): a
    /// 304 carrying one of them gets it weakened back, so it matches what the client holds.
    pub weak_validators: Vec<String>,
}

impl Plan {
    /// The gzip level a response the cache may store is stored at (`store_level`), or `None`
    /// when it is stored as the origin sent it (compression off for the route, gzip not
    /// configured). The same for `HEAD` as for `GET`: the cache fills a `HEAD` miss with a `GET`
    /// and serves the entry to both.
    pub(super) fn store_level(&self) -> Option<u32> {
        self.config.compression.store_level.filter(|_| self.enabled)
    }
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it as it is.
    Leave,
    /// Encode the body.
    Encode(Algorithm, u32),
    /// Decode a gzip or br body for a client that does not accept it.
    Decode,
}

/// The decision for one response: the action, and whether it depends on `Accept-Encoding`
/// (then `Vary: Accept-Encoding` is added even when this client gets the body as it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What to do with the body.
    pub action: Action,
    /// Whether the response varies by `Accept-Encoding`.
    pub vary: bool,
}

impl Decision {
    pub(super) const LEAVE: Decision = Decision {
        action: Action::Leave,
        vary: false,
    };
}

/// Decides what to do with a final (non-1xx) response; `end` means it has no body. For `HEAD`
/// the decision is the one for `GET` (pass `end = false`): the module then applies only its
/// header changes.
///
/// Left alone: 204, 304, 206 or `Content-Range`, `Cache-Control: no-transform`,
/// bodies under `min_size` (known from `Content-Length`), types outside `content_types`, and
/// bodies already carrying a `Content-Encoding` the client accepts (or one the gateway cannot
/// decode). Identity bodies are encoded when compression is on for the route and the client
/// accepts a configured algorithm.
pub fn decide(plan: &Plan, resp: &ResponseHeader, end: bool) -> Decision {
    let status = resp.status.as_u16();
    if end || matches!(status, 204 | 206 | 304) {
        return Decision::LEAVE;
    }
    if resp.headers.contains_key(CONTENT_RANGE) || no_transform(resp) {
        return Decision::LEAVE;
    }
    match content_coding(resp) {
        Coding::Identity => {}
        Coding::Known(a) => {
            let decodable = matches!(a, Algorithm::Gzip | Algorithm::Brotli);
            let action = if !plan.accepts.accepts(a) && decodable {
                Action::Decode
            } else {
                Action::Leave
            };
            return Decision {
                action,
                vary: decodable,
            };
        }
        Coding::Other => return Decision::LEAVE,
    }
    let config = &plan.config.compression;
    let big_enough = match content_length(resp) {
        Some(n) => n >= config.min_size,
        None => true,
    };
    let type_ok = resp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| config.compresses_type(t));
    if !(plan.enabled && big_enough && type_ok) {
        return Decision::LEAVE;
    }
    Decision {
        action: match plan.encode {
            Some((a, level)) => Action::Encode(a, level),
            None => Action::Leave,
        },
        vary: true,
    }
}

pub(super) enum Coding {
    Identity,
    Known(Algorithm),
    Other,
}

pub(super) fn content_coding(resp: &ResponseHeader) -> Coding {
    let mut values = resp.headers.get_all(CONTENT_ENCODING).iter();
    let Some(first) = values.next() else {
        return Coding::Identity;
    };
    if values.next().is_some() {
        return Coding::Other;
    }
    let Ok(text) = first.to_str() else {
        return Coding::Other;
    };
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("identity") {
        return Coding::Identity;
    }
    // Several codings (`gzip, br`) are never undone here.
    match Algorithm::from_token(text) {
        Some(a) => Coding::Known(a),
        None => Coding::Other,
    }
}

pub(super) fn content_length(resp: &ResponseHeader) -> Option<u64> {
    resp.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

pub(super) fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(CACHE_CONTROL).iter().any(|v| {
        v.as_bytes().split(|b| *b == b',').any(|d| {
            let name = d.split(|b| *b == b'=').next().unwrap_or(d);
            name.trim_ascii().eq_ignore_ascii_case(b"no-transform")
        })
    })
}

/// Whether the module would decode a stored response with this header for this request and
/// send it identity: a 200 in gzip for a client that does not accept gzip, with nothing to
/// encode it in instead. The cache then sends the decoded copy it keeps next to an L1 entry
/// (`cache::serve_decoded`), with [`decoded_headers`], and the module leaves it alone.
pub fn wants_decoded(session: &mut Session, resp: &ResponseHeader) -> bool {
    let Some(plan) = session
        .downstream_modules_ctx
        .get_mut::<Compression>()
        .and_then(|m| m.plan.as_ref())
    else {
        return false;
    };
    plan.encode.is_none()
        && resp.status.as_u16() == 200
        && matches!(content_coding(resp), Coding::Known(Algorithm::Gzip))
        && decide(plan, resp, false).action == Action::Decode
}

/// Whether the module will decode a response with this header for this request (its coding is
/// one the client does not accept). Byte ranges of such a response would be ranges of the
/// encoded body, which the client cannot decode, so the cache serves it whole instead.
pub fn decodes_for_client(session: &mut Session, resp: &ResponseHeader) -> bool {
    // Only a coded body is decoded (the common identity hit stops here).
    resp.headers.contains_key(CONTENT_ENCODING)
        && session
            .downstream_modules_ctx
            .get_mut::<Compression>()
            .and_then(|m| m.plan.as_ref())
            .is_some_and(|plan| decide(plan, resp, false).action == Action::Decode)
}

/// The header of a stored gzip response the cache sends decoded: what the module's decoder
/// leaves (no `Content-Encoding` or `Accept-Ranges`, a weak `ETag`, `Vary: Accept-Encoding`),
/// with the decoded length as `Content-Length` instead of chunked framing.
pub fn decoded_headers(resp: &mut ResponseHeader, len: usize) {
    resp.remove_header(&CONTENT_ENCODING);
    resp.remove_header(&ACCEPT_RANGES);
    resp.remove_header(&TRANSFER_ENCODING);
    let _ = resp.insert_header(CONTENT_LENGTH, len.to_string());
    weaken_etag(resp);
    add_vary(resp);
}

/// Adds `Accept-Encoding` to `Vary`, merged into one field value with what is there; nothing
/// when it is listed already or `Vary: *`.
pub fn add_vary(resp: &mut ResponseHeader) {
    let existing: Vec<&[u8]> = resp
        .headers
        .get_all(VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .collect();
    if existing
        .iter()
        .any(|t| *t == b"*" || t.eq_ignore_ascii_case(b"accept-encoding"))
    {
        return;
    }
    let mut merged = existing.join(&b", "[..]);
    if !merged.is_empty() {
        merged.extend_from_slice(b", ");
    }
    merged.extend_from_slice(b"Accept-Encoding");
    if let Ok(v) = HeaderValue::from_bytes(&merged) {
        let _ = resp.insert_header(VARY, v);
    }
}

/// Weakens a strong `ETag` (`"x"` → `W/"x"`): the encoded body is a different representation,
/// but `If-None-Match` (weak comparison) still matches it. A malformed tag is removed.
pub fn weaken_etag(resp: &mut ResponseHeader) {
    let Some(tag) = resp.headers.get(ETAG) else {
        return;
    };
    let bytes = tag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let weak = if bytes.starts_with(b"\"") {
        HeaderValue::from_bytes(&[b"W/", bytes].concat()).ok()
    } else {
        None
    };
    match weak {
        Some(v) => {
            let _ = resp.insert_header(ETAG, v);
        }
        None => {
            resp.remove_header(&ETAG);
        }
    }
}

/// The entity tags of an `If-None-Match` value as `(weak, "opaque")` pairs; `*` yields nothing.
pub(super) fn entity_tags(value: &[u8]) -> Vec<(bool, &[u8])> {
    let mut tags = Vec::new();
    let mut i = 0;
    while i < value.len() {
        if matches!(value[i], b' ' | b'\t' | b',') {
            i += 1;
            continue;
        }
        let weak = value[i..].starts_with(b"W/");
        let start = if weak { i + 2 } else { i };
        // `*` or a malformed tag: stop here.
        if value.get(start) != Some(&b'"') {
            break;
        }
        let Some(len) = value[start + 1..].iter().position(|b| *b == b'"') else {
            break;
        };
        let end = start + len + 2;
        tags.push((weak, &value[start..end]));
        i = end;
    }
    tags
}

/// Adds the strong form of every weak tag in `If-None-Match` (`W/"x"` → `W/"x", "x"`), and
/// returns the strong forms added. `If-None-Match` compares weakly, so this changes nothing for
/// an origin that follows RFC 9110; an origin that compares strings as they are still answers
/// 304 to a client holding the tag the gateway weakened.
pub(super) fn normalize_if_none_match(req: &mut RequestHeader) -> Vec<String> {
    let Some(value) = req.headers.get(IF_NONE_MATCH) else {
        return Vec::new();
    };
    let tags = entity_tags(value.as_bytes());
    let mut added = Vec::new();
    for (weak, opaque) in &tags {
        if *weak && !tags.iter().any(|(w, o)| !w && o == opaque) {
            added.push(String::from_utf8_lossy(opaque).into_owned());
        }
    }
    if !added.is_empty() {
        let mut v = value.as_bytes().to_vec();
        for tag in &added {
            v.extend_from_slice(b", ");
            v.extend_from_slice(tag.as_bytes());
        }
        if let Ok(v) = HeaderValue::from_bytes(&v) {
            let _ = req.insert_header(IF_NONE_MATCH, v);
        }
    }
    added
}

/// Sets the headers of an encoded response.
pub(super) fn encode_headers(resp: &mut ResponseHeader, algorithm: Algorithm) {
    let _ = resp.insert_header(CONTENT_ENCODING, algorithm.as_str());
    // The length is not known until the last chunk; the body is sent chunked.
    resp.remove_header(&CONTENT_LENGTH);
    // Byte ranges of the identity body do not apply to the encoded one.
    resp.remove_header(&ACCEPT_RANGES);
    let _ = resp.insert_header(TRANSFER_ENCODING, "chunked");
    weaken_etag(resp);
}
