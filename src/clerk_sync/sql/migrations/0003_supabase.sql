-- clerk-sync schema, version 3: locked down for Supabase's roles.
--
-- On Supabase, anyone holding the project's public anon (publishable) key reaches the database
-- as role anon, and as role authenticated once signed in (with Clerk as third-party auth, the
-- Clerk session token's `sub` is the Clerk user id). Supabase also grants those roles EXECUTE on
-- every new function in schema public and ALL on every new table there. Left so, anyone with the
-- anon key could call public.clerk_sync_apply and forge users. Here:
--   * public.users: row-level security, with one policy: a signed-in user reads their own row;
--     nobody but the service role (which bypasses RLS) writes;
--   * the clerk_sync_* functions: executable by service_role only, and SECURITY DEFINER, so that
--     the service role needs no privilege on schema clerk_sync to call them;
--   * schema clerk_sync (the inbox keeps raw payloads, private_metadata included): out of reach
--     of anon and authenticated.
-- On plain PostgreSQL there are no such roles: these steps are skipped, with a notice saying so.

-- The schema version, for callers that only reach the database through the REST API (REST
-- mode's readiness check, `clerk-sync serve` in REST mode).
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

-- The lockdown itself. Idempotent, and it covers every public.clerk_sync_* function there is,
-- so a later migration that adds one calls it again. False, having changed nothing, where
-- Supabase's roles or auth.jwt() are missing.
create or replace function clerk_sync.lock_down_for_supabase()
returns boolean
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_function regprocedure;
begin
    if (select count(*) from pg_catalog.pg_roles
        where rolname in ('anon', 'authenticated', 'service_role')) < 3
       or pg_catalog.to_regprocedure('auth.jwt()') is null
    then
        return false;
    end if;

    -- The functions: the service role's only way in, running as their owner so that the
    -- service role needs no privilege on schema clerk_sync.
    for v_function in
        select p.oid::regprocedure from pg_catalog.pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.proname like 'clerk\_sync\_%'
    loop
        execute format('alter function %s security definer', v_function);
        execute format('revoke execute on function %s from public, anon, authenticated',
                       v_function);
        execute format('grant execute on function %s to service_role', v_function);
    end loop;

    -- A signed-in user reads their own row, and nothing else; no write policy at all.
    alter table public.users enable row level security;
    drop policy if exists "clerk-sync: users read their own row" on public.users;
    create policy "clerk-sync: users read their own row" on public.users
        for select to authenticated
        using (id = (select auth.jwt() ->> 'sub'));
    revoke all on table public.users from public, anon, authenticated;
    grant select on table public.users to authenticated;
    grant select, insert, update, delete on table public.users to service_role;

    -- Bookkeeping stays private, now and for tables a later migration adds.
    revoke all on schema clerk_sync from public, anon, authenticated;
    revoke all on all tables in schema clerk_sync from public, anon, authenticated;
    revoke all on all sequences in schema clerk_sync from public, anon, authenticated;
    revoke all on all functions in schema clerk_sync from public, anon, authenticated;
    alter default privileges in schema clerk_sync
        revoke all on tables from public, anon, authenticated;
    alter default privileges in schema clerk_sync
        revoke all on sequences from public, anon, authenticated;
    alter default privileges in schema clerk_sync
        revoke all on functions from public, anon, authenticated;
    return true;
end
$$;

revoke execute on function clerk_sync.lock_down_for_supabase() from public;

do $supabase$
begin
    if not clerk_sync.lock_down_for_supabase() then
        raise notice 'clerk-sync: no Supabase roles (anon, authenticated, service_role) and auth.jwt() in this database: skipped the row-level security and grants for them';
    end if;
end
$supabase$;
