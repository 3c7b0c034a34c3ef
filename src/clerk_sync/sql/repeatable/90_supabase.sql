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

    -- The helpers are the signed-in user's, not the service role's (nor anon's).
    revoke execute on function public.clerk_sync_is_member(text) from service_role;
    revoke execute on function public.clerk_sync_org_role(text) from service_role;
    revoke execute on function public.clerk_sync_active_org_id() from service_role;
    grant execute on function public.clerk_sync_is_member(text) to authenticated;
    grant execute on function public.clerk_sync_org_role(text) to authenticated;
    grant execute on function public.clerk_sync_active_org_id() to authenticated;

    -- A signed-in user reads their organizations and the live memberships of those; no write
    -- policy at all.
    alter table public.organizations enable row level security;
    drop policy if exists "clerk-sync: members read their organizations" on public.organizations;
    create policy "clerk-sync: members read their organizations" on public.organizations
        for select to authenticated
        using (public.clerk_sync_is_member(id));
    alter table public.organization_memberships enable row level security;
    drop policy if exists "clerk-sync: members read their organizations' members"
        on public.organization_memberships;
    create policy "clerk-sync: members read their organizations' members"
        on public.organization_memberships
        for select to authenticated
        using (deleted_at is null and public.clerk_sync_is_member(organization_id));
    revoke all on table public.organizations, public.organization_memberships
        from public, anon, authenticated;
    grant select on table public.organizations, public.organization_memberships to authenticated;
    grant select, insert, update, delete
        on table public.organizations, public.organization_memberships to service_role;

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
