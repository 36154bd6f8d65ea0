//! Response compression (DESIGN.md capability 4): `Accept-Encoding` negotiated per request,
//! bodies encoded chunk by chunk as they stream, codings a client did not ask for decoded, and
//! cacheable responses stored compressed once.
//!
//! | phase                           | hook                              | what                  |
//! |---------------------------------|-----------------------------------|-----------------------|
//! | `request_filter`                | [`request_filter`]                | negotiate, [`Plan`]   |
//! | `upstream_request_filter`       | [`upstream_request_filter`]       | `If-None-Match`; one `Accept-Encoding` when the cache may store |
//! | `upstream_response_filter`      | [`upstream_response_filter`]      | gzip before the cache stores |
//! | `upstream_response_body_filter` | [`upstream_response_body_filter`] | gzip before the cache stores |
//! | downstream module               | [`Compression`]                   | per response: encode, decode or leave; headers |
//!
//! [`Compression`] is a Pingora downstream [`HttpModule`] registered in place of Pingora's own
//! `ResponseCompression`. It sees every response written to the client (proxied, served from
//! the cache, or written by the gateway itself) after `response_filter`, decides per response
//! ([`decide`]), fixes the headers (`Content-Encoding`, `Content-Length`, `Vary`, `ETag`) and
//! transforms the body.
//!
//! Why a module of our own rather than Pingora 0.9.1's `ResponseCompression`: its encoders only
//! flush at the end of the body, so a slowly streamed response reaches the client in one piece
//! at the end (zlib keeps up to ~64 KiB of input before it emits a block); ours flush after every
//! chunk. It also takes the first `Accept-Encoding` token and ignores q-values (`gzip;q=0` would
//! get gzip), has a fixed 20-byte minimum and MIME list, and compresses `no-transform`, 206 and
//! `Content-Range` responses. Its decoder is fine, and [`Compression`] uses it (wrapped) to
//! decode gzip/br bodies for clients that do not accept them.
//!
//! Decoding is what makes a compressed cache safe: an entry is stored gzip-compressed once
//! (the upstream hooks, at `store_level`), clients that accept gzip get the stored bytes as
//! they are, and a client that does not (no `Accept-Encoding` at all, `identity`, `gzip;q=0`)
//! gets them decoded. The module decodes any gzip or br body for a client that did not accept
//! that coding, whoever encoded it. The cache must not vary its entries on `Accept-Encoding` (see
//! [`upstream_request_filter`]).
//!
//! A body with a `Content-Length` up to `whole_body_max` (default 256 KiB) is compressed in one
//! call once its last chunk has arrived ([`Encoder::whole`]; gzip by libdeflate, which at the
//! same instructions gives ~28 % fewer bytes than zlib-ng at level 1, and at level 6 the same
//! bytes for ~21 % fewer instructions); the cache's stored copy likewise. Longer bodies and
//! those without a length stream with a flush per chunk.
//!
//! Memory per compressed response: a whole body is held until its end (at most
//! `whole_body_max`) and one per-thread libdeflate compressor per level serves them all; a
//! streamed one holds the encoder's state (gzip ~270 KiB at level 6, br with a 512 KiB window,
//! zstd by level) plus the chunk in flight.

mod config;
mod decision;
mod downstream;
mod encoder;
mod hooks;
mod negotiate;
#[cfg(test)]
mod tests;

pub use self::config::{Algorithm, CompressionConfig, CompressionFile, TypePattern};
pub use self::decision::{
    add_vary, decide, decoded_headers, decodes_for_client, wants_decoded, weaken_etag, Action,
    Decision, Plan,
};
pub use self::downstream::{module, Compression};
pub use self::encoder::{compress_whole, Encoder};
pub use self::hooks::{
    encode_for_store, request_filter, send_whole_bodies_with_length, upstream_request_filter,
    upstream_response_body_filter, upstream_response_filter,
};
pub use self::negotiate::Accepts;

use self::decision::{content_length, encode_headers, normalize_if_none_match};
