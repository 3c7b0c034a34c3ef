-- clerk-sync schema, version 3: locked down for Supabase's roles.
--
-- This version once created the lock-down as a function of its own. What it does (row-level
-- security on public.users, the clerk_sync_* functions executable by service_role only and
-- SECURITY DEFINER, schema clerk_sync out of reach of anon and authenticated) now lives in
-- sql/repeatable/90_supabase.sql, which `migrate` runs after every change to the schema.
-- Nothing left to do here; asyncpg cannot send a file without a statement.
select 1;
