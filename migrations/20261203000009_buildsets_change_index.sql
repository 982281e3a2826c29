-- no-transaction
-- The builds of a change, and the console's builds of recent changes, by
-- index. Built concurrently, alone in its migration, so masters still
-- running keep writing buildsets meanwhile.
create index concurrently if not exists buildsets_change_id on buildsets (change_id) where change_id is not null;
