-- The reference OMS schema: the tables as the legacy FastAPI/Supabase application created them,
-- WITHOUT the secondary indexes it lacks (those are what `omsgate migrate` adds).
--
-- Applied by the tests, the benches and `omsgate demo --seed-db` / `omsgate seed-db --schema`;
-- never by `omsgate migrate`, which only adds to an existing OMS database.

CREATE TABLE IF NOT EXISTS tenants (
    id   text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE IF NOT EXISTS invoices (
    id             uuid PRIMARY KEY,
    tenant_id      text NOT NULL,
    invoice_number text NOT NULL,
    invoice_status text NOT NULL,
    invoice_date   date NOT NULL,
    customer       text NOT NULL,
    currency       text NOT NULL,
    total          numeric(12,2) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS invoice_lines (
    id          uuid PRIMARY KEY,
    invoice_id  uuid NOT NULL,
    tenant_id   text NOT NULL,
    line_no     integer NOT NULL,
    sku         text NOT NULL,
    description text NOT NULL,
    quantity    integer NOT NULL,
    unit_price  numeric(12,2) NOT NULL,
    amount      numeric(12,2) NOT NULL
);

CREATE TABLE IF NOT EXISTS payments (
    id           uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    invoice_id   uuid NOT NULL,
    payment_date date NOT NULL,
    amount       numeric(12,2) NOT NULL,
    method       text NOT NULL
);

CREATE TABLE IF NOT EXISTS audit_events (
    id         bigserial PRIMARY KEY,
    tenant_id  text NOT NULL,
    request_id text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload    jsonb NOT NULL DEFAULT '{}'::jsonb
);
