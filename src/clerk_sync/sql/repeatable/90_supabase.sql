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
--   * public.organizations and public.organization_memberships: a signed-in user reads the
--     organizations they have a live membership in and the live memberships of those; the
--     helpers public.clerk_sync_is_member, clerk_sync_org_role and clerk_sync_active_org_id,
--     for the app's own policies, executable by authenticated only (they read auth.jwt(), so
--     they exist only here);
--   * public.organization_invitations (invitees' email addresses): row-level security and no
--     policy, so no client role reads it; anon has no privilege on it and no client role writes.
--     authenticated's SELECT is the app's to grant with a policy of its own (docs/supabase.md):
--     its migration took Supabase's default grants back once, and this leaves that one alone;
--   * the public.clerk_sync_* functions: executable by service_role only, and SECURITY DEFINER,
--     so that the service role needs no privilege on schema clerk_sync to call them;
--   * schema clerk_sync (the inbox keeps raw payloads, private_metadata included): out of reach
--     of anon and authenticated.
-- On plain PostgreSQL there are no such roles: it changes nothing, with a notice saying so.
do $supabase$
declare
    v_function regprocedure;
    v_helper boolean;
    v_table regclass;
    v_reads boolean;
begin
    -- Supabase is where its API roles and auth.jwt() are.
    if (select count(*) from pg_catalog.pg_roles
        where rolname in ('anon', 'authenticated', 'service_role')) < 3
       or pg_catalog.to_regprocedure('auth.jwt()') is null
    then
        raise notice 'clerk-sync: no Supabase roles (anon, authenticated, service_role) and auth.jwt() in this database: skipped the row-level security and grants for them';
        return;
    end if;

    -- The app's helpers: whether the caller (the Clerk user id in the token's sub) has a live
    -- membership in an organization, their role there, and the active organization of their
    -- session token (o.id in v2 tokens; org_id in v1 ones, which have no o and no v = 2, so that
    -- a custom org_id claim cannot pose as the active organization of a v2 token). SECURITY
    -- DEFINER: they read the memberships whatever the caller's own policies allow.
    execute $helpers$
        create or replace function public.clerk_sync_is_member(org_id text)
        returns boolean
        language sql
        stable
        security definer
        set search_path = ''
        as $$
            select exists (
                select 1 from public.organization_memberships as m
                where m.organization_id = org_id and m.deleted_at is null
                  and m.user_id = (select auth.jwt() ->> 'sub')
            )
        $$;

        create or replace function public.clerk_sync_org_role(org_id text)
        returns text
        language sql
        stable
        security definer
        set search_path = ''
        as $$
            select m.role from public.organization_memberships as m
            where m.organization_id = org_id and m.deleted_at is null
              and m.user_id = (select auth.jwt() ->> 'sub')
        $$;

        create or replace function public.clerk_sync_active_org_id()
        returns text
        language sql
        stable
        security definer
        set search_path = ''
        as $$
            select case when auth.jwt() ? 'o' or auth.jwt() ->> 'v' = '2'
                        then auth.jwt() -> 'o' ->> 'id'
                        else auth.jwt() ->> 'org_id' end
        $$;
    $helpers$;

    -- The functions: the service role's only way in, running as their owner so that the
    -- service role needs no privilege on schema clerk_sync; the app's helpers are the
    -- signed-in user's instead (not the service role's, nor anon's). (CREATE OR REPLACE resets
    -- SECURITY DEFINER: this runs after every repeatable file that replaced one.)
    for v_function, v_helper in
        select p.oid::regprocedure,
               p.proname in ('clerk_sync_is_member', 'clerk_sync_org_role',
                             'clerk_sync_active_org_id')
        from pg_catalog.pg_proc p
        where p.pronamespace = 'public'::regnamespace and p.proname like 'clerk\_sync\_%'
        order by 1
    loop
        execute format('alter function %s security definer', v_function);
        execute format('revoke execute on function %s from public, anon, authenticated, '
                       'service_role', v_function);
        execute format('grant execute on function %s to %s', v_function,
                       case when v_helper then 'authenticated' else 'service_role' end);
    end loop;

    -- The synced tables: row-level security, written by the service role alone (no write
    -- policy at all); read by authenticated as the policies below let them, where `reads`.
    for v_table, v_reads in
        select t.name::regclass, t.reads
        from (values ('public.users', true),
                     ('public.organizations', true),
                     ('public.organization_memberships', true)) as t(name, reads)
    loop
        execute format('alter table %s enable row level security', v_table);
        execute format('revoke all on table %s from public, anon, authenticated', v_table);
        if v_reads then
            execute format('grant select on table %s to authenticated', v_table);
        end if;
        execute format('grant select, insert, update, delete on table %s to service_role',
                       v_table);
    end loop;

    -- A signed-in user reads their own row, and nothing else.
    drop policy if exists "clerk-sync: users read their own row" on public.users;
    create policy "clerk-sync: users read their own row" on public.users
        for select to authenticated
        using (id = (select auth.jwt() ->> 'sub'));

    -- A signed-in user reads their organizations and the live memberships of those.
    drop policy if exists "clerk-sync: members read their organizations" on public.organizations;
    create policy "clerk-sync: members read their organizations" on public.organizations
        for select to authenticated
        using (public.clerk_sync_is_member(id));
    drop policy if exists "clerk-sync: members read their organizations' members"
        on public.organization_memberships;
    create policy "clerk-sync: members read their organizations' members"
        on public.organization_memberships
        for select to authenticated
        using (deleted_at is null and public.clerk_sync_is_member(organization_id));

    -- Invitations: nobody reads them but the service role, unless the app's own policy says so.
    alter table public.organization_invitations enable row level security;
    revoke all on table public.organization_invitations from public, anon;
    revoke insert, update, delete, truncate, references, trigger
        on table public.organization_invitations from authenticated;
    grant select, insert, update, delete on table public.organization_invitations to service_role;

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
