-- The write path's helpers (sql/repeatable/20_write_path.sql uses them).
--
-- Repeatable: `migrate` runs this file again whenever its content changes, so it holds the
-- current definitions, and only CREATE OR REPLACE. They have no SET search_path so that the
-- planner can inline them into the write function's statements (which run with search_path '');
-- each is one expression without FROM (a SQL function with a FROM clause, or one declared
-- immutable that calls a stable one, runs as a separate statement on every call). They name
-- pg_catalog where it matters and are not meant to be called on their own.

-- Whether a JSON value is a time as Clerk sends it: a whole number of milliseconds since the
-- epoch, up to the end of year 9999 (past that, most clients of the table could not read the
-- value back).
create or replace function clerk_sync.is_ms(p_ms jsonb)
returns boolean
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_ms) when 'number' then
        pg_catalog.scale(p_ms::numeric) = 0 and p_ms::numeric between 0 and 253402300799999
    else false end
$$;

-- Clerk sends times as milliseconds since the epoch. Whole days and the milliseconds within a
-- day are each small enough for interval arithmetic to stay exact at any date; adding them to a
-- timestamp without time zone keeps the session's time zone (and its DST) out of it. CASE guards
-- the cast: a non-number gives null, never an error.
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

-- The primary entry (by id) of a list of email addresses or phone numbers, or null. Stable, as
-- jsonb_build_object is.
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

-- Custom columns (clerk-sync.toml: custom_columns.py). Each converts a JSON value to the column's
-- type when its JSON type fits, else gives null (the write path then sets the column's default):
-- string → text; integral number in range → integer, bigint; number → numeric; true/false →
-- boolean; any value → jsonb; array of strings → text[]; whole milliseconds → timestamptz. JSON
-- null is null. custom_columns.convert applies the same rules in Python.
create or replace function clerk_sync.to_text(p_value jsonb)
returns text
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_value) when 'string' then p_value #>> '{}' end
$$;

create or replace function clerk_sync.to_bigint(p_value jsonb)
returns bigint
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_value) when 'number' then
        case when p_value::numeric = pg_catalog.trunc(p_value::numeric)
                  and p_value::numeric between -9223372036854775808 and 9223372036854775807
             then p_value::numeric::bigint end
    end
$$;

create or replace function clerk_sync.to_integer(p_value jsonb)
returns integer
language sql
immutable
parallel safe
as $$
    select case when clerk_sync.to_bigint(p_value) between -2147483648 and 2147483647
                then clerk_sync.to_bigint(p_value)::integer end
$$;

create or replace function clerk_sync.to_numeric(p_value jsonb)
returns numeric
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_value) when 'number' then p_value::numeric end
$$;

create or replace function clerk_sync.to_boolean(p_value jsonb)
returns boolean
language sql
immutable
parallel safe
as $$
    select case pg_catalog.jsonb_typeof(p_value) when 'boolean' then p_value::boolean end
$$;

create or replace function clerk_sync.to_jsonb(p_value jsonb)
returns jsonb
language sql
immutable
parallel safe
as $$
    select case when pg_catalog.jsonb_typeof(p_value) <> 'null' then p_value end
$$;

-- Not inlined (its subquery): a call per row written, only where a text[] column is declared.
create or replace function clerk_sync.to_text_array(p_value jsonb)
returns text[]
language sql
immutable
parallel safe
as $$
    select case when pg_catalog.jsonb_typeof(p_value) = 'array'
                 and not pg_catalog.jsonb_path_exists(p_value, 'strict $[*] ? (@.type() != "string")')
           then array(select pg_catalog.jsonb_array_elements_text(p_value)) end
$$;

create or replace function clerk_sync.to_timestamptz(p_value jsonb)
returns timestamptz
language sql
immutable
parallel safe
as $$
    select case when clerk_sync.is_ms(p_value) then clerk_sync.ms_to_timestamptz(p_value) end
$$;
