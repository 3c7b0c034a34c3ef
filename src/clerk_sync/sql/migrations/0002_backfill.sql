-- clerk-sync schema, version 2: bookkeeping for `clerk-sync backfill`.
--
-- A backfill walks Clerk's user list page by page and writes each page through
-- public.clerk_sync_apply, like a webhook delivery. These tables only remember how far a run got,
-- so that an interrupted run resumes where it stopped, and which users it saw, so that --prune
-- can tell who is missing from Clerk even when the listing was spread over several processes.
-- Neither table is read by the webhook path.

-- One row per run. A run is open until finished_at is set; at most one is open at a time.
create table if not exists clerk_sync.backfill_runs (
    id           bigint generated always as identity primary key,
    started_at   timestamptz not null default now(),
    progress_at  timestamptz not null default now(),
    finished_at  timestamptz,
    -- completed | abandoned (--restart began a new one) | prune_refused (the guard stopped it)
    outcome      text,
    -- Where the next page of GET /v1/users?order_by=+created_at starts.
    next_offset  integer not null default 0 check (next_offset >= 0),
    -- Users listed so far: {"created": n, "updated": n, "unchanged": n, "stale": n, "errors": n}
    counts       jsonb not null default '{}'::jsonb,
    check ((finished_at is null) = (outcome is null))
);

-- Two backfills started at once: the second one's insert fails here instead of both writing
-- progress to the same run.
create unique index if not exists backfill_runs_one_open
    on clerk_sync.backfill_runs ((true)) where finished_at is null;

-- Every user id a run has listed, written in the same transaction as its page; emptied when the
-- run finishes.
create table if not exists clerk_sync.backfill_seen (
    run_id   bigint not null references clerk_sync.backfill_runs (id) on delete cascade,
    user_id  text not null,
    primary key (run_id, user_id)
);
