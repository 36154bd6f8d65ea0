-- omsgate: no-transaction
-- Gives the OMS back the unique request_id that 0007 dropped. The legacy app writes its own
-- audit rows with `INSERT ... ON CONFLICT (request_id) DO NOTHING`, which PostgreSQL refuses
-- when no unique index matches (every API request then answered 500). audit-sink's rows keep
-- the client's x-request-id in client_request_id (indexed, not unique) and leave request_id
-- NULL, so a client reusing one request id still cannot hide records (each row is keyed by its
-- event_id), and the OMS's own inserts keep their conflict target.
-- Every statement is idempotent: an interrupted run is repeated from the start.
ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS client_request_id text;
-- Rows audit-sink wrote while 0007 was the latest (they have an event_id) move their request id
-- to client_request_id. The OMS could not write rows then (its inserts failed), so what remains
-- in request_id is unique again.
UPDATE audit_events SET client_request_id = request_id, request_id = NULL
    WHERE event_id IS NOT NULL AND request_id IS NOT NULL;
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_audit_events_client_request_id
    ON audit_events (client_request_id);
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS audit_events_request_id_key
    ON audit_events (request_id);
-- The index becomes the constraint again, as the OMS created it (`request_id text UNIQUE`).
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conrelid = 'audit_events'::regclass AND contype = 'u'
          AND conname = 'audit_events_request_id_key'
    ) THEN
        ALTER TABLE audit_events
            ADD CONSTRAINT audit_events_request_id_key UNIQUE USING INDEX audit_events_request_id_key;
    END IF;
END
$$;
-- 0007's plain index on request_id is covered by the unique one.
DROP INDEX CONCURRENTLY IF EXISTS idx_audit_events_request_id;
