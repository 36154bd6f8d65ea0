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
