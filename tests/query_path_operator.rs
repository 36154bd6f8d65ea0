//! A pooled query path over an OMS whose schema is not the reference one, set up as an operator
//! would: uuid tenant ids, no line numbers (items ordered by SKU), floats for money, another
//! listing shape (`{"data", "page", "count"}` by page number). The operator's SQL is a migration in
//! a directory of its own (`omsgate migrate --dir`; the bundled migrations that do not fit this
//! schema are skipped), `[queries.NAME]` call it, routes bind them, and the gateway's answers
//! equal those of a small fake OMS over the same data, with one query per request and no request
//! reaching the OMS.

mod cache_util;
mod common;
mod db_support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cache_util::{config, get, token};
use common::{client, Gateway};
use db_support::{database_url, TestSchema};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// One order of the fake OMS.
struct Order {
    tenant: uuid::Uuid,
    id: uuid::Uuid,
    number: String,
    total: f64,
    placed: String,
    /// `(sku, qty, price)` in insertion order (not SKU order).
    items: Vec<(String, i32, f64)>,
}

impl Order {
    /// The fake OMS's document: items by SKU (bytewise), money as JSON numbers.
    fn doc(&self) -> Value {
        let mut items: Vec<&(String, i32, f64)> = self.items.iter().collect();
        items.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        json!({
            "id": self.id.to_string(),
            "number": self.number,
            "total": self.total,
            "placed": self.placed,
            "items": items.iter().map(|(sku, qty, price)| json!({"sku": sku, "qty": qty, "price": price})).collect::<Vec<_>>(),
        })
    }
}

const PAGE_SIZE: usize = 5;

/// The fake OMS: the same orders in memory, tenants from the bearer token.
struct Shop {
    orders: Vec<Order>,
    tokens: HashMap<String, uuid::Uuid>,
    hits: AtomicU64,
}

impl Shop {
    fn answer(&self, req: &Request<hyper::body::Incoming>) -> (u16, Value) {
        let path = req.uri().path();
        if path == "/health" {
            return (200, json!("ok"));
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        // A bearer token, or (the legacy fallback, which query-check uses) x-tenant-id.
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let from_header = header("x-tenant-id").and_then(|t| uuid::Uuid::try_parse(t).ok());
        let tenant = header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.tokens.get(t))
            .or(from_header.as_ref());
        let Some(tenant) = tenant else {
            return (401, json!({"error": "unauthorized"}));
        };
        let not_found = (404, json!({"error": "not found"}));
        if let Some(id) = path.strip_prefix("/shop/orders/") {
            let Ok(id) = uuid::Uuid::try_parse(id) else {
                return not_found;
            };
            return match self
                .orders
                .iter()
                .find(|o| o.tenant == *tenant && o.id == id)
            {
                Some(o) => (200, o.doc()),
                None => not_found,
            };
        }
        if path == "/shop/orders" {
            let page = db_support::query_value(req.uri().query(), "page");
            let page = match page.as_deref() {
                None | Some("") => 1,
                Some(p) => match p.parse::<usize>() {
                    Ok(n) if n >= 1 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                    _ => return (400, json!({"error": "page must be a positive integer"})),
                },
            };
            let mut mine: Vec<&Order> =
                self.orders.iter().filter(|o| o.tenant == *tenant).collect();
            mine.sort_by(|a, b| a.number.as_bytes().cmp(b.number.as_bytes()));
            let data: Vec<Value> = mine
                .iter()
                .skip((page - 1) * PAGE_SIZE)
                .take(PAGE_SIZE)
                .map(|o| o.doc())
                .collect();
            return (
                200,
                json!({"data": data, "page": page, "count": mine.len()}),
            );
        }
        not_found
    }
}

async fn start_shop(shop: Arc<Shop>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let shop = shop.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (status, body) = shop.answer(&req);
                    async move {
                        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
                        *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        resp.headers_mut().insert(
                            "content-type",
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The operator's schema, different from the reference one.
const SCHEMA: &str = "
CREATE TABLE orders (tenant uuid NOT NULL, id uuid PRIMARY KEY, number text NOT NULL,
                     total float8 NOT NULL, placed date NOT NULL);
CREATE TABLE order_items (tenant uuid NOT NULL, order_id uuid NOT NULL, sku text NOT NULL,
                          qty integer NOT NULL, price float8 NOT NULL);
";

/// The operator's migration: the documents the fake OMS writes, one function per route.
const OPERATOR_SQL: &str = r#"
CREATE FUNCTION shop_order_doc(o orders) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', o.id, 'number', o.number, 'total', o.total, 'placed', to_char(o.placed, 'YYYY-MM-DD'),
        'items', COALESCE((SELECT json_agg(json_build_object('sku', i.sku, 'qty', i.qty, 'price', i.price)
                                           ORDER BY i.sku COLLATE "C")
                             FROM order_items i WHERE i.order_id = o.id AND i.tenant = o.tenant), '[]'::json))
$$;
CREATE FUNCTION shop_order(p_tenant uuid, p_id uuid) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT shop_order_doc(o) FROM orders o WHERE o.tenant = p_tenant AND o.id = p_id
$$;
CREATE FUNCTION shop_orders(p_tenant uuid, p_page bigint) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'data', COALESCE((SELECT json_agg(shop_order_doc(x) ORDER BY x.number COLLATE "C")
                            FROM (SELECT * FROM orders o WHERE o.tenant = p_tenant
                                   ORDER BY o.number COLLATE "C" LIMIT 5 OFFSET (p_page - 1) * 5) x),
                         '[]'::json),
        'page', p_page,
        'count', (SELECT count(*) FROM orders WHERE tenant = p_tenant))
$$;
"#;

const QUERIES: &str = r#"
[queries.shop_order]
sql = "SELECT shop_order($tenant::uuid, $id)"
params.id = { from = "path", type = "uuid", error_status = 404, error_body = '{"error":"not found"}' }
on_empty = "404"
empty_body = '{"error":"not found"}'
samples = "SELECT tenant::text AS tenant, id::text AS id FROM orders ORDER BY number"

[queries.shop_orders]
sql = "SELECT shop_orders($tenant::uuid, $page)"
params.page = { type = "int", default = 1, min = 1, error_status = 400, error_body = '{"error":"page must be a positive integer"}' }
samples = "SELECT DISTINCT tenant::text AS tenant, p::text AS page FROM orders, generate_series(1, 4) p ORDER BY 1, 2"
"#;

const ROUTES: &str = r#"
[[route]]
name = "shop_order"
path = "/shop/orders/{id:uuid}"
methods = ["GET"]
query = "shop_order"
[[route]]
name = "shop_orders"
path = "/shop/orders"
methods = ["GET"]
query = "shop_orders"
"#;

/// JSON with every number as a float, so that `15` (PostgreSQL) equals `15.0` (serde_json).
fn numbers_as_floats(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_floats).collect()),
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

fn parse(body: &str) -> Value {
    numbers_as_floats(serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_schema_is_served_from_configured_queries() {
    let s = TestSchema::empty("qo_shop").await;
    s.client.batch_execute(SCHEMA).await.unwrap();
    let tenants = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let skus = ["zeta", "alpha", "Mid", "beta"];
    let mut orders = Vec::new();
    let mut inserts = String::new();
    for (t, tenant) in tenants.iter().enumerate() {
        for n in 0..12usize {
            let id = uuid::Uuid::new_v4();
            let items: Vec<(String, i32, f64)> = (0..n % 5)
                .map(|k| {
                    (
                        skus[k % skus.len()].to_string(),
                        (n % 3 + 1) as i32,
                        0.5 * (k as f64 + 1.0) + 0.25,
                    )
                })
                .collect();
            let o = Order {
                tenant: *tenant,
                id,
                number: format!("SO-{t}-{:03}", 40 - n),
                total: 1.25 * n as f64 + if n % 2 == 0 { 0.0 } else { 0.1 },
                placed: format!("2024-01-{:02}", n + 1),
                items,
            };
            inserts.push_str(&format!(
                "INSERT INTO orders VALUES ('{}', '{}', '{}', {:?}, '{}');\n",
                o.tenant, o.id, o.number, o.total, o.placed
            ));
            for (sku, qty, price) in &o.items {
                inserts.push_str(&format!(
                    "INSERT INTO order_items VALUES ('{}', '{}', '{sku}', {qty}, {price:?});\n",
                    o.tenant, o.id
                ));
            }
            orders.push(o);
        }
    }
    s.client.batch_execute(&inserts).await.unwrap();

    // The operator's migration, applied after the bundled ones (which do not fit and are skipped).
    let dir = common::TestDir::new("qo_migrations");
    std::fs::write(dir.path().join("0001_shop_functions.sql"), OPERATOR_SQL).unwrap();
    let url = database_url();
    let out = std::process::Command::new(Gateway::bin())
        .args([
            "migrate",
            "--database-url",
            &url,
            "--schema",
            &s.name,
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Skipping 0006_query_functions: no table invoices"),
        "{text}"
    );
    assert!(
        text.contains("operator 0001_shop_functions ... done"),
        "{text}"
    );

    let tokens: Vec<String> = tenants
        .iter()
        .map(|t| token(&t.to_string(), "u1"))
        .collect();
    let shop = Arc::new(Shop {
        orders,
        tokens: tokens.iter().cloned().zip(tenants).collect(),
        hits: AtomicU64::new(0),
    });
    let shop_addr = start_shop(shop.clone()).await;
    let database = format!(
        "[database]\nurl = \"{url}\"\nschema = \"{}\"\nmin_idle = 1\nmax_connections = 4\n\
         acquire_timeout = \"500ms\"\nconnect_timeout = \"500ms\"\n",
        s.name
    );
    let gw_config = format!("{}\n{database}\n{QUERIES}", config(shop_addr, "", ROUTES));

    // `check-config --database` accepts the queries against this schema.
    let config_dir = common::TestDir::new("qo_config");
    let config_path = config_dir.path().join("config.toml");
    std::fs::write(
        &config_path,
        gw_config
            .replace("{listen}", "127.0.0.1:0")
            .replace("{admin}", "127.0.0.1:1"),
    )
    .unwrap();
    let out = std::process::Command::new(Gateway::bin())
        .args(["check-config", "--database"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let gw = Gateway::start(&gw_config);
    let http = client();
    let mut requests: Vec<(usize, String)> = Vec::new();
    for (i, o) in shop.orders.iter().enumerate().step_by(3) {
        let t = tenants.iter().position(|t| *t == o.tenant).unwrap();
        requests.push((t, format!("/shop/orders/{}", o.id)));
        // The other tenant asks for this tenant's order.
        requests.push((1 - t, format!("/shop/orders/{}", o.id)));
        if i % 2 == 0 {
            // Another spelling of the id (the route's {id:uuid} makes it canonical).
            requests.push((t, format!("/shop/orders/{}", o.id.simple())));
        }
    }
    requests.push((0, format!("/shop/orders/{}", uuid::Uuid::new_v4())));
    for t in 0..2 {
        for q in [
            "",
            "?page=1",
            "?page=2",
            "?page=3",
            "?page=4",
            "?page=",
            "?page=0",
            "?page=x",
            "?page=-1",
            "?page=2&page=3",
        ] {
            requests.push((t, format!("/shop/orders{q}")));
        }
    }
    let db_queries = |gw: &Gateway| -> f64 {
        ["shop_order", "shop_orders"]
            .iter()
            .map(|q| {
                gw.metric_value("omsgate_db_query_duration_seconds_count", &[("query", q)])
                    .unwrap_or(0.0)
            })
            .sum()
    };
    let before = db_queries(&gw);
    let oms_before = shop.hits.load(Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::new();
    let mut to_database = 0.0;
    for (t, path) in &requests {
        let got = get(&http, &gw.url(path), Some(&tokens[*t])).await;
        let want = get(
            &http,
            &format!("http://{shop_addr}{path}"),
            Some(&tokens[*t]),
        )
        .await;
        assert_eq!(
            (got.status, parse(&got.body)),
            (want.status, parse(&want.body)),
            "tenant {t} {path}"
        );
        *statuses.entry(want.status).or_insert(0) += 1;
        if want.status != 400 {
            to_database += 1.0;
        }
    }
    assert_eq!(statuses.len(), 3, "200s, 404s and 400s: {statuses:?}");
    // Only the direct requests reached the OMS; each gateway request that needed the database ran
    // exactly one query (a bad page is answered without one).
    assert_eq!(
        shop.hits.load(Ordering::Relaxed) - oms_before,
        requests.len() as u64
    );
    assert_eq!(db_queries(&gw) - before, to_database);
    drop(gw);

    // query-check: the same requests to the OMS and the pooled queries, compared.
    let query_check = |route: Option<&str>| {
        let mut cmd = std::process::Command::new(Gateway::bin());
        cmd.args(["query-check", "--samples", "30", "-c"])
            .arg(&config_path);
        if let Some(r) = route {
            cmd.args(["--route", r]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let row = |text: &str, route: &str| -> Vec<String> {
        text.lines()
            .find(|l| l.starts_with(&format!("{route} ")))
            .unwrap_or_else(|| panic!("no row {route}: {text}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let (code, text) = query_check(None);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        row(&text, "shop_order")[2..],
        ["24", "24", "0", "0"],
        "{text}"
    );
    assert_eq!(
        row(&text, "shop_orders")[2..],
        ["8", "8", "0", "0"],
        "{text}"
    );

    // A planted difference: a rounding change in the function behind both routes.
    s.client
        .batch_execute(
            &OPERATOR_SQL
                .split("CREATE FUNCTION shop_order(")
                .next()
                .unwrap()
                .replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
                .replace("'total', o.total", "'total', round(o.total::numeric, 1)"),
        )
        .await
        .unwrap();
    let (code, text) = query_check(Some("shop_order"));
    assert_eq!(code, Some(1), "{text}");
    let cells = row(&text, "shop_order");
    assert_ne!(cells[4], "0", "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("different: GET /shop/orders/")
                && l.contains(": $.total: pooled 3.9, OMS 3.85")),
        "{text}"
    );
    assert!(
        !text.contains("shop_orders "),
        "--route checks one route: {text}"
    );
    s.drop_schema().await;
}
