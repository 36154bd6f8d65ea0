//! Request bodies read before the OMS is involved (`server.body_timeout`).
//!
//! Pingora streams a request body to the OMS as it arrives, after it has taken one of the
//! server's few slots (`upstream.max_in_flight`, default 4) and a connection. A client that
//! trickles its body (one byte a minute passes Pingora's per-read timeout) held that slot as
//! long as it liked: four such clients shut every other uncached request out. Now, before the
//! request queues for a slot, within `body_timeout`:
//! - a body with a `Content-Length` up to [`READ_AHEAD_MAX`] is read whole; Pingora's retry
//!   buffer keeps it and sends it on the first attempt, as it does on a retry;
//! - a chunked body (HTTP/1.x) is read up to [`READ_AHEAD_MAX`] (vendored Pingora patch 0009
//!   keeps what was read past that limit): whole when it is no longer, else its first part,
//!   which is sent before the rest streams.
//!
//! A body that is not complete (or, chunked, not past the limit) within `body_timeout` is
//! answered 408 without reaching the OMS. Larger bodies with a `Content-Length` and bodies
//! behind `Expect: 100-continue` stream as they arrive, each read limited to `body_timeout`.

use std::time::Duration;

use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING};
use pingora::proxy::Session;
use pingora::Result;

/// The largest body read ahead: what Pingora's retry buffer holds whole (64 KiB).
pub const READ_AHEAD_MAX: u64 = 64 * 1024;

/// What became of a request's body.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadAhead {
    /// Read whole; the OMS gets it from Pingora's retry buffer.
    Read,
    /// Left to stream to the OMS (none, larger than [`READ_AHEAD_MAX`] — a chunked one after
    /// its first part —, or the client waits for `100 Continue`), or no `body_timeout`.
    Streams,
    /// Not complete within `body_timeout`: the request is to be refused with 408.
    TimedOut,
}

/// Reads the body of `session`'s request ahead when it qualifies (see the module), within
/// `timeout`; with `timeout`, also limits every later body read to it. An error is the
/// client's (it closed, or sent a malformed body).
pub async fn read_ahead(session: &mut Session, timeout: Option<Duration>) -> Result<ReadAhead> {
    let Some(timeout) = timeout else {
        return Ok(ReadAhead::Streams);
    };
    session.set_read_timeout(Some(timeout));
    let headers = &session.req_header().headers;
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = headers.contains_key(TRANSFER_ENCODING);
    // A request without a body (most) looks up no further header.
    let whole = matches!(length, Some(n) if n > 0 && n <= READ_AHEAD_MAX)
        && !chunked
        && !headers.contains_key(EXPECT);
    let chunked_ahead = chunked && !headers.contains_key(EXPECT);
    if !(whole || chunked_ahead) || session.is_body_done() {
        if chunked || length.is_some_and(|n| n > 0) {
            count("streamed");
        }
        return Ok(ReadAhead::Streams);
    }
    if whole {
        session.enable_retry_buffering();
    } else if !session.enable_read_ahead_buffering() {
        // Not HTTP/1.x: the part read could not be kept.
        count("streamed");
        return Ok(ReadAhead::Streams);
    }
    // Ok(true): the whole body; Ok(false): a chunked body's first part, past the limit.
    let read = async {
        while session.read_request_body().await?.is_some() {
            if session.retry_buffer_truncated() {
                return Ok(false);
            }
        }
        Ok::<_, Box<pingora::Error>>(true)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(true)) => {
            count("read_ahead");
            Ok(ReadAhead::Read)
        }
        Ok(Ok(false)) => {
            count("read_ahead_then_streamed");
            Ok(ReadAhead::Streams)
        }
        Ok(Err(mut e)) => {
            // The client's: it closed, or sent a malformed body.
            e.as_down();
            Err(e)
        }
        Err(_) => {
            count("timed_out");
            Ok(ReadAhead::TimedOut)
        }
    }
}

fn count(outcome: &str) {
    crate::metrics::REQUEST_BODIES
        .with_label_values(&[outcome])
        .inc();
}
