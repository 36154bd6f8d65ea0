//! Responses the gateway writes itself: JSON errors (`{"error": "...", "request_id": "..."}`),
//! 429s, pooled-path answers. One place, so every locally generated response carries the request
//! id and a JSON content type.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// The JSON body of an error written by the gateway.
pub fn error_body(message: &str, request_id: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": message, "request_id": request_id }).to_string())
}

/// Builds a response header with `content-type: application/json`, `content-length` and the
/// request id.
pub fn json_header(status: u16, len: usize, request_id: &str) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(4))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.insert_header(http::header::CONTENT_LENGTH, len.to_string())?;
    h.insert_header("x-request-id", request_id)?;
    Ok(h)
}

/// Writes a complete JSON response through the downstream modules (so compression applies).
pub async fn send_json(
    session: &mut Session,
    mut header: ResponseHeader,
    body: Bytes,
) -> Result<()> {
    let head_only = session.req_header().method == http::Method::HEAD;
    if head_only {
        header.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        session.write_response_header(Box::new(header), true).await
    } else {
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await
    }
}

/// Writes a JSON error `{"error": message, "request_id": id}` with `status`.
pub async fn send_error(
    session: &mut Session,
    status: u16,
    message: &str,
    request_id: &str,
) -> Result<()> {
    let body = error_body(message, request_id);
    let header = json_header(status, body.len(), request_id)?;
    send_json(session, header, body).await
}
