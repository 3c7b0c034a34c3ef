-- clerk-sync schema, version 10: your own columns (clerk-sync.toml; custom_columns.py).
--
-- The columns themselves are added by `migrate` from the file (clerk_sync.apply_custom_column in
-- sql/repeatable/12_custom_columns.sql); this is what it keeps to know what it did.

-- Each custom column `migrate` added and filled, as declared then: a column declared again with
-- another path or default is filled again, one no longer declared is forgotten here (the column
-- itself is left alone), one declared with another type is refused until `--retype`.
create table if not exists clerk_sync.custom_columns (
    table_name   text not null,
    column_name  text not null,
    path         text not null,
    type         text not null,
    default_sql  text not null,
    applied_at   timestamptz not null default now(),
    primary key (table_name, column_name)
);

-- A user's private_metadata, which public.users does not hold, kept only when it is not empty
-- (most users': no row at all) so that a custom column added later on a private_metadata path can
-- be filled without calling Clerk. Written by the write path with the row, from the newest
-- applied profile; dropped when it becomes empty or the user is deleted. Never readable by clients
-- (the clerk_sync schema is locked down: sql/repeatable/90_supabase.sql).
create table if not exists clerk_sync.private_metadata (
    user_id           text primary key,
    private_metadata  jsonb not null
);
