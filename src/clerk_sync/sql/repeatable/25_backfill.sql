-- What `clerk-sync backfill` reads before it writes organizations, memberships and invitations:
-- the write path's own prediction of its rule (clerk_sync.apply_organization_events in
-- 15_organizations.sql, and clerk_sync.apply_invitation_event in 16_invitations.sql), as
-- clerk_sync.classify_batch in 20_write_path.sql is for users.
--
-- Repeatable: `migrate` runs this file again whenever its content changes (CREATE OR REPLACE only).
-- After 20_write_path.sql, whose clerk_sync.batch_events this reads.

-- What applying these organization.updated / organizationMembership.updated /
-- organizationInvitation.* events would do, against the database now, one event per
-- organization, membership or invitation:
--   'invalid'    the write path would refuse it (problem says why)
--   'stale'      it was deleted (or, a membership, its organization or user was, or another
--                membership of the same organization and user created later is there; an
--                invitation, its organization was), or the row is newer
--   'created'    no row yet
--   'updated'    the event is newer than the row
--   'unchanged'  the row holds this already
-- A membership's embedded organization is not looked at: the organizations' own walk writes it.
create or replace function clerk_sync.classify_organization_batch(
    p_svix_ids text[], p_events jsonb[]
)
returns table (n bigint, object_id text, status text, problem text)
language sql
stable
set search_path = ''
as $$
    select b.n, b.event -> 'data' ->> 'id',
           case
               when b.problem is not null then 'invalid'
               when b.kind = 'organization' then
                   case
                       when ot.organization_id is not null or o.deleted_at is not null
                           then 'stale'
                       when o.id is null then 'created'
                       when o.updated_at is null or o.updated_at < v.version then 'updated'
                       when o.updated_at > v.version then 'stale'
                       else 'unchanged'
                   end
               when b.kind = 'membership' then
                   case
                       when ot.organization_id is not null or ut.user_id is not null
                            or mt.membership_id is not null or m.deleted_at is not null
                           then 'stale'
                       when exists (
                           select 1 from public.organization_memberships as p
                           where p.organization_id = b.organization_id and p.user_id = b.user_id
                             and p.id <> b.event -> 'data' ->> 'id'
                             and (coalesce(p.created_at, '-infinity'), p.id)
                                 > (coalesce(v.created, '-infinity'), b.event -> 'data' ->> 'id')
                           union all
                           select 1 from clerk_sync.membership_tombstones as p
                           where p.organization_id = b.organization_id and p.user_id = b.user_id
                             and p.membership_id <> b.event -> 'data' ->> 'id'
                             and (coalesce(p.created_at, '-infinity'), p.membership_id)
                                 > (coalesce(v.created, '-infinity'), b.event -> 'data' ->> 'id')
                       ) then 'stale'
                       when m.id is null then 'created'
                       when m.updated_at is null or m.updated_at < v.version then 'updated'
                       when m.updated_at > v.version then 'stale'
                       else 'unchanged'
                   end
               -- As clerk_sync.apply_invitation_event: only its organization's tombstone and
               -- updated_at decide.
               when b.kind = 'invitation' then
                   case
                       when ot.organization_id is not null then 'stale'
                       when i.id is null then 'created'
                       when i.updated_at is null or i.updated_at < v.version then 'updated'
                       when i.updated_at > v.version then 'stale'
                       else 'unchanged'
                   end
               else 'invalid'
           end,
           case
               when b.problem is not null then b.problem
               when b.kind not in ('organization', 'membership', 'invitation')
                   then 'not an organization, membership or invitation event: ' || b.type
           end
    from clerk_sync.batch_events(p_svix_ids, p_events) as b
    cross join lateral (
        select clerk_sync.ms_to_timestamptz(b.event -> 'data' -> 'updated_at') as version,
               clerk_sync.ms_to_timestamptz(b.event -> 'data' -> 'created_at') as created
    ) as v
    left join public.organizations as o
        on b.kind = 'organization' and o.id = b.organization_id
    left join clerk_sync.organization_tombstones as ot
        on ot.organization_id = b.organization_id
    left join public.organization_memberships as m
        on b.kind = 'membership' and m.id = b.event -> 'data' ->> 'id'
    left join clerk_sync.membership_tombstones as mt
        on b.kind = 'membership' and mt.membership_id = b.event -> 'data' ->> 'id'
    left join clerk_sync.tombstones as ut
        on b.kind = 'membership' and ut.user_id = b.user_id
    left join public.organization_invitations as i
        on b.kind = 'invitation' and i.id = b.event -> 'data' ->> 'id'
    order by b.n
$$;

-- Whether a backfill run listed this id of this resource: recorded with its page (p_run_id), or,
-- for --dry-run, which records nothing, among the ids it passes (p_listed). Prune candidates are
-- the live rows it did not list.
create or replace function clerk_sync.backfill_listed(
    p_run_id bigint, p_resource text, p_id text, p_listed text[]
)
returns boolean
language sql
stable
as $$
    select p_id = any(p_listed)
        or exists (select 1 from clerk_sync.backfill_seen as s
                   where s.run_id = p_run_id and s.resource = p_resource and s.object_id = p_id)
$$;
