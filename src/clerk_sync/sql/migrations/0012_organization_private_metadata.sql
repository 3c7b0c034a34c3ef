-- clerk-sync schema, version 12: organizations' and memberships' private_metadata, kept as users'
-- is (clerk_sync.private_metadata, version 10).
--
-- public.organizations and public.organization_memberships do not hold private_metadata; kept
-- here only when it is not empty (most rows: no row at all), so that a custom column added later
-- on a private_metadata path can be filled without calling Clerk. Written by the write path with
-- the row, from the newest applied version (sql/repeatable/15_organizations.sql); dropped when it
-- becomes empty or the organization is deleted or the membership ends. Never readable by clients
-- (the clerk_sync schema is locked down: sql/repeatable/90_supabase.sql).
create table if not exists clerk_sync.organization_private_metadata (
    organization_id   text primary key,
    private_metadata  jsonb not null
);

create table if not exists clerk_sync.membership_private_metadata (
    membership_id     text primary key,
    private_metadata  jsonb not null
);
