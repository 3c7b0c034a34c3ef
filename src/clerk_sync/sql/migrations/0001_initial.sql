-- clerk-sync schema, version 1: the tables.
--
-- public.users is the copy of each Clerk user that the app reads. Everything else (the event
-- inbox, tombstones, sign-ins that arrived before their user) is bookkeeping in schema clerk_sync.
-- Every write goes through one function, public.clerk_sync_apply_batch (sql/repeatable/
-- 20_write_path.sql): it holds the four guarantees (newest updated_at wins, deletes are final,
-- last_sign_in_at only moves forward, each svix-id is applied at most once) for every caller,
-- whether the server talks to PostgreSQL directly or through Supabase's REST API.

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
