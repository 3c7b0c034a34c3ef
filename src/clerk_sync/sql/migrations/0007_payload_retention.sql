-- clerk-sync schema, version 7: inbox payload retention.
--
-- Payloads of handled deliveries are kept for CLERK_SYNC_PAYLOAD_RETENTION_DAYS (default 3),
-- then dropped from their row (public.clerk_sync_drop_payloads, sql/repeatable/30_replay.sql);
-- the row itself stays for CLERK_SYNC_RETENTION_DAYS. Dead letters keep theirs.

-- The payloads still to drop, oldest first, found without reading the rows whose payload is
-- gone already (most of the inbox, once retention runs).
create index if not exists inbox_payloads_kept
    on clerk_sync.inbox (received_at) where payload is not null and outcome <> 'invalid';
