-- no-transaction
-- Retention finds the next builds whose logs to prune by this index instead
-- of a scan. Built concurrently (alone in its migration: Postgres runs a
-- multi-statement query as one transaction), so masters still running on a
-- large history keep reading and writing `builds` meanwhile.
create index concurrently if not exists builds_logs_unpruned_by_completion on builds (complete_at)
    where not logs_pruned and complete_at is not null;
