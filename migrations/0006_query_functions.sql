-- The pooled query paths: one SQL function per N+1 path of the OMS, each answering in one round
-- trip with the exact JSON document the OMS API returns (key order, money as strings with two
-- decimals, dates `YYYY-MM-DD`, timestamps RFC 3339 UTC with second precision).
--
-- Every function takes the tenant as its first argument and filters every table by it, so it
-- never returns another tenant's rows. `SET search_path FROM CURRENT` pins the tables to the
-- schema the migration ran in, whatever the caller's search_path.

-- One invoice as the OMS serialises it, with its lines ordered by line number.
CREATE OR REPLACE VIEW omsgate_invoice_docs AS
SELECT
    i.id,
    i.tenant_id,
    json_build_object(
        'id', i.id,
        'tenant_id', i.tenant_id,
        'invoice_number', i.invoice_number,
        'invoice_status', i.invoice_status,
        'invoice_date', to_char(i.invoice_date, 'YYYY-MM-DD'),
        'customer', i.customer,
        'currency', i.currency,
        'total', i.total::text,
        'created_at', to_char(i.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'updated_at', to_char(i.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
        'lines', COALESCE(
            (SELECT json_agg(
                        json_build_object(
                            'id', l.id,
                            'line_no', l.line_no,
                            'sku', l.sku,
                            'description', l.description,
                            'quantity', l.quantity,
                            'unit_price', l.unit_price::text,
                            'amount', l.amount::text)
                        ORDER BY l.line_no)
               FROM invoice_lines l
              WHERE l.invoice_id = i.id AND l.tenant_id = i.tenant_id),
            '[]'::json)
    ) AS doc
FROM invoices i;

-- One payment as the OMS serialises it.
CREATE OR REPLACE VIEW omsgate_payment_docs AS
SELECT
    p.id,
    p.tenant_id,
    p.invoice_id,
    p.payment_date,
    json_build_object(
        'id', p.id,
        'tenant_id', p.tenant_id,
        'invoice_id', p.invoice_id,
        'payment_date', to_char(p.payment_date, 'YYYY-MM-DD'),
        'amount', p.amount::text,
        'method', p.method
    ) AS doc
FROM payments p;

-- `GET /api/v1/invoices/{id}`: the invoice with its lines, or NULL when the tenant has no such
-- invoice.
CREATE OR REPLACE FUNCTION omsgate_invoice_with_lines(p_tenant text, p_id uuid)
RETURNS json
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN (SELECT d.doc FROM omsgate_invoice_docs d WHERE d.tenant_id = p_tenant AND d.id = p_id);
END
$$;

-- `GET /api/v1/invoices?status=&limit=&offset=`: a page of the tenant's invoices with their lines,
-- newest first (`invoice_date DESC, invoice_number DESC`):
-- `{"items": [...], "total": N, "limit": L, "offset": O}`. A NULL status lists every status.
CREATE OR REPLACE FUNCTION omsgate_invoice_page(p_tenant text, p_status text, p_limit int, p_offset bigint)
RETURNS json
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    lim int := GREATEST(COALESCE(p_limit, 0), 0);
    off bigint := GREATEST(COALESCE(p_offset, 0), 0);
    items json;
    total bigint;
BEGIN
    -- Two statements rather than `p_status IS NULL OR ...`, so that each gets a plan that uses
    -- idx_invoices_tenant_status_date where it can. Invoice numbers compare bytewise, as the
    -- OMS sorts them, whatever the database's collation.
    IF p_status IS NULL THEN
        SELECT count(*) INTO total FROM invoices WHERE tenant_id = p_tenant;
        SELECT json_agg(d.doc ORDER BY pg.invoice_date DESC, pg.invoice_number COLLATE "C" DESC)
          INTO items
          FROM (SELECT id, invoice_date, invoice_number FROM invoices
                 WHERE tenant_id = p_tenant
                 ORDER BY invoice_date DESC, invoice_number COLLATE "C" DESC
                 LIMIT lim OFFSET off) pg
          JOIN omsgate_invoice_docs d ON d.id = pg.id AND d.tenant_id = p_tenant;
    ELSE
        SELECT count(*) INTO total FROM invoices
         WHERE tenant_id = p_tenant AND invoice_status = p_status;
        SELECT json_agg(d.doc ORDER BY pg.invoice_date DESC, pg.invoice_number COLLATE "C" DESC)
          INTO items
          FROM (SELECT id, invoice_date, invoice_number FROM invoices
                 WHERE tenant_id = p_tenant AND invoice_status = p_status
                 ORDER BY invoice_date DESC, invoice_number COLLATE "C" DESC
                 LIMIT lim OFFSET off) pg
          JOIN omsgate_invoice_docs d ON d.id = pg.id AND d.tenant_id = p_tenant;
    END IF;
    RETURN json_build_object(
        'items', COALESCE(items, '[]'::json),
        'total', total,
        'limit', lim,
        'offset', off);
END
$$;

-- Batch lookup: the tenant's invoices among `p_ids`, with their lines, in the order of `p_ids`
-- (ids that are unknown or belong to another tenant are left out). Always a JSON array.
CREATE OR REPLACE FUNCTION omsgate_invoices_by_ids(p_tenant text, p_ids uuid[])
RETURNS json
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN COALESCE(
        (SELECT json_agg(d.doc ORDER BY u.ord)
           FROM unnest(p_ids) WITH ORDINALITY AS u(id, ord)
           JOIN omsgate_invoice_docs d ON d.id = u.id AND d.tenant_id = p_tenant),
        '[]'::json);
END
$$;

-- The payments of one of the tenant's invoices as a JSON array, newest first
-- (`payment_date DESC, id`); empty when the tenant has no such invoice or it has no payments.
CREATE OR REPLACE FUNCTION omsgate_invoice_payments(p_tenant text, p_invoice_id uuid)
RETURNS json
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN COALESCE(
        (SELECT json_agg(d.doc ORDER BY d.payment_date DESC, d.id)
           FROM omsgate_payment_docs d
          WHERE d.tenant_id = p_tenant AND d.invoice_id = p_invoice_id),
        '[]'::json);
END
$$;

-- `GET /api/v1/payments?invoice_id=&limit=&offset=`: a page of the tenant's payments, of one
-- invoice when `p_invoice_id` is not NULL, newest first (`payment_date DESC, id`):
-- `{"items": [...], "total": N, "limit": L, "offset": O}`.
CREATE OR REPLACE FUNCTION omsgate_payment_page(p_tenant text, p_invoice_id uuid, p_limit int, p_offset bigint)
RETURNS json
LANGUAGE plpgsql STABLE
SET search_path FROM CURRENT
AS $$
DECLARE
    lim int := GREATEST(COALESCE(p_limit, 0), 0);
    off bigint := GREATEST(COALESCE(p_offset, 0), 0);
    items json;
    total bigint;
BEGIN
    IF p_invoice_id IS NULL THEN
        SELECT count(*) INTO total FROM payments WHERE tenant_id = p_tenant;
        SELECT json_agg(pg.doc ORDER BY pg.payment_date DESC, pg.id) INTO items
          FROM (SELECT d.doc, d.payment_date, d.id FROM omsgate_payment_docs d
                 WHERE d.tenant_id = p_tenant
                 ORDER BY d.payment_date DESC, d.id
                 LIMIT lim OFFSET off) pg;
    ELSE
        SELECT count(*) INTO total FROM payments
         WHERE tenant_id = p_tenant AND invoice_id = p_invoice_id;
        SELECT json_agg(pg.doc ORDER BY pg.payment_date DESC, pg.id) INTO items
          FROM (SELECT d.doc, d.payment_date, d.id FROM omsgate_payment_docs d
                 WHERE d.tenant_id = p_tenant AND d.invoice_id = p_invoice_id
                 ORDER BY d.payment_date DESC, d.id
                 LIMIT lim OFFSET off) pg;
    END IF;
    RETURN json_build_object(
        'items', COALESCE(items, '[]'::json),
        'total', total,
        'limit', lim,
        'offset', off);
END
$$;
