-- A buildset a dependent scheduler started because another finished well.
-- One per (scheduler, upstream buildset): every master may try, one wins.
alter table buildsets add column triggered_by bigint references buildsets (id) on delete set null;
create unique index buildsets_one_per_trigger on buildsets (scheduler, triggered_by) where triggered_by is not null;
