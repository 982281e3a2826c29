-- Retention: a log whose contents were deleted says when; builds remember
-- whether their logs were pruned, and both prunings find their next batch
-- by an index instead of a scan.
alter table logs add column deleted_at timestamptz;
alter table builds add column logs_pruned boolean not null default false;

create index builds_logs_unpruned_by_completion on builds (complete_at)
    where not logs_pruned and complete_at is not null;
create index buildsets_complete_by_time on buildsets (complete_at) where complete;
