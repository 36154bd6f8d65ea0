//! A whole HTTP answer as a test reads it: status, header fields and the body's bytes.

use super::{client, Gateway};
use reqwest::header::HeaderMap;

/// An answer read to its end.
#[derive(Debug)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The header fields.
    pub headers: HeaderMap,
    /// The body as received (no content coding undone).
    pub body: Vec<u8>,
}

impl Reply {
    /// Sends `req` and reads the whole answer; panics when there is none.
    pub async fn of(req: reqwest::RequestBuilder) -> Reply {
        let resp = req.send().await.expect("the gateway answers");
        Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body: resp.bytes().await.expect("a whole body").to_vec(),
        }
    }

    /// The first value of field `name`, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether `Vary` lists `Accept-Encoding`.
    pub fn varies_by_accept_encoding(&self) -> bool {
        self.headers.get_all("vary").iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("accept-encoding"))
        })
    }
}

/// `method path` through the gateway's public listener with the header fields `headers`.
pub async fn send(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = client().request(method, gw.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    Reply::of(req).await
}
