-- The write path: every write of a Clerk event, whoever calls it (the webhook, backfill, replay,
-- direct PostgreSQL or Supabase's REST API), goes through public.clerk_sync_apply_batch. This file
-- is its current definition, read top to bottom: what each event is and whether it can be applied
-- (clerk_sync.batch_events), the batch itself, its one-event form, the dead-letter record, and
-- backfill's prediction of the same rule (clerk_sync.classify_batch).
--
-- Repeatable: `migrate` runs this file again whenever its content changes, so it holds only
-- CREATE OR REPLACE (a changed signature needs a versioned migration that drops the old one).

-- The events of a batch, in order, with what each one is: its kind of write, its user, its
-- version (profile events: data.updated_at) and the sign-in time it carries, or the problem
-- that makes it impossible to apply (the one place that decides it: the webhook turns away only
-- bodies that are not JSON objects with a string "type" and an object "data", before this).
--   kind 'profile'  user.created, user.updated (and user.signed_in carrying a user: not a Clerk
--                   event, the sign-in signal is session.created, but old guides subscribe to it)
--   kind 'delete'   user.deleted
--   kind 'sign_in'  session.created: data.user.last_sign_in_at, else the session's created_at
--   kinds 'organization', 'organization_delete', 'membership', 'membership_delete'
--                   organization.* and organizationMembership.*, with their organization's id
--                   (and a membership's user): sql/repeatable/15_organizations.sql
--   kind 'invitation'
--                   organizationInvitation.*, with its organization_id (and, once accepted,
--                   its user_id): sql/repeatable/16_invitations.sql
--   kind 'ignore'   every other type
create or replace function clerk_sync.batch_events(p_svix_ids text[], p_events jsonb[])
returns table (
    n bigint, svix_id text, event jsonb, type text, kind text, user_id text, organization_id text,
    version timestamptz, sign_in timestamptz, problem text
)
language sql
stable
rows 10
as $$
    select k.n, k.svix_id, k.event, k.type, k.kind, k.user_ref #>> '{}',
           case k.kind
               when 'organization' then k.data ->> 'id'
               when 'organization_delete' then k.data ->> 'id'
               when 'membership' then k.data -> 'organization' ->> 'id'
               when 'membership_delete' then k.data -> 'organization' ->> 'id'
               when 'invitation' then k.data ->> 'organization_id'
           end,
           case when k.kind = 'profile' then clerk_sync.ms_to_timestamptz(k.data -> 'updated_at') end,
           case k.kind
               when 'profile' then clerk_sync.ms_to_timestamptz(k.data -> 'last_sign_in_at')
               when 'sign_in' then clerk_sync.ms_to_timestamptz(k.sign_in)
           end,
           case
               when pg_catalog.jsonb_typeof(k.event) is distinct from 'object'
                   then 'the body is not a JSON object'
               when pg_catalog.jsonb_typeof(k.event -> 'type') is distinct from 'string'
                    or k.type = '' or pg_catalog.length(k.type) > 100
                   then 'it has no string "type"'
               when pg_catalog.jsonb_typeof(k.data) is distinct from 'object'
                   then 'the ' || k.type || ' event has no object "data"'
               when k.kind = 'ignore'
                   then null
               when k.kind in ('organization', 'organization_delete', 'membership',
                               'membership_delete')
                   then clerk_sync.organization_event_problem(k.type, k.kind, k.data)
               when k.kind = 'invitation'
                   then clerk_sync.invitation_event_problem(k.type, k.data)
               when pg_catalog.jsonb_typeof(k.user_ref) is distinct from 'string'
                    or k.user_ref = '""' or pg_catalog.length(k.user_ref #>> '{}') > 255
                   then k.type || ' event without a user id'
               when k.kind = 'profile' and not clerk_sync.is_ms(k.data -> 'updated_at')
                   then k.type || ' event without a millisecond updated_at'
               when k.kind = 'profile' and k.data -> 'created_at' <> 'null'
                    and not clerk_sync.is_ms(k.data -> 'created_at')
                   then k.type || ' event with a malformed created_at'
               when k.kind = 'profile' and k.data -> 'last_sign_in_at' <> 'null'
                    and not clerk_sync.is_ms(k.data -> 'last_sign_in_at')
                   then k.type || ' event with a malformed last_sign_in_at'
               when k.kind = 'profile'
                    and pg_catalog.jsonb_typeof(k.data -> 'banned') not in ('boolean', 'null')
                   then k.type || ' event with a malformed banned'
               when k.kind = 'sign_in' and not clerk_sync.is_ms(k.sign_in)
                   then k.type || ' event without a millisecond sign-in time'
           end
    from (
        select e.n, e.svix_id, e.event, e.type, e.data, e.kind,
               -- The user's id as sent (a JSON string when the event is valid).
               case e.kind
                   when 'sign_in' then
                       case when coalesce(e.data -> 'user_id', 'null') = 'null'
                            then e.data -> 'user' -> 'id' else e.data -> 'user_id' end
                   when 'ignore' then null
                   when 'organization' then null
                   when 'organization_delete' then null
                   when 'membership' then e.data -> 'public_user_data' -> 'user_id'
                   when 'membership_delete' then e.data -> 'public_user_data' -> 'user_id'
                   when 'invitation' then e.data -> 'user_id'
                   else e.data -> 'id'
               end as user_ref,
               -- session.created: the user's last sign-in when it is sent, else the session's start.
               case when e.kind = 'sign_in' then
                   case when coalesce(e.data -> 'user' -> 'last_sign_in_at', 'null') = 'null'
                        then e.data -> 'created_at' else e.data -> 'user' -> 'last_sign_in_at' end
               end as sign_in
        from (
            select u.n, u.svix_id, u.event, u.event ->> 'type' as type, u.event -> 'data' as data,
                   case
                       when u.event ->> 'type' in ('user.created', 'user.updated') then 'profile'
                       when u.event ->> 'type' = 'user.signed_in'
                            and u.event -> 'data' ->> 'object' = 'user' then 'profile'
                       when u.event ->> 'type' = 'user.deleted' then 'delete'
                       when u.event ->> 'type' = 'session.created' then 'sign_in'
                       when u.event ->> 'type' in ('organization.created', 'organization.updated')
                           then 'organization'
                       when u.event ->> 'type' = 'organization.deleted' then 'organization_delete'
                       when u.event ->> 'type' in ('organizationMembership.created',
                                                   'organizationMembership.updated')
                           then 'membership'
                       when u.event ->> 'type' = 'organizationMembership.deleted'
                           then 'membership_delete'
                       when u.event ->> 'type' in ('organizationInvitation.created',
                                                   'organizationInvitation.accepted',
                                                   'organizationInvitation.revoked')
                           then 'invitation'
                       else 'ignore'
                   end as kind
            from unnest(p_svix_ids, p_events) with ordinality as u(svix_id, event, n)
            -- Each event's data and kind computed once, not again at every use below.
            offset 0
        ) as e
    ) as k
$$;

-- Apply a batch of verified Clerk events in one transaction, exactly once each, with the same
-- result as applying them one after another in the order given. Returns each event's outcome:
--   'applied'   the database changed
--   'duplicate' this svix-id was handled before (or earlier in the batch); a dead letter
--               (outcome 'invalid') was not handled: a resend of its svix-id is applied
--   'stale'     the event is older than what the database holds, or its user was deleted
--   'ignored'   an event type clerk-sync does not sync (recorded, nothing else changes)
--   'retry'     its user is being written elsewhere (its lock, or its row in public.users, is
--               held by another transaction): nothing recorded; the caller submits it again
-- p_delete_mode is 'soft' (set users.deleted_at, keep the row) or 'hard' (remove the row).
-- A batch with any event that cannot be applied is refused whole (SQLSTATE 22023, with the
-- first such event's problem as the message).
create or replace function public.clerk_sync_apply_batch(
    p_svix_ids text[],
    p_events jsonb[],
    p_delete_mode text default 'soft'
)
returns table (event_index bigint, event_outcome text)
language plpgsql
volatile
rows 10
set search_path = ''
-- The same plan serves every batch (index lookups for a handful of users); planning the
-- statement anew for each call would cost more than running it. That plan is made once per
-- connection, often while the tables are still small: without enable_seqscan = off it could
-- read whole tables, and keep doing so as they grow.
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
as $$
declare
    v_problem text;
    v_busy integer[];
    v_users text[];
    v_locks integer[];
    v_organizations boolean;
    v_organization_outcomes text[];
begin
    -- The batch's first problem, and its locks: one writer per user at a time (per svix-id for
    -- other events). Each is only tried, never waited for: a user whose lock another
    -- transaction holds (another replica's batch, a backfill page, an operator) must not hold
    -- up everyone else's deliveries. Its events are answered 'retry' (v_busy: their lock keys)
    -- and the rest go ahead. The statement below runs with every other lock held, so it sees
    -- every earlier commit for these users; deliveries of the same svix-id take turns too.
    --
    -- A batch with organization events (or a user.deleted, which ends that user's memberships)
    -- is applied in two steps, the organizations' first (15_organizations.sql), which cannot
    -- answer 'retry': it waits for its locks instead, users' and organizations' in one key
    -- space and one global order (ascending), so that such batches cannot deadlock. They are
    -- rare; a batch of user events alone never waits and never calls the organizations' step.
    select (pg_catalog.array_agg(b.problem order by b.n) filter (where b.problem is not null))[1],
           pg_catalog.array_agg(distinct b.key) filter (where not b.locked),
           pg_catalog.array_agg(distinct b.user_id) filter (where b.locked and b.kind <> 'ignore'),
           pg_catalog.bool_or(b.waits),
           pg_catalog.array_agg(distinct b.key) filter (where b.waits)
               || coalesce(pg_catalog.array_agg(distinct pg_catalog.hashtext(b.organization_id))
                               filter (where b.organization_id is not null), '{}')
    into v_problem, v_busy, v_users, v_organizations, v_locks
    from (
        select e.n, e.problem, e.user_id, e.organization_id, e.kind, e.key, e.waits,
               case when not e.waits  -- 'clrk'
                    then pg_catalog.pg_try_advisory_xact_lock(1668049779, e.key) end as locked
        from (select b.*, pg_catalog.hashtext(coalesce(b.user_id, b.svix_id)) as key,
                     pg_catalog.bool_or(b.organization_id is not null or b.kind = 'delete')
                         over () as waits
              from clerk_sync.batch_events(p_svix_ids, p_events) as b) as e
        offset 0
    ) as b;
    if v_problem is not null then
        raise exception 'not a Clerk event: %', v_problem using errcode = '22023';
    end if;
    if v_organizations then
        v_busy := '{}';
        perform pg_catalog.pg_advisory_xact_lock(1668049779, l.key)  -- 'clrk'
        from pg_catalog.unnest(array(select distinct k.key from pg_catalog.unnest(v_locks) as k(key)
                                     order by k.key)) as l(key);
        v_organization_outcomes := clerk_sync.apply_organization_events(
            p_svix_ids, p_events, p_delete_mode);
    else
        -- The users' rows: one an app's own transaction holds (select ... for update) would make
        -- the write below wait, with the whole batch. They are locked now, or their events retried.
        with locked as materialized (
            select u.id from public.users as u
            where u.id = any(v_users)
            for no key update skip locked
        )
        select coalesce(v_busy, '{}') || coalesce(pg_catalog.array_agg(pg_catalog.hashtext(u.id)), '{}')
        into v_busy
        from public.users as u
        where u.id = any(v_users) and u.id not in (select locked.id from locked);
    end if;

    return query
    with batch as (
        -- Every column but the problem (known to be none): the planner leaves it uncomputed.
        select b.n, b.svix_id, b.event, b.type, b.kind, b.user_id, b.organization_id, b.version,
               b.sign_in
        from clerk_sync.batch_events(p_svix_ids, p_events) as b
    ),
    -- Each svix-id's first delivery in the batch, unless an earlier one was handled (a dead
    -- letter was not: its resend is handled now) or its user is busy.
    fresh as (
        select distinct on (b.svix_id) b.*
        from batch as b
        where not exists (select 1 from clerk_sync.inbox as i
                          where i.svix_id = b.svix_id and i.outcome <> 'invalid')
          and not pg_catalog.hashtext(coalesce(b.user_id, b.svix_id)) = any(v_busy)
        order by b.svix_id, b.n
    ),
    -- What the database holds for each user before the batch (looked up once per user).
    before as materialized (
        select f.user_id,
               exists (select 1 from clerk_sync.tombstones as t where t.user_id = f.user_id)
                   as tombstoned,
               u.id is not null as has_row,
               u.updated_at as version,
               u.last_sign_in_at as row_sign_in,
               p.last_sign_in_at as pending_sign_in
        from (select distinct fresh.user_id from fresh
              where fresh.kind in ('profile', 'delete', 'sign_in')) as f
        left join public.users as u on u.id = f.user_id
        left join clerk_sync.pending_sign_ins as p on p.user_id = f.user_id
    ),
    -- Each event with what came before it for the same user, in batch order.
    ordered as (
        select f.*, s.tombstoned, s.has_row, s.version as row_version, s.row_sign_in,
               greatest(s.row_sign_in, s.pending_sign_in) as known_sign_in,
               min(f.n) filter (where f.kind = 'delete') over per_user as first_delete,
               max(f.version) over earlier as earlier_version,
               max(f.sign_in) over earlier as earlier_sign_in
        from fresh as f
        left join before as s on s.user_id = f.user_id
        window per_user as (partition by f.user_id),
               earlier as (partition by f.user_id order by f.n
                           rows between unbounded preceding and 1 preceding)
    ),
    decided as (
        select o.*,
               case
                   when o.kind = 'ignore' then 'ignored'
                   when o.organization_id is not null then v_organization_outcomes[o.n]
                   when o.tombstoned or o.n > o.first_delete then 'stale'
                   when o.kind = 'delete' then 'applied'
                   when o.kind = 'profile' then
                       case when o.version > coalesce(greatest(o.row_version, o.earlier_version), '-infinity')
                            then 'applied' else 'stale' end
                   else
                       case when o.sign_in > coalesce(greatest(o.known_sign_in, o.earlier_sign_in), '-infinity')
                            then 'applied' else 'stale' end
               end as outcome
        from ordered as o
    ),
    -- Per user: the profile it ends with (the newest applied), its latest sign-in from events
    -- that came before any delete, and whether the batch deleted it.
    per_user as (
        select d.user_id,
               bool_or(d.has_row) as has_row,
               max(d.row_sign_in) as row_sign_in,
               bool_or(d.kind = 'delete' and d.outcome = 'applied') as deleted,
               greatest(max(d.known_sign_in),
                        max(d.sign_in) filter (where d.first_delete is null or d.n < d.first_delete))
                   as sign_in,
               (array_agg(d.event -> 'data' order by d.version desc)
                   filter (where d.kind = 'profile' and d.outcome = 'applied'))[1] as profile
        from decided as d
        where d.kind in ('profile', 'delete', 'sign_in') and not d.tombstoned
        group by d.user_id
    ),
    -- Every change to a user's row in one statement (sibling statements here would not see
    -- each other's rows): a new profile, a later sign-in, a soft delete.
    upserted as (
        insert into public.users as u (
            -- custom columns of users: names
            id, email, email_verified, phone, username, first_name, last_name, image_url,
            external_id, public_metadata, unsafe_metadata, banned, created_at, updated_at,
            last_sign_in_at, deleted_at
        )
        select
               -- custom columns of users: values from p.profile
               p.user_id,
               e.entry ->> 'email_address',
               coalesce(e.entry -> 'verification' ->> 'status' = 'verified', false),
               ph.entry ->> 'phone_number',
               p.profile ->> 'username',
               p.profile ->> 'first_name',
               p.profile ->> 'last_name',
               p.profile ->> 'image_url',
               p.profile ->> 'external_id',
               coalesce(nullif(p.profile -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
               coalesce(nullif(p.profile -> 'unsafe_metadata', 'null'::jsonb), '{}'::jsonb),
               coalesce((p.profile ->> 'banned')::boolean, false),
               clerk_sync.ms_to_timestamptz(p.profile -> 'created_at'),
               clerk_sync.ms_to_timestamptz(p.profile -> 'updated_at'),
               p.sign_in,
               case when p.deleted then now() end
        from per_user as p
        cross join lateral (select clerk_sync.primary_entry(
            p.profile -> 'email_addresses', p.profile -> 'primary_email_address_id') as entry) as e
        cross join lateral (select clerk_sync.primary_entry(
            p.profile -> 'phone_numbers', p.profile -> 'primary_phone_number_id') as entry) as ph
        where not (p.deleted and p_delete_mode = 'hard')
          and (p.profile is not null
               or (p.has_row and (p.deleted
                                  or p.sign_in > coalesce(p.row_sign_in, '-infinity'))))
        on conflict (id) do update set
            -- custom columns of users: updates, keeping u's when excluded.updated_at is null
            email = case when excluded.updated_at is null then u.email else excluded.email end,
            email_verified = case when excluded.updated_at is null then u.email_verified
                                  else excluded.email_verified end,
            phone = case when excluded.updated_at is null then u.phone else excluded.phone end,
            username = case when excluded.updated_at is null then u.username
                            else excluded.username end,
            first_name = case when excluded.updated_at is null then u.first_name
                              else excluded.first_name end,
            last_name = case when excluded.updated_at is null then u.last_name
                             else excluded.last_name end,
            image_url = case when excluded.updated_at is null then u.image_url
                             else excluded.image_url end,
            external_id = case when excluded.updated_at is null then u.external_id
                               else excluded.external_id end,
            public_metadata = case when excluded.updated_at is null then u.public_metadata
                                   else excluded.public_metadata end,
            unsafe_metadata = case when excluded.updated_at is null then u.unsafe_metadata
                                   else excluded.unsafe_metadata end,
            banned = case when excluded.updated_at is null then u.banned else excluded.banned end,
            created_at = coalesce(excluded.created_at, u.created_at),
            updated_at = coalesce(excluded.updated_at, u.updated_at),
            last_sign_in_at = greatest(u.last_sign_in_at, excluded.last_sign_in_at),
            deleted_at = coalesce(u.deleted_at, excluded.deleted_at)
        returning u.id
    ),
    removed as (
        delete from public.users as u
        using per_user as p
        where p_delete_mode = 'hard' and p.deleted and u.id = p.user_id
        returning u.id
    ),
    tombstoned as (
        insert into clerk_sync.tombstones (user_id, deleted_at, svix_id)
        select d.user_id, now(), d.svix_id from decided as d
        where d.kind = 'delete' and d.outcome = 'applied'
        returning user_id
    ),
    -- Sign-ins of users who have no row yet wait for it; a row or a delete takes them over.
    pending_dropped as (
        delete from clerk_sync.pending_sign_ins as s
        using per_user as p
        where s.user_id = p.user_id and (p.deleted or p.profile is not null)
        returning s.user_id
    ),
    pending_kept as (
        insert into clerk_sync.pending_sign_ins as s (user_id, last_sign_in_at)
        select p.user_id, p.sign_in from per_user as p
        where not p.has_row and not p.deleted and p.profile is null and p.sign_in is not null
        on conflict (user_id) do update set last_sign_in_at = excluded.last_sign_in_at
        where s.last_sign_in_at < excluded.last_sign_in_at
        returning s.user_id
    ),
    -- The newest profile's private_metadata, kept in clerk_sync (only when not empty) to fill a
    -- custom column on a private_metadata path added later, without calling Clerk.
    private_kept as (
        insert into clerk_sync.private_metadata as m (user_id, private_metadata)
        select p.user_id, clerk_sync.private_to_keep(p.profile) from per_user as p
        where not p.deleted and clerk_sync.private_to_keep(p.profile) is not null
        on conflict (user_id) do update set private_metadata = excluded.private_metadata
        where m.private_metadata is distinct from excluded.private_metadata
        returning m.user_id
    ),
    private_dropped as (
        delete from clerk_sync.private_metadata as m
        using per_user as p
        where m.user_id = p.user_id
          and (p.deleted
               or (p.profile is not null and clerk_sync.private_to_keep(p.profile) is null))
        returning m.user_id
    ),
    -- A dead letter's row becomes the handled delivery's: it keeps its first received_at (as
    -- a replay does), and the resend counts as a replay.
    recorded as (
        insert into clerk_sync.inbox as i (svix_id, event_type, user_id, outcome, payload)
        select d.svix_id, d.type, d.user_id, d.outcome,
               case when d.kind <> 'ignore' then d.event end
        from decided as d
        on conflict (svix_id) do update set
            event_type = excluded.event_type, user_id = excluded.user_id,
            outcome = excluded.outcome, payload = excluded.payload, error = null,
            raw_body = null, replayed_at = now(), replays = i.replays + 1
        where i.outcome = 'invalid'
        returning i.svix_id
    )
    select b.n,
           case when d.n is not null then d.outcome
                when pg_catalog.hashtext(coalesce(b.user_id, b.svix_id)) = any(v_busy) then 'retry'
                else 'duplicate' end
    from batch as b
    left join decided as d on d.n = b.n
    order by b.n;
end
$$;

-- Apply one verified Clerk event: a batch of one.
create or replace function public.clerk_sync_apply(
    p_svix_id text,
    p_event jsonb,
    p_delete_mode text default 'soft'
)
returns text
language sql
volatile
set search_path = ''
as $$
    select b.event_outcome
    from public.clerk_sync_apply_batch(array[p_svix_id], array[p_event], p_delete_mode) as b
$$;

-- A verified delivery that can never be applied (not JSON, not a Clerk event, or refused by
-- clerk_sync_apply_batch): kept for inspection as a dead letter, so Svix can be told to stop
-- retrying it. A dead letter refused again keeps the latest body and reason; a handled
-- delivery's row is never made a dead letter.
create or replace function public.clerk_sync_record_invalid(
    p_svix_id text,
    p_raw_body bytea,
    p_error text
)
returns void
language sql
volatile
set search_path = ''
as $$
    insert into clerk_sync.inbox as i (svix_id, outcome, error, raw_body)
    values (p_svix_id, 'invalid', p_error, p_raw_body)
    on conflict (svix_id) do update set error = excluded.error, raw_body = excluded.raw_body
    where i.outcome = 'invalid'
$$;

-- What applying these events would do to each user, against the database now, before anything
-- is written: `clerk-sync backfill` sorts a page of users with it and writes only those that
-- need it. It predicts the rule of clerk_sync_apply_batch above (its `decided`), for batches of
-- profile events with one event per user:
--   'invalid'    the write path would refuse it (problem says why)
--   'stale'      the user was deleted, or the row is newer
--   'created'    no row yet
--   'updated'    the event is newer than the row
--   'signed_in'  the same version, with a later sign-in (applied as a stale event that still
--                moves last_sign_in_at on)
--   'unchanged'  the row holds this already
create or replace function clerk_sync.classify_batch(p_svix_ids text[], p_events jsonb[])
returns table (n bigint, user_id text, status text, problem text)
language sql
stable
set search_path = ''
as $$
    select b.n, b.user_id,
           case
               when b.problem is not null then 'invalid'
               when t.user_id is not null or u.deleted_at is not null then 'stale'
               when u.id is null then 'created'
               when u.updated_at is null or u.updated_at < b.version then 'updated'
               when u.updated_at > b.version then 'stale'
               when b.sign_in > coalesce(u.last_sign_in_at, '-infinity') then 'signed_in'
               else 'unchanged'
           end,
           b.problem
    from clerk_sync.batch_events(p_svix_ids, p_events) as b
    left join public.users as u on u.id = b.user_id
    left join clerk_sync.tombstones as t on t.user_id = b.user_id
    order by b.n
$$;

-- Nobody but the owner (and, on Supabase, the service role: sql/repeatable/90_supabase.sql) may
-- call the write functions.
revoke execute on function public.clerk_sync_apply(text, jsonb, text) from public;
revoke execute on function public.clerk_sync_apply_batch(text[], jsonb[], text) from public;
revoke execute on function public.clerk_sync_record_invalid(text, bytea, text) from public;
