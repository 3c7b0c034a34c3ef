-- Custom columns (clerk-sync.toml: custom_columns.py): adding them, forgetting them, and filling
-- them from Clerk's data for `clerk-sync backfill`. The write path fills them on every event
-- (sql/repeatable/20_write_path.sql and 15_organizations.sql, at their "custom columns of" lines,
-- which `migrate` renders with the configured columns); `migrate` and `clerk-sync schema` call
-- clerk_sync.apply_custom_column for each declared column and clerk_sync.forget_custom_columns once.
--
-- Repeatable: `migrate` runs this file again whenever its content changes (CREATE OR REPLACE only).

-- Make public.<p_table>.<p_column> the column declared: added (with its default) when missing, then
-- filled by p_fill (an UPDATE of every row from the data clerk-sync keeps) when it was added or its
-- path or default changed. A column of another type is refused (SQLSTATE CSTYP) unless p_retype,
-- which drops it first (what it held is lost). p_kept: whether p_fill finds the path's data (else it
-- sets the default, and `clerk-sync backfill` fills the rows from Clerk). What it did is said in a
-- notice; returns 'added', 'filled' or 'unchanged'.
create or replace function clerk_sync.apply_custom_column(
    p_table text, p_column text, p_type text, p_path text, p_default_sql text, p_fill text,
    p_kept boolean, p_retype boolean default false
)
returns text
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_type regtype;
    v_recorded clerk_sync.custom_columns;
    v_result text;
    v_rows bigint;
begin
    select a.atttypid::regtype into v_type
    from pg_catalog.pg_attribute as a
    where a.attrelid = pg_catalog.format('public.%I', p_table)::regclass
      and a.attname = p_column and a.attnum > 0 and not a.attisdropped;
    if v_type is not null and v_type <> p_type::regtype then
        if not p_retype then
            raise exception 'public.%.% is % and the columns file says %: changing it drops what '
                'it holds; run `clerk-sync migrate --retype %.%` (with DATABASE_URL), or drop '
                'the column yourself and apply the schema again', p_table, p_column, v_type,
                p_type, p_table, p_column using errcode = 'CSTYP';
        end if;
        execute pg_catalog.format('alter table public.%I drop column %I', p_table, p_column);
        v_type := null;
    end if;
    select * into v_recorded from clerk_sync.custom_columns as c
    where c.table_name = p_table and c.column_name = p_column;
    if v_type is null then
        execute pg_catalog.format('alter table public.%I add column %I %s default %s',
                                  p_table, p_column, p_type, p_default_sql);
        v_result := 'added';
    elsif v_recorded.table_name is null or v_recorded.type <> p_type or v_recorded.path <> p_path
          or v_recorded.default_sql <> p_default_sql then
        execute pg_catalog.format('alter table public.%I alter column %I set default %s',
                                  p_table, p_column, p_default_sql);
        v_result := 'filled';
    else
        return 'unchanged';
    end if;
    execute p_fill;
    get diagnostics v_rows = row_count;
    if p_kept then
        raise notice 'clerk-sync: custom column public.%.% (%) %, from % for the % rows already synced',
            p_table, p_column, p_type, v_result, p_path, v_rows;
    else
        raise notice 'clerk-sync: custom column public.%.% (%) %; % is in no data clerk-sync keeps, '
            'so the % rows already synced hold its default until `clerk-sync backfill` fills them',
            p_table, p_column, p_type, v_result, p_path, v_rows;
    end if;
    insert into clerk_sync.custom_columns as c (table_name, column_name, path, type, default_sql)
    values (p_table, p_column, p_path, p_type, p_default_sql)
    on conflict (table_name, column_name) do update set
        path = excluded.path, type = excluded.type, default_sql = excluded.default_sql,
        applied_at = now();
    return v_result;
end
$$;

-- Forget the custom columns no longer declared (p_declared: 'table.column'), leaving the columns
-- themselves as they are (an app may still read them; dropping one is the owner's call), and say so.
create or replace function clerk_sync.forget_custom_columns(p_declared text[])
returns void
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_forgotten record;
begin
    for v_forgotten in
        delete from clerk_sync.custom_columns as c
        where not (c.table_name || '.' || c.column_name) = any(p_declared)
        returning c.table_name, c.column_name
    loop
        raise notice 'clerk-sync: custom column public.%.% is no longer in the columns file: '
            'clerk-sync stops writing it and leaves it as it is (drop it when nothing reads it)',
            v_forgotten.table_name, v_forgotten.column_name;
    end loop;
end
$$;

-- For `clerk-sync backfill`: fill the custom columns of users from Clerk's user objects (as the
-- Backend API returns them), for each row that holds the same version (updated_at) as the object
-- (a row that is newer or older is the write path's to change), keeping its private_metadata as
-- the write path does. Returns how many rows changed. A row whose columns hold these values already
-- is not written, nor is a deleted one. Called per page (backfill.py), only when custom columns of
-- users are declared; with none, it changes nothing.
create or replace function clerk_sync.fill_custom_columns(p_users jsonb[])
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_rows bigint;
begin
    insert into clerk_sync.private_metadata as m (user_id, private_metadata)
    select u.id, d.data -> 'private_metadata'
    from pg_catalog.unnest(p_users) as d(data)
    join public.users as u on u.id = d.data ->> 'id'
        and u.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
    where pg_catalog.jsonb_typeof(d.data -> 'private_metadata') = 'object'
      and d.data -> 'private_metadata' <> '{}' and u.deleted_at is null
    on conflict (user_id) do update set private_metadata = excluded.private_metadata;

    update public.users as u set
        -- custom columns of users: sets from d.data
        updated_at = u.updated_at
    from pg_catalog.unnest(p_users) as d(data)
    where -- custom columns of users: changed from d.data
          u.id = d.data ->> 'id'
      and u.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
      and u.deleted_at is null;
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- The same for organizations, from Clerk's organization objects (GET /v1/organizations).
create or replace function clerk_sync.fill_organization_custom_columns(p_organizations jsonb[])
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_rows bigint;
begin
    update public.organizations as o set
        -- custom columns of organizations: sets from d.data
        updated_at = o.updated_at
    from pg_catalog.unnest(p_organizations) as d(data)
    where -- custom columns of organizations: changed in o from d.data
          o.id = d.data ->> 'id'
      and o.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
      and o.deleted_at is null;
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- The same for memberships, from Clerk's membership objects (GET /v1/organization_memberships).
create or replace function clerk_sync.fill_membership_custom_columns(p_memberships jsonb[])
returns bigint
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_rows bigint;
begin
    update public.organization_memberships as m set
        -- custom columns of organization_memberships: sets from d.data
        updated_at = m.updated_at
    from pg_catalog.unnest(p_memberships) as d(data)
    where -- custom columns of organization_memberships: changed in m from d.data
          m.id = d.data ->> 'id'
      and m.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
      and m.deleted_at is null;
    get diagnostics v_rows = row_count;
    return v_rows;
end
$$;

-- For `clerk-sync backfill --dry-run`, which writes nothing: how many rows of p_table ('users',
-- 'organizations' or 'organization_memberships') the fills above would change for these objects.
-- (plpgsql, as they are: its body names the custom columns, which `migrate` adds after this file.)
create or replace function clerk_sync.custom_columns_to_fill(p_table text, p_objects jsonb[])
returns bigint
language plpgsql
stable
set search_path = ''
as $$
begin
    if p_table = 'users' then
        return (
            select count(*)
            from pg_catalog.unnest(p_objects) as d(data)
            join public.users as u on u.id = d.data ->> 'id'
                and u.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
                and u.deleted_at is null
            where -- custom columns of users: changed from d.data
                  true
        );
    elsif p_table = 'organizations' then
        return (
            select count(*)
            from pg_catalog.unnest(p_objects) as d(data)
            join public.organizations as o on o.id = d.data ->> 'id'
                and o.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
                and o.deleted_at is null
            where -- custom columns of organizations: changed in o from d.data
                  true
        );
    end if;
    return (
        select count(*)
        from pg_catalog.unnest(p_objects) as d(data)
        join public.organization_memberships as m on m.id = d.data ->> 'id'
            and m.updated_at = clerk_sync.ms_to_timestamptz(d.data -> 'updated_at')
            and m.deleted_at is null
        where -- custom columns of organization_memberships: changed in m from d.data
              true
    );
end
$$;
