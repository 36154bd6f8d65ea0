//! The phase hooks `proxy.rs` calls: negotiation, and responses stored compressed by the cache.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use crate::config::Config;
use crate::routes::Route;

use super::*;

// === Phase hooks ===

/// `request_filter`: negotiates the coding for this request and gives the plan to the module.
pub fn request_filter(session: &mut Session, config: &Arc<Config>, route: &Route) {
    let req = session.req_header();
    let accepts = Accepts::parse(req.headers.get_all(ACCEPT_ENCODING));
    let head = req.method == http::Method::HEAD;
    let settings = &config.compression;
    let enabled = route.compression.unwrap_or(settings.enabled);
    let encode = if enabled {
        accepts.choose(&settings.algorithms)
    } else {
        None
    };
    let plan = Plan {
        config: config.clone(),
        enabled,
        encode,
        accepts,
        head,
        weak_validators: Vec::new(),
    };
    if let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() {
        module.set_plan(plan);
    }
}

/// `upstream_request_filter`: appends the strong form of weak tags to `If-None-Match` (whether
/// the client or the cache revalidating an entry sent them; see [`Plan::weak_validators`]).
///
/// For a request whose response the cache may store, the origin is asked for the same coding
/// whatever this client accepts: `Accept-Encoding: gzip` when compression is on for the route
/// and gzip is configured (the response is then stored gzip-compressed once, see
/// [`upstream_response_filter`]), none otherwise. The cache must therefore not vary its entries
/// on `Accept-Encoding`: the module adapts every stored entry to each client.
pub fn upstream_request_filter(session: &mut Session, upstream_request: &mut RequestHeader) {
    let weak_validators = normalize_if_none_match(upstream_request);
    let cacheable = session.cache.enabled();
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return;
    };
    let Some(plan) = module.plan.as_mut() else {
        return;
    };
    plan.weak_validators = weak_validators;
    if !cacheable {
        return;
    }
    match plan.store_level() {
        Some(level) => {
            let _ = upstream_request.insert_header(ACCEPT_ENCODING, "gzip");
            module.store_level = Some(level);
        }
        None => {
            upstream_request.remove_header(&ACCEPT_ENCODING);
        }
    }
}

/// `upstream_response_filter`, first: an origin response whose `Content-Length` is at most
/// `whole_body_max` is compressed (or decoded) whole when it is compressed at all, live or for
/// storing, so its body reaches the client in one piece after the origin's last byte. The
/// client's HTTP/1.x session then holds the (chunked) header back until that piece and sends it
/// with the compressed length (vendored Pingora patch 0007); a HEAD's header, which cannot know
/// that length, is sent without framing rather than with the chunked framing the GET no longer
/// gets. A response left as it is keeps its own `Content-Length`, which neither touches.
pub fn send_whole_bodies_with_length(session: &mut Session, resp: &ResponseHeader) {
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return;
    };
    let Some(plan) = module.plan.as_ref() else {
        return;
    };
    // Nothing can change this body's length: compression off for the route, no storing
    // compressed, no coding to undo.
    let may_change = plan.enabled
        || module.store_level.is_some()
        || resp.headers.contains_key(http::header::CONTENT_ENCODING);
    let compression = &plan.config.compression;
    // `whole_body_max = 0` streams everything (an empty body is whole either way).
    if may_change
        && compression.whole_body_max > 0
        && !resp.status.is_informational()
        && compression.takes_whole(content_length(resp))
    {
        session.as_mut().set_length_when_whole(true);
    }
}

/// `upstream_response_filter`: a response the cache may store is gzip-encoded here, before the
/// cache sees it, when it qualifies by the same rules as for a client ([`decide`]); a 304 that
/// revalidates a stored entry gets its `ETag` weakened like the entry's.
pub fn upstream_response_filter(session: &mut Session, resp: &mut ResponseHeader) {
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return;
    };
    let (Some(level), Some(plan)) = (module.store_level, module.plan.as_ref()) else {
        return;
    };
    if resp.status.is_informational() {
        return;
    }
    if resp.status.as_u16() == 304 {
        weaken_etag(resp);
        return;
    }
    let store_plan = Plan {
        accepts: Accepts::only(Algorithm::Gzip),
        encode: Some((Algorithm::Gzip, level)),
        ..plan.clone()
    };
    if decide(&store_plan, resp, false).action != Action::Encode(Algorithm::Gzip, level) {
        return;
    }
    let length = content_length(resp);
    match plan
        .config
        .compression
        .encoder(Algorithm::Gzip, level, length)
    {
        Ok(e) => {
            encode_headers(resp, Algorithm::Gzip);
            module.store = Some(Box::new(e));
        }
        Err(e) => {
            tracing::warn!(error = %e, "Creating the encoder failed; storing the body as it is.")
        }
    }
}

/// For a response the gateway produced itself and the cache is about to store (pooled query
/// path): the whole body gzip-encoded as [`upstream_request_filter`],
/// [`upstream_response_filter`] and [`upstream_response_body_filter`] would have stored an
/// origin's identity answer, with the header changed to match. Unchanged when compression is off
/// for the route, gzip is not configured, or the response does not qualify.
pub fn encode_for_store(
    session: &mut Session,
    resp: &mut ResponseHeader,
    body: Bytes,
) -> pingora::Result<Bytes> {
    let Some(module) = session.downstream_modules_ctx.get_mut::<Compression>() else {
        return Ok(body);
    };
    let Some(plan) = module.plan.as_ref() else {
        return Ok(body);
    };
    // As `upstream_request_filter` decides for an origin response.
    match plan.store_level() {
        Some(level) => module.store_level = Some(level),
        None => return Ok(body),
    }
    upstream_response_filter(session, resp);
    let mut body = Some(body);
    upstream_response_body_filter(session, &mut body, true)?;
    if let Some(m) = session.downstream_modules_ctx.get_mut::<Compression>() {
        if m.store.take().is_some() {
            // The header said identity with a length; the stored form is the encoded body.
            let len = body.as_ref().map_or(0, |b| b.len());
            resp.remove_header(&TRANSFER_ENCODING);
            let _ = resp.insert_header(CONTENT_LENGTH, len.to_string());
        }
    }
    Ok(body.unwrap_or_default())
}

/// `upstream_response_body_filter`: encodes the body of a response being stored compressed.
pub fn upstream_response_body_filter(
    session: &mut Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
) -> pingora::Result<()> {
    let Some(encoder) = session
        .downstream_modules_ctx
        .get_mut::<Compression>()
        .and_then(|m| m.store.as_mut())
    else {
        return Ok(());
    };
    let out = encoder
        .encode_bytes(body.take().unwrap_or_default(), end_of_stream)
        .map_err(|e| Error::because(ErrorType::InternalError, "encoding the response body", e))?;
    *body = (!out.is_empty() || end_of_stream).then_some(out);
    Ok(())
}
