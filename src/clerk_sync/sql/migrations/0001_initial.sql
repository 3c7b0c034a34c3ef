-- clerk-sync schema, version 1.
--
-- public.users is the copy of each Clerk user that the app reads. Everything else (the event
-- inbox, tombstones, sign-ins that arrived before their user) is bookkeeping in schema clerk_sync.
-- Every write goes through one function, public.clerk_sync_apply: it holds the four guarantees
-- (newest updated_at wins, deletes are final, last_sign_in_at only moves forward, each svix-id is
-- applied at most once) for every caller, whether the server talks to PostgreSQL directly or
-- through Supabase's REST API.

create schema if not exists clerk_sync;

create table if not exists public.users (
    id               text primary key,
    email            text,
    email_verified   boolean not null default false,
    phone            text,
    username         text,
    first_name       text,
    last_name        text,
    image_url        text,
    external_id      text,
    public_metadata  jsonb not null default '{}'::jsonb,
    unsafe_metadata  jsonb not null default '{}'::jsonb,
    banned           boolean not null default false,
    created_at       timestamptz,
    updated_at       timestamptz,
    last_sign_in_at  timestamptz,
    deleted_at       timestamptz
);

-- A public.users table of the app's own (an older handler's, say) is kept by the statement
-- above; stop here, with what is missing, rather than fail on every delivery later.
do $$
declare
    v_missing text;
begin
    select string_agg(format('%s %s', c.name, c.type), ', ') into v_missing
    from (values
        ('id', 'text'), ('email', 'text'), ('email_verified', 'boolean'), ('phone', 'text'),
        ('username', 'text'), ('first_name', 'text'), ('last_name', 'text'),
        ('image_url', 'text'), ('external_id', 'text'), ('public_metadata', 'jsonb'),
        ('unsafe_metadata', 'jsonb'), ('banned', 'boolean'),
        ('created_at', 'timestamp with time zone'), ('updated_at', 'timestamp with time zone'),
        ('last_sign_in_at', 'timestamp with time zone'), ('deleted_at', 'timestamp with time zone')
    ) as c(name, type)
    where not exists (
        select 1 from information_schema.columns i
        where i.table_schema = 'public' and i.table_name = 'users'
          and i.column_name = c.name and i.data_type = c.type
    );
    if v_missing is not null then
        raise exception 'public.users already exists without the columns clerk-sync writes: %', v_missing
            using hint = 'Rename the existing table (alter table public.users rename to users_old) '
                         'and run the migration again, then copy what you need across.';
    end if;
end
$$;

comment on table public.users is
    'One row per Clerk user, kept current by clerk-sync from Clerk''s webhooks. Written only by clerk-sync.';

-- Every verified delivery, by svix-id: the dedupe key and the record of what happened to it.
create table if not exists clerk_sync.inbox (
    svix_id      text primary key,
    event_type   text,
    user_id      text,
    outcome      text not null,
    error        text,
    received_at  timestamptz not null default now(),
    payload      jsonb,
    raw_body     bytea
);

-- lz4 compresses payloads several times faster than the default pglz (PostgreSQL 14+, when
-- built with lz4, as Supabase's is); elsewhere the default stays.
do $$
begin
    alter table clerk_sync.inbox alter column payload set compression lz4;
exception when feature_not_supported or syntax_error or invalid_parameter_value then
    null;
end
$$;

create index if not exists inbox_received_at on clerk_sync.inbox (received_at);
create index if not exists inbox_user_id on clerk_sync.inbox (user_id) where user_id is not null;

-- A deleted user stays deleted: no event that arrives later brings them back.
create table if not exists clerk_sync.tombstones (
    user_id     text primary key,
    deleted_at  timestamptz not null,
    svix_id     text not null
);

-- session.created can arrive before user.created; its sign-in time waits here for the user row.
create table if not exists clerk_sync.pending_sign_ins (
    user_id          text primary key,
    last_sign_in_at  timestamptz not null
);

-- Clerk sends times as milliseconds since the epoch. Whole days and the milliseconds within a
-- day are each small enough for interval arithmetic to stay exact at any date; adding them to a
-- timestamp without time zone keeps the session's time zone (and its DST) out of it.
create or replace function clerk_sync.ms_to_timestamptz(p_ms jsonb)
returns timestamptz
language sql
immutable
parallel safe
set search_path = ''
as $$
    select (timestamp '1970-01-01'
            + div(ms, 86400000) * interval '1 day'
            + mod(ms, 86400000) * interval '1 millisecond') at time zone 'UTC'
    -- CASE, not WHERE: the planner folds the cast early, and must not on a non-number.
    from (select case jsonb_typeof(p_ms) when 'number' then p_ms::text::numeric end as ms) as n
$$;

-- The primary entry (by id) of a list of email addresses or phone numbers, or null.
create or replace function clerk_sync.primary_entry(p_entries jsonb, p_primary_id jsonb)
returns jsonb
language sql
immutable
parallel safe
set search_path = ''
as $$
    select entry
    from pg_catalog.jsonb_array_elements(
        case when pg_catalog.jsonb_typeof(p_entries) = 'array' then p_entries else '[]'::jsonb end
    ) as entry
    where pg_catalog.jsonb_typeof(p_primary_id) = 'string'
      and entry -> 'id' = p_primary_id
    limit 1
$$;

-- Apply one verified Clerk event, exactly once. Returns the outcome:
--   'applied'   the database changed
--   'duplicate' this svix-id was handled before
--   'stale'     the event is older than what the database holds, or its user was deleted
--   'ignored'   an event type clerk-sync does not sync (recorded, nothing else changes)
-- p_delete_mode is 'soft' (set users.deleted_at, keep the row) or 'hard' (remove the row).
create or replace function public.clerk_sync_apply(
    p_svix_id text,
    p_event jsonb,
    p_delete_mode text default 'soft'
)
returns text
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_type     text  := p_event ->> 'type';
    v_data     jsonb := p_event -> 'data';
    v_kind     text;
    v_user_id  text;
    v_outcome  text;
    v_version  timestamptz;
    v_sign_in  timestamptz;
    v_pending  timestamptz;
    v_email    jsonb;
    v_phone    jsonb;
begin
    if jsonb_typeof(v_data) is distinct from 'object' or v_type is null then
        raise exception 'not a Clerk event: it needs a string "type" and an object "data"'
            using errcode = '22023';
    end if;

    -- What kind of write this is, and for which user. user.signed_in is not a Clerk event (the
    -- sign-in signal is session.created) but old setup guides subscribe to it: treat it as an
    -- update when it carries a user.
    v_kind := case
        when v_type in ('user.created', 'user.updated') then 'profile'
        when v_type = 'user.signed_in' and v_data ->> 'object' = 'user' then 'profile'
        when v_type = 'user.deleted' then 'delete'
        when v_type = 'session.created' then 'sign_in'
        else 'ignore'
    end;
    v_user_id := case v_kind
        when 'sign_in' then coalesce(v_data ->> 'user_id', v_data -> 'user' ->> 'id')
        when 'ignore' then null
        else v_data ->> 'id'
    end;
    if v_kind <> 'ignore' and v_user_id is null then
        raise exception '% event without a user id', v_type using errcode = '22023';
    end if;

    -- One writer per user at a time (per svix-id for other events): every check below then sees
    -- every earlier commit, and concurrent deliveries of the same svix-id serialize here.
    perform pg_catalog.pg_advisory_xact_lock(
        1668049779,  -- 'clrk', this schema's advisory lock class
        pg_catalog.hashtext(coalesce(v_user_id, p_svix_id))
    );

    if exists (select 1 from clerk_sync.inbox where svix_id = p_svix_id) then
        return 'duplicate';
    end if;

    if v_kind = 'ignore' then
        insert into clerk_sync.inbox (svix_id, event_type, outcome)
        values (p_svix_id, v_type, 'ignored');
        return 'ignored';
    end if;

    if exists (select 1 from clerk_sync.tombstones where user_id = v_user_id) then
        v_outcome := 'stale';

    elsif v_kind = 'profile' then
        v_version := clerk_sync.ms_to_timestamptz(v_data -> 'updated_at');
        if v_version is null then
            raise exception '% event without a numeric updated_at', v_type using errcode = '22023';
        end if;
        v_email := clerk_sync.primary_entry(v_data -> 'email_addresses', v_data -> 'primary_email_address_id');
        v_phone := clerk_sync.primary_entry(v_data -> 'phone_numbers', v_data -> 'primary_phone_number_id');
        delete from clerk_sync.pending_sign_ins where user_id = v_user_id
            returning last_sign_in_at into v_pending;
        v_sign_in := greatest(clerk_sync.ms_to_timestamptz(v_data -> 'last_sign_in_at'), v_pending);

        insert into public.users as u (
            id, email, email_verified, phone, username, first_name, last_name, image_url,
            external_id, public_metadata, unsafe_metadata, banned, created_at, updated_at,
            last_sign_in_at
        ) values (
            v_user_id,
            v_email ->> 'email_address',
            coalesce(v_email -> 'verification' ->> 'status' = 'verified', false),
            v_phone ->> 'phone_number',
            v_data ->> 'username',
            v_data ->> 'first_name',
            v_data ->> 'last_name',
            v_data ->> 'image_url',
            v_data ->> 'external_id',
            coalesce(nullif(v_data -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
            coalesce(nullif(v_data -> 'unsafe_metadata', 'null'::jsonb), '{}'::jsonb),
            coalesce((v_data ->> 'banned')::boolean, false),
            clerk_sync.ms_to_timestamptz(v_data -> 'created_at'),
            v_version,
            v_sign_in
        )
        on conflict (id) do update set
            email = excluded.email,
            email_verified = excluded.email_verified,
            phone = excluded.phone,
            username = excluded.username,
            first_name = excluded.first_name,
            last_name = excluded.last_name,
            image_url = excluded.image_url,
            external_id = excluded.external_id,
            public_metadata = excluded.public_metadata,
            unsafe_metadata = excluded.unsafe_metadata,
            banned = excluded.banned,
            created_at = coalesce(excluded.created_at, u.created_at),
            updated_at = excluded.updated_at,
            last_sign_in_at = greatest(u.last_sign_in_at, excluded.last_sign_in_at)
        where u.updated_at is null or u.updated_at < excluded.updated_at;

        if found then
            v_outcome := 'applied';
        else
            v_outcome := 'stale';
            -- An older profile still carries a sign-in time: that only ever moves forward.
            update public.users set last_sign_in_at = v_sign_in
            where id = v_user_id and v_sign_in > coalesce(last_sign_in_at, '-infinity');
        end if;

    elsif v_kind = 'delete' then
        insert into clerk_sync.tombstones (user_id, deleted_at, svix_id)
        values (v_user_id, now(), p_svix_id);
        delete from clerk_sync.pending_sign_ins where user_id = v_user_id;
        if p_delete_mode = 'hard' then
            delete from public.users where id = v_user_id;
        else
            update public.users set deleted_at = now() where id = v_user_id and deleted_at is null;
        end if;
        v_outcome := 'applied';

    else  -- sign_in
        v_sign_in := coalesce(
            clerk_sync.ms_to_timestamptz(v_data -> 'user' -> 'last_sign_in_at'),
            clerk_sync.ms_to_timestamptz(v_data -> 'created_at')
        );
        if v_sign_in is null then
            raise exception 'session.created without a numeric created_at' using errcode = '22023';
        end if;
        update public.users set last_sign_in_at = v_sign_in
        where id = v_user_id and v_sign_in > coalesce(last_sign_in_at, '-infinity');
        if found then
            v_outcome := 'applied';
        elsif exists (select 1 from public.users where id = v_user_id) then
            v_outcome := 'stale';
        else
            insert into clerk_sync.pending_sign_ins as p (user_id, last_sign_in_at)
            values (v_user_id, v_sign_in)
            on conflict (user_id) do update set last_sign_in_at = excluded.last_sign_in_at
            where p.last_sign_in_at < excluded.last_sign_in_at;
            v_outcome := case when found then 'applied' else 'stale' end;
        end if;
    end if;

    insert into clerk_sync.inbox (svix_id, event_type, user_id, outcome, payload)
    values (p_svix_id, v_type, v_user_id, v_outcome, p_event);
    return v_outcome;
end
$$;

-- A verified delivery that can never be applied (not JSON, not a Clerk event): kept for
-- inspection as a dead letter, so Svix can be told to stop retrying it.
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
    insert into clerk_sync.inbox (svix_id, outcome, error, raw_body)
    values (p_svix_id, 'invalid', p_error, p_raw_body)
    on conflict (svix_id) do nothing
$$;

-- Nobody but the owner (and, on Supabase, the service role: see a later migration) may call
-- the write functions.
revoke execute on function public.clerk_sync_apply(text, jsonb, text) from public;
revoke execute on function public.clerk_sync_record_invalid(text, bytea, text) from public;
