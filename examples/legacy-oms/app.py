"""The reference legacy OMS: a small FastAPI + uvicorn app on PostgreSQL, slow ON PURPOSE.

It reproduces the seed's OMS the way such apps are really written, so that omsgate is tested and
benchmarked against a real uvicorn server (accept queue, keep-alive timeout, one worker) instead
of only the simulator:

- one shared synchronous psycopg connection behind a lock, used from async handlers through
  Starlette's thread pool (`run_in_threadpool`), so every request, `/health` included, queues for
  the one connection;
- N+1 queries: an invoice listing reads each invoice's lines with a query of its own;
- a synchronous audit insert into `audit_events` on every API request, before the answer leaves
  (optionally made slower with `--audit-delay`, as the seed's 100-500 ms audit middleware);
- one uvicorn worker with uvicorn's default keep-alive of 5 s (`--keep-alive` changes it);
- identity: an HS256 JWT (`Authorization: Bearer`) with the tenant in a claim (PyJWT), and the
  legacy fallback to an `x-tenant-id` header when no bearer token arrives.

The tables and JSON shapes are omsgate's reference schema (migrations/baseline) and the
simulated OMS's (src/sim), so one seeded schema serves this app, `omsgate`'s pooled query
paths and its benches alike.

    python app.py serve --database-url postgres://postgres@127.0.0.1:5432/test --schema oms
    python app.py seed  --database-url ... --schema oms --tenants 5 --invoices 1000

Every flag has an environment variable (`LEGACY_OMS_*`, see `--help`). Test hooks, off by
default: `--health-delay` makes `/health` sleep before answering, `--health-fail-file PATH`
makes it answer 503 while PATH exists.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import re
import sys
import threading
import time
import uuid
import warnings
from decimal import Decimal, InvalidOperation
from pathlib import Path

import jwt
import psycopg
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

STATUSES = ("draft", "open", "paid", "void")
CURRENCIES = ("EUR", "USD", "GBP")
METHODS = ("card", "transfer", "cash")
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
MAX_LINES = 100
# The demo secret is shorter than PyJWT's recommended 32 bytes; the legacy app never cared.
warnings.filterwarnings("ignore", message="The HMAC key is")
SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
REFERENCE_SCHEMA = (
    Path(__file__).resolve().parent.parent.parent
    / "migrations"
    / "baseline"
    / "0000_reference_schema.sql"
)


# === The shared connection (the seed's "single blocking DB client") ===


class Db:
    """One synchronous connection, one lock: every query of every request waits its turn."""

    def __init__(self, url: str, schema: str):
        self.url = url
        self.schema = schema
        self.lock = threading.Lock()
        self.conn: psycopg.Connection | None = None

    def _connection(self) -> psycopg.Connection:
        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.url, autocommit=True)
            self.conn.execute(f'SET search_path TO "{self.schema}"')
        return self.conn

    def run(self, work):
        """Runs `work(conn)` holding the lock. Called from a worker thread."""
        with self.lock:
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.OperationalError:
                # A broken connection is replaced on the next request, like the legacy app's
                # "reconnect on error" wrapper.
                conn.close()
                raise


# === JSON shapes (as src/sim/data.rs and migrations/0006_query_functions.sql) ===


def money(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01")))


def timestamp(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def invoice_doc(row, lines) -> dict:
    (id_, tenant, number, status, date, customer, currency, total, created, updated) = row
    return {
        "id": str(id_),
        "tenant_id": tenant,
        "invoice_number": number,
        "invoice_status": status,
        "invoice_date": date.isoformat(),
        "customer": customer,
        "currency": currency,
        "total": money(total),
        "created_at": timestamp(created),
        "updated_at": timestamp(updated),
        "lines": [
            {
                "id": str(l[0]),
                "line_no": l[1],
                "sku": l[2],
                "description": l[3],
                "quantity": l[4],
                "unit_price": money(l[5]),
                "amount": money(l[6]),
            }
            for l in lines
        ],
    }


def payment_doc(row) -> dict:
    id_, tenant, invoice_id, date, amount, method = row
    return {
        "id": str(id_),
        "tenant_id": tenant,
        "invoice_id": str(invoice_id),
        "payment_date": date.isoformat(),
        "amount": money(amount),
        "method": method,
    }


def json_response(status: int, body) -> Response:
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    return Response(content=text.encode(), status_code=status, media_type="application/json")


class Reject(Exception):
    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


def not_found() -> Reject:
    return Reject(404, "Invoice not found")


# === Queries (N+1 on purpose) ===

INVOICE_COLUMNS = (
    "id, tenant_id, invoice_number, invoice_status, invoice_date, customer, currency, total, "
    "created_at, updated_at"
)
LINE_COLUMNS = "id, line_no, sku, description, quantity, unit_price, amount"


def load_lines(conn, tenant: str, invoice_id) -> list:
    return conn.execute(
        f"SELECT {LINE_COLUMNS} FROM invoice_lines WHERE invoice_id = %s AND tenant_id = %s "
        "ORDER BY line_no",
        (invoice_id, tenant),
    ).fetchall()


def load_invoice(conn, tenant: str, invoice_id) -> dict | None:
    row = conn.execute(
        f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = %s AND tenant_id = %s",
        (invoice_id, tenant),
    ).fetchone()
    if row is None:
        return None
    return invoice_doc(row, load_lines(conn, tenant, invoice_id))


def list_invoices(conn, tenant: str, status, limit: int, offset: int) -> dict:
    where, args = "tenant_id = %s", [tenant]
    if status is not None:
        where += " AND invoice_status = %s"
        args.append(status)
    total = conn.execute(f"SELECT count(*) FROM invoices WHERE {where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE {where} "
        'ORDER BY invoice_date DESC, invoice_number COLLATE "C" DESC LIMIT %s OFFSET %s',
        args + [limit, offset],
    ).fetchall()
    # The N+1: one more query per invoice on the page.
    items = [invoice_doc(row, load_lines(conn, tenant, row[0])) for row in rows]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def list_payments(conn, tenant: str, invoice_id, limit: int, offset: int) -> dict:
    where, args = "tenant_id = %s", [tenant]
    if invoice_id is not None:
        where += " AND invoice_id = %s"
        args.append(invoice_id)
    total = conn.execute(f"SELECT count(*) FROM payments WHERE {where}", args).fetchone()[0]
    rows = conn.execute(
        "SELECT id, tenant_id, invoice_id, payment_date, amount, method FROM payments "
        f"WHERE {where} ORDER BY payment_date DESC, id LIMIT %s OFFSET %s",
        args + [limit, offset],
    ).fetchall()
    return {
        "items": [payment_doc(r) for r in rows],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


def insert_lines(conn, tenant: str, invoice_id, lines: list) -> None:
    for line in lines:  # one INSERT per line, as the legacy ORM does
        conn.execute(
            "INSERT INTO invoice_lines (id, invoice_id, tenant_id, line_no, sku, description, "
            "quantity, unit_price, amount) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                uuid.uuid4(),
                invoice_id,
                tenant,
                line["line_no"],
                line["sku"],
                line["description"],
                line["quantity"],
                line["unit_price"],
                line["amount"],
            ),
        )


def create_invoice(conn, tenant: str, fields: dict) -> dict:
    with conn.transaction():
        # Lock the tenant's numbering (a second writer waits here).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (tenant,))
        last = conn.execute(
            "SELECT max(substring(invoice_number from 5)::bigint) FROM invoices "
            "WHERE tenant_id = %s AND invoice_number ~ '^INV-[0-9]+$'",
            (tenant,),
        ).fetchone()[0]
        number = f"INV-{(last or 0) + 1:06d}"
        invoice_id = uuid.uuid4()
        conn.execute(
            "INSERT INTO invoices (id, tenant_id, invoice_number, invoice_status, invoice_date, "
            "customer, currency, total, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, date_trunc('second', now()), "
            "date_trunc('second', now()))",
            (
                invoice_id,
                tenant,
                number,
                fields["invoice_status"],
                fields["invoice_date"],
                fields["customer"],
                fields["currency"],
                fields["total"],
            ),
        )
        insert_lines(conn, tenant, invoice_id, fields["lines"])
    return load_invoice(conn, tenant, invoice_id)


NEXT_UPDATED_AT = "GREATEST(date_trunc('second', now()), updated_at + interval '1 second')"


def replace_invoice(conn, tenant: str, invoice_id, fields: dict) -> dict | None:
    with conn.transaction():
        found = conn.execute(
            "UPDATE invoices SET customer = %s, currency = %s, invoice_date = %s, "
            f"invoice_status = %s, total = %s, updated_at = {NEXT_UPDATED_AT} "
            "WHERE id = %s AND tenant_id = %s RETURNING id",
            (
                fields["customer"],
                fields["currency"],
                fields["invoice_date"],
                fields["invoice_status"],
                fields["total"],
                invoice_id,
                tenant,
            ),
        ).fetchone()
        if found is None:
            return None
        conn.execute(
            "DELETE FROM invoice_lines WHERE invoice_id = %s AND tenant_id = %s",
            (invoice_id, tenant),
        )
        insert_lines(conn, tenant, invoice_id, fields["lines"])
    return load_invoice(conn, tenant, invoice_id)


def patch_invoice(conn, tenant: str, invoice_id, patch: dict) -> dict | None:
    sets, args = [], []
    for key in ("customer", "currency", "invoice_date", "invoice_status"):
        if key in patch:
            sets.append(f"{key} = %s")
            args.append(patch[key])
    sets.append(f"updated_at = {NEXT_UPDATED_AT}")
    found = conn.execute(
        f"UPDATE invoices SET {', '.join(sets)} WHERE id = %s AND tenant_id = %s RETURNING id",
        args + [invoice_id, tenant],
    ).fetchone()
    if found is None:
        return None
    return load_invoice(conn, tenant, invoice_id)


def delete_invoice(conn, tenant: str, invoice_id) -> bool:
    with conn.transaction():
        found = conn.execute(
            "DELETE FROM invoices WHERE id = %s AND tenant_id = %s RETURNING id",
            (invoice_id, tenant),
        ).fetchone()
        if found is None:
            return False
        for table in ("invoice_lines", "payments"):
            conn.execute(
                f"DELETE FROM {table} WHERE invoice_id = %s AND tenant_id = %s",
                (invoice_id, tenant),
            )
    return True


# === Validation (the simulated OMS's messages) ===


def page(params) -> tuple[int, int]:
    raw = params.get("limit") or ""
    if raw == "":
        limit = DEFAULT_LIMIT
    elif raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT:
        limit = int(raw)
    else:
        raise Reject(422, "limit must be an integer from 1 to 100")
    raw = params.get("offset") or ""
    if raw == "":
        offset = 0
    elif raw.isdigit():
        offset = int(raw)
    else:
        raise Reject(422, "offset must be a non-negative integer")
    return limit, offset


def parse_uuid(text: str):
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def check_customer(v) -> str:
    if isinstance(v, str) and v.strip() and len(v.strip()) <= 200:
        return v.strip()
    raise Reject(422, "customer must be a non-empty string of at most 200 characters")


def check_currency(v) -> str:
    if v in CURRENCIES:
        return v
    raise Reject(422, "currency must be one of EUR, USD, GBP")


def check_date(v) -> str:
    try:
        if isinstance(v, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            dt.date.fromisoformat(v)
            return v
    except ValueError:
        pass
    raise Reject(422, "invoice_date must be a date like 2024-01-31")


def check_status(v) -> str:
    if v in STATUSES:
        return v
    raise Reject(422, "invoice_status must be one of draft, open, paid, void")


def check_line(i: int, v) -> dict:
    def fail(what: str):
        raise Reject(422, f"lines[{i}].{what}")

    if not isinstance(v, dict):
        fail("sku must be a non-empty string of at most 64 characters")
    sku = v.get("sku")
    if not (isinstance(sku, str) and sku.strip() and len(sku.strip()) <= 64):
        fail("sku must be a non-empty string of at most 64 characters")
    description = v.get("description")
    if description is None:
        description = ""
    elif not (isinstance(description, str) and len(description) <= 500):
        fail("description must be a string of at most 500 characters")
    quantity = v.get("quantity")
    if not (isinstance(quantity, int) and not isinstance(quantity, bool)
            and 1 <= quantity <= 1_000_000):
        fail("quantity must be an integer from 1 to 1000000")
    price = v.get("unit_price")
    try:
        if isinstance(price, bool) or not isinstance(price, (str, int, float)):
            raise InvalidOperation
        cents = Decimal(str(price)) * 100
        if cents != cents.to_integral_value() or not 0 <= cents <= 10_000_000_000:
            raise InvalidOperation
    except InvalidOperation:
        fail('unit_price must be an amount like "12.50" from 0 to 100000000')
    unit_price = (cents / 100).quantize(Decimal("0.01"))
    return {
        "line_no": i + 1,
        "sku": sku.strip(),
        "description": description,
        "quantity": quantity,
        "unit_price": unit_price,
        "amount": unit_price * quantity,
    }


def invoice_fields(body: dict) -> dict:
    for key in ("customer", "currency", "invoice_date"):
        if key not in body:
            raise Reject(422, f"{key} is required")
    fields = {
        "customer": check_customer(body["customer"]),
        "currency": check_currency(body["currency"]),
        "invoice_date": check_date(body["invoice_date"]),
        "invoice_status": "draft"
        if body.get("invoice_status") is None
        else check_status(body["invoice_status"]),
    }
    items = body.get("lines")
    if not isinstance(items, list):
        raise Reject(422, "lines is required and must be an array")
    if not 1 <= len(items) <= MAX_LINES:
        raise Reject(422, f"lines must have 1 to {MAX_LINES} items")
    fields["lines"] = [check_line(i, item) for i, item in enumerate(items)]
    fields["total"] = sum((l["amount"] for l in fields["lines"]), Decimal("0.00"))
    return fields


def invoice_patch(body: dict) -> dict:
    checks = {
        "customer": check_customer,
        "currency": check_currency,
        "invoice_date": check_date,
        "invoice_status": check_status,
    }
    return {k: check(body[k]) for k, check in checks.items() if k in body}


# === The app ===


def build_app(options: argparse.Namespace) -> FastAPI:
    db = Db(options.database_url, options.schema)
    app = FastAPI(title="legacy OMS (reference)", docs_url=None, redoc_url=None)

    def tenant_of(request: Request) -> str | None:
        auth = request.headers.get("authorization")
        if auth is not None and auth[:7].lower() == "bearer ":
            try:
                claims = jwt.decode(
                    auth[7:].strip(),
                    options.jwt_secret,
                    algorithms=["HS256"],
                    options={"verify_aud": False},
                )
            except jwt.PyJWTError:
                return None
            tenant = claims.get(options.tenant_claim)
            if isinstance(tenant, str) and tenant:
                return tenant
            if isinstance(tenant, int) and not isinstance(tenant, bool):
                return str(tenant)
            return None
        header = (request.headers.get(options.tenant_header) or "").strip()
        return header or None

    def audit(conn, request: Request, status: int, tenant: str | None, started: float):
        if options.audit_delay > 0:
            # The seed's audit middleware took 100-500 ms, holding the connection.
            conn.execute("SELECT pg_sleep(%s)", (options.audit_delay,))
        payload = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "status": status,
            "duration_ms": round((time.monotonic() - started) * 1000, 3),
            "client": request.client.host if request.client else None,
            "user_agent": request.headers.get("user-agent"),
        }
        conn.execute(
            "INSERT INTO audit_events (tenant_id, request_id, payload) VALUES (%s, %s, %s) "
            "ON CONFLICT (request_id) DO NOTHING",
            (tenant or "", request.headers.get("x-request-id"), json.dumps(payload)),
        )

    @app.middleware("http")
    async def audit_middleware(request: Request, call_next):
        started = time.monotonic()
        response = await call_next(request)
        if request.url.path.startswith("/api/"):
            tenant = tenant_of(request)
            # Synchronous: the answer waits for the audit row, through the same locked
            # connection.
            await run_in_threadpool(
                db.run, lambda conn: audit(conn, request, response.status_code, tenant, started)
            )
        request_id = request.headers.get("x-request-id")
        if request_id is not None:
            response.headers["x-oms-request-id"] = request_id
        return response

    async def api(request: Request, work) -> Response:
        tenant = tenant_of(request)
        if tenant is None:
            return json_response(401, {"detail": "Not authenticated"})
        try:
            status, body = await run_in_threadpool(db.run, lambda conn: work(conn, tenant))
        except Reject as reject:
            return json_response(reject.status, {"detail": reject.detail})
        if body is None:
            return Response(status_code=status)
        return json_response(status, body)

    async def json_body(request: Request) -> dict:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise Reject(422, f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise Reject(422, "body must be a JSON object")
        return body

    async def guarded(coro):
        try:
            return await coro
        except Reject as reject:
            return json_response(reject.status, {"detail": reject.detail})

    @app.get("/health")
    async def health():
        if options.health_delay > 0:
            await asyncio.sleep(options.health_delay)
        if options.health_fail_file and os.path.exists(options.health_fail_file):
            return json_response(503, {"status": "failing"})
        # Through the one locked connection, like the app's real health check: under load it
        # waits behind every queued request.
        await run_in_threadpool(db.run, lambda conn: conn.execute("SELECT 1").fetchone())
        return json_response(200, {"status": "ok"})

    @app.get("/api/v1/invoices")
    async def get_invoices(request: Request):
        async def go():
            params = request.query_params
            limit, offset = page(params)
            status = params.get("status") or None
            if status is not None and status not in STATUSES:
                raise Reject(422, "status must be one of draft, open, paid, void")
            return await api(
                request, lambda c, t: (200, list_invoices(c, t, status, limit, offset))
            )

        return await guarded(go())

    @app.post("/api/v1/invoices")
    async def post_invoice(request: Request):
        async def go():
            if tenant_of(request) is None:
                return json_response(401, {"detail": "Not authenticated"})
            fields = invoice_fields(await json_body(request))
            return await api(request, lambda c, t: (201, create_invoice(c, t, fields)))

        return await guarded(go())

    def one_invoice(request: Request, invoice_id: str, work):
        parsed = parse_uuid(invoice_id)

        def run(conn, tenant):
            if parsed is None:
                raise not_found()
            result = work(conn, tenant, parsed)
            if result is None or result is False:
                raise not_found()
            return result

        return api(request, run)

    @app.get("/api/v1/invoices/{invoice_id}")
    async def get_invoice(request: Request, invoice_id: str):
        return await one_invoice(
            request, invoice_id, lambda c, t, i: (lambda d: d and (200, d))(load_invoice(c, t, i))
        )

    @app.put("/api/v1/invoices/{invoice_id}")
    async def put_invoice(request: Request, invoice_id: str):
        async def go():
            if tenant_of(request) is None:
                return json_response(401, {"detail": "Not authenticated"})
            fields = invoice_fields(await json_body(request))
            return await one_invoice(
                request,
                invoice_id,
                lambda c, t, i: (lambda d: d and (200, d))(replace_invoice(c, t, i, fields)),
            )

        return await guarded(go())

    @app.patch("/api/v1/invoices/{invoice_id}")
    async def patch_one(request: Request, invoice_id: str):
        async def go():
            if tenant_of(request) is None:
                return json_response(401, {"detail": "Not authenticated"})
            patch = invoice_patch(await json_body(request))
            return await one_invoice(
                request,
                invoice_id,
                lambda c, t, i: (lambda d: d and (200, d))(patch_invoice(c, t, i, patch)),
            )

        return await guarded(go())

    @app.delete("/api/v1/invoices/{invoice_id}")
    async def delete_one(request: Request, invoice_id: str):
        return await one_invoice(
            request, invoice_id, lambda c, t, i: delete_invoice(c, t, i) and (204, None)
        )

    @app.get("/api/v1/payments")
    async def get_payments(request: Request):
        async def go():
            params = request.query_params
            limit, offset = page(params)
            raw = params.get("invoice_id") or ""
            invoice_id = None
            if raw:
                invoice_id = parse_uuid(raw)
                if invoice_id is None:
                    raise Reject(422, "invoice_id must be a UUID")
            return await api(
                request, lambda c, t: (200, list_payments(c, t, invoice_id, limit, offset))
            )

        return await guarded(go())

    return app


# === seed ===

CUSTOMERS = (
    "Aperture Science", "Black Mesa", "Cyberdyne Systems", "Dunder Mifflin", "Gringotts",
    "Initrode", "LexCorp", "Massive Dynamic", "Pied Piper", "Soylent Corp", "Wayne Enterprises",
    "Weyland-Yutani",
)
PRODUCTS = (
    ("Consulting hour", 12_000), ("Support plan (monthly)", 4_900), ("Training day", 68_000),
    ("Licence seat (annual)", 21_900), ("Hardware token", 2_450), ("Custom report", 3_750),
    ("API access (monthly)", 9_900), ("Security audit", 320_000), ("Printed manual", 1_250),
)
NAMED_TENANTS = (
    ("acme", "Acme Corporation"), ("globex", "Globex Corporation"), ("initech", "Initech"),
    ("umbrella", "Umbrella Corporation"), ("hooli", "Hooli"),
)


def seed(options: argparse.Namespace) -> int:
    """Creates the reference tables in the schema and fills them with random (seeded) rows.

    `omsgate seed-db --schema NAME` loads the simulated OMS's deterministic data into the same
    tables instead; the tests and benches use that, so that they know the ids.
    """
    rng = random.Random(options.seed)
    tenants = [
        NAMED_TENANTS[i] if i < len(NAMED_TENANTS) else (f"tenant-{i + 1:03d}", f"Tenant {i + 1:03d}")
        for i in range(options.tenants)
    ]
    started = time.monotonic()
    with psycopg.connect(options.database_url) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{options.schema}"')
        conn.execute(f'SET search_path TO "{options.schema}"')
        conn.execute(REFERENCE_SCHEMA.read_text())
        ids = [t[0] for t in tenants]
        for table in ("invoice_lines", "payments", "invoices"):
            conn.execute(f"DELETE FROM {table} WHERE tenant_id = ANY(%s)", (ids,))
        conn.execute("DELETE FROM tenants WHERE id = ANY(%s)", (ids,))
        counts = [0, 0, 0]
        with conn.cursor() as cur:
            with cur.copy("COPY tenants (id, name) FROM STDIN") as copy:
                for t in tenants:
                    copy.write_row(t)
            invoices, lines, payments = [], [], []
            first = dt.date(2023, 1, 1)
            for tenant, _ in tenants:
                days = sorted(rng.randrange(731) for _ in range(options.invoices))
                for n, day in enumerate(days):
                    invoice_id = uuid.UUID(int=rng.getrandbits(128), version=4)
                    total = 0
                    for line_no in range(1, rng.randint(1, 8) + 1):
                        name, price = rng.choice(PRODUCTS)
                        qty = rng.randint(1, 10)
                        total += qty * price
                        lines.append((
                            uuid.UUID(int=rng.getrandbits(128), version=4), invoice_id, tenant,
                            line_no, f"SKU-{10_000 + PRODUCTS.index((name, price)) * 37}", name,
                            qty, Decimal(price) / 100, Decimal(qty * price) / 100,
                        ))
                    date = first + dt.timedelta(days=day)
                    status = rng.choice(STATUSES)
                    created = dt.datetime.combine(date, dt.time(9), dt.timezone.utc)
                    invoices.append((
                        invoice_id, tenant, f"INV-{n + 1:06d}", status, date,
                        rng.choice(CUSTOMERS), rng.choice(CURRENCIES), Decimal(total) / 100,
                        created, created,
                    ))
                    if status == "paid":
                        payments.append((
                            uuid.UUID(int=rng.getrandbits(128), version=4), tenant, invoice_id,
                            date + dt.timedelta(days=rng.randrange(30)), Decimal(total) / 100,
                            rng.choice(METHODS),
                        ))
            for statement, rows in (
                ("COPY invoices (id, tenant_id, invoice_number, invoice_status, invoice_date, "
                 "customer, currency, total, created_at, updated_at) FROM STDIN", invoices),
                ("COPY invoice_lines (id, invoice_id, tenant_id, line_no, sku, description, "
                 "quantity, unit_price, amount) FROM STDIN", lines),
                ("COPY payments (id, tenant_id, invoice_id, payment_date, amount, method) "
                 "FROM STDIN", payments),
            ):
                with cur.copy(statement) as copy:
                    for row in rows:
                        copy.write_row(row)
            counts = [len(invoices), len(lines), len(payments)]
        conn.execute("ANALYZE tenants, invoices, invoice_lines, payments")
    print(
        f"Seeded schema `{options.schema}`: {len(tenants)} tenants, {counts[0]} invoices, "
        f"{counts[1]} invoice lines, {counts[2]} payments in {time.monotonic() - started:.1f} s."
    )
    return 0


# === CLI ===


def env(name: str, default):
    return os.environ.get(f"LEGACY_OMS_{name}", default)


def schema_name(text: str) -> str:
    if not SCHEMA_RE.match(text):
        raise argparse.ArgumentTypeError(f"not a plain schema name: {text!r}")
    return text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        default=env("DATABASE_URL", os.environ.get("DATABASE_URL", "")),
        help="PostgreSQL URL (LEGACY_OMS_DATABASE_URL, else DATABASE_URL)",
    )
    common.add_argument(
        "--schema", type=schema_name, default=env("SCHEMA", "public"),
        help="schema holding the tables (LEGACY_OMS_SCHEMA; default public)",
    )

    serve = sub.add_parser("serve", parents=[common], help="run the OMS on uvicorn")
    serve.add_argument("--host", default=env("HOST", "127.0.0.1"), help="LEGACY_OMS_HOST")
    serve.add_argument("--port", type=int, default=int(env("PORT", 8000)), help="LEGACY_OMS_PORT")
    serve.add_argument(
        "--keep-alive", type=float, default=float(env("KEEP_ALIVE", 5)),
        help="uvicorn's timeout_keep_alive in seconds (LEGACY_OMS_KEEP_ALIVE; default 5, "
        "uvicorn's own default)",
    )
    serve.add_argument(
        "--jwt-secret", default=env("JWT_SECRET", "omsgate-demo-secret-change-me"),
        help="HS256 secret of bearer tokens (LEGACY_OMS_JWT_SECRET; default the demo secret)",
    )
    serve.add_argument("--tenant-claim", default=env("TENANT_CLAIM", "tenant_id"))
    serve.add_argument("--tenant-header", default=env("TENANT_HEADER", "x-tenant-id"))
    serve.add_argument(
        "--audit-delay", type=float, default=float(env("AUDIT_DELAY", 0)),
        help="extra seconds the audit insert holds the connection (LEGACY_OMS_AUDIT_DELAY; "
        "default 0; the seed measured 0.1-0.5)",
    )
    serve.add_argument(
        "--health-delay", type=float, default=float(env("HEALTH_DELAY", 0)),
        help="seconds /health sleeps before answering (LEGACY_OMS_HEALTH_DELAY; default 0)",
    )
    serve.add_argument(
        "--health-fail-file", default=env("HEALTH_FAIL_FILE", ""),
        help="/health answers 503 while this file exists (LEGACY_OMS_HEALTH_FAIL_FILE)",
    )

    seeder = sub.add_parser("seed", parents=[common], help="create and fill the tables")
    seeder.add_argument("--tenants", type=int, default=5)
    seeder.add_argument("--invoices", type=int, default=1000, help="invoices per tenant")
    seeder.add_argument("--seed", type=int, default=42)

    options = parser.parse_args(argv)
    if not options.database_url:
        parser.error("--database-url (or LEGACY_OMS_DATABASE_URL / DATABASE_URL) is required")
    if options.command == "seed":
        return seed(options)
    uvicorn.run(
        build_app(options),
        host=options.host,
        port=options.port,
        workers=1,
        timeout_keep_alive=options.keep_alive,
        log_level="warning",
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
