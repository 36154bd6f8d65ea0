//! One-shot HTTP/1.1 `GET`s that omsgate itself sends outside the proxy path (JWKS fetches,
//! `query-check`'s calls to the OMS): plain TCP for `http://`, rustls for `https://` (SNI and
//! the certificate check from the URL's host, against the caller's trust store). One connection
//! per call; no redirects, no proxies.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::BodyExt;

/// What the server answered.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: http::StatusCode,
    /// The response header fields.
    pub headers: http::HeaderMap,
    /// The body (at most the caller's `max_bytes`).
    pub body: Bytes,
}

/// `GET url` with `headers` (besides `Host` and `User-Agent`), TLS for `https` verified with
/// `tls`; the body is refused beyond `max_bytes`. The error says what failed and where.
pub async fn get(
    url: &http::Uri,
    headers: &[(http::HeaderName, String)],
    tls: Arc<rustls::ClientConfig>,
    max_bytes: usize,
) -> Result<Answer, String> {
    let host = url
        .host()
        .ok_or_else(|| format!("{url}: no host in the URL"))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        other => {
            return Err(format!(
                "{url}: the scheme must be http or https, not {other:?}"
            ))
        }
    };
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = url.authority().map_or(host, |a| a.as_str());
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let tcp = tokio::net::TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect to {bare}:{port}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name = rustls::pki_types::ServerName::try_from(bare.to_string())
            .map_err(|e| format!("{bare}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {bare}:{port}: {e}"))?;
        exchange(
            hyper_util::rt::TokioIo::new(stream),
            authority,
            path,
            headers,
            max_bytes,
        )
        .await
    } else {
        exchange(
            hyper_util::rt::TokioIo::new(tcp),
            authority,
            path,
            headers,
            max_bytes,
        )
        .await
    }
}

async fn exchange<T>(
    io: T,
    authority: &str,
    path: &str,
    headers: &[(http::HeaderName, String)],
    max_bytes: usize,
) -> Result<Answer, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{authority}: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = http::Request::get(path)
        .header(http::header::HOST, authority)
        .header(
            http::header::USER_AGENT,
            concat!("omsgate/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        req = req.header(name, value.as_str());
    }
    let req = req
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("{authority}{path}: {e}"))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, max_bytes)
            .collect()
            .await
            .map_err(|e| format!("{authority}{path}: reading the body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
    .await;
    driver.abort();
    result
}
