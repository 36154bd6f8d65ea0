-- omsgate: no-transaction
-- Audit records are deduplicated on the gateway's own event id, not on the client's request id:
-- a client reusing one x-request-id for many requests must not make their records disappear.
-- The request id stays as a plain (non-unique) correlation column.
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS event_id uuid;
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS audit_events_event_id_key
    ON audit_events (event_id);
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_audit_events_request_id
    ON audit_events (request_id);
ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS audit_events_request_id_key;
