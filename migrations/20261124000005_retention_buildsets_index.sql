-- no-transaction
-- Retention finds the next buildsets to delete by this index; built
-- concurrently, as the one before.
create index concurrently if not exists buildsets_complete_by_time on buildsets (complete_at) where complete;
