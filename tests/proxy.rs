//! The proxy foundation against a real upstream: pass-through, request ids, load balancing and
//! failover, identity headers, metrics and readiness.

mod common;

use std::time::Duration;

use common::{client, wait_for, Gateway, TestUpstream};

fn config(upstreams: &[&TestUpstream], extra: &str) -> String {
    let servers: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect();
    format!(
        r#"
[server]
listen = "{{listen}}"
threads = 1
shutdown_grace = "5s"
[admin]
listen = "{{admin}}"
[upstream]
servers = [{}]
health_check = {{ path = "/health", interval = "200ms", timeout = "200ms" }}
connect_timeout = "300ms"
read_timeout = "2s"
[[route]]
name = "echo"
path = "/echo"
{extra}
"#,
        servers.join(", ")
    )
}

#[tokio::test]
async fn passes_methods_statuses_headers_and_bodies_through() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&[&up], ""));
    let c = client();

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = c
            .request(m, gw.url("/echo?x=1"))
            .header("x-custom", "yes")
            .body(if method == "GET" { "" } else { "payload" })
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["method"], method);
        assert_eq!(v["path"], "/echo");
        assert_eq!(v["query"], "x=1");
        assert_eq!(v["headers"]["x-custom"], "yes");
        if method != "GET" {
            assert_eq!(v["body_len"], 7, "{method} body reached the upstream");
        }
    }

    for code in [201u16, 204, 301, 404, 418, 500, 503] {
        let resp = c
            .get(gw.url(&format!("/status/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status().as_u16(),
            code,
            "status {code} passes through unchanged"
        );
    }

    let resp = c
        .get(gw.url("/headers?x-origin=abc&cache-control=max-age%3D5"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-origin"], "abc");
    assert_eq!(resp.headers()["cache-control"], "max-age=5");

    // A large body and a streamed (chunked) one arrive whole.
    let big = c
        .get(gw.url("/bytes/3000000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let direct = c
        .get(up.url("/bytes/3000000"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(big.len(), 3_000_000);
    assert_eq!(big, direct);
    let chunked = c
        .get(gw.url("/chunked?chunks=20&size=10000&delay_ms=5"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(chunked.len(), 200_000);

    // A large request body streams to the upstream.
    let upload = vec![b'a'; 2_000_000];
    let v: serde_json::Value = c
        .post(gw.url("/echo"))
        .body(upload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["body_len"], 2_000_000);
}

#[tokio::test]
async fn request_id_is_generated_or_propagated_and_traceparent_untouched() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&[&up], ""));
    let c = client();

    let resp = c.get(gw.url("/echo")).send().await.unwrap();
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&rid).is_ok(),
        "generated id is a UUID: {rid}"
    );
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        v["headers"]["x-request-id"],
        rid.as_str(),
        "the upstream got the same id"
    );

    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = c
        .get(gw.url("/echo"))
        .header("x-request-id", "client-chosen-id-1")
        .header("traceparent", tp)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-chosen-id-1");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["headers"]["x-request-id"], "client-chosen-id-1");
    assert_eq!(v["headers"]["traceparent"], tp);

    // Two requests without an id get different ones.
    let a = c.get(gw.url("/echo")).send().await.unwrap().headers()["x-request-id"].clone();
    let b = c.get(gw.url("/echo")).send().await.unwrap().headers()["x-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn spreads_load_fails_over_and_answers_502_json_when_all_are_down() {
    let a = TestUpstream::start();
    let b = TestUpstream::start();
    let gw = Gateway::start(&config(&[&a, &b], ""));
    let c = client();

    for _ in 0..20 {
        assert_eq!(c.get(gw.url("/echo")).send().await.unwrap().status(), 200);
    }
    assert!(
        a.hits() >= 5 && b.hits() >= 5,
        "both served: a={} b={}",
        a.hits(),
        b.hits()
    );

    a.kill();
    // Until the health check notices, idempotent requests are retried on the other server; after
    // it, they go there directly. Either way every request succeeds.
    for _ in 0..30 {
        let resp = c.get(gw.url("/echo")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wait_for(Duration::from_secs(5), || gw.metric_value(
        "omsgate_upstream_healthy",
        &[("server", &a.addr.to_string())]
    ) == Some(0.0)));

    b.kill();
    let started = std::time::Instant::now();
    let resp = c.get(gw.url("/echo")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered within the timeouts"
    );
    let rid = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("upstream"), "{v}");
    assert_eq!(v["request_id"], rid.as_str());

    // /ready turns 503 once the health check marks both down.
    let ready = gw.admin_url("/ready");
    assert!(
        wait_for(Duration::from_secs(5), || {
            common::http_get(gw.admin_addr(), "/ready", Duration::from_secs(1))
                .is_some_and(|(s, _)| s == 503)
        }),
        "{ready} did not turn 503"
    );
}

#[tokio::test]
async fn slow_upstream_gives_504_json() {
    let up = TestUpstream::start();
    let cfg = config(&[&up], "").replace("read_timeout = \"2s\"", "read_timeout = \"300ms\"");
    let gw = Gateway::start(&cfg);
    let resp = client().get(gw.url("/slow/2000")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "upstream timed out");
}

#[tokio::test]
async fn identity_headers_come_only_from_verified_tokens() {
    let secret = "test-secret-identity";
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(
        &[&up],
        &format!("[identity]\nmode = \"jwt\"\njwt_secret = \"{secret}\"\n"),
    ));
    let c = client();
    let valid = omsgate::identity::issue_hs256(
        secret,
        "tenant_id",
        "acme",
        "alice",
        Duration::from_secs(60),
    );
    let forged = omsgate::identity::issue_hs256(
        "wrong",
        "tenant_id",
        "acme",
        "alice",
        Duration::from_secs(60),
    );
    let expired = {
        let mut claims = serde_json::Map::new();
        claims.insert("tenant_id".into(), "acme".into());
        claims.insert("sub".into(), "alice".into());
        claims.insert("exp".into(), 1_000_000u64.into());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };

    let seen = |v: &serde_json::Value| {
        (
            v["headers"]["x-omsgate-tenant"]
                .as_str()
                .map(str::to_string),
            v["headers"]["x-omsgate-subject"]
                .as_str()
                .map(str::to_string),
        )
    };
    let get = |token: Option<String>, spoof: bool| {
        let mut r = c.get(gw.url("/echo"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if spoof {
            r = r
                .header("x-omsgate-tenant", "evil")
                .header("x-omsgate-subject", "mallory");
        }
        r.send()
    };

    let v: serde_json::Value = get(Some(valid.clone()), false)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen(&v), (Some("acme".into()), Some("alice".into())));
    // A spoofed header is replaced by the verified identity.
    let v: serde_json::Value = get(Some(valid), true).await.unwrap().json().await.unwrap();
    assert_eq!(seen(&v), (Some("acme".into()), Some("alice".into())));

    for token in [Some(forged), Some(expired), None] {
        let v: serde_json::Value = get(token.clone(), true)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(seen(&v), (None, None), "no identity for {token:?}");
        // The request was still proxied with the client's Authorization (the OMS decides).
        if token.is_some() {
            assert!(v["headers"]["authorization"].as_str().is_some());
        }
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&[&up], ""));
    let c = client();
    for _ in 0..3 {
        c.get(gw.url("/echo")).send().await.unwrap();
    }
    c.get(gw.url("/status/404")).send().await.unwrap();
    let labels = [("route", "echo"), ("method", "GET"), ("status", "2xx")];
    assert!(wait_for(Duration::from_secs(2), || gw
        .metric_value("omsgate_http_requests_total", &labels)
        == Some(3.0)));
    assert_eq!(
        gw.metric_value(
            "omsgate_http_requests_total",
            &[("route", "other"), ("method", "GET"), ("status", "4xx")]
        ),
        Some(1.0)
    );
    let text = gw.metrics_text();
    assert!(text.contains("omsgate_http_request_duration_seconds_bucket{route=\"echo\""));
    assert!(text.contains("omsgate_build_info{version="));
}

/// The exposition format passes `promtool check metrics`. Ignored by a plain `cargo test` (it
/// needs `promtool`, Debian package `prometheus`); `scripts/test` installs it and runs the
/// ignored tool checks.
#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus); scripts/test installs it and runs this"]
async fn metrics_pass_promtool_check() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&config(&[&up], ""));
    let c = client();
    for _ in 0..3 {
        c.get(gw.url("/echo")).send().await.unwrap();
    }
    let labels = [("route", "echo"), ("method", "GET"), ("status", "2xx")];
    assert!(wait_for(Duration::from_secs(2), || gw
        .metric_value("omsgate_http_requests_total", &labels)
        == Some(3.0)));
    let text = gw.metrics_text();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool (Debian package prometheus) cannot run: {e}"));
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads one response with a `Content-Length` from a keep-alive connection: its head, lowercased.
async fn read_one_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        bytes.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&bytes).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let head = head.to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return head;
            }
        }
    }
}

/// Whether the gateway closes `stream` (end of file) within `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// A one-thread gateway in front of `up`: `server` adds `[server]` keys, `rest` follows
/// `[upstream] servers` (more upstream keys, or sections).
fn one_thread_gateway(up: &TestUpstream, server: &str, rest: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[server]
listen = "{{listen}}"
threads = 1
{server}
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
{rest}
"#,
        up.addr
    ))
}

/// Sends `bytes` one at a time, one every `every`, until the gateway closes the connection;
/// how long that took from the first byte, or `None` when every byte went out and it stayed open.
async fn trickle_until_closed(
    conn: &mut tokio::net::TcpStream,
    bytes: &[u8],
    every: Duration,
) -> Option<Duration> {
    use tokio::io::AsyncWriteExt;
    let start = std::time::Instant::now();
    for byte in bytes {
        if conn.write_all(std::slice::from_ref(byte)).await.is_err()
            || closed_within(conn, every).await
        {
            return Some(start.elapsed());
        }
    }
    None
}

/// A client has `server.header_timeout` for a whole request header: a header trickled a byte at
/// a time (each byte far inside Pingora's per-read timeout) is cut off, on a new connection and
/// on a kept-alive one and on the admin listener, and so is a new connection that says nothing;
/// the idle time between kept-alive requests does not count, and a header with a pause inside
/// the limit is served.
#[tokio::test]
async fn slow_request_headers_are_cut_off_at_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start();
    let gw = one_thread_gateway(
        &up,
        "keepalive_timeout = \"30s\"\nheader_timeout = \"2s\"",
        "",
    );
    let request = format!("GET /echo HTTP/1.1\r\nHost: {}\r\n\r\n", gw.listen_addr());
    let slow_header = request.replace("\r\n\r\n", "\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n");
    let connect = || tokio::net::TcpStream::connect(gw.listen_addr());
    let cut_off = |took: Option<Duration>, what: &str| {
        let took =
            took.unwrap_or_else(|| panic!("{what}: the whole header trickled in, never cut off"));
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_millis(3500),
            "{what}: cut off after {took:?}, not at the 2 s header_timeout"
        );
    };

    // Slowloris on a new connection: a byte every 300 ms, 10 s for the whole header.
    let mut conn = connect().await.unwrap();
    let took = trickle_until_closed(
        &mut conn,
        slow_header.as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    cut_off(took, "new connection");

    // A new connection that sends nothing is closed at the deadline too (Pingora: 60 s).
    let mut conn = connect().await.unwrap();
    let start = std::time::Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(5)).await,
        "a silent connection stays open"
    );
    cut_off(Some(start.elapsed()), "silent connection");

    // The admin listener has the same deadline.
    let mut conn = tokio::net::TcpStream::connect(gw.admin_addr())
        .await
        .unwrap();
    let took = trickle_until_closed(
        &mut conn,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_millis(300),
    )
    .await;
    cut_off(took, "admin listener");

    // A header with a 1 s pause inside it is served; then 3 s of keepalive idle (longer than
    // the header deadline) do not count against the next request...
    let mut conn = connect().await.unwrap();
    let (head, rest) = request.split_at(10);
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    conn.write_all(rest.as_bytes()).await.unwrap();
    assert!(read_one_response(&mut conn)
        .await
        .starts_with("http/1.1 200"));
    assert!(
        !closed_within(&mut conn, Duration::from_secs(3)).await,
        "closed while idle between requests"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    assert!(read_one_response(&mut conn)
        .await
        .starts_with("http/1.1 200"));
    // ...whose header, trickled, is cut off 2 s after its first byte.
    let took = trickle_until_closed(
        &mut conn,
        slow_header.as_bytes(),
        Duration::from_millis(300),
    )
    .await;
    cut_off(took, "kept-alive connection");

    let (code, stderr) = Gateway::check_config(
        "[server]\nheader_timeout = \"soon\"\n[upstream]\nservers = [\"127.0.0.1:8000\"]\n",
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("server.header_timeout"), "{stderr}");
}

/// An idle HTTP/1.1 connection is closed after `server.keepalive_timeout` (Pingora alone would
/// keep it forever); within it the connection serves the next request; `"0"` closes every
/// connection after its response.
#[tokio::test]
async fn idle_client_connections_close_after_keepalive_timeout() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start();
    let gateway =
        |timeout: &str| one_thread_gateway(&up, &format!("keepalive_timeout = \"{timeout}\""), "");
    let request =
        |gw: &Gateway| format!("GET /echo HTTP/1.1\r\nHost: {}\r\n\r\n", gw.listen_addr());

    let gw = gateway("2s");
    let mut conn = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    conn.write_all(request(&gw).as_bytes()).await.unwrap();
    assert!(read_one_response(&mut conn)
        .await
        .starts_with("http/1.1 200"));
    // Idle for less than the timeout: still open, and it serves the next request.
    assert!(!closed_within(&mut conn, Duration::from_millis(1200)).await);
    conn.write_all(request(&gw).as_bytes()).await.unwrap();
    assert!(read_one_response(&mut conn)
        .await
        .starts_with("http/1.1 200"));
    // Idle for longer: closed by the gateway, about when the timeout says.
    let idle = std::time::Instant::now();
    assert!(
        closed_within(&mut conn, Duration::from_secs(5)).await,
        "an idle connection stays open past keepalive_timeout"
    );
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "closed after {waited:?}, before the timeout"
    );

    let gw = gateway("0");
    let mut conn = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    conn.write_all(request(&gw).as_bytes()).await.unwrap();
    let head = read_one_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed_within(&mut conn, Duration::from_secs(2)).await);

    let (code, stderr) = Gateway::check_config(
        "[server]\nkeepalive_timeout = \"1500ms\"\n[upstream]\nservers = [\"127.0.0.1:8000\"]\n",
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("server.keepalive_timeout"), "{stderr}");
}

/// Trickles one body byte (`byte`, e.g. a digit or a whole chunk) every 200 ms on `conn` until
/// the gateway answers and closes; returns the answer and the time since `started`.
async fn trickle_until_answered(
    conn: &mut tokio::net::TcpStream,
    byte: &[u8],
    started: std::time::Instant,
) -> (String, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let _ = conn.write_all(byte).await;
        match tokio::time::timeout(Duration::from_millis(200), conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no answer to a trickled body"
        );
    }
    (
        String::from_utf8_lossy(&answer).to_string(),
        started.elapsed(),
    )
}

/// A request body with a `Content-Length`, or a chunked one, is read before the request takes
/// an OMS slot, within `server.body_timeout`: a trickled body never reaches the OMS and is
/// answered 408 with a JSON body; with `max_in_flight = 1` a whole request passes while two
/// other clients trickle; bodies read ahead arrive intact, and a chunked body longer than the
/// 64 KiB read ahead arrives whole too (its first part read ahead, the rest streamed). Counted
/// in `omsgate_request_bodies_total`.
#[tokio::test]
async fn request_bodies_are_read_before_they_take_an_oms_slot() {
    use tokio::io::AsyncWriteExt;
    let up = TestUpstream::start();
    let gw = one_thread_gateway(
        &up,
        "body_timeout = \"1500ms\"",
        "[upstream.overload]\nmax_in_flight = 1",
    );
    let body_len = |text: &str| -> u64 {
        let json: serde_json::Value = serde_json::from_str(text).expect("the echo's JSON");
        json["body_len"].as_u64().expect("body_len")
    };

    // One client sends its header and 5 of 40 body bytes, another a chunked header and one
    // 5-byte chunk; then each sends a byte (a one-byte chunk) every 200 ms.
    let mut slow = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    slow.write_all(
        b"POST /echo/slow HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n12345",
    )
    .await
    .unwrap();
    let mut slow_chunked = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    slow_chunked
        .write_all(
            b"POST /echo/slow-chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n",
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();

    // Meanwhile a whole request passes: the trickled ones hold no OMS slot.
    let whole = client()
        .post(gw.url("/echo/whole"))
        .body("x".repeat(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(
        body_len(&whole.text().await.unwrap()),
        1000,
        "read ahead, sent whole"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "waited for the tricklers"
    );

    let (with_length, chunked) = tokio::join!(
        trickle_until_answered(&mut slow, b"6", started),
        trickle_until_answered(&mut slow_chunked, b"1\r\n6\r\n", started)
    );
    for (what, (answer, took)) in [("Content-Length", with_length), ("chunked", chunked)] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
        assert!(answer.contains("application/json"), "{what}: {answer}");
        assert!(answer.contains("server.body_timeout"), "{what}: {answer}");
        assert!(
            took >= Duration::from_millis(1400) && took < Duration::from_millis(3500),
            "{what}: answered after {took:?}, not at the 1.5 s body_timeout"
        );
    }
    for path in ["/echo/slow", "/echo/slow-chunked"] {
        assert_eq!(
            up.hits_for(path),
            0,
            "a trickled body reached the OMS: {path}"
        );
    }

    // Chunked bodies: a short one is read ahead and arrives whole...
    let mut conn = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    conn.write_all(
        b"POST /echo/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_one_response(&mut conn).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(
        up.last_seen("/echo/chunked").map(|r| r.method),
        Some("POST".into())
    );
    // ...and one of 160 KiB, in 10 KiB chunks, arrives whole: its first 64 KiB and more from
    // the read ahead, the rest streamed after them, nothing lost or repeated.
    let sent: Vec<u8> = (0..16u8).flat_map(|i| vec![b'a' + i; 10 * 1024]).collect();
    let fnv = sent.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    });
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = sent
        .chunks(10 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let long = client()
        .post(gw.url("/echo/long-chunked"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(long.status(), 200);
    let echo: serde_json::Value = serde_json::from_str(&long.text().await.unwrap()).unwrap();
    assert_eq!(echo["body_len"], 160 * 1024);
    assert_eq!(
        echo["body_fnv"],
        format!("{fnv:016x}"),
        "the body arrived altered"
    );

    let count = |outcome: &str| {
        gw.metric_value("omsgate_request_bodies_total", &[("outcome", outcome)])
            .unwrap_or(0.0)
    };
    assert_eq!(count("timed_out"), 2.0);
    assert!(count("read_ahead") >= 2.0);
    assert_eq!(count("read_ahead_then_streamed"), 1.0);
}
