//! Request bodies read whole before the OMS is involved (`server.body_timeout`).
//!
//! Pingora streams a request body to the OMS as it arrives, after it has taken one of the
//! server's few slots (`upstream.max_in_flight`, default 4) and a connection. A client that
//! trickles its body (one byte a minute passes Pingora's per-read timeout) held that slot as
//! long as it liked: four such clients shut every other uncached request out. A body with a
//! `Content-Length` up to [`READ_AHEAD_MAX`] is now read here, within `body_timeout`, before
//! the request queues for a slot; Pingora's retry buffer keeps it and sends it on the first
//! attempt, as it does on a retry. Other bodies (chunked, larger, `Expect: 100-continue`) still
//! stream, each read limited to `body_timeout`.

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
    /// Left to stream to the OMS (none, chunked, larger than [`READ_AHEAD_MAX`], or the
    /// client waits for `100 Continue`), or no `body_timeout`.
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
    let qualifies = matches!(length, Some(n) if n > 0 && n <= READ_AHEAD_MAX)
        && !chunked
        && !headers.contains_key(EXPECT);
    if !qualifies || session.is_body_done() {
        if chunked || length.is_some_and(|n| n > 0) {
            count("streamed");
        }
        return Ok(ReadAhead::Streams);
    }
    session.enable_retry_buffering();
    let read = async {
        while session.read_request_body().await?.is_some() {}
        Ok::<_, Box<pingora::Error>>(())
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(Ok(())) => {
            count("read_ahead");
            Ok(ReadAhead::Read)
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
