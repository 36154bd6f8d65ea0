//! The pooled query path in the request pipeline: turns a request on a route with a `query`
//! binding into the legacy API's response, straight from the pool.
//!
//! Runs in `proxy_upstream_filter`, that is after the cache lookup missed, so the cache stays in
//! front of the database exactly as it stays in front of the OMS; the proxy stores the answer
//! like an origin response (`cache::store_local`). Writes never come here (the config allows
//! `query` only on GET/HEAD routes).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;

use super::metrics::{count_fallback, FallbackReason};
use super::{DatabaseConfig, QueryPaths};
use crate::config::Config;
use crate::proxy::Ctx;

/// The process's pool, with the settings it was built from: a reload that leaves `[database]`
/// as it was keeps the pool (and its open connections); one that changes it gets a new pool.
static POOL: Mutex<Option<(DatabaseConfig, Arc<Pool>)>> = Mutex::new(None);

/// The pooled query paths and whether their idle connections were opened yet.
#[derive(Debug)]
pub struct Pool {
    /// The query paths over the pool.
    pub paths: QueryPaths,
    warmed: AtomicBool,
}

/// The pool for `config` when a route has a `query` binding and a database URL is configured
/// (the config check demands one); `None` otherwise. No connection is opened here: the first
/// pooled request opens `min_idle` of them in the background.
pub fn pool_for(config: &Config) -> Option<Arc<Pool>> {
    if !config.routes.routes.iter().any(|r| r.query.is_some()) {
        return None;
    }
    for q in config.queries.iter() {
        super::metrics::register_query(&q.name);
    }
    config.database.url.as_ref()?;
    let mut current = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((settings, pool)) = current.as_ref() {
        if *settings == config.database {
            return Some(pool.clone());
        }
    }
    match QueryPaths::new(&config.database) {
        Ok(paths) => {
            let pool = Arc::new(Pool {
                paths,
                warmed: AtomicBool::new(false),
            });
            *current = Some((config.database.clone(), pool.clone()));
            Some(pool)
        }
        Err(e) => {
            tracing::error!(error = %e, "Cannot build the database pool; query routes go to the OMS.");
            None
        }
    }
}

/// Updates the pool gauges (`omsgate_db_pool{state}`), at scrape time.
pub fn update_gauges() {
    let current = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, pool)) = current.as_ref() {
        pool.paths.update_pool_gauges();
    }
}

/// The legacy API's response for this request when the pooled path can give it: the header as
/// the OMS would send it (`content-type`, `content-length`) and the body. `None` sends the
/// request to the OMS: no binding, no verified tenant, or any database trouble (each counted in
/// `omsgate_db_fallbacks_total{reason}` by the query layer or here).
pub async fn answer(session: &Session, ctx: &Ctx) -> Option<(ResponseHeader, Bytes)> {
    let route = ctx.route();
    let query = route.query.as_deref()?;
    let query = ctx.pipeline.config.queries.get(query)?;
    let pool = ctx.pipeline.query_paths.as_ref()?;
    if !pool.warmed.swap(true, Ordering::Relaxed) {
        let p = pool.clone();
        tokio::spawn(async move { p.paths.warm().await });
    }
    let paths = &pool.paths;
    // The tenant comes from verified credentials only; a request without one is the OMS's to
    // judge (it answers 401/403 as it always did).
    let Some(tenant) = ctx.identity.tenant.as_deref().filter(|t| !t.is_empty()) else {
        count_fallback(FallbackReason::NoTenant);
        return None;
    };
    let req = session.req_header();
    let response = match paths
        .answer(
            query,
            tenant,
            ctx.identity.subject.as_deref(),
            &ctx.params,
            req.uri.query(),
        )
        .await
    {
        Ok(Some(r)) => r,
        Ok(None) => return None,
        Err(e) => {
            tracing::debug!(request_id = %ctx.request_id, route = %route.name, error = %e, "Pooled query failed; asking the OMS.");
            return None;
        }
    };
    let mut header = ResponseHeader::build(response.status, Some(2)).ok()?;
    header
        .insert_header(http::header::CONTENT_TYPE, response.content_type.as_str())
        .ok()?;
    header
        .insert_header(
            http::header::CONTENT_LENGTH,
            response.body.len().to_string(),
        )
        .ok()?;
    Some((header, response.body))
}
