-- clerk-sync schema, version 9: organization invitations.
--
-- public.organization_invitations is the app's copy of Clerk's organization invitations, written
-- only through public.clerk_sync_apply_batch (sql/repeatable/16_invitations.sql). It keeps
-- neither the invitation's private_metadata nor its url: the url carries the token that accepts
-- the invitation, and whoever could read it could join the organization as the invitee.
-- Invitations have no delete event of their own: the organization's tombstone
-- (clerk_sync.organization_tombstones) keeps those of a deleted organization from coming back.

create table if not exists public.organization_invitations (
    id               text primary key,
    organization_id  text not null,
    email_address    text,
    role             text,
    status           text,
    inviter_id       text,
    user_id          text,
    public_metadata  jsonb not null default '{}'::jsonb,
    expires_at       timestamptz,
    created_at       timestamptz,
    updated_at       timestamptz,
    deleted_at       timestamptz
);

comment on table public.organization_invitations is
    'One row per Clerk organization invitation, kept current by clerk-sync from Clerk''s webhooks. Written only by clerk-sync. Holds invitees'' email addresses: no client role reads it unless the app adds a policy and a grant.';
comment on column public.organization_invitations.status is
    'pending, accepted or revoked, as Clerk last sent it. Clerk sends no event when an invitation expires: an invitation is open while status = ''pending'' and expires_at > now() and deleted_at is null.';
comment on column public.organization_invitations.deleted_at is
    'When its organization was deleted (soft delete mode); null while the organization exists.';

-- An organization's invitations (organization.deleted ends them; the app lists them).
create index if not exists organization_invitations_organization_id
    on public.organization_invitations (organization_id);

-- Invitees' email addresses are personal data: Supabase grants its client roles everything on a
-- new table in schema public, and that is taken back here, once, at creation. Later runs of the
-- lock-down (sql/repeatable/90_supabase.sql) keep anon out and every client write refused, but
-- leave authenticated's SELECT alone: the app grants it with its own policy (docs/supabase.md),
-- and an upgrade must not take it back.
do $invitations$
begin
    if exists (select 1 from pg_catalog.pg_roles where rolname = 'anon')
       and exists (select 1 from pg_catalog.pg_roles where rolname = 'authenticated')
    then
        revoke all on table public.organization_invitations from anon, authenticated;
    end if;
end
$invitations$;
