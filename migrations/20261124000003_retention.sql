-- Retention: a log whose contents were deleted says when; builds remember
-- whether their logs were pruned. Both are quick on large tables (a column
-- with a constant default changes no row); the indexes come in the next
-- migration, built without blocking the tables.
alter table logs add column deleted_at timestamptz;
alter table builds add column logs_pruned boolean not null default false;
