-- omsgate: no-transaction
-- Audit events are read per tenant by time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_audit_events_tenant_timestamp
    ON audit_events (tenant_id, created_at);
