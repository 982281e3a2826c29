-- The change a buildset was started for (a push, a pull request, a
-- poller's commit), so a build knows its changes: its source stamp, its
-- blamelist (the changes since its builder's previous build of the
-- branch), and the console view's cell of each change. A nullable column
-- without a default: instant, whatever the table's size.
alter table buildsets add column change_id bigint references changes (id) on delete set null;
