-- clerk-sync schema, version 11: `clerk-sync backfill` walks several resources (users, then
-- organizations, then memberships), and remembers where it is in each.
--
-- A run lists the resources it covers (--only narrows them) and the one it is on; next_offset
-- is the offset in that resource's listing; counts are kept per resource ({"users": {...},
-- "organizations": {...}, ...}). A run left open by an earlier release was walking users (its
-- counts are theirs), and covers every resource from now on. The ids a run has listed are kept
-- per resource, for --prune. (Versions 9 and 10 belong to other changes on their way; numbers
-- only need to be ordered.)

alter table clerk_sync.backfill_runs
    add column resources text[] not null default '{users,organizations,memberships}',
    add column resource text not null default 'users';

comment on column clerk_sync.backfill_runs.next_offset is
    'Where the next page of the listing of `resource` starts.';

alter table clerk_sync.backfill_seen add column resource text not null default 'users';
alter table clerk_sync.backfill_seen rename column user_id to object_id;
alter table clerk_sync.backfill_seen drop constraint backfill_seen_pkey;
alter table clerk_sync.backfill_seen add primary key (run_id, resource, object_id);
