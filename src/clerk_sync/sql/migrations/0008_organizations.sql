-- clerk-sync schema, version 8: organizations and their memberships.
--
-- public.organizations and public.organization_memberships are the app's copy of Clerk's
-- organizations and memberships, written only through public.clerk_sync_apply_batch (the
-- organization events: sql/repeatable/15_organizations.sql). Their tombstones keep a deleted
-- organization or an ended membership from coming back, as clerk_sync.tombstones does for users.
-- (Version 7 is taken by another change on its way; the numbers only need to be ordered.)

create table if not exists public.organizations (
    id                       text primary key,
    name                     text,
    slug                     text,
    image_url                text,
    created_by               text,
    public_metadata          jsonb not null default '{}'::jsonb,
    max_allowed_memberships  integer,
    admin_delete_enabled     boolean,
    created_at               timestamptz,
    updated_at               timestamptz,
    deleted_at               timestamptz
);

comment on table public.organizations is
    'One row per Clerk organization, kept current by clerk-sync from Clerk''s webhooks. Written only by clerk-sync.';

create table if not exists public.organization_memberships (
    id               text primary key,
    organization_id  text not null,
    user_id          text not null,
    role             text,
    permissions      text[] not null default '{}',
    public_metadata  jsonb not null default '{}'::jsonb,
    created_at       timestamptz,
    updated_at       timestamptz,
    deleted_at       timestamptz
);

comment on table public.organization_memberships is
    'One row per Clerk organization membership, kept current by clerk-sync from Clerk''s webhooks. Written only by clerk-sync.';

-- At most one live membership per organization and user; every membership of a pair (the one
-- created later wins); a user's memberships (user.deleted ends them; RLS asks by user).
create unique index if not exists organization_memberships_live
    on public.organization_memberships (organization_id, user_id) where deleted_at is null;
create index if not exists organization_memberships_pair
    on public.organization_memberships (organization_id, user_id);
create index if not exists organization_memberships_user_id
    on public.organization_memberships (user_id);

-- A deleted organization stays deleted.
create table if not exists clerk_sync.organization_tombstones (
    organization_id  text primary key,
    deleted_at       timestamptz not null,
    svix_id          text not null
);

-- An ended membership (deleted, or replaced by one created later for the same organization and
-- user) stays ended; its pair and creation time outlive the row in hard delete mode.
create table if not exists clerk_sync.membership_tombstones (
    membership_id    text primary key,
    organization_id  text not null,
    user_id          text not null,
    created_at       timestamptz,
    deleted_at       timestamptz not null,
    svix_id          text not null
);

create index if not exists membership_tombstones_pair
    on clerk_sync.membership_tombstones (organization_id, user_id);

-- clerk_sync.batch_events gained a column (each event's organization id): sql/repeatable/
-- 20_write_path.sql defines it again.
drop function if exists clerk_sync.batch_events(text[], jsonb[]);
