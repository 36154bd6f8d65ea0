//! The shared-cache rules of RFC 9111 and RFC 9213 over real HTTP: the gateway as a child
//! process, the real Redis, and the scriptable test upstream (`/headers?Name=Value` sets any
//! response header, `/etag/{tag}` answers `304`s). One test per rule: no stale copy where the
//! origin forbids it, the origin's `Age`, the origin's `Date` kept, `304`s updating the stored
//! header, unsafe requests invalidating their target URI, hop-by-hop fields not stored, `Vary`
//! variants and the conditional requests revalidating them, targeted cache fields.

mod cache_util;
mod common;

use std::time::Duration;

use cache_util::*;
use common::*;

/// Everything cached for everyone, with generous stale windows of the route's own, so that a
/// stale answer would show wherever the origin's directives are not obeyed.
const PUBLIC_STALE: &str = r#"
[[route]]
name = "headers"
path = "/headers"
cache = { ttl = "1s", scope = "public", stale_while_revalidate = "10m", stale_if_error = "10m", respect_origin = false }
"#;

fn seq(got: &Got) -> String {
    got.header("x-upstream-seq")
}

// === Stale windows ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revalidation_directives_forbid_stale_whatever_the_route_allows() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), PUBLIC_STALE));
    let http = client();
    let urls: Vec<String> = [
        "must-revalidate",
        "proxy-revalidate",
        "s-maxage%3D1",
        "max-age%3D1%2C%20must-revalidate%2C%20stale-if-error%3D600",
    ]
    .iter()
    .map(|cc| gw.url(&format!("/headers?Cache-Control={cc}")))
    .collect();
    // The control: without such a directive the route's windows apply.
    let control = gw.url("/headers?Cache-Control=max-age%3D1&X-Control=1");
    let mut first = Vec::new();
    for url in urls.iter().chain([&control]) {
        let got = get(&http, url, None).await;
        assert_eq!(got.x_cache, "MISS", "{url}: {got:?}");
        first.push(got);
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;

    // Expired, no error: revalidated with the origin before answering, not served stale.
    for (url, before) in urls.iter().zip(&first) {
        let got = get(&http, url, None).await;
        assert_eq!(got.status, 200, "{url}: {got:?}");
        assert_ne!(got.x_cache, "STALE", "{url}: {got:?}");
        assert_ne!(seq(&got), seq(before), "{url}: answered by the origin");
    }
    let stale = get(&http, &control, None).await;
    assert_eq!(stale.x_cache, "STALE", "the control: {stale:?}");

    // Expired and the origin fails: its error, not the stored copy.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    upstream.fail_with(Some(503));
    for url in &urls {
        let got = get(&http, url, None).await;
        assert_eq!(got.status, 503, "{url}: {got:?}");
        assert_ne!(got.x_cache, "STALE", "{url}: {got:?}");
    }
    let stale = get(&http, &control, None).await;
    assert_eq!(
        (stale.status, stale.x_cache.as_str()),
        (200, "STALE"),
        "the control: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn immutable_does_not_keep_an_expired_entry_fresh() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Cache-Control=max-age%3D1%2C%20immutable");
    let first = get(&http, &url, None).await;
    assert_eq!(first.x_cache, "MISS");
    assert_eq!(get(&http, &url, None).await.x_cache, "HIT");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = get(&http, &url, None).await;
    assert_ne!(later.x_cache, "HIT", "{later:?}");
    assert_ne!(seq(&later), seq(&first), "{later:?}");
}

// === Age ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_origin_age_counts_and_hits_report_it() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Cache-Control=max-age%3D3600&Age=100");
    assert_eq!(get(&http, &url, None).await.x_cache, "MISS");
    let hit = get(&http, &url, None).await;
    assert_eq!(hit.x_cache, "HIT", "{hit:?}");
    let age = hit
        .age
        .unwrap_or_else(|| panic!("a hit carries Age: {hit:?}"));
    assert!(
        (100..200).contains(&age),
        "stored age plus resident time: {hit:?}"
    );

    // Already older than its lifetime: stored stale, so the next request goes to the origin.
    let old = gw.url("/headers?Cache-Control=max-age%3D60&Age=120");
    assert_eq!(get(&http, &old, None).await.x_cache, "MISS");
    let again = get(&http, &old, None).await;
    assert_ne!(again.x_cache, "HIT", "{again:?}");
    assert_eq!(upstream.hits_for("/headers"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalid_origin_age_makes_the_response_stale() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    // Query values become header values; a repeated name becomes a second field line.
    for age in [
        "Age=old%2C%200",
        "Age=7200%2C%200",
        "Age=abc",
        "Age=2147483648",
        "Age=1.5",
        "Age=old&Age=0",
    ] {
        let url = gw.url(&format!("/headers?Cache-Control=max-age%3D3600&{age}"));
        let before = upstream.hits_for("/headers");
        assert_eq!(get(&http, &url, None).await.x_cache, "MISS", "{age}");
        let again = get(&http, &url, None).await;
        assert_ne!(again.x_cache, "HIT", "{age}: {again:?}");
        assert_eq!(upstream.hits_for("/headers"), before + 2, "{age}");
    }
    // The control: a plain number, and the first of several lines, are taken.
    for age in ["Age=5", "Age=5&Age=old"] {
        let url = gw.url(&format!("/headers?Cache-Control=max-age%3D3600&{age}"));
        assert_eq!(get(&http, &url, None).await.x_cache, "MISS", "{age}");
        let hit = get(&http, &url, None).await;
        assert_eq!(hit.x_cache, "HIT", "{age}: {hit:?}");
        assert!(hit.age.is_some_and(|a| a >= 5), "{age}: {hit:?}");
    }
}

// === Date ===

/// An origin `Date` no clock of today produces, so that any date the gateway wrote shows.
const ORIGIN_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

/// The same `Date`, as a query parameter of the test upstream's `/headers` and `/etag/{tag}`.
const ORIGIN_DATE_PARAM: &str = "Date=Sun%2C%2006%20Nov%201994%2008%3A49%3A37%20GMT";

/// A route over `/etag/{tag}` without caching: answers pass through.
const PASS_ROUTE: &str = r#"
[[route]]
name = "pass"
path = "/etag/{tag}"
"#;

/// Every `Date` field line of `got`, exactly (quoted, any byte that is not visible ASCII
/// escaped).
fn dates(got: &Got) -> Vec<String> {
    got.headers
        .get_all("date")
        .iter()
        .map(|v| format!("{v:?}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hits_stale_answers_and_pass_through_carry_the_origins_date() {
    let upstream = TestUpstream::start();
    let routes = format!("{PUBLIC_STALE}{PASS_ROUTE}");
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), &routes));
    let http = client();
    let origin = vec![format!("{ORIGIN_DATE:?}")];
    let url = gw.url(&format!("/headers?{ORIGIN_DATE_PARAM}"));
    let miss = get(&http, &url, None).await;
    assert_eq!(miss.x_cache, "MISS", "{miss:?}");
    assert_eq!(dates(&miss), origin, "{miss:?}");
    let hit = get(&http, &url, None).await;
    assert_eq!(hit.x_cache, "HIT", "{hit:?}");
    assert_eq!(dates(&hit), origin, "{hit:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = get(&http, &url, None).await;
    assert_eq!(stale.x_cache, "STALE", "{stale:?}");
    assert_eq!(dates(&stale), origin, "{stale:?}");

    let pass = get(
        &http,
        &gw.url(&format!("/etag/p?body_len=10&{ORIGIN_DATE_PARAM}")),
        None,
    )
    .await;
    assert_eq!((pass.status, pass.x_cache.as_str()), (200, ""), "{pass:?}");
    assert_eq!(dates(&pass), origin, "{pass:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_without_date_gets_the_time_of_receipt_which_hits_keep() {
    let upstream = TestUpstream::start();
    upstream.send_date(false);
    let direct = client()
        .get(upstream.url("/headers"))
        .send()
        .await
        .expect("the upstream answers");
    assert_eq!(direct.headers().get("date"), None, "the setup: no Date");
    let routes = format!("{PUBLIC_HEADERS_ROUTE}{PASS_ROUTE}");
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), &routes));
    let http = client();
    let url = gw.url("/headers?Cache-Control=max-age%3D3600");
    let miss = get(&http, &url, None).await;
    assert_eq!(miss.x_cache, "MISS", "{miss:?}");
    assert_eq!(dates(&miss).len(), 1, "{miss:?}");
    // Past the next second: a date written when answering would differ from the stored one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = get(&http, &url, None).await;
    assert_eq!(hit.x_cache, "HIT", "{hit:?}");
    assert_eq!(dates(&hit), dates(&miss), "the time of receipt: {hit:?}");

    let pass = get(&http, &gw.url("/etag/p?body_len=10"), None).await;
    assert_eq!(pass.status, 200, "{pass:?}");
    assert_eq!(dates(&pass).len(), 1, "{pass:?}");
}

// === 304 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_304_from_the_origin_updates_the_stored_header_and_the_answer() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "etag"
path = "/etag/{tag}"
cache = { ttl = "1s", scope = "public", stale_if_error = "60s" }
"#;
    // An entry is kept past its fresh time only for its stale windows: `stale_if_error` keeps it
    // for revalidation without serving it stale while the OMS answers.
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    // Small enough not to be compressed: the stored body is the origin's.
    let url = gw.url("/etag/v1?body_len=100");
    let first = get(&http, &url, None).await;
    assert_eq!((first.status, first.x_cache.as_str()), (200, "MISS"));
    assert_eq!(first.body.len(), 100);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let revalidated = get(&http, &url, None).await;
    assert_eq!(revalidated.status, 200, "{revalidated:?}");
    let seen = upstream
        .last_seen("/etag/v1")
        .expect("the origin was asked");
    assert_eq!(
        seen.headers.get("if-none-match").map(String::as_str),
        Some("\"v1\""),
        "a conditional request"
    );
    assert_ne!(
        seq(&revalidated),
        seq(&first),
        "the answer carries the 304's fields: {revalidated:?}"
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(revalidated.header("content-length"), "100");

    let hit = get(&http, &url, None).await;
    assert_eq!(hit.x_cache, "HIT", "{hit:?}");
    assert_eq!(seq(&hit), seq(&revalidated), "stored: {hit:?}");
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.header("content-length"), "100");
    assert_eq!(upstream.hits_for("/etag/v1"), 2);
}

// === Invalidation by unsafe requests ===

const ITEMS: &str = r#"
[[route]]
name = "items"
path = "/items"
cache = { ttl = "60s", scope = "tenant" }
[[route]]
name = "item"
path = "/items/{id}"
cache = { ttl = "60s", scope = "tenant" }
[[route]]
name = "headers"
path = "/headers"
[[route]]
name = "status"
path = "/status/{code}"
cache = { ttl = "60s", scope = "tenant" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsafe_request_invalidates_its_target_uri_in_the_requesters_scope() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ITEMS));
    let http = client();
    let (acme, globex) = (token("acme", "a1"), token("globex", "g1"));
    let url = gw.url("/items");
    let warm = |tok: &str| {
        let (http, url, tok) = (http.clone(), url.clone(), tok.to_string());
        async move {
            get(&http, &url, Some(&tok)).await;
            let hit = get(&http, &url, Some(&tok)).await;
            assert_eq!(hit.x_cache, "HIT", "{hit:?}");
        }
    };
    let methods = [
        reqwest::Method::POST,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
        reqwest::Method::from_bytes(b"FROBNICATE").unwrap(),
    ];
    for method in methods {
        warm(&acme).await;
        warm(&globex).await;
        let write = send(&http, method.clone(), &url, Some(&acme), &[], None).await;
        assert_eq!(write.status, 200, "{method}: {write:?}");
        let after = get(&http, &url, Some(&acme)).await;
        assert_eq!(after.x_cache, "MISS", "{method} invalidates: {after:?}");
        let other = get(&http, &url, Some(&globex)).await;
        assert_eq!(
            other.x_cache, "HIT",
            "{method}: another tenant's entry stays"
        );
    }
    // The query is not part of the invalidated URI: every stored query of the path goes.
    let page = gw.url("/items?page=2");
    get(&http, &page, Some(&acme)).await;
    assert_eq!(get(&http, &page, Some(&acme)).await.x_cache, "HIT");
    send(&http, reqwest::Method::POST, &url, Some(&acme), &[], None).await;
    assert_eq!(get(&http, &page, Some(&acme)).await.x_cache, "MISS");

    // A failed write invalidates nothing.
    let gone = gw.url("/status/404");
    get(&http, &gone, Some(&acme)).await;
    assert_eq!(get(&http, &gone, Some(&acme)).await.x_cache, "HIT");
    let failed = send(&http, reqwest::Method::POST, &gone, Some(&acme), &[], None).await;
    assert_eq!(failed.status, 404);
    assert_eq!(get(&http, &gone, Some(&acme)).await.x_cache, "HIT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unsafe_request_invalidates_same_origin_location_and_content_location() {
    let upstream = TestUpstream::start();
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), ITEMS));
    let http = client();
    let acme = token("acme", "a1");
    let item = |id: u32| gw.url(&format!("/items/{id}"));
    for id in 1..=4 {
        get(&http, &item(id), Some(&acme)).await;
        assert_eq!(get(&http, &item(id), Some(&acme)).await.x_cache, "HIT");
    }
    let origin = format!("http://{}", gw.listen_addr());
    let encode = |v: &str| v.replace(':', "%3A").replace('/', "%2F");
    let write = gw.url(&format!(
        "/headers?Location={}&Content-Location={}",
        encode("/items/1"),
        encode(&format!("{origin}/items/2"))
    ));
    let w = send(&http, reqwest::Method::POST, &write, Some(&acme), &[], None).await;
    assert_eq!(w.status, 200, "{w:?}");
    let foreign = gw.url(&format!(
        "/headers?Location={}",
        encode("http://elsewhere.example/items/3")
    ));
    send(
        &http,
        reqwest::Method::POST,
        &foreign,
        Some(&acme),
        &[],
        None,
    )
    .await;

    assert_eq!(
        get(&http, &item(1), Some(&acme)).await.x_cache,
        "MISS",
        "Location"
    );
    assert_eq!(
        get(&http, &item(2), Some(&acme)).await.x_cache,
        "MISS",
        "same-origin Content-Location"
    );
    assert_eq!(
        get(&http, &item(3), Some(&acme)).await.x_cache,
        "HIT",
        "another origin's URI is not invalidated"
    );
    assert_eq!(get(&http, &item(4), Some(&acme)).await.x_cache, "HIT");
}

// === What is stored ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fields_named_by_connection_are_not_stored() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Connection=x-hop&X-Hop=1&X-Kept=1");
    assert_eq!(get(&http, &url, None).await.x_cache, "MISS");
    let hit = get(&http, &url, None).await;
    assert_eq!(hit.x_cache, "HIT", "{hit:?}");
    assert_eq!(hit.header("x-kept"), "1");
    assert_eq!(hit.header("x-hop"), "", "{hit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targeted_cache_fields_take_precedence_and_are_not_forwarded() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let cases = [
        // (query, stored?)
        ("Cache-Control=no-store&CDN-Cache-Control=max-age%3D60", true),
        ("Cache-Control=max-age%3D60&CDN-Cache-Control=no-store", false),
        (
            "Cache-Control=max-age%3D60&CDN-Cache-Control=max-age%3D60&Omsgate-Cache-Control=no-store",
            false,
        ),
        (
            "Cache-Control=no-store&CDN-Cache-Control=no-store&Omsgate-Cache-Control=max-age%3D60",
            true,
        ),
    ];
    for (query, stored) in cases {
        let url = gw.url(&format!("/headers?{query}"));
        let first = get(&http, &url, None).await;
        let second = get(&http, &url, None).await;
        assert_eq!(first.x_cache, "MISS", "{query}");
        assert_eq!(second.x_cache == "HIT", stored, "{query}: {second:?}");
        for got in [&first, &second] {
            assert_eq!(got.header("cdn-cache-control"), "", "{query}: {got:?}");
            assert_eq!(got.header("omsgate-cache-control"), "", "{query}: {got:?}");
            assert_ne!(
                got.header("cache-control"),
                "",
                "Cache-Control is forwarded"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn variants_tell_absent_empty_and_repeated_vary_fields_apart() {
    let upstream = TestUpstream::start();
    let routes = PUBLIC_HEADERS_ROUTE;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/headers?Vary=X-V");
    let ask = |values: &'static [&'static str]| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let headers: Vec<(&str, &str)> = values.iter().map(|v| ("x-v", *v)).collect();
            send(&http, reqwest::Method::GET, &url, None, &headers, None)
                .await
                .x_cache
        }
    };
    let variants: [&'static [&'static str]; 4] = [&[], &[""], &["a"], &["a", "b"]];
    for values in variants {
        assert_eq!(
            ask(values).await,
            "MISS",
            "{values:?}: a variant of its own"
        );
        assert_eq!(ask(values).await, "HIT", "{values:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revalidation_carries_the_stored_requests_vary_fields() {
    let upstream = TestUpstream::start();
    let routes = r#"
[[route]]
name = "etag"
path = "/etag/{tag}"
cache = { ttl = "1s", scope = "public", stale_if_error = "60s" }
"#;
    let gw = Gateway::start(&config(upstream.addr, &shared_redis(), routes));
    let http = client();
    let url = gw.url("/etag/v3?body_len=100&Vary=X-V");
    let ask = |value: Option<&'static str>| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let headers: Vec<(&str, &str)> = value.iter().map(|v| ("x-v", *v)).collect();
            send(&http, reqwest::Method::GET, &url, None, &headers, None).await
        }
    };
    assert_eq!(ask(Some("")).await.x_cache, "MISS");
    assert_eq!(ask(Some("a")).await.x_cache, "MISS");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // A request without the field is not revalidating the variant stored for an empty one.
    let absent = ask(None).await;
    assert_eq!(absent.status, 200);
    let seen = upstream
        .last_seen("/etag/v3")
        .expect("the origin was asked");
    assert_eq!(seen.headers.get("if-none-match"), None, "{seen:?}");
    assert_eq!(seen.headers.get("x-v"), None, "{seen:?}");

    // A request of the stored variant revalidates it with the stored request's field.
    let again = ask(Some("a")).await;
    assert_eq!(again.status, 200);
    let seen = upstream
        .last_seen("/etag/v3")
        .expect("the origin was asked");
    assert_eq!(
        seen.headers.get("if-none-match").map(String::as_str),
        Some("\"v3\""),
        "{seen:?}"
    );
    assert_eq!(
        seen.headers.get("x-v").map(String::as_str),
        Some("a"),
        "{seen:?}"
    );
}
