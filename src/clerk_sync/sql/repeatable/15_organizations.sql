-- Organizations and memberships: what their events need, and how a batch applies them. The
-- write path (sql/repeatable/20_write_path.sql) classifies them (kinds 'organization',
-- 'organization_delete', 'membership', 'membership_delete'), asks clerk_sync.organization_event_problem
-- whether one can be applied, locks their organizations as it locks users, and hands a batch that
-- has any (or a user.deleted, whose memberships end) to clerk_sync.apply_organization_events,
-- before its own statement: a batch of user.created/updated and session events never runs any
-- of this.
--
-- Repeatable: `migrate` runs this file again whenever its content changes (CREATE OR REPLACE only).
-- Before 20_write_path.sql, whose functions call these.

-- Whether a JSON value is an id as Clerk sends one: a non-empty string of at most 255 characters.
create or replace function clerk_sync.is_id(p_id jsonb)
returns boolean
language sql
immutable
parallel safe
as $$
    select coalesce(pg_catalog.jsonb_typeof(p_id) = 'string' and p_id <> '""'
                    and pg_catalog.length(p_id #>> '{}') <= 255, false)
$$;

-- Why an organization as Clerk sends it (an organization event's data, or the organization a
-- membership carries) cannot be written, or null.
create or replace function clerk_sync.organization_problem(p_org jsonb)
returns text
language sql
immutable
parallel safe
as $$
    select case
        when pg_catalog.jsonb_typeof(p_org) is distinct from 'object'
            then 'without an organization'
        when not clerk_sync.is_id(p_org -> 'id')
            then 'without an organization id'
        when not clerk_sync.is_ms(p_org -> 'updated_at')
            then 'with an organization without a millisecond updated_at'
        when coalesce(p_org -> 'created_at', 'null') <> 'null'
             and not clerk_sync.is_ms(p_org -> 'created_at')
            then 'with an organization with a malformed created_at'
        when pg_catalog.jsonb_typeof(p_org -> 'max_allowed_memberships') not in ('number', 'null')
             or (pg_catalog.jsonb_typeof(p_org -> 'max_allowed_memberships') = 'number'
                 and not (pg_catalog.scale((p_org -> 'max_allowed_memberships')::numeric) = 0
                          and (p_org -> 'max_allowed_memberships')::numeric
                              between -2147483648 and 2147483647))
            then 'with an organization with a malformed max_allowed_memberships'
        when pg_catalog.jsonb_typeof(p_org -> 'admin_delete_enabled') not in ('boolean', 'null')
            then 'with an organization with a malformed admin_delete_enabled'
        when pg_catalog.jsonb_typeof(p_org -> 'public_metadata') not in ('object', 'null')
            then 'with an organization with a malformed public_metadata'
    end
$$;

-- Why an organization or membership event cannot be applied (the message of the batch's
-- refusal), or null. Not inlined (SET search_path): inlined, its checks would be set up in the
-- write path's first statement for every batch, user events alone too; as a call, only an
-- organization event pays for it. organization.deleted carries only the id; a membership names its user in
-- public_user_data and carries its organization in full, whose updated_at orders it.
create or replace function clerk_sync.organization_event_problem(
    p_type text, p_kind text, p_data jsonb
)
returns text
language sql
immutable
parallel safe
set search_path = ''
as $$
    select p_type || ' event ' || case
        when p_kind = 'organization_delete' then
            case when not clerk_sync.is_id(p_data -> 'id') then 'without an organization id' end
        when p_kind = 'organization' then clerk_sync.organization_problem(p_data)
        when not clerk_sync.is_id(p_data -> 'id')
            then 'without a membership id'
        when not clerk_sync.is_id(p_data -> 'public_user_data' -> 'user_id')
            then 'without a user id'
        when p_kind = 'membership' and not clerk_sync.is_ms(p_data -> 'updated_at')
            then 'without a millisecond updated_at'
        when coalesce(p_data -> 'created_at', 'null') <> 'null'
             and not clerk_sync.is_ms(p_data -> 'created_at')
            then 'with a malformed created_at'
        when pg_catalog.jsonb_typeof(p_data -> 'permissions') not in ('array', 'null')
            then 'with malformed permissions'
        when pg_catalog.jsonb_typeof(p_data -> 'public_metadata') not in ('object', 'null')
            then 'with a malformed public_metadata'
        else clerk_sync.organization_problem(p_data -> 'organization')
    end
$$;

-- Apply a batch's organization, membership and invitation events (the batch is valid and its
-- locks are held), one at a time in batch order: they are rare, and each sees what the one
-- before wrote.
-- Returns their outcomes, indexed by the event's position in the batch (null elsewhere); the
-- caller records them in the inbox with the rest. The rules (docs: the contract's v2 section):
--   * an organization's and a membership's columns come from the event with the greatest
--     data.updated_at; an older or equal one is stale;
--   * a membership writes its organization too, when that is newer (or new) and not deleted;
--   * organization.deleted and organizationMembership.deleted always win (deleted_at, or the row
--     removed in hard mode, and a tombstone), and end the organization's live memberships (and
--     its invitations: 16_invitations.sql, whose rules invitation events follow); a
--     user deleted earlier (in this batch or before) ends their live memberships and makes later
--     membership events stale;
--   * one live membership per organization and user: the one created later (then the greater
--     id) is live, the other ends (with a tombstone); one created earlier never becomes live.
create or replace function clerk_sync.apply_organization_events(
    p_svix_ids text[],
    p_events jsonb[],
    p_delete_mode text
)
returns text[]
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_event record;
    v_outcomes text[];
    v_deleted_users text[] := '{}';
    v_ending_organizations text[];
    v_ending_users text[];
    v_org jsonb;
    v_member_id text;
    v_version timestamptz;
    v_created timestamptz;
    v_org_deleted boolean;
    v_rows bigint;
    v_changed boolean;
begin
    -- The memberships this batch's deletes may end (those of its organization.deleted and
    -- user.deleted events), locked first and in one global order (by id). An organization's
    -- delete and a user's end the same memberships from two sides, and take different locks
    -- (the organization's, the user's): ending them in each statement's own order, two such
    -- batches could each hold a row the other waits for, and PostgreSQL would abort one of
    -- them (a deadlock).
    select pg_catalog.array_agg(b.organization_id) filter (where b.kind = 'organization_delete'),
           pg_catalog.array_agg(b.user_id) filter (where b.kind = 'delete')
    into v_ending_organizations, v_ending_users
    from clerk_sync.batch_events(p_svix_ids, p_events) as b;
    if v_ending_organizations is not null or v_ending_users is not null then
        perform 1 from public.organization_memberships as m
        where m.organization_id = any(v_ending_organizations) or m.user_id = any(v_ending_users)
        order by m.id
        for update;
    end if;

    for v_event in
        -- Each svix-id's first delivery, unless handled before (as the batch's `fresh`).
        select f.n, f.svix_id, f.type, f.kind, f.user_id, f.organization_id,
               f.event -> 'data' as data
        from (
            select distinct on (b.svix_id) b.*
            from clerk_sync.batch_events(p_svix_ids, p_events) as b
            where not exists (select 1 from clerk_sync.inbox as i where i.svix_id = b.svix_id)
            order by b.svix_id, b.n
        ) as f
        where f.organization_id is not null or f.kind = 'delete'
        order by f.n
    loop
        if v_event.kind = 'delete' then
            -- user.deleted: the user's live memberships end (their outcome is the batch's).
            if not v_event.user_id = any(v_deleted_users)
               and not exists (select 1 from clerk_sync.tombstones as t
                               where t.user_id = v_event.user_id)
            then
                if p_delete_mode = 'hard' then
                    delete from public.organization_memberships as m
                    where m.user_id = v_event.user_id;
                else
                    update public.organization_memberships as m set deleted_at = now()
                    where m.user_id = v_event.user_id and m.deleted_at is null;
                end if;
            end if;
            v_deleted_users := v_deleted_users || v_event.user_id;
            continue;
        end if;
        v_changed := false;
        v_org_deleted := exists (select 1 from clerk_sync.organization_tombstones as t
                                 where t.organization_id = v_event.organization_id);

        if v_event.kind = 'invitation' then
            v_outcomes[v_event.n] := clerk_sync.apply_invitation_event(
                v_event.type, v_event.data, v_org_deleted);
            continue;
        end if;

        if v_event.kind = 'organization_delete' then
            if not v_org_deleted then
                insert into clerk_sync.organization_tombstones (organization_id, deleted_at, svix_id)
                values (v_event.organization_id, now(), v_event.svix_id);
                perform clerk_sync.end_organization_invitations(v_event.organization_id,
                                                                p_delete_mode);
                if p_delete_mode = 'hard' then
                    delete from public.organization_memberships as m
                    where m.organization_id = v_event.organization_id;
                    delete from public.organizations as o where o.id = v_event.organization_id;
                else
                    update public.organization_memberships as m set deleted_at = now()
                    where m.organization_id = v_event.organization_id and m.deleted_at is null;
                    update public.organizations as o set deleted_at = now()
                    where o.id = v_event.organization_id;
                end if;
                v_changed := true;
            end if;
            v_outcomes[v_event.n] := case when v_changed then 'applied' else 'stale' end;
            continue;
        end if;

        -- The organization as sent, when it is newer than the row (or there is none).
        v_org := case when v_event.kind = 'organization' then v_event.data
                      else v_event.data -> 'organization' end;
        if not v_org_deleted then
            insert into public.organizations as o (
                -- custom columns of organizations: names
                id, name, slug, image_url, created_by, public_metadata, max_allowed_memberships,
                admin_delete_enabled, created_at, updated_at
            )
            values (
                -- custom columns of organizations: values from v_org
                v_event.organization_id,
                v_org ->> 'name',
                v_org ->> 'slug',
                v_org ->> 'image_url',
                v_org ->> 'created_by',
                coalesce(nullif(v_org -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
                (v_org ->> 'max_allowed_memberships')::integer,
                (v_org ->> 'admin_delete_enabled')::boolean,
                clerk_sync.ms_to_timestamptz(v_org -> 'created_at'),
                clerk_sync.ms_to_timestamptz(v_org -> 'updated_at')
            )
            on conflict (id) do update set
                -- custom columns of organizations: updates
                name = excluded.name,
                slug = excluded.slug,
                image_url = excluded.image_url,
                created_by = excluded.created_by,
                public_metadata = excluded.public_metadata,
                max_allowed_memberships = excluded.max_allowed_memberships,
                admin_delete_enabled = excluded.admin_delete_enabled,
                created_at = coalesce(excluded.created_at, o.created_at),
                updated_at = excluded.updated_at
            where o.updated_at is null or o.updated_at < excluded.updated_at;
            get diagnostics v_rows = row_count;
            v_changed := v_rows > 0;
        end if;

        if v_event.kind in ('membership', 'membership_delete')
           and not v_org_deleted
           and not v_event.user_id = any(v_deleted_users)
           and not exists (select 1 from clerk_sync.tombstones as t
                           where t.user_id = v_event.user_id)
           and not exists (select 1 from clerk_sync.membership_tombstones as t
                           where t.membership_id = v_event.data ->> 'id')
        then
            v_member_id := v_event.data ->> 'id';
            v_created := clerk_sync.ms_to_timestamptz(v_event.data -> 'created_at');
            if v_event.kind = 'membership_delete' then
                insert into clerk_sync.membership_tombstones (
                    membership_id, organization_id, user_id, created_at, deleted_at, svix_id
                )
                values (v_member_id, v_event.organization_id, v_event.user_id, v_created, now(),
                        v_event.svix_id);
                if p_delete_mode = 'hard' then
                    delete from public.organization_memberships as m where m.id = v_member_id;
                else
                    update public.organization_memberships as m set deleted_at = now()
                    where m.id = v_member_id and m.deleted_at is null;
                end if;
                v_changed := true;
            else
                v_version := clerk_sync.ms_to_timestamptz(v_event.data -> 'updated_at');
                if not exists (
                    select 1 from public.organization_memberships as m
                    where m.id = v_member_id and m.updated_at >= v_version
                ) and not exists (
                    -- Another membership of the pair, created later.
                    select 1 from public.organization_memberships as m
                    where m.organization_id = v_event.organization_id
                      and m.user_id = v_event.user_id and m.id <> v_member_id
                      and (coalesce(m.created_at, '-infinity'), m.id)
                          > (coalesce(v_created, '-infinity'), v_member_id)
                    union all
                    select 1 from clerk_sync.membership_tombstones as t
                    where t.organization_id = v_event.organization_id
                      and t.user_id = v_event.user_id and t.membership_id <> v_member_id
                      and (coalesce(t.created_at, '-infinity'), t.membership_id)
                          > (coalesce(v_created, '-infinity'), v_member_id)
                ) then
                    -- The pair's live membership, created earlier, ends: this one replaces it.
                    insert into clerk_sync.membership_tombstones (
                        membership_id, organization_id, user_id, created_at, deleted_at, svix_id
                    )
                    select m.id, m.organization_id, m.user_id, m.created_at, now(), v_event.svix_id
                    from public.organization_memberships as m
                    where m.organization_id = v_event.organization_id
                      and m.user_id = v_event.user_id and m.id <> v_member_id
                      and m.deleted_at is null
                    on conflict (membership_id) do nothing;
                    if p_delete_mode = 'hard' then
                        delete from public.organization_memberships as m
                        where m.organization_id = v_event.organization_id
                          and m.user_id = v_event.user_id and m.id <> v_member_id;
                    else
                        update public.organization_memberships as m set deleted_at = now()
                        where m.organization_id = v_event.organization_id
                          and m.user_id = v_event.user_id and m.id <> v_member_id
                          and m.deleted_at is null;
                    end if;
                    insert into public.organization_memberships as m (
                        -- custom columns of organization_memberships: names
                        id, organization_id, user_id, role, permissions, public_metadata,
                        created_at, updated_at
                    )
                    values (
                        -- custom columns of organization_memberships: values from v_event.data
                        v_member_id,
                        v_event.organization_id,
                        v_event.user_id,
                        v_event.data ->> 'role',
                        case when pg_catalog.jsonb_typeof(v_event.data -> 'permissions') = 'array'
                             then array(select pg_catalog.jsonb_array_elements_text(
                                                   v_event.data -> 'permissions'))
                             else '{}'::text[] end,
                        coalesce(nullif(v_event.data -> 'public_metadata', 'null'::jsonb),
                                 '{}'::jsonb),
                        v_created,
                        v_version
                    )
                    on conflict (id) do update set
                        -- custom columns of organization_memberships: updates
                        role = excluded.role,
                        permissions = excluded.permissions,
                        public_metadata = excluded.public_metadata,
                        created_at = coalesce(excluded.created_at, m.created_at),
                        updated_at = excluded.updated_at;
                    v_changed := true;
                end if;
            end if;
        end if;
        v_outcomes[v_event.n] := case when v_changed then 'applied' else 'stale' end;
    end loop;
    return v_outcomes;
end
$$;
