-- clerk-sync schema, version 6: functions and grants became repeatable definitions.
--
-- Every function, and the Supabase lock-down, is now defined once, in sql/repeatable/, and
-- `migrate` re-applies a file there whenever its content changes. Versions 3 and 5 had left two
-- functions behind that nothing calls any more.
drop function if exists clerk_sync.lock_down_for_supabase();
drop function if exists clerk_sync.on_supabase();
