-- clerk-sync schema, version 5: the same writes, with less work per batch.
--
-- Measured with bench/run.py: PostgreSQL's CPU per delivery was dominated by fixed costs per
-- batch and by helpers the planner could not inline (a SQL function with a FROM clause, or one
-- declared immutable that calls a stable one, runs as a separate statement on every call).

-- Inlinable: one expression, no FROM. Clerk sends times as milliseconds since the epoch; whole
-- days and the milliseconds within a day are each small enough for interval arithmetic to stay
-- exact at any date; adding them to a timestamp without time zone keeps the session's time zone
-- (and its DST) out of it. CASE guards the cast: a non-number gives null, never an error.
create or replace function clerk_sync.ms_to_timestamptz(p_ms jsonb)
returns timestamptz
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_ms) when 'number' then
        (timestamp '1970-01-01'
         + pg_catalog.div(p_ms::numeric, 86400000) * interval '1 day'
         + pg_catalog.mod(p_ms::numeric, 86400000) * interval '1 millisecond') at time zone 'UTC'
    end
$$;

-- Inlinable (stable, as jsonb_build_object is): the primary entry (by id) of a list of email
-- addresses or phone numbers, or null.
create or replace function clerk_sync.primary_entry(p_entries jsonb, p_primary_id jsonb)
returns jsonb
language sql
stable
parallel safe
as $$
    select case when pg_catalog.jsonb_typeof(p_entries) = 'array'
                 and pg_catalog.jsonb_typeof(p_primary_id) = 'string'
           then pg_catalog.jsonb_path_query_first(
                    p_entries, 'strict $[*] ? (@.id == $id)',
                    pg_catalog.jsonb_build_object('id', p_primary_id))
           end
$$;

-- Keep stored payloads in the inbox row, compressed, rather than in a TOAST table of their own
-- (one more heap and index insert per delivery); PostgreSQL still moves a payload out of line
-- when the row could not fit in a page otherwise.
alter table clerk_sync.inbox alter column payload set storage main;

-- Apply a batch: as in version 1 (see there for what it does and returns), with the problem
-- check and the advisory locks in one statement instead of two.
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
    v_locks integer[];
begin
    -- The batch's first problem, and the locks it needs: one writer per user at a time (per
    -- svix-id for other events), taken in one global order (ascending) so that batches cannot
    -- deadlock. The statement below runs after every lock is held, so it sees every earlier
    -- commit for these users; concurrent deliveries of the same svix-id serialize here too.
    select (pg_catalog.array_agg(b.problem order by b.n) filter (where b.problem is not null))[1],
           pg_catalog.array_agg(distinct pg_catalog.hashtext(coalesce(b.user_id, b.svix_id)))
    into v_problem, v_locks
    from clerk_sync.batch_events(p_svix_ids, p_events) as b;
    if v_problem is not null then
        raise exception '%', v_problem using errcode = '22023';
    end if;
    perform pg_catalog.pg_advisory_xact_lock(1668049779, l.key)  -- 'clrk'
    from pg_catalog.unnest(v_locks) as l(key);

    return query
    with batch as (
        select * from clerk_sync.batch_events(p_svix_ids, p_events)
    ),
    -- Each svix-id's first delivery in the batch, unless an earlier one was handled.
    fresh as (
        select distinct on (b.svix_id) b.*
        from batch as b
        where not exists (select 1 from clerk_sync.inbox as i where i.svix_id = b.svix_id)
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
        from (select distinct fresh.user_id from fresh where fresh.kind <> 'ignore') as f
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
        where d.kind <> 'ignore' and not d.tombstoned
        group by d.user_id
    ),
    -- Every change to a user's row in one statement (sibling statements here would not see
    -- each other's rows): a new profile, a later sign-in, a soft delete.
    upserted as (
        insert into public.users as u (
            id, email, email_verified, phone, username, first_name, last_name, image_url,
            external_id, public_metadata, unsafe_metadata, banned, created_at, updated_at,
            last_sign_in_at, deleted_at
        )
        select p.user_id,
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
    recorded as (
        insert into clerk_sync.inbox (svix_id, event_type, user_id, outcome, payload)
        select d.svix_id, d.type, d.user_id, d.outcome,
               case when d.kind <> 'ignore' then d.event end
        from decided as d
        returning svix_id
    )
    select b.n, coalesce(d.outcome, 'duplicate')
    from batch as b
    left join decided as d on d.n = b.n
    order by b.n;
end
$$;

revoke execute on function public.clerk_sync_apply_batch(text[], jsonb[], text) from public;

-- Whether this database is a Supabase project's: its API roles and auth.jwt() are there.
create or replace function clerk_sync.on_supabase()
returns boolean
language sql
stable
set search_path = ''
as $$
    select (select count(*) from pg_catalog.pg_roles
            where rolname in ('anon', 'authenticated', 'service_role')) = 3
       and pg_catalog.to_regprocedure('auth.jwt()') is not null
$$;

revoke execute on function clerk_sync.on_supabase() from public;

-- Replacing the function reset its SECURITY DEFINER, which migration 0003 set on Supabase:
-- set it again (its grants are kept), and nothing else that 0003 did.
do $supabase$
begin
    if clerk_sync.on_supabase() then
        alter function public.clerk_sync_apply_batch(text[], jsonb[], text) security definer;
        revoke execute on function public.clerk_sync_apply_batch(text[], jsonb[], text)
            from public, anon, authenticated;
        grant execute on function public.clerk_sync_apply_batch(text[], jsonb[], text)
            to service_role;
    end if;
end
$supabase$;
