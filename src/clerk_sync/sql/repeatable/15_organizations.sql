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
-- refusal), or null. Inlined into the write path's first statement (no SET clause: it runs
-- with the caller's empty search_path), where its checks sit in a CASE branch that only an
-- organization or membership event reaches: a batch of user events builds them but never runs
-- them. As a call with SET search_path it cost some 80 µs per event (the setting saved and
-- restored each time): bench/apply_batch.py --mix measured the first statement of a 100-event
-- mixed batch at 2.6 ms that way, 0.6 ms inlined (0.5 ms for 100 user events either way).
-- organization.deleted carries only the id; a membership names its user in public_user_data
-- and carries its organization in full, whose updated_at orders it.
create or replace function clerk_sync.organization_event_problem(
    p_type text, p_kind text, p_data jsonb
)
returns text
language sql
immutable
parallel safe
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

-- A Clerk object's private_metadata as clerk-sync keeps it (clerk_sync.private_metadata and its
-- organizations' and memberships' kin): only when it is a non-empty object, else null (nothing
-- kept, and what was kept is dropped).
create or replace function clerk_sync.private_to_keep(p_object jsonb)
returns jsonb
language sql
immutable
parallel safe
as $$
    select case when pg_catalog.jsonb_typeof(p_object -> 'private_metadata') = 'object'
                     and p_object -> 'private_metadata' <> '{}'
                then p_object -> 'private_metadata' end
$$;

-- End these memberships (deleted_at, or the rows removed in hard delete mode), and drop the
-- private_metadata kept for them.
create or replace function clerk_sync.end_memberships(p_ids text[], p_delete_mode text)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    delete from clerk_sync.membership_private_metadata as p where p.membership_id = any(p_ids);
    if p_delete_mode = 'hard' then
        delete from public.organization_memberships as m where m.id = any(p_ids);
    else
        update public.organization_memberships as m set deleted_at = now()
        where m.id = any(p_ids) and m.deleted_at is null;
    end if;
end
$$;

-- Write a set of organization and membership events (kinds 'organization', 'membership' and
-- 'membership_delete'), the n-th of p_events being the (p_first + n - 1)-th of its batch, with
-- the same result as applying them one at a time in batch order (the rules below), in a few
-- statements whatever their number. That holds for any set whose events do not see each other's
-- membership writes: one event per membership id, one per organization and user pair, no event
-- naming a membership whose row has another pair, and none of the deletes that end several
-- memberships (organization.deleted, user.deleted) or invitations:
-- clerk_sync.apply_organization_events checks that before it hands consecutive runs of a batch
-- over (each run such a set), and else hands each event over alone.
-- p_deleted_users: users whose user.deleted came earlier in the batch (their tombstones are
-- written after). Each svix-id's first delivery counts, unless handled before (as the batch's
-- `fresh`). Returns each event's batch index and outcome.
create or replace function clerk_sync.apply_organization_writes(
    p_svix_ids text[],
    p_events jsonb[],
    p_first bigint,
    p_delete_mode text,
    p_deleted_users text[]
)
returns table (n bigint, outcome text)
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_n bigint[];
    v_changed boolean[];
    v_writes jsonb;
    v_ended text[];
begin
    -- Per event: whether its organization (its data, or the membership's) is newer than the row
    -- and every earlier event's of the batch, and for a membership whether it is written.
    with events as materialized (
        select f.n + p_first - 1 as n, f.svix_id, f.kind, f.user_id, f.organization_id,
               f.event -> 'data' as data,
               case when f.kind = 'organization' then f.event -> 'data'
                    else f.event -> 'data' -> 'organization' end as org,
               exists (select 1 from clerk_sync.organization_tombstones as t
                       where t.organization_id = f.organization_id) as org_deleted
        from (
            select distinct on (b.svix_id) b.n, b.svix_id, b.event, b.kind, b.user_id,
                   b.organization_id
            from clerk_sync.batch_events(p_svix_ids, p_events) as b
            where not exists (select 1 from clerk_sync.inbox as i where i.svix_id = b.svix_id)
            order by b.svix_id, b.n
        ) as f
        where f.kind in ('organization', 'membership', 'membership_delete')
    ),
    versioned as (
        select e.*, clerk_sync.ms_to_timestamptz(e.org -> 'updated_at') as org_version,
               max(clerk_sync.ms_to_timestamptz(e.org -> 'updated_at')) over (
                   partition by e.organization_id order by e.n
                   rows between unbounded preceding and 1 preceding) as earlier_version
        from events as e
        where not e.org_deleted
    ),
    org_decided as (
        select v.*,
               v.org_version > coalesce(greatest(o.updated_at, v.earlier_version), '-infinity')
                   as org_changed
        from versioned as v
        left join public.organizations as o on o.id = v.organization_id
    ),
    -- Per organization: the newest version sent, when it is newer than the row, and the
    -- created_at it ends with (each write keeps the one before when it sends none).
    winners as (
        select distinct on (d.organization_id) d.organization_id, d.org, c.created_at
        from org_decided as d
        join (select c.organization_id,
                     (pg_catalog.array_agg(c.created_at order by c.n desc)
                          filter (where c.created_at is not null))[1] as created_at
              from (select d.organization_id, d.n,
                           clerk_sync.ms_to_timestamptz(d.org -> 'created_at') as created_at
                    from org_decided as d where d.org_changed) as c
              group by c.organization_id) as c on c.organization_id = d.organization_id
        where d.org_changed
        order by d.organization_id, d.org_version desc, d.n
    ),
    org_written as (
        insert into public.organizations as o (
            -- custom columns of organizations: names
            id, name, slug, image_url, created_by, public_metadata, max_allowed_memberships,
            admin_delete_enabled, created_at, updated_at
        )
        select
            -- custom columns of organizations: values from w.org
            w.organization_id,
            w.org ->> 'name',
            w.org ->> 'slug',
            w.org ->> 'image_url',
            w.org ->> 'created_by',
            coalesce(nullif(w.org -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
            (w.org ->> 'max_allowed_memberships')::integer,
            (w.org ->> 'admin_delete_enabled')::boolean,
            w.created_at,
            clerk_sync.ms_to_timestamptz(w.org -> 'updated_at')
        from winners as w
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
        returning o.id
    ),
    org_private_kept as (
        insert into clerk_sync.organization_private_metadata as p (
            organization_id, private_metadata
        )
        select w.organization_id, clerk_sync.private_to_keep(w.org) from winners as w
        where clerk_sync.private_to_keep(w.org) is not null
        on conflict (organization_id) do update set private_metadata = excluded.private_metadata
        where p.private_metadata is distinct from excluded.private_metadata
        returning p.organization_id
    ),
    org_private_dropped as (
        delete from clerk_sync.organization_private_metadata as p
        using winners as w
        where p.organization_id = w.organization_id and clerk_sync.private_to_keep(w.org) is null
        returning p.organization_id
    ),
    -- The memberships written: not of a deleted organization, user or membership; a delete
    -- always; a created/updated one when newer than its row and no membership of its pair was
    -- created later.
    members as (
        select e.n, e.svix_id, e.kind, e.user_id, e.organization_id, e.data,
               e.data ->> 'id' as member_id,
               clerk_sync.ms_to_timestamptz(e.data -> 'created_at') as created,
               clerk_sync.ms_to_timestamptz(e.data -> 'updated_at') as version
        from events as e
        where e.kind in ('membership', 'membership_delete')
          and not e.org_deleted
          and not e.user_id = any(p_deleted_users)
          and not exists (select 1 from clerk_sync.tombstones as t where t.user_id = e.user_id)
          and not exists (select 1 from clerk_sync.membership_tombstones as t
                          where t.membership_id = e.data ->> 'id')
    ),
    member_written as (
        select m.* from members as m
        where m.kind = 'membership_delete'
           or (not exists (
                   select 1 from public.organization_memberships as r
                   where r.id = m.member_id and r.updated_at >= m.version
               ) and not exists (
                   -- Another membership of the pair, created later.
                   select 1 from public.organization_memberships as r
                   where r.organization_id = m.organization_id
                     and r.user_id = m.user_id and r.id <> m.member_id
                     and (coalesce(r.created_at, '-infinity'), r.id)
                         > (coalesce(m.created, '-infinity'), m.member_id)
                   union all
                   select 1 from clerk_sync.membership_tombstones as t
                   where t.organization_id = m.organization_id
                     and t.user_id = m.user_id and t.membership_id <> m.member_id
                     and (coalesce(t.created_at, '-infinity'), t.membership_id)
                         > (coalesce(m.created, '-infinity'), m.member_id)
               ))
    )
    select pg_catalog.array_agg(e.n order by e.n),
           pg_catalog.array_agg(coalesce(d.org_changed, false) or w.n is not null order by e.n),
           (select pg_catalog.jsonb_agg(pg_catalog.to_jsonb(w)) from member_written as w),
           -- The memberships they end: the others of a written one's pair, and those deleted.
           (select pg_catalog.array_agg(r.id)
            from member_written as w
            join public.organization_memberships as r
                on r.organization_id = w.organization_id and r.user_id = w.user_id
                   and r.id <> w.member_id
            where w.kind = 'membership')
           || (select pg_catalog.array_agg(w.member_id) from member_written as w
               where w.kind = 'membership_delete')
    into v_n, v_changed, v_writes, v_ended
    from events as e
    left join org_decided as d on d.n = e.n
    left join member_written as w on w.n = e.n;

    if v_writes is not null then
        -- Most memberships written end none (a new pair, or its own row updated).
        if v_ended is not null then
            -- The pair's live membership, created earlier, ends: a membership written replaces it;
            -- a delete ends its own.
            insert into clerk_sync.membership_tombstones as t (
                membership_id, organization_id, user_id, created_at, deleted_at, svix_id
            )
            select r.id, r.organization_id, r.user_id, r.created_at, now(), w.svix_id
            from pg_catalog.jsonb_to_recordset(v_writes) as w(
                kind text, svix_id text, member_id text, organization_id text, user_id text)
            join public.organization_memberships as r
                on r.organization_id = w.organization_id and r.user_id = w.user_id
                   and r.id <> w.member_id and r.deleted_at is null
            where w.kind = 'membership'
            union all
            select w.member_id, w.organization_id, w.user_id, w.created, now(), w.svix_id
            from pg_catalog.jsonb_to_recordset(v_writes) as w(
                kind text, svix_id text, member_id text, organization_id text, user_id text,
                created timestamptz)
            where w.kind = 'membership_delete'
            on conflict (membership_id) do nothing;

            perform clerk_sync.end_memberships(v_ended, p_delete_mode);
        end if;

        -- Their private_metadata, kept as the organizations' above, with the rows.
        with written as (
            select w.* from pg_catalog.jsonb_to_recordset(v_writes)
                as w(kind text, member_id text, data jsonb)
            where w.kind = 'membership'
        ),
        private_kept as (
            insert into clerk_sync.membership_private_metadata as p (
                membership_id, private_metadata
            )
            select w.member_id, clerk_sync.private_to_keep(w.data) from written as w
            where clerk_sync.private_to_keep(w.data) is not null
            on conflict (membership_id) do update set private_metadata = excluded.private_metadata
            where p.private_metadata is distinct from excluded.private_metadata
            returning p.membership_id
        ),
        private_dropped as (
            delete from clerk_sync.membership_private_metadata as p
            using written as w
            where p.membership_id = w.member_id and clerk_sync.private_to_keep(w.data) is null
            returning p.membership_id
        )
        insert into public.organization_memberships as m (
            -- custom columns of organization_memberships: names
            id, organization_id, user_id, role, permissions, public_metadata,
            created_at, updated_at
        )
        select
            -- custom columns of organization_memberships: values from w.data
            w.member_id,
            w.organization_id,
            w.user_id,
            w.data ->> 'role',
            case when pg_catalog.jsonb_typeof(w.data -> 'permissions') = 'array'
                 then array(select pg_catalog.jsonb_array_elements_text(w.data -> 'permissions'))
                 else '{}'::text[] end,
            coalesce(nullif(w.data -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
            w.created,
            w.version
        from pg_catalog.jsonb_to_recordset(v_writes)
                 as w(kind text, member_id text, organization_id text, user_id text, data jsonb,
                      created timestamptz, version timestamptz)
        where w.kind = 'membership'
        on conflict (id) do update set
            -- custom columns of organization_memberships: updates
            role = excluded.role,
            permissions = excluded.permissions,
            public_metadata = excluded.public_metadata,
            created_at = coalesce(excluded.created_at, m.created_at),
            updated_at = excluded.updated_at;

    end if;

    return query
    select u.n, case when u.changed then 'applied' else 'stale' end
    from unnest(v_n, v_changed) as u(n, changed);
end
$$;

-- Apply a batch's organization, membership and invitation events (the batch is valid and its
-- locks are held), with the same result as applying them one at a time in batch order, each
-- seeing what the one before wrote. The common batch (creates and updates of distinct
-- memberships and organizations, and repeats of one membership or organization and user pair:
-- consecutive runs, each without repeats) is written set-based, by
-- clerk_sync.apply_organization_writes; a batch with deletes of organizations or users,
-- invitations, or a membership id named with two pairs goes one event at a time.
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
    v_one_by_one boolean;
    v_member_n bigint[];
    v_member_keys text[];
    v_pair_keys text[];
    v_written bigint[];
    v_svix_ids text[];
    v_events jsonb[];
    v_seen text[] := '{}';
    v_first bigint := 1;
    v_write record;
begin
    -- The memberships this batch's deletes may end (those of its organization.deleted and
    -- user.deleted events), locked first and in one global order (by id). An organization's
    -- delete and a user's end the same memberships from two sides, and take different locks
    -- (the organization's, the user's): ending them in each statement's own order, two such
    -- batches could each hold a row the other waits for, and PostgreSQL would abort one of
    -- them (a deadlock). And whether the batch's events may be written as one set (see
    -- clerk_sync.apply_organization_writes, in consecutive runs of the batch: see below):
    -- else they go one by one.
    select pg_catalog.array_agg(b.organization_id) filter (where b.kind = 'organization_delete'),
           pg_catalog.array_agg(b.user_id) filter (where b.kind = 'delete'),
           pg_catalog.bool_or(b.kind in ('organization_delete', 'delete', 'invitation'))
               or pg_catalog.count(distinct b.member_id)
                  <> pg_catalog.count(distinct (b.member_id, b.organization_id, b.user_id))
                         filter (where b.member_id is not null)
               or pg_catalog.bool_or(exists (
                      select 1 from public.organization_memberships as m
                      where m.id = b.member_id
                        and (m.organization_id, m.user_id) <> (b.organization_id, b.user_id))),
           pg_catalog.array_agg(b.n order by b.n) filter (where b.member_id is not null),
           pg_catalog.array_agg(pg_catalog.to_jsonb(b.member_id)::text order by b.n)
               filter (where b.member_id is not null),
           pg_catalog.array_agg(pg_catalog.jsonb_build_array(b.organization_id, b.user_id)::text
                                order by b.n)
               filter (where b.member_id is not null),
           pg_catalog.array_agg(b.n)
               filter (where b.kind in ('organization', 'membership', 'membership_delete'))
    into v_ending_organizations, v_ending_users, v_one_by_one, v_member_n, v_member_keys,
         v_pair_keys, v_written
    from (select distinct on (b.svix_id) b.n, b.kind, b.user_id, b.organization_id,
                 case when b.kind in ('membership', 'membership_delete')
                      then b.event -> 'data' ->> 'id' end as member_id
          from clerk_sync.batch_events(p_svix_ids, p_events) as b
          where (b.organization_id is not null or b.kind = 'delete')
            and not exists (select 1 from clerk_sync.inbox as i where i.svix_id = b.svix_id)
          order by b.svix_id, b.n) as b;
    if v_ending_organizations is not null or v_ending_users is not null then
        perform 1 from public.organization_memberships as m
        where m.organization_id = any(v_ending_organizations) or m.user_id = any(v_ending_users)
        order by m.id
        for update;
    end if;

    -- Written as sets: the batch cut into consecutive runs, each with at most one event per
    -- membership id and per organization and user pair (a new run starts at the event that
    -- would repeat one), written one run after another, each seeing what the one before wrote:
    -- the same as one event at a time. Every event of a membership id names the same pair (and
    -- its row's, checked above), so no run sees a row of that id with another pair. The runs
    -- get only the events they write, the rest blanked (kind 'ignore', no svix-id): the other
    -- kinds, and a delivery repeated in the batch but its first (the inbox, written after this
    -- step, does not know it yet).
    if not v_one_by_one then
        select pg_catalog.array_agg(case when u.n = any(v_written) then u.svix_id end order by u.n),
               pg_catalog.array_agg(case when u.n = any(v_written) then u.event else '{}' end
                                    order by u.n)
        into v_svix_ids, v_events
        from unnest(p_svix_ids, p_events) with ordinality as u(svix_id, event, n);
        for i in 1 .. coalesce(pg_catalog.cardinality(v_member_n), 0) loop
            if v_member_keys[i] = any(v_seen) or v_pair_keys[i] = any(v_seen) then
                for v_write in
                    select w.n, w.outcome
                    from clerk_sync.apply_organization_writes(
                        v_svix_ids[v_first:v_member_n[i] - 1], v_events[v_first:v_member_n[i] - 1],
                        v_first, p_delete_mode, '{}') as w
                loop
                    v_outcomes[v_write.n] := v_write.outcome;
                end loop;
                v_first := v_member_n[i];
                v_seen := '{}';
            end if;
            v_seen := v_seen || v_member_keys[i] || v_pair_keys[i];
        end loop;
        for v_write in
            select w.n, w.outcome
            from clerk_sync.apply_organization_writes(
                v_svix_ids[v_first:], v_events[v_first:], v_first, p_delete_mode, '{}') as w
        loop
            v_outcomes[v_write.n] := v_write.outcome;
        end loop;
        return v_outcomes;
    end if;

    for v_event in
        -- Each svix-id's first delivery, unless handled before (as the batch's `fresh`).
        select f.n, f.svix_id, f.type, f.kind, f.user_id, f.organization_id, f.event,
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
                perform clerk_sync.end_memberships(
                    array(select m.id from public.organization_memberships as m
                          where m.user_id = v_event.user_id), p_delete_mode);
            end if;
            v_deleted_users := v_deleted_users || v_event.user_id;
            continue;
        end if;

        if v_event.kind = 'invitation' then
            v_outcomes[v_event.n] := clerk_sync.apply_invitation_event(
                v_event.type, v_event.data,
                exists (select 1 from clerk_sync.organization_tombstones as t
                        where t.organization_id = v_event.organization_id));
            continue;
        end if;

        if v_event.kind = 'organization_delete' then
            if exists (select 1 from clerk_sync.organization_tombstones as t
                       where t.organization_id = v_event.organization_id) then
                v_outcomes[v_event.n] := 'stale';
                continue;
            end if;
            insert into clerk_sync.organization_tombstones (organization_id, deleted_at, svix_id)
            values (v_event.organization_id, now(), v_event.svix_id);
            perform clerk_sync.end_organization_invitations(v_event.organization_id,
                                                            p_delete_mode);
            delete from clerk_sync.organization_private_metadata as p
            where p.organization_id = v_event.organization_id;
            perform clerk_sync.end_memberships(
                array(select m.id from public.organization_memberships as m
                      where m.organization_id = v_event.organization_id), p_delete_mode);
            if p_delete_mode = 'hard' then
                delete from public.organizations as o where o.id = v_event.organization_id;
            else
                update public.organizations as o set deleted_at = now()
                where o.id = v_event.organization_id;
            end if;
            v_outcomes[v_event.n] := 'applied';
            continue;
        end if;

        -- An organization or membership event: a set of one.
        v_outcomes[v_event.n] := (
            select w.outcome
            from clerk_sync.apply_organization_writes(
                array[v_event.svix_id], array[v_event.event], v_event.n, p_delete_mode,
                v_deleted_users) as w);
    end loop;
    return v_outcomes;
end
$$;
