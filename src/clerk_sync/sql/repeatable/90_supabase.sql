-- The lock-down for Supabase's roles. `migrate` runs it after every change to the schema
-- (whichever file brought the change), so it covers every clerk-sync function and table there is.
--
-- On Supabase, anyone holding the project's public anon (publishable) key reaches the database
-- as role anon, and as role authenticated once signed in (with Clerk as third-party auth, the
-- Clerk session token's `sub` is the Clerk user id). Supabase also grants those roles EXECUTE on
-- every new function in schema public and ALL on every new table there. Left so, anyone with the
-- anon key could call public.clerk_sync_apply and forge users. Here:
--   * public.users: row-level security, with one policy: a signed-in user reads their own row;
--     nobody but the service role (which bypasses RLS) writes;
--   * the public.clerk_sync_* functions: executable by service_role only, and SECURITY DEFINER,
--     so that the service role needs no privilege on schema clerk_sync to call them;
--   * schema clerk_sync (the inbox keeps raw payloads, private_metadata included): out of reach
--     of anon and authenticated.
-- On plain PostgreSQL there are no such roles: it changes nothing, with a notice saying so.
do $supabase$
declare
    v_function regprocedure;
begin
    -- Supabase is where its API roles and auth.jwt() are.
    if (select count(*) from pg_catalog.pg_roles
        where rolname in ('anon', 'authenticated', 'service_role')) < 3
       or pg_catalog.to_regprocedure('auth.jwt()') is null
    then
        raise notice 'clerk-sync: no Supabase roles (anon, authenticated, service_role) and auth.jwt() in this database: skipped the row-level security and grants for them';
        return;
    end if;

    -- The functions: the service role's only way in, running as their owner so that the
    -- service role needs no privilege on schema clerk_sync. (CREATE OR REPLACE resets SECURITY
    -- DEFINER: this runs after every repeatable file that replaced one.)
    for v_function in
        select p.oid::regprocedure from pg_catalog.pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.proname like 'clerk\_sync\_%'
        order by 1
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
end
$supabase$;
