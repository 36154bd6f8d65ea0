-- omsgate: no-transaction
-- The invoice listing filters by tenant and status and orders by date; without this index every
-- listing scans the whole table.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_invoices_tenant_status_date
    ON invoices (tenant_id, invoice_status, invoice_date);
