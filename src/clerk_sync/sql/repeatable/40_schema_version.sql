-- The schema version, for callers that only reach the database through the REST API (REST
-- mode's readiness check, `clerk-sync serve` in REST mode).
--
-- Repeatable: `migrate` runs this file again whenever its content changes.
create or replace function public.clerk_sync_schema_version()
returns integer
language sql
stable
security definer
set search_path = ''
as $$
    select coalesce(max(version), 0) from clerk_sync.schema_migrations
$$;

revoke execute on function public.clerk_sync_schema_version() from public;
