-- Replay and retention: `clerk-sync replay` re-applies events kept in clerk_sync.inbox through
-- public.clerk_sync_apply, the webhooks' own write path (sql/repeatable/20_write_path.sql), so
-- every guarantee holds for a replay too: an old event finds a newer row and is stale, a deleted
-- user stays deleted, and an event the write path refuses stays a dead letter. The server purges
-- old inbox rows (public.clerk_sync_purge_inbox) and old payloads
-- (public.clerk_sync_drop_payloads) in the background.
--
-- Repeatable: `migrate` runs this file again whenever its content changes.

-- Re-apply one stored event, in one transaction: take its stored content (the payload, or the
-- raw body of a dead letter, parsed again), remove its inbox row so that the write path does not
-- answer 'duplicate', and apply it with the same svix-id. The new inbox row keeps the original
-- received_at. Returns one row: the event's type and user, its outcome before and after, and why
-- it could not be applied ('invalid'; 'missing': no such svix-id, or its payload was dropped
-- by payload retention) or was not replayed.
-- A dry run does all of that, then undoes it (a savepoint rolled back), and answers the same.
create or replace function public.clerk_sync_replay(
    p_svix_id text,
    p_delete_mode text default 'soft',
    p_dry_run boolean default false
)
returns table (event_type text, user_id text, old_outcome text, new_outcome text, reason text)
language plpgsql
volatile
set search_path = ''
as $$
#variable_conflict use_column
declare
    v_old    clerk_sync.inbox;
    v_event  jsonb;
begin
    -- Two replays of the same svix-id take turns; the second one sees the first one's row.
    perform pg_catalog.pg_advisory_xact_lock(1668049781, pg_catalog.hashtext(p_svix_id));

    select * into v_old from clerk_sync.inbox as i where i.svix_id = p_svix_id for update;
    if not found then
        new_outcome := 'missing';
        reason := 'no delivery with this svix-id in clerk_sync.inbox';
        return next;
        return;
    end if;
    event_type := v_old.event_type;
    user_id := v_old.user_id;
    old_outcome := v_old.outcome;
    if v_old.payload is null and v_old.raw_body is null and v_old.outcome = 'ignored' then
        -- Event types clerk-sync ignores are recorded without their content.
        new_outcome := v_old.outcome;
        reason := 'not replayed: its content was not kept';
        return next;
        return;
    elsif v_old.payload is null and v_old.raw_body is null then
        new_outcome := 'missing';
        reason := 'not replayed: its payload was dropped after CLERK_SYNC_PAYLOAD_RETENTION_DAYS';
        return next;
        return;
    end if;

    begin
        v_event := coalesce(v_old.payload, pg_catalog.convert_from(v_old.raw_body, 'UTF8')::jsonb);
        delete from clerk_sync.inbox as i where i.svix_id = p_svix_id;
        new_outcome := public.clerk_sync_apply(p_svix_id, v_event, p_delete_mode);
        while new_outcome = 'retry' loop  -- its user is busy in another transaction: wait
            perform pg_catalog.pg_sleep(0.01);
            new_outcome := public.clerk_sync_apply(p_svix_id, v_event, p_delete_mode);
        end loop;
        update clerk_sync.inbox as i
        set received_at = v_old.received_at, replayed_at = now(), replays = v_old.replays + 1
        where i.svix_id = p_svix_id
        returning i.event_type, i.user_id into event_type, user_id;
        if p_dry_run then
            raise exception 'dry run: undo the replay' using errcode = 'CSDRY';
        end if;
    exception
        when sqlstate 'CSDRY' then
            null;  -- the dry run's outcome is known; everything it wrote is rolled back
        when data_exception or integrity_constraint_violation or raise_exception then
            -- Not JSON, not UTF-8, not a Clerk event, a value the database refuses, or an app's
            -- constraint or trigger that still refuses it: what made it a dead letter still
            -- holds. It stays one, with the reason found now.
            new_outcome := 'invalid';
            reason := 'cannot apply: ' || sqlerrm;
            if not p_dry_run and v_old.outcome = 'invalid' then
                update clerk_sync.inbox as i
                set error = reason, replays = v_old.replays + 1
                where i.svix_id = p_svix_id;
            end if;
    end;
    return next;
end
$$;

-- Retention goes in chunks: each call of public.clerk_sync_purge_inbox or
-- public.clerk_sync_drop_payloads handles up to p_batch rows and says how many, and callers
-- repeat it until it handles fewer (clerk_sync/retention.py). Each call is a short transaction,
-- and rows another caller holds are skipped, so replicas purging at once neither wait on each
-- other nor block deliveries.

-- One chunk: the svix-ids of up to p_batch inbox rows received at or before p_before, oldest
-- first, locked (those another transaction holds skipped): only those that still have a
-- payload when p_with_payload, and dead letters only when p_dead_letters. Planned for each
-- call's values: a plan made for any p_with_payload could not use inbox_payloads_kept (0007),
-- the index that finds the payloads still to drop without reading the rows whose payload is
-- gone (most of the inbox, once retention runs).
create or replace function clerk_sync.expired_inbox_rows(
    p_before timestamptz,
    p_with_payload boolean,
    p_dead_letters boolean,
    p_batch integer
)
returns setof text
language plpgsql
volatile
set search_path = ''
set plan_cache_mode = force_custom_plan
as $$
begin
    return query
    select i.svix_id from clerk_sync.inbox as i
    where i.received_at <= p_before
      and (p_dead_letters or i.outcome <> 'invalid')
      and (not p_with_payload or i.payload is not null)
    order by i.received_at
    limit greatest(p_batch, 1)
    for update skip locked;
end
$$;

-- Delete a chunk of the inbox rows received more than p_older_than ago, and return how many
-- went. Dead letters are kept unless p_dead_letters. Dedupe must outlast Svix's retries (about
-- 27 hours): less than 2 days is refused.
create or replace function public.clerk_sync_purge_inbox(
    p_older_than interval,
    p_dead_letters boolean default false,
    p_batch integer default 5000
)
returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_deleted integer;
begin
    if p_older_than is null or p_older_than < interval '2 days' then
        raise exception 'inbox rows are kept at least 2 days (Svix retries a delivery for about 27 hours, and the inbox is what recognises the retry), not %', p_older_than
            using errcode = '22023';
    end if;
    delete from clerk_sync.inbox as i
    using clerk_sync.expired_inbox_rows(now() - p_older_than, false, p_dead_letters, p_batch)
          as doomed(svix_id)
    where i.svix_id = doomed.svix_id;
    get diagnostics v_deleted = row_count;
    return v_deleted;
end
$$;

-- Drop the payloads of a chunk of the deliveries received more than p_older_than ago (those
-- that applied, were stale or ignored: dead letters keep theirs), and return how many. The rows
-- stay, for dedupe and `clerk-sync events`, until clerk_sync_purge_inbox removes them.
create or replace function public.clerk_sync_drop_payloads(
    p_older_than interval,
    p_batch integer default 5000
)
returns integer
language plpgsql
volatile
set search_path = ''
as $$
declare
    v_dropped integer;
begin
    if p_older_than is null or p_older_than < interval '0' then
        raise exception 'payloads are kept for 0 days or more, not %', p_older_than
            using errcode = '22023';
    end if;
    update clerk_sync.inbox as i set payload = null
    from clerk_sync.expired_inbox_rows(now() - p_older_than, true, false, p_batch)
         as doomed(svix_id)
    where i.svix_id = doomed.svix_id;
    get diagnostics v_dropped = row_count;
    return v_dropped;
end
$$;

revoke execute on function public.clerk_sync_replay(text, text, boolean) from public;
revoke execute on function public.clerk_sync_drop_payloads(interval, integer) from public;
revoke execute on function public.clerk_sync_purge_inbox(interval, boolean, integer) from public;
