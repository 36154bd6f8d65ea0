-- omsgate: no-transaction
-- Payments are listed per tenant by date.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_payments_tenant_date
    ON payments (tenant_id, payment_date);
