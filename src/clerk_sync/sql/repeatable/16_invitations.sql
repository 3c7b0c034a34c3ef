-- Organization invitations: what their events need, and how one is applied. The write path
-- (sql/repeatable/20_write_path.sql) classifies organizationInvitation.created, .accepted and
-- .revoked as kind 'invitation', with the invitation's organization_id, asks
-- clerk_sync.invitation_event_problem whether one can be applied, locks its organization, and
-- clerk_sync.apply_organization_events (15_organizations.sql) applies it in batch order with the
-- organization events, through clerk_sync.apply_invitation_event. The rules:
--   * an invitation's columns come from the event with the greatest data.updated_at; an older or
--     equal one is stale (accepted and revoked are updates: Clerk sends them with a later
--     updated_at);
--   * an invitation of a deleted organization is ended with it (deleted_at, or the row removed
--     in hard delete mode), and every later-arriving event for it, or for any invitation of
--     that organization, is stale (the organization's tombstone);
--   * an invitation may arrive before its organization: it is kept (it carries no organization
--     to write);
--   * private_metadata and url are never stored (url carries the acceptance token);
--   * an accepted copy without user_id (Clerk's list, which a backfill writes) keeps the
--     user_id the accepted webhook gave.
-- Expiry is no event: an invitation is open while status = 'pending' and expires_at > now() and
-- deleted_at is null.
--
-- Repeatable: `migrate` runs this file again whenever its content changes (CREATE OR REPLACE only).

-- Why an invitation event cannot be applied (the message of the batch's refusal), or null.
-- Inlined, as clerk_sync.organization_event_problem: only an invitation event runs its checks.
create or replace function clerk_sync.invitation_event_problem(p_type text, p_data jsonb)
returns text
language sql
immutable
parallel safe
as $$
    select p_type || ' event ' || case
        when not clerk_sync.is_id(p_data -> 'id')
            then 'without an invitation id'
        when not clerk_sync.is_id(p_data -> 'organization_id')
            then 'without an organization id'
        when not clerk_sync.is_ms(p_data -> 'updated_at')
            then 'without a millisecond updated_at'
        when coalesce(p_data -> 'created_at', 'null') <> 'null'
             and not clerk_sync.is_ms(p_data -> 'created_at')
            then 'with a malformed created_at'
        when coalesce(p_data -> 'expires_at', 'null') <> 'null'
             and not clerk_sync.is_ms(p_data -> 'expires_at')
            then 'with a malformed expires_at'
        when coalesce(p_data -> 'user_id', 'null') <> 'null'
             and not clerk_sync.is_id(p_data -> 'user_id')
            then 'with a malformed user_id'
        when pg_catalog.jsonb_typeof(p_data -> 'status') not in ('string', 'null')
            then 'with a malformed status'
        when pg_catalog.jsonb_typeof(p_data -> 'public_metadata') not in ('object', 'null')
            then 'with a malformed public_metadata'
    end
$$;

-- Apply one invitation event (valid, its organization's lock held): 'applied' when the row
-- changed, else 'stale'. p_org_deleted: the organization has a tombstone.
create or replace function clerk_sync.apply_invitation_event(
    p_type text,
    p_data jsonb,
    p_org_deleted boolean
)
returns text
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_rows bigint;
begin
    if p_org_deleted then
        return 'stale';
    end if;
    -- Not private_metadata, not url: see the table's migration (0009_invitations.sql).
    insert into public.organization_invitations as i (
        id, organization_id, email_address, role, status, inviter_id, user_id, public_metadata,
        expires_at, created_at, updated_at
    )
    values (
        p_data ->> 'id',
        p_data ->> 'organization_id',
        p_data ->> 'email_address',
        p_data ->> 'role',
        -- Clerk sends it; the event's type says the same when it does not.
        coalesce(p_data ->> 'status', pg_catalog.replace(
            pg_catalog.split_part(p_type, '.', 2), 'created', 'pending')),
        p_data ->> 'inviter_id',
        p_data ->> 'user_id',
        coalesce(nullif(p_data -> 'public_metadata', 'null'::jsonb), '{}'::jsonb),
        clerk_sync.ms_to_timestamptz(p_data -> 'expires_at'),
        clerk_sync.ms_to_timestamptz(p_data -> 'created_at'),
        clerk_sync.ms_to_timestamptz(p_data -> 'updated_at')
    )
    on conflict (id) do update set
        organization_id = excluded.organization_id,
        email_address = excluded.email_address,
        role = excluded.role,
        status = excluded.status,
        inviter_id = excluded.inviter_id,
        -- Only the organizationInvitation.accepted webhook names the user: an accepted copy
        -- that does not (Clerk's list of invitations, which a backfill writes, never does)
        -- keeps the one known.
        user_id = case when excluded.status = 'accepted' and excluded.user_id is null
                       then i.user_id else excluded.user_id end,
        public_metadata = excluded.public_metadata,
        expires_at = excluded.expires_at,
        created_at = coalesce(excluded.created_at, i.created_at),
        updated_at = excluded.updated_at
    where i.updated_at is null or i.updated_at < excluded.updated_at;
    get diagnostics v_rows = row_count;
    return case when v_rows > 0 then 'applied' else 'stale' end;
end
$$;

-- What organization.deleted does to the organization's invitations: they end with it.
create or replace function clerk_sync.end_organization_invitations(
    p_organization_id text,
    p_delete_mode text
)
returns void
language plpgsql
volatile
set search_path = ''
as $$
begin
    if p_delete_mode = 'hard' then
        delete from public.organization_invitations as i
        where i.organization_id = p_organization_id;
    else
        update public.organization_invitations as i set deleted_at = now()
        where i.organization_id = p_organization_id and i.deleted_at is null;
    end if;
end
$$;
