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
