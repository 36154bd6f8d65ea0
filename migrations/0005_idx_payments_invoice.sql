-- omsgate: no-transaction
-- An invoice's payments are fetched by invoice id (`omsgate_invoice_payments`).
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_payments_invoice
    ON payments (invoice_id);
