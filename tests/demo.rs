//! `omsgate demo` as a newcomer runs it: the gateway in front of the built-in simulated OMS, with
//! the in-memory cache; and `demo --seed-db`, which also answers the read routes from a seeded
//! PostgreSQL schema through the pooled query paths.

mod common;
mod db_support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{client, free_port, http_get, port_open, tail, wait_for, Gateway, TestDir};
use omsgate::sim::DEMO_JWT_SECRET;

struct Demo {
    child: Child,
    gateway: String,
    oms: String,
    log: std::path::PathBuf,
    _dir: TestDir,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Demo {
    fn start(extra: &[&str]) -> Demo {
        Demo::try_start(extra).unwrap_or_else(|log| panic!("demo did not start:\n{log}"))
    }

    /// Starts the demo; the log tail when it exits or does not listen within 60 s.
    fn try_start(extra: &[&str]) -> Result<Demo, String> {
        let dir = TestDir::new("demo");
        let (listen, admin, oms) = (free_port(), free_port(), free_port());
        let log = dir.path().join("demo.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(Gateway::bin())
            .arg("demo")
            .args(["--listen", &format!("127.0.0.1:{listen}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--oms", &format!("127.0.0.1:{oms}")])
            .args(["--latency-ms", "20", "--tenants", "2", "--invoices", "30"])
            .args(extra)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut demo = Demo {
            child,
            gateway: format!("http://127.0.0.1:{listen}"),
            oms: format!("http://127.0.0.1:{oms}"),
            log,
            _dir: dir,
        };
        let mut exited = false;
        let up = wait_for(Duration::from_secs(60), || {
            exited = matches!(demo.child.try_wait(), Ok(Some(_)));
            // Ready: listening, and the simulated OMS is up and health-checked.
            exited
                || (port_open(format!("127.0.0.1:{listen}").parse().unwrap())
                    && http_get(
                        format!("127.0.0.1:{admin}").parse().unwrap(),
                        "/ready",
                        Duration::from_secs(2),
                    )
                    .is_some_and(|(status, _)| status == 200))
        });
        if !up || exited {
            return Err(demo.log_tail());
        }
        Ok(demo)
    }

    fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
    }

    /// `GET path` as tenant acme: status, x-cache, body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let token = omsgate::identity::issue_hs256(
            DEMO_JWT_SECRET,
            "tenant_id",
            "acme",
            "alice",
            Duration::from_secs(600),
        );
        let resp = client()
            .get(format!("{}{path}", self.gateway))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let x_cache = resp
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (status, x_cache, resp.text().await.unwrap())
    }

    /// Requests the simulated OMS served, by route.
    async fn oms_stats(&self) -> serde_json::Value {
        let stats: serde_json::Value = client()
            .get(format!("{}/__stats", self.oms))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["by_route"].clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_simulated_oms_through_the_cache() {
    let demo = Demo::start(&[]);
    let (status, x_cache, body) = demo.get("/api/v1/invoices?limit=2").await;
    assert_eq!((status, x_cache.as_str()), (200, "MISS"), "{body}");
    let again = demo.get("/api/v1/invoices?limit=2").await;
    assert_eq!((again.0, again.1.as_str()), (200, "HIT"));
    assert_eq!(again.2, body);
    assert_eq!(demo.oms_stats().await["invoice_list"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_seed_db_answers_reads_from_postgresql() {
    let schema = db_support::unique("demo_seed");
    let demo = Demo::start(&[
        "--seed-db",
        &db_support::database_url(),
        "--db-schema",
        &schema,
    ]);
    let (status, x_cache, list) = demo.get("/api/v1/invoices?limit=3").await;
    assert_eq!((status, x_cache.as_str()), (200, "MISS"), "{list}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let id = list["items"][0]["id"].as_str().unwrap().to_string();
    let (status, _, invoice) = demo.get(&format!("/api/v1/invoices/{id}")).await;
    assert_eq!(status, 200, "{invoice}\n{}", demo.log_tail());
    let invoice: serde_json::Value = serde_json::from_str(&invoice).unwrap();
    assert_eq!(invoice["id"], id.as_str());
    assert!(invoice["lines"].as_array().is_some_and(|l| !l.is_empty()));
    let stats = demo.oms_stats().await;
    assert_eq!(
        (
            stats["invoice_list"].as_u64(),
            stats["invoice_get"].as_u64()
        ),
        (Some(0), Some(0)),
        "both answered from PostgreSQL, not the OMS: {stats}\n{}",
        demo.log_tail()
    );
    drop(demo);
    let admin = omsgate::db::connect(&db_support::database_url())
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {} CASCADE",
            omsgate::db::quote_ident(&schema)
        ))
        .await
        .unwrap();
}
