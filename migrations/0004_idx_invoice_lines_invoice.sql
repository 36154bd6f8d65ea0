-- omsgate: no-transaction
-- An invoice's lines are fetched by invoice id (the N+1 path and the aggregating functions).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_invoice_lines_invoice
    ON invoice_lines (invoice_id);
