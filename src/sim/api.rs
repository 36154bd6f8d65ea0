//! The simulated OMS's HTTP surface: routing, the worker pool, identity, and the endpoints.
//!
//! - `GET /api/v1/invoices?status=&limit=&offset=`, `POST /api/v1/invoices`
//! - `GET | PUT | PATCH | DELETE /api/v1/invoices/{id}`
//! - `GET /api/v1/payments?invoice_id=&limit=&offset=`
//! - `GET /health`, `GET /__stats`, `POST /__stats/reset`, `/__echo[/...]` (any method)
//!
//! Every request under any other path than the last four is an API request: it is counted,
//! waits for a worker (FIFO), holds it for the latency, and only then is authenticated and
//! answered, the way the legacy app's synchronous middleware makes even a 401 slow. Errors are
//! `{"detail": "..."}` like FastAPI's.

use std::io::Write as _;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde_json::{json, Map, Value};
use tokio::sync::{Semaphore, SemaphorePermit};
use uuid::Uuid;

use super::data::{self, Invoice, InvoiceLine, CURRENCIES, STATUSES};
use super::query::QueryString as Query;
use super::store::Store;
use super::{SimOptions, SimStats};

/// Largest request body accepted.
const MAX_BODY: usize = 1024 * 1024;
/// Most lines an invoice written through the API may have.
const MAX_LINES: usize = 100;

// === Routes ===

/// What an API request asks for; also the `by_route` label of the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    InvoiceList,
    InvoiceCreate,
    InvoiceGet,
    InvoiceReplace,
    InvoicePatch,
    InvoiceDelete,
    PaymentList,
    /// No such path.
    NotFound,
    /// A known path with a method it does not serve.
    MethodNotAllowed,
}

/// `by_route` labels, indexed by [`Route::stat`].
const ROUTE_NAMES: [&str; 8] = [
    "invoice_list",
    "invoice_create",
    "invoice_get",
    "invoice_replace",
    "invoice_patch",
    "invoice_delete",
    "payment_list",
    "unknown",
];

impl Route {
    fn stat(self) -> usize {
        match self {
            Route::InvoiceList => 0,
            Route::InvoiceCreate => 1,
            Route::InvoiceGet => 2,
            Route::InvoiceReplace => 3,
            Route::InvoicePatch => 4,
            Route::InvoiceDelete => 5,
            Route::PaymentList => 6,
            Route::NotFound | Route::MethodNotAllowed => 7,
        }
    }

    /// The route of `method path`, and the invoice id segment where the path has one.
    fn of<'p>(method: &Method, path: &'p str) -> (Route, Option<&'p str>) {
        let get = method == Method::GET || method == Method::HEAD;
        match path {
            "/api/v1/invoices" if get => (Route::InvoiceList, None),
            "/api/v1/invoices" if method == Method::POST => (Route::InvoiceCreate, None),
            "/api/v1/invoices" => (Route::MethodNotAllowed, None),
            "/api/v1/payments" if get => (Route::PaymentList, None),
            "/api/v1/payments" => (Route::MethodNotAllowed, None),
            _ => match path.strip_prefix("/api/v1/invoices/") {
                Some(id) if !id.is_empty() && !id.contains('/') => {
                    let route = match *method {
                        Method::GET | Method::HEAD => Route::InvoiceGet,
                        Method::PUT => Route::InvoiceReplace,
                        Method::PATCH => Route::InvoicePatch,
                        Method::DELETE => Route::InvoiceDelete,
                        _ => Route::MethodNotAllowed,
                    };
                    (route, Some(id))
                }
                _ => (Route::NotFound, None),
            },
        }
    }
}

/// The path as uvicorn hands it to Starlette: every `%XX` decoded (`%2F` included), malformed
/// escapes kept, bytes that are not UTF-8 replaced by U+FFFD (Python's `unquote`).
fn unquote(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === Stats ===

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    by_route: [AtomicU64; ROUTE_NAMES.len()],
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    queued: AtomicU64,
    health: AtomicU64,
    echo: AtomicU64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> SimStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            requests: get(&self.requests),
            by_route: ROUTE_NAMES
                .iter()
                .zip(&self.by_route)
                .map(|(name, c)| ((*name).to_string(), get(c)))
                .collect(),
            in_flight: get(&self.in_flight),
            max_in_flight: get(&self.max_in_flight),
            queued: get(&self.queued),
            health: get(&self.health),
            echo: get(&self.echo),
        }
    }

    pub(crate) fn reset(&self) {
        for c in [&self.requests, &self.health, &self.echo]
            .into_iter()
            .chain(&self.by_route)
        {
            c.store(0, Ordering::Relaxed);
        }
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn count(&self, route: Route) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.by_route[route.stat()].fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped, so cancelled requests leave the gauges right.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(c: &'a AtomicU64) -> (Gauge<'a>, u64) {
        (Gauge(c), c.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A held worker.
struct Worker<'a> {
    _permit: Option<SemaphorePermit<'a>>,
    _in_flight: Gauge<'a>,
}

// === Shared ===

/// State shared by every connection of one simulated OMS.
pub(crate) struct Shared {
    pub(crate) options: SimOptions,
    pub(crate) stats: Stats,
    store: RwLock<Store>,
    workers: Semaphore,
    latency_nanos: AtomicU64,
    /// Status every API request fails with; 0 for none.
    failure: AtomicU16,
    tenant_header: HeaderName,
    key: DecodingKey,
    validation: Validation,
}

impl Shared {
    pub(crate) fn new(options: SimOptions) -> std::io::Result<Shared> {
        let tenant_header = HeaderName::from_bytes(
            options.tenant_header.to_ascii_lowercase().as_bytes(),
        )
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "sim tenant_header `{}` is not a valid header name",
                    options.tenant_header
                ),
            )
        })?;
        let mut validation = Validation::new(Algorithm::HS256);
        // Supabase tokens carry `aud: authenticated`; the legacy app does not check it.
        validation.validate_aud = false;
        let permits = if options.workers == 0 {
            Semaphore::MAX_PERMITS
        } else {
            options.workers
        };
        let shared = Shared {
            store: RwLock::new(Store::new(options.dataset())),
            workers: Semaphore::new(permits),
            latency_nanos: AtomicU64::new(0),
            failure: AtomicU16::new(0),
            tenant_header,
            key: DecodingKey::from_secret(options.jwt_secret.as_bytes()),
            validation,
            stats: Stats::default(),
            options,
        };
        shared.set_latency(shared.options.latency);
        Ok(shared)
    }

    pub(crate) fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }

    pub(crate) fn set_failure(&self, status: Option<StatusCode>) {
        self.failure
            .store(status.map_or(0, |s| s.as_u16()), Ordering::Relaxed);
    }

    fn failure(&self) -> Option<StatusCode> {
        match self.failure.load(Ordering::Relaxed) {
            0 => None,
            code => StatusCode::from_u16(code).ok(),
        }
    }

    /// Waits for a worker in arrival order (tokio's semaphore is fair).
    async fn worker(&self) -> Worker<'_> {
        let permit = {
            let _queued = Gauge::up(&self.stats.queued);
            // The semaphore is never closed; without a permit the request just runs.
            self.workers.acquire().await.ok()
        };
        let (in_flight, now) = Gauge::up(&self.stats.in_flight);
        self.stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Worker {
            _permit: permit,
            _in_flight: in_flight,
        }
    }

    /// The request's tenant: from a verified bearer token when one is sent, else from the
    /// tenant header.
    fn tenant(&self, headers: &HeaderMap) -> Option<String> {
        let bearer = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        if let Some(token) = bearer {
            let data =
                jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
                    .ok()?;
            return match data.claims.get(&self.options.tenant_claim) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
        }
        headers
            .get(&self.tenant_header)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    // === impl Shared: dispatch ===

    /// Answers one request; never fails.
    pub(crate) async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let request_id = req.headers().get("x-request-id").cloned();
        let traceparent = req.headers().get("traceparent").cloned();
        let mut resp = self.dispatch(req).await;
        if let Some(v) = request_id {
            resp.headers_mut().insert("x-sim-request-id", v);
        }
        if let Some(v) = traceparent {
            resp.headers_mut().insert("x-sim-traceparent", v);
        }
        resp
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path();
        let method = req.method();
        let get = method == Method::GET || method == Method::HEAD;
        match path {
            "/health" if get => {
                self.stats.health.fetch_add(1, Ordering::Relaxed);
                json_response(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
            }
            "/__stats" if get => json_response(
                StatusCode::OK,
                serde_json::to_vec(&self.stats.snapshot()).unwrap_or_default(),
            ),
            "/__stats/reset" if method == Method::POST => {
                self.stats.reset();
                json_response(StatusCode::OK, &b"{\"status\":\"ok\"}"[..])
            }
            "/health" | "/__stats" | "/__stats/reset" => {
                detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            }
            _ if path == "/__echo" || path.starts_with("/__echo/") => self.echo(req).await,
            _ if path.starts_with("/__blob/") && get => blob(&path["/__blob/".len()..]),
            _ if path.starts_with("/__invoices/") && get => {
                invoice_page(&path["/__invoices/".len()..])
            }
            _ => self.api(req).await,
        }
    }

    /// `/__echo`: the request as received, without latency.
    async fn echo(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        self.stats.echo.fetch_add(1, Ordering::Relaxed);
        let (parts, body) = req.into_parts();
        let body = match read_body(body).await {
            Ok(b) => b,
            Err(reject) => return reject.into_response(),
        };
        let mut headers = Map::new();
        for name in parts.headers.keys() {
            let values: Vec<String> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            headers.insert(name.as_str().to_string(), Value::String(values.join(", ")));
        }
        let echo = json!({
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "query": parts.uri.query().unwrap_or(""),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        });
        json_response(StatusCode::OK, echo.to_string())
    }

    /// An API request: counted, queued for a worker, delayed, then answered.
    async fn api(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let (parts, body) = req.into_parts();
        let path = if self.options.legacy_paths {
            unquote(parts.uri.path())
        } else {
            parts.uri.path().to_string()
        };
        let (route, id) = Route::of(&parts.method, &path);
        self.stats.count(route);
        // The body arrives before a worker picks the request up, as with uvicorn.
        let body = match route {
            Route::InvoiceCreate | Route::InvoiceReplace | Route::InvoicePatch => {
                match read_body(body).await {
                    Ok(b) => b,
                    Err(reject) => return reject.into_response(),
                }
            }
            _ => Bytes::new(),
        };
        let _worker = self.worker().await;
        let latency = self.latency();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(status) = self.failure() {
            return detail(status, "Simulated failure");
        }
        match route {
            Route::NotFound => return detail(StatusCode::NOT_FOUND, "Not Found"),
            Route::MethodNotAllowed => {
                return detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            }
            _ => {}
        }
        let Some(tenant) = self.tenant(&parts.headers) else {
            return detail(StatusCode::UNAUTHORIZED, "Not authenticated");
        };
        let query = Query::parse(parts.uri.query().unwrap_or(""));
        let id = id.map(|id| Uuid::try_parse(id).ok());
        let result = match (route, id) {
            (Route::InvoiceList, _) => self.list_invoices(&tenant, &query),
            (Route::InvoiceCreate, _) => self.create_invoice(&tenant, &body),
            (Route::PaymentList, _) => self.list_payments(&tenant, &query),
            // A malformed id names no invoice: 404 like an unknown one.
            (_, Some(None)) | (_, None) => Err(not_found()),
            (Route::InvoiceGet, Some(Some(id))) => self
                .store
                .read()
                .invoice(&tenant, id)
                .map(|s| json_response(StatusCode::OK, s.json().clone()))
                .ok_or_else(not_found),
            (Route::InvoiceReplace, Some(Some(id))) => self.replace_invoice(&tenant, id, &body),
            (Route::InvoicePatch, Some(Some(id))) => self.patch_invoice(&tenant, id, &body),
            (Route::InvoiceDelete, Some(Some(id))) => {
                if self.store.write().delete(&tenant, id) {
                    let mut resp = Response::new(Full::new(Bytes::new()));
                    *resp.status_mut() = StatusCode::NO_CONTENT;
                    Ok(resp)
                } else {
                    Err(not_found())
                }
            }
            (Route::NotFound | Route::MethodNotAllowed, _) => Err(not_found()),
        };
        result.unwrap_or_else(Reject::into_response)
    }

    // === impl Shared: endpoints ===

    fn list_invoices(&self, tenant: &str, q: &Query) -> Reply {
        let (limit, offset) = q.page().map_err(unprocessable)?;
        let status = match q.get("status") {
            None | Some("") => None,
            Some(s) if STATUSES.contains(&s) => Some(s),
            Some(_) => {
                return Err(unprocessable(
                    "status must be one of draft, open, paid, void",
                ))
            }
        };
        let page = self
            .store
            .read()
            .list_invoices(tenant, status, limit, offset);
        let size: usize = page.items.iter().map(|s| s.json().len() + 1).sum();
        let mut out = Vec::with_capacity(size + 64);
        out.extend_from_slice(b"{\"items\":[");
        for (i, s) in page.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(s.json());
        }
        let _ = write!(
            out,
            "],\"total\":{},\"limit\":{limit},\"offset\":{offset}}}",
            page.total
        );
        Ok(json_response(StatusCode::OK, out))
    }

    fn list_payments(&self, tenant: &str, q: &Query) -> Reply {
        let (limit, offset) = q.page().map_err(unprocessable)?;
        let invoice_id = match q.get("invoice_id") {
            None | Some("") => None,
            Some(id) => {
                Some(Uuid::try_parse(id).map_err(|_| unprocessable("invoice_id must be a UUID"))?)
            }
        };
        let page = self
            .store
            .read()
            .list_payments(tenant, invoice_id, limit, offset, |p| {
                serde_json::to_vec(p).unwrap_or_default()
            });
        let mut out =
            Vec::with_capacity(page.items.iter().map(|p| p.len() + 1).sum::<usize>() + 64);
        out.extend_from_slice(b"{\"items\":[");
        for (i, p) in page.items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(p);
        }
        let _ = write!(
            out,
            "],\"total\":{},\"limit\":{limit},\"offset\":{offset}}}",
            page.total
        );
        Ok(json_response(StatusCode::OK, out))
    }

    fn create_invoice(&self, tenant: &str, body: &[u8]) -> Reply {
        let fields = InvoiceFields::parse(&json_object(body)?).map_err(|e| unprocessable(&e))?;
        let now = data::timestamp(unix_now());
        let invoice = Invoice {
            id: data::random_uuid(&mut rand::rng()),
            tenant_id: tenant.to_string(),
            invoice_number: String::new(),
            invoice_status: fields.status,
            invoice_date: fields.date,
            customer: fields.customer,
            currency: fields.currency,
            total_cents: fields.total_cents,
            created_at: now.clone(),
            updated_at: now,
            lines: fields.lines,
        };
        let stored = self.store.write().create(invoice);
        Ok(json_response(StatusCode::CREATED, stored.json().clone()))
    }

    fn replace_invoice(&self, tenant: &str, id: Uuid, body: &[u8]) -> Reply {
        let fields = InvoiceFields::parse(&json_object(body)?).map_err(|e| unprocessable(&e))?;
        let stored = self
            .store
            .write()
            .update(tenant, id, |inv| {
                inv.customer = fields.customer;
                inv.currency = fields.currency;
                inv.invoice_date = fields.date;
                inv.invoice_status = fields.status;
                inv.total_cents = fields.total_cents;
                inv.lines = fields.lines;
                inv.updated_at = next_updated_at(&inv.updated_at);
            })
            .ok_or_else(not_found)?;
        Ok(json_response(StatusCode::OK, stored.json().clone()))
    }

    fn patch_invoice(&self, tenant: &str, id: Uuid, body: &[u8]) -> Reply {
        let patch = Patch::parse(&json_object(body)?).map_err(|e| unprocessable(&e))?;
        let stored = self
            .store
            .write()
            .update(tenant, id, |inv| {
                if let Some(v) = patch.customer {
                    inv.customer = v;
                }
                if let Some(v) = patch.currency {
                    inv.currency = v;
                }
                if let Some(v) = patch.date {
                    inv.invoice_date = v;
                }
                if let Some(v) = patch.status {
                    inv.invoice_status = v;
                }
                inv.updated_at = next_updated_at(&inv.updated_at);
            })
            .ok_or_else(not_found)?;
        Ok(json_response(StatusCode::OK, stored.json().clone()))
    }
}

// === Request parsing ===

async fn read_body(body: Incoming) -> Result<Bytes, Reject> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request body too large".into(),
        )),
        Err(_) => Err(Reject(
            StatusCode::BAD_REQUEST,
            "Could not read the request body".into(),
        )),
    }
}

fn json_object(body: &[u8]) -> Result<Map<String, Value>, Reject> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(unprocessable("body must be a JSON object")),
        Err(e) => Err(unprocessable(&format!("body is not valid JSON: {e}"))),
    }
}

/// The fields of a created or fully replaced invoice.
struct InvoiceFields {
    customer: String,
    currency: String,
    date: String,
    status: String,
    lines: Vec<InvoiceLine>,
    total_cents: i64,
}

impl InvoiceFields {
    fn parse(body: &Map<String, Value>) -> Result<InvoiceFields, String> {
        let required = |key: &str| body.get(key).ok_or_else(|| format!("{key} is required"));
        let customer = customer(required("customer")?)?;
        let currency = currency(required("currency")?)?;
        let date = invoice_date(required("invoice_date")?)?;
        let status = match body.get("invoice_status") {
            None | Some(Value::Null) => "draft".to_string(),
            Some(v) => status(v)?,
        };
        let Some(Value::Array(items)) = body.get("lines") else {
            return Err("lines is required and must be an array".into());
        };
        if items.is_empty() || items.len() > MAX_LINES {
            return Err(format!("lines must have 1 to {MAX_LINES} items"));
        }
        let mut lines = Vec::with_capacity(items.len());
        let mut total_cents: i64 = 0;
        for (i, item) in items.iter().enumerate() {
            let line = line(i, item)?;
            total_cents = total_cents
                .checked_add(line.amount_cents)
                .ok_or_else(|| "total is too large".to_string())?;
            lines.push(line);
        }
        Ok(InvoiceFields {
            customer,
            currency,
            date,
            status,
            lines,
            total_cents,
        })
    }
}

/// A PATCH: the fields present.
struct Patch {
    customer: Option<String>,
    currency: Option<String>,
    date: Option<String>,
    status: Option<String>,
}

impl Patch {
    fn parse(body: &Map<String, Value>) -> Result<Patch, String> {
        Ok(Patch {
            customer: body.get("customer").map(customer).transpose()?,
            currency: body.get("currency").map(currency).transpose()?,
            date: body.get("invoice_date").map(invoice_date).transpose()?,
            status: body.get("invoice_status").map(status).transpose()?,
        })
    }
}

fn customer(v: &Value) -> Result<String, String> {
    match v.as_str().map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().count() <= 200 => Ok(s.to_string()),
        _ => Err("customer must be a non-empty string of at most 200 characters".into()),
    }
}

fn currency(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if CURRENCIES.contains(&s) => Ok(s.to_string()),
        _ => Err("currency must be one of EUR, USD, GBP".into()),
    }
}

fn invoice_date(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if data::parse_date(s).is_some() => Ok(s.to_string()),
        _ => Err("invoice_date must be a date like 2024-01-31".into()),
    }
}

fn status(v: &Value) -> Result<String, String> {
    match v.as_str() {
        Some(s) if STATUSES.contains(&s) => Ok(s.to_string()),
        _ => Err("invoice_status must be one of draft, open, paid, void".into()),
    }
}

fn line(i: usize, v: &Value) -> Result<InvoiceLine, String> {
    let at = |what: &str| format!("lines[{i}].{what}");
    let sku = match v.get("sku").and_then(Value::as_str).map(str::trim) {
        Some(s) if !s.is_empty() && s.len() <= 64 => s.to_string(),
        _ => {
            return Err(at(
                "sku must be a non-empty string of at most 64 characters",
            ))
        }
    };
    let description = match v.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.chars().count() <= 500 => s.clone(),
        Some(_) => return Err(at("description must be a string of at most 500 characters")),
    };
    let quantity = v
        .get("quantity")
        .and_then(Value::as_i64)
        .filter(|q| (1..=1_000_000).contains(q))
        .ok_or_else(|| at("quantity must be an integer from 1 to 1000000"))?;
    let unit_price_cents = match v.get("unit_price") {
        Some(Value::String(s)) => data::parse_money(s),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(whole) => whole.checked_mul(100),
            None => data::parse_money(&n.to_string()),
        },
        _ => None,
    }
    .filter(|c| (0..=10_000_000_000).contains(c))
    .ok_or_else(|| at("unit_price must be an amount like \"12.50\" from 0 to 100000000"))?;
    Ok(InvoiceLine {
        id: data::random_uuid(&mut rand::rng()),
        line_no: i as i32 + 1,
        sku,
        description,
        quantity: quantity as i32,
        unit_price_cents,
        amount_cents: quantity * unit_price_cents,
    })
}

// === Responses ===

/// `/__blob/{n}`: `n` bytes (at most 8 MiB) of deterministic JSON, without latency or worker
/// slot: the fixed-size response the benches proxy.
fn blob(size: &str) -> Response<Full<Bytes>> {
    let Ok(n) = size.parse::<usize>() else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "size must be a number of bytes",
        );
    };
    let n = n.clamp(16, 8 << 20);
    let mut body = Vec::with_capacity(n);
    body.extend_from_slice(b"{\"data\":\"");
    let mut i = 0u32;
    while body.len() < n - 2 {
        body.push(b'a' + (i % 26) as u8);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    body.extend_from_slice(b"\"}");
    json_response(StatusCode::OK, body)
}

/// `/__invoices/{n}`: a JSON array of whole invoices as the list endpoints write them, cut to at
/// most `n` bytes (at most 1 MiB; deterministic), without latency or worker slot: a bench body
/// that compresses like the real API's, unlike `/__blob`'s letters.
fn invoice_page(size: &str) -> Response<Full<Bytes>> {
    static INVOICES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let Ok(n) = size.parse::<usize>() else {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "size must be a number of bytes",
        );
    };
    let n = n.clamp(2, 1 << 20);
    let invoices = INVOICES.get_or_init(|| {
        data::generate(7, 1, 4000)
            .invoices
            .iter()
            .map(|inv| data::invoice_json(inv).to_string())
            .collect()
    });
    json_response(StatusCode::OK, data::json_array_within(invoices, n))
}

fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn detail(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    json_response(status, json!({ "detail": message }).to_string())
}

/// A request answered with an error `{"detail": ...}`.
struct Reject(StatusCode, String);

impl Reject {
    fn into_response(self) -> Response<Full<Bytes>> {
        detail(self.0, &self.1)
    }
}

/// An endpoint's answer.
type Reply = Result<Response<Full<Bytes>>, Reject>;

fn not_found() -> Reject {
    Reject(StatusCode::NOT_FOUND, "Invoice not found".into())
}

fn unprocessable(message: &str) -> Reject {
    Reject(StatusCode::UNPROCESSABLE_ENTITY, message.into())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `updated_at` after a write: now, but always later than before, so that every write is
/// visible in it even within one second.
fn next_updated_at(previous: &str) -> String {
    let now = unix_now();
    let after = data::parse_timestamp(previous).map_or(now, |t| t + 1);
    data::timestamp(now.max(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_paths_are_unquoted_like_uvicorn() {
        assert_eq!(unquote("/api/v1/%69nvoices"), "/api/v1/invoices");
        assert_eq!(unquote("/api%2Fv1/invoices"), "/api/v1/invoices");
        assert_eq!(unquote("/a/%zz/%4"), "/a/%zz/%4");
        assert_eq!(unquote("/a/%C3%A9%ff"), "/a/\u{e9}\u{fffd}");
    }

    #[test]
    fn routes_are_classified() {
        let id = "/api/v1/invoices/abc";
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/invoices"),
            (Route::InvoiceList, None)
        );
        assert_eq!(
            Route::of(&Method::POST, "/api/v1/invoices"),
            (Route::InvoiceCreate, None)
        );
        assert_eq!(
            Route::of(&Method::GET, id),
            (Route::InvoiceGet, Some("abc"))
        );
        assert_eq!(
            Route::of(&Method::PATCH, id),
            (Route::InvoicePatch, Some("abc"))
        );
        assert_eq!(Route::of(&Method::POST, id).0, Route::MethodNotAllowed);
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/invoices/a/b").0,
            Route::NotFound
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/invoices/").0,
            Route::NotFound
        );
        assert_eq!(
            Route::of(&Method::GET, "/api/v1/payments").0,
            Route::PaymentList
        );
    }

    #[test]
    fn invoice_bodies_are_validated() {
        let ok = json!({
            "customer": " Pied Piper ", "currency": "EUR", "invoice_date": "2024-02-29",
            "lines": [{"sku": "SKU-1", "description": "x", "quantity": 3, "unit_price": "12.5"},
                      {"sku": "SKU-2", "quantity": 1, "unit_price": 2}]
        });
        let f = InvoiceFields::parse(ok.as_object().unwrap()).unwrap();
        assert_eq!(f.customer, "Pied Piper");
        assert_eq!(f.status, "draft");
        assert_eq!(f.total_cents, 3_750 + 200);
        assert_eq!(f.lines[1].line_no, 2);
        let broken = [
            json!({"currency": "EUR", "invoice_date": "2024-01-01", "lines": []}),
            json!({"customer": "a", "currency": "CHF", "invoice_date": "2024-01-01", "lines": [{"sku": "s", "quantity": 1, "unit_price": "1"}]}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-02-30", "lines": [{"sku": "s", "quantity": 1, "unit_price": "1"}]}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-01-01", "lines": []}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-01-01", "lines": [{"sku": "s", "quantity": 0, "unit_price": "1"}]}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-01-01", "lines": [{"sku": "s", "quantity": 1, "unit_price": "1.001"}]}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-01-01", "lines": [{"sku": "s", "quantity": 1, "unit_price": "-1"}]}),
            json!({"customer": "a", "currency": "EUR", "invoice_date": "2024-01-01", "invoice_status": "lost", "lines": [{"sku": "s", "quantity": 1, "unit_price": "1"}]}),
        ];
        for b in broken {
            assert!(InvoiceFields::parse(b.as_object().unwrap()).is_err(), "{b}");
        }
        assert!(Patch::parse(json!({"customer": null}).as_object().unwrap()).is_err());
        let p = Patch::parse(
            json!({"invoice_status": "void", "other": 1})
                .as_object()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(p.status.as_deref(), Some("void"));
        assert!(p.customer.is_none());
    }

    #[test]
    fn updated_at_always_moves_forward() {
        let future = data::timestamp(unix_now() + 3_600);
        let next = next_updated_at(&future);
        assert_eq!(
            data::parse_timestamp(&next),
            data::parse_timestamp(&future).map(|t| t + 1)
        );
        assert!(next_updated_at("2020-01-01T00:00:00Z").as_str() > "2020-01-01T00:00:00Z");
    }
}
