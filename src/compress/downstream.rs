//! The downstream module ([`Compression`]) that applies a request's [`Plan`] to its response.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::ETAG;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module, ModuleBuilder};
use pingora::protocols::http::compression::ResponseCompressionCtx;
use pingora::{Error, ErrorType};

use super::*;

// === The downstream module ===

pub(super) enum Body {
    /// No decision yet (before the final response header).
    Undecided,
    /// Sent as it is.
    Untouched,
    /// Encoded chunk by chunk.
    Encode(Box<Encoder>),
    /// Decoded chunk by chunk by Pingora's decoder.
    Decode(Box<ResponseCompressionCtx>),
}

/// The per-request downstream module: applies the request's [`Plan`] to the response.
pub struct Compression {
    pub(super) plan: Option<Plan>,
    pub(super) body: Body,
    /// The gzip level to store with, when the cache may store this response.
    pub(super) store_level: Option<u32>,
    /// The encoder of a response being stored compressed.
    pub(super) store: Option<Box<Encoder>>,
}

impl Compression {
    /// Sets the plan; called from `request_filter`.
    pub fn set_plan(&mut self, plan: Plan) {
        self.plan = Some(plan);
    }

    fn header(&mut self, resp: &mut ResponseHeader, end: bool) {
        if !matches!(self.body, Body::Undecided) {
            return;
        }
        let Some(plan) = &self.plan else {
            self.body = Body::Untouched;
            return;
        };
        if resp.status.is_informational() {
            if resp.status.as_u16() == 101 {
                self.body = Body::Untouched;
            }
            // Other 1xx: wait for the final response header.
            return;
        }
        if resp.status.as_u16() == 304 {
            revalidated(plan, resp);
            self.body = Body::Untouched;
            return;
        }
        // A HEAD response has no body, but it carries the header fields a GET would get.
        let decision = decide(plan, resp, end && !plan.head);
        if decision.vary {
            add_vary(resp);
        }
        if plan.head {
            head_headers(resp, decision.action);
            self.body = Body::Untouched;
            return;
        }
        self.body = match decision.action {
            Action::Leave => Body::Untouched,
            Action::Encode(a, level) => {
                match plan
                    .config
                    .compression
                    .encoder(a, level, content_length(resp))
                {
                    Ok(e) => {
                        encode_headers(resp, a);
                        Body::Encode(Box::new(e))
                    }
                    Err(e) => {
                        tracing::warn!(algorithm = a.as_str(), error = %e, "Creating the encoder failed; sending the body as it is.");
                        Body::Untouched
                    }
                }
            }
            Action::Decode => {
                // Pingora's ctx with compression off and decompression on decodes any gzip or
                // br body, since its list of accepted codings stays empty; it also drops
                // Content-Encoding/Content-Length and weakens the ETag.
                let mut ctx = ResponseCompressionCtx::new(0, true, false);
                ctx.response_header_filter(resp, end);
                Body::Decode(Box::new(ctx))
            }
        };
    }
}

/// The header changes of `action` without its body: for `HEAD`, exactly those a `GET` gets.
fn head_headers(resp: &mut ResponseHeader, action: Action) {
    match action {
        Action::Leave => {}
        Action::Encode(a, _) => encode_headers(resp, a),
        Action::Decode => {
            // The decoder's own header changes, as for the GET below.
            ResponseCompressionCtx::new(0, true, false).response_header_filter(resp, false);
        }
    }
}

/// A 304 for a client that holds a tag the gateway weakened carries the weak form again, and
/// the `Vary` the full response would carry.
pub(super) fn revalidated(plan: &Plan, resp: &mut ResponseHeader) {
    let Some(tag) = resp.headers.get(ETAG) else {
        return;
    };
    if plan
        .weak_validators
        .iter()
        .any(|w| w.as_bytes() == tag.as_bytes())
    {
        weaken_etag(resp);
        add_vary(resp);
    }
}

#[async_trait]
impl HttpModule for Compression {
    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        self.header(resp, end_of_stream);
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> pingora::Result<()> {
        match &mut self.body {
            Body::Encode(e) => {
                let input = body.take().unwrap_or_default();
                let out = e.encode_bytes(input, end_of_stream).map_err(|err| {
                    Error::because(ErrorType::InternalError, "encoding the response body", err)
                })?;
                *body = (!out.is_empty() || end_of_stream).then_some(out);
            }
            Body::Decode(ctx) => {
                if let Some(out) = ctx.response_body_filter(body.as_ref(), end_of_stream) {
                    *body = Some(out);
                }
            }
            Body::Undecided | Body::Untouched => {}
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> pingora::Result<Option<Bytes>> {
        // A body served from the cache ends with a `Done` task rather than a last chunk.
        match &mut self.body {
            Body::Encode(e) if !e.is_finished() => {
                let out = e.encode(&[], true).map_err(|err| {
                    Error::because(ErrorType::InternalError, "encoding the response body", err)
                })?;
                Ok(Some(out))
            }
            Body::Decode(ctx) => Ok(ctx.response_body_filter(None, true)),
            _ => Ok(None),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

struct CompressionBuilder;

impl HttpModuleBuilder for CompressionBuilder {
    fn init(&self) -> Module {
        Box::new(Compression {
            plan: None,
            body: Body::Undecided,
            store_level: None,
            store: None,
        })
    }

    fn order(&self) -> i16 {
        // Late, like Pingora's own compression module: after modules that rewrite the body.
        i16::MIN / 2
    }
}

/// The builder of [`Compression`], for `ProxyHttp::init_downstream_modules`.
pub fn module() -> ModuleBuilder {
    Box::new(CompressionBuilder)
}
