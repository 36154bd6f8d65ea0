//! Graceful shutdown: SIGTERM while a slow request is in flight lets it finish, then exits 0.

mod common;

use std::time::Duration;

use common::{client, Gateway, TestUpstream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_in_flight_request_finish_and_exits_zero() {
    let up = TestUpstream::start();
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "{{listen}}"
threads = 1
shutdown_grace = "10s"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
read_timeout = "10s"
"#,
        up.addr
    ));
    let url = gw.url("/slow/1500");
    let request = tokio::spawn(async move { client().get(url).send().await });
    // Let the request reach the upstream before signalling.
    assert!(common::wait_for(Duration::from_secs(5), || up
        .hits_for("/slow")
        == 1));
    gw.signal("TERM");
    let resp = request
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "slow");
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exited within the grace period");
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
    // New connections are refused once it has exited.
    assert!(!common::port_open(gw.listen_addr()));
}

/// SIGTERM with several requests in flight on their own keepalive connections: every one of
/// them completes, and each response, sent while draining, carries `Connection: close`, so the
/// client does not reuse a connection the gateway is about to drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_completes_every_request_with_connection_close() {
    const IN_FLIGHT: usize = 8;
    let up = TestUpstream::start();
    let gw = Gateway::start(&format!(
        r#"
[server]
listen = "{{listen}}"
threads = 2
shutdown_grace = "10s"
[admin]
listen = "{{admin}}"
[upstream]
servers = ["{}"]
read_timeout = "10s"
# All of them in flight at once (the test upstream serves them in parallel), not 4 of them
# and the rest shed by the one-worker default.
overload = {{ max_in_flight = 16 }}
"#,
        up.addr
    ));
    let requests: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let url = gw.url("/slow/1500");
            // One client each: its own connection.
            tokio::spawn(async move { client().get(url).send().await })
        })
        .collect();
    assert!(
        common::wait_for(Duration::from_secs(5), || up.hits_for("/slow")
            == IN_FLIGHT as u64),
        "the requests reached the upstream"
    );
    gw.signal("TERM");
    for (i, request) in requests.into_iter().enumerate() {
        let resp = request
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("request {i} failed while draining: {e}"));
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(
            resp.headers()
                .get("connection")
                .and_then(|v| v.to_str().ok())
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("close"),
            "request {i}: a response sent while draining closes its connection"
        );
        assert_eq!(resp.text().await.unwrap(), "slow", "request {i}");
    }
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("exited within the grace period");
    assert!(status.success(), "exit status {status:?}\n{}", gw.log());
}
