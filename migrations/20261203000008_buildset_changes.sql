-- The change a buildset was started for (a push, a pull request, a
-- poller's commit), so a build knows its changes: its source stamp, its
-- blamelist (the changes since its builder's previous build of the
-- branch), and the console view's cell of each change.
alter table buildsets add column change_id bigint references changes (id) on delete set null;

create index buildsets_change_id on buildsets (change_id) where change_id is not null;
