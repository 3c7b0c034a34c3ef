-- clerk-sync schema, version 4: dead letters, replay and retention.
--
-- `clerk-sync replay` re-applies events kept in clerk_sync.inbox through the webhooks' own write
-- path (public.clerk_sync_replay, sql/repeatable/30_replay.sql). The server purges old inbox rows
-- in the background; dead letters (outcome 'invalid') are kept until they are replayed or purged
-- by hand. Here: what the inbox needs for that.

-- When a replay last gave the row its outcome, and how many times replay ran on it (a failed
-- replay of a dead letter counts, and leaves replayed_at alone: it is still waiting).
alter table clerk_sync.inbox add column if not exists replayed_at timestamptz;
alter table clerk_sync.inbox add column if not exists replays integer not null default 0;

-- Dead letters waiting, found without reading the whole inbox.
create index if not exists inbox_dead_letters
    on clerk_sync.inbox (received_at) where outcome = 'invalid';
