//! omsgate: a Pingora gateway in front of a slow legacy multi-tenant Order/Invoice Management
//! System. See `README.md` for the product and `src/proxy.rs` for the request pipeline.
#![forbid(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod cache;
pub mod canonical;
pub mod cli;
pub mod compress;
pub mod config;
pub mod db;
pub mod http_get;
pub mod identity;
pub mod lifecycle;
pub mod limit;
pub mod loadtest;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod redis_topology;
pub mod reload;
pub mod request_body;
pub mod respond;
pub mod routes;
pub mod server;
pub mod sim;
pub mod tls;
pub mod units;
pub mod upstream;
